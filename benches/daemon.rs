//! The project's benchmark (contract §8): runs the real `cdrhook`
//! binary against a fast HTTP receiver on 127.0.0.1 and reports
//!
//! - backlog drain: N pre-dropped files to delivered, in CDR/s, with one and
//!   with three subscriptions, and the peak resident memory while draining;
//! - steady state: drop-to-POST latency p50/p99 at a fixed rate;
//! - idle: resident memory and CPU time over an idle period;
//! - large CDRs: a backlog of 2,000 recording CDRs of 200 KB and
//!   one of 200 of 2 MB, drained, with the peak resident memory.
//!
//! `cargo bench --bench daemon` runs everything with the defaults;
//! `cargo bench --bench daemon -- --files 20000 --idle-secs 10` for a quick look;
//! `cargo bench --bench daemon -- --large` for the large-CDR drains alone;
//! `-- --concurrency N` sets `delivery.concurrency` (default: the daemon's).
//! Results are printed as a Markdown table for BENCHMARKS.md.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Opts {
    files: usize,
    rate: usize,
    steady_secs: u64,
    idle_secs: u64,
    /// Only the drain with this many subscriptions (for profiling).
    only: Option<usize>,
    /// Only the large-CDR drains.
    large: bool,
    /// `delivery.concurrency`, when not the daemon's default.
    concurrency: Option<u64>,
}

fn opts() -> Opts {
    let mut o = Opts {
        files: 100_000,
        rate: 200,
        steady_secs: 20,
        idle_secs: 60,
        only: None,
        large: false,
        concurrency: None,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--files" => o.files = value().unwrap_or(o.files as u64) as usize,
            "--rate" => o.rate = value().unwrap_or(o.rate as u64) as usize,
            "--steady-secs" => o.steady_secs = value().unwrap_or(o.steady_secs),
            "--idle-secs" => o.idle_secs = value().unwrap_or(o.idle_secs),
            "--only" => o.only = value().map(|v| v as usize),
            "--concurrency" => o.concurrency = value(),
            "--large" => {
                o.large = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// The webhook receiver (benches/common): counts requests and notes when
/// each CallId arrived.
struct Receiver {
    port: u16,
    count: Arc<AtomicU64>,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let count = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(HashMap::new()));
        let (c, a) = (count.clone(), arrivals.clone());
        let port = common::start_receiver(move |_path, body| {
            let now = Instant::now();
            // The bench's CDRs carry "CallId":"bench-N" near the start.
            if let Some(id) = call_id(body) {
                a.lock().expect("arrivals").entry(id).or_insert(now);
            }
            c.fetch_add(1, Ordering::Relaxed);
        });
        Receiver {
            port,
            count,
            arrivals,
        }
    }
}

fn call_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"CallId\":\"")? + 10;
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_string())
}

fn cdr(i: usize) -> Vec<u8> {
    format!(
        "{{\"EventType\":\"App.QueueWebhook\",\"CallId\":\"bench-{i}\",\"ScenarioId\":\"b3a8d1f0-22c4-4e8b-8f1d-5c9e7a6b4d21\",\"CallDirection\":\"Inbound\",\"CallerName\":\"Dana Whitfield\",\"CallerNumber\":\"+13125550187\",\"StartDateTime\":\"2026-11-20T14:03:11.482Z\",\"EndDateTime\":\"2026-11-20T14:09:47.015Z\",\"CallLength\":\"00:06:35\",\"WaitTime\":\"00:01:12\",\"TalkTime\":\"00:05:23\",\"QueueId\":\"0c9d7e51-8a3f-4f0b-b6f2-71e4d2a9c803\",\"QueueName\":\"Billing Support\",\"OUPath\":\"/Contoso/Chicago/Billing\",\"MetServiceLevel\":true,\"AgentName\":\"Priya Raman\",\"LeaveReason\":\"AgentAnswered\"}}"
    )
    .into_bytes()
}

/// A recording CDR of about `size` bytes: most of it is the transcript, as
/// with the phone system's long calls.
fn recording_cdr(i: usize, size: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "thanks",
        "for",
        "calling",
        "billing",
        "support",
        "my",
        "invoice",
        "shows",
        "a",
        "duplicate",
        "charge",
        "again",
    ];
    let mut out = format!(
        "{{\"EventType\":\"App.RecordingWebhook\",\"CallId\":\"bench-{i}\",\"RecordingFileName\":\"rec-{i}.wav\",\"CallDirection\":\"Inbound\",\"CallerNumber\":\"+13125550187\",\"Transcription\":["
    );
    let mut n = i;
    while out.len() + 200 < size {
        if !out.ends_with('[') {
            out.push(',');
        }
        let speaker = if n % 2 == 0 { "Agent" } else { "Caller" };
        out.push_str(&format!(
            "{{\"Speaker\":\"{speaker}\",\"Offset\":{},\"Text\":\"",
            n % 3600
        ));
        for w in 0..16 {
            if w > 0 {
                out.push(' ');
            }
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.push_str(WORDS[(n >> 33) % WORDS.len()]);
        }
        out.push_str("\"}");
    }
    out.push_str("]}");
    out.into_bytes()
}

fn drop_file(spool: &Path, name: &str, bytes: &[u8]) {
    let tmp = spool.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write spool file");
    std::fs::rename(&tmp, spool.join(name)).expect("rename spool file");
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spool: PathBuf,
}

/// `--concurrency`, for `setup` (set once in `main`).
static CONCURRENCY: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

fn setup(receiver: &Receiver, subs: usize) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let mut yaml = String::from(
        "spool:\n  dir: spool\n  rescan_interval: 30s\njournal:\n  path: journal\ncontrol:\n  socket: control.sock\ndelivery:\n  retry_schedule: [1s, 5s]\nsubscriptions:\n",
    );
    if let Some(n) = CONCURRENCY.get().copied().flatten() {
        yaml = yaml.replace("delivery:\n", &format!("delivery:\n  concurrency: {n}\n"));
    }
    for s in 0..subs {
        yaml.push_str(&format!(
            "  - name: sub{s}\n    endpoint: http://127.0.0.1:{}/s{s}\n    events: [\"*\"]\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
            receiver.port
        ));
    }
    std::fs::write(root.join("config.yaml"), yaml).expect("config");
    Setup {
        _dir: dir,
        root,
        spool,
    }
}

fn start_daemon(s: &Setup) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_cdrhook"))
        .args(["run", "--config"])
        .arg(s.root.join("config.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cdrhook");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.root.join("control.sock").exists() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let f = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    f(11) + f(12)
}

fn count_dir(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

struct Drain {
    secs: f64,
    rate: f64,
    peak_rss_kib: u64,
    /// The daemon's CPU time (user + system) per CDR, in microseconds.
    cpu_us_per_cdr: f64,
}

fn drain(n: usize, subs: usize) -> (Drain, Option<(Child, Setup, Receiver)>) {
    drain_of(n, subs, &cdr)
}

fn drain_of(
    n: usize,
    subs: usize,
    make: &dyn Fn(usize) -> Vec<u8>,
) -> (Drain, Option<(Child, Setup, Receiver)>) {
    let receiver = Receiver::start();
    let s = setup(&receiver, subs);
    eprintln!("dropping {n} files…");
    for i in 0..n {
        drop_file(&s.spool, &format!("cdr-{i:07}.json"), &make(i));
    }
    let started = Instant::now();
    let child = start_daemon(&s);
    let pid = child.id();
    let want = (n * subs) as u64;
    let inflight = s.spool.join(".inflight");
    loop {
        let done = receiver.count.load(Ordering::Relaxed) >= want
            && count_dir(&inflight) == 0
            && count_dir(&s.spool) <= 1;
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "drain did not finish"
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = proc_status(pid, "VmHWM:");
    let ticks = cpu_ticks(pid);
    let result = Drain {
        secs,
        rate: n as f64 / secs,
        peak_rss_kib: peak,
        cpu_us_per_cdr: ticks as f64 * 10_000.0 / n as f64,
    };
    eprintln!(
        "drained {n} files x {subs} subscription(s) in {secs:.1}s: {:.0} CDR/s, peak RSS {} MiB, daemon CPU {:.0} us/CDR",
        result.rate,
        peak / 1024,
        result.cpu_us_per_cdr
    );
    (result, Some((child, s, receiver)))
}

fn steady(child_setup: &(Child, Setup, Receiver), rate: usize, secs: u64) -> (f64, f64, usize) {
    let (_, s, receiver) = child_setup;
    let total = rate * secs as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut dropped: Vec<(String, Instant)> = Vec::with_capacity(total);
    let start = Instant::now();
    for i in 0..total {
        let at = start + interval * i as u32;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = 10_000_000 + i;
        drop_file(&s.spool, &format!("steady-{i}.json"), &cdr(id));
        dropped.push((format!("bench-{id}"), Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let arrived = {
            let a = receiver.arrivals.lock().expect("arrivals");
            dropped.iter().filter(|(id, _)| a.contains_key(id)).count()
        };
        if arrived == total || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = receiver.arrivals.lock().expect("arrivals");
    let mut lat: Vec<f64> = dropped
        .iter()
        .filter_map(|(id, t)| {
            a.get(id)
                .map(|r| r.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pct(0.50), pct(0.99), lat.len())
}

/// Large recording CDRs: memory must stay bounded by bytes, not
/// only by the number of files. Prints Markdown rows.
fn large() {
    let mut rows = Vec::new();
    for (n, size) in [(2_000, 200 << 10), (200, 2 << 20)] {
        let (d, rest) = drain_of(n, 1, &|i| recording_cdr(i, size));
        if let Some((child, _, _)) = rest {
            stop(child);
        }
        rows.push(format!(
            "| backlog drain, {n} recording CDRs of {} KB, 1 subscription | {:.1} s = {:.0} CDR/s; peak RSS **{} MiB** | ≤ 64 MiB |",
            size >> 10,
            d.secs,
            d.rate,
            d.peak_rss_kib / 1024
        ));
    }
    println!("| measure | result | target |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

fn main() {
    let o = opts();
    let _ = CONCURRENCY.set(o.concurrency);
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!("cdrhook benchmark (unix time {date}), {} files", o.files);
    if o.large {
        large();
        return;
    }

    if let Some(subs) = o.only {
        let (_, rest) = drain(o.files, subs);
        if let Some((child, _, _)) = rest {
            stop(child);
        }
        return;
    }
    let (three, rest3) = drain(o.files, 3);
    if let Some((child, _, _)) = rest3 {
        stop(child);
    }
    let (one, rest1) = drain(o.files, 1);
    let Some(state) = rest1 else { return };
    let pid = state.0.id();

    eprintln!("steady state: {} CDR/s for {}s…", o.rate, o.steady_secs);
    let (p50, p99, n) = steady(&state, o.rate, o.steady_secs);
    eprintln!("latency over {n} CDRs: p50 {p50:.2} ms, p99 {p99:.2} ms");

    // Let the steady-state files finish leaving .inflight before measuring idle.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("idle: measuring CPU over {}s…", o.idle_secs);
    let rss_idle = proc_status(pid, "VmRSS:");
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let ticks = cpu_ticks(pid) - t0;
    let (child, _, _) = state;
    stop(child);

    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| backlog drain, 1 subscription | {} files in {:.1} s = **{:.0} CDR/s** | ≥ 10,000 CDR/s |",
        o.files, one.secs, one.rate
    );
    println!(
        "| backlog drain, 3 subscriptions | {} files in {:.1} s = **{:.0} CDR/s** ({:.0} POST/s) | — |",
        o.files,
        three.secs,
        three.rate,
        three.rate * 3.0
    );
    println!(
        "| daemon CPU per CDR (1 sub / 3 subs) | {:.0} µs / {:.0} µs | — |",
        one.cpu_us_per_cdr, three.cpu_us_per_cdr
    );
    println!(
        "| peak RSS during drain (1 sub / 3 subs) | **{} MiB** / {} MiB | ≤ 64 MiB |",
        one.peak_rss_kib / 1024,
        three.peak_rss_kib / 1024
    );
    println!(
        "| drop-to-POST latency at {} CDR/s ({} CDRs) | p50 **{:.2} ms**, p99 **{:.2} ms** | p99 ≤ 10 ms |",
        o.rate, n, p50, p99
    );
    println!("| resident memory idle | **{} MiB** | — |", rss_idle / 1024);
    println!(
        "| CPU over {} s idle | **{} ticks** ({} ms) | ≈ 0 |",
        o.idle_secs,
        ticks,
        ticks * 10
    );
}
