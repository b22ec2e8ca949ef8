//! Memory of the operator's commands on a large journal:
//! the peak resident size of the real `cdrhook` daemon while it answers
//! `attempts --limit 0`, `replay` (to a new subscription, then to the one
//! that had every CDR), `resend --failed` and ten SIGUSR1 in a row, on a
//! journal of 100,000 CDRs with one attempt each.
//!
//! The journal is written with the library's `Journal` API before the
//! daemon starts (what the daemon writes when it takes in and delivers that
//! many CDRs, without spending minutes on the spool). The commands go
//! straight to the control socket, so only the daemon's memory is measured.
//! Each phase starts from a reset peak (`/proc/PID/clear_refs`), so each
//! figure is that phase's own peak (`VmHWM`).
//!
//! `cargo bench --bench operator` (defaults); `-- --cdrs 20000` for a quick look;
//! `-- --replay-first` runs the replay that resends every CDR first.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdrhook::cdr::parse_file;
use cdrhook::config::Subscription;
use cdrhook::delivery::route::subscriptions_for;
use cdrhook::journal::{Attempt, IngestFile, Journal, State, Trigger};
use cdrhook::time::now_ms;

/// The first `DEAD_PER_1000` of every thousand CDRs ended dead.
const DEAD_PER_1000: usize = 10;

fn cdrs_wanted() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--cdrs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// The webhook receiver (benches/common), counting POSTs per path.
struct Receiver {
    port: u16,
    counts: Arc<Mutex<HashMap<String, u64>>>,
    total: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> Receiver {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let total = Arc::new(AtomicU64::new(0));
        let (c, t) = (counts.clone(), total.clone());
        let port = common::start_receiver(move |path, _body| {
            *c.lock()
                .expect("counts")
                .entry(path.to_string())
                .or_default() += 1;
            t.fetch_add(1, Ordering::Relaxed);
        });
        Receiver {
            port,
            counts,
            total,
        }
    }

    fn count(&self, path: &str) -> u64 {
        self.counts
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn cdr(i: usize) -> Vec<u8> {
    format!(
        "{{\"EventType\":\"App.QueueWebhook\",\"CallId\":\"bench-{i}\",\"ScenarioId\":\"b3a8d1f0-22c4-4e8b-8f1d-5c9e7a6b4d21\",\"CallDirection\":\"Inbound\",\"CallerName\":\"Dana Whitfield\",\"CallerNumber\":\"+13125550187\",\"StartDateTime\":\"2026-11-20T14:03:11.482Z\",\"EndDateTime\":\"2026-11-20T14:09:47.015Z\",\"CallLength\":\"00:06:35\",\"WaitTime\":\"00:01:12\",\"TalkTime\":\"00:05:23\",\"QueueId\":\"0c9d7e51-8a3f-4f0b-b6f2-71e4d2a9c803\",\"QueueName\":\"Billing Support\",\"OUPath\":\"/Contoso/Chicago/Billing\",\"MetServiceLevel\":true,\"AgentName\":\"Priya Raman\",\"LeaveReason\":\"AgentAnswered\"}}"
    )
    .into_bytes()
}

fn config(root: &Path, port: u16) -> String {
    let sub = |name: &str| {
        format!(
            "  - name: {name}\n    endpoint: http://127.0.0.1:{port}/{name}\n    events: [\"*\"]\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n    headers:\n      Authorization: Bearer bench-token\n"
        )
    };
    format!(
        "spool:\n  dir: {spool}\n  rescan_interval: 30s\njournal:\n  path: {journal}\ncontrol:\n  socket: {socket}\ndelivery:\n  retry_schedule: [1s, 5s]\nsubscriptions:\n{crm}{warehouse}",
        spool = root.join("spool").display(),
        journal = root.join("journal").display(),
        socket = root.join("control.sock").display(),
        crm = sub("crm"),
        warehouse = sub("warehouse"),
    )
}

/// Writes `n` CDRs, each delivered to `crm` in one attempt (1 % dead), as
/// the daemon would have journaled them.
fn build_journal(path: &Path, sub: &Subscription, n: usize) {
    let journal = Journal::open(path, cdrhook::journal::CACHE_BYTES).expect("open the journal");
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(512);
        let files: Vec<IngestFile> = (done..done + batch)
            .map(|i| IngestFile {
                inflight_name: format!("cdr-{i}.json"),
                cdrs: parse_file(&cdr(i)).expect("a valid CDR"),
                identity: None,
            })
            .collect();
        let out = journal
            .ingest(&files, &|c| subscriptions_for([sub], c))
            .expect("ingest");
        for (k, (_, id)) in out.new_deliveries.iter().enumerate() {
            let mut d = journal.delivery(*id).expect("read").expect("delivery");
            let dead = (done + k) % 1000 < DEAD_PER_1000;
            d.state = if dead { State::Dead } else { State::Delivered };
            d.attempts = 1;
            d.ended_ms = Some(now_ms());
            let attempt = Attempt {
                id: journal.next_id().expect("id"),
                delivery_id: d.id,
                time_ms: now_ms(),
                subscription: d.subscription.clone(),
                event_type: d.event_type.clone(),
                call_id: d.call_id.clone(),
                webhook_id: d.cdr_id.clone(),
                attempt: 1,
                status: Some(if dead { 503 } else { 200 }),
                error: None,
                duration_ms: 3,
                trigger: Trigger::Auto,
                request_headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("authorization".into(), "***".into()),
                    ("webhook-id".into(), d.cdr_id.clone()),
                ],
                response_headers: vec![("content-length".into(), "2".into())],
                response_body: Some(if dead {
                    "maintenance".into()
                } else {
                    "ok".into()
                }),
            };
            journal.record_attempt(&d, &attempt).expect("record");
        }
        done += batch;
    }
    // Closed as a daemon that stopped cleanly leaves it: the counts are
    // read at the next open, not rebuilt by a walk of every delivery.
    journal.close_clean().expect("close the journal");
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

/// Resets the process's peak resident size (`VmHWM`) to its current size.
fn reset_peak(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("cannot reset the peak RSS ({e}); figures are peaks since start");
    }
}

/// One request; reads the whole answer and returns its size and head.
fn request(socket: &Path, line: &str) -> (usize, String) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.write_all(line.as_bytes()).expect("write");
    stream.write_all(b"\n").expect("write");
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let (mut size, mut head) = (0usize, Vec::new());
    loop {
        let buf = reader.fill_buf().expect("read");
        if buf.is_empty() {
            break;
        }
        if head.len() < 300 {
            head.extend_from_slice(&buf[..buf.len().min(300 - head.len())]);
        }
        let n = buf.len();
        let end = buf.ends_with(b"\n");
        size += n;
        reader.consume(n);
        if end {
            break;
        }
    }
    (size, String::from_utf8_lossy(&head).into_owned())
}

/// A subscription's count from `status`.
fn counter(socket: &Path, sub: &str, key: &str) -> u64 {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.write_all(b"{\"cmd\":\"status\"}\n").expect("write");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("read");
    let v: serde_json::Value = serde_json::from_str(&line).expect("status JSON");
    v["result"]["subscriptions"]
        .as_array()
        .and_then(|subs| subs.iter().find(|s| s["name"] == sub))
        .and_then(|s| s[key].as_u64())
        .unwrap_or(u64::MAX)
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not done after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Phase {
    name: String,
    secs: f64,
    peak_kib: u64,
}

fn phase(pid: u32, name: &str, run: impl FnOnce()) -> Phase {
    reset_peak(pid);
    let before = proc_status(pid, "VmRSS:");
    let start = Instant::now();
    run();
    let p = Phase {
        name: name.to_string(),
        secs: start.elapsed().as_secs_f64(),
        peak_kib: proc_status(pid, "VmHWM:"),
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "{name}: {:.1} s, RSS {:.1} MiB before, peak {:.1} MiB, {:.1} MiB after",
        p.secs,
        mib(before),
        mib(p.peak_kib),
        mib(proc_status(pid, "VmRSS:"))
    );
    p
}

fn main() {
    let n = cdrs_wanted();
    // `--replay-first`: the replay that resends every CDR runs first, on
    // the freshly started daemon: what one replay costs, apart from what
    // the walks before it left in sled's memory.
    let replay_first = std::env::args().any(|a| a == "--replay-first");
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("spool")).expect("spool");
    let yaml = config(&root, receiver.port);
    std::fs::write(root.join("config.yaml"), &yaml).expect("config");
    let crm = cdrhook::config::parse(&yaml, &root.join("config.yaml"), &|_| None)
        .expect("bench config")
        .subscriptions
        .remove(0);

    let started = Instant::now();
    build_journal(&root.join("journal"), &crm, n);
    eprintln!(
        "journal of {n} CDRs written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_cdrhook"))
        .args(["run", "--config"])
        .arg(root.join("config.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cdrhook");
    let pid = child.id();
    let socket = root.join("control.sock");
    // The socket is bound before the journal is opened: wait for answers.
    wait("the daemon starts", Duration::from_secs(120), || {
        UnixStream::connect(&socket).is_ok() && counter(&socket, "crm", "delivered") != u64::MAX
    });
    let started_kib = proc_status(pid, "VmHWM:");
    let idle_kib = proc_status(pid, "VmRSS:");
    eprintln!(
        "daemon up: RSS {:.1} MiB, peak so far {:.1} MiB",
        idle_kib as f64 / 1024.0,
        started_kib as f64 / 1024.0
    );
    let dead = n / 1000 * DEAD_PER_1000 + (n % 1000).min(DEAD_PER_1000);

    let resend_replay = || {
        phase(
            pid,
            "`replay --since 30d` to the subscription that had them (one resend each)",
            || {
                let before = receiver.count("/crm");
                let (_, head) = request(
                    &socket,
                    r#"{"cmd":"replay","subscription":"crm","since":"30d"}"#,
                );
                assert!(head.contains(&format!(r#""resent":{n}"#)), "{head}");
                wait("the resends delivered", Duration::from_secs(900), || {
                    receiver.count("/crm") >= before + n as u64
                });
            },
        )
    };
    let mut phases = Vec::new();
    if replay_first {
        phases.push(resend_replay());
    }
    phases.push(phase(pid, "`attempts --limit 0`", || {
        let (size, head) = request(&socket, r#"{"cmd":"attempts","limit":0}"#);
        assert!(head.starts_with(r#"{"ok":true,"result":["#), "{head}");
        eprintln!("  answer: {:.1} MiB", size as f64 / (1 << 20) as f64);
    }));
    phases.push(phase(
        pid,
        "`resend --failed`, then SIGUSR1 ten times in a row (and their deliveries)",
        || {
            let (_, head) = request(&socket, r#"{"cmd":"resend_failed"}"#);
            // A replay that resent every CDR first left none dead.
            let queued = if replay_first { 0 } else { dead };
            assert!(head.contains(&format!(r#""queued":{queued}"#)), "{head}");
            for _ in 0..10 {
                // SAFETY: kill only sends a signal to the daemon's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
            }
            wait("the dead ones delivered", Duration::from_secs(300), || {
                counter(&socket, "crm", "dead") == 0
            });
            // Until the walks the signals started have sent what they queued.
            let mut last = receiver.count("/crm");
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let now = receiver.count("/crm");
                if now == last {
                    break;
                }
                last = now;
            }
            eprintln!("  POSTs to crm: {last} (dead: {dead})");
        },
    ));
    phases.push(phase(
        pid,
        "`replay --since 30d` to a new subscription (and its deliveries)",
        || {
            let (_, head) = request(
                &socket,
                r#"{"cmd":"replay","subscription":"warehouse","since":"30d"}"#,
            );
            assert!(head.contains(&format!(r#""new_deliveries":{n}"#)), "{head}");
            wait("the replay delivered", Duration::from_secs(900), || {
                receiver.count("/warehouse") >= n as u64
            });
        },
    ));
    if !replay_first {
        phases.push(resend_replay());
    }
    // Whether a walk grows memory again once sled has read those pages.
    phases.push(phase(
        pid,
        "`attempts --limit 0` again, after all the above",
        || {
            let (_, head) = request(&socket, r#"{"cmd":"attempts","limit":0}"#);
            assert!(head.starts_with(r#"{"ok":true,"result":["#), "{head}");
        },
    ));
    eprintln!("{} POSTs in all", receiver.total.load(Ordering::Relaxed));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    println!("| phase ({n} CDRs journaled) | time | peak RSS |");
    println!("|---|---|---|");
    println!(
        "| daemon started (journal opened after a clean stop) | — | {:.1} MiB |",
        started_kib as f64 / 1024.0
    );
    for p in &phases {
        println!(
            "| {} | {:.1} s | **{:.1} MiB** |",
            p.name,
            p.secs,
            p.peak_kib as f64 / 1024.0
        );
    }
}
