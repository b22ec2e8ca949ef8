//! Integration-test harness for cdrhook: a recording HTTP receiver, a way to
//! run the real daemon and its CLI against a throw-away directory, spool
//! helpers, polling waits and a Standard Webhooks signature check.
//!
//! Every test module uses it with `use crate::harness::*;` (and
//! `use crate::harness::support::*;` for the pipeline helpers).

#![allow(dead_code, unused_imports)]

pub mod daemon;
pub mod pki;
pub mod receiver;
pub mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use daemon::{
    cdrhook, cdrhook_command, control_request, control_request_raw, dedent, files_in, indent,
    merge_yaml, run_command, subscription, subscription_with, yaml_str, CliOutput, ConfigBuilder,
    Daemon, TestDir, BIN, CLI_DEADLINE, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1, SIGUSR2,
    START_DEADLINE,
};
pub use receiver::{Behaviour, Receiver, Request};

/// How often `wait_for` and friends poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `f` every 20 ms until it returns true. Panics, naming `what` and
/// the time waited, if that has not happened within `deadline`.
#[track_caller]
pub fn wait_for(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for_value(deadline, what, || f().then_some(()))
}

/// Polls `f` every 20 ms until it returns `Some`, and returns that value.
/// Panics, naming `what` and the time waited, after `deadline`.
#[track_caller]
pub fn wait_for_value<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {elapsed:.2?} (deadline {deadline:?}) waiting for: {what}");
        }
        thread::sleep(POLL_INTERVAL.min(deadline - elapsed));
    }
}

/// Drops a CDR file into the spool the way the phone system does (contract §3):
/// writes `.NAME.tmp`, then renames it to `NAME`. Returns the final path.
pub fn drop_file(spool: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    drop_file_inner(spool, name, bytes, None)
}

/// Like `drop_file`, with the file's modification time set to `mtime`
/// before the rename (for "oldest first" tests).
pub fn drop_file_with_mtime(spool: &Path, name: &str, bytes: &[u8], mtime: SystemTime) -> PathBuf {
    drop_file_inner(spool, name, bytes, Some(mtime))
}

fn drop_file_inner(spool: &Path, name: &str, bytes: &[u8], mtime: Option<SystemTime>) -> PathBuf {
    let tmp = spool.join(format!(".{name}.tmp"));
    let dest = spool.join(name);
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    if let Some(mtime) = mtime {
        fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(mtime))
            .unwrap_or_else(|e| panic!("set mtime of {}: {e}", tmp.display()));
    }
    fs::rename(&tmp, &dest)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), dest.display()));
    dest
}

/// The crate's root directory.
/// A test that cannot run here fails, unless `CDRHOOK_ALLOW_SKIP=1` says
/// the run accepts that (then it says so loudly and the test returns): a
/// skipped test must never look like a passed one.
pub fn cannot_run(test: &str, why: &str) {
    let message = format!("{test} cannot run here: {why}. NOTHING WAS TESTED.");
    if std::env::var("CDRHOOK_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("\n******** SKIPPED (CDRHOOK_ALLOW_SKIP=1) {message} ********\n");
    } else {
        panic!("{message} Run as root, or set CDRHOOK_ALLOW_SKIP=1 to accept the skip.");
    }
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(file name, bytes)` of every file in `dir` whose name ends with
/// `suffix` (all files for ""), sorted by name.
pub fn read_files(dir: &Path, suffix: &str) -> Vec<(String, Vec<u8>)> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display())))
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.ends_with(suffix).then(|| {
                let bytes = fs::read(entry.path())
                    .unwrap_or_else(|e| panic!("read {}: {e}", entry.path().display()));
                (name, bytes)
            })
        })
        .collect();
    files.sort();
    files
}

/// The realistic sample CDRs, `examples/cdr/*.json`, sorted by name.
pub fn sample_cdrs() -> Vec<(String, Vec<u8>)> {
    let files = read_files(&manifest_dir().join("examples/cdr"), ".json");
    assert!(!files.is_empty(), "no sample CDRs in examples/cdr");
    files
}

/// The sample CDR file named `name` (e.g. `queue-answered.json`).
pub fn sample_cdr(name: &str) -> Vec<u8> {
    let path = manifest_dir().join("examples/cdr").join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The files that must be rejected, `tests/data/bad/*`, sorted by name.
pub fn bad_samples() -> Vec<(String, Vec<u8>)> {
    let files = read_files(&manifest_dir().join("tests/data/bad"), "");
    assert!(!files.is_empty(), "no bad samples in tests/data/bad");
    files
}

/// A small queue CDR, unique per `i` (its `CallId` is `call-{i}`), as one
/// JSON object without a trailing newline.
pub fn make_cdr(i: usize) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"EventType":"App.QueueWebhook","CallId":"call-{i}","#,
            r#""CallDirection":"Inbound","CallerNumber":"+1312555{n:04}","#,
            r#""StartDateTime":"2026-11-20T14:03:11.482Z","EndDateTime":"2026-11-20T14:09:47.015Z","#,
            r#""WaitTime":"00:00:05","QueueId":"bulk-queue","QueueName":"Bulk","#,
            r#""MetServiceLevel":true,"LeaveReason":"AgentAnswered"}}"#
        ),
        i = i,
        n = i % 10_000
    )
    .into_bytes()
}

/// The Standard Webhooks signature of one message: `v1,` + base64 of
/// HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the base64-decoded
/// part of `secret` after `whsec_`.
pub fn sign(secret_whsec: &str, webhook_id: &str, timestamp: &str, body: &[u8]) -> String {
    let encoded = secret_whsec.strip_prefix("whsec_").unwrap_or(secret_whsec);
    let key = BASE64
        .decode(encoded)
        .unwrap_or_else(|e| panic!("secret {secret_whsec:?} is not whsec_ + base64: {e}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// True if `signature_header` (one or more space-separated signatures) holds
/// the right `v1` signature for this message.
pub fn verify_signature_parts(
    secret_whsec: &str,
    webhook_id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    let expected = sign(secret_whsec, webhook_id, timestamp, body);
    signature_header
        .split_whitespace()
        .any(|candidate| candidate == expected)
}

/// True if `req` carries `webhook-id`, `webhook-timestamp` and a
/// `webhook-signature` of which one matches `secret` (Standard Webhooks).
pub fn verify_signature(secret_whsec: &str, req: &Request) -> bool {
    let (Some(id), Some(timestamp), Some(signature)) = (
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
    ) else {
        return false;
    };
    verify_signature_parts(secret_whsec, id, timestamp, &req.body, signature)
}
