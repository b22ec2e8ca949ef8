//! Authentication per subscription (contract §10): OAuth2 client
//! credentials against a real token endpoint on 127.0.0.1 (the form, the
//! token sent, its cache, renewal before expiry, one renewal after a 401,
//! a token endpoint down, a changed `auth` block), and TLS client
//! certificates against a real TLS server that requires one from a CA made
//! at test time (with and without a certificate, a wrong or missing key
//! refused at start and at reload).

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::pki::{token_answer, Pki};
use crate::harness::support::*;
use crate::harness::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(20);

/// The `auth` block of a subscription, with the client secret from
/// `${CLIENT_SECRET}`.
fn auth_block(token_url: &str, extra: &str) -> String {
    format!(
        "auth:\n  type: oauth2_client_credentials\n  token_url: {}\n  client_id: cdrhook-app\n  client_secret: \"${{CLIENT_SECRET}}\"\n{extra}",
        yaml_str(token_url)
    )
}

const CLIENT_SECRET: &str = "cs-Yt62 &=+/secret";

/// Writes a config with one subscription `crm` posting to `endpoint` with
/// the `auth` block for `token_url` (plus `extra` auth keys) and the
/// `delivery` settings (none when empty), and starts the daemon with the
/// client secret in its environment.
fn start_crm(
    dir: &TestDir,
    endpoint: &str,
    token_url: &str,
    extra: &str,
    delivery: &str,
) -> Daemon {
    let sub = subscription_with("crm", endpoint, &["*"], &auth_block(token_url, extra));
    let config = dir.config().subscriptions(&sub);
    let config = if delivery.is_empty() {
        config
    } else {
        config.delivery(delivery)
    };
    config.write();
    Daemon::start_with_env(dir, &[("CLIENT_SECRET", CLIENT_SECRET)])
}

fn form(req: &Request) -> HashMap<String, String> {
    let body = req.body_text();
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 form")
}

fn bearer(req: &Request) -> Option<String> {
    req.header("authorization").map(str::to_string)
}

fn attempts_of(daemon: &Daemon, sub: &str) -> Vec<Value> {
    daemon
        .cli_json(&["attempts", "--subscription", sub, "--limit", "0"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_token_is_fetched_with_the_form_cached_and_renewed_before_it_expires() {
    let tokens = Receiver::start();
    // A 6 s token is renewed after 3 s (half its lifetime: a minute would
    // be more); the second answer has no expires_in (an hour is assumed).
    tokens.set(
        "/token",
        Behaviour::Sequence(vec![
            token_answer("tok-first-6s", Some(6)),
            token_answer("tok-second", None),
        ]),
    );
    let crm = Receiver::start();
    let dir = TestDir::new();
    let daemon = start_crm(
        &dir,
        &crm.url("/crm"),
        &tokens.url("/token"),
        "  scope: \"https://crm.example.com/.default\"\n  audience: crm-api\n",
        "",
    );
    // Nothing is fetched before there is something to send.
    assert_eq!(tokens.count("/token"), 0);

    dir.drop_file("a.json", &make_cdr(1));
    let got = crm.wait_for_requests("/crm", 1, DEADLINE);
    assert_eq!(bearer(&got[0]).as_deref(), Some("Bearer tok-first-6s"));
    let asked = tokens.requests_for("/token");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].method, "POST");
    assert_eq!(
        asked[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let f = form(&asked[0]);
    assert_eq!(
        f.get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    assert_eq!(f.get("client_id").map(String::as_str), Some("cdrhook-app"));
    assert_eq!(
        f.get("client_secret").map(String::as_str),
        Some(CLIENT_SECRET)
    );
    assert_eq!(
        f.get("scope").map(String::as_str),
        Some("https://crm.example.com/.default")
    );
    assert_eq!(f.get("audience").map(String::as_str), Some("crm-api"));
    assert_eq!(f.len(), 5, "{f:?}");

    // Cached: the next CDR goes with the same token, without asking again.
    dir.drop_file("b.json", &make_cdr(2));
    let got = crm.wait_for_requests("/crm", 2, DEADLINE);
    assert_eq!(bearer(&got[1]).as_deref(), Some("Bearer tok-first-6s"));
    assert_eq!(tokens.count("/token"), 1);
    let auth = daemon.subscription_status("crm")["auth"].clone();
    assert_eq!(auth["type"], "oauth2_client_credentials", "{auth:#}");
    assert_eq!(auth["token_url"], tokens.url("/token"));
    assert!(auth["token_valid_until"].is_string(), "{auth:#}");
    assert_eq!(auth["token_lifetime_assumed"], false);
    assert_eq!(auth["last_token_error"], Value::Null);

    // Past its renewal time (3 s after it was issued) but before it
    // expires, a new token is fetched before the next request. The wait is
    // the rule's, not a hope.
    std::thread::sleep(Duration::from_millis(3500));
    dir.drop_file("c.json", &make_cdr(3));
    let got = crm.wait_for_requests("/crm", 3, DEADLINE);
    assert_eq!(bearer(&got[2]).as_deref(), Some("Bearer tok-second"));
    assert_eq!(tokens.count("/token"), 2);
    let auth = daemon.subscription_status("crm")["auth"].clone();
    assert_eq!(auth["token_lifetime_assumed"], true, "{auth:#}");
    let table = daemon.cli(&["status"]).stdout;
    assert!(
        table.contains("crm: OAuth2 from") && table.contains("(assumed: no expires_in)"),
        "{table}"
    );
    wait_delivered(&daemon, &[("crm", 3)], DEADLINE);
}

#[test]
fn while_a_valid_token_is_being_renewed_other_requests_go_with_it() {
    // The renewal hangs past the old token's expiry. A request that finds
    // it under way goes at once with the old token, still valid, instead
    // of waiting for the token endpoint (and failing once it has expired).
    let tokens = Receiver::start();
    tokens.set(
        "/token",
        Behaviour::Sequence(vec![
            token_answer("tok-first-6s", Some(6)),
            Behaviour::Hang,
            token_answer("tok-third", Some(3600)),
        ]),
    );
    let crm = Receiver::start();
    let dir = TestDir::new();
    let daemon = start_crm(
        &dir,
        &crm.url("/crm"),
        &tokens.url("/token"),
        "",
        "timeout: 4s\nconcurrency: 2\nretry_schedule: [500ms, 500ms, 500ms, 500ms]",
    );
    dir.drop_file("a.json", &make_cdr(1));
    crm.wait_for_requests("/crm", 1, DEADLINE);
    // Past the renewal time (3 s after issue), 2.5 s before expiry; the
    // hanging renewal times out at 4 s, after the expiry.
    std::thread::sleep(Duration::from_millis(3500));
    dir.drop_file("b.json", &make_cdr(2));
    dir.drop_file("c.json", &make_cdr(3));
    let got = crm.wait_for_requests("/crm", 2, DEADLINE);
    assert_eq!(
        bearer(&got[1]).as_deref(),
        Some("Bearer tok-first-6s"),
        "the second request waited for the renewal"
    );
    // The other one gets through with the next token.
    wait_delivered(&daemon, &[("crm", 3)], DEADLINE);
    let got = crm.requests_for("/crm");
    assert_eq!(bearer(&got[2]).as_deref(), Some("Bearer tok-third"));
}

#[test]
fn a_401_drops_the_token_and_the_request_is_sent_once_more_with_a_new_one() {
    let tokens = Receiver::start();
    tokens.set(
        "/token",
        Behaviour::Sequence(vec![
            token_answer("tok-revoked", Some(3600)),
            token_answer("tok-renewed", Some(3600)),
            token_answer("tok-third", Some(3600)),
        ]),
    );
    let crm = Receiver::start();
    crm.set(
        "/crm",
        Behaviour::Sequence(vec![
            Behaviour::Status(401),
            Behaviour::Status(200),
            // The next CDR: 401 to both the token and its renewal.
            Behaviour::Status(401),
            Behaviour::Status(401),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    let daemon = start_crm(
        &dir,
        &crm.url("/crm"),
        &tokens.url("/token"),
        "",
        "timeout: 2s\nretry_schedule: [1h]",
    );

    dir.drop_file("a.json", &make_cdr(1));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    let got = crm.requests_for("/crm");
    assert_eq!(got.len(), 2);
    assert_eq!(bearer(&got[0]).as_deref(), Some("Bearer tok-revoked"));
    assert_eq!(bearer(&got[1]).as_deref(), Some("Bearer tok-renewed"));
    // Within one attempt: the same webhook-id and attempt number.
    assert_eq!(webhook_id(&got[0]), webhook_id(&got[1]));
    assert_eq!(attempt_no(&got[0]), 1);
    assert_eq!(attempt_no(&got[1]), 1);
    let attempts = attempts_of(&daemon, "crm");
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0]["status"], 200);

    // Only once per attempt: a second 401 ends the attempt.
    dir.drop_file("b.json", &make_cdr(2));
    wait_for(DEADLINE, "the second CDR's attempt", || {
        attempts_of(&daemon, "crm").len() == 2
    });
    let got = crm.requests_for("/crm");
    assert_eq!(got.len(), 4);
    assert_eq!(bearer(&got[2]).as_deref(), Some("Bearer tok-renewed"));
    assert_eq!(bearer(&got[3]).as_deref(), Some("Bearer tok-third"));
    assert_eq!(tokens.count("/token"), 3);
    let last = &attempts_of(&daemon, "crm")[0];
    assert_eq!(last["status"], 401, "{last:#}");
    wait_for(DEADLINE, "the second CDR retrying", || {
        daemon.counter("crm", "retrying") == 1
    });
}

#[test]
fn a_401_to_a_new_token_too_holds_the_other_deliveries_behind_the_retry() {
    // An endpoint that refuses this client whatever its token (an app
    // without permissions there): each CDR must not fetch a token of its
    // own to be refused with; the queue waits behind one retry like for a
    // down endpoint.
    let tokens = Receiver::start();
    tokens.set("/token", token_answer("tok-refused-app", Some(3600)));
    let crm = Receiver::start();
    crm.set(
        "/crm",
        Behaviour::Sequence(vec![
            Behaviour::Status(401),
            Behaviour::Status(401),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    let daemon = start_crm(
        &dir,
        &crm.url("/crm"),
        &tokens.url("/token"),
        "",
        "timeout: 2s\nconcurrency: 1\nretry_schedule: [2s, 60s]",
    );

    dir.drop_file("a.json", &make_cdr(1));
    let failed = wait_for_value(DEADLINE, "a's first attempt", || {
        attempts_of(&daemon, "crm").into_iter().last()
    });
    assert_eq!(failed["status"], 401, "{failed:#}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("with a new token too")),
        "{failed:#}"
    );
    assert_eq!(crm.count("/crm"), 2);
    // Queued behind a's retry (2 s), which the endpoint then accepts.
    dir.drop_file("b.json", &make_cdr(2));
    dir.drop_file("c.json", &make_cdr(3));
    wait_delivered(&daemon, &[("crm", 3)], DEADLINE);
    let calls: Vec<String> = crm.requests_for("/crm").iter().map(call_id).collect();
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert_eq!(calls[..3], ["call-1", "call-1", "call-1"], "{calls:?}");
    // Two token requests in all: the first, and the one after the 401.
    assert_eq!(tokens.count("/token"), 2);
}

#[test]
fn the_whole_attempt_with_its_token_requests_keeps_within_the_timeout() {
    // timeout 2 s: the token, then a 401 after 1.2 s; the new token would
    // take 1.5 s, past the attempt's 2 s: the attempt ends failed at its
    // timeout instead of running on (shutdown waits only the timeout for
    // attempts in flight).
    let tokens = Receiver::start();
    tokens.set(
        "/token",
        Behaviour::Sequence(vec![
            token_answer("tok-first", Some(3600)),
            Behaviour::Delayed(
                Duration::from_millis(1500),
                Box::new(token_answer("tok-slow", Some(3600))),
            ),
        ]),
    );
    let crm = Receiver::start();
    crm.set(
        "/crm",
        Behaviour::Sequence(vec![
            Behaviour::Delayed(
                Duration::from_millis(1200),
                Box::new(Behaviour::Status(401)),
            ),
            Behaviour::Status(200),
        ]),
    );
    let dir = TestDir::new();
    let daemon = start_crm(
        &dir,
        &crm.url("/crm"),
        &tokens.url("/token"),
        "",
        "timeout: 2s\nretry_schedule: [1h]",
    );
    dir.drop_file("a.json", &make_cdr(1));
    let first = wait_for_value(DEADLINE, "the first attempt", || {
        attempts_of(&daemon, "crm").into_iter().last()
    });
    assert_eq!(first["status"], 401, "{first:#}");
    let error = first["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("HTTP 401 from the endpoint, and no new token: token request to")
            && error.contains("timeout"),
        "{first:#}"
    );
    // Not sent again: the slow token never arrived in time.
    assert_eq!(crm.count("/crm"), 1);
}

#[test]
fn a_token_endpoint_down_is_a_failed_attempt_naming_its_url_then_delivered_once_back() {
    let tokens = Receiver::start();
    tokens.set("/token", Behaviour::Status(503));
    let token_url = tokens.url("/token");
    let port = tokens.port();
    let crm = Receiver::start();
    let dir = TestDir::new();
    let daemon = start_crm(&dir, &crm.url("/crm"), &token_url, "", "timeout: 2s\nretry_schedule: [300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms]");

    dir.drop_file("a.json", &make_cdr(1));
    // A 503 from the token endpoint: the attempt failed, naming the URL
    // and the status; the endpoint was not called.
    let failed = wait_for_value(DEADLINE, "a failed attempt", || {
        attempts_of(&daemon, "crm").into_iter().last()
    });
    let error = failed["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(&format!("token request to {token_url} failed: HTTP 503")),
        "{failed:#}"
    );
    assert_eq!(failed["status"], Value::Null);
    assert_eq!(crm.count("/crm"), 0);
    let auth = daemon.subscription_status("crm")["auth"].clone();
    assert!(
        auth["last_token_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 503")),
        "{auth:#}"
    );
    assert_eq!(auth["token_valid_until"], Value::Null);

    // Nobody listening: a connection error, still naming the URL.
    tokens.stop();
    drop(tokens);
    wait_for(DEADLINE, "an attempt that could not connect", || {
        attempts_of(&daemon, "crm").iter().any(|a| {
            a["error"].as_str().is_some_and(|e| {
                e.contains(&format!(
                    "token request to {token_url} failed: connection failed"
                ))
            })
        })
    });
    assert_eq!(crm.count("/crm"), 0);

    // Back: the next attempt gets a token and the CDR is delivered.
    let tokens = Receiver::start_on(port);
    tokens.set("/token", token_answer("tok-back", Some(3600)));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    let got = crm.requests_for("/crm");
    assert_eq!(got.len(), 1);
    assert_eq!(bearer(&got[0]).as_deref(), Some("Bearer tok-back"));
    let auth = daemon.subscription_status("crm")["auth"].clone();
    assert!(auth["token_valid_until"].is_string(), "{auth:#}");
}

#[test]
fn a_changed_auth_block_drops_the_cached_token() {
    let tokens = Receiver::start();
    tokens.set(
        "/token",
        Behaviour::Sequence(vec![
            token_answer("tok-old-app", Some(3600)),
            token_answer("tok-new-app", Some(3600)),
        ]),
    );
    let crm = Receiver::start();
    let dir = TestDir::new();
    let write = |client_id: &str| {
        let block = auth_block(&tokens.url("/token"), "").replace("cdrhook-app", client_id);
        let sub = subscription_with("crm", &crm.url("/crm"), &["*"], &block);
        dir.config().subscriptions(&sub).write();
    };
    write("app-one");
    let daemon = Daemon::start_with_env(&dir, &[("CLIENT_SECRET", CLIENT_SECRET)]);
    dir.drop_file("a.json", &make_cdr(1));
    let got = crm.wait_for_requests("/crm", 1, DEADLINE);
    assert_eq!(bearer(&got[0]).as_deref(), Some("Bearer tok-old-app"));

    write("app-two");
    daemon.cli(&["reload"]).assert_status(0);
    // Dropped at once: status shows no token before anything is sent.
    let auth = daemon.subscription_status("crm")["auth"].clone();
    assert_eq!(auth["token_valid_until"], Value::Null, "{auth:#}");
    dir.drop_file("b.json", &make_cdr(2));
    let got = crm.wait_for_requests("/crm", 2, DEADLINE);
    assert_eq!(bearer(&got[1]).as_deref(), Some("Bearer tok-new-app"));
    let asked = tokens.requests_for("/token");
    assert_eq!(asked.len(), 2);
    assert_eq!(
        form(&asked[1]).get("client_id").map(String::as_str),
        Some("app-two")
    );
}

/// `tls:` with these files.
fn tls_block(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "tls:\n  client_cert: {}\n  client_key: {}\n",
        yaml_str(&cert.display().to_string()),
        yaml_str(&key.display().to_string())
    )
}

#[test]
fn a_client_certificate_is_presented_and_without_one_the_server_refuses() {
    let dir = TestDir::new();
    let pki = Pki::new(dir.path());
    let server = Receiver::start_tls(pki.server_config());
    let subs = [
        subscription_with(
            "mtls",
            &server.url("/crm"),
            &["*"],
            &tls_block(&pki.client_cert, &pki.client_key),
        ),
        subscription("nocert", &server.url("/crm"), &["*"]),
    ]
    .join("");
    dir.config()
        .subscriptions(&subs)
        .delivery(&format!(
            "timeout: 2s\nretry_schedule: [1h]\nca_file: {}",
            yaml_str(&pki.ca_file.display().to_string())
        ))
        .write();
    let daemon = Daemon::start(&dir);
    dir.drop_file("a.json", &make_cdr(1));
    wait_delivered(&daemon, &[("mtls", 1)], DEADLINE);
    wait_for(DEADLINE, "nocert's failed attempt", || {
        daemon.counter("nocert", "retrying") == 1
    });
    // Only the request with the certificate got through.
    assert_eq!(server.count("/crm"), 1);
    wait_for(DEADLINE, "the server's refused handshake", || {
        !server.tls_failures().is_empty()
    });
    let failed = attempts_of(&daemon, "nocert")[0].clone();
    assert_eq!(failed["status"], Value::Null, "{failed:#}");
    assert!(failed["error"].is_string(), "{failed:#}");
    let mtls = daemon.subscription_status("mtls");
    assert_eq!(
        mtls["tls_client_cert"],
        pki.client_cert.display().to_string(),
        "{mtls:#}"
    );
    assert_eq!(mtls["auth"], Value::Null);

    // The next CDR: the certificate again (no pooled connection lost it).
    dir.drop_file("b.json", &make_cdr(2));
    wait_delivered(&daemon, &[("mtls", 2)], DEADLINE);
    assert_eq!(server.count("/crm"), 2);
    // And a connection made with mtls's certificate never carries
    // nocert's request: sent again now, it still fails.
    let id = failed["id"].as_str().expect("attempt id").to_string();
    daemon.cli(&["resend", &id]);
    wait_for(DEADLINE, "nocert's second attempt", || {
        attempts_of(&daemon, "nocert").len() == 2
    });
    let again = &attempts_of(&daemon, "nocert")[0];
    assert!(again["error"].is_string(), "{again:#}");
    assert_eq!(server.count("/crm"), 2);
}

#[test]
fn a_wrong_or_missing_key_is_refused_naming_the_file_at_start_and_at_reload() {
    let dir = TestDir::new();
    let pki = Pki::new(dir.path());
    let server = Receiver::start_tls(pki.server_config());
    let config = |key: &std::path::Path| {
        dir.config()
            .subscriptions(&subscription_with(
                "mtls",
                &server.url("/crm"),
                &["*"],
                &tls_block(&pki.client_cert, key),
            ))
            .delivery(&format!(
                "timeout: 2s\nretry_schedule: [1h]\nca_file: {}",
                yaml_str(&pki.ca_file.display().to_string())
            ))
            .write();
    };
    let other = pki.other_key.display().to_string();
    let missing = dir.path().join("missing.key");

    // At start: the daemon exits with the message naming the key file.
    config(&pki.other_key);
    let (status, log) = Daemon::start_expect_failure(&dir);
    assert!(!status.success());
    assert!(
        log.contains(&format!(
            "tls.client_key {other} does not belong to the certificate"
        )),
        "{log}"
    );
    assert!(has_line_column(&log), "{log}");
    let check = cdrhook(&["check-config", dir.config_path().to_str().expect("UTF-8")]);
    assert_ne!(check.status, 0);
    assert!(check.stderr.contains(&other), "{}", check.stderr);

    // At reload: refused, the old version kept and still delivering.
    config(&pki.client_key);
    let daemon = Daemon::start(&dir);
    config(&missing);
    let reload = daemon.cli(&["reload"]);
    reload.assert_status(1);
    let said = reload.stdout.clone() + &reload.stderr;
    assert!(
        said.contains(&format!(
            "tls.client_key {}: cannot read it",
            missing.display()
        )),
        "{said}"
    );
    let error = daemon.status()["config"]["error"].clone();
    assert!(
        error.as_str().is_some_and(|e| e.contains("missing.key")),
        "{error}"
    );
    dir.drop_file("a.json", &make_cdr(1));
    wait_delivered(&daemon, &[("mtls", 1)], DEADLINE);
    config(&pki.other_key);
    let reload = daemon.cli(&["reload"]);
    reload.assert_status(1);
    assert!(
        (reload.stdout.clone() + &reload.stderr).contains(&other),
        "{reload:?}"
    );
}

#[test]
fn a_token_answer_that_is_too_large_or_no_token_is_a_failed_attempt() {
    let tokens = Receiver::start();
    let json = |body: Vec<u8>| Behaviour::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body,
    };
    let huge = format!(r#"{{"access_token":"{}"}}"#, "x".repeat(70 * 1024));
    tokens.set(
        "/token",
        Behaviour::Sequence(vec![
            json(huge.into_bytes()),
            json(b"<html>sign in</html>".to_vec()),
            token_answer("tok-good", Some(3600)),
        ]),
    );
    let crm = Receiver::start();
    let dir = TestDir::new();
    let schedule = vec!["300ms"; 40].join(", ");
    let daemon = start_crm(
        &dir,
        &crm.url("/crm"),
        &tokens.url("/token"),
        "",
        &format!("timeout: 2s\nretry_schedule: [{schedule}]"),
    );
    dir.drop_file("a.json", &make_cdr(1));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    let errors: Vec<String> = attempts_of(&daemon, "crm")
        .iter()
        .filter_map(|a| a["error"].as_str().map(str::to_string))
        .collect();
    let url = tokens.url("/token");
    for said in [
        format!("token request to {url} failed: HTTP 200, but the answer is larger than 64 KiB"),
        format!(
            "token request to {url} failed: HTTP 200, but the answer is not a JSON token response"
        ),
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(&said)),
            "{said}: {errors:#?}"
        );
    }
    assert_eq!(tokens.count("/token"), 3);
    assert_eq!(crm.count("/crm"), 1);
}

#[test]
fn check_config_shows_auth_and_tls_without_the_client_secret() {
    let dir = TestDir::new();
    let pki = Pki::new(dir.path());
    const LITERAL: &str = "cs-Lm57-literal-NEVER-PRINT";
    let subs = [
        subscription_with(
            "dynamics",
            "https://crm.example.com/hook",
            &["*"],
            &format!(
                "{}{}",
                auth_block(
                    "https://login.example.com/tenant/token",
                    "  scope: \"https://crm.example.com/.default\"\n  audience: crm-api\n",
                ),
                tls_block(&pki.client_cert, &pki.client_key)
            ),
        ),
        subscription_with(
            "salesforce",
            "https://sf.example.com/hook",
            &["App.QueueWebhook"],
            &format!(
                "auth:\n  type: oauth2_client_credentials\n  token_url: https://sf.example.com/services/oauth2/token\n  client_id: sf-app\n  client_secret: {LITERAL}\n"
            ),
        ),
        subscription("plain", "https://plain.example.com/hook", &["*"]),
    ]
    .concat();
    dir.config().subscriptions(&subs).write();
    let path = dir.config_path();
    let run = |json: bool| {
        let mut cmd = cdrhook_command();
        cmd.arg("check-config")
            .arg(&path)
            .env("CLIENT_SECRET", CLIENT_SECRET);
        if json {
            cmd.arg("--json");
        }
        run_command(cmd, CLI_DEADLINE)
    };

    let out = run(false);
    out.assert_status(0);
    for line in [
        "      auth: oauth2_client_credentials from https://login.example.com/tenant/token, \
         client_id \"cdrhook-app\", client_secret ***, scope \"https://crm.example.com/.default\", \
         audience \"crm-api\"\n"
            .to_string(),
        format!(
            "      tls: client_cert {}, client_key {}\n",
            pki.client_cert.display(),
            pki.client_key.display()
        ),
        "      auth: oauth2_client_credentials from https://sf.example.com/services/oauth2/token, \
         client_id \"sf-app\", client_secret ***\n"
            .to_string(),
    ] {
        assert!(out.stdout.contains(&line), "{line}\n{}", out.stdout);
    }
    // The subscription without either shows neither.
    let plain = out
        .stdout
        .split("  plain -> ")
        .nth(1)
        .expect("the plain subscription listed");
    assert!(
        !plain.contains("auth:") && !plain.contains("tls:"),
        "{plain}"
    );

    let json = run(true);
    json.assert_status(0);
    let v = json.json();
    let subs = &v["subscriptions"];
    assert_eq!(
        subs[0]["auth"],
        serde_json::json!({
            "type": "oauth2_client_credentials",
            "token_url": "https://login.example.com/tenant/token",
            "client_id": "cdrhook-app",
            "client_secret": "***",
            "scope": "https://crm.example.com/.default",
            "audience": "crm-api",
        }),
        "{v:#}"
    );
    assert_eq!(
        subs[0]["tls"],
        serde_json::json!({
            "client_cert": pki.client_cert.display().to_string(),
            "client_key": pki.client_key.display().to_string(),
        }),
        "{v:#}"
    );
    assert_eq!(subs[1]["auth"]["client_secret"], "***", "{v:#}");
    assert_eq!(subs[1]["auth"]["scope"], Value::Null, "{v:#}");
    assert_eq!(subs[1]["tls"], Value::Null, "{v:#}");
    assert_eq!(subs[2]["auth"], Value::Null, "{v:#}");

    // Neither client secret, nor the key itself, anywhere in either output.
    for (what, text) in [
        ("text", out.stdout + &out.stderr),
        ("json", json.stdout + &json.stderr),
    ] {
        for secret in [CLIENT_SECRET, LITERAL, "PRIVATE KEY"] {
            assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
        }
    }
}
