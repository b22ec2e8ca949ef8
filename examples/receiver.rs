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
//! HTTP is hyper's (HTTP/1.1, keep-alive, chunked bodies), on tokio, with
//! `TCP_NODELAY` on every connection; this file only decides the answers.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::Parser;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;

/// The secret of examples/quickstart.yaml (also the Standard Webhooks test
/// vector's).
const QUICKSTART_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A limit that keeps a misbehaving client from eating the machine.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

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

#[tokio::main]
async fn main() {
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
    let listener = match TcpListener::bind(args.listen).await {
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
    serve(listener, shared).await;
}

/// Accepts connections forever, one task each.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("receiver: accept: {e}");
                continue;
            }
        };
        // Head and body in separate segments would wait 40 ms for a
        // delayed ACK: send each as soon as it is written.
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, Arc::clone(&shared)));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                // A client going away mid-request is not worth a line.
                if !e.is_incomplete_message() {
                    eprintln!("receiver: connection {peer}: {e}");
                }
            }
        });
    }
}

/// One request, as `handle` needs it.
struct Request {
    method: String,
    /// Header names are lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request's body (up to `MAX_BODY_BYTES`) and answers it.
async fn answer(
    req: hyper::Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(e) => {
            let mut response = text_response(413, format!("cannot read the body: {e}\n"));
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let request = Request {
        method: parts.method.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), value)
            })
            .collect(),
        body,
    };
    let (status, text) = handle(&request, &shared);
    Ok(text_response(status, text))
}

fn text_response(status: u16, text: String) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Decides the answer to one request and prints its line.
fn handle(req: &Request, shared: &Shared) -> (u16, String) {
    if req.method != "POST" {
        return (405, "this receiver only takes POST\n".into());
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
    let (status, text) = if signature_ok == Some(false) {
        (401, "bad or missing signature\n")
    } else if shared.fail_rate > 0 && shared.random.below(100) < u64::from(shared.fail_rate) {
        (503, "failing on purpose (--fail-rate)\n")
    } else {
        (200, "ok\n")
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
    (status, text.into())
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

    /// The receiver end to end on 127.0.0.1: a signed POST gets 200 and a
    /// tampered one 401, on one kept-alive connection; a GET gets 405.
    #[test]
    fn answers_signed_posts_over_http() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            key: Some(key()),
            fail_rate: 0,
            random: Random::new(),
        });
        // Serves until the test process ends.
        std::thread::spawn(move || runtime.block_on(serve(listener, shared)));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://{addr}/cdr");
        let post = |body: &[u8]| {
            agent
                .post(&url)
                .header("webhook-id", ID)
                .header("webhook-timestamp", TIMESTAMP)
                .header("webhook-signature", SIGNATURE)
                .send(body)
                .unwrap()
        };
        let mut ok = post(PAYLOAD);
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.body_mut().read_to_string().unwrap(), "ok\n");
        assert_eq!(post(br#"{"test": 1}"#).status(), 401);
        assert_eq!(agent.get(&url).call().unwrap().status(), 405);
    }

    #[test]
    fn shortens_long_ids_only() {
        assert_eq!(shorten("abc", 12), "abc");
        assert_eq!(shorten("0123456789abcdef", 12), "0123456789ab…");
    }
}
