//! Stage microbenchmark: what each stage of the hot path
//! costs per CDR in cdrhook's own code, next to a floor (the least the same
//! work can cost with the same crates or system calls), so that a stage's
//! overhead and its regressions are visible one at a time. The journal
//! stage is in benches/journal.rs.
//!
//! `cargo bench --bench stages` (`-- --quick` for a tenth of the work).
//! Each figure is the best of 5 rounds, in µs per operation: the machine
//! is shared, and the best round is the one least disturbed by others.
//! Printed as a Markdown table for BENCHMARKS.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use cdrhook::cdr::parse_file;
use cdrhook::config::SpoolConfig;
use cdrhook::delivery::http::{build_agent, send, Outgoing};
use cdrhook::delivery::sign::signature;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const ROUNDS: usize = 5;

/// Runs `op` `n` times per round, `ROUNDS` rounds (after `setup` for each
/// round, untimed); returns the best round in µs per op.
fn best_of(n: usize, mut setup: impl FnMut(usize), mut op: impl FnMut(usize)) -> f64 {
    let mut best = f64::MAX;
    for round in 0..ROUNDS {
        setup(round);
        let t = Instant::now();
        for i in 0..n {
            op(i);
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    best
}

fn samples() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cdr");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("examples/cdr")
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("sample"))
        })
        .collect();
    out.sort();
    out
}

struct Row {
    stage: String,
    ours: f64,
    floor: f64,
    floor_is: &'static str,
}

fn parse_rows(n: usize, rows: &mut Vec<Row>) {
    for (name, bytes) in samples() {
        let cdrs = parse_file(&bytes).expect("a sample parses").len();
        let ours = best_of(
            n,
            |_| {},
            |_| {
                std::hint::black_box(parse_file(std::hint::black_box(&bytes)).ok());
            },
        ) / cdrs as f64;
        // The least any parser must do: validate the JSON once and hash the
        // bytes for the content id.
        let floor = best_of(
            n,
            |_| {},
            |_| {
                let ok =
                    serde_json::from_slice::<serde::de::IgnoredAny>(std::hint::black_box(&bytes))
                        .is_ok();
                std::hint::black_box((ok, Sha256::digest(&bytes)));
            },
        ) / cdrs as f64;
        rows.push(Row {
            stage: format!("parse {name} ({} B)", bytes.len()),
            ours,
            floor,
            floor_is: "serde_json validation (IgnoredAny) + SHA-256 of the bytes",
        });
    }
}

/// A directory on tmpfs where there is one (/dev/shm), so that the figure
/// is the system calls, not the disk.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn file_rows(n: usize, rows: &mut Vec<Row>) {
    let root = scratch();
    let spool = SpoolConfig {
        dir: root.path().join("spool"),
        archive_dir: root.path().join("archive"),
        rejected_dir: root.path().join("rejected"),
        ..SpoolConfig::default()
    };
    std::fs::create_dir_all(cdrhook::intake::inflight_dir(&spool)).expect("mkdir");
    let body = samples()
        .into_iter()
        .find(|(n, _)| n == "queue-answered.json")
        .expect("queue-answered.json")
        .1;
    let names: Vec<String> = (0..n).map(|i| format!("cdr-{i:06}.json")).collect();
    // A distinct CDR per file, as in life (the .inflight name is derived
    // from the content): the sample with one more property in front.
    let rest = std::str::from_utf8(&body)
        .expect("utf8")
        .trim_start()
        .strip_prefix('{')
        .expect("an object");
    let fill = |round: usize| {
        for (i, name) in names.iter().enumerate() {
            let b = format!("{{\"Seq\":\"{round}-{i}\",{rest}");
            std::fs::write(spool.dir.join(name), b).expect("write");
        }
    };
    let mut buffer = Vec::new();
    let ours = best_of(n, fill, |i| {
        assert!(
            cdrhook::intake::stage_file_once(&spool, &names[i], &mut buffer),
            "{} taken in",
            names[i]
        );
    });
    let inflight = cdrhook::intake::inflight_dir(&spool);
    let floor = best_of(n, fill, |i| {
        let from = spool.dir.join(&names[i]);
        let bytes = std::fs::read(&from).expect("read");
        std::hint::black_box(&bytes);
        let to = inflight.join(&names[i]);
        std::fs::rename(&from, &to).expect("rename");
        std::fs::remove_file(&to).expect("unlink");
    });
    rows.push(Row {
        stage: "file: read + judge + parse, move into .inflight/, finish (delete)".into(),
        ours,
        floor,
        floor_is: "std::fs::read + rename + remove_file",
    });
}

/// A keep-alive HTTP/1.1 server that answers every request with a 204 in
/// one write, with Nagle off: as close to free as a receiver gets.
fn server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        let mut length = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if writer
            .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

fn http_rows(n: usize, rows: &mut Vec<Row>) {
    let port = server();
    let yaml = format!(
        "spool:\n  dir: /tmp/unused-spool\njournal:\n  path: /tmp/unused-journal\nsubscriptions:\n  - name: s\n    endpoint: http://127.0.0.1:{port}/hook\n    events: [\"*\"]\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    );
    let cfg = cdrhook::config::parse(&yaml, Path::new("/tmp/stages.yaml"), &|_| None)
        .expect("bench config");
    let sub = &cfg.subscriptions[0];
    let agent =
        build_agent(&cfg.delivery, cdrhook::config::live::idle_per_host(&cfg)).expect("agent");
    let body = samples()
        .into_iter()
        .find(|(n, _)| n == "queue-answered.json")
        .expect("sample")
        .1;
    let id = "cdr_0123456789abcdef0123456789abcdef";
    let ours = best_of(
        n,
        |_| {},
        |i| {
            let outcome = send(
                &agent,
                &Outgoing {
                    sub,
                    webhook_id: id,
                    event_type: "App.QueueWebhook",
                    attempt: 1 + (i % 2) as u32,
                    body: &body,
                },
            );
            assert_eq!(outcome.status, Some(204), "{:?}", outcome.error);
        },
    );
    // The same request, written in one call on a kept-alive socket, and
    // the answer read: what the loopback and two threads cost.
    let mut request = format!(
        "POST /hook HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\nuser-agent: cdrhook/0.1.0\r\nwebhook-id: {id}\r\nwebhook-timestamp: 1796190000\r\nx-webhook-event: App.QueueWebhook\r\nx-webhook-attempt: 1\r\nwebhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    const ANSWER: usize = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".len();
    let mut answer = [0u8; ANSWER];
    let floor = best_of(
        n,
        |_| {},
        |_| {
            conn.write_all(&request).expect("write");
            conn.read_exact(&mut answer).expect("read");
        },
    );
    rows.push(Row {
        stage: format!(
            "HTTP POST of a {} B CDR, one ureq agent, keep-alive, 204",
            body.len()
        ),
        ours,
        floor,
        floor_is: "the same request bytes in one write on a kept-alive socket, answer read",
    });
}

fn sign_rows(n: usize, rows: &mut Vec<Row>) {
    let key = b"\x31\xa2\x8a\xf6\xbc\x9a\x8d\x82\x62\xab\x2d\x34\x2b\x68\x76\x36\xad\xb6\x2c\xb2";
    let body = samples()
        .into_iter()
        .find(|(n, _)| n == "queue-answered.json")
        .expect("sample")
        .1;
    let id = "cdr_0123456789abcdef0123456789abcdef";
    let ours = best_of(
        n,
        |_| {},
        |i| {
            std::hint::black_box(signature(key, id, 1_796_190_000 + i as u64, &body));
        },
    );
    // HMAC-SHA256 over the same bytes from a keyed state made once: no key
    // schedule, no text, no base64.
    let keyed = Hmac::<Sha256>::new_from_slice(key).expect("hmac");
    let floor = best_of(
        n,
        |_| {},
        |_| {
            let mut mac = keyed.clone();
            mac.update(id.as_bytes());
            mac.update(b".1796190000.");
            mac.update(&body);
            std::hint::black_box(mac.finalize().into_bytes());
        },
    );
    rows.push(Row {
        stage: format!("sign (HMAC-SHA256, base64) of a {} B CDR", body.len()),
        ours,
        floor,
        floor_is: "HMAC-SHA256 from a pre-keyed state, raw bytes",
    });
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = |n: usize| if quick { n / 10 } else { n };
    let mut rows = Vec::new();
    parse_rows(scale(20_000), &mut rows);
    file_rows(scale(5_000), &mut rows);
    http_rows(scale(5_000), &mut rows);
    sign_rows(scale(50_000), &mut rows);
    println!("| stage | µs per CDR (ours) | floor µs | ours / floor | floor is |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.1}× | {} |",
            r.stage,
            r.ours,
            r.floor,
            r.ours / r.floor,
            r.floor_is
        );
    }
}
