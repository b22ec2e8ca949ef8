//! Tests of the integration-test harness itself (`harness/`), not of the
//! daemon: the receiver's behaviours, the waits, the signature check, the
//! spool and config helpers, the control-socket client and the command
//! runner. HTTP itself (parsing, chunked bodies, `Connection: close`, 400 to
//! garbage) is hyper's and has no test here; each receiver test left says
//! what of ours it covers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::*;

const SECOND: Duration = Duration::from_secs(1);
const FIVE_SECONDS: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A minimal HTTP client for talking to the receiver.

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(receiver: &Receiver) -> Client {
        let stream = TcpStream::connect(receiver.addr()).expect("connect to the receiver");
        stream
            .set_read_timeout(Some(FIVE_SECONDS))
            .expect("set read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        Client {
            writer: stream,
            reader,
        }
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut out = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.writer.write_all(&bytes).expect("send the request");
    }

    /// Reads one response; an error (e.g. `UnexpectedEof`) if none comes.
    fn read_response(&mut self) -> io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line has a colon");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("numeric content-length"))
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn request(&mut self, method: &str, target: &str, body: &[u8]) -> Response {
        self.send(method, target, &[], body);
        self.read_response().expect("read the response")
    }
}

fn post(receiver: &Receiver, target: &str, body: &[u8]) -> Response {
    Client::connect(receiver).request("POST", target, body)
}

// ---------------------------------------------------------------------------
// Receiver

// Kept: the recorded `Request` (path, target, version, headers, exact body) is ours.
#[test]
fn receiver_answers_200_ok_by_default_and_records_the_request() {
    let receiver = Receiver::start();
    assert!(receiver
        .url("/crm")
        .starts_with(&format!("http://127.0.0.1:{}/crm", receiver.port())));
    assert_eq!(receiver.url("crm"), receiver.url("/crm"));

    let mut client = Client::connect(&receiver);
    client.send(
        "POST",
        "/crm?x=1",
        &[
            ("X-Webhook-Event", "App.QueueWebhook"),
            ("Content-Type", "application/json"),
        ],
        br#"{"a":1}"#,
    );
    let response = client.read_response().expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/crm");
    assert_eq!(request.target, "/crm?x=1");
    assert_eq!(request.version, "HTTP/1.1");
    assert_eq!(request.body, br#"{"a":1}"#);
    assert_eq!(request.json()["a"], 1);
    assert_eq!(request.header("x-webhook-event"), Some("App.QueueWebhook"));
    assert_eq!(request.header("X-WEBHOOK-EVENT"), Some("App.QueueWebhook"));
    assert!(request
        .headers
        .iter()
        .any(|(n, v)| n == "x-webhook-event" && v == "App.QueueWebhook"));
    assert!(request.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(request.header("missing"), None);
    assert!(request.received <= Instant::now());

    assert_eq!(receiver.count("/crm"), 1);
    assert_eq!(receiver.count("/crm?x=1"), 1);
    assert_eq!(receiver.count("/crm?x=2"), 0);
    assert_eq!(receiver.count("/other"), 0);
    assert_eq!(receiver.requests_for("/crm").len(), 1);
    assert!(receiver.requests_for("/other").is_empty());

    receiver.clear_requests();
    assert!(receiver.requests().is_empty());
}

// Kept: `Request::connection` numbering is ours; tests use it to see connection reuse.
#[test]
fn receiver_serves_two_requests_on_one_keep_alive_connection() {
    let receiver = Receiver::start();
    let mut client = Client::connect(&receiver);
    let first = client.request("POST", "/a", b"one");
    let second = client.request("POST", "/b", b"two");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.header("connection"), None, "must not close");

    let other = post(&receiver, "/a", b"three");
    assert_eq!(other.status, 200);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].body, b"one");
    assert_eq!(requests[1].body, b"two");
    assert_eq!(requests[0].connection, requests[1].connection);
    assert_ne!(requests[0].connection, requests[2].connection);
    assert_eq!(receiver.count("/a"), 2);
}

// Kept: the `Behaviour` answers (default bodies, extra headers, no body for 204) are ours.
#[test]
fn receiver_status_behaviours() {
    let receiver = Receiver::start();
    receiver.set("/fail", Behaviour::Status(503));
    receiver.set("/empty", Behaviour::Status(204));
    receiver.set(
        "/busy",
        Behaviour::status_with_headers(429, &[("Retry-After", "3")]),
    );
    receiver.set(
        "/custom",
        Behaviour::Respond {
            status: 201,
            headers: vec![("X-Thing".to_string(), "yes".to_string())],
            body: b"created!".to_vec(),
        },
    );

    // All on one connection: answers without a body must keep it usable.
    let mut client = Client::connect(&receiver);
    let fail = client.request("POST", "/fail", b"");
    assert_eq!(fail.status, 503);
    assert_eq!(fail.body, b"status 503");

    let empty = client.request("POST", "/empty", b"");
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());
    assert_eq!(empty.header("content-length"), None);

    let busy = client.request("POST", "/busy", b"");
    assert_eq!(busy.status, 429);
    assert_eq!(busy.header("retry-after"), Some("3"));

    let custom = client.request("POST", "/custom", b"");
    assert_eq!(custom.status, 201);
    assert_eq!(custom.header("x-thing"), Some("yes"));
    assert_eq!(custom.body, b"created!");

    let default = client.request("POST", "/unset", b"");
    assert_eq!((default.status, default.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(receiver.requests().len(), 5);
}

// Kept: routing by path and the default route are ours.
#[test]
fn receiver_set_default_changes_unknown_paths_only() {
    let receiver = Receiver::start();
    receiver.set("/known", Behaviour::Status(200));
    receiver.set_default(Behaviour::Status(404));
    assert_eq!(post(&receiver, "/anything", b"").status, 404);
    assert_eq!(post(&receiver, "/known", b"").status, 200);
}

// Kept: a `set` takes effect on a kept-alive connection: ours.
#[test]
fn receiver_behaviour_can_change_between_requests_on_one_connection() {
    let receiver = Receiver::start();
    let mut client = Client::connect(&receiver);
    assert_eq!(client.request("POST", "/crm", b"").status, 200);
    receiver.set("/crm", Behaviour::Status(500));
    assert_eq!(client.request("POST", "/crm", b"").status, 500);
    receiver.set("/crm", Behaviour::Status(202));
    assert_eq!(client.request("POST", "/crm", b"").status, 202);
}

// Kept: the `Sleep` behaviour is ours.
#[test]
fn receiver_sleep_answers_200_after_the_delay() {
    let receiver = Receiver::start();
    receiver.set("/slow", Behaviour::Sleep(Duration::from_millis(300)));
    let start = Instant::now();
    let response = post(&receiver, "/slow", b"x");
    let elapsed = start.elapsed();
    assert_eq!(response.status, 200);
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered after {elapsed:?}"
    );
    assert!(elapsed < FIVE_SECONDS, "answered after {elapsed:?}");
}

// Kept: tests wait for a request that is still being answered: ours.
#[test]
fn receiver_records_before_the_behaviour_runs() {
    let receiver = Receiver::start();
    receiver.set("/slow", Behaviour::Sleep(Duration::from_secs(3)));
    let mut client = Client::connect(&receiver);
    client.send("POST", "/slow", &[], b"early");
    let requests = receiver.wait_for_requests("/slow", 1, SECOND);
    assert_eq!(requests[0].body, b"early");
}

// Kept: `Hang` and `stop()` closing hung connections are ours.
#[test]
fn receiver_hang_never_answers_until_stopped() {
    let receiver = Receiver::start();
    receiver.set("/hang", Behaviour::Hang);
    receiver.set("/fast", Behaviour::Status(200));
    let mut client = Client::connect(&receiver);
    client
        .writer
        .set_read_timeout(Some(Duration::from_millis(400)))
        .expect("set read timeout");
    client.send("POST", "/hang", &[], b"x");
    let err = client
        .read_response()
        .expect_err("a hung request must not be answered");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "expected a read timeout, got {err:?}"
    );
    assert_eq!(receiver.count("/hang"), 1, "recorded although not answered");

    // A hung handler does not hold back other connections.
    assert_eq!(post(&receiver, "/fast", b"").status, 200);

    client
        .writer
        .set_read_timeout(Some(FIVE_SECONDS))
        .expect("set read timeout");
    let start = Instant::now();
    receiver.stop();
    assert!(start.elapsed() < Duration::from_secs(3), "stop() was slow");
    let mut rest = Vec::new();
    let end = client.reader.read_to_end(&mut rest);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the hung connection was not closed by stop()"
    );
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
        "unexpected {end:?}"
    );
    assert!(rest.is_empty(), "a hung request got an answer after stop");
    // Records stay readable after stop.
    assert_eq!(receiver.count("/hang"), 1);
}

// Kept: drop ending sleeping handlers is ours.
#[test]
fn receiver_drop_releases_a_sleeping_handler() {
    let receiver = Receiver::start();
    receiver.set("/slow", Behaviour::Sleep(Duration::from_secs(60)));
    let mut client = Client::connect(&receiver);
    client.send("POST", "/slow", &[], b"x");
    receiver.wait_for_requests("/slow", 1, FIVE_SECONDS);
    let start = Instant::now();
    drop(receiver);
    assert!(client.read_response().is_err(), "no answer after a stop");
    assert!(start.elapsed() < Duration::from_secs(3));
}

// Kept: the `Redirect` behaviour is ours.
#[test]
fn receiver_redirect_answers_302_with_location() {
    let receiver = Receiver::start();
    let target = receiver.url("/elsewhere");
    receiver.set("/moved", Behaviour::Redirect(target.clone()));
    let response = post(&receiver, "/moved", b"x");
    assert_eq!(response.status, 302);
    assert_eq!(response.header("location"), Some(target.as_str()));
    assert_eq!(receiver.count("/elsewhere"), 0, "the client did not follow");
}

// Kept: `Sequence` stepping is ours.
#[test]
fn receiver_sequence_gives_one_step_per_request_and_repeats_the_last() {
    let receiver = Receiver::start();
    receiver.set(
        "/seq",
        Behaviour::Sequence(vec![
            Behaviour::Status(503),
            Behaviour::Sequence(vec![Behaviour::Status(500)]),
            Behaviour::Status(201),
        ]),
    );
    let mut client = Client::connect(&receiver);
    let statuses: Vec<u16> = (0..5)
        .map(|_| client.request("POST", "/seq", b"").status)
        .collect();
    assert_eq!(statuses, [503, 500, 201, 201, 201]);

    // Setting it again starts from the first step.
    receiver.set(
        "/seq",
        Behaviour::Sequence(vec![Behaviour::Status(502), Behaviour::Status(200)]),
    );
    assert_eq!(client.request("POST", "/seq", b"").status, 502);
    assert_eq!(client.request("POST", "/seq", b"").status, 200);
    // Each path has its own sequence.
    assert_eq!(client.request("POST", "/other", b"").status, 200);

    receiver.set("/empty-seq", Behaviour::Sequence(vec![]));
    assert_eq!(client.request("POST", "/empty-seq", b"").status, 200);
}

// Kept: `CloseWithoutResponse` inside a `Sequence` is ours.
#[test]
fn receiver_sequence_can_mix_closing_and_answering() {
    let receiver = Receiver::start();
    receiver.set(
        "/flaky",
        Behaviour::Sequence(vec![
            Behaviour::CloseWithoutResponse,
            Behaviour::Status(200),
        ]),
    );
    let mut first = Client::connect(&receiver);
    first.send("POST", "/flaky", &[], b"1");
    assert!(first.read_response().is_err());
    assert_eq!(post(&receiver, "/flaky", b"2").status, 200);
    assert_eq!(receiver.count("/flaky"), 2);
}

// Kept: closing without an answer relies on hyper closing on a service error.
#[test]
fn receiver_close_without_response_records_then_closes() {
    let receiver = Receiver::start();
    receiver.set("/drop", Behaviour::CloseWithoutResponse);
    let mut client = Client::connect(&receiver);
    client.send("POST", "/drop", &[], b"body");
    let err = client.read_response().expect_err("no response expected");
    assert_ne!(
        err.kind(),
        io::ErrorKind::WouldBlock,
        "should close, not hang"
    );
    assert_ne!(
        err.kind(),
        io::ErrorKind::TimedOut,
        "should close, not hang"
    );
    let requests = receiver.requests_for("/drop");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, b"body");
}

// Kept: `start_on` and stop freeing the port and closing pooled connections are ours.
#[test]
fn receiver_restarts_on_the_same_port() {
    let first = Receiver::start();
    let port = first.port();
    // Leave a keep-alive connection open, as a daemon's pool would.
    let mut client = Client::connect(&first);
    assert_eq!(client.request("POST", "/crm", b"1").status, 200);
    drop(first);

    // (A concurrently forked child may hold the listener until it execs.)
    wait_for(FIVE_SECONDS, "the port to be closed after drop", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    // The kept-alive connection was closed by the drop (the write itself
    // may or may not fail).
    let _ = client
        .writer
        .write_all(b"POST /crm HTTP/1.1\r\nContent-Length: 1\r\n\r\n2");
    assert!(client.read_response().is_err());

    let second = Receiver::start_on(port);
    assert_eq!(second.port(), port);
    assert!(second.requests().is_empty());
    assert_eq!(post(&second, "/crm", b"3").status, 200);
    assert_eq!(second.requests_for("/crm")[0].body, b"3");
}

// Kept: `stop()` is ours.
#[test]
fn receiver_stop_is_idempotent() {
    let receiver = Receiver::start();
    receiver.stop();
    receiver.stop();
    // A process forked concurrently (another test spawning a command) can
    // hold a copy of the listener until it execs, so allow a moment.
    wait_for(FIVE_SECONDS, "the port to be closed after stop", || {
        TcpStream::connect(receiver.addr()).is_err()
    });
}

// Kept: `wait_for_requests` is ours.
#[test]
fn receiver_wait_for_requests_returns_them() {
    let receiver = Receiver::start();
    let url_port = receiver.port();
    let sender = thread::spawn(move || {
        for i in 0..3 {
            let stream = TcpStream::connect(("127.0.0.1", url_port)).expect("connect");
            let reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut client = Client {
                writer: stream,
                reader,
            };
            client.request("POST", "/bulk", format!("{i}").as_bytes());
        }
    });
    let requests = receiver.wait_for_requests("/bulk", 3, FIVE_SECONDS);
    assert_eq!(requests.len(), 3);
    sender.join().expect("sender thread");
}

// Kept: `wait_for_requests` is ours.
#[test]
#[should_panic(expected = "request(s) to /never")]
fn receiver_wait_for_requests_times_out() {
    let receiver = Receiver::start();
    receiver.wait_for_requests("/never", 1, Duration::from_millis(100));
}

// ---------------------------------------------------------------------------
// wait_for

#[test]
#[should_panic(expected = "waiting for: the impossible")]
fn wait_for_panics_with_what_on_timeout() {
    wait_for(Duration::from_millis(100), "the impossible", || false);
}

#[test]
fn wait_for_timeout_message_names_the_elapsed_time() {
    let result = std::panic::catch_unwind(|| {
        wait_for(Duration::from_millis(150), "nothing", || false);
    });
    let payload = result.expect_err("wait_for must panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .expect("a formatted panic message");
    assert!(message.contains("timed out after"), "{message}");
    assert!(message.contains("ms"), "{message}");
    assert!(message.contains("nothing"), "{message}");
}

#[test]
#[should_panic(expected = "waiting for: no value")]
fn wait_for_value_panics_on_timeout() {
    let _: u32 = wait_for_value(Duration::from_millis(100), "no value", || None);
}

#[test]
fn wait_for_polls_until_true() {
    let start = Instant::now();
    let mut calls = 0;
    wait_for(FIVE_SECONDS, "three calls", || {
        calls += 1;
        calls == 3
    });
    assert_eq!(calls, 3);
    // Two sleeps of the poll interval in between.
    assert!(start.elapsed() >= Duration::from_millis(40));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn wait_for_value_returns_the_value() {
    let mut n = 0;
    let value = wait_for_value(FIVE_SECONDS, "n to reach 2", || {
        n += 1;
        (n >= 2).then_some(n * 10)
    });
    assert_eq!(value, 20);
}

// ---------------------------------------------------------------------------
// Signatures

const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_TS: &str = "1614265330";
const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn signed_request(signature: Option<&str>, body: &[u8]) -> Request {
    let mut headers = vec![
        ("webhook-id".to_string(), VECTOR_ID.to_string()),
        ("webhook-timestamp".to_string(), VECTOR_TS.to_string()),
    ];
    if let Some(signature) = signature {
        headers.push(("webhook-signature".to_string(), signature.to_string()));
    }
    Request {
        method: "POST".to_string(),
        path: "/".to_string(),
        target: "/".to_string(),
        version: "HTTP/1.1".to_string(),
        headers,
        body: body.to_vec(),
        received: Instant::now(),
        connection: 1,
    }
}

#[test]
fn sign_matches_the_standard_webhooks_test_vector() {
    assert_eq!(
        sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY),
        VECTOR_SIG
    );
}

#[test]
fn verify_signature_accepts_the_test_vector() {
    assert!(verify_signature(
        VECTOR_SECRET,
        &signed_request(Some(VECTOR_SIG), VECTOR_BODY)
    ));
}

#[test]
fn verify_signature_accepts_any_of_several_signatures() {
    let header = format!("v1,bm90IHRoaXMgb25l {VECTOR_SIG} v1a,whatever");
    assert!(verify_signature(
        VECTOR_SECRET,
        &signed_request(Some(&header), VECTOR_BODY)
    ));
}

#[test]
fn verify_signature_rejects_wrong_body_secret_or_missing_header() {
    assert!(!verify_signature(
        VECTOR_SECRET,
        &signed_request(Some(VECTOR_SIG), br#"{"test": 2432232315}"#)
    ));
    assert!(!verify_signature(
        "whsec_AAAAr8GKYqrTwjUPD8ILPZIo2LaLaSw=",
        &signed_request(Some(VECTOR_SIG), VECTOR_BODY)
    ));
    assert!(!verify_signature(
        VECTOR_SECRET,
        &signed_request(None, VECTOR_BODY)
    ));
    let unversioned = VECTOR_SIG.trim_start_matches("v1,");
    assert!(!verify_signature(
        VECTOR_SECRET,
        &signed_request(Some(unversioned), VECTOR_BODY)
    ));
    let mut no_timestamp = signed_request(Some(VECTOR_SIG), VECTOR_BODY);
    no_timestamp
        .headers
        .retain(|(n, _)| n != "webhook-timestamp");
    assert!(!verify_signature(VECTOR_SECRET, &no_timestamp));
}

#[test]
fn verify_signature_works_on_a_received_request() {
    let receiver = Receiver::start();
    let mut client = Client::connect(&receiver);
    client.send(
        "POST",
        "/signed",
        &[
            ("Webhook-Id", VECTOR_ID),
            ("Webhook-Timestamp", VECTOR_TS),
            ("Webhook-Signature", VECTOR_SIG),
        ],
        VECTOR_BODY,
    );
    client.read_response().expect("a response");
    assert!(verify_signature(
        VECTOR_SECRET,
        &receiver.requests_for("/signed")[0]
    ));
}

// ---------------------------------------------------------------------------
// Spool helpers and samples

#[test]
fn drop_file_leaves_only_the_final_file() {
    let dir = TestDir::new();
    let path = drop_file(&dir.spool(), "a.json", b"{\"x\":1}");
    assert_eq!(path, dir.spool().join("a.json"));
    assert_eq!(
        std::fs::read(&path).expect("read the dropped file"),
        b"{\"x\":1}"
    );
    assert_eq!(files_in(&dir.spool()), ["a.json"]);

    dir.drop_file("b.json", b"[]");
    assert_eq!(dir.spool_json_files(), ["a.json", "b.json"]);
    assert_eq!(files_in(&dir.spool()), ["a.json", "b.json"]);
}

#[test]
fn drop_file_with_mtime_sets_the_modification_time() {
    let dir = TestDir::new();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let path = drop_file_with_mtime(&dir.spool(), "old.json", b"{}", old);
    let mtime = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(mtime, old);
    assert_eq!(files_in(&dir.spool()), ["old.json"]);
}

#[test]
fn samples_are_found() {
    let samples = sample_cdrs();
    assert_eq!(samples.len(), 10, "examples/cdr holds 10 CDRs");
    for (name, bytes) in &samples {
        assert!(name.ends_with(".json"));
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("sample {name} is not JSON: {e}"));
        assert!(value.is_object() || value.is_array(), "{name}");
    }
    assert_eq!(
        sample_cdr("queue-answered.json"),
        samples
            .iter()
            .find(|(n, _)| n == "queue-answered.json")
            .expect("queue-answered.json is a sample")
            .1
    );
    let bad = bad_samples();
    assert_eq!(bad.len(), 7, "tests/data/bad holds 7 files");
    assert!(bad.iter().any(|(n, b)| n == "empty.json" && b.is_empty()));
}

#[test]
fn make_cdr_is_a_unique_queue_cdr() {
    let a: serde_json::Value = serde_json::from_slice(&make_cdr(1)).expect("JSON");
    let b: serde_json::Value = serde_json::from_slice(&make_cdr(2)).expect("JSON");
    assert_eq!(a["EventType"], "App.QueueWebhook");
    assert_eq!(a["CallId"], "call-1");
    assert_eq!(b["CallId"], "call-2");
    assert!(a.get("QueueId").is_some());
    assert_ne!(make_cdr(1), make_cdr(2));
    assert_eq!(make_cdr(7), make_cdr(7));
    assert_ne!(make_cdr(1), make_cdr(10_001), "unique beyond 10,000");
}

// ---------------------------------------------------------------------------
// Config writing

#[test]
fn test_dir_has_its_layout() {
    let dir = TestDir::new();
    for sub in [dir.spool(), dir.archive(), dir.rejected()] {
        assert!(sub.is_dir(), "{} exists", sub.display());
    }
    assert!(
        !dir.journal().exists(),
        "the journal is the daemon's to create"
    );
    assert!(dir.socket().as_os_str().len() < 108);
    assert!(dir.path().is_absolute());
}

#[test]
fn write_config_writes_defaults_with_absolute_paths() {
    let dir = TestDir::new();
    let subs = subscription("crm", "http://127.0.0.1:1/crm", &["App.QueueWebhook", "*"]);
    dir.write_config(&subs, None);
    let text = std::fs::read_to_string(dir.config_path()).expect("read config");
    let expected = format!(
        "spool:\n  dir: {spool}\n  rejected_dir: {rejected}\n  archive_dir: {archive}\n  \
         rescan_interval: 1s\njournal:\n  path: {journal}\ncontrol:\n  socket: {socket}\n\
         delivery:\n  timeout: 2s\n  retry_schedule: [200ms, 400ms, 800ms]\n\
         subscriptions:\n  - name: \"crm\"\n    endpoint: \"http://127.0.0.1:1/crm\"\n    \
         events: [\"App.QueueWebhook\",\"*\"]\n",
        spool = yaml_str(dir.spool().to_str().expect("utf-8")),
        rejected = yaml_str(dir.rejected().to_str().expect("utf-8")),
        archive = yaml_str(dir.archive().to_str().expect("utf-8")),
        journal = yaml_str(dir.journal().to_str().expect("utf-8")),
        socket = yaml_str(dir.socket().to_str().expect("utf-8")),
    );
    assert_eq!(text, expected);
    assert!(!dir.path().join(".config.yaml.tmp").exists());
}

#[test]
fn write_config_takes_a_whole_delivery_section() {
    let dir = TestDir::new();
    dir.write_config(
        "",
        Some("timeout: 500ms\nretry_schedule: [1s]\nconcurrency: 1"),
    );
    let text = std::fs::read_to_string(dir.config_path()).expect("read config");
    assert!(
        text.contains("delivery:\n  timeout: 500ms\n  retry_schedule: [1s]\n  concurrency: 1\n")
    );
    assert!(!text.contains("800ms"), "the default delivery is replaced");
    assert!(text.ends_with("subscriptions: []\n"));
}

#[test]
fn config_builder_overrides_keys_without_duplicates() {
    let dir = TestDir::new();
    let subs = [
        subscription_with(
            "signed",
            "http://127.0.0.1:1/s",
            &["*"],
            "
            secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
            headers:
              Authorization: \"Bearer ${TOKEN}\"
            ",
        ),
        subscription("off", "http://127.0.0.1:1/o", &["App.TestWebhook"]),
    ]
    .concat();
    let text = dir
        .config()
        .subscriptions(&subs)
        .spool(
            "
            rescan_interval: 5s
            after_ingest: archive
            ",
        )
        .journal("retention: 1d")
        .delivery_extra("retry_schedule:\n- 50ms\n- 60ms\nconcurrency: 2")
        .write();
    assert_eq!(
        text,
        std::fs::read_to_string(dir.config_path()).expect("read config")
    );
    assert_eq!(text.matches("rescan_interval:").count(), 1, "{text}");
    assert!(text.contains("  rescan_interval: 5s\n  after_ingest: archive\n"));
    assert!(text.contains("  dir: "), "other spool defaults stay");
    assert!(text.contains("  retention: 1d\n"));
    assert_eq!(text.matches("retry_schedule:").count(), 1, "{text}");
    assert!(
        text.contains("  timeout: 2s\n  retry_schedule:\n  - 50ms\n  - 60ms\n  concurrency: 2\n")
    );
    assert!(text.contains(
        "  - name: \"signed\"\n    endpoint: \"http://127.0.0.1:1/s\"\n    events: [\"*\"]\n    \
         secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n    headers:\n      \
         Authorization: \"Bearer ${TOKEN}\"\n  - name: \"off\"\n"
    ), "{text}");
}

#[test]
fn config_builder_empty_delivery_leaves_the_section_out() {
    let dir = TestDir::new();
    let text = dir.config().delivery("").render();
    assert!(!text.contains("delivery"), "{text}");
    assert!(text.contains("control:\n  socket: "));
}

#[test]
fn write_raw_config_variants() {
    let dir = TestDir::new();
    dir.write_raw_config("subscriptions: []\n");
    assert_eq!(
        std::fs::read_to_string(dir.config_path()).expect("read"),
        "subscriptions: []\n"
    );
    dir.write_raw_config_in_place("not: [valid\n");
    assert_eq!(
        std::fs::read_to_string(dir.config_path()).expect("read"),
        "not: [valid\n"
    );
    assert_eq!(
        files_in(dir.path())
            .iter()
            .filter(|n| n.contains("config"))
            .count(),
        1
    );
}

#[test]
fn dedent_and_merge() {
    assert_eq!(
        dedent("\n    a: 1\n      b: 2\n    c: 3\n  "),
        "a: 1\n  b: 2\nc: 3"
    );
    assert_eq!(dedent("   \n  "), "");
    assert_eq!(indent("a\n\nb", 2), "  a\n\n  b\n");
    assert_eq!(
        merge_yaml("a: 1\nb:\n  x: 1\nc: [1]\n", "b: 2\nd: 4"),
        "a: 1\nc: [1]\nb: 2\nd: 4\n"
    );
    assert_eq!(
        merge_yaml("list:\n- 1\n- 2\nk: v", "list: []"),
        "k: v\nlist: []\n"
    );
    assert_eq!(merge_yaml("a: 1", ""), "a: 1\n");
}

// ---------------------------------------------------------------------------
// Control-socket client and command runner

#[test]
fn control_request_round_trips_one_line() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).expect("bind a fake control socket");
    let server = thread::spawn(move || {
        let mut received = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("read a request line");
            received.push(line.clone());
            if line.contains("silent") {
                continue; // close without answering
            }
            let mut stream = stream;
            stream
                .write_all(b"{\"ok\":true}\n{\"extra\":1}\n")
                .expect("answer");
        }
        received
    });

    let answer = control_request(&dir.socket(), r#"{"cmd":"status"}"#).expect("a response");
    assert_eq!(
        answer, r#"{"ok":true}"#,
        "exactly one line, without newline"
    );
    let silent = control_request_raw(&dir.socket(), b"silent\n", FIVE_SECONDS).expect("no error");
    assert_eq!(silent, None);
    assert_eq!(
        server.join().expect("server thread"),
        ["{\"cmd\":\"status\"}\n", "silent\n"]
    );
    assert!(
        control_request(&dir.socket(), "{}").is_err(),
        "nobody listens"
    );
}

#[test]
fn run_command_captures_output_and_exit_code() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = run_command(cmd, FIVE_SECONDS);
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    out.assert_status(3);

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "printf '{\"a\": [1]}'"]);
    assert_eq!(run_command(cmd, FIVE_SECONDS).json()["a"][0], 1);
}

#[test]
#[should_panic(expected = "did not finish within")]
fn run_command_times_out() {
    let mut cmd = Command::new("sleep");
    cmd.arg("10");
    run_command(cmd, Duration::from_millis(200));
}

#[test]
#[should_panic(expected = "expected exit code 0, got 1")]
fn cli_output_assert_status_panics_on_mismatch() {
    let out = run_command(Command::new("false"), FIVE_SECONDS);
    out.assert_status(0);
}

#[test]
fn binary_under_test_exists() {
    assert!(std::path::Path::new(BIN).is_file(), "{BIN}");
}
