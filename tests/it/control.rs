//! The operator's side of cdrhook (SPEC §5–7, issue #3): the control socket,
//! every command with and without `--json`, exit codes, help, and signals.
//! Each test runs the real binary against its own directory and receiver.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use cdrhook::time::{now_ms, parse_since, rfc3339};

/// Deadline for anything the daemon does on its own (a delivery, a retry
/// schedule of a few hundred ms, a reload).
const DEADLINE: Duration = Duration::from_secs(10);
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Retries fast enough that a delivery is dead within a second.
const FAST: &str = "timeout: 2s\nretry_schedule: [100ms]";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET2: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The keys SPEC §5 fixes for each item of `attempts --json`.
const ATTEMPT_KEYS: [&str; 12] = [
    "id",
    "delivery_id",
    "time",
    "subscription",
    "event_type",
    "call_id",
    "webhook_id",
    "attempt",
    "status",
    "error",
    "duration_ms",
    "trigger",
];

// ---------------------------------------------------------------------------
// Helpers

fn start(dir: &TestDir, subscriptions: &str, delivery: &str) -> Daemon {
    dir.config()
        .subscriptions(subscriptions)
        .delivery(delivery)
        .write();
    Daemon::start(dir)
}

#[track_caller]
fn wait_counter(daemon: &Daemon, sub: &str, key: &str, n: u64) {
    wait_for(DEADLINE, &format!("{sub}.{key} == {n}"), || {
        daemon.counter(sub, key) == n
    });
}

#[track_caller]
fn attempts(daemon: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["attempts"];
    all.extend_from_slice(args);
    let v = daemon.cli_json(&all);
    v.as_array()
        .unwrap_or_else(|| panic!("attempts --json is not a list: {v:#}"))
        .clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|a| a["id"].as_str().expect("id is a string").to_string())
        .collect()
}

/// The number in `a12` / `d7`.
fn num(id: &Value) -> u64 {
    let s = id.as_str().unwrap_or_else(|| panic!("{id} is not an id"));
    s[1..]
        .parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a prefixed id"))
}

/// Milliseconds of an RFC 3339 value, asserting its format.
#[track_caller]
fn time_ms(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("time {v} is not a string"));
    assert!(s.contains('T'), "time {s:?} is not RFC 3339");
    let ms = parse_since(s, 0).unwrap_or_else(|e| panic!("time {s:?}: {e}"));
    assert!(
        s.ends_with('Z') || s.contains('+'),
        "time {s:?} has no offset"
    );
    ms
}

/// True if `text` holds `NAME:LINE:COLUMN:` for the file `name`.
fn has_line_column(text: &str, name: &str) -> bool {
    text.match_indices(&format!("{name}:")).any(|(at, m)| {
        let rest = &text[at + m.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let column = parts.next().unwrap_or("");
        parts.next().is_some()
            && !line.is_empty()
            && line.chars().all(|c| c.is_ascii_digit())
            && !column.is_empty()
            && column.chars().all(|c| c.is_ascii_digit())
    })
}

fn socket_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// One connection to the control socket, for several requests in a row.
struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(socket: &Path) -> Conn {
        let stream = UnixStream::connect(socket).expect("connect to the control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        Conn {
            writer: stream,
            reader,
        }
    }

    /// Writes `bytes` plus a newline; returns the response parsed.
    fn round_trip(&mut self, bytes: &[u8]) -> Value {
        let mut line = bytes.to_vec();
        line.push(b'\n');
        self.writer.write_all(&line).expect("write a request");
        let mut response = String::new();
        let n = self
            .reader
            .read_line(&mut response)
            .expect("read a response");
        assert!(
            n > 0,
            "the daemon closed the connection after {:?}",
            String::from_utf8_lossy(bytes)
        );
        serde_json::from_str(&response)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {response}"))
    }
}

#[track_caller]
fn assert_error_response(v: &Value, what: &str) {
    assert_eq!(v["ok"], false, "{what}: {v}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no error message: {v}"
    );
}

#[track_caller]
fn assert_status_ok(daemon: &Daemon) {
    let v = daemon.request_json(&serde_json::json!({"cmd": "status"}));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"]["version"], VERSION, "{v}");
}

// ---------------------------------------------------------------------------
// 1. The socket

#[test]
fn socket_is_mode_0660_and_removed_at_sigterm() {
    let dir = TestDir::new();
    let mut daemon = start(&dir, "", FAST);
    assert_eq!(
        socket_mode(&dir.socket()),
        0o660,
        "control socket mode is {:o}",
        socket_mode(&dir.socket())
    );
    daemon.sigterm();
    let status = daemon.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {status}");
    assert!(
        !dir.socket().exists(),
        "the socket file is left behind after SIGTERM"
    );
}

#[test]
fn garbage_requests_get_errors_and_the_connection_stays_usable() {
    let dir = TestDir::new();
    let mut daemon = start(&dir, "", FAST);
    let garbage: [&[u8]; 10] = [
        b"not json",
        b"{}",
        br#"{"cmd":"nope"}"#,
        br#"{"cmd":"show"}"#,
        br#"{"cmd":"resend"}"#,
        br#"{"cmd":"status","extra":1}"#,
        br#"{"cmd":"attempts","limit":"many"}"#,
        b"\xff\xfe\x80 invalid utf-8",
        b"[1,2]",
        b"",
    ];
    // All on one connection: an error must not end it.
    let mut conn = Conn::open(&dir.socket());
    for bad in garbage {
        let what = String::from_utf8_lossy(bad).into_owned();
        assert_error_response(&conn.round_trip(bad), &what);
    }
    let v = conn.round_trip(br#"{"cmd":"status"}"#);
    assert_eq!(v["ok"], true, "status after garbage: {v}");
    assert_eq!(v["result"]["version"], VERSION);

    // And each on a fresh connection.
    for bad in garbage {
        let what = String::from_utf8_lossy(bad).into_owned();
        let mut line = bad.to_vec();
        line.push(b'\n');
        let response = control_request_raw(&dir.socket(), &line, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what:?}: {e}"))
            .unwrap_or_else(|| panic!("{what:?}: closed without an answer"));
        let v: Value = serde_json::from_str(&response).expect("error response is JSON");
        assert_error_response(&v, &what);
    }
    assert!(daemon.is_running(), "garbage stopped the daemon");
    assert_status_ok(&daemon);
}

#[test]
fn oversized_request_is_refused_and_the_daemon_keeps_running() {
    let dir = TestDir::new();
    let mut daemon = start(&dir, "", FAST);
    let pad = "a".repeat(70 * 1024);
    let with_newline = format!("{{\"cmd\":\"status\",\"pad\":\"{pad}\"}}\n").into_bytes();
    let no_newline = vec![b'x'; 1024 * 1024];
    for (what, bytes) in [
        ("70 KiB line", with_newline),
        ("1 MiB without newline", no_newline),
    ] {
        match control_request_raw(&dir.socket(), &bytes, Duration::from_secs(10)) {
            Ok(Some(line)) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{what}: response not JSON ({e}): {line}"));
                assert_error_response(&v, what);
                assert!(
                    v["error"].as_str().unwrap_or("").contains("larger"),
                    "{what}: {v}"
                );
            }
            // Closing the connection is an acceptable refusal too.
            Ok(None) => {}
            Err(e) => eprintln!("{what}: connection ended with {e} (refused)"),
        }
        assert!(daemon.is_running(), "{what} stopped the daemon");
        assert_status_ok(&daemon);
    }
    // A request just under the limit is still served.
    let pad = "b".repeat(60 * 1024);
    let v = daemon.request(&format!(r#"{{"cmd":"show","id":"a1{pad}"}}"#));
    let v: Value = serde_json::from_str(&v).expect("JSON");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        !v["error"].as_str().unwrap_or("").contains("larger"),
        "a 60 KiB request was refused for its size: {v}"
    );
}

#[test]
fn many_clients_at_once() {
    let dir = TestDir::new();
    let daemon = start(&dir, "", FAST);
    let socket = dir.socket();
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let socket = socket.clone();
            thread::spawn(move || {
                // Half the threads keep one connection, half reconnect.
                let mut conn = (t % 2 == 0).then(|| Conn::open(&socket));
                for i in 0..20 {
                    let v = match conn.as_mut() {
                        Some(conn) => conn.round_trip(br#"{"cmd":"status"}"#),
                        None => {
                            let line = control_request(&socket, r#"{"cmd":"status"}"#)
                                .unwrap_or_else(|e| panic!("thread {t} request {i}: {e}"));
                            serde_json::from_str(&line).expect("JSON")
                        }
                    };
                    assert_eq!(v["ok"], true, "thread {t} request {i}: {v}");
                    assert_eq!(v["result"]["version"], VERSION);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
    assert_status_ok(&daemon);
}

#[test]
fn stale_socket_from_kill_9_is_replaced_on_restart() {
    let dir = TestDir::new();
    let mut first = start(&dir, "", FAST);
    first.kill9();
    assert!(
        dir.socket().exists(),
        "test premise: SIGKILL leaves the socket file"
    );
    assert!(
        control_request(&dir.socket(), r#"{"cmd":"status"}"#).is_err(),
        "nobody answers on the stale socket"
    );
    let second = Daemon::start(&dir);
    assert_status_ok(&second);
    assert_eq!(socket_mode(&dir.socket()), 0o660);
    let out = second.cli(&["status"]);
    out.assert_status(0);
}

#[test]
fn second_daemon_on_the_same_config_refuses_to_start() {
    let dir = TestDir::new();
    let mut first = start(&dir, "", FAST);
    let (status, log) = Daemon::start_expect_failure(&dir);
    assert!(!status.success(), "a second daemon started: {status}");
    assert!(
        log.contains("already running"),
        "the refusal does not say another daemon runs:\n{log}"
    );
    assert!(first.is_running());
    assert!(
        dir.socket().exists(),
        "the refused daemon removed the socket"
    );
    assert_status_ok(&first);
}

#[test]
fn second_daemon_on_the_same_journal_refuses_with_a_journal_message() {
    let dir = TestDir::new();
    let mut first = start(&dir, "", FAST);
    let other = TestDir::new();
    other
        .config()
        .journal(&format!(
            "path: {}",
            yaml_str(dir.journal().to_str().expect("UTF-8"))
        ))
        .delivery(FAST)
        .write();
    let (status, log) = Daemon::start_expect_failure(&other);
    assert!(!status.success(), "a second daemon shared the journal");
    assert!(
        log.contains("journal") && log.contains(dir.journal().to_str().expect("UTF-8")),
        "the refusal does not name the journal:\n{log}"
    );
    assert!(
        !other.socket().exists(),
        "the refused daemon left its socket"
    );
    assert!(first.is_running());
    assert_status_ok(&first);
}

// ---------------------------------------------------------------------------
// 2. The commands

#[test]
fn status_json_and_table() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = [
        subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]),
        subscription_with("bi", &receiver.url("/bi"), &["*"], "active: false"),
    ]
    .concat();
    let daemon = start(&dir, &subs, FAST);
    dir.drop_file("one.json", &make_cdr(1));
    wait_counter(&daemon, "crm", "delivered", 1);

    let v = daemon.cli_json(&["status"]);
    assert_eq!(v["version"], VERSION);
    assert_eq!(
        v["config"]["path"],
        dir.config_path().to_str().expect("UTF-8")
    );
    assert!(
        v["config"].get("error").is_some_and(Value::is_null),
        "{v:#}"
    );
    let subs = v["subscriptions"].as_array().expect("subscriptions list");
    assert_eq!(subs.len(), 2, "{v:#}");
    for s in subs {
        for key in ["name", "active", "pending", "retrying", "dead", "delivered"] {
            assert!(s.get(key).is_some(), "subscription lacks {key}: {s}");
        }
        for key in ["pending", "retrying", "dead", "delivered"] {
            assert!(s[key].is_u64(), "{key} is not a count: {s}");
        }
    }
    let crm = subs.iter().find(|s| s["name"] == "crm").expect("crm");
    assert_eq!(crm["active"], true);
    assert_eq!(crm["delivered"], 1);
    assert_eq!(crm["pending"], 0);
    let bi = subs.iter().find(|s| s["name"] == "bi").expect("bi");
    assert_eq!(bi["active"], false);
    // An inactive subscription gets nothing queued.
    assert_eq!(bi["pending"], 0);
    assert_eq!(receiver.count("/bi"), 0);

    let out = daemon.cli(&["status"]);
    out.assert_status(0);
    for needle in [
        VERSION,
        "SUBSCRIPTION",
        "PENDING",
        "RETRYING",
        "DEAD",
        "DELIVERED",
        "crm",
        "bi",
        "inactive",
    ] {
        assert!(
            out.stdout.contains(needle),
            "status table lacks {needle:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        serde_json::from_str::<Value>(&out.stdout).is_err(),
        "without --json the output is a table"
    );
}

#[test]
fn attempts_filters_keys_and_order() {
    let receiver = Receiver::start();
    receiver.set("/bi", Behaviour::Status(500));
    let dir = TestDir::new();
    let subs = [
        subscription(
            "crm",
            &receiver.url("/crm"),
            &["App.QueueWebhook", "App.AgentWebhook"],
        ),
        subscription("bi", &receiver.url("/bi"), &["*"]),
    ]
    .concat();
    let daemon = start(&dir, &subs, FAST);
    dir.drop_file("q1.json", &make_cdr(1));
    dir.drop_file("agent.json", &sample_cdr("agent-wrapup.json"));
    wait_counter(&daemon, "crm", "delivered", 2);
    wait_counter(&daemon, "bi", "dead", 2);

    // Everything: 2 crm successes, 2 × 2 bi failures, newest first.
    let all = attempts(&daemon, &[]);
    assert_eq!(all.len(), 6, "{all:#?}");
    for a in &all {
        for key in ATTEMPT_KEYS {
            assert!(a.get(key).is_some(), "attempt lacks {key:?}: {a}");
        }
        assert!(a["id"].as_str().is_some_and(|s| s.starts_with('a')), "{a}");
        assert!(
            a["delivery_id"]
                .as_str()
                .is_some_and(|s| s.starts_with('d')),
            "{a}"
        );
        time_ms(&a["time"]);
        assert!(a["attempt"].is_u64() && a["duration_ms"].is_u64(), "{a}");
        assert_eq!(a["trigger"], "auto", "{a}");
        assert!(a["webhook_id"].as_str().is_some_and(|s| !s.is_empty()));
        match a["subscription"].as_str() {
            Some("crm") => {
                assert_eq!(a["status"], 200, "{a}");
                assert!(a["error"].is_null(), "{a}");
            }
            Some("bi") => assert_eq!(a["status"], 500, "{a}"),
            other => panic!("unexpected subscription {other:?}"),
        }
    }
    for pair in all.windows(2) {
        assert!(
            num(&pair[0]["id"]) > num(&pair[1]["id"]),
            "not newest first: {} before {}",
            pair[0]["id"],
            pair[1]["id"]
        );
        let (newer, older) = (&pair[0], &pair[1]);
        let slack = newer["duration_ms"].as_u64().unwrap_or(0) + 50;
        assert!(
            time_ms(&older["time"]) <= time_ms(&newer["time"]) + slack,
            "not newest first by time: {newer} before {older}"
        );
    }

    let crm = attempts(&daemon, &["--subscription", "crm"]);
    assert_eq!(crm.len(), 2, "{crm:#?}");
    assert!(crm.iter().all(|a| a["subscription"] == "crm"));

    let failed = attempts(&daemon, &["--failed"]);
    assert_eq!(failed.len(), 4, "{failed:#?}");
    assert!(failed
        .iter()
        .all(|a| a["subscription"] == "bi" && a["status"] == 500));

    let call = attempts(&daemon, &["--call-id", "call-1"]);
    assert_eq!(call.len(), 3, "{call:#?}");
    assert!(call.iter().all(|a| a["call_id"] == "call-1"));

    let agent = attempts(&daemon, &["--event-type", "App.AgentWebhook"]);
    assert_eq!(agent.len(), 3, "{agent:#?}");
    assert!(agent.iter().all(|a| a["event_type"] == "App.AgentWebhook"));

    let combined = attempts(
        &daemon,
        &["--subscription", "bi", "--failed", "--call-id", "call-1"],
    );
    assert_eq!(combined.len(), 2, "{combined:#?}");

    let limited = attempts(&daemon, &["--limit", "2"]);
    assert_eq!(ids(&limited), ids(&all[..2]));

    assert_eq!(attempts(&daemon, &["--since", "1h"]).len(), 6);
    let future = rfc3339(now_ms() + 3_600_000);
    assert!(attempts(&daemon, &["--since", &future]).is_empty());

    // --since as RFC 3339 between two batches: only the second batch.
    let cut = now_ms() + 1;
    wait_for(DEADLINE, "the clock to pass the cut", || now_ms() > cut);
    dir.drop_file("q2.json", &make_cdr(2));
    wait_counter(&daemon, "crm", "delivered", 3);
    wait_counter(&daemon, "bi", "dead", 3);
    let since = attempts(&daemon, &["--since", &rfc3339(cut)]);
    assert_eq!(since.len(), 3, "{since:#?}");
    assert!(since.iter().all(|a| a["call_id"] == "call-2"), "{since:#?}");
    assert!(since.iter().all(|a| time_ms(&a["time"]) >= cut));

    // The table.
    let out = daemon.cli(&["attempts", "--limit", "3"]);
    out.assert_status(0);
    for needle in ["ATTEMPT", "SUBSCRIPTION", "EVENT", "CALL ID", "call-2"] {
        assert!(out.stdout.contains(needle), "{needle}:\n{}", out.stdout);
    }
    let newest = call[0]["id"].as_str().expect("id");
    let out = daemon.cli(&["attempts", "--call-id", "call-1"]);
    out.assert_status(0);
    assert!(out.stdout.contains(newest), "{}", out.stdout);
    assert_eq!(out.stdout.lines().count(), 4, "header + 3 rows");
    let out = daemon.cli(&["attempts", "--call-id", "nobody"]);
    out.assert_status(0);
    assert!(!out.stdout.contains("call-1"), "{}", out.stdout);
}

#[test]
fn attempts_since_is_not_cut_short_by_a_slow_attempt() {
    // A slow attempt starts before the cut and ends after a fast one that
    // started after it: the slow one is journaled last, with an older time.
    let receiver = Receiver::start();
    receiver.set("/slow", Behaviour::Sleep(Duration::from_millis(800)));
    let dir = TestDir::new();
    let subs = [
        subscription("slow", &receiver.url("/slow"), &["App.AgentWebhook"]),
        subscription("fast", &receiver.url("/fast"), &["App.QueueWebhook"]),
    ]
    .concat();
    let daemon = start(&dir, &subs, FAST);
    dir.drop_file("agent.json", &sample_cdr("agent-wrapup.json"));
    receiver.wait_for_requests("/slow", 1, DEADLINE);
    let cut = now_ms() + 1;
    wait_for(DEADLINE, "the clock to pass the cut", || now_ms() > cut);
    dir.drop_file("q1.json", &make_cdr(1));
    wait_counter(&daemon, "fast", "delivered", 1);
    wait_counter(&daemon, "slow", "delivered", 1);
    let all = attempts(&daemon, &[]);
    assert_eq!(all[0]["subscription"], "slow", "premise: {all:#?}");

    let since = attempts(&daemon, &["--since", &rfc3339(cut)]);
    assert_eq!(
        since.iter().map(|a| &a["subscription"]).collect::<Vec<_>>(),
        ["fast"],
        "attempts --since {}: {since:#?}\nall: {all:#?}",
        rfc3339(cut)
    );
}

#[test]
fn show_masks_secrets_everywhere() {
    const TOKEN: &str = "tok-Zq81-NEVER-PRINT";
    const APIKEY: &str = "key-Jw44-NEVER-PRINT";
    const COOKIE: &str = "session=cookie-Pp93-NEVER-PRINT";
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = subscription_with(
        "crm",
        &receiver.url("/crm"),
        &["App.QueueWebhook", "App.TestWebhook"],
        &format!(
            "
            secret: {SECRET}
            headers:
              Authorization: \"Bearer ${{TOKEN}}\"
              X-Api-Key: \"${{APIKEY}}\"
              Cookie: \"{COOKIE}\"
              X-Plain: plain-value-42
            "
        ),
    );
    dir.config().subscriptions(&subs).delivery(FAST).write();
    let daemon = Daemon::start_with_env(&dir, &[("TOKEN", TOKEN), ("APIKEY", APIKEY)]);
    let body = make_cdr(1);
    dir.drop_file("one.json", &body);
    let got = receiver.wait_for_requests("/crm", 1, DEADLINE);
    // The receiver gets the real values.
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(got[0].header("x-api-key"), Some(APIKEY));
    assert_eq!(got[0].header("cookie"), Some(COOKIE));
    wait_counter(&daemon, "crm", "delivered", 1);
    daemon.cli(&["test"]).assert_status(0);

    let list = attempts(&daemon, &["--event-type", "App.QueueWebhook"]);
    assert_eq!(list.len(), 1);
    let aid = list[0]["id"].as_str().expect("id").to_string();
    let did = list[0]["delivery_id"].as_str().expect("id").to_string();

    let shown = daemon.cli_json(&["show", &aid]);
    for key in ATTEMPT_KEYS {
        assert!(shown.get(key).is_some(), "show lacks {key:?}: {shown:#}");
    }
    assert_eq!(shown["id"], aid.as_str());
    assert_eq!(shown["delivery_id"], did.as_str());
    assert_eq!(shown["status"], 200);
    let headers = shown["request_headers"]
        .as_object()
        .expect("request_headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no {name} in request_headers: {headers:?}"))
    };
    assert_eq!(header("authorization"), "***");
    assert_eq!(header("x-api-key"), "***");
    assert_eq!(header("cookie"), "***");
    assert_eq!(header("x-plain"), "plain-value-42");
    assert_eq!(
        header("webhook-id"),
        list[0]["webhook_id"].as_str().unwrap()
    );
    assert_eq!(header("x-webhook-event"), "App.QueueWebhook");
    assert!(shown["response_headers"].is_object(), "{shown:#}");
    assert_eq!(shown["response_body"], "ok");
    let cdr: Value = serde_json::from_slice(&body).expect("CDR JSON");
    assert_eq!(shown["cdr"], cdr);
    assert_eq!(shown["delivery"]["state"], "delivered");
    assert_eq!(
        shown["delivery"]["history"].as_array().map(Vec::len),
        Some(1)
    );

    // By delivery id, and by bare number: the same delivery.
    let by_delivery = daemon.cli_json(&["show", &did]);
    assert_eq!(by_delivery["delivery_id"], did.as_str());
    assert_eq!(by_delivery["id"], aid.as_str(), "latest attempt shown");
    assert_eq!(by_delivery["cdr"], cdr);
    let bare = daemon.cli_json(&["show", &aid[1..]]);
    assert_eq!(bare["id"], aid.as_str());

    let table = daemon.cli(&["show", &aid]);
    table.assert_status(0);
    for needle in ["plain-value-42", "***", "call-1", "DELIVERED"] {
        assert!(table.stdout.contains(needle), "{needle}:\n{}", table.stdout);
    }

    // The secrets appear nowhere an operator looks.
    let mut everything = vec![
        shown.to_string(),
        by_delivery.to_string(),
        table.stdout.clone(),
        daemon.cli(&["show", &did]).stdout,
        daemon.cli(&["attempts", "--json"]).stdout,
        daemon.cli(&["attempts"]).stdout,
        daemon.cli(&["status", "--json"]).stdout,
        daemon.cli(&["status"]).stdout,
    ];
    for a in attempts(&daemon, &[]) {
        let id = a["id"].as_str().expect("id");
        everything.push(daemon.cli(&["show", id, "--json"]).stdout);
    }
    everything.push(daemon.log());
    for text in &everything {
        for secret in [TOKEN, APIKEY, COOKIE, SECRET, &SECRET["whsec_".len()..]] {
            assert!(
                !text.contains(secret),
                "secret {secret:?} shown in:\n{text}"
            );
        }
    }

    // Unknown ids are the daemon's error: exit 1.
    for id in ["a999999", "d999999", "999999"] {
        let out = daemon.cli(&["show", id]);
        out.assert_status(1);
        assert!(out.stderr.contains("999999"), "{}", out.stderr);
        let out = daemon.cli(&["show", id, "--json"]);
        out.assert_status(1);
        assert_eq!(out.json()["ok"], false);
    }
}

#[test]
fn resend_of_a_delivered_attempt_sends_it_again() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]);
    let daemon = start(&dir, &subs, FAST);
    dir.drop_file("one.json", &make_cdr(1));
    wait_counter(&daemon, "crm", "delivered", 1);
    let first = receiver.wait_for_requests("/crm", 1, DEADLINE);
    let webhook_id = first[0]
        .header("webhook-id")
        .expect("webhook-id")
        .to_string();
    let list = attempts(&daemon, &[]);
    let aid = list[0]["id"].as_str().expect("id").to_string();
    let did = list[0]["delivery_id"].as_str().expect("id").to_string();

    let v = daemon.cli_json(&["resend", &aid]);
    assert_eq!(v["ok"], true, "{v:#}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["id"], aid.as_str());
    assert_eq!(r["delivery_id"], did.as_str());
    assert_eq!(r["subscription"], "crm");
    assert_eq!(r["status"], 200);
    assert_eq!(r["ok"], true);
    assert!(r["error"].is_null());
    let new_attempt = r["attempt_id"].as_str().expect("attempt_id").to_string();
    assert_ne!(new_attempt, aid);

    // `resend` waits for the attempt: the request is already there.
    let got = receiver.requests_for("/crm");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("webhook-id"), Some(webhook_id.as_str()));
    assert_eq!(got[1].header("x-webhook-attempt"), Some("2"));
    assert_eq!(got[1].body, got[0].body);

    let newest = &attempts(&daemon, &["--limit", "1"])[0];
    assert_eq!(newest["id"], new_attempt.as_str());
    assert_eq!(newest["trigger"], "resend");
    assert_eq!(newest["delivery_id"], did.as_str());
    assert_eq!(newest["webhook_id"], webhook_id.as_str());
    assert_eq!(newest["attempt"], 2);

    // By bare delivery number, as a table.
    let out = daemon.cli(&["resend", &did[1..]]);
    out.assert_status(0);
    assert!(out.stdout.contains("OK"), "{}", out.stdout);
    assert_eq!(receiver.count("/crm"), 3);
    assert_eq!(daemon.counter("crm", "delivered"), 1, "still one delivery");

    // Several ids at once; an unknown one is an error (exit 1).
    let v = daemon.cli_json(&["resend", &aid, &did]);
    assert_eq!(v["results"].as_array().map(Vec::len), Some(2), "{v:#}");
    assert_eq!(receiver.count("/crm"), 5);
    let out = daemon.cli(&["resend", "d999999"]);
    out.assert_status(1);
    assert_eq!(receiver.count("/crm"), 5);
}

#[test]
fn a_failed_resend_is_not_retried() {
    let receiver = Receiver::start();
    receiver.set("/crm", Behaviour::Status(500));
    let dir = TestDir::new();
    let subs = subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]);
    let daemon = start(
        &dir,
        &subs,
        "timeout: 2s\nretry_schedule: [100ms, 100ms, 100ms]",
    );
    dir.drop_file("one.json", &make_cdr(1));
    wait_counter(&daemon, "crm", "dead", 1);
    let got = receiver.requests_for("/crm");
    assert_eq!(got.len(), 4, "1 attempt + 3 retries");
    let webhook_id = got[0].header("webhook-id").expect("webhook-id").to_string();
    let did = attempts(&daemon, &[])[0]["delivery_id"]
        .as_str()
        .expect("id")
        .to_string();

    let out = daemon.cli(&["resend", &did, "--json"]);
    out.assert_status(1);
    let v = out.json();
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["results"][0]["status"], 500, "{v:#}");
    assert_eq!(v["results"][0]["ok"], false, "{v:#}");
    let for_id = |r: &Receiver| {
        r.requests_for("/crm")
            .iter()
            .filter(|q| q.header("webhook-id") == Some(webhook_id.as_str()))
            .count()
    };
    assert_eq!(for_id(&receiver), 5);

    // A marker delivery that needs two retries (at least 2 × 80 ms after the
    // resend): a retry of the resend on the schedule would come before it.
    receiver.set(
        "/crm",
        Behaviour::Sequence(vec![
            Behaviour::Status(500),
            Behaviour::Status(500),
            Behaviour::Status(200),
        ]),
    );
    dir.drop_file("marker.json", &make_cdr(2));
    wait_counter(&daemon, "crm", "delivered", 1);
    assert_eq!(
        for_id(&receiver),
        5,
        "the failed resend was retried: {:#?}",
        attempts(&daemon, &[])
    );
    let shown = daemon.cli_json(&["show", &did]);
    assert_eq!(shown["delivery"]["state"], "dead", "{shown:#}");
    assert_eq!(shown["trigger"], "resend");
    assert_eq!(
        shown["delivery"]["history"].as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(daemon.counter("crm", "dead"), 1);
    assert_eq!(daemon.counter("crm", "retrying"), 0);
}

#[test]
fn resend_failed_delivers_the_dead_ones() {
    let receiver = Receiver::start();
    receiver.set("/crm", Behaviour::Status(503));
    receiver.set("/bi", Behaviour::Status(500));
    let dir = TestDir::new();
    let subs = [
        subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]),
        subscription("bi", &receiver.url("/bi"), &["App.QueueWebhook"]),
    ]
    .concat();
    let daemon = start(&dir, &subs, FAST);
    dir.drop_file("one.json", &make_cdr(1));
    dir.drop_file("two.json", &make_cdr(2));
    wait_counter(&daemon, "crm", "dead", 2);
    wait_counter(&daemon, "bi", "dead", 2);
    assert_eq!(receiver.count("/crm"), 4);
    assert_eq!(receiver.count("/bi"), 4);
    receiver.set("/crm", Behaviour::Status(200));
    receiver.set("/bi", Behaviour::Status(200));

    let v = daemon.cli_json(&["resend", "--failed", "--subscription", "crm"]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["queued"], 2, "{v:#}");
    wait_counter(&daemon, "crm", "delivered", 2);
    assert_eq!(daemon.counter("crm", "dead"), 0);
    assert_eq!(receiver.count("/crm"), 6);
    let crm = attempts(&daemon, &["--subscription", "crm", "--limit", "2"]);
    assert!(
        crm.iter()
            .all(|a| a["trigger"] == "resend" && a["status"] == 200),
        "{crm:#?}"
    );
    for a in &crm {
        let shown = daemon.cli_json(&["show", a["delivery_id"].as_str().expect("id")]);
        assert_eq!(shown["delivery"]["state"], "delivered");
    }
    // bi was not part of it.
    assert_eq!(daemon.counter("bi", "dead"), 2);

    // Without --subscription: only what is still dead (bi's two).
    let v = daemon.cli_json(&["resend", "--failed"]);
    assert_eq!(v["queued"], 2, "{v:#}");
    wait_counter(&daemon, "bi", "delivered", 2);
    assert_eq!(receiver.count("/bi"), 6);
    assert_eq!(receiver.count("/crm"), 6);

    let out = daemon.cli(&["resend", "--failed"]);
    out.assert_status(0);
    assert!(out.stdout.contains("queued 0"), "{}", out.stdout);
    let out = daemon.cli(&["resend", "--failed", "--subscription", "nope"]);
    out.assert_status(1);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
}

#[test]
fn replay_backfills_a_newly_added_subscription() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let crm = subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]);
    let daemon = start(&dir, &crm, FAST);
    let agent = sample_cdr("agent-wrapup.json");
    let files: [(&str, Vec<u8>); 4] = [
        ("q1.json", make_cdr(1)),
        ("q2.json", make_cdr(2)),
        ("agent.json", agent.clone()),
        ("ivr.json", sample_cdr("ivr-inputs.json")),
    ];
    for (name, bytes) in &files {
        dir.drop_file(name, bytes);
    }
    wait_counter(&daemon, "crm", "delivered", 2);
    wait_for(DEADLINE, "every file taken in", || {
        dir.spool_json_files().is_empty()
    });
    assert_eq!(receiver.count("/new"), 0);

    let both = [
        crm.clone(),
        subscription(
            "new",
            &receiver.url("/new"),
            &["App.QueueWebhook", "App.AgentWebhook"],
        ),
    ]
    .concat();
    dir.config().subscriptions(&both).delivery(FAST).write();
    daemon.cli(&["reload"]).assert_status(0);
    assert_eq!(daemon.counter("new", "delivered"), 0);

    let v = daemon.cli_json(&["replay", "--subscription", "new", "--since", "1h"]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["queued"], 3, "{v:#}");
    assert_eq!(v["new_deliveries"], 3, "{v:#}");
    assert_eq!(v["resent"], 0, "{v:#}");
    assert_eq!(v["skipped"], 1, "the IVR CDR: {v:#}");
    wait_counter(&daemon, "new", "delivered", 3);

    let mut got: Vec<String> = receiver
        .requests_for("/new")
        .into_iter()
        .map(|r| r.body_text())
        .collect();
    got.sort();
    let mut want: Vec<String> = [make_cdr(1), make_cdr(2), agent]
        .into_iter()
        // Exactly the bytes as written (SPEC §4).
        .map(|b| String::from_utf8(b).expect("UTF-8"))
        .collect();
    want.sort();
    assert_eq!(got, want, "exactly the journaled Queue and Agent CDRs");
    let list = attempts(&daemon, &["--subscription", "new"]);
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|a| a["trigger"] == "replay"), "{list:#?}");
    assert_eq!(receiver.count("/crm"), 2, "crm is not replayed to");

    // Again: the same CDRs go once more, as a table.
    let out = daemon.cli(&["replay", "--subscription", "new", "--since", "1h"]);
    out.assert_status(0);
    assert!(
        out.stdout.contains("0 new deliveries") && out.stdout.contains("3 sent again"),
        "{}",
        out.stdout
    );
    receiver.wait_for_requests("/new", 6, DEADLINE);

    // --since after everything was journaled: nothing.
    let future = rfc3339(now_ms() + 3_600_000);
    let v = daemon.cli_json(&["replay", "--subscription", "new", "--since", &future]);
    assert_eq!(v["queued"], 0, "{v:#}");

    let out = daemon.cli(&["replay", "--subscription", "nope", "--since", "1h"]);
    out.assert_status(1);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
}

#[test]
fn test_command_sends_a_signed_test_webhook() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = [
        subscription_with(
            "a",
            &receiver.url("/a"),
            &["App.TestWebhook"],
            &format!("secret: {SECRET}"),
        ),
        subscription_with(
            "b",
            &receiver.url("/b"),
            &["*"],
            &format!("secret: {SECRET2}"),
        ),
        subscription("c", &receiver.url("/c"), &["App.QueueWebhook"]),
        subscription_with(
            "off",
            &receiver.url("/off"),
            &["App.TestWebhook"],
            "active: false",
        ),
    ]
    .concat();
    let daemon = start(&dir, &subs, FAST);

    let v = daemon.cli_json(&["test"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let results = v["results"].as_array().expect("results");
    let names: BTreeSet<&str> = results
        .iter()
        .map(|r| r["subscription"].as_str().expect("name"))
        .collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]), "{v:#}");
    for r in results {
        assert_eq!(r["status"], 200, "{r}");
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["attempt_id"].as_str().is_some(), "{r}");
        assert!(r["duration_ms"].is_u64(), "{r}");
    }
    for (path, secret, name) in [("/a", SECRET, "a"), ("/b", SECRET2, "b")] {
        let got = receiver.requests_for(path);
        assert_eq!(got.len(), 1, "{path}");
        let req = &got[0];
        assert!(verify_signature(secret, req), "{path}: bad signature");
        assert_eq!(req.header("x-webhook-event"), Some("App.TestWebhook"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let body = req.json();
        assert_eq!(body["EventType"], "App.TestWebhook", "{body}");
        assert_eq!(body["Subscription"], name, "{body}");
    }
    assert_eq!(receiver.count("/c"), 0);
    assert_eq!(receiver.count("/off"), 0);
    let a = attempts(&daemon, &["--subscription", "a"]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["trigger"], "test");
    assert_eq!(a[0]["event_type"], "App.TestWebhook");

    // One named subscription, as a table.
    let out = daemon.cli(&["test", "--subscription", "a"]);
    out.assert_status(0);
    assert!(
        out.stdout.contains("OK") && out.stdout.contains('a'),
        "{}",
        out.stdout
    );
    assert_eq!(receiver.count("/a"), 2);
    assert_eq!(receiver.count("/b"), 1);

    // One that does not list App.TestWebhook: the daemon's error.
    let out = daemon.cli(&["test", "--subscription", "c"]);
    out.assert_status(1);
    assert!(out.stderr.contains("App.TestWebhook"), "{}", out.stderr);
    assert_eq!(receiver.count("/c"), 0);

    // A failing endpoint: exit 1, the result shows the status.
    receiver.set("/b", Behaviour::Status(503));
    let out = daemon.cli(&["test", "--subscription", "b", "--json"]);
    out.assert_status(1);
    let v = out.json();
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["results"][0]["subscription"], "b");
    assert_eq!(v["results"][0]["status"], 503, "{v:#}");
    assert_eq!(v["results"][0]["ok"], false);
    let out = daemon.cli(&["test", "--subscription", "b"]);
    out.assert_status(1);
    assert!(
        out.stdout.contains("FAILED") && out.stdout.contains("503"),
        "{}",
        out.stdout
    );
    // A test webhook is one attempt: never retried.
    let baseline = receiver.count("/b");
    daemon
        .cli(&["test", "--subscription", "a"])
        .assert_status(0);
    assert_eq!(daemon.counter("b", "retrying"), 0);
    assert_eq!(receiver.count("/b"), baseline);
    // A failed test webhook is not a CDR: `resend --failed` leaves it alone.
    let v = daemon.cli_json(&["resend", "--failed"]);
    assert_eq!(v["queued"], 0, "{v:#}");
}

#[test]
fn reload_command_applies_a_good_config_and_refuses_a_broken_one() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let one = subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]);
    let daemon = start(&dir, &one, FAST);
    let two = [
        one.clone(),
        subscription("second", &receiver.url("/second"), &["*"]),
    ]
    .concat();
    dir.config().subscriptions(&two).delivery(FAST).write();
    let out = daemon.cli(&["reload"]);
    out.assert_status(0);
    assert!(out.stdout.contains("reload"), "{}", out.stdout);
    let status = daemon.status();
    let names: Vec<&str> = status["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["crm", "second"]);
    let v = daemon.cli_json(&["reload"]);
    assert_eq!(v["ok"], true, "{v:#}");

    // Broken: exit 1, the error with line and column, the old config stays.
    dir.write_raw_config("subscriptions:\n  - name: [oops\n");
    let out = daemon.cli(&["reload"]);
    out.assert_status(1);
    assert!(
        has_line_column(&out.stderr, "config.yaml"),
        "no line:column in: {}",
        out.stderr
    );
    let out = daemon.cli(&["reload", "--json"]);
    out.assert_status(1);
    let v = out.json();
    assert_eq!(v["ok"], false);
    assert!(has_line_column(
        v["error"].as_str().unwrap_or(""),
        "config.yaml"
    ));
    let status = daemon.status();
    let error = status["config"]["error"].as_str().unwrap_or_default();
    assert!(has_line_column(error, "config.yaml"), "{status:#}");
    assert_eq!(status["subscriptions"].as_array().map(Vec::len), Some(2));
    let out = daemon.cli(&["status"]);
    assert!(out.stdout.contains("REFUSED"), "{}", out.stdout);

    // Still delivering with the last good config.
    dir.drop_file("one.json", &make_cdr(1));
    receiver.wait_for_requests("/second", 1, DEADLINE);
}

#[test]
fn check_config_on_good_bad_and_example_files() {
    let dir = TestDir::new();
    dir.config()
        .subscriptions(&subscription("crm", "http://127.0.0.1:9/crm", &["*"]))
        .write();
    let good = dir.config_path();
    let good = good.to_str().expect("UTF-8");
    let out = cdrhook(&["check-config", good]);
    out.assert_status(0);
    assert!(out.stdout.contains("OK") && out.stdout.contains("crm"));
    let v = cdrhook(&["check-config", good, "--json"]).json();
    assert_eq!(v["ok"], true, "{v:#}");
    // Via --config too.
    cdrhook(&["check-config", "--config", good]).assert_status(0);

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "subscriptions:\n  - name: a\n    endpoint: http://h\n    evnts: [\"*\"]\n",
    )
    .expect("write bad.yaml");
    let bad = bad.to_str().expect("UTF-8");
    let out = cdrhook(&["check-config", bad]);
    out.assert_status(1);
    assert!(
        out.stderr.contains("bad.yaml:4:5:"),
        "expected bad.yaml:4:5 in: {}",
        out.stderr
    );
    let out = cdrhook(&["check-config", bad, "--json"]);
    out.assert_status(1);
    let v = out.json();
    assert_eq!(v["ok"], false);
    assert!(has_line_column(
        v["error"].as_str().unwrap_or(""),
        "bad.yaml"
    ));

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "subscriptions:\n  - name: [oops\n").expect("write");
    let out = cdrhook(&["check-config", broken.to_str().expect("UTF-8")]);
    out.assert_status(1);
    assert!(
        has_line_column(&out.stderr, "broken.yaml"),
        "{}",
        out.stderr
    );

    let missing = dir.path().join("missing.yaml");
    cdrhook(&["check-config", missing.to_str().expect("UTF-8")]).assert_status(1);

    let example = manifest_dir().join("config.example.yaml");
    let out = cdrhook(&["check-config", example.to_str().expect("UTF-8")]);
    out.assert_status(0);
}

// ---------------------------------------------------------------------------
// 3. Exit codes, help, version

#[test]
fn exit_codes_for_bad_usage_and_no_daemon() {
    let dir = TestDir::new();
    let nowhere = dir.path().join("nobody-here.sock");
    let nowhere = nowhere.to_str().expect("UTF-8");
    let with_socket = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--socket", nowhere]);
        cdrhook(&all)
    };

    // Bad usage is found before any daemon is asked: 2, not 3.
    for args in [
        &["status", "--bogus"][..],
        &["frobnicate"],
        &[],
        &["resend"],
        &["resend", "--subscription", "crm"],
        &["resend", "a1", "--failed"],
        &["resend", "not-an-id"],
        &["attempts", "--since", "yesterday"],
        &["attempts", "--since", "2026-13-45T99:00:00Z"],
        &["attempts", "--event-type", "App.NopeWebhook"],
        &["attempts", "--limit", "many"],
        &["resend", "--failed", "--since", "soon"],
        &["replay", "--subscription", "x"],
        &["replay", "--subscription", "x", "--since", "then"],
        &["show"],
        &["show", "xyz"],
        &["test", "--subscription"],
    ] {
        let out = with_socket(args);
        assert_eq!(
            out.status, 2,
            "{args:?}: expected exit 2\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        assert!(!out.stderr.trim().is_empty(), "{args:?}: no message");
    }

    // No daemon: 3, naming the socket.
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["attempts"],
        &["show", "a1"],
        &["resend", "a1"],
        &["resend", "--failed"],
        &["replay", "--subscription", "x", "--since", "1h"],
        &["test"],
        &["reload"],
    ] {
        let out = with_socket(args);
        assert_eq!(
            out.status, 3,
            "{args:?}: expected exit 3\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        assert!(out.stderr.contains(nowhere), "{args:?}: {}", out.stderr);
    }

    // The socket found through --config.
    dir.config().write();
    let out = cdrhook(&[
        "status",
        "--config",
        dir.config_path().to_str().expect("UTF-8"),
    ]);
    out.assert_status(3);
    assert!(
        out.stderr.contains(dir.socket().to_str().expect("UTF-8")),
        "{}",
        out.stderr
    );
}

#[test]
fn help_and_version() {
    let out = cdrhook(&["--help"]);
    out.assert_status(0);
    for needle in [
        "run",
        "check-config",
        "status",
        "attempts",
        "show",
        "resend",
        "replay",
        "test",
        "reload",
        "--json",
        "--socket",
    ] {
        assert!(out.stdout.contains(needle), "{needle}:\n{}", out.stdout);
    }
    for (sub, needles) in [
        ("run", &["daemon"][..]),
        ("check-config", &["Validate", "line and column"]),
        ("status", &["uptime", "subscription"]),
        (
            "attempts",
            &[
                "history",
                "--subscription",
                "--failed",
                "--call-id",
                "--event-type",
                "--since",
                "--limit",
            ],
        ),
        ("show", &["attempt or delivery", "secrets masked"]),
        (
            "resend",
            &["again", "--failed", "--subscription", "--since"],
        ),
        ("replay", &["backfill", "--subscription", "--since"]),
        ("test", &["App.TestWebhook", "--subscription"]),
        ("reload", &["Reload the config"]),
    ] {
        let out = cdrhook(&[sub, "--help"]);
        out.assert_status(0);
        for needle in needles {
            assert!(
                out.stdout.contains(needle),
                "`{sub} --help` lacks {needle:?}:\n{}",
                out.stdout
            );
        }
        let out = cdrhook(&["help", sub]);
        out.assert_status(0);
    }
    let out = cdrhook(&["--version"]);
    out.assert_status(0);
    assert_eq!(out.stdout.trim(), format!("cdrhook {VERSION}"));
}

// ---------------------------------------------------------------------------
// 4. Signals

#[test]
fn sighup_reloads_the_config() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    // The secret lives in its own file: changing it does not touch
    // config.yaml, so only SIGHUP can bring the new one into force.
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir secrets");
    let key = secrets.join("a.key");
    std::fs::write(&key, SECRET).expect("write key");
    let subs = subscription_with(
        "a",
        &receiver.url("/a"),
        &["App.TestWebhook"],
        &format!("secret_file: {}", yaml_str(key.to_str().expect("UTF-8"))),
    );
    let daemon = start(&dir, &subs, FAST);
    let send_test = |n: usize| {
        daemon.cli(&["test"]).assert_status(0);
        receiver.wait_for_requests("/a", n, DEADLINE)[n - 1].clone()
    };
    assert!(verify_signature(SECRET, &send_test(1)));

    std::fs::write(&key, SECRET2).expect("write new key");
    assert!(
        verify_signature(SECRET, &send_test(2)),
        "the old secret stays until a reload"
    );
    assert!(!daemon.log_contains("config reloaded"));
    daemon.sighup();
    daemon.wait_log(DEADLINE, "config reloaded");
    assert!(daemon.log_contains("SIGHUP"), "{}", daemon.log_tail(20));
    let req = send_test(3);
    assert!(verify_signature(SECRET2, &req), "SIGHUP did not reload");
    assert!(!verify_signature(SECRET, &req));

    // A visible change by SIGHUP as well.
    let two = [subs.clone(), subscription("b", &receiver.url("/b"), &["*"])].concat();
    dir.config().subscriptions(&two).delivery(FAST).write();
    daemon.sighup();
    wait_for(DEADLINE, "subscription b in status", || {
        daemon.status()["subscriptions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "b"))
    });
    dir.drop_file("one.json", &make_cdr(1));
    receiver.wait_for_requests("/b", 1, DEADLINE);
}

#[test]
fn sigusr1_resends_dead_deliveries() {
    let receiver = Receiver::start();
    receiver.set("/crm", Behaviour::Status(500));
    let dir = TestDir::new();
    let subs = subscription("crm", &receiver.url("/crm"), &["App.QueueWebhook"]);
    let daemon = start(&dir, &subs, FAST);
    dir.drop_file("one.json", &make_cdr(1));
    dir.drop_file("two.json", &make_cdr(2));
    wait_counter(&daemon, "crm", "dead", 2);
    assert_eq!(receiver.count("/crm"), 4);
    receiver.set("/crm", Behaviour::Status(200));

    daemon.sigusr1();
    wait_counter(&daemon, "crm", "delivered", 2);
    assert_eq!(daemon.counter("crm", "dead"), 0);
    assert_eq!(receiver.count("/crm"), 6);
    let newest = attempts(&daemon, &["--limit", "2"]);
    assert!(
        newest
            .iter()
            .all(|a| a["trigger"] == "resend" && a["status"] == 200),
        "{newest:#?}"
    );
    assert!(daemon.log_contains("SIGUSR1"), "{}", daemon.log_tail(20));
}

#[test]
fn sigusr2_writes_the_status_to_the_log() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let subs = [
        subscription("crm-sub", &receiver.url("/crm"), &["*"]),
        subscription("bi-sub", &receiver.url("/bi"), &["*"]),
    ]
    .concat();
    let daemon = start(&dir, &subs, FAST);
    assert!(!daemon.log_contains("SUBSCRIPTION"));
    daemon.sigusr2();
    daemon.wait_log(DEADLINE, "DELIVERED");
    wait_for(DEADLINE, "both subscriptions in the logged status", || {
        let log = daemon.log();
        [
            "SUBSCRIPTION",
            "PENDING",
            "DEAD",
            "crm-sub",
            "bi-sub",
            VERSION,
        ]
        .iter()
        .all(|n| log.contains(n))
    });
    assert_status_ok(&daemon);
}

#[test]
fn sigterm_and_sigint_exit_0() {
    let dir = TestDir::new();
    for (name, sig) in [("SIGTERM", SIGTERM), ("SIGINT", SIGINT)] {
        let mut daemon = start(&dir, "", FAST);
        daemon.signal(sig);
        let status = daemon.wait_exit(DEADLINE);
        assert_eq!(status.code(), Some(0), "{name}: {status}");
        assert!(!dir.socket().exists(), "{name}: socket left behind");
        assert!(daemon.log_contains("stopped"), "{name}: {}", daemon.log());
    }
}
