//! The HTTP listener (contract §9): `/metrics` after a known sequence of
//! deliveries, failures and a rejected file, and the unmatched counter
//! across a restart; `/healthz` and `/readyz`,
//! which flips when the journal's disk is full; the bearer token on TCP
//! and the login form's cookie; the refusal to start on TCP without a
//! token file; the Unix socket's mode, its refusal of other host names (DNS
//! rebinding) and its removal at exit; the 64 KiB
//! body limit, and the 408 for a body that never comes.
//!
//! The client here is a plain HTTP/1.1 exchange (`Connection: close`) over
//! a TCP or Unix stream, so nothing in the test stands between the daemon's
//! bytes and the assertions.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::support::*;
use crate::harness::*;

const TOKEN: &str = "web-test-token-5f1c9a";

enum Target {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(target: &Target) -> Box<dyn Stream> {
    let timeout = Some(Duration::from_secs(10));
    match target {
        Target::Tcp(addr) => {
            let s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(timeout).expect("timeout");
            s.set_nodelay(true).expect("nodelay");
            Box::new(s)
        }
        Target::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)
                .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
            s.set_read_timeout(timeout).expect("timeout");
            Box::new(s)
        }
    }
}

/// One request; `body` is sent with its `Content-Length` (a POST always
/// has one).
fn http(target: &Target, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost:8080\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut s = connect(target);
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    s.write_all(&request).expect("send the request");
    read_reply(&mut s)
}

fn read_reply(s: &mut dyn Stream) -> Reply {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the reply");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l:?}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("value {l:?}")),
            )
        })
        .collect()
}

fn scrape(target: &Target, auth: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let r = http(target, "GET", "/metrics", auth, b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{r:?}"
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    samples(&r.body)
}

#[track_caller]
fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from {m:#?}"))
}

/// The label sets of one metric family's samples.
fn keys_of(m: &BTreeMap<String, f64>, name: &str) -> BTreeSet<String> {
    let prefix = format!("{name}{{");
    m.keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect()
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// The config of `dir` with `subs`, a delivery block and an `http` block.
fn write_config(dir: &TestDir, subs: &str, delivery: &str, http: &str) {
    let text = format!(
        "{}http:\n{}",
        dir.config().subscriptions(subs).delivery(delivery).render(),
        indent(http, 2)
    );
    dir.write_raw_config(&text);
}

fn unix_listen(dir: &TestDir) -> (PathBuf, String) {
    let sock = dir.path().join("http.sock");
    let listen = format!(
        "listen: {}\n",
        yaml_str(&format!("unix:{}", sock.display()))
    );
    (sock, listen)
}

fn token_file(dir: &TestDir) -> PathBuf {
    let path = dir.path().join("http.token");
    fs::write(&path, format!("{TOKEN}\n")).expect("write the token");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod the token");
    path
}

/// The address the daemon logged for its TCP listener (`127.0.0.1:0`
/// gets a free port).
fn tcp_address(daemon: &Daemon) -> String {
    wait_for_value(DEADLINE, "the http listener's address in the log", || {
        let log = daemon.log();
        let at = log.find("http: listening on ")?;
        let rest = &log[at + "http: listening on ".len()..];
        Some(rest.split_whitespace().next()?.to_string())
    })
}

#[test]
fn metrics_after_a_known_sequence() {
    let dir = TestDir::new();
    let receiver = Receiver::start();
    receiver.set("/ok", Behaviour::Status(200));
    receiver.set("/bad", Behaviour::Status(500));
    let subs = [
        subscription("ok", &receiver.url("/ok"), &["*"]),
        subscription("bad", &receiver.url("/bad"), &["App.AgentWebhook"]),
    ]
    .concat();
    // Two quick retries, then one that stays away for the test's length.
    let delivery = "timeout: 2s\nretry_schedule: [200ms, 200ms, 1h]\n";
    let (sock, listen) = unix_listen(&dir);
    write_config(&dir, &subs, delivery, &listen);
    let started = now_s();
    let daemon = Daemon::start(&dir);
    let target = Target::Unix(sock);

    // Before anything: the subscriptions are there, at zero.
    let m = scrape(&target, &[]);
    assert_eq!(value(&m, "cdrhook_cdrs_ingested_total"), 0.0);
    assert_eq!(
        value(
            &m,
            "cdrhook_deliveries{subscription=\"ok\",state=\"pending\"}"
        ),
        0.0
    );

    // The known sequence: three queue CDRs (ok), one agent CDR (ok and
    // bad, which answers 500 three times, then waits an hour), one empty
    // file (rejected).
    for i in 0..3 {
        dir.drop_file(
            &format!("q{i}.json"),
            &typed_cdr("App.QueueWebhook", &format!("q{i}")),
        );
    }
    let dropped = now_s();
    dir.drop_file("a1.json", &typed_cdr("App.AgentWebhook", "a1"));
    dir.drop_file("empty.json", b"");
    wait_counts(
        &daemon,
        &[("ok", [0, 0, 0, 4]), ("bad", [0, 1, 0, 0])],
        DEADLINE,
    );
    receiver.wait_for_requests("/bad", 3, DEADLINE);
    wait_for(DEADLINE, "empty.json rejected", || {
        dir.rejected_files().iter().any(|f| f == "empty.json")
    });
    let attempts_bad = "cdrhook_attempts_total{subscription=\"bad\",outcome=\"http_5xx\"}";
    let m = wait_for_value(DEADLINE, "the third attempt of bad counted", || {
        let m = scrape(&target, &[]);
        (m.get(attempts_bad) == Some(&3.0)).then_some(m)
    });
    let scraped = now_s();

    assert_eq!(value(&m, "cdrhook_cdrs_ingested_total"), 4.0);
    assert_eq!(
        value(&m, "cdrhook_files_rejected_total{reason=\"empty\"}"),
        1.0
    );
    assert_eq!(keys_of(&m, "cdrhook_files_rejected_total").len(), 1);
    // Attempts: exactly these outcomes, with the receiver's own count.
    assert_eq!(
        keys_of(&m, "cdrhook_attempts_total"),
        BTreeSet::from([
            "cdrhook_attempts_total{subscription=\"ok\",outcome=\"success\"}".to_string(),
            attempts_bad.to_string(),
        ])
    );
    assert_eq!(
        value(
            &m,
            "cdrhook_attempts_total{subscription=\"ok\",outcome=\"success\"}"
        ),
        4.0
    );
    assert_eq!(receiver.count("/ok"), 4);
    assert_eq!(receiver.count("/bad"), 3);
    assert_eq!(
        value(
            &m,
            "cdrhook_attempt_duration_seconds_count{subscription=\"ok\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &m,
            "cdrhook_attempt_duration_seconds_count{subscription=\"bad\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "cdrhook_attempt_duration_seconds_bucket{le=\"+Inf\",subscription=\"bad\"}"
        ),
        3.0
    );
    // Deliveries: every subscription with every state.
    let mut want = BTreeSet::new();
    for sub in ["ok", "bad"] {
        for state in ["pending", "retrying", "dead", "held", "delivered"] {
            want.insert(format!(
                "cdrhook_deliveries{{subscription=\"{sub}\",state=\"{state}\"}}"
            ));
        }
    }
    assert_eq!(keys_of(&m, "cdrhook_deliveries"), want);
    for (sub, state, n) in [
        ("ok", "delivered", 4.0),
        ("ok", "pending", 0.0),
        ("ok", "retrying", 0.0),
        ("bad", "retrying", 1.0),
        ("bad", "pending", 0.0),
        ("bad", "dead", 0.0),
        ("bad", "held", 0.0),
        ("bad", "delivered", 0.0),
    ] {
        let key = format!("cdrhook_deliveries{{subscription=\"{sub}\",state=\"{state}\"}}");
        assert_eq!(value(&m, &key), n, "{key}");
    }
    // The oldest undelivered: none for ok, the agent CDR for bad.
    assert_eq!(
        value(
            &m,
            "cdrhook_oldest_undelivered_age_seconds{subscription=\"ok\"}"
        ),
        0.0
    );
    let oldest = "cdrhook_oldest_undelivered_age_seconds{subscription=\"bad\"}";
    let age = value(&m, oldest);
    assert!(
        age > 0.0 && age <= scraped - dropped + 1.0,
        "age {age}, dropped {:.1}s before the scrape",
        scraped - dropped
    );
    // The spool: nothing waiting; the agent CDR's file stays in flight
    // while its delivery to bad is open.
    assert_eq!(value(&m, "cdrhook_spool_files{where=\"waiting\"}"), 0.0);
    assert_eq!(value(&m, "cdrhook_spool_files{where=\"inflight\"}"), 1.0);
    assert_eq!(value(&m, "cdrhook_config_reload_failures_total"), 0.0);
    let loaded = value(&m, "cdrhook_config_last_load_timestamp_seconds");
    assert!(
        loaded >= started - 1.0 && loaded <= scraped,
        "loaded {loaded}, started {started}"
    );
    assert!(value(&m, "cdrhook_journal_bytes") > 0.0);

    // The age grows with time (the next scrapes find the same delivery).
    wait_for(
        DEADLINE,
        "the oldest undelivered age to grow by a second",
        || value(&scrape(&target, &[]), oldest) >= age + 1.0,
    );

    // bad made inactive: its open delivery is held, not retrying.
    let subs_off = [
        subscription("ok", &receiver.url("/ok"), &["*"]),
        subscription_with(
            "bad",
            &receiver.url("/bad"),
            &["App.AgentWebhook"],
            "active: false",
        ),
    ]
    .concat();
    write_config(&dir, &subs_off, delivery, &listen);
    let held = "cdrhook_deliveries{subscription=\"bad\",state=\"held\"}";
    let m = wait_for_value(DEADLINE, "bad's delivery held", || {
        let m = scrape(&target, &[]);
        (m.get(held) == Some(&1.0)).then_some(m)
    });
    assert_eq!(
        value(
            &m,
            "cdrhook_deliveries{subscription=\"bad\",state=\"retrying\"}"
        ),
        0.0
    );
    assert!(value(&m, "cdrhook_config_last_load_timestamp_seconds") > loaded);
    assert!(
        value(&m, oldest) > 0.0,
        "a held delivery is still undelivered"
    );

    // A refused reload is counted; the config stays loaded and ready.
    dir.write_raw_config("subscriptions: [\n");
    wait_for(DEADLINE, "the refused reload counted", || {
        scrape(&target, &[]).get("cdrhook_config_reload_failures_total") == Some(&1.0)
    });
    let r = http(&target, "GET", "/readyz", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"ready": true}))
    );
    drop(daemon);
}

#[test]
fn unmatched_metric_is_the_journals_count_and_survives_a_restart() {
    let dir = TestDir::new();
    let receiver = Receiver::start();
    let subs = sales_and_all(&receiver, "filter: {QueueName: Sales}");
    let (sock, listen) = unix_listen(&dir);
    write_config(
        &dir,
        &subs,
        "timeout: 2s\nretry_schedule: [100ms]\n",
        &listen,
    );
    let mut daemon = Daemon::start(&dir);
    let target = Target::Unix(sock);
    let key = |sub: &str| format!("cdrhook_cdrs_unmatched_total{{subscription=\"{sub}\"}}");
    assert_eq!(value(&scrape(&target, &[]), &key("sales")), 0.0);

    // Two queue CDRs without a QueueName: sales' filter excludes both
    // (counted as they are journaled, before all gets them).
    for i in 0..2 {
        dir.drop_file(
            &format!("q{i}.json"),
            &typed_cdr("App.QueueWebhook", &format!("q{i}")),
        );
    }
    wait_delivered(&daemon, &[("all", 2)], DEADLINE);
    let m = scrape(&target, &[]);
    assert_eq!(
        (value(&m, &key("sales")), value(&m, &key("all"))),
        (2.0, 0.0)
    );
    assert_eq!(receiver.count("/sales"), 0);

    // The journal keeps the count: the counter does not start again at 0.
    daemon.sigterm();
    assert!(daemon.wait_exit(DEADLINE).success(), "{}", daemon.log());
    let daemon = Daemon::start(&dir);
    assert_eq!(value(&scrape(&target, &[]), &key("sales")), 2.0);
    assert_eq!(daemon.counter("sales", "unmatched"), 2);
}

#[test]
fn tcp_needs_the_bearer_token_except_for_healthz() {
    let dir = TestDir::new();
    let receiver = Receiver::start();
    let token = token_file(&dir);
    write_config(
        &dir,
        &subscription("ok", &receiver.url("/ok"), &["*"]),
        "timeout: 2s\n",
        &format!(
            "listen: 127.0.0.1:0\ntoken_file: {}\n",
            yaml_str(&token.to_string_lossy())
        ),
    );
    let daemon = Daemon::start(&dir);
    let target = Target::Tcp(tcp_address(&daemon));
    let auth = bearer();
    let with_token = [("Authorization", auth.as_str())];

    // Liveness is open to all.
    let r = http(&target, "GET", "/healthz", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"alive": true}))
    );
    // Everything else needs the token.
    for path in ["/metrics", "/readyz", "/", "/attempts"] {
        let r = http(&target, "GET", path, &[], b"");
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"cdrhook\"")
        );
        for wrong in ["Bearer nope", "Bearer web-test-token-5f1c9", "Basic abc"] {
            let r = http(&target, "GET", path, &[("Authorization", wrong)], b"");
            assert_eq!(r.status, 401, "{path} with {wrong}: {r:?}");
        }
    }
    scrape(&target, &with_token);
    let r = http(&target, "GET", "/readyz", &with_token, b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"ready": true}))
    );
    // With the token, the page's paths reach the page.
    let r = http(&target, "GET", "/", &with_token, b"");
    assert_ne!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), None);
    // The token never shows in the log.
    assert!(!daemon.log().contains(TOKEN));

    // A browser: the unauthenticated page offers the login form...
    let r = http(&target, "GET", "/", &[], b"");
    assert!(
        r.body.contains("<form method=\"post\" action=\"/login\">"),
        "{r:?}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{r:?}");
    assert!(
        r.header("content-security-policy")
            .is_some_and(|c| c.contains("frame-ancestors 'none'")),
        "{r:?}"
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = http(&target, "POST", "/login", &form, b"token=wrong");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("set-cookie"), None);
    // ...and the token once gives a session cookie.
    let body = format!("token={TOKEN}");
    let r = http(&target, "POST", "/login", &form, body.as_bytes());
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    let session = cookie.split(';').next().expect("name=value").to_string();
    assert!(session.starts_with("cdrhook_session="), "{session}");
    let r = http(&target, "GET", "/", &[("Cookie", &session)], b"");
    assert_ne!(r.status, 401, "{r:?}");
    let forged = "cdrhook_session=00000000000000000000000000000000";
    assert_eq!(
        http(&target, "GET", "/", &[("Cookie", forged)], b"").status,
        401
    );
    // Logging out ends the session.
    let r = http(&target, "POST", "/logout", &[("Cookie", &session)], b"");
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        http(&target, "GET", "/", &[("Cookie", &session)], b"").status,
        401
    );

    // Bodies: over 64 KiB is refused (413), under it reaches the page.
    let big = vec![b'x'; 64 * 1024 + 1];
    let r = http(&target, "POST", "/actions/resend", &with_token, &big);
    assert_eq!(r.status, 413, "{r:?}");
    let fits = vec![b'x'; 64 * 1024];
    let r = http(&target, "POST", "/actions/resend", &with_token, &fits);
    assert!(r.status != 413 && r.status != 401, "{r:?}");
    // Without the token a large body is not even read.
    let r = http(&target, "POST", "/actions/resend", &[], &big);
    assert_eq!(r.status, 401, "{r:?}");
    // A refused client cannot pipeline requests and leave the answers
    // unread (holding a connection): the first 401 ends the connection.
    let mut s = connect(&target);
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\nGET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .expect("send two requests");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the connection ends after the first answer");
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );
    // A body announced and never sent does not hold the connection (the
    // login form is open to all): 408 once the body's time is up.
    let Target::Tcp(addr) = &target else {
        unreachable!("a TCP listener")
    };
    // (Meanwhile, a head never finished ends its connection: slowloris.)
    let mut head_only = std::net::TcpStream::connect(addr).expect("connect");
    // 15 s: well past the daemon's 10 s, well before hyper's default 30 s.
    head_only
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    head_only
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .expect("send half a head");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    s.write_all(b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\ntoken=")
        .expect("send the head");
    assert_eq!(read_reply(&mut s).status, 408);
    let mut rest = Vec::new();
    if let Err(e) = head_only.read_to_end(&mut rest) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "a head never finished still holds its connection: {e}"
        );
    }
    drop(daemon);
}

#[test]
fn tcp_without_a_token_file_refuses_to_start() {
    let dir = TestDir::new();
    let receiver = Receiver::start();
    write_config(
        &dir,
        &subscription("ok", &receiver.url("/ok"), &["*"]),
        "timeout: 2s\n",
        "listen: 127.0.0.1:0\n",
    );
    let (status, log) = Daemon::start_expect_failure(&dir);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("http.token_file is required"), "{log}");
    assert!(
        has_line_column(&log),
        "the message names line and column: {log}"
    );
    assert!(!dir.socket().exists(), "no control socket left behind");
    // check-config says the same.
    let config = dir.config_path();
    let out = cdrhook(&["check-config", "--config", &config.to_string_lossy()]);
    assert_ne!(out.status, 0, "{out:?}");
    assert!(
        out.stderr.contains("http.token_file is required"),
        "{out:?}"
    );
}

#[test]
fn unix_socket_is_0660_answers_without_token_is_removed_at_exit_and_waits_for_a_restart() {
    let dir = TestDir::new();
    let receiver = Receiver::start();
    let (sock, listen) = unix_listen(&dir);
    write_config(
        &dir,
        &subscription("ok", &receiver.url("/ok"), &["*"]),
        "timeout: 2s\n",
        &listen,
    );
    let mut daemon = Daemon::start(&dir);
    let meta = fs::symlink_metadata(&sock).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let target = Target::Unix(sock.clone());
    assert_eq!(http(&target, "GET", "/healthz", &[], b"").status, 200);
    scrape(&target, &[]);
    assert_eq!(http(&target, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(http(&target, "POST", "/metrics", &[], b"").status, 405);
    // DNS rebinding: a page whose own name points at the forwarded port
    // is refused everything but liveness; localhost and addresses are not.
    let evil = [("Host", "rebind.example.com:8080")];
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/attempts"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("POST", "/actions/test"),
    ] {
        let r = http(&target, method, path, &evil, b"subscription=ok");
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert!(r.body.contains("http://localhost:PORT/"), "{r:?}");
    }
    assert_eq!(http(&target, "GET", "/healthz", &evil, b"").status, 200);
    for host in ["127.0.0.1:8080", "[::1]:8080", "localhost"] {
        let r = http(&target, "GET", "/", &[("Host", host)], b"");
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
    // A chunked body over the limit is cut off at 64 KiB: 413.
    let mut s = connect(&target);
    let mut req = b"POST /actions/resend HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..70 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'y'; 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = s.write_all(&req);
    assert_eq!(read_reply(&mut s).status, 413);

    daemon.sigterm();
    assert!(daemon.wait_exit(DEADLINE).success(), "{}", daemon.log());
    assert!(!sock.exists(), "the socket is removed at exit");

    // A socket left by a killed daemon is replaced at the next start.
    let mut daemon = Daemon::start(&dir);
    daemon.kill9();
    assert!(sock.exists());
    let daemon = Daemon::start(&dir);
    assert_eq!(http(&target, "GET", "/healthz", &[], b"").status, 200);

    // A new address waits for a restart; the running listener goes on.
    let other = dir.path().join("other.sock");
    write_config(
        &dir,
        &subscription("ok", &receiver.url("/ok"), &["*"]),
        "timeout: 2s\n",
        &format!(
            "listen: {}\n",
            yaml_str(&format!("unix:{}", other.display()))
        ),
    );
    wait_for(
        DEADLINE,
        "status to say http.listen waits for a restart",
        || {
            daemon.status()["config"]["restart_required"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k == "http.listen"))
        },
    );
    assert!(!other.exists());
    assert_eq!(http(&target, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn readyz_flips_while_the_journal_disk_is_full() {
    let dir = TestDir::new();
    let jfs = dir.path().join("jfs");
    let mount = match crate::faults::TmpfsMount::mount(&jfs, "8m") {
        Ok(m) => m,
        Err(why) => {
            cannot_run("readyz_flips_while_the_journal_disk_is_full", &why);
            return;
        }
    };
    let receiver = Receiver::start();
    let (sock, listen) = unix_listen(&dir);
    let text = format!(
        "{}http:\n{}",
        dir.config()
            .subscriptions(&subscription("ok", &receiver.url("/ok"), &["*"]))
            .journal(&format!(
                "path: {}",
                yaml_str(&jfs.join("journal").to_string_lossy())
            ))
            .render(),
        indent(&listen, 2)
    );
    dir.write_raw_config(&text);
    let daemon = Daemon::start(&dir);
    let target = Target::Unix(sock);
    let ready = |t: &Target| {
        let r = http(t, "GET", "/readyz", &[], b"");
        (r.status, r.json())
    };
    assert_eq!(ready(&target), (200, serde_json::json!({"ready": true})));

    let ballast = jfs.join("ballast");
    crate::faults::fill_with_ballast(&ballast);
    let (status, body) = ready(&target);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    let reason = body["reason"].as_str().expect("a reason");
    assert!(
        reason.starts_with("journal: ") && reason.contains("No space left on device"),
        "{reason}"
    );
    // Alive all the same.
    assert_eq!(http(&target, "GET", "/healthz", &[], b"").status, 200);

    fs::remove_file(&ballast).expect("remove the ballast");
    wait_for(Duration::from_secs(40), "ready again", || {
        ready(&target).0 == 200
    });
    drop(daemon);
    drop(mount);
}
