//! Journal microbenchmark (issue 10): the journal alone, through the
//! library, without HTTP or the spool, so that its cost per CDR is visible
//! next to the other stages.
//!
//! - ingest: the write cost per CDR of ~600 bytes, batches of 256 files
//!   with one flush per batch, with one and with three subscriptions;
//! - attempt: the cost of recording one attempt (a 204 with a small
//!   response and the headers the daemon records) and the delivery's end;
//! - size: bytes on disk per CDR with its delivery and one attempt after
//!   the drain, and after retention pruned everything and as many CDRs came
//!   in again (does sled reuse the space);
//! - open: time and resident memory of opening a journal of `--ended`
//!   ended deliveries and `--open` open ones, in a fresh process.
//!
//! `cargo bench --bench journal` (defaults: 100,000 CDRs; 1,000,000 ended +
//! 10,000 open for the open test); `-- --cdrs 20000 --ended 100000` for a
//! quick look. Prints a Markdown table for BENCHMARKS.md.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cdrhook::cdr::{parse_file, Cdr};
use cdrhook::journal::{Attempt, IngestFile, Journal, State, Trigger, CACHE_BYTES};
use cdrhook::time::now_ms;

const BATCH: usize = 256;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cdr(i: usize) -> Vec<u8> {
    format!(
        "{{\"EventType\":\"App.QueueWebhook\",\"CallId\":\"bench-{i}\",\"ScenarioId\":\"b3a8d1f0-22c4-4e8b-8f1d-5c9e7a6b4d21\",\"CallDirection\":\"Inbound\",\"CallerName\":\"Dana Whitfield\",\"CallerNumber\":\"+13125550187\",\"StartDateTime\":\"2026-11-20T14:03:11.482Z\",\"EndDateTime\":\"2026-11-20T14:09:47.015Z\",\"CallLength\":\"00:06:35\",\"WaitTime\":\"00:01:12\",\"TalkTime\":\"00:05:23\",\"QueueId\":\"0c9d7e51-8a3f-4f0b-b6f2-71e4d2a9c803\",\"QueueName\":\"Billing Support\",\"OUPath\":\"/Contoso/Chicago/Billing\",\"MetServiceLevel\":true,\"AgentName\":\"Priya Raman\",\"LeaveReason\":\"AgentAnswered\"}}"
    )
    .into_bytes()
}

/// Bytes allocated on disk (what `du` counts), not the files' lengths.
fn dir_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// CPU time of this process (all threads, sled's included), in seconds:
/// on a shared machine wall time says more about the neighbours.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn rss_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the daemon records for a 204 (headers as `delivery::http` sends
/// and masks them).
fn attempt_for(j: &Journal, d: &cdrhook::journal::Delivery, time_ms: u64) -> Attempt {
    Attempt {
        id: j.next_id().expect("id"),
        delivery_id: d.id,
        time_ms,
        subscription: d.subscription.clone(),
        event_type: d.event_type.clone(),
        call_id: d.call_id.clone(),
        webhook_id: d.cdr_id.clone(),
        attempt: 1,
        status: Some(204),
        error: None,
        duration_ms: 1,
        trigger: Trigger::Auto,
        request_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("user-agent".into(), "cdrhook/0.1.0".into()),
            ("webhook-id".into(), d.cdr_id.clone()),
            ("webhook-timestamp".into(), (time_ms / 1000).to_string()),
            ("x-webhook-event".into(), d.event_type.clone()),
            ("x-webhook-attempt".into(), "1".into()),
            ("webhook-signature".into(), "***".into()),
            ("Authorization".into(), "***".into()),
        ],
        response_headers: vec![
            ("server".into(), "nginx/1.24.0".into()),
            ("date".into(), "Wed, 02 Dec 2026 06:00:00 GMT".into()),
            ("connection".into(), "keep-alive".into()),
        ],
        response_body: None,
    }
}

/// Ingests `n` CDRs (from `start`) to `subs`, batch by batch; returns the
/// deliveries and the wall and CPU seconds spent in `ingest`.
fn ingest(j: &Journal, start: usize, n: usize, subs: &[&str]) -> (Vec<u64>, (f64, f64)) {
    let route = |_: &Cdr| subs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (mut ids, mut secs, mut cpu) = (Vec::with_capacity(n * subs.len()), 0.0, 0.0);
    let mut done = 0;
    while done < n {
        let k = (n - done).min(BATCH);
        let files: Vec<IngestFile> = (start + done..start + done + k)
            .map(|i| IngestFile {
                inflight_name: format!("cdr-{i}.json"),
                cdrs: parse_file(&cdr(i)).expect("a valid CDR"),
                identity: None,
            })
            .collect();
        let (t, c) = (Instant::now(), cpu_secs());
        let out = j.ingest(&files, &route).expect("ingest");
        secs += t.elapsed().as_secs_f64();
        cpu += cpu_secs() - c;
        ids.extend(out.new_deliveries.iter().map(|(_, id)| *id));
        done += k;
    }
    (ids, (secs, cpu))
}

/// Records one successful attempt per delivery; returns the wall and CPU
/// seconds.
fn deliver(j: &Journal, ids: &[u64], flush_every: usize) -> (f64, f64) {
    let (mut secs, mut cpu) = (0.0, 0.0);
    for (k, id) in ids.iter().enumerate() {
        let mut d = j.delivery(*id).expect("read").expect("delivery");
        let now = now_ms();
        let a = attempt_for(j, &d, now);
        d.state = State::Delivered;
        d.attempts = 1;
        d.ended_ms = Some(now);
        d.last_status = Some(204);
        let (t, c) = (Instant::now(), cpu_secs());
        j.record_attempt(&d, &a).expect("record");
        if (k + 1) % flush_every == 0 {
            j.flush().expect("flush");
        }
        secs += t.elapsed().as_secs_f64();
        cpu += cpu_secs() - c;
    }
    j.flush().expect("flush");
    (secs, cpu)
}

fn open_only(path: &Path) {
    let t = Instant::now();
    let j = Journal::open(path, CACHE_BYTES).expect("open");
    let open = j.take_open_deliveries();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{secs:.3} {} {} {}",
        open.len(),
        rss_kib("VmRSS:"),
        rss_kib("VmHWM:")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--open-only") {
        open_only(Path::new(&args[i + 1]));
        return;
    }
    let n = arg("--cdrs", 100_000);
    let ended = arg("--ended", 1_000_000);
    let open_n = arg("--open", 10_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rows: Vec<(String, String)> = Vec::new();

    // Ingest and attempts, one subscription, then the size on disk.
    let path = tmp.path().join("one");
    let j = Journal::open(&path, CACHE_BYTES).expect("open");
    let (ids, (secs, cpu)) = ingest(&j, 0, n, &["crm"]);
    rows.push((
        format!("ingest, 1 subscription, {BATCH} per batch + flush"),
        format!(
            "{:.1} µs/CDR wall, {:.1} µs/CDR CPU",
            secs * 1e6 / n as f64,
            cpu * 1e6 / n as f64
        ),
    ));
    let (secs, cpu) = deliver(&j, &ids, BATCH);
    rows.push((
        format!("record_attempt (204, delivery ends), flush per {BATCH}"),
        format!(
            "{:.1} µs wall, {:.1} µs CPU per attempt",
            secs * 1e6 / ids.len() as f64,
            cpu * 1e6 / ids.len() as f64
        ),
    ));
    drop(j);
    let size = dir_size(&path);
    rows.push((
        format!("on disk after {n} CDRs + delivery + 1 attempt"),
        format!(
            "{:.1} MiB, {:.0} B/CDR",
            size as f64 / 1048576.0,
            size as f64 / n as f64
        ),
    ));
    // Retention prunes everything, then as many CDRs come in again.
    let j = Journal::open(&path, CACHE_BYTES).expect("reopen");
    let t = Instant::now();
    let mut pruned = 0;
    loop {
        let stats = j.prune(now_ms() + 1, 50_000).expect("prune");
        pruned += stats.cdrs;
        if stats.cdrs == 0 {
            break;
        }
    }
    j.flush().expect("flush");
    rows.push((
        format!("prune {pruned} CDRs"),
        format!(
            "{:.1} µs/CDR",
            t.elapsed().as_secs_f64() * 1e6 / pruned.max(1) as f64
        ),
    ));
    drop(j);
    let size_pruned = dir_size(&path);
    let j = Journal::open(&path, CACHE_BYTES).expect("reopen");
    let (ids, _) = ingest(&j, n, n, &["crm"]);
    deliver(&j, &ids, BATCH);
    drop(j);
    let size_again = dir_size(&path);
    rows.push((
        "on disk after pruning all / after as many again".to_string(),
        format!(
            "{:.1} MiB / {:.1} MiB ({:.0} B/CDR)",
            size_pruned as f64 / 1048576.0,
            size_again as f64 / 1048576.0,
            size_again as f64 / n as f64
        ),
    ));

    // Three subscriptions: the journal cost must not triple.
    let path3 = tmp.path().join("three");
    let j = Journal::open(&path3, CACHE_BYTES).expect("open");
    let (_, (secs, cpu)) = ingest(&j, 0, n, &["crm", "warehouse", "audit"]);
    rows.push((
        format!("ingest, 3 subscriptions, {BATCH} per batch + flush"),
        format!(
            "{:.1} µs/CDR wall, {:.1} µs/CDR CPU",
            secs * 1e6 / n as f64,
            cpu * 1e6 / n as f64
        ),
    ));
    drop(j);
    let _ = std::fs::remove_dir_all(&path3);
    let _ = std::fs::remove_dir_all(&path);

    // Open time: `ended` ended deliveries and `open_n` open ones.
    let path_open = tmp.path().join("open");
    let t = Instant::now();
    {
        let j = Journal::open(&path_open, CACHE_BYTES).expect("open");
        let mut done = 0;
        while done < ended {
            let k = (ended - done).min(50_000);
            let (ids, _) = ingest(&j, 10 * n + done, k, &["crm"]);
            deliver(&j, &ids, 4096);
            done += k;
        }
        ingest(&j, 20 * n + ended, open_n, &["crm"]);
        // As the daemon stops: the next open trusts the counts and the
        // open index (and every open delivery is indexed).
        j.close_clean().expect("close clean");
    }
    let built = t.elapsed().as_secs_f64();
    // The first open follows the clean stop; it takes the clean-stop mark
    // away and its process ends without one, so the second is the open
    // after a crash (delivered and dead counted again from every delivery).
    for when in ["a clean stop", "a crash"] {
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args(["--open-only", path_open.to_str().expect("UTF-8")])
            .output()
            .expect("run the open test");
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        rows.push((
            format!("open after {when}, {ended} ended + {open_n} open (built in {built:.0} s)"),
            format!(
                "{} s, {} open found, RSS {} MiB (peak {} MiB), {:.0} MiB on disk",
                f.first().unwrap_or(&"?"),
                f.get(1).unwrap_or(&"?"),
                f.get(2).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024,
                f.get(3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024,
                dir_size(&path_open) as f64 / 1048576.0
            ),
        ));
    }

    println!("| journal ({n} CDRs of {} bytes) | result |", cdr(0).len());
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
