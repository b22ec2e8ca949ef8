//! A small webhook receiver for trying cdrhook out (see examples/quickstart.yaml).
//!
//! ```text
//! cargo run --example receiver -- [--listen 127.0.0.1:8088] [--secret whsec_...]
//!                                 [--fail-rate N] [--no-verify]
//! ```
//!
//! It accepts `POST`s on any path, checks each one's Standard Webhooks
//! signature and prints one line per delivery:
//!
//! ```text
//! 14:03:12.104  App.QueueWebhook      id=3f9a0c1d72e4…  attempt=1  call=6f1c2a9e-4b7d-4c1e-9a51-0d3e8b2f7a10  1234 B  signature OK   -> 200
//! ```
//!
//! It answers 200, 401 when the signature does not verify, and 503 to about
//! `--fail-rate` percent of the requests (to watch cdrhook retry).
//!
//! Standard library only (std::net, one thread per connection), HTTP/1.1 with
//! keep-alive and `Content-Length` bodies: enough for cdrhook, not a general
//! HTTP server.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret of examples/quickstart.yaml (also the Standard Webhooks test
/// vector's).
const QUICKSTART_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Limits that keep a misbehaving client from eating the machine.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// A kept-alive connection that stays quiet this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(about = "A webhook receiver that prints and verifies what cdrhook sends")]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,

    /// The subscription's signing secret (`whsec_` + base64 key).
    #[arg(long, default_value = QUICKSTART_SECRET)]
    secret: String,

    /// Answer 503 to roughly this percentage of the requests (0-100).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    fail_rate: u8,

    /// Accept requests without checking their signature (for subscriptions
    /// without a secret).
    #[arg(long)]
    no_verify: bool,
}

/// What every connection thread needs.
struct Shared {
    /// The decoded signing key, unless --no-verify.
    key: Option<Vec<u8>>,
    fail_rate: u8,
    random: Random,
}

fn main() {
    let args = Args::parse();
    let key = if args.no_verify {
        None
    } else {
        match decode_secret(&args.secret) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("receiver: bad --secret: {e}");
                std::process::exit(2);
            }
        }
    };
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("receiver: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    eprintln!(
        "receiver: listening on http://{}/ (signatures {}, fail rate {}%)",
        args.listen,
        if key.is_some() {
            "checked"
        } else {
            "not checked"
        },
        args.fail_rate
    );

    let shared = Arc::new(Shared {
        key,
        fail_rate: args.fail_rate,
        random: Random::new(),
    });
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = serve_connection(stream, &shared) {
                        // A client going away mid-request is not worth a line.
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            eprintln!("receiver: connection {peer:?}: {e}");
                        }
                    }
                });
            }
            Err(e) => eprintln!("receiver: accept: {e}"),
        }
    }
}

/// One parsed request.
struct Request {
    method: String,
    /// Header names are lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the client wants the connection kept open afterwards.
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves requests on one connection until the client closes it (keep-alive).
fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            // Closed cleanly between two requests.
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                respond(&mut writer, 400, "Bad Request", &format!("{e}\n"), false)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let (status, reason, text) = handle(&request, shared);
        respond(&mut writer, status, reason, &text, request.keep_alive)?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// Reads one request: request line, headers, then a `Content-Length` body.
/// Returns `None` when the connection is closed before a new request starts.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());

    let mut line = String::new();
    let mut header_bytes = 0;
    // Skip the empty lines a client may send between requests.
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        header_bytes += n;
        if header_bytes > MAX_HEADER_BYTES {
            return Err(bad("request head too large"));
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let method = method.to_string();
    let http10 = version == "HTTP/1.0";

    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        header_bytes += n;
        if header_bytes > MAX_HEADER_BYTES {
            return Err(bad("request head too large"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }

    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if find("transfer-encoding").is_some() {
        return Err(bad("chunked bodies are not supported, send Content-Length"));
    }
    let length = match find("content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?,
        None => 0,
    };
    if length > MAX_BODY_BYTES {
        return Err(bad("body too large"));
    }
    let connection = find("connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = if http10 {
        connection == "keep-alive"
    } else {
        connection != "close"
    };

    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        headers,
        body,
        keep_alive,
    }))
}

/// Decides the answer to one request and prints its line.
fn handle(req: &Request, shared: &Shared) -> (u16, &'static str, String) {
    if req.method != "POST" {
        return (
            405,
            "Method Not Allowed",
            "this receiver only takes POST\n".into(),
        );
    }

    let id = req.header("webhook-id").unwrap_or("-");
    // None: not checked (--no-verify).
    let signature_ok = shared.key.as_ref().map(|key| {
        verify(
            key,
            id,
            req.header("webhook-timestamp").unwrap_or(""),
            &req.body,
            req.header("webhook-signature").unwrap_or(""),
        )
    });
    let (status, reason, text) = if signature_ok == Some(false) {
        (401, "Unauthorized", "bad or missing signature\n")
    } else if shared.fail_rate > 0 && shared.random.below(100) < u64::from(shared.fail_rate) {
        (
            503,
            "Service Unavailable",
            "failing on purpose (--fail-rate)\n",
        )
    } else {
        (200, "OK", "ok\n")
    };

    println!(
        "{}  {:<20}  id={:<13}  attempt={}  call={}  {} B  {:<13}  -> {}",
        chrono::Local::now().format("%H:%M:%S%.3f"),
        req.header("x-webhook-event").unwrap_or("-"),
        shorten(id, 12),
        req.header("x-webhook-attempt").unwrap_or("-"),
        call_id(&req.body).unwrap_or_else(|| "-".into()),
        req.body.len(),
        match signature_ok {
            Some(true) => "signature OK",
            Some(false) => "signature BAD",
            None => "signature not checked",
        },
        status,
    );
    (status, reason, text.into())
}

fn respond(
    w: &mut impl Write,
    status: u16,
    reason: &str,
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    // One write, not one per piece: small separate writes meet Nagle's
    // algorithm and delayed ACKs, and each response would take 40 ms.
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(response.as_bytes())?;
    w.flush()
}

/// The key of a Standard Webhooks secret: the base64 after `whsec_`.
fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64
        .decode(encoded)
        .map_err(|e| format!("not whsec_ + base64: {e}"))?;
    if key.is_empty() {
        return Err("empty key".into());
    }
    Ok(key)
}

/// Standard Webhooks verification: `signatures` is the `webhook-signature`
/// header, space-separated `v1,<base64>` entries (other versions are
/// skipped); the request is genuine when any of them is
/// HMAC-SHA256(key, "{id}.{timestamp}.{body}").
///
/// A production receiver must also refuse a `webhook-timestamp` more than a
/// few minutes away from its clock, so that a captured request cannot be
/// replayed later, and remember the `webhook-id`s it has processed, since
/// cdrhook may send a CDR more than once.
fn verify(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    signatures.split_whitespace().any(|entry| {
        let Some(("v1", sig)) = entry.split_once(',') else {
            return false;
        };
        let Ok(sig) = BASE64.decode(sig) else {
            return false;
        };
        // verify_slice compares in constant time.
        mac.clone().verify_slice(&sig).is_ok()
    })
}

/// The `CallId` of the CDR in the body (the first one, for an array).
fn call_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = match &value {
        serde_json::Value::Array(items) => items.first()?,
        other => other,
    };
    match object.get("CallId")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The first `n` characters of `s`, with an ellipsis if it was longer.
fn shorten(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Random enough numbers for --fail-rate, from the standard library's
/// randomly keyed hasher (no extra crate).
struct Random {
    state: RandomState,
    counter: AtomicU64,
}

impl Random {
    fn new() -> Self {
        Random {
            state: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    /// A number in 0..n.
    fn below(&self, n: u64) -> u64 {
        let mut hasher = self.state.build_hasher();
        hasher.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        hasher.finish() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key() -> Vec<u8> {
        decode_secret(QUICKSTART_SECRET).unwrap()
    }

    #[test]
    fn verifies_the_published_test_vector() {
        assert!(verify(&key(), ID, TIMESTAMP, PAYLOAD, SIGNATURE));
    }

    #[test]
    fn any_matching_entry_is_enough() {
        let header = format!("v1,bm90IGl0 v2,whatever {SIGNATURE}");
        assert!(verify(&key(), ID, TIMESTAMP, PAYLOAD, &header));
    }

    #[test]
    fn rejects_tampering_and_wrong_keys() {
        let k = key();
        assert!(!verify(
            &k,
            ID,
            TIMESTAMP,
            br#"{"test": 2432232315}"#,
            SIGNATURE
        ));
        assert!(!verify(&k, ID, "1614265331", PAYLOAD, SIGNATURE));
        assert!(!verify(&k, "msg_other", TIMESTAMP, PAYLOAD, SIGNATURE));
        assert!(!verify(&k, ID, TIMESTAMP, PAYLOAD, ""));
        assert!(!verify(&k, ID, TIMESTAMP, PAYLOAD, "v1,not base64!"));
        // The right signature under another version tag does not count.
        let v2 = SIGNATURE.replacen("v1,", "v2,", 1);
        assert!(!verify(&k, ID, TIMESTAMP, PAYLOAD, &v2));
        let other = decode_secret("whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=").unwrap();
        assert!(!verify(&other, ID, TIMESTAMP, PAYLOAD, SIGNATURE));
    }

    #[test]
    fn secrets_must_be_base64() {
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_").is_err());
    }

    #[test]
    fn reads_keep_alive_requests_in_sequence() {
        let raw = "POST /cdr HTTP/1.1\r\nHost: x\r\nwebhook-id: abc\r\nContent-Length: 2\r\n\r\n{}\
                   POST /cdr HTTP/1.1\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"CallId\": \"c1\"}";
        let mut reader = BufReader::new(raw.as_bytes());
        let first = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(first.method, "POST");
        assert_eq!(first.header("webhook-id"), Some("abc"));
        assert_eq!(first.body, b"{}");
        assert!(first.keep_alive);
        let second = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(call_id(&second.body).as_deref(), Some("c1"));
        assert!(!second.keep_alive);
        assert!(read_request(&mut reader).unwrap().is_none());
    }

    #[test]
    fn shortens_long_ids_only() {
        assert_eq!(shorten("abc", 12), "abc");
        assert_eq!(shorten("0123456789abcdef", 12), "0123456789ab…");
    }
}
