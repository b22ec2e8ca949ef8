//! Operator commands beside a large journal (contract §5, §8): heavy
//! commands (`attempts --limit 0`, `replay`, `resend --failed`, SIGUSR1)
//! run off the runtime, page by page, so `status` keeps answering and the
//! systemd watchdog keeps being pinged while twenty of them run at once.
//!
//! The journal is built before the daemon starts, with the library's own
//! `Journal` API on the test's directory (what the daemon would have
//! written after taking in and delivering that many CDRs): 100,000 CDRs,
//! the figure the hardening issue names. Building it is about half of the
//! test's time (about 30 s of a debug build's library on the 2-core
//! machine); the twenty commands on it are the other half. The benchmark
//! (`benches/operator.rs`) measures the memory of the same commands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use cdrhook::cdr::parse_file;
use cdrhook::config::Subscription;
use cdrhook::delivery::route::subscriptions_for;
use cdrhook::journal::{Attempt, IngestFile, Journal, State, Trigger};
use cdrhook::time::now_ms;

/// CDRs in the journal. Building it takes half of the test's time.
const CDRS: usize = 100_000;
/// Of which this many ended dead (what `resend --failed` and SIGUSR1 send).
const DEAD: usize = 200;
/// What the daemon's watchdog interval is in the test.
const WATCHDOG: Duration = Duration::from_secs(2);
/// How long `status` may take while the heavy commands run.
const STATUS_WITHIN: Duration = Duration::from_secs(1);

/// The subscription as the config below defines it, for `Journal::ingest`.
fn crm(endpoint: &str) -> Subscription {
    let yaml =
        format!("subscriptions:\n  - name: crm\n    endpoint: {endpoint}\n    events: [\"*\"]\n");
    cdrhook::config::parse(&yaml, Path::new("/tmp/c.yaml"), &|_| None)
        .expect("test config")
        .subscriptions
        .remove(0)
}

/// Writes `CDRS` queue CDRs, each delivered to `crm` in one attempt (the
/// first `DEAD` ended dead after one failed attempt), into a journal at
/// `path`, as the daemon would have.
fn build_journal(path: &Path, sub: &Subscription) {
    let journal = Journal::open(path, cdrhook::journal::CACHE_BYTES).expect("open the journal");
    let mut done = 0;
    while done < CDRS {
        let n = (CDRS - done).min(1000);
        let files: Vec<IngestFile> = (done..done + n)
            .map(|i| IngestFile {
                inflight_name: format!("cdr-{i}.json"),
                cdrs: parse_file(&make_cdr(i)).expect("a valid CDR"),
                identity: None,
            })
            .collect();
        let out = journal
            .ingest(&files, &|c| subscriptions_for([sub], c))
            .expect("ingest");
        assert_eq!(out.new_deliveries.len(), n);
        for (k, (_, id)) in out.new_deliveries.iter().enumerate() {
            let mut d = journal.delivery(*id).expect("read").expect("delivery");
            let dead = done + k < DEAD;
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
                status: Some(if dead { 500 } else { 200 }),
                error: None,
                duration_ms: 3,
                trigger: Trigger::Auto,
                request_headers: vec![("content-type".into(), "application/json".into())],
                response_headers: vec![("content-length".into(), "2".into())],
                response_body: Some("ok".into()),
            };
            journal.record_attempt(&d, &attempt).expect("record");
        }
        done += n;
    }
    journal.flush().expect("flush");
}

/// One request on the control socket; the whole response line.
fn request(socket: &Path, line: &str, timeout: Duration) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(line.as_bytes()).expect("write request");
    stream.write_all(b"\n").expect("write request");
    let mut response = String::new();
    BufReader::new(stream)
        .read_line(&mut response)
        .unwrap_or_else(|e| panic!("{line}: no answer within {timeout:?}: {e}"));
    assert!(response.ends_with('\n'), "{line}: answer cut off");
    response
}

#[test]
fn status_and_the_watchdog_stay_prompt_while_twenty_heavy_commands_run() {
    let dir = TestDir::new();
    let receiver = Receiver::start();
    let endpoint = receiver.url("/crm");
    let started = Instant::now();
    build_journal(&dir.journal(), &crm(&endpoint));
    eprintln!(
        "built a journal of {CDRS} CDRs in {:.1?}",
        started.elapsed()
    );

    // `warehouse` wants no CDR of the journal: a replay to it walks every
    // CDR without sending one.
    dir.config()
        .subscriptions(&format!(
            "{}{}",
            subscription("crm", &endpoint, &["*"]),
            subscription("warehouse", &receiver.url("/wh"), &["App.AgentWebhook"])
        ))
        .write();

    // systemd's side of the watchdog: a datagram socket the daemon notifies.
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let pings: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let listening = Arc::new(AtomicBool::new(true));
    let listener = {
        let (pings, listening) = (pings.clone(), listening.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while listening.load(Ordering::SeqCst) {
                if let Ok(n) = notify.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.lines().any(|l| l == "WATCHDOG=1") {
                        pings.lock().expect("pings").push(Instant::now());
                    }
                }
            }
        })
    };
    let usec = WATCHDOG.as_micros().to_string();
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().expect("UTF-8 path")),
            ("WATCHDOG_USEC", &usec),
            ("RUST_LOG", "info"),
        ],
    );
    let socket = dir.socket().to_path_buf();
    assert_eq!(daemon.counter("crm", "delivered"), (CDRS - DEAD) as u64);
    assert_eq!(daemon.counter("crm", "dead"), DEAD as u64);

    // Twenty heavy commands at once: five of each kind.
    eprintln!("daemon started at {:.1?}", started.elapsed());
    let load_started = Instant::now();
    let running = Arc::new(AtomicBool::new(true));
    let mut heavy = Vec::new();
    for i in 0..20 {
        let socket = socket.clone();
        let pid = daemon.pid();
        heavy.push(thread::spawn(move || {
            let long = Duration::from_secs(120);
            match i % 4 {
                0 => {
                    let r = request(&socket, r#"{"cmd":"attempts","limit":0}"#, long);
                    let head: String = r.chars().take(200).collect();
                    assert!(r.starts_with(r#"{"ok":true,"result":[{"#), "{head}");
                    // Resends made meanwhile add to the history.
                    let listed = r.matches(r#"{"attempt":"#).count();
                    assert!(listed >= CDRS, "{listed} attempts listed of {CDRS}");
                }
                1 => {
                    let r = request(
                        &socket,
                        r#"{"cmd":"replay","subscription":"warehouse","since":"1h"}"#,
                        long,
                    );
                    let v: serde_json::Value = serde_json::from_str(&r).expect("JSON");
                    assert_eq!(v["result"]["skipped"], CDRS, "every CDR walked: {v}");
                    assert_eq!(v["result"]["queued"], 0, "{v}");
                }
                2 => {
                    let r = request(&socket, r#"{"cmd":"resend_failed"}"#, long);
                    let v: serde_json::Value = serde_json::from_str(&r).expect("JSON");
                    assert_eq!(v["ok"], true, "{v}");
                }
                _ => {
                    // SAFETY: kill only sends a signal to the daemon's pid.
                    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
                    assert_eq!(sent, 0, "kill -USR1 {pid}");
                }
            }
        }));
    }

    // Meanwhile, status keeps answering within a second, every time.
    let status_thread = {
        let running = running.clone();
        let socket = socket.clone();
        thread::spawn(move || {
            let (mut slowest, mut asked) = (Duration::ZERO, 0);
            while running.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = request(&socket, r#"{"cmd":"status"}"#, Duration::from_secs(10));
                let took = t.elapsed();
                assert!(r.starts_with(r#"{"ok":true"#), "{r}");
                slowest = slowest.max(took);
                asked += 1;
                assert!(
                    took <= STATUS_WITHIN,
                    "status took {took:?} while heavy commands ran"
                );
                thread::sleep(Duration::from_millis(50));
            }
            (slowest, asked)
        })
    };
    for h in heavy {
        h.join().expect("a heavy command failed");
    }
    let load = load_started.elapsed();
    running.store(false, Ordering::SeqCst);
    let (slowest, asked) = status_thread.join().expect("status stayed prompt");
    eprintln!(
        "20 heavy commands took {load:.1?}; status answered {asked} times, slowest {slowest:?}"
    );
    assert!(
        asked >= 5,
        "status was asked while the load ran ({asked} times)"
    );

    // The dead deliveries were resent (once each at least) and delivered.
    wait_for(
        Duration::from_secs(30),
        "the dead deliveries resent",
        || daemon.counter("crm", "dead") == 0,
    );
    assert!(receiver.count("/crm") >= DEAD);
    assert_eq!(
        receiver.count("/wh"),
        0,
        "a replay of unwanted CDRs sends none"
    );

    // The watchdog was pinged throughout, never an interval apart.
    let load_ended = load_started + load;
    listening.store(false, Ordering::SeqCst);
    listener.join().expect("notify listener");
    let pings = pings.lock().expect("pings").clone();
    assert!(!pings.is_empty(), "the daemon never pinged the watchdog");
    let mut marks = vec![load_started];
    marks.extend(
        pings
            .iter()
            .filter(|&&t| t > load_started && t < load_ended),
    );
    marks.push(load_ended);
    let widest = marks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} watchdog pings during the load, widest gap {widest:?}",
        marks.len() - 2
    );
    assert!(
        widest < WATCHDOG,
        "a gap of {widest:?} between watchdog pings (interval {WATCHDOG:?})"
    );
}
