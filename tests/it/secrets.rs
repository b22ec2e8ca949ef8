//! Secrets stay secret everywhere an operator looks (contract §4.11):
//! the journal's files, the daemon's log and every command's output
//! never hold a credential, whether it came from `${VAR}` or was written in
//! the file; and a file holding a secret that every user can read is a
//! warning in the log, `check-config` and `status`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(20);

// Each secret is a value no other text could contain by chance.
const CRM_PATH: &str = "p4th-Hq27-NEVER-PRINT";
const TOKEN: &str = "tok-Zq81-NEVER-PRINT";
const XTOKEN: &str = "xtok-Lm55-NEVER-PRINT";
const TENANT: &str = "tenant-Rd09-NEVER-PRINT";
const APIKEY: &str = "key-Jw44-NEVER-PRINT";
const COOKIE: &str = "session=cookie-Pp93-NEVER-PRINT";
const BASIC: &str = "basic-Vc61-NEVER-PRINT";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// OAuth2 (contract §10): a client secret from `${VAR}`, one written in the
/// file, and the access token the token endpoint issues.
const CLIENT_SECRET: &str = "cs-Hb18-NEVER-PRINT";
const LITERAL_CLIENT_SECRET: &str = "cs-Uu30-NEVER-PRINT";
const ACCESS_TOKEN: &str = "at-Qw73-NEVER-PRINT";
/// Written literally and not a credential: must stay visible (and shows the
/// greps below can find what is there).
const PLAIN: &str = "plain-value-Kk42";

fn secrets() -> Vec<&'static str> {
    vec![
        CRM_PATH,
        TOKEN,
        XTOKEN,
        TENANT,
        APIKEY,
        COOKIE,
        BASIC,
        SECRET,
        &SECRET["whsec_".len()..],
        CLIENT_SECRET,
        LITERAL_CLIENT_SECRET,
        ACCESS_TOKEN,
    ]
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in secrets() {
        assert!(
            !text.contains(secret),
            "secret {secret:?} in {what}:\n{text}"
        );
    }
}

/// Every file under `dir`, as raw bytes.
fn all_bytes(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_bytes(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_never_reach_the_journal_the_log_or_any_command() {
    let receiver = Receiver::start();
    let hook_path = format!("/hooks/{CRM_PATH}");
    let secret_url = receiver.url(&hook_path);
    // A receiver that echoes what it got, the way real ones do on errors
    // ("Cannot POST /hooks/..."), then redirects to the secret URL, then
    // takes the CDRs.
    let echo = format!(
        "Cannot POST {hook_path} (auth Bearer {TOKEN}, key {APIKEY}, cookie {COOKIE}, \
         x-auth-token {XTOKEN}, tenant {TENANT}, plain {PLAIN})"
    );
    receiver.set(
        &hook_path,
        Behaviour::Sequence(vec![
            Behaviour::Respond {
                status: 500,
                headers: vec![
                    ("X-Echo-Authorization".into(), format!("Bearer {TOKEN}")),
                    ("X-Echo-Path".into(), hook_path.clone()),
                    ("Set-Cookie".into(), COOKIE.into()),
                ],
                body: echo.into_bytes(),
            },
            Behaviour::Redirect(format!("{secret_url}/v2")),
            Behaviour::Status(200),
        ]),
    );
    // Each receiver only knows its own subscription's secrets.
    receiver.set(
        "/literal",
        Behaviour::Sequence(vec![
            Behaviour::Respond {
                status: 401,
                headers: vec![],
                body: format!("refused Proxy-Authorization: Basic {BASIC}").into_bytes(),
            },
            Behaviour::Status(200),
        ]),
    );

    // OAuth2: the token endpoint issues ACCESS_TOKEN; the endpoint echoes
    // it (and the client secret) once. A second token endpoint refuses,
    // echoing the client secret in its error description.
    receiver.set(
        "/token",
        crate::harness::pki::token_answer(ACCESS_TOKEN, Some(3600)),
    );
    receiver.set(
        "/oauth",
        Behaviour::Sequence(vec![
            Behaviour::Respond {
                status: 500,
                headers: vec![(
                    "X-Echo-Authorization".into(),
                    format!("Bearer {ACCESS_TOKEN}"),
                )],
                body: format!("echo Bearer {ACCESS_TOKEN} for {CLIENT_SECRET} plain {PLAIN}")
                    .into_bytes(),
            },
            Behaviour::Status(200),
        ]),
    );
    receiver.set(
        "/token-refused",
        Behaviour::Respond {
            status: 401,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: format!(
                r#"{{"error":"invalid_client","error_description":"client_secret {LITERAL_CLIENT_SECRET} is wrong"}}"#
            )
            .into_bytes(),
        },
    );

    let dir = TestDir::new();
    let subs = [
        subscription_with(
            "oauth",
            &receiver.url("/oauth"),
            &["App.QueueWebhook", "App.TestWebhook"],
            &format!(
                "
                auth:
                  type: oauth2_client_credentials
                  token_url: {}
                  client_id: cdrhook
                  client_secret: \"${{CLIENT_SECRET}}\"
                ",
                receiver.url("/token")
            ),
        ),
        subscription_with(
            "oauth-refused",
            &receiver.url("/oauth-refused"),
            &["App.QueueWebhook"],
            &format!(
                "
                auth:
                  type: oauth2_client_credentials
                  token_url: {}
                  client_id: cdrhook
                  client_secret: {LITERAL_CLIENT_SECRET}
                ",
                receiver.url("/token-refused")
            ),
        ),
        subscription_with(
            "crm",
            &receiver.url("/hooks/${CRM_PATH}"),
            &["App.QueueWebhook", "App.TestWebhook"],
            &format!(
                "
                secret: {SECRET}
                headers:
                  Authorization: \"Bearer ${{TOKEN}}\"
                  X-Auth-Token: \"${{XTOKEN}}\"
                  X-Tenant: \"${{TENANT}}\"
                  X-Api-Key: \"{APIKEY}\"
                  Cookie: \"{COOKIE}\"
                  X-Plain: {PLAIN}
                "
            ),
        ),
        subscription_with(
            "literal",
            &receiver.url("/literal"),
            &["App.QueueWebhook", "App.TestWebhook"],
            &format!(
                "
                headers:
                  Proxy-Authorization: \"Basic {BASIC}\"
                "
            ),
        ),
    ]
    .join("");
    dir.config()
        .subscriptions(&subs)
        .delivery("timeout: 2s\nretry_schedule: [100ms, 100ms, 100ms]")
        .write();
    let env = [
        ("CRM_PATH", CRM_PATH),
        ("TOKEN", TOKEN),
        ("XTOKEN", XTOKEN),
        ("TENANT", TENANT),
        ("CLIENT_SECRET", CLIENT_SECRET),
    ];
    let daemon = Daemon::start_with_env(&dir, &env);

    for n in 1..=3 {
        dir.drop_file(&format!("cdr-{n}.json"), &make_cdr(n));
    }
    // The receiver gets the real values.
    let got = receiver.wait_for_requests(&hook_path, 3, DEADLINE);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(got[0].header("x-tenant"), Some(TENANT));
    assert_eq!(got[0].header("cookie"), Some(COOKIE));
    wait_for(DEADLINE, "all 3 CDRs delivered to three", || {
        daemon.counter("crm", "delivered") == 3
            && daemon.counter("literal", "delivered") == 3
            && daemon.counter("oauth", "delivered") == 3
    });
    // The token endpoint got the client secret, the endpoint the token.
    let asked = receiver.requests_for("/token");
    assert!(
        asked[0].body_text().contains(CLIENT_SECRET),
        "{}",
        asked[0].body_text()
    );
    assert_eq!(
        receiver.requests_for("/oauth")[0].header("authorization"),
        Some(format!("Bearer {ACCESS_TOKEN}").as_str())
    );
    wait_for(DEADLINE, "a refused token request", || {
        daemon.subscription_status("oauth-refused")["auth"]["last_token_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 401 (invalid_client: client_secret *** is wrong)"))
    });
    assert_eq!(receiver.count("/oauth-refused"), 0);
    let test = daemon.cli(&["test"]);
    test.assert_status(0);
    daemon.sigusr2();
    daemon.wait_log(DEADLINE, "status: ");

    // The endpoint is shown as written, so the operator still knows it.
    let status = daemon.status();
    let crm = daemon.subscription_status("crm");
    assert_eq!(
        crm["endpoint"],
        receiver.url("/hooks/${CRM_PATH}"),
        "{status:#}"
    );

    let mut outputs: Vec<(String, String)> = vec![
        ("status --json".into(), status.to_string()),
        ("status".into(), daemon.cli(&["status"]).stdout),
        (
            "attempts --json".into(),
            daemon.cli(&["attempts", "--json"]).stdout,
        ),
        ("attempts".into(), daemon.cli(&["attempts"]).stdout),
        ("test".into(), test.stdout.clone() + &test.stderr),
    ];
    let attempts = daemon.cli_json(&["attempts", "--limit", "0"]);
    let attempts = attempts.as_array().expect("attempts is a list").clone();
    assert!(attempts.len() >= 10, "{attempts:#?}");
    let mut saw_echo = false;
    let mut saw_token_echo = false;
    for a in &attempts {
        let id = a["id"].as_str().expect("attempt id");
        let shown = daemon.cli_json(&["show", id]);
        if let Some(h) = shown["request_headers"].as_object() {
            for (name, value) in h {
                let lower = name.to_ascii_lowercase();
                if [
                    "authorization",
                    "x-auth-token",
                    "x-tenant",
                    "x-api-key",
                    "cookie",
                    "proxy-authorization",
                    "webhook-signature",
                ]
                .contains(&lower.as_str())
                {
                    assert_eq!(value, "***", "{name} in {shown:#}");
                }
            }
            if a["subscription"] == "crm" {
                assert_eq!(h["X-Plain"], PLAIN, "{shown:#}");
            }
        }
        if shown["status"] == 500 && a["subscription"] == "crm" {
            // The echo is kept, with the secrets scrubbed out of it.
            let body = shown["response_body"].as_str().expect("body kept");
            assert!(body.contains("Cannot POST /hooks/"), "{body}");
            assert!(body.contains(PLAIN), "{body}");
            saw_echo = true;
        }
        if shown["status"] == 500 && a["subscription"] == "oauth" {
            let body = shown["response_body"].as_str().expect("body kept");
            assert!(body.contains("echo Bearer *** for ***"), "{body}");
            saw_token_echo = true;
        }
        outputs.push((format!("show {id} --json"), shown.to_string()));
        outputs.push((format!("show {id}"), daemon.cli(&["show", id]).stdout));
    }
    assert!(saw_echo, "no 500 attempt among {attempts:#?}");
    assert!(
        saw_token_echo,
        "no 500 attempt of oauth among {attempts:#?}"
    );

    let config = dir.config_path();
    let mut check = cdrhook_command();
    check.arg("check-config").arg(&config).envs(env);
    let check = run_command(check, CLI_DEADLINE);
    check.assert_status(0);
    assert!(check.stdout.contains("${CRM_PATH}"), "{}", check.stdout);
    let mut check_json = cdrhook_command();
    check_json
        .arg("check-config")
        .arg(&config)
        .arg("--json")
        .envs(env);
    let check_json = run_command(check_json, CLI_DEADLINE);
    outputs.push(("check-config".into(), check.stdout + &check.stderr));
    outputs.push(("check-config --json".into(), check_json.stdout));

    for (what, text) in &outputs {
        assert_no_secret(what, text);
    }

    // Stop cleanly so that everything is flushed, then read sled's files.
    daemon.sigterm();
    let mut daemon = daemon;
    assert!(daemon.wait_exit(DEADLINE).success());
    assert_no_secret("the daemon log", &daemon.log());
    let mut files = Vec::new();
    all_bytes(&dir.journal(), &mut files);
    assert!(
        files.iter().any(|(_, b)| contains(b, PLAIN)),
        "the journal should hold the plain header value (are sled's files readable as is?)"
    );
    for (name, bytes) in &files {
        for secret in secrets() {
            assert!(
                !contains(bytes, secret),
                "secret {secret:?} in journal file {name}"
            );
        }
    }
}

#[test]
fn secret_files_that_every_user_can_read_are_a_warning() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    let secret_file = dir.path().join("crm.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write the secret file");
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()))
    };
    chmod(&secret_file, 0o644);
    let subs = [
        subscription_with(
            "crm",
            &receiver.url("/crm"),
            &["*"],
            &format!(
                "secret_file: {}",
                yaml_str(&secret_file.display().to_string())
            ),
        ),
        subscription_with(
            "inline",
            &receiver.url("/inline"),
            &["*"],
            &format!("headers:\n  X-Api-Key: \"{APIKEY}\""),
        ),
    ]
    .join("");
    dir.config().subscriptions(&subs).write();
    let config = dir.config_path();
    chmod(&config, 0o644);
    let config_arg = config.to_str().expect("UTF-8 path");

    // check-config: OK, with both warnings.
    let check = cdrhook(&["check-config", config_arg]);
    check.assert_status(0);
    for needle in [
        format!("secret file {}", secret_file.display()),
        "subscriptions[inline].headers.X-Api-Key".to_string(),
        "chmod o-r".to_string(),
    ] {
        assert!(
            check.stderr.contains(&needle),
            "{needle}:\n{}",
            check.stderr
        );
    }
    let json = cdrhook(&["check-config", config_arg, "--json"]).json();
    assert_eq!(
        json["warnings"].as_array().map(Vec::len),
        Some(2),
        "{json:#}"
    );

    // The log and status.
    let daemon = Daemon::start(&dir);
    daemon.wait_log(DEADLINE, "can be read by every user (mode 0644)");
    let status = daemon.status();
    let warnings = status["config"]["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(warnings.len(), 2, "{status:#}");
    let table = daemon.cli(&["status"]).stdout;
    assert!(table.contains("WARNING: "), "{table}");
    assert!(table.contains("crm.secret"), "{table}");
    assert_no_secret("status", &(status.to_string() + &table + &daemon.log()));

    // Tightened, and reloaded: the warnings go.
    chmod(&secret_file, 0o640);
    chmod(&config, 0o600);
    let reload = daemon.cli(&["reload"]);
    reload.assert_status(0);
    assert!(!reload.stdout.contains("WARNING"), "{}", reload.stdout);
    let status = daemon.status();
    assert_eq!(
        status["config"]["warnings"],
        Value::Array(vec![]),
        "{status:#}"
    );
    assert!(!daemon.cli(&["status"]).stdout.contains("WARNING"));
    let check = cdrhook(&["check-config", config_arg]);
    check.assert_status(0);
    assert!(!check.stderr.contains("warning"), "{}", check.stderr);
}
