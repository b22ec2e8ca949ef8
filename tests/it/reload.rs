//! Config reload (SPEC §2) and what it does to queued deliveries (SPEC §4):
//! editors' two ways of saving, refused versions, start-up with a bad file,
//! and subscriptions made inactive or removed.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::support::*;
use crate::harness::*;

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

/// The endpoint path's version number, `/v17/crm` → 17.
fn version_of(endpoint: &serde_json::Value) -> Option<u64> {
    let path = endpoint.as_str()?.rsplit_once("/v")?.1;
    path.split('/').next()?.parse().ok()
}

#[test]
fn fifty_concurrent_reloads_from_every_source_lose_nothing_and_end_on_the_last_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const CDRS: usize = 150;
    const FILE_WRITES: usize = 14;
    const PER_SOURCE: usize = 12; // SIGHUP, `cdrhook reload`, raw control requests
    let receiver = Receiver::start();
    let dir = Arc::new(TestDir::new());
    // Version i: both subscriptions point at /v{i}/..., and the delivery
    // settings (so the agent) change with it. Every 5th is refused.
    let version = |i: usize| {
        let subs = [
            subscription("crm", &receiver.url(&format!("/v{i}/crm")), &["*"]),
            subscription(
                "wh",
                &receiver.url(&format!("/v{i}/wh")),
                &["App.QueueWebhook"],
            ),
        ]
        .concat();
        let delivery = format!(
            "timeout: {}s\nconcurrency: {}\nretry_schedule: [100ms, 200ms, 400ms]",
            2 + i % 2,
            1 + i % 4
        );
        let text = dir
            .config()
            .subscriptions(&subs)
            .delivery(&delivery)
            .render();
        if i % 5 == 3 {
            format!("{text}bogus_key: {i}\n")
        } else {
            text
        }
    };
    dir.write_raw_config(&version(0));
    let daemon = Arc::new(Daemon::start(&dir));
    let last = FILE_WRITES;
    assert_ne!(last % 5, 3, "the last version must be a valid one");

    let storming = Arc::new(AtomicBool::new(true));
    let mut threads = Vec::new();
    // CDRs flow throughout.
    {
        let dir = dir.clone();
        threads.push(std::thread::spawn(move || {
            for n in 1..=CDRS {
                dir.drop_file(&format!("cdr-{n}.json"), &make_cdr(n));
                std::thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    // File rewrites (the watcher), both ways editors save. This thread is
    // the only writer, so a reload it asks for right after writing a bad
    // version reads that version: at least one refusal, whatever the load.
    {
        let dir = dir.clone();
        let daemon = daemon.clone();
        let texts: Vec<String> = (1..=FILE_WRITES).map(version).collect();
        threads.push(std::thread::spawn(move || {
            for (i, text) in texts.iter().enumerate() {
                if i % 2 == 0 {
                    dir.write_raw_config(text);
                } else {
                    dir.write_raw_config_in_place(text);
                }
                if i + 1 == 3 {
                    let reply = daemon.request_json(&serde_json::json!({"cmd": "reload"}));
                    assert_eq!(reply["ok"], false, "version 3 is refused: {reply}");
                }
                std::thread::sleep(Duration::from_millis(35));
            }
        }));
    }
    // The other sources go on past the last write, so reloads that read an
    // older version are still in flight when the last one is read.
    // SIGHUP.
    {
        let daemon = daemon.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..PER_SOURCE {
                daemon.sighup();
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // `cdrhook reload`: exit 0, or 1 when it read a refused version (a bad
    // one, or a file caught half rewritten in place).
    {
        let daemon = daemon.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..PER_SOURCE {
                let out = daemon.cli(&["reload"]);
                assert!(
                    out.status == 0 || (out.status == 1 && out.stderr.contains("config.yaml")),
                    "cdrhook reload: {out:?}"
                );
            }
        }));
    }
    // Raw control requests.
    {
        let daemon = daemon.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..PER_SOURCE {
                let reply = daemon.request_json(&serde_json::json!({"cmd": "reload"}));
                assert!(reply["ok"].is_boolean(), "{reply}");
                std::thread::sleep(Duration::from_millis(45));
            }
        }));
    }
    // Meanwhile, `status` always shows one version (both endpoints of the
    // same one), and never an older version than it showed before: reloads
    // run one at a time, each reading the file as it is then, so a reload
    // that read an older text can never be applied after a newer one.
    let watcher = {
        let daemon = daemon.clone();
        let storming = storming.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            let mut newest = 0;
            while storming.load(Ordering::SeqCst) {
                let reply = daemon.request_json(&serde_json::json!({"cmd": "status"}));
                let status = &reply["result"];
                let subs = status["subscriptions"].as_array().expect("subscriptions");
                let versions: Vec<Option<u64>> = subs
                    .iter()
                    .filter(|s| s["in_config"] == true)
                    .map(|s| version_of(&s["endpoint"]))
                    .collect();
                assert_eq!(versions.len(), 2, "{status:#}");
                assert_eq!(versions[0], versions[1], "two versions mixed: {status:#}");
                let v = versions[0].expect("a version in the endpoint");
                assert!(v >= newest, "version {v} applied after version {newest}");
                newest = v;
                seen += 1;
            }
            seen
        })
    };
    for t in threads {
        t.join().expect("storm thread");
    }
    storming.store(false, Ordering::SeqCst);
    assert!(watcher.join().expect("status thread") > 0);

    // The last file's version is in force, and stays so on one more reload.
    let want = Some(last as u64);
    wait_for(RELOAD_DEADLINE, "the last file's version in status", || {
        let status = daemon.status();
        status["config"]["error"].is_null()
            && status["subscriptions"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| version_of(&s["endpoint"]) == want))
    });
    daemon.cli(&["reload"]).assert_status(0);
    let status = daemon.status();
    for s in status["subscriptions"].as_array().expect("subscriptions") {
        assert_eq!(version_of(&s["endpoint"]), want, "{status:#}");
    }

    // Nothing lost: every CDR reached both subscriptions, wherever each
    // version pointed them.
    wait_delivered(
        &daemon,
        &[("crm", CDRS as u64), ("wh", CDRS as u64)],
        DEADLINE,
    );
    for sub in ["crm", "wh"] {
        let calls: BTreeSet<String> = receiver
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(&format!("/{sub}")))
            .map(call_id)
            .collect();
        assert_eq!(calls.len(), CDRS, "{sub}: {} distinct calls", calls.len());
    }
    wait_drained(&dir, DEADLINE);
    assert!(
        daemon.log_contains("config reload refused"),
        "no refused version was seen"
    );
}
