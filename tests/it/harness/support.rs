//! Helpers shared by the pipeline tests (spool, delivery, reload, crash),
//! on top of the rest of the harness.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

/// Two Standard Webhooks secrets (`whsec_` + base64).
pub const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SECRET_B: &str = "whsec_dGVzdC1zZWNyZXQtMTIzNDU2Nzg5MA==";

/// How long a test waits for something that normally takes well under a
/// second. Generous: a deadline, not an expectation.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `bytes` less a leading UTF-8 BOM: what the receiver must get for a file
/// holding one object (contract §4: "the same bytes, less any byte-order mark").
pub fn expected_body(bytes: &[u8]) -> Vec<u8> {
    bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(bytes)
        .to_vec()
}

/// The `webhook-id` of a received request (panics if missing).
pub fn webhook_id(req: &Request) -> String {
    req.header("webhook-id")
        .unwrap_or_else(|| panic!("request to {} without webhook-id", req.path))
        .to_string()
}

/// The `CallId` property of a received CDR body.
pub fn call_id(req: &Request) -> String {
    let body = req.json();
    body["CallId"]
        .as_str()
        .unwrap_or_else(|| panic!("body without a CallId: {}", req.body_text()))
        .to_string()
}

/// The `x-webhook-attempt` header as a number.
pub fn attempt_no(req: &Request) -> u32 {
    req.header("x-webhook-attempt")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "request to {} without a numeric x-webhook-attempt",
                req.path
            )
        })
}

/// The requests to `path` whose body is exactly `body`.
pub fn requests_with_body(receiver: &Receiver, path: &str, body: &[u8]) -> Vec<Request> {
    receiver
        .requests_for(path)
        .into_iter()
        .filter(|r| r.body == body)
        .collect()
}

/// How many requests to `path` carry `CallId` `id`.
pub fn count_call(receiver: &Receiver, path: &str, id: &str) -> usize {
    receiver
        .requests_for(path)
        .iter()
        .filter(|r| call_id(r) == id)
        .count()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `spool/.inflight`.
pub fn inflight_dir(dir: &TestDir) -> PathBuf {
    dir.spool().join(".inflight")
}

/// Names of the files in `spool/.inflight`.
pub fn inflight_files(dir: &TestDir) -> Vec<String> {
    files_in(&inflight_dir(dir))
}

/// True when neither the spool nor `.inflight` holds a CDR file (a
/// `*.json` name not starting with `.`).
pub fn spool_drained(dir: &TestDir) -> bool {
    let visible_json = |n: &String| n.ends_with(".json") && !n.starts_with('.');
    !dir.spool_json_files().iter().any(visible_json)
        && !inflight_files(dir).iter().any(visible_json)
}

/// Waits until the spool and `.inflight` hold no CDR file.
#[track_caller]
pub fn wait_drained(dir: &TestDir, deadline: Duration) {
    wait_for(deadline, "the spool and .inflight to be empty", || {
        spool_drained(dir)
    });
}

/// `(pending, retrying, dead, delivered)` of each subscription in `status`.
pub fn counts(daemon: &Daemon) -> BTreeMap<String, [u64; 4]> {
    let status = daemon.status();
    status["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("status without subscriptions: {status:#}"))
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s:#}"));
            (
                s["name"].as_str().expect("name").to_string(),
                [n("pending"), n("retrying"), n("dead"), n("delivered")],
            )
        })
        .collect()
}

/// Waits until `status` shows exactly these `[pending, retrying, dead,
/// delivered]` counts for each named subscription.
#[track_caller]
pub fn wait_counts(daemon: &Daemon, want: &[(&str, [u64; 4])], deadline: Duration) {
    let what = format!("status counts [pending, retrying, dead, delivered] to be {want:?}");
    let start = std::time::Instant::now();
    loop {
        let last = counts(daemon);
        if want
            .iter()
            .all(|(name, c)| last.get(*name).is_some_and(|got| got == c))
        {
            return;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `status` shows `delivered` for every named subscription and
/// nothing pending or retrying for them.
#[track_caller]
pub fn wait_delivered(daemon: &Daemon, want: &[(&str, u64)], deadline: Duration) {
    let full: Vec<(&str, [u64; 4])> = want.iter().map(|&(n, d)| (n, [0, 0, 0, d])).collect();
    wait_counts(daemon, &full, deadline);
}

/// True if `text` holds `:LINE:COLUMN` (two colon-prefixed numbers in a row),
/// as in `config.yaml:5:11: ...`.
pub fn has_line_column(text: &str) -> bool {
    let bytes = text.as_bytes();
    let number_at = |i: usize| -> Option<usize> {
        let n = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        (n > 0).then_some(i + n)
    };
    (0..bytes.len()).any(|i| {
        bytes[i] == b':'
            && number_at(i + 1)
                .filter(|&j| j < bytes.len() && bytes[j] == b':')
                .and_then(|j| number_at(j + 1))
                .is_some()
    })
}

/// A small CDR of the given type, unique by `id` (its `CallId`), without an
/// `EventType` for types it can infer.
pub fn typed_cdr(event: &str, id: &str) -> Vec<u8> {
    let extra = match event {
        "App.QueueWebhook" => r#""QueueId":"q1","WaitTime":"00:00:03""#,
        "App.IvrWebhook" => r#""IvrId":"ivr-1","IvrInputs":[]"#,
        "App.AgentWebhook" => r#""CallState":"Ended","InteractionObjectId":"io-1""#,
        "App.RecordingWebhook" => r#""RecordingFileName":"r.wav""#,
        other => panic!("no sample for {other}"),
    };
    format!(r#"{{"EventType":"{event}","CallId":"{id}",{extra}}}"#).into_bytes()
}

/// Two subscriptions: `sales` (queue CDRs, with the `sales_keys` filter
/// block) and `all` (every CDR, no filter).
pub fn sales_and_all(receiver: &Receiver, sales_keys: &str) -> String {
    [
        subscription_with(
            "sales",
            &receiver.url("/sales"),
            &["App.QueueWebhook"],
            sales_keys,
        ),
        subscription("all", &receiver.url("/all"), &["*"]),
    ]
    .concat()
}
