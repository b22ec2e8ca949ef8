//! Durability (SPEC §3, §6): a kill -9 mid-run, a lost journal, and a
//! SIGTERM while a request hangs. Nothing undelivered may be lost.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::support::*;
use crate::harness::*;

/// These tests run one at a time: the first drives thousands of files
/// through a debug build on a small machine, and the others measure
/// shutdown time.
static HEAVY: Mutex<()> = Mutex::new(());

fn serialised() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The distinct `CallId`s received on `path`.
fn call_ids(receiver: &Receiver, path: &str) -> BTreeSet<String> {
    receiver.requests_for(path).iter().map(call_id).collect()
}

#[test]
fn kill_9_mid_run_loses_no_cdr() {
    let _heavy = serialised();
    const FILES: usize = 3000;
    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.write_config(
        &subscription("all", &receiver.url("/all"), &["*"]),
        Some("timeout: 5s\nretry_schedule: [200ms, 400ms, 800ms]"),
    );
    let mut daemon = Daemon::start(&dir);

    let spool = dir.spool();
    let writer = thread::spawn(move || {
        for i in 0..FILES {
            drop_file(&spool, &format!("c{i:05}.json"), &make_cdr(i));
        }
    });
    receiver.wait_for_requests("/all", FILES / 10, Duration::from_secs(120));
    daemon.kill9();
    let at_kill = receiver.count("/all");
    writer.join().expect("the writer thread");
    assert!(
        at_kill < FILES,
        "the kill came after everything was delivered; the test proves nothing"
    );
    eprintln!("killed after {at_kill} of {FILES} deliveries");

    let daemon = Daemon::start(&dir);
    let want: BTreeSet<String> = (0..FILES).map(|i| format!("call-{i}")).collect();
    let start = Instant::now();
    loop {
        // Cheap checks first; the set of ids only once they pass.
        if receiver.count("/all") >= FILES && spool_drained(&dir) {
            let got = call_ids(&receiver, "/all");
            if got == want {
                break;
            }
            assert!(got.is_subset(&want), "unexpected CallIds received");
        }
        if start.elapsed() > Duration::from_secs(180) {
            let got = call_ids(&receiver, "/all");
            let missing: Vec<&String> = want.difference(&got).take(10).collect();
            panic!(
                "after the restart {} of {FILES} CallIds arrived (missing e.g. {missing:?}); \
                 spool: {} files, .inflight: {} files",
                got.len(),
                dir.spool_json_files().len(),
                inflight_files(&dir).len()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    wait_for(DEADLINE, "nothing open in the journal", || {
        let c = counts(&daemon)["all"];
        c[0] == 0 && c[1] == 0 && c[2] == 0
    });
    wait_drained(&dir, DEADLINE);
    assert!(
        inflight_files(&dir).is_empty(),
        "{:?}",
        inflight_files(&dir)
    );
    assert!(
        dir.rejected_files().is_empty(),
        "{:?}",
        dir.rejected_files()
    );
    eprintln!(
        "{} requests for {FILES} CDRs; restart log: {}",
        receiver.count("/all"),
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("unknown to the journal") || l.contains("resuming"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

#[test]
fn files_in_flight_are_taken_in_again_when_the_journal_is_lost() {
    let _heavy = serialised();
    let receiver = Receiver::start();
    receiver.set("/all", Behaviour::Status(500));
    let dir = TestDir::new();
    // Long steps: the deliveries stay retrying, their files in .inflight.
    let config = "timeout: 2s\nretry_schedule: [30s, 30s]";
    dir.write_config(
        &subscription("all", &receiver.url("/all"), &["*"]),
        Some(config),
    );
    let mut daemon = Daemon::start(&dir);
    for i in 0..5 {
        dir.drop_file(&format!("f{i}.json"), &make_cdr(i));
    }
    // Some failed, the rest queue behind their retry: all five open.
    wait_for(
        DEADLINE,
        "five open deliveries, one failed at least",
        || {
            let [pending, retrying, dead, delivered] = counts(&daemon)["all"];
            pending + retrying == 5 && retrying >= 1 && dead == 0 && delivered == 0
        },
    );
    wait_for(DEADLINE, "five files in .inflight", || {
        inflight_files(&dir).len() == 5
    });
    let failed_before = receiver.count("/all");
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    fs::remove_dir_all(dir.journal()).expect("delete the journal");
    receiver.set("/all", Behaviour::Status(200));
    let daemon = Daemon::start(&dir);
    wait_delivered(&daemon, &[("all", 5)], DEADLINE);
    wait_drained(&dir, DEADLINE);
    let want: BTreeSet<String> = (0..5).map(|i| format!("call-{i}")).collect();
    assert_eq!(call_ids(&receiver, "/all"), want);
    let after: Vec<Request> = receiver.requests_for("/all")[failed_before..].to_vec();
    let resent: BTreeSet<String> = after.iter().map(call_id).collect();
    assert_eq!(resent, want, "every file is sent again after the restart");
    assert_eq!(after.len(), 5, "once each");
    assert!(
        dir.rejected_files().is_empty(),
        "{:?}",
        dir.rejected_files()
    );
}

#[test]
fn sigterm_while_a_request_hangs_exits_in_time_and_the_delivery_resumes() {
    let _heavy = serialised();
    let receiver = Receiver::start();
    receiver.set("/hang", Behaviour::Hang);
    let dir = TestDir::new();
    let timeout = Duration::from_secs(2);
    dir.write_config(
        &subscription("hang", &receiver.url("/hang"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [200ms, 400ms]"),
    );
    let mut daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    let first = receiver.wait_for_requests("/hang", 1, DEADLINE);
    assert!(dir.socket().exists());

    let stopping = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(timeout + Duration::from_secs(3));
    let took = stopping.elapsed();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(
        !dir.socket().exists(),
        "the control socket is removed at exit"
    );
    assert_eq!(receiver.count("/hang"), 1, "no new attempt while stopping");
    eprintln!("stopped in {took:?}");

    receiver.set("/hang", Behaviour::Status(200));
    let daemon = Daemon::start(&dir);
    wait_delivered(&daemon, &[("hang", 1)], DEADLINE);
    let got = receiver.requests_for("/hang");
    assert_eq!(got.len(), 2, "the interrupted delivery is sent again, once");
    assert_eq!(webhook_id(&got[1]), webhook_id(&first[0]));
    assert_eq!(got[1].body, make_cdr(1));
    wait_drained(&dir, DEADLINE);
}
