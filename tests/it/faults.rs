//! Fault tests, sized for CI. Each one breaks something
//! the daemon depends on (the process itself, the endpoint, the watcher, the
//! journal's disk, the writer's protocol) and asserts that every CDR is
//! delivered at least once, or sits in the rejected directory with a reason.
//!
//! They run one at a time (a static mutex): several drive thousands of files
//! through a debug build, and the others measure time gaps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::support::*;
use crate::harness::*;

static HEAVY: Mutex<()> = Mutex::new(());

fn serialised() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// Linux signal numbers (the same on x86_64 and aarch64).
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// The distinct `CallId`s received on `path`.
fn call_ids(receiver: &Receiver, path: &str) -> BTreeSet<String> {
    receiver.requests_for(path).iter().map(call_id).collect()
}

/// `call-0` … `call-{n-1}`.
fn want_calls(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("call-{i}")).collect()
}

/// Waits until every CallId in `want` arrived on `path` (at least once),
/// and nothing else did.
#[track_caller]
fn wait_all_calls(receiver: &Receiver, path: &str, want: &BTreeSet<String>, deadline: Duration) {
    let start = Instant::now();
    loop {
        // The count is cheap; the set of ids only once the count allows it.
        if receiver.count(path) >= want.len() {
            let got = call_ids(receiver, path);
            let unexpected: Vec<&String> = got.difference(want).take(10).collect();
            assert!(unexpected.is_empty(), "unexpected CallIds: {unexpected:?}");
            if got.len() == want.len() {
                return;
            }
        }
        if start.elapsed() > deadline {
            let got = call_ids(receiver, path);
            let missing: Vec<&String> = want.difference(&got).take(10).collect();
            panic!(
                "after {deadline:?}, {} of {} CallIds arrived on {path} (missing e.g. {missing:?})",
                got.len(),
                want.len()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The end state every test wants: nothing open or dead in the journal,
/// spool and `.inflight` empty, nothing rejected.
#[track_caller]
fn assert_clean_end(dir: &TestDir, daemon: &Daemon, sub: &str, delivered: u64) {
    wait_counts(daemon, &[(sub, [0, 0, 0, delivered])], DEADLINE);
    wait_drained(dir, DEADLINE);
    assert!(inflight_files(dir).is_empty(), "{:?}", inflight_files(dir));
    assert!(
        dir.rejected_files().is_empty(),
        "{:?}",
        dir.rejected_files()
    );
}

/// `cdrhook attempts --failed --json` (all of them).
fn failed_attempts(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .cli_json(&["attempts", "--failed", "--limit", "100000"])
        .as_array()
        .expect("a list of attempts")
        .clone()
}

/// A small deterministic generator (xorshift64*), so a failing run can be
/// repeated with its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `1..=n` (n ≥ 1).
    fn between_1_and(&mut self, n: usize) -> usize {
        1 + (self.next() % n.max(1) as u64) as usize
    }
}

/// `CDRHOOK_FAULT_SEED` if set, else the clock.
fn seed() -> u64 {
    match std::env::var("CDRHOOK_FAULT_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("CDRHOOK_FAULT_SEED={s:?}: {e}")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

// ---------------------------------------------------------------------------
// 1. kill -9 at random moments

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let _heavy = serialised();
    const FILES: usize = 2500;
    const KILLS: usize = 4;
    let seed = seed();
    eprintln!("kill_9_at_random_moments_loses_nothing: seed {seed} (repeat with CDRHOOK_FAULT_SEED={seed})");
    let mut rng = Rng::new(seed);

    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.write_config(
        &subscription("all", &receiver.url("/all"), &["*"]),
        Some("timeout: 5s\nretry_schedule: [200ms, 400ms, 800ms]"),
    );
    let mut daemon = Daemon::start(&dir);

    // The phone system keeps writing through the kills and restarts:
    // bursts of 50 files every 40 ms.
    let spool = dir.spool();
    let writer = thread::spawn(move || {
        for i in 0..FILES {
            drop_file(&spool, &format!("c{i:05}.json"), &make_cdr(i));
            if i % 50 == 49 {
                thread::sleep(Duration::from_millis(40));
            }
        }
    });

    let mut kills = Vec::new();
    for k in 0..KILLS {
        // Kill after a random number of further requests, at most the
        // CDRs still missing split over the kills still to come, so every
        // kill lands before the run is over.
        // The request count is read before the distinct CDRs: requests
        // that arrive in between only lower `left`, so `count + left` is
        // always still to come. Read the other way round, a CDR arriving
        // in between put the target past the last request (CI, stop 15).
        let count = receiver.count("/all");
        let left = FILES - call_ids(&receiver, "/all").len();
        assert!(left > 0, "everything arrived before kill {k}");
        let step = rng.between_1_and(left / (KILLS - k));
        let target = count + step;
        receiver.wait_for_requests("/all", target, Duration::from_secs(120));
        daemon.kill9();
        let at = receiver.count("/all");
        eprintln!(
            "kill {}: after {at} requests (+{step}), {} files still in the spool, {} in .inflight",
            k + 1,
            dir.spool_json_files().len(),
            inflight_files(&dir).len()
        );
        kills.push(at);
        daemon = Daemon::start(&dir);
    }
    writer.join().expect("the writer thread");

    wait_all_calls(
        &receiver,
        "/all",
        &want_calls(FILES),
        Duration::from_secs(180),
    );
    assert_clean_end(&dir, &daemon, "all", FILES as u64);
    eprintln!(
        "{} requests for {FILES} CDRs; kills after {kills:?} requests",
        receiver.count("/all")
    );
}

// ---------------------------------------------------------------------------
// 2. The receiver goes away, and comes back on the same port

#[test]
fn receiver_down_then_up() {
    let _heavy = serialised();
    const FILES: usize = 200;
    let receiver = Receiver::start();
    let port = receiver.port();
    let url = receiver.url("/all");
    drop(receiver);

    let dir = TestDir::new();
    // Long enough (≈7 s) that nothing dies while the receiver is down.
    dir.write_config(
        &subscription("all", &url, &["*"]),
        Some("timeout: 2s\nretry_schedule: [200ms, 400ms, 800ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s]"),
    );
    let daemon = Daemon::start(&dir);
    for i in 0..FILES {
        dir.drop_file(&format!("f{i:04}.json"), &make_cdr(i));
    }
    // Everything taken in, nothing delivered, and the endpoint has been
    // retried (more failed attempts than the first concurrent wave).
    wait_for(DEADLINE, "all taken in, endpoint failing, retried", || {
        let [pending, retrying, dead, delivered] = counts(&daemon)["all"];
        pending + retrying == FILES as u64
            && retrying >= 1
            && dead == 0
            && delivered == 0
            && failed_attempts(&daemon).len() >= 6
    });
    for a in failed_attempts(&daemon) {
        assert!(a["status"].is_null(), "no answer from a closed port: {a:#}");
        let error = a["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains("connect"), "{a:#}");
    }

    let receiver = Receiver::start_on(port);
    wait_all_calls(&receiver, "/all", &want_calls(FILES), DEADLINE);
    assert_clean_end(&dir, &daemon, "all", FILES as u64);
    assert_eq!(daemon.counter("all", "dead"), 0);
}

// ---------------------------------------------------------------------------
// 3. An endpoint that accepts the connection and never answers

#[test]
fn receiver_that_accepts_and_never_answers() {
    let _heavy = serialised();
    const FILES: usize = 20;
    let receiver = Receiver::start();
    receiver.set("/hang", Behaviour::Hang);
    let dir = TestDir::new();
    dir.write_config(
        &subscription("hang", &receiver.url("/hang"), &["*"]),
        Some("timeout: 1s\nretry_schedule: [200ms, 400ms, 800ms, 1s, 1s, 1s, 1s, 1s]"),
    );
    let daemon = Daemon::start(&dir);
    for i in 0..FILES {
        dir.drop_file(&format!("f{i:02}.json"), &make_cdr(i));
    }
    // The first wave (4 in flight) times out, then at least one retry does.
    wait_for(DEADLINE, "five attempts ended by the timeout", || {
        failed_attempts(&daemon).len() >= 5
    });
    assert_eq!(counts(&daemon)["hang"][3], 0, "nothing delivered yet");
    receiver.set("/hang", Behaviour::Status(200));

    wait_all_calls(&receiver, "/hang", &want_calls(FILES), DEADLINE);
    assert_clean_end(&dir, &daemon, "hang", FILES as u64);
    let failed = failed_attempts(&daemon);
    assert!(failed.len() >= 5, "{failed:#?}");
    for a in &failed {
        assert!(a["status"].is_null(), "no answer within the timeout: {a:#}");
        let error = a["error"].as_str().unwrap_or_default();
        assert!(error.contains("timeout"), "{a:#}");
        let ms = a["duration_ms"].as_u64().expect("duration_ms");
        assert!((900..5000).contains(&ms), "ended by the 1s timeout: {a:#}");
    }
}

// ---------------------------------------------------------------------------
// 4. Rate limiting with Retry-After

#[test]
fn rate_limited_with_retry_after() {
    let _heavy = serialised();
    const FILES: usize = 10;
    const LIMITED: usize = 6;
    let receiver = Receiver::start();
    let mut steps = vec![Behaviour::status_with_headers(429, &[("Retry-After", "1")]); LIMITED];
    steps.push(Behaviour::Status(200));
    receiver.set("/rl", Behaviour::Sequence(steps));
    let dir = TestDir::new();
    // Step 700ms: a retry on the schedule alone comes after 560..840ms, so
    // a gap of 0.9s or more can only come from the Retry-After (1s, below
    // the 1.4s bound of twice the step).
    dir.write_config(
        &subscription("rl", &receiver.url("/rl"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [700ms, 700ms, 700ms, 700ms, 700ms, 700ms]"),
    );
    let daemon = Daemon::start(&dir);
    for i in 0..FILES {
        dir.drop_file(&format!("f{i:02}.json"), &make_cdr(i));
    }
    wait_all_calls(&receiver, "/rl", &want_calls(FILES), DEADLINE);
    assert_clean_end(&dir, &daemon, "rl", FILES as u64);

    let got = receiver.requests_for("/rl");
    assert_eq!(
        got.len(),
        FILES + LIMITED,
        "one retry per 429, nothing else"
    );
    // The first LIMITED requests were answered 429 + Retry-After: 1. The
    // next request with the same webhook-id must come a second later.
    let mut gaps = Vec::new();
    for (i, limited) in got.iter().enumerate().take(LIMITED) {
        let id = webhook_id(limited);
        let next = got[i + 1..]
            .iter()
            .find(|r| webhook_id(r) == id)
            .unwrap_or_else(|| panic!("{} was never retried", call_id(limited)));
        assert_eq!(attempt_no(next), attempt_no(limited) + 1);
        let gap = next.received - limited.received;
        gaps.push((call_id(limited), attempt_no(limited), gap));
    }
    eprintln!("gaps after a 429: {gaps:?}");
    for (call, attempt, gap) in &gaps {
        assert!(
            *gap >= Duration::from_millis(900),
            "{call} attempt {attempt} got 429 Retry-After: 1 and was retried after {gap:?}; all: {gaps:?}"
        );
    }
    let failed = failed_attempts(&daemon);
    assert_eq!(failed.len(), LIMITED);
    assert!(failed.iter().all(|a| a["status"] == 429), "{failed:#?}");
}

// ---------------------------------------------------------------------------
// 5. The rescan catches what the watcher misses

#[test]
fn rescan_catches_what_the_watcher_misses() {
    let _heavy = serialised();
    const FILES: usize = 1000;
    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.config()
        .subscriptions(&subscription("all", &receiver.url("/all"), &["*"]))
        .spool("rescan_interval: 1s")
        .write();
    let daemon = Daemon::start_with_env(&dir, &[("CDRHOOK_NO_SPOOL_WATCH", "1")]);
    assert!(
        daemon.log_contains("file watcher unavailable"),
        "the log says the watcher is off: {}",
        daemon.log_tail(20)
    );
    for i in 0..FILES {
        dir.drop_file(&format!("f{i:04}.json"), &make_cdr(i));
    }
    wait_all_calls(
        &receiver,
        "/all",
        &want_calls(FILES),
        Duration::from_secs(60),
    );
    assert_clean_end(&dir, &daemon, "all", FILES as u64);
    assert!(daemon.log_contains("rescan found"), "found by rescans");
}

/// The watcher on, its inotify queue overflowed (the daemon is stopped with
/// SIGSTOP while more events than `max_queued_events` pile up, so no global
/// sysctl needs changing), and a rescan interval far beyond the test: only
/// the rescan that follows an overflow can find the files.
#[test]
fn inotify_overflow_triggers_a_rescan() {
    let _heavy = serialised();
    const FILES: usize = 300;
    let max_queued: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    if max_queued > 200_000 {
        cannot_run(
            "inotify_overflow_triggers_a_rescan",
            &format!("fs.inotify.max_queued_events is {max_queued}; too many events to overflow it in a test"),
        );
        return;
    }
    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.config()
        .subscriptions(&subscription("all", &receiver.url("/all"), &["*"]))
        .spool("rescan_interval: 1h")
        .write();
    let mut daemon = Daemon::start(&dir);
    daemon.signal(SIGSTOP);
    let resume = Continue(&daemon);
    // Every thread stopped: none of the events below can be read early.
    wait_for(DEADLINE, "every thread of the daemon to be stopped", || {
        all_threads_stopped(daemon.pid())
    });
    // Noise first: two hidden files written and closed, alternating (the
    // kernel merges identical consecutive events; the spool watch asks for
    // close-write and moved-to only, so a write without a close raises
    // nothing), fill the queue...
    let (a, b) = (dir.spool().join(".noise-a"), dir.spool().join(".noise-b"));
    for _ in 0..max_queued / 2 + 100 {
        fs::write(&a, b"x").expect("write noise");
        fs::write(&b, b"x").expect("write noise");
    }
    // ...so that every event of the CDR files is lost.
    for i in 0..FILES {
        dir.drop_file(&format!("f{i:04}.json"), &make_cdr(i));
    }
    drop(resume);
    daemon.wait_log(DEADLINE, "spool watcher overflowed");
    wait_all_calls(&receiver, "/all", &want_calls(FILES), DEADLINE);
    assert_clean_end(&dir, &daemon, "all", FILES as u64);
    assert!(daemon.is_running());
}

/// Whether every thread of `pid` is in state T (stopped).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    })
}

/// Sends SIGCONT on drop, so a stopped daemon never outlives a failed test
/// (a stopped process ignores the SIGKILL of `Daemon`'s drop until then).
struct Continue<'a>(&'a Daemon);

impl Drop for Continue<'_> {
    fn drop(&mut self) {
        self.0.signal(SIGCONT);
    }
}

// ---------------------------------------------------------------------------
// 6. The journal's disk fills up

/// A tmpfs mounted for the test; unmounted (lazily) on drop, even on panic.
pub(crate) struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (e.g. "8m") at `path`, or says why not.
    pub(crate) fn mount(path: &Path, size: &str) -> Result<TmpfsMount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".to_string());
        }
        fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let out = Command::new("umount").arg("-l").arg(&self.path).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "umount {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("umount {}: {e}", self.path.display()),
        }
    }
}

/// Fills the filesystem of `path` with one file until a write fails with
/// ENOSPC; returns its size.
pub(crate) fn fill_with_ballast(path: &Path) -> u64 {
    let mut file = fs::File::create(path).expect("create the ballast");
    let chunk = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => size += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("write the ballast: {e}"),
        }
    }
    // Top up what a partial page left.
    for _ in 0..4096 {
        if file.write(&[0u8]).is_err() {
            break;
        }
        size += 1;
    }
    size
}

/// A queue CDR of about 4 KiB, unique per `i`.
fn large_cdr(i: usize) -> Vec<u8> {
    format!(
        r#"{{"EventType":"App.QueueWebhook","CallId":"call-{i}","QueueId":"q","QueueName":"Bulk","Notes":"{}"}}"#,
        "n".repeat(4000)
    )
    .into_bytes()
}

#[test]
fn journal_disk_full_keeps_files_in_the_spool() {
    let _heavy = serialised();
    const FILES: usize = 100;
    let dir = TestDir::new();
    let jfs = dir.path().join("jfs");
    let mount = match TmpfsMount::mount(&jfs, "8m") {
        Ok(m) => m,
        Err(why) => {
            cannot_run(
                "journal_disk_full_keeps_files_in_the_spool",
                &why.to_string(),
            );
            return;
        }
    };
    let receiver = Receiver::start();
    // A second subscription whose endpoint fails until the end: its
    // delivery of the first CDR keeps retrying while the disk is full, and
    // those attempts cannot be journaled.
    receiver.set("/later", Behaviour::Status(503));
    let subs = [
        subscription("all", &receiver.url("/all"), &["*"]),
        subscription("later", &receiver.url("/later"), &["*"]),
    ]
    .concat();
    dir.config()
        .subscriptions(&subs)
        .journal(&format!(
            "path: {}",
            yaml_str(&jfs.join("journal").to_string_lossy())
        ))
        .delivery("timeout: 2s\nretry_schedule: [500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms]")
        .write();
    let daemon = Daemon::start(&dir);
    // One CDR through first: the journal works on this filesystem.
    dir.drop_file("first.json", &large_cdr(FILES));
    wait_counts(
        &daemon,
        &[("all", [0, 0, 0, 1]), ("later", [0, 1, 0, 0])],
        DEADLINE,
    );

    let ballast = jfs.join("ballast");
    let filled = fill_with_ballast(&ballast);
    eprintln!("ballast: {filled} bytes");
    let mut dropped = BTreeMap::new();
    for i in 0..FILES {
        let name = format!("f{i:03}.json");
        let bytes = large_cdr(i);
        dir.drop_file(&name, &bytes);
        dropped.insert(name, bytes);
    }
    // The journal failed, and failed again at a later try made after every
    // file was in place (the daemon keeps trying, at growing intervals).
    let dropped_at = daemon.log().len();
    wait_for(
        DEADLINE,
        "a journal error after the files were dropped",
        || {
            let log = daemon.log();
            let later = &log[dropped_at.min(log.len())..];
            later.contains("cannot journal") || later.contains("cannot reopen the journal")
        },
    );
    let mut daemon = daemon;
    assert!(daemon.is_running(), "the daemon keeps running");
    assert_eq!(daemon.counter("all", "delivered"), 1);
    // Every file untouched in the spool: not moved, not rejected, not lost.
    let in_spool: BTreeMap<String, Vec<u8>> =
        read_files(&dir.spool(), ".json").into_iter().collect();
    assert_eq!(
        in_spool.keys().collect::<Vec<_>>(),
        dropped.keys().collect::<Vec<_>>()
    );
    assert!(in_spool == dropped, "the files are byte-identical");
    let inflight = inflight_files(&dir);
    assert!(
        inflight.len() == 1 && inflight[0].ends_with("-first.json"),
        "only the first file, whose delivery to /later is open: {inflight:?}"
    );
    assert!(
        dir.rejected_files().is_empty(),
        "{:?}",
        dir.rejected_files()
    );
    assert_eq!(receiver.count("/all"), 1, "nothing of them was sent");
    let later = receiver.count("/later");
    assert!(
        receiver
            .requests_for("/later")
            .iter()
            .all(|r| call_id(r) == format!("call-{FILES}")),
        "only the first CDR was tried on /later"
    );
    let log = daemon.log();
    assert!(
        log.contains("No space left on device"),
        "the log names the cause"
    );
    assert_eq!(
        daemon.status()["journal"]["available"],
        false,
        "status tells the operator the journal is unavailable"
    );

    fs::remove_file(&ballast).expect("remove the ballast");
    daemon.wait_log(Duration::from_secs(40), "journal reopened");
    assert_eq!(daemon.status()["journal"]["available"], true);
    let mut want = want_calls(FILES);
    want.insert(format!("call-{FILES}"));
    wait_all_calls(&receiver, "/all", &want, Duration::from_secs(40));
    // The delivery that retried through the outage goes on retrying.
    receiver.wait_for_requests("/later", later + 1, DEADLINE);
    receiver.set("/later", Behaviour::Status(200));
    wait_all_calls(&receiver, "/later", &want, Duration::from_secs(40));
    wait_counts(
        &daemon,
        &[
            ("all", [0, 0, 0, FILES as u64 + 1]),
            ("later", [0, 0, 0, FILES as u64 + 1]),
        ],
        DEADLINE,
    );
    wait_drained(&dir, DEADLINE);
    assert!(
        dir.rejected_files().is_empty(),
        "{:?}",
        dir.rejected_files()
    );
    for (name, bytes) in &dropped {
        let got = requests_with_body(&receiver, "/all", bytes);
        assert!(!got.is_empty(), "{name} was delivered with its exact bytes");
    }
    drop(daemon);
    drop(mount);
}

// ---------------------------------------------------------------------------
// 7. A writer that does not use the rename protocol

#[test]
fn slow_writer_in_place() {
    let _heavy = serialised();
    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.write_config(&subscription("all", &receiver.url("/all"), &["*"]), None);
    let daemon = Daemon::start(&dir);
    let body = sample_cdr("queue-answered.json");
    let other = make_cdr(7);
    // Pauses shorter than spool::SETTLE (2s), but longer than a rescan
    // (1s), so the daemon reads each file half-written more than once.
    let pauses = [
        Duration::from_millis(700),
        Duration::from_millis(1300),
        Duration::from_millis(1000),
    ];
    // One writer keeps the file open between chunks; the other opens,
    // appends and closes each time (which the watcher reports every time).
    let held = writer_in_place(dir.spool().join("held.json"), body.clone(), pauses, true);
    let reopened = writer_in_place(
        dir.spool().join("reopened.json"),
        other.clone(),
        pauses,
        false,
    );
    held.join().expect("writer");
    reopened.join().expect("writer");

    wait_delivered(&daemon, &[("all", 2)], DEADLINE);
    assert_clean_end(&dir, &daemon, "all", 2);
    for (name, want) in [("held.json", &body), ("reopened.json", &other)] {
        let want = expected_body(want);
        let got: Vec<Request> = receiver
            .requests_for("/all")
            .into_iter()
            .filter(|r| r.body == want)
            .collect();
        assert_eq!(got.len(), 1, "{name}: delivered once, complete");
        assert!(
            daemon.log_contains(&format!("{name} is still being written")),
            "{name}: the daemon saw it half-written (else the test proves nothing)"
        );
    }
    assert_eq!(receiver.count("/all"), 2, "nothing partial was sent");
}

/// Creates `path` directly and writes `bytes` to it in four chunks with
/// `pauses` between them.
fn writer_in_place(
    path: PathBuf,
    bytes: Vec<u8>,
    pauses: [Duration; 3],
    keep_open: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let n = bytes.len();
        let cuts = [0, n / 5, n / 2, n * 4 / 5, n];
        let mut file = Some(fs::File::create(&path).expect("create"));
        for (i, w) in cuts.windows(2).enumerate() {
            if file.is_none() {
                file = Some(
                    fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .expect("reopen"),
                );
            }
            let f = file.as_mut().expect("open");
            f.write_all(&bytes[w[0]..w[1]]).expect("write a chunk");
            f.flush().expect("flush");
            if !keep_open {
                file = None;
            }
            if let Some(pause) = pauses.get(i) {
                thread::sleep(*pause);
            }
        }
    })
}

// ---------------------------------------------------------------------------
// 8. A name used again with new content

#[test]
fn same_name_reused_with_new_content() {
    let _heavy = serialised();
    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.config()
        .subscriptions(&subscription("all", &receiver.url("/all"), &["*"]))
        .spool("after_ingest: archive")
        .write();
    let daemon = Daemon::start(&dir);
    let a = make_cdr(1);
    let b = make_cdr(2);
    dir.drop_file("x.json", &a);
    wait_delivered(&daemon, &[("all", 1)], DEADLINE);
    wait_for(DEADLINE, "x.json in the archive", || {
        dir.archive_files() == ["x.json"]
    });
    dir.drop_file("x.json", &b);
    wait_delivered(&daemon, &[("all", 2)], DEADLINE);
    wait_for(DEADLINE, "x.json and x.json.1 in the archive", || {
        dir.archive_files() == ["x.json", "x.json.1"]
    });
    assert_clean_end(&dir, &daemon, "all", 2);

    let got = receiver.requests_for("/all");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, a);
    assert_eq!(got[1].body, b);
    assert_ne!(webhook_id(&got[0]), webhook_id(&got[1]));
    assert_eq!(fs::read(dir.archive().join("x.json")).expect("read"), a);
    assert_eq!(fs::read(dir.archive().join("x.json.1")).expect("read"), b);
}

// ---------------------------------------------------------------------------
// Several subscriptions end the deliveries of one file at the same moment

/// Every file's last deliveries end on different threads at nearly the
/// same time (four subscriptions, answers held 20 ms so they return
/// together): each file is still archived exactly once, under its name,
/// never also as `NAME.json.1`. (The unit test
/// `spool::tests::concurrent_finish_of_one_file_archives_exactly_one_copy`
/// hits the race directly; this is the same promise end to end.)
#[test]
fn subscriptions_finishing_one_file_together_archive_it_once() {
    let _heavy = serialised();
    const FILES: usize = 150;
    const SUBS: usize = 4;
    let receiver = Receiver::start();
    receiver.set_default(Behaviour::Sleep(Duration::from_millis(20)));
    let dir = TestDir::new();
    let subs: Vec<String> = (0..SUBS)
        .map(|s| subscription(&format!("s{s}"), &receiver.url(&format!("/s{s}")), &["*"]))
        .collect();
    dir.config()
        .subscriptions(&subs.join(""))
        .spool("after_ingest: archive")
        .delivery_extra("concurrency: 8")
        .write();
    let daemon = Daemon::start(&dir);
    let mut names = BTreeSet::new();
    for i in 0..FILES {
        let name = format!("f{i:04}.json");
        dir.drop_file(&name, &make_cdr(i));
        names.insert(name);
    }
    let want: Vec<(String, u64)> = (0..SUBS).map(|s| (format!("s{s}"), FILES as u64)).collect();
    let want: Vec<(&str, u64)> = want.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    wait_delivered(&daemon, &want, Duration::from_secs(60));
    wait_for(DEADLINE, "every file out of .inflight/", || {
        inflight_files(&dir).is_empty()
    });
    let archived: BTreeSet<String> = dir.archive_files().into_iter().collect();
    assert_eq!(
        archived, names,
        "each file archived once, under its own name"
    );
    assert!(
        !daemon.log_contains("cannot remove"),
        "{}",
        daemon.log_tail(50)
    );
    // How often the race was actually run (it depends on timing).
    eprintln!(
        "files finished twice at once: {}",
        daemon
            .log()
            .matches("already finished by another thread")
            .count()
    );
}
