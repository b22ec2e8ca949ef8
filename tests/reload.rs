//! Config reload (SPEC §2) and what it does to queued deliveries (SPEC §4):
//! editors' two ways of saving, refused versions, start-up with a bad file,
//! and subscriptions made inactive or removed.

mod common;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use support::*;

/// SPEC: a valid version takes effect within one second; give it three.
const RELOAD_DEADLINE: Duration = Duration::from_secs(3);

fn listed(daemon: &Daemon) -> Vec<String> {
    daemon.status()["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .filter(|s| s["in_config"] != false)
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect()
}

#[track_caller]
fn wait_listed(daemon: &Daemon, want: &[&str]) {
    wait_for(
        RELOAD_DEADLINE,
        &format!("subscriptions {want:?} in status"),
        || listed(daemon) == want,
    );
}

#[test]
fn a_new_subscription_takes_effect_whether_the_file_is_renamed_or_rewritten() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let a = subscription("a", &receiver.url("/a"), &["*"]);
    let b = subscription("b", &receiver.url("/b"), &["*"]);
    let c = subscription("c", &receiver.url("/c"), &["App.QueueWebhook"]);
    dir.write_config(&a, None);
    let daemon = Daemon::start(&dir);

    // An editor that writes a new file and renames it over the old one.
    dir.config()
        .subscriptions(&[a.clone(), b.clone()].concat())
        .write();
    wait_listed(&daemon, &["a", "b"]);
    dir.drop_file("one.json", &make_cdr(1));
    receiver.wait_for_requests("/b", 1, Duration::from_secs(5));

    // An editor that truncates and rewrites the same file.
    dir.config()
        .subscriptions(&[a.clone(), b.clone(), c.clone()].concat())
        .write_in_place();
    wait_listed(&daemon, &["a", "b", "c"]);
    dir.drop_file("two.json", &make_cdr(2));
    receiver.wait_for_requests("/c", 1, Duration::from_secs(5));

    wait_delivered(&daemon, &[("a", 2), ("b", 2), ("c", 1)], DEADLINE);
    assert_eq!(count_call(&receiver, "/c", "call-2"), 1);
    assert_eq!(
        count_call(&receiver, "/c", "call-1"),
        0,
        "c came after call-1"
    );
    assert!(daemon.status()["config"]["error"].is_null());
}

#[test]
fn a_refused_reload_keeps_the_last_good_config_until_a_good_version() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let a = subscription("a", &receiver.url("/a"), &["*"]);
    let good = dir.config().subscriptions(&a).render();
    dir.write_raw_config(&good);
    let daemon = Daemon::start(&dir);
    let new_sub = subscription("new", &receiver.url("/new"), &["*"]);

    // Each bad version also adds subscription "new": none of it may apply.
    let unset = "CDRHOOK_TEST_SURELY_UNSET_VARIABLE";
    assert!(std::env::var_os(unset).is_none());
    let bad_versions: Vec<(&str, String, &str)> = vec![
        (
            "bad YAML",
            format!("{good}  - name: \"new\"\n    endpoint: [unclosed\n"),
            "",
        ),
        (
            "unknown key",
            dir.config()
                .subscriptions(&[a.clone(), new_sub.clone()].concat())
                .spool("bogus_key: 1")
                .render(),
            "bogus_key",
        ),
        (
            "unset ${VAR}",
            dir.config()
                .subscriptions(
                    &[
                        a.clone(),
                        subscription_with(
                            "new",
                            &receiver.url("/new"),
                            &["*"],
                            &format!("headers:\n  X-Token: \"${{{unset}}}\""),
                        ),
                    ]
                    .concat(),
                )
                .render(),
            unset,
        ),
        (
            "duplicate name",
            dir.config()
                .subscriptions(
                    &[
                        a.clone(),
                        new_sub.clone(),
                        subscription("new", &receiver.url("/new2"), &["*"]),
                    ]
                    .concat(),
                )
                .render(),
            "duplicate",
        ),
    ];

    for (i, (what, text, needle)) in bad_versions.iter().enumerate() {
        if i % 2 == 0 {
            dir.write_raw_config(text);
        } else {
            dir.write_raw_config_in_place(text);
        }
        let error = wait_for_value(
            RELOAD_DEADLINE,
            &format!("status config.error for the {what} version"),
            || {
                let status = daemon.status();
                status["config"]["error"]
                    .as_str()
                    .filter(|e| e.contains(needle))
                    .map(str::to_string)
            },
        );
        assert!(
            has_line_column(&error),
            "{what}: the error must give line and column: {error}"
        );
        assert_eq!(listed(&daemon), ["a"], "{what}: the old config stays");

        // New files still go to the old subscriptions, and only to them.
        let call = 10 + i;
        dir.drop_file(&format!("during-{i}.json"), &make_cdr(call));
        wait_delivered(&daemon, &[("a", i as u64 * 2 + 1)], DEADLINE);
        assert_eq!(count_call(&receiver, "/a", &format!("call-{call}")), 1);

        // A good version clears the error.
        dir.write_raw_config(&good);
        wait_for(RELOAD_DEADLINE, "config.error to clear", || {
            daemon.status()["config"]["error"].is_null()
        });
        dir.drop_file(&format!("after-{i}.json"), &make_cdr(100 + i));
        wait_delivered(&daemon, &[("a", i as u64 * 2 + 2)], DEADLINE);
    }
    assert_eq!(receiver.count("/new"), 0);
    assert_eq!(receiver.count("/new2"), 0);
    assert_eq!(receiver.requests().len(), bad_versions.len() * 2);
}

#[test]
fn an_invalid_config_at_start_up_exits_non_zero_with_line_and_column() {
    let dir = TestDir::new();
    let cases = [
        (
            "duplicate name",
            [
                subscription("x", "http://127.0.0.1:9/x", &["*"]),
                subscription("x", "http://127.0.0.1:9/y", &["*"]),
            ]
            .concat(),
            "duplicate",
        ),
        (
            "unknown event type",
            subscription("x", "http://127.0.0.1:9/x", &["App.NoSuchWebhook"]),
            "App.NoSuchWebhook",
        ),
    ];
    for (what, subs, needle) in cases {
        dir.write_config(&subs, None);
        let (status, log) = Daemon::start_expect_failure(&dir);
        assert!(
            !status.success(),
            "{what}: must exit non-zero, got {status}"
        );
        assert!(log.contains(needle), "{what}: {log}");
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .expect("the error line");
        assert!(has_line_column(line), "{what}: no line:column in {line:?}");
        assert!(!dir.socket().exists(), "{what}: no control socket left");
    }
}

const HELD_DELIVERY: &str = "timeout: 2s\nretry_schedule: [2s, 2s, 2s, 2s]";

/// A subscription gets deliveries queued behind a failing endpoint, is then
/// taken out of service by the config `disable` writes for (dir, held's YAML,
/// twin's YAML) (inactive, or removed from the file), and must hold them
/// until it is back.
fn held_while_out_of_service(disable: impl Fn(&TestDir, &str, &str) -> String) {
    let receiver = Receiver::start();
    // `held` fails (Retry-After pins its retry to exactly 3s after each
    // failure); `twin` fails the same way, then once more with a 1s wait, so
    // its success comes 1s after held's retry would have been due.
    receiver.set(
        "/held",
        Behaviour::status_with_headers(503, &[("Retry-After", "3")]),
    );
    receiver.set(
        "/twin",
        Behaviour::Sequence(vec![
            Behaviour::status_with_headers(503, &[("Retry-After", "3")]),
            Behaviour::status_with_headers(503, &[("Retry-After", "1")]),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    let held = subscription("held", &receiver.url("/held"), &["*"]);
    let twin = subscription("twin", &receiver.url("/twin"), &["*"]);
    dir.write_config(&[held.clone(), twin.clone()].concat(), Some(HELD_DELIVERY));
    let daemon = Daemon::start(&dir);

    dir.drop_file("first.json", &make_cdr(1));
    wait_counts(
        &daemon,
        &[("held", [0, 1, 0, 0]), ("twin", [0, 1, 0, 0])],
        DEADLINE,
    );
    dir.drop_file("second.json", &make_cdr(2));
    dir.drop_file("third.json", &make_cdr(3));
    wait_counts(&daemon, &[("held", [2, 1, 0, 0])], DEADLINE);

    // Out of service before held's retry is due.
    dir.write_raw_config(&disable(&dir, &held, &twin));
    wait_for(RELOAD_DEADLINE, "held to be out of service", || {
        daemon.subscription_status("held")["active"] == false
    });
    receiver.set("/held", Behaviour::Status(200));
    assert_eq!(
        receiver.count("/held"),
        1,
        "the machine was too slow: held's retry came before the reload"
    );

    wait_delivered(&daemon, &[("twin", 3)], DEADLINE);
    assert_eq!(
        receiver.count("/held"),
        1,
        "nothing is sent to a subscription out of service"
    );
    assert_eq!(counts(&daemon)["held"], [2, 1, 0, 0], "its queue is held");
    assert_eq!(inflight_files(&dir).len(), 3, "the files wait in .inflight");

    // Back in service under the same name: everything goes out.
    dir.config()
        .subscriptions(&[held, twin].concat())
        .delivery(HELD_DELIVERY)
        .write();
    wait_delivered(&daemon, &[("held", 3), ("twin", 3)], DEADLINE);
    let got: Vec<(String, u32)> = receiver
        .requests_for("/held")
        .iter()
        .map(|r| (call_id(r), attempt_no(r)))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("call-1".to_string(), 1),
            ("call-1".to_string(), 2),
            ("call-2".to_string(), 1),
            ("call-3".to_string(), 1)
        ],
        "{got:?}"
    );
    wait_drained(&dir, DEADLINE);
}

#[test]
fn an_inactive_subscription_holds_its_queue_until_it_is_active_again() {
    held_while_out_of_service(|dir, held, twin| {
        dir.config()
            .subscriptions(&format!("{held}  active: false\n{twin}"))
            .delivery(HELD_DELIVERY)
            .render()
    });
}

#[test]
fn a_removed_subscription_holds_its_queue_until_it_comes_back() {
    held_while_out_of_service(|dir, _held, twin| {
        dir.config()
            .subscriptions(twin)
            .delivery(HELD_DELIVERY)
            .render()
    });
}

#[test]
fn a_cdr_only_an_inactive_subscription_wants_is_journaled_and_leaves_the_spool() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let off = subscription("off", &receiver.url("/off"), &["App.QueueWebhook"]);
    let ivr = subscription("ivr", &receiver.url("/ivr"), &["App.IvrWebhook"]);
    dir.config()
        .subscriptions(&format!("{off}  active: false\n{ivr}"))
        .spool("after_ingest: archive")
        .write();
    let daemon = Daemon::start(&dir);

    dir.drop_file("queue.json", &make_cdr(1));
    wait_drained(&dir, DEADLINE);
    wait_for(DEADLINE, "queue.json in the archive", || {
        dir.archive_files() == ["queue.json"]
    });
    // A later file that is delivered proves the daemon got past the first.
    dir.drop_file("marker.json", &typed_cdr("App.IvrWebhook", "ivr-marker"));
    wait_delivered(&daemon, &[("ivr", 1)], DEADLINE);
    assert_eq!(
        receiver.count("/off"),
        0,
        "nothing sent to an inactive subscription"
    );
    assert_eq!(
        counts(&daemon)["off"],
        [0, 0, 0, 0],
        "and nothing queued for it"
    );

    // It was journaled: once active, a replay sends it.
    dir.config()
        .subscriptions(&[off, ivr].concat())
        .spool("after_ingest: archive")
        .write();
    wait_for(RELOAD_DEADLINE, "off to be active", || {
        daemon.subscription_status("off")["active"] == true
    });
    let replay = daemon.cli_json(&["replay", "--subscription", "off", "--since", "1h"]);
    assert_eq!(replay["ok"], true, "{replay:#}");
    wait_delivered(&daemon, &[("off", 1)], DEADLINE);
    let got = receiver.requests_for("/off");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, make_cdr(1));
}

#[test]
fn a_new_spool_dir_waits_for_a_restart_while_the_rest_applies() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let a = subscription("a", &receiver.url("/a"), &["*"]);
    let b = subscription("b", &receiver.url("/b"), &["*"]);
    dir.write_config(&a, None);
    let mut daemon = Daemon::start(&dir);

    let other = dir.path().join("other-spool");
    std::fs::create_dir(&other).expect("create the new spool");
    let moved = dir
        .config()
        .subscriptions(&[a, b].concat())
        .spool(&format!(
            "dir: {}",
            yaml_str(other.to_str().expect("UTF-8"))
        ))
        .render();
    dir.write_raw_config(&moved);
    wait_listed(&daemon, &["a", "b"]);
    let status = daemon.status();
    assert!(status["config"]["error"].is_null(), "{status:#}");
    let restart = status["config"]["restart_required"].to_string();
    assert!(restart.contains("spool.dir"), "{status:#}");

    // Until the restart, the old spool is the one watched.
    drop_file(&other, "new-dir.json", &make_cdr(2));
    dir.drop_file("old-dir.json", &make_cdr(1));
    wait_delivered(&daemon, &[("a", 1), ("b", 1)], DEADLINE);
    assert_eq!(count_call(&receiver, "/b", "call-1"), 1);
    assert_eq!(files_in(&other), ["new-dir.json"], "the new spool waits");

    daemon.sigterm();
    assert!(daemon.wait_exit(DEADLINE).success());
    let daemon = Daemon::start(&dir);
    wait_delivered(&daemon, &[("a", 2), ("b", 2)], DEADLINE);
    assert_eq!(count_call(&receiver, "/a", "call-2"), 1);
    assert!(
        daemon.status()["config"]["restart_required"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "after the restart nothing waits"
    );
}

#[test]
fn an_inactive_subscription_stops_sending_its_backlog() {
    let receiver = Receiver::start();
    // Both endpoints hold their first request 3s, so the reload lands while
    // both subscriptions still have their whole backlog queued (concurrency
    // 1). `twin` stays active: its last delivery, four round trips after
    // the first ends, shows when held's backlog would have gone out.
    receiver.set(
        "/held",
        Behaviour::Sequence(vec![
            Behaviour::Sleep(Duration::from_secs(3)),
            Behaviour::Status(200),
        ]),
    );
    receiver.set(
        "/twin",
        Behaviour::Sequence(vec![
            Behaviour::Sleep(Duration::from_secs(3)),
            Behaviour::Sleep(Duration::from_millis(150)),
        ]),
    );
    let dir = TestDir::new();
    let held = subscription("held", &receiver.url("/held"), &["*"]);
    let twin = subscription("twin", &receiver.url("/twin"), &["*"]);
    let delivery = "timeout: 5s\nconcurrency: 1\nretry_schedule: [200ms]";
    dir.write_config(&[held.clone(), twin.clone()].concat(), Some(delivery));
    let daemon = Daemon::start(&dir);
    for i in 1..=5 {
        dir.drop_file(&format!("f{i}.json"), &make_cdr(i));
    }
    receiver.wait_for_requests("/held", 1, DEADLINE);
    receiver.wait_for_requests("/twin", 1, DEADLINE);

    dir.config()
        .subscriptions(&format!("{held}  active: false\n{twin}"))
        .delivery(delivery)
        .write();
    wait_for(RELOAD_DEADLINE, "held to be inactive", || {
        daemon.subscription_status("held")["active"] == false
    });
    assert_eq!(
        (receiver.count("/held"), receiver.count("/twin")),
        (1, 1),
        "the machine was too slow: the first requests ended before the reload"
    );

    wait_delivered(&daemon, &[("twin", 5)], DEADLINE);
    assert_eq!(
        receiver.count("/held"),
        1,
        "nothing more to an inactive subscription"
    );
    assert_eq!(
        counts(&daemon)["held"],
        [4, 0, 0, 1],
        "the request in flight ended, the rest is held"
    );

    dir.config()
        .subscriptions(&[held, twin].concat())
        .delivery(delivery)
        .write();
    wait_delivered(&daemon, &[("held", 5)], DEADLINE);
    let calls: BTreeSet<String> = receiver.requests_for("/held").iter().map(call_id).collect();
    assert_eq!(calls.len(), 5);
    assert_eq!(receiver.count("/held"), 5);
    wait_drained(&dir, DEADLINE);
}
