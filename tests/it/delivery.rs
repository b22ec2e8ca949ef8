//! Delivery (contract §4): retries, dead deliveries, Retry-After, redirects,
//! 4xx, slow endpoints and the queue behind a failing endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::support::*;
use crate::harness::*;

fn two_subs(receiver: &Receiver, bad: &str) -> String {
    [
        subscription("bad", &receiver.url(bad), &["*"]),
        subscription("good", &receiver.url("/good"), &["*"]),
    ]
    .concat()
}

#[test]
fn a_500_endpoint_gets_every_scheduled_attempt_then_the_delivery_is_dead() {
    let receiver = Receiver::start();
    receiver.set("/bad", Behaviour::Status(500));
    let dir = TestDir::new();
    dir.write_config(
        &two_subs(&receiver, "/bad"),
        Some("timeout: 2s\nretry_schedule: [100ms, 200ms]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));

    wait_counts(
        &daemon,
        &[("bad", [0, 0, 1, 0]), ("good", [0, 0, 0, 1])],
        DEADLINE,
    );
    let attempts: Vec<u32> = receiver
        .requests_for("/bad")
        .iter()
        .map(attempt_no)
        .collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "one first attempt and one per schedule step"
    );
    let ids: BTreeSet<String> = receiver.requests().iter().map(webhook_id).collect();
    assert_eq!(
        ids.len(),
        1,
        "the same webhook-id on every attempt and subscription"
    );
    assert_eq!(
        receiver.count("/good"),
        1,
        "the healthy subscription got its copy once"
    );
    // The file leaves once every delivery ended, dead ones included.
    wait_drained(&dir, DEADLINE);

    // A dead delivery is not retried on its own: a second CDR runs its whole
    // course meanwhile, and the first still has exactly 3 attempts.
    dir.drop_file("two.json", &make_cdr(2));
    wait_counts(
        &daemon,
        &[("bad", [0, 0, 2, 0]), ("good", [0, 0, 0, 2])],
        DEADLINE,
    );
    assert_eq!(count_call(&receiver, "/bad", "call-1"), 3);
    assert_eq!(count_call(&receiver, "/bad", "call-2"), 3);
    assert_eq!(count_call(&receiver, "/good", "call-1"), 1);
}

/// 429 and 503 with a `Retry-After` far beyond the step: the next attempt
/// waits longer than any jittered step (honoured), but no more than twice
/// the step (bounded).
#[test]
fn retry_after_is_honoured_up_to_twice_the_step() {
    let receiver = Receiver::start();
    let asked = [("Retry-After", "30")];
    for path in ["/r429", "/r503"] {
        let status = if path == "/r429" { 429 } else { 503 };
        receiver.set(
            path,
            Behaviour::Sequence(vec![
                Behaviour::status_with_headers(status, &asked),
                Behaviour::Status(200),
            ]),
        );
    }
    let dir = TestDir::new();
    let subs = [
        subscription("r429", &receiver.url("/r429"), &["*"]),
        subscription("r503", &receiver.url("/r503"), &["*"]),
    ]
    .concat();
    // Step 800ms: a plain retry comes after 640..960ms; Retry-After 30s is
    // capped at 1.6s.
    dir.write_config(&subs, Some("timeout: 2s\nretry_schedule: [800ms]"));
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    wait_delivered(&daemon, &[("r429", 1), ("r503", 1)], DEADLINE);
    for path in ["/r429", "/r503"] {
        let got = receiver.requests_for(path);
        assert_eq!(got.len(), 2, "{path}");
        assert_eq!(attempt_no(&got[1]), 2);
        let gap = got[1].received - got[0].received;
        assert!(
            gap >= Duration::from_millis(1400),
            "{path}: Retry-After must be honoured beyond the 800ms step (±20%), waited {gap:?}"
        );
        assert!(
            gap < Duration::from_secs(10),
            "{path}: Retry-After is bounded by twice the step (1.6s), waited {gap:?}"
        );
    }
}

#[test]
fn a_redirect_is_not_followed_and_counts_as_a_failed_attempt() {
    let receiver = Receiver::start();
    receiver.set("/moved", Behaviour::Redirect(receiver.url("/target")));
    let dir = TestDir::new();
    dir.write_config(
        &two_subs(&receiver, "/moved"),
        Some("timeout: 2s\nretry_schedule: [100ms, 100ms]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    wait_counts(
        &daemon,
        &[("bad", [0, 0, 1, 0]), ("good", [0, 0, 0, 1])],
        DEADLINE,
    );
    let attempts: Vec<u32> = receiver
        .requests_for("/moved")
        .iter()
        .map(attempt_no)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(
        receiver.count("/target"),
        0,
        "the Location was never requested"
    );
    let failed = daemon.cli_json(&["attempts", "--subscription", "bad"]);
    let failed = failed.as_array().expect("a list of attempts");
    assert_eq!(failed.len(), 3);
    for a in failed {
        assert_eq!(a["status"], 302, "{a:#}");
        assert!(!a["error"].is_null(), "a redirect is a failure: {a:#}");
    }
}

#[test]
fn a_4xx_answer_retries_that_delivery() {
    let receiver = Receiver::start();
    receiver.set(
        "/picky",
        Behaviour::Sequence(vec![
            Behaviour::Status(422),
            Behaviour::Status(404),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    dir.write_config(
        &two_subs(&receiver, "/picky"),
        Some("timeout: 2s\nretry_schedule: [100ms, 100ms, 100ms]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    wait_counts(
        &daemon,
        &[("bad", [0, 0, 0, 1]), ("good", [0, 0, 0, 1])],
        DEADLINE,
    );
    let got = receiver.requests_for("/picky");
    let attempts: Vec<u32> = got.iter().map(attempt_no).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(got.iter().all(|r| r.body == make_cdr(1)));
}

#[test]
fn a_hanging_endpoint_never_holds_back_another_subscription() {
    let receiver = Receiver::start();
    receiver.set("/slow", Behaviour::Hang);
    let dir = TestDir::new();
    let subs = [
        subscription("slow", &receiver.url("/slow"), &["*"]),
        subscription("fast", &receiver.url("/fast"), &["*"]),
    ]
    .concat();
    // The timeout is long so that "fast got everything before any of slow's
    // attempts ended" is a matter of order, not of the machine's speed.
    dir.write_config(
        &subs,
        Some("timeout: 8s\nconcurrency: 4\nretry_schedule: [100ms, 100ms]"),
    );
    let mut daemon = Daemon::start(&dir);
    for i in 0..20 {
        dir.drop_file(&format!("f{i:02}.json"), &make_cdr(i));
    }
    receiver.wait_for_requests("/fast", 20, DEADLINE);
    receiver.wait_for_requests("/slow", 4, DEADLINE);
    let c = counts(&daemon);
    assert_eq!(c["fast"], [0, 0, 0, 20], "{c:?}");
    // No attempt of slow has ended yet (each would end only at the 8s
    // timeout): all 20 of its deliveries are still open and none failed.
    assert_eq!(c["slow"], [20, 0, 0, 0], "{c:?}");
    assert_eq!(
        receiver.count("/slow"),
        4,
        "slow holds exactly its own 4 slots"
    );
    let fast: BTreeSet<String> = receiver.requests_for("/fast").iter().map(call_id).collect();
    assert_eq!(fast.len(), 20);
    daemon.kill9();
}

#[test]
fn new_deliveries_queue_behind_a_failing_endpoints_retry() {
    let receiver = Receiver::start();
    receiver.set("/flaky", Behaviour::Status(503));
    let dir = TestDir::new();
    dir.write_config(
        &subscription("flaky", &receiver.url("/flaky"), &["*"]),
        Some("timeout: 2s\nconcurrency: 4\nretry_schedule: [2s, 2s, 2s, 2s]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("first.json", &make_cdr(0));
    receiver.wait_for_requests("/flaky", 1, DEADLINE);
    wait_counts(&daemon, &[("flaky", [0, 1, 0, 0])], DEADLINE);

    for i in 1..=5 {
        dir.drop_file(&format!("next{i}.json"), &make_cdr(i));
    }
    // All five are taken in and wait.
    wait_counts(&daemon, &[("flaky", [5, 1, 0, 0])], DEADLINE);
    // The retry of the first comes before any of the five.
    let got = receiver.wait_for_requests("/flaky", 2, DEADLINE);
    let first: Vec<(String, u32)> = got.iter().map(|r| (call_id(r), attempt_no(r))).collect();
    assert_eq!(
        first[..2],
        [("call-0".to_string(), 1), ("call-0".to_string(), 2)],
        "none of the queued deliveries reached the endpoint before the retry"
    );

    receiver.set("/flaky", Behaviour::Status(200));
    wait_delivered(&daemon, &[("flaky", 6)], DEADLINE);
    let got = receiver.requests_for("/flaky");
    let calls: Vec<(String, u32)> = got.iter().map(|r| (call_id(r), attempt_no(r))).collect();
    // Nothing but retries of call-0 until it succeeded; then each of the
    // five exactly once, at its first attempt.
    let success = calls
        .iter()
        .position(|(c, _)| c != "call-0")
        .expect("the five arrived");
    assert_eq!(success, 3, "two failures, then the success: {calls:?}");
    assert!(
        calls[..success].iter().all(|(c, _)| c == "call-0"),
        "{calls:?}"
    );
    let rest: BTreeSet<(String, u32)> = calls[success..].iter().cloned().collect();
    let want: BTreeSet<(String, u32)> = (1..=5).map(|i| (format!("call-{i}"), 1)).collect();
    assert_eq!(rest, want, "{calls:?}");
    assert_eq!(calls.len(), success + 5, "{calls:?}");
}

#[test]
fn a_4xx_does_not_hold_back_the_other_deliveries() {
    let receiver = Receiver::start();
    receiver.set(
        "/picky",
        Behaviour::Sequence(vec![Behaviour::Status(422), Behaviour::Status(200)]),
    );
    let dir = TestDir::new();
    dir.write_config(
        &subscription("picky", &receiver.url("/picky"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [3s, 3s]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("refused.json", &make_cdr(0));
    wait_counts(&daemon, &[("picky", [0, 1, 0, 0])], DEADLINE);
    for i in 1..=3 {
        dir.drop_file(&format!("next{i}.json"), &make_cdr(i));
    }
    // The other three go out at once, before the refused one's retry.
    wait_counts(&daemon, &[("picky", [0, 1, 0, 3])], DEADLINE);
    assert_eq!(count_call(&receiver, "/picky", "call-0"), 1);
    wait_delivered(&daemon, &[("picky", 4)], DEADLINE);
    let calls: Vec<(String, u32)> = receiver
        .requests_for("/picky")
        .iter()
        .map(|r| (call_id(r), attempt_no(r)))
        .collect();
    assert_eq!(calls.first(), Some(&("call-0".to_string(), 1)));
    assert_eq!(calls.last(), Some(&("call-0".to_string(), 2)), "{calls:?}");
    assert_eq!(calls.len(), 5, "{calls:?}");
}

#[test]
fn an_answer_slower_than_the_timeout_is_a_failed_attempt() {
    let receiver = Receiver::start();
    receiver.set("/slow", Behaviour::Sleep(Duration::from_secs(30)));
    let dir = TestDir::new();
    dir.write_config(
        &two_subs(&receiver, "/slow"),
        Some("timeout: 1s\nretry_schedule: [100ms]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    // Both attempts end by the timeout, long before the 30s answer.
    wait_counts(
        &daemon,
        &[("bad", [0, 0, 1, 0]), ("good", [0, 0, 0, 1])],
        DEADLINE,
    );
    assert_eq!(receiver.count("/slow"), 2);
    let attempts = daemon.cli_json(&["attempts", "--subscription", "bad"]);
    let attempts = attempts.as_array().expect("a list of attempts");
    assert_eq!(attempts.len(), 2);
    for a in attempts {
        assert!(a["status"].is_null(), "no answer within the timeout: {a:#}");
        let error = a["error"].as_str().unwrap_or_default();
        assert!(error.contains("timeout"), "{a:#}");
        let ms = a["duration_ms"].as_u64().expect("duration_ms");
        assert!((900..5000).contains(&ms), "{a:#}");
    }
}

#[test]
fn a_4xx_answer_to_the_probe_releases_the_queue() {
    // The endpoint fails (503), then answers again but refuses that one CDR
    // (422). The refusal proves the endpoint is back: the queue behind it
    // must go now, not at the refused CDR's next retry a minute later.
    let receiver = Receiver::start();
    receiver.set(
        "/crm",
        Behaviour::Sequence(vec![
            Behaviour::Status(503),
            Behaviour::Status(422),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    dir.write_config(
        &subscription("crm", &receiver.url("/crm"), &["*"]),
        Some("timeout: 2s\nconcurrency: 1\nretry_schedule: [1s, 60s, 60s]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("a.json", &make_cdr(1));
    receiver.wait_for_requests("/crm", 1, DEADLINE);
    // Queued behind the failing endpoint.
    dir.drop_file("b.json", &make_cdr(2));
    dir.drop_file("c.json", &make_cdr(3));
    // a's retry (the 422), then b and c, all well inside a's 60 s wait.
    receiver.wait_for_requests("/crm", 4, Duration::from_secs(15));
    let calls: Vec<String> = receiver.requests_for("/crm").iter().map(call_id).collect();
    assert_eq!(calls[..2], ["call-1", "call-1"], "{calls:?}");
    let rest: BTreeSet<&str> = calls[2..].iter().map(String::as_str).collect();
    assert_eq!(rest, BTreeSet::from(["call-2", "call-3"]), "{calls:?}");
    // b and c delivered; a waits for its own next retry.
    wait_counts(&daemon, &[("crm", [0, 1, 0, 2])], DEADLINE);
}

/// The attempt numbers and reception times of each call on `path`.
fn attempts_by_call(receiver: &Receiver, path: &str) -> BTreeMap<String, Vec<(u32, Instant)>> {
    let mut by_call: BTreeMap<String, Vec<(u32, Instant)>> = BTreeMap::new();
    for r in receiver.requests_for(path) {
        by_call
            .entry(call_id(&r))
            .or_default()
            .push((attempt_no(&r), r.received));
    }
    by_call
}

/// Issue 8 item 1: an endpoint that answers every request `503` with
/// `Retry-After: 0` gets the schedule, not a burst. Each wait is at least
/// the step's jittered minimum (800ms of a 1s step), so a delivery is dead
/// only after its whole schedule; and the next pending delivery, which
/// becomes the probe, is not killed in a burst either.
#[test]
fn retry_after_zero_never_shortens_the_schedule() {
    let receiver = Receiver::start();
    receiver.set(
        "/busy",
        Behaviour::status_with_headers(503, &[("Retry-After", "0")]),
    );
    let dir = TestDir::new();
    dir.write_config(
        &subscription("busy", &receiver.url("/busy"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [1s, 1s, 1s]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    receiver.wait_for_requests("/busy", 1, DEADLINE);
    dir.drop_file("two.json", &make_cdr(2));
    wait_counts(&daemon, &[("busy", [0, 0, 2, 0])], Duration::from_secs(40));

    let by_call = attempts_by_call(&receiver, "/busy");
    assert_eq!(by_call.len(), 2, "{by_call:?}");
    for (call, attempts) in &by_call {
        let numbers: Vec<u32> = attempts.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3, 4], "{call}: one attempt per step");
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].1 - w[0].1).collect();
        for gap in &gaps {
            assert!(
                *gap >= Duration::from_millis(800),
                "{call}: Retry-After: 0 shortened a 1s step (±20%) to {gap:?}; gaps {gaps:?}"
            );
        }
        let span = attempts[3].1 - attempts[0].1;
        assert!(
            span >= Duration::from_millis(2400),
            "{call}: dead after {span:?}, before its schedule had passed"
        );
    }
}

/// A `Retry-After` given as an HTTP date lengthens the wait like seconds
/// do (here a date a minute away, capped at twice the 800ms step).
#[test]
fn retry_after_as_an_http_date_raises_the_wait() {
    let receiver = Receiver::start();
    let later = (chrono::Utc::now() + chrono::Duration::seconds(60))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    receiver.set(
        "/dated",
        Behaviour::Sequence(vec![
            Behaviour::status_with_headers(503, &[("Retry-After", &later)]),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    dir.write_config(
        &subscription("dated", &receiver.url("/dated"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [800ms]"),
    );
    let daemon = Daemon::start(&dir);
    dir.drop_file("one.json", &make_cdr(1));
    wait_delivered(&daemon, &[("dated", 1)], DEADLINE);
    let got = receiver.requests_for("/dated");
    assert_eq!(got.len(), 2);
    let gap = got[1].received - got[0].received;
    // A plain retry comes after 640..960ms; the date asks for a minute,
    // honoured up to 1.6s.
    assert!(
        gap >= Duration::from_millis(1500),
        "Retry-After {later:?} must raise the wait beyond the 800ms step, waited {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(10),
        "Retry-After is bounded by twice the step (1.6s), waited {gap:?}"
    );
}

/// Issue 8 item 8: a test webhook whose attempt was cut short by a crash is
/// ended as failed at the next start, and never sent again on its own.
#[test]
fn a_test_webhook_cut_short_by_a_crash_is_ended_as_failed_not_retried() {
    let receiver = Receiver::start();
    receiver.set("/crm", Behaviour::Hang);
    let dir = TestDir::new();
    let subs = [
        subscription("crm", &receiver.url("/crm"), &["*"]),
        subscription("other", &receiver.url("/other"), &["App.QueueWebhook"]),
    ]
    .concat();
    dir.write_config(&subs, Some("timeout: 30s\nretry_schedule: [100ms, 100ms]"));
    let mut daemon = Daemon::start(&dir);
    let mut cli = cdrhook_command()
        .args(["test", "--socket"])
        .arg(dir.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cdrhook test");
    receiver.wait_for_requests("/crm", 1, DEADLINE);
    // The test delivery is journaled before its attempt starts; a CDR taken
    // in after it makes it durable (intake flushes the journal).
    dir.drop_file("zero.json", &make_cdr(0));
    wait_counts(
        &daemon,
        &[("crm", [2, 0, 0, 0]), ("other", [0, 0, 0, 1])],
        DEADLINE,
    );
    daemon.kill9();
    // The CLI loses its daemon; it exits on its own, or is stopped here.
    let _ = cli.kill();
    let _ = cli.wait();

    receiver.set("/crm", Behaviour::Status(200));
    let daemon = Daemon::start(&dir);
    // The test ends failed; the CDR's delivery is resumed and goes out.
    wait_counts(&daemon, &[("crm", [0, 0, 1, 1])], DEADLINE);
    let status = daemon.subscription_status("crm").to_string();
    assert!(
        status.contains("restarted"),
        "the reason is shown: {status}"
    );
    dir.drop_file("one.json", &make_cdr(1));
    wait_counts(&daemon, &[("crm", [0, 0, 1, 2])], DEADLINE);
    let tests: Vec<_> = receiver
        .requests_for("/crm")
        .into_iter()
        .filter(|r| r.header("x-webhook-event") == Some("App.TestWebhook"))
        .collect();
    assert_eq!(
        tests.len(),
        1,
        "the test webhook was sent once, never again"
    );
    assert!(
        daemon.log().contains("test webhook"),
        "the log says what happened: {}",
        daemon.log_tail(20)
    );
}

#[test]
fn kept_alive_connections_are_reused_up_to_the_concurrency_of_every_subscription() {
    // Two subscriptions on one host, four requests in flight each: eight
    // connections at most, each kept for the next request. (ureq's own
    // default keeps three per host, so with eight in flight most attempts
    // closed their connection and the next one opened a new one: a new
    // TLS handshake per attempt on an https endpoint.)
    let receiver = Receiver::start();
    receiver.set_default(Behaviour::Delayed(
        Duration::from_millis(20),
        Box::new(Behaviour::Status(204)),
    ));
    let dir = TestDir::new();
    dir.write_config(
        &[
            subscription("crm", &receiver.url("/crm"), &["*"]),
            subscription("warehouse", &receiver.url("/wh"), &["*"]),
        ]
        .concat(),
        Some("concurrency: 4"),
    );
    let daemon = Daemon::start(&dir);
    const CDRS: usize = 120;
    for i in 0..CDRS {
        dir.drop_file(&format!("c{i}.json"), &make_cdr(i));
    }
    wait_counts(
        &daemon,
        &[
            ("crm", [0, 0, 0, CDRS as u64]),
            ("warehouse", [0, 0, 0, CDRS as u64]),
        ],
        DEADLINE,
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2 * CDRS);
    let connections: BTreeSet<u64> = requests.iter().map(|r| r.connection).collect();
    assert!(
        connections.len() <= 8,
        "{} connections for {} requests, at most 2 × 4 in flight",
        connections.len(),
        requests.len()
    );
}

/// The `Retry-After` of the endpoint's failing answer (10 s here: twice
/// the 5 s step).
const HELD_FOR: Duration = Duration::from_secs(10);

/// Sends CDR 1 to `/held`, which answers 503 with `Retry-After: 10`, then
/// takes in CDR 2 behind the failing endpoint and stops the daemon cleanly.
/// Returns when the first answer was sent.
fn stop_while_the_endpoint_holds(receiver: &Receiver, dir: &TestDir) -> Instant {
    receiver.set(
        "/held",
        Behaviour::Sequence(vec![
            Behaviour::status_with_headers(503, &[("Retry-After", "10")]),
            Behaviour::Status(204),
        ]),
    );
    dir.write_config(
        &subscription("held", &receiver.url("/held"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [5s]"),
    );
    let mut daemon = Daemon::start(dir);
    dir.drop_file("one.json", &make_cdr(1));
    wait_counts(&daemon, &[("held", [0, 1, 0, 0])], DEADLINE);
    dir.drop_file("two.json", &make_cdr(2));
    // CDR 2 is journaled and waits behind the failing endpoint.
    wait_counts(&daemon, &[("held", [1, 1, 0, 0])], DEADLINE);
    daemon.sigterm();
    assert!(daemon.wait_exit(DEADLINE).success(), "{}", daemon.log());
    let first = receiver.requests_for("/held");
    assert_eq!(first.len(), 1, "one attempt before the stop");
    first[0].received
}

/// Issue 8: the endpoint-wide `Retry-After` is journaled. After a restart
/// nothing goes to the endpoint before it ends, not even the delivery that
/// was only pending (without it, that one would be sent at start-up).
#[test]
fn an_endpoints_retry_after_holds_across_a_restart() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let answered = stop_while_the_endpoint_holds(&receiver, &dir);
    let daemon = Daemon::start(&dir);
    assert!(
        answered.elapsed() < HELD_FOR - Duration::from_secs(2),
        "the restart must come well inside the hold for this test to mean anything"
    );
    wait_delivered(&daemon, &[("held", 2)], DEADLINE + HELD_FOR);
    let got = receiver.requests_for("/held");
    for req in &got[1..] {
        let waited = req.received - answered;
        assert!(
            waited >= HELD_FOR - Duration::from_millis(200),
            "{} attempt {} went {waited:?} after the 503 with Retry-After: 10",
            call_id(req),
            attempt_no(req)
        );
    }
    let calls: BTreeSet<String> = got[1..].iter().map(call_id).collect();
    assert_eq!(
        calls.len(),
        2,
        "both CDRs delivered after the hold: {got:?}"
    );
    assert!(
        daemon.log_contains("held across the restart"),
        "{}",
        daemon.log()
    );
}

/// A URL edited while the daemon was stopped is not held by the old
/// endpoint's `Retry-After`: the pending delivery goes at start-up.
#[test]
fn an_endpoint_hold_is_dropped_when_the_url_changed_during_the_stop() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let answered = stop_while_the_endpoint_holds(&receiver, &dir);
    receiver.set("/moved", Behaviour::Status(204));
    dir.write_config(
        &subscription("held", &receiver.url("/moved"), &["*"]),
        Some("timeout: 2s\nretry_schedule: [5s]"),
    );
    let daemon = Daemon::start(&dir);
    let moved = receiver.wait_for_requests("/moved", 1, DEADLINE);
    assert_eq!(call_id(&moved[0]), "call-2", "the pending delivery first");
    assert!(
        moved[0].received - answered < HELD_FOR - Duration::from_secs(1),
        "not held by the old URL's Retry-After: sent {:?} after it",
        moved[0].received - answered
    );
    assert!(
        !daemon.log_contains("held across the restart"),
        "{}",
        daemon.log()
    );
}
