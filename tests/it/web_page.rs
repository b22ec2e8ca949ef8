//! The Webhooks page over the daemon's HTTP listener (contract §9), on a
//! Unix socket: the real binary, a real receiver, and what the CLI says
//! about the same journal. The page in a real browser is
//! `.ci/browser-test.sh`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::support::*;
use crate::harness::*;

const DEADLINE: Duration = Duration::from_secs(10);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One HTTP answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A chunked body, decoded.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// One request on the listener's socket (`Connection: close`).
fn http(socket: &Path, method: &str, target: &str, cookie: Option<&str>, body: &str) -> Answer {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[end + 4..])
    } else {
        raw[end + 4..].to_vec()
    };
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A browser on the page: its CSRF cookie and the token its forms carry.
struct Browser {
    socket: PathBuf,
    cookie: String,
    token: String,
}

impl Browser {
    /// Opens `/`, as a browser's first visit.
    #[track_caller]
    fn open(socket: &Path) -> (Browser, Answer) {
        let page = http(socket, "GET", "/", None, "");
        assert_eq!(page.status, 200, "{}", page.body);
        let cookie = page
            .header("Set-Cookie")
            .and_then(|c| c.split(';').next())
            .expect("the page sets its CSRF cookie")
            .to_string();
        let token = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the forms carry a token")
            .to_string();
        let b = Browser {
            socket: socket.to_path_buf(),
            cookie,
            token,
        };
        (b, page)
    }

    fn get(&self, target: &str) -> Answer {
        http(&self.socket, "GET", target, Some(&self.cookie), "")
    }

    /// Posts a form with the token, follows the 303, returns the result page.
    #[track_caller]
    fn click(&self, action: &str, fields: &str) -> Answer {
        let body = format!("{fields}&csrf={}", self.token);
        let r = http(&self.socket, "POST", action, Some(&self.cookie), &body);
        assert_eq!(r.status, 303, "{action} {fields}: {}", r.body);
        let to = r.header("Location").expect("Location");
        self.get(to)
    }
}

/// A daemon with the HTTP listener on `DIR/http.sock` and subscriptions
/// `crm` (signed, with a credential header) and `broken` (answers 500).
fn start(dir: &TestDir, rx: &Receiver) -> (Daemon, PathBuf) {
    let subs = [
        subscription_with(
            "crm",
            &rx.url("/crm"),
            &["*"],
            &format!("secret: {SECRET}\nheaders:\n  X-Api-Key: k3y-that-is-secret\n  X-Team: \"<i>ops</i>\""),
        ),
        subscription("broken", &rx.url("/broken"), &["*"]),
    ]
    .join("");
    let socket = dir.path().join("http.sock");
    let text = dir
        .config()
        .subscriptions(&subs)
        .delivery("timeout: 2s\nretry_schedule: []")
        .render();
    dir.write_raw_config(&format!(
        "{text}http:\n  listen: {}\n",
        yaml_str(&format!("unix:{}", socket.display()))
    ));
    rx.set("/broken", Behaviour::Status(500));
    let daemon = Daemon::start(dir);
    wait_for(DEADLINE, "the HTTP socket", || socket.exists());
    (daemon, socket)
}

/// The ids of the attempts a page lists, in order.
fn listed(body: &str) -> Vec<String> {
    body.split("<tr><td><a href=\"/attempts/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_page_lists_subscriptions_with_their_secrets_masked() {
    let dir = TestDir::new();
    let rx = Receiver::start();
    let (daemon, socket) = start(&dir, &rx);
    dir.drop_file("c1.json", &typed_cdr("App.QueueWebhook", "call-1"));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    let (_, page) = Browser::open(&socket);
    let b = &page.body;
    assert!(page
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("text/html")));
    assert!(
        b.contains("<td>crm</td>") && b.contains("<td>broken</td>"),
        "{b}"
    );
    assert!(b.contains(&rx.url("/crm")));
    assert!(
        b.contains("X-Api-Key: ***") && !b.contains("k3y-that-is-secret"),
        "{b}"
    );
    assert!(!b.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{b}");
    assert!(b.contains("X-Team: &lt;i&gt;ops&lt;/i&gt;"), "{b}");
    // The counts are status's.
    let status = daemon.subscription_status("crm");
    assert_eq!(status["delivered"], 1);
    assert!(!b.contains("<script"), "no script");
}

#[test]
fn attempts_are_filtered_and_paged_and_one_is_shown_as_the_cli_shows_it() {
    let dir = TestDir::new();
    let rx = Receiver::start();
    let (daemon, socket) = start(&dir, &rx);
    for i in 0..3 {
        dir.drop_file(
            &format!("c{i}.json"),
            &typed_cdr("App.QueueWebhook", &format!("call-{i}")),
        );
        wait_delivered(&daemon, &[("crm", i + 1)], DEADLINE);
    }
    wait_for(DEADLINE, "broken's attempts", || {
        daemon.counter("broken", "dead") == 3
    });
    let (browser, _) = Browser::open(&socket);
    // The same list as `cdrhook attempts --subscription crm`, a page at a time.
    let cli: Vec<String> = daemon
        .cli_json(&["attempts", "--subscription", "crm"])
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(cli.len(), 3);
    let first = browser.get("/attempts?subscription=crm&limit=2");
    assert_eq!(first.status, 200);
    assert_eq!(listed(&first.body), cli[..2]);
    let older = first
        .body
        .split("\" rel=\"next\"")
        .next()
        .and_then(|s| s.rsplit("href=\"").next())
        .expect("an Older link")
        .replace("&amp;", "&");
    assert_eq!(listed(&browser.get(&older).body), cli[2..]);
    // --failed, --call-id
    let failed = browser.get("/attempts?failed=1");
    assert_eq!(listed(&failed.body).len(), 3);
    assert!(failed.body.contains("<td>broken</td>") && !failed.body.contains("<td>crm</td>"));
    let one = browser.get("/attempts?subscription=crm&call_id=call-1");
    assert_eq!(listed(&one.body), vec![cli[1].clone()]);
    // One attempt in full: as `cdrhook show`.
    let show = daemon.cli_json(&["show", &cli[0]]);
    let page = browser.get(&format!("/attempts/{}", cli[0]));
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains(show["webhook_id"].as_str().expect("webhook_id")));
    assert!(page.body.contains("call-2") && page.body.contains("webhook-signature"));
    assert!(!page.body.contains("v1,"), "the signature is masked");
    assert_eq!(browser.get("/attempts/a999999").status, 404);
    assert_eq!(browser.get("/no-such-page").status, 404);
}

#[test]
fn a_post_without_a_valid_csrf_token_is_refused_and_sends_nothing() {
    let dir = TestDir::new();
    let rx = Receiver::start();
    let (daemon, socket) = start(&dir, &rx);
    dir.drop_file("c1.json", &typed_cdr("App.QueueWebhook", "call-1"));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    let id = daemon.cli_json(&["attempts", "--subscription", "crm"])[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (browser, _) = Browser::open(&socket);
    for (cookie, body) in [
        (Some(browser.cookie.as_str()), format!("id={id}")),
        (
            Some(browser.cookie.as_str()),
            format!("id={id}&csrf=forged"),
        ),
        (None, format!("id={id}&csrf={}", browser.token)),
    ] {
        let r = http(&socket, "POST", "/actions/resend", cookie, &body);
        assert_eq!(r.status, 403, "{cookie:?} {body}");
    }
    let r = http(&socket, "GET", "/actions/resend", Some(&browser.cookie), "");
    assert_eq!(r.status, 405);
    assert_eq!(rx.count("/crm"), 1, "nothing was sent");
    let journaled = daemon.cli_json(&["attempts", "--subscription", "crm"]);
    assert_eq!(
        journaled.as_array().map(Vec::len),
        Some(1),
        "nothing was journaled"
    );
}

#[test]
fn resend_from_the_page_is_one_new_attempt_journaled_as_the_clis() {
    let dir = TestDir::new();
    let rx = Receiver::start();
    let (daemon, socket) = start(&dir, &rx);
    dir.drop_file("c1.json", &typed_cdr("App.QueueWebhook", "call-1"));
    wait_delivered(&daemon, &[("crm", 1)], DEADLINE);
    wait_for(DEADLINE, "broken dead", || {
        daemon.counter("broken", "dead") == 1
    });
    let id = daemon.cli_json(&["attempts", "--subscription", "crm"])[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (browser, _) = Browser::open(&socket);
    let result = browser.click("/actions/resend", &format!("id={id}"));
    assert_eq!(result.status, 200);
    assert!(result.body.contains("Sent"), "{}", result.body);
    assert_eq!(rx.count("/crm"), 2, "exactly one more request");
    let newest = &daemon.cli_json(&["attempts", "--subscription", "crm"])[0];
    assert_eq!(newest["trigger"], "resend", "journaled as `cdrhook resend`");
    assert!(
        result.body.contains(newest["id"].as_str().expect("id")),
        "the result links the new attempt"
    );
    // Reloading the result page sends nothing.
    let again = browser.get(&format!("/attempts/{id}"));
    assert_eq!(again.status, 200);
    assert_eq!(rx.count("/crm"), 2);
    // Resend all failed of `broken`: queued, one more attempt there.
    let result = browser.click("/actions/resend-failed", "subscription=broken");
    assert!(
        result.body.contains("Queued 1 dead or retrying"),
        "{}",
        result.body
    );
    rx.wait_for_requests("/broken", 2, DEADLINE);
    wait_for(DEADLINE, "the resend of broken journaled", || {
        daemon.cli_json(&["attempts", "--subscription", "broken"])[0]["trigger"] == "resend"
    });
}

#[test]
fn send_test_webhook_from_the_page_shows_its_result() {
    let dir = TestDir::new();
    let rx = Receiver::start();
    let (daemon, socket) = start(&dir, &rx);
    let (browser, _) = Browser::open(&socket);
    let ok = browser.click("/actions/test", "subscription=crm");
    assert!(
        ok.body.contains("The test webhook was delivered."),
        "{}",
        ok.body
    );
    assert_eq!(rx.count("/crm"), 1);
    let bad = browser.click("/actions/test", "subscription=broken");
    assert!(
        bad.body.contains("The test webhook failed.") && bad.body.contains("500"),
        "{}",
        bad.body
    );
    let tests: Vec<serde_json::Value> = daemon
        .cli_json(&["attempts", "--event-type", "App.TestWebhook"])
        .as_array()
        .cloned()
        .expect("list");
    assert_eq!(tests.len(), 2);
    assert!(tests.iter().all(|a| a["trigger"] == "test"), "{tests:?}");
}
