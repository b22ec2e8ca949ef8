//! Payload filters per subscription (contract §10, `filter`): routing by a
//! CDR's top-level properties, the per-subscription unmatched count in
//! `status` (kept across a restart), a reload changing the routing of new CDRs, `replay` applying
//! the filter, `test` not filtered, `check-config` showing the routing and
//! the warning for a property no event type has. Real daemon, real
//! receiver.

use serde_json::Value;

use crate::harness::support::*;
use crate::harness::*;

/// Retries fast; nothing here is meant to fail.
const FAST: &str = "timeout: 2s\nretry_schedule: [100ms]";

/// A queue CDR with these properties, unique by `id` (its `CallId`).
fn queue_cdr(id: &str, queue: &str, direction: &str, met_service_level: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "EventType": "App.QueueWebhook",
        "CallId": id,
        "CallDirection": direction,
        "QueueId": "q-1",
        "QueueName": queue,
        "WaitTime": "00:00:05",
        "MetServiceLevel": met_service_level,
    }))
    .expect("encode a CDR")
}

/// The `CallId`s a receiver got on `path`, sorted.
fn call_ids(receiver: &Receiver, path: &str) -> Vec<String> {
    let mut ids: Vec<String> = receiver.requests_for(path).iter().map(call_id).collect();
    ids.sort();
    ids
}

#[track_caller]
fn wait_unmatched(daemon: &Daemon, sub: &str, n: u64) {
    wait_for(DEADLINE, &format!("{sub}.unmatched == {n}"), || {
        daemon.counter(sub, "unmatched") == n
    });
}

fn start(dir: &TestDir, subscriptions: &str) -> Daemon {
    dir.config()
        .subscriptions(subscriptions)
        .delivery(FAST)
        .write();
    Daemon::start(dir)
}

#[test]
fn two_subscriptions_with_different_filters_get_exactly_the_matching_cdrs() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = [
        subscription_with(
            "sales",
            &receiver.url("/sales"),
            &["*"],
            "filter: {QueueName: [Sales, Support], CallDirection: Inbound}",
        ),
        subscription_with(
            "billing",
            &receiver.url("/billing"),
            &["App.QueueWebhook"],
            "filter:\n  QueueName: Billing\n  MetServiceLevel: false",
        ),
        subscription("all", &receiver.url("/all"), &["*"]),
    ]
    .concat();
    let mut daemon = start(&dir, &subs);
    let files: [(&str, Vec<u8>); 6] = [
        ("c1.json", queue_cdr("c1", "Sales", "Inbound", true)),
        ("c2.json", queue_cdr("c2", "Support", "Inbound", false)),
        ("c3.json", queue_cdr("c3", "Billing", "Inbound", false)),
        ("c4.json", queue_cdr("c4", "Billing", "Inbound", true)),
        ("c5.json", queue_cdr("c5", "Sales", "Outbound", false)),
        // No QueueName at all: matches no filter on it.
        ("ivr.json", sample_cdr("ivr-inputs.json")),
    ];
    for (name, bytes) in &files {
        dir.drop_file(name, bytes);
    }
    wait_delivered(
        &daemon,
        &[("sales", 2), ("billing", 1), ("all", 6)],
        DEADLINE,
    );
    // Files finish although some subscriptions never got their CDRs.
    wait_drained(&dir, DEADLINE);
    assert_eq!(call_ids(&receiver, "/sales"), ["c1", "c2"]);
    assert_eq!(call_ids(&receiver, "/billing"), ["c3"]);
    assert_eq!(receiver.count("/all"), 6);

    // Unmatched: CDRs of the subscription's event types its filter
    // excluded (billing does not want the IVR CDR, so it is not counted).
    wait_unmatched(&daemon, "sales", 4);
    let status = daemon.status();
    let find = |name: &str| -> Value {
        status["subscriptions"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {status:#}"))
    };
    assert_eq!(find("sales")["unmatched"], 4, "{status:#}");
    assert_eq!(find("billing")["unmatched"], 4, "{status:#}");
    assert_eq!(find("all")["unmatched"], 0, "{status:#}");
    // Every key contract §5 fixes is still there.
    for key in [
        "name",
        "active",
        "pending",
        "retrying",
        "dead",
        "delivered",
        "in_config",
    ] {
        assert!(find("sales").get(key).is_some(), "{key} in {status:#}");
    }
    let out = daemon.cli(&["status"]);
    out.assert_status(0);
    assert!(out.stdout.contains("UNMATCHED"), "{}", out.stdout);

    // Nothing excluded is lost: every CDR is journaled and `attempts`
    // shows only the deliveries made.
    let attempts = daemon.cli_json(&["attempts", "--subscription", "sales"]);
    assert_eq!(attempts.as_array().map(Vec::len), Some(2), "{attempts:#}");

    // The unmatched counts are journaled with the other counts: the same
    // after a clean restart, and after a kill -9 (the last flush, which
    // every intake batch makes).
    let unmatched =
        |daemon: &Daemon| ["sales", "billing", "all"].map(|s| daemon.counter(s, "unmatched"));
    daemon.sigterm();
    let exit = daemon.wait_exit(DEADLINE);
    assert_eq!(exit.code(), Some(0), "SIGTERM exit: {exit}");
    let mut daemon = Daemon::start(&dir);
    assert_eq!(unmatched(&daemon), [4, 4, 0], "after a clean restart");
    daemon.kill9();
    let daemon = Daemon::start(&dir);
    assert_eq!(unmatched(&daemon), [4, 4, 0], "after kill -9");
    assert_eq!(daemon.counter("all", "delivered"), 6);
}

#[test]
fn a_reload_changes_the_routing_of_new_cdrs_and_test_ignores_the_filter() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let with_filter = |filter: &str| {
        subscription_with(
            "crm",
            &receiver.url("/crm"),
            &["App.QueueWebhook", "App.TestWebhook"],
            &format!("filter: {{QueueName: {filter}}}"),
        )
    };
    let daemon = start(&dir, &with_filter("Sales"));
    dir.drop_file("a.json", &queue_cdr("a", "Sales", "Inbound", true));
    dir.drop_file("b.json", &queue_cdr("b", "Billing", "Inbound", true));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    wait_unmatched(&daemon, "crm", 1);
    wait_drained(&dir, DEADLINE);

    dir.config()
        .subscriptions(&with_filter("Billing"))
        .delivery(FAST)
        .write();
    daemon.cli(&["reload"]).assert_status(0);
    dir.drop_file("c.json", &queue_cdr("c", "Billing", "Inbound", true));
    dir.drop_file("d.json", &queue_cdr("d", "Sales", "Inbound", true));
    wait_delivered(&daemon, &[("crm", 2)], DEADLINE);
    wait_unmatched(&daemon, "crm", 2);
    wait_drained(&dir, DEADLINE);
    // The delivery already made (a) is untouched; b is not sent
    // retroactively by the reload.
    assert_eq!(call_ids(&receiver, "/crm"), ["a", "c"]);

    // The test webhook is sent whatever the filter.
    let v = daemon.cli_json(&["test"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let reqs = receiver.wait_for_requests("/crm", 3, DEADLINE);
    assert!(
        reqs.iter()
            .any(|r| r.json()["EventType"] == "App.TestWebhook"),
        "no test webhook among {} requests",
        reqs.len()
    );
}

#[test]
fn replay_to_a_filtered_subscription_sends_only_matching_cdrs() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let with_filter = |filter: &str| {
        subscription_with(
            "crm",
            &receiver.url("/crm"),
            &["App.QueueWebhook"],
            &format!("filter: {{QueueName: {filter}}}"),
        )
    };
    let daemon = start(&dir, &with_filter("Sales"));
    dir.drop_file("a.json", &queue_cdr("a", "Sales", "Inbound", true));
    dir.drop_file("b.json", &queue_cdr("b", "Billing", "Inbound", true));
    dir.drop_file("c.json", &queue_cdr("c", "Support", "Inbound", true));
    dir.drop_file("ivr.json", &sample_cdr("ivr-inputs.json"));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    wait_unmatched(&daemon, "crm", 2);
    wait_drained(&dir, DEADLINE);

    // Widen the filter, then backfill: the excluded CDRs were journaled.
    dir.config()
        .subscriptions(&with_filter("[Sales, Support]"))
        .delivery(FAST)
        .write();
    daemon.cli(&["reload"]).assert_status(0);
    let v = daemon.cli_json(&["replay", "--subscription", "crm", "--since", "1h"]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["new_deliveries"], 1, "c: {v:#}");
    assert_eq!(v["resent"], 1, "a: {v:#}");
    assert_eq!(v["queued"], 2, "{v:#}");
    assert_eq!(v["skipped"], 1, "the IVR CDR: {v:#}");
    assert_eq!(v["unmatched"], 1, "b: {v:#}");
    receiver.wait_for_requests("/crm", 3, DEADLINE);
    wait_delivered(&daemon, &[("crm", 2)], DEADLINE);
    assert_eq!(call_ids(&receiver, "/crm"), ["a", "a", "c"]);
    let out = daemon.cli(&["replay", "--subscription", "crm", "--since", "1h"]);
    out.assert_status(0);
    assert!(
        out.stdout.contains("1 excluded by its filter"),
        "{}",
        out.stdout
    );
    receiver.wait_for_requests("/crm", 5, DEADLINE);
    // Still never b.
    assert_eq!(count_call(&receiver, "/crm", "b"), 0);
}

#[test]
fn check_config_shows_the_routing_and_an_unknown_property_is_a_logged_warning() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = sales_and_all(
        &receiver,
        "filter:\n  QueueName: [Sales, Support]\n  Duration: 30\n",
    );
    dir.config().subscriptions(&subs).delivery(FAST).write();
    let path = dir.config_path();
    let path = path.to_str().expect("UTF-8");
    // Where `Duration:` is in the file as written.
    let text = std::fs::read_to_string(path).expect("read config");
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("Duration:").map(|c| (i + 1, c + 1)))
        .expect("Duration in the config");
    let warning = format!(
        "{path}:{line}:{column}: subscriptions[sales].filter: no event type has a property \"Duration\""
    );

    let out = cdrhook(&["check-config", path]);
    out.assert_status(0);
    assert!(
        out.stdout
            .contains(r#"filter: QueueName: ["Sales", "Support"], Duration: 30"#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("filter: none"), "{}", out.stdout);
    assert!(out.stderr.contains(&warning), "{}", out.stderr);
    let v = cdrhook(&["check-config", path, "--json"]).json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["subscriptions"][0]["filter"],
        serde_json::json!({"QueueName": ["Sales", "Support"], "Duration": [30]}),
        "{v:#}"
    );
    assert_eq!(
        v["subscriptions"][0]["events"],
        serde_json::json!(["App.QueueWebhook"])
    );
    assert_eq!(v["subscriptions"][1]["filter"], Value::Null, "{v:#}");
    assert!(
        v["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with(&warning)))),
        "{v:#}"
    );

    // The daemon starts (a warning does not refuse the file), logs it and
    // shows it in status.
    let daemon = Daemon::start(&dir);
    daemon.wait_log(DEADLINE, &warning);
    let status = daemon.status();
    assert!(
        status["config"]["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with(&warning)))),
        "{status:#}"
    );

    // A bad filter is refused on reload with its line and column, and the
    // filter in force stays.
    let bad = sales_and_all(&receiver, "filter: {QueueName: []}");
    dir.config().subscriptions(&bad).delivery(FAST).write();
    let out = daemon.cli(&["reload"]);
    out.assert_status(1);
    assert!(has_line_column(&out.stderr), "{}", out.stderr);
    assert!(out.stderr.contains("empty"), "{}", out.stderr);
    dir.drop_file("s.json", &queue_cdr("s", "Sales", "Inbound", true));
    dir.drop_file("x.json", &queue_cdr("x", "Other", "Inbound", true));
    // Duration is in no CDR, so the old filter (still in force) matches
    // nothing: both are unmatched for sales.
    wait_delivered(&daemon, &[("all", 2)], DEADLINE);
    wait_unmatched(&daemon, "sales", 2);
    assert_eq!(receiver.count("/sales"), 0);
}
