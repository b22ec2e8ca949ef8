//! The page answered in-process: a real daemon's handles (live config,
//! sled journal, dispatcher) and a real HTTP receiver on 127.0.0.1, with
//! requests handed to `handle` as the listener hands them over. The
//! listener's own tests (tests/it/web_page.rs) drive it over HTTP.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;
use crate::cdr::{cdr_id, Cdr};
use crate::config::live::LiveConfig;
use crate::config::EventType;
use crate::control::SpoolHandle;
use crate::delivery::{http, Context, Dispatcher};
use crate::intake::{Rejections, Spool};
use crate::journal::{Journal, Trigger};

/// Requests per path; `/fail` answers 500, everything else 200.
#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    port: u16,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let r = Receiver {
            hits: Arc::default(),
            port,
        };
        let hits = r.hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then Content-Length bytes of body.
                let (path, need) = loop {
                    let Ok(n) = conn.read(&mut chunk) else {
                        break (None, 0);
                    };
                    if n == 0 {
                        break (None, 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        break (Some(path), end + 4 + len);
                    }
                };
                let Some(path) = path else { continue };
                while buf.len() < need {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                *hits.lock().expect("hits").entry(path.clone()).or_default() += 1;
                let status = if path == "/fail" {
                    "500 Oops"
                } else {
                    "200 OK"
                };
                // One write: the whole response.
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
                    .as_bytes(),
                );
            }
        });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

struct World {
    _dir: tempfile::TempDir,
    h: Arc<Handles>,
    rx: Receiver,
}

/// A daemon's handles on a temp dir: subscriptions `crm` (answers 200,
/// with a credential header and a plain one, signed), `broken` (answers
/// 500) and `quiet` (no test webhook).
fn world() -> World {
    let rx = Receiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |s: &str| dir.path().join(s).display().to_string();
    let yaml = format!(
        "spool:\n  dir: {}\n  rejected_dir: {}\n  archive_dir: {}\n\
         journal:\n  path: {}\ncontrol:\n  socket: {}\n\
         delivery:\n  timeout: 2s\n  retry_schedule: []\n\
         subscriptions:\n\
         - name: crm\n  endpoint: {}\n  events: [\"*\"]\n  secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n  headers:\n    Authorization: Bearer sup3r-s3cret-t0ken\n    X-Source: \"<b>cdrhook</b>\"\n\
         - name: broken\n  endpoint: {}\n  events: [\"*\"]\n\
         - name: quiet\n  endpoint: {}\n  events: [App.QueueWebhook]\n  filter: {{QueueName: \"<Sales>\"}}\n",
        p("spool"),
        p("rejected"),
        p("archive"),
        p("journal"),
        p("control.sock"),
        rx.url("/crm"),
        rx.url("/fail"),
        rx.url("/quiet"),
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let live = Arc::new(LiveConfig::load(&config, http::build_agent).expect("config"));
    let cfg = live.get();
    Spool::prepare(&cfg.spool).expect("spool dirs");
    let journal = Arc::new(Journal::open(&cfg.journal.path, 1 << 20).expect("journal"));
    let ctx = Arc::new(Context {
        journal: journal.clone(),
        live: live.clone(),
        files_finished: Box::new(|_| {}),
        tokens: Default::default(),
    });
    let dispatcher = Arc::new(Dispatcher::new(ctx, tokio::runtime::Handle::current()));
    dispatcher.apply_subscriptions(&cfg.subscriptions);
    let (tx, _rx) = std::sync::mpsc::channel();
    let h = Arc::new(Handles {
        live,
        journal,
        dispatcher,
        spool: SpoolHandle::new(tx, Arc::new(Rejections::default())),
        started_ms: crate::time::now_ms(),
    });
    World { _dir: dir, h, rx }
}

impl World {
    /// Journals a CDR for `sub` and makes one attempt of it; returns the
    /// attempt id (`a12`).
    async fn attempt(&self, sub: &str, call_id: &str, extra: &str) -> String {
        let body = serde_json::to_vec(&serde_json::json!({
            "EventType": "App.QueueWebhook",
            "CallId": call_id,
            "Extra": extra,
        }))
        .expect("json");
        let cdr = Cdr {
            id: cdr_id(&body),
            event_type: EventType::parse("App.QueueWebhook").expect("event"),
            call_id: Some(call_id.to_string()),
            body,
        };
        let meta = self.h.journal.put_cdr(&cdr).expect("put");
        let (d, _) = self
            .h
            .journal
            .ensure_delivery(&meta, sub, Trigger::Auto)
            .expect("delivery");
        let a = self
            .h
            .dispatcher
            .once(sub, d.id, Trigger::Auto)
            .await
            .expect("attempt");
        format!("a{}", a.id)
    }

    async fn get(&self, path_and_query: &str, cookie: Option<&str>) -> PageResponse {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        handle(
            &self.h,
            PageRequest {
                method: "GET".into(),
                path: path.into(),
                query: query.into(),
                body: Vec::new(),
                cookie: cookie.map(str::to_string),
            },
        )
        .await
    }

    async fn post(&self, path: &str, body: &str, cookie: Option<&str>) -> PageResponse {
        handle(
            &self.h,
            PageRequest {
                method: "POST".into(),
                path: path.into(),
                query: String::new(),
                body: body.as_bytes().to_vec(),
                cookie: cookie.map(str::to_string),
            },
        )
        .await
    }

    /// A browser's first visit: its cookie and the page's token for it.
    async fn session(&self) -> (String, String) {
        let r = self.get("/", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let cookie = header(&r, "Set-Cookie")
            .and_then(|c| c.split(';').next())
            .expect("a CSRF cookie")
            .to_string();
        let token = r
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a token in the forms")
            .to_string();
        (cookie, token)
    }
}

fn header<'a>(r: &'a PageResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn run<F: std::future::Future>(f: impl FnOnce() -> F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async { f().await })
}

#[test]
fn routes_and_methods() {
    for (path, want) in [
        ("/", Some(Route::Index)),
        ("/attempts", Some(Route::Attempts)),
        ("/attempts/", Some(Route::Attempts)),
        ("/attempts/a12", Some(Route::Show("a12"))),
        ("/attempts/a12/x", None),
        ("/results/00ff", Some(Route::Result("00ff"))),
        ("/results/", None),
        ("/actions/resend", Some(Route::Action(Action::Resend))),
        (
            "/actions/resend-failed",
            Some(Route::Action(Action::ResendFailed)),
        ),
        ("/actions/test", Some(Route::Action(Action::Test))),
        ("/actions/other", None),
        ("/metrics", None),
        ("", None),
        ("/index.html", None),
    ] {
        assert_eq!(route(path), want, "{path:?}");
    }
    assert_eq!(Route::Index.method(), "GET");
    assert_eq!(Route::Action(Action::Test).method(), "POST");
}

#[test]
fn the_page_lists_subscriptions_with_secrets_masked_and_input_escaped() {
    run(|| async {
        let w = world();
        w.attempt("crm", "call-1", "").await;
        let r = w.get("/", None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/html; charset=utf-8");
        let b = &r.body;
        for name in ["crm", "broken", "quiet"] {
            assert!(
                b.contains(&format!("<td>{name}</td>")),
                "{name} listed: {b}"
            );
        }
        assert!(b.contains(&w.rx.url("/crm")), "the endpoint is shown");
        assert!(
            !b.contains("sup3r-s3cret-t0ken"),
            "the credential header is masked"
        );
        assert!(b.contains("Authorization: ***"), "{b}");
        assert!(
            !b.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "the signing secret is masked"
        );
        assert!(
            b.contains("X-Source: &lt;b&gt;cdrhook&lt;/b&gt;"),
            "a header value is escaped"
        );
        assert!(!b.contains("<b>cdrhook</b>"));
        // A filter is shown with what it left out (`status`'s unmatched).
        // (The journal counts them as intake's routing tells it.)
        let files: Vec<crate::journal::IngestFile> = ["Billing", "Support"]
            .iter()
            .map(|q| crate::journal::IngestFile {
                inflight_name: format!("{q}.json"),
                cdrs: crate::cdr::parse_file(
                    format!(r#"{{"QueueId":"q","QueueName":"{q}"}}"#).as_bytes(),
                )
                .expect("cdr"),
                identity: None,
            })
            .collect();
        w.h.journal
            .ingest_routed(&files, &|_| crate::journal::Routing {
                to: Vec::new(),
                unmatched: vec!["quiet".into()],
            })
            .expect("ingest");
        let b = &w.get("/", None).await.body;
        assert!(
            b.contains("filter: <code>QueueName: &quot;&lt;Sales&gt;&quot;</code><br>2 unmatched"),
            "{b}"
        );
        assert!(b.contains("Send Test Webhook"), "crm lists App.TestWebhook");
        assert!(
            b.contains("App.TestWebhook is not in its events"),
            "quiet does not"
        );
        assert!(
            b.contains("cdrhook status"),
            "the CLI's equivalent is named"
        );
        assert!(!b.contains("<script"), "no script");
        // The security headers and the CSRF cookie on a first visit.
        let cookie = header(&r, "Set-Cookie").expect("cookie");
        assert!(
            cookie.starts_with("cdrhook_csrf=")
                && cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(
            header(&r, "Content-Security-Policy").is_some_and(|c| c.contains("default-src 'none'"))
        );
        // A browser that has the cookie gets no new one.
        let (cookie, _) = w.session().await;
        assert!(header(&w.get("/", Some(&cookie)).await, "Set-Cookie").is_none());
    })
}

#[test]
fn attempts_are_filtered_and_paged_like_the_cli() {
    run(|| async {
        let w = world();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(w.attempt("crm", &format!("call-{i}"), "").await);
        }
        let failed = w.attempt("broken", "call-x", "").await;
        let r = w.get("/attempts", None).await;
        assert_eq!(r.status, 200);
        for id in ids.iter().chain([&failed]) {
            assert!(
                r.body.contains(&format!("href=\"/attempts/{id}\"")),
                "{id}: {}",
                r.body
            );
        }
        // --failed
        let r = w.get("/attempts?failed=1", None).await;
        assert!(r.body.contains(&failed) && !r.body.contains(&format!(">{}<", ids[0])));
        assert!(r.body.contains("cdrhook attempts --failed"), "{}", r.body);
        // --subscription and --call-id
        let r = w
            .get("/attempts?subscription=crm&call_id=call-3", None)
            .await;
        assert!(r.body.contains(&format!(">{}<", ids[3])), "{}", r.body);
        assert_eq!(
            r.body.matches("href=\"/attempts/a").count(),
            1,
            "{}",
            r.body
        );
        // Paging: two a page, newest first, Older » goes on where it stopped.
        let r = w.get("/attempts?subscription=crm&limit=2", None).await;
        assert!(
            r.body.contains(&format!(">{}<", ids[4])) && r.body.contains(&format!(">{}<", ids[3]))
        );
        assert!(!r.body.contains(&format!(">{}<", ids[2])));
        let older = r
            .body
            .split("rel=\"next\"")
            .next()
            .and_then(|s| s.rsplit("href=\"/attempts?").next())
            .and_then(|s| s.split('"').next())
            .expect("an Older link")
            .replace("&amp;", "&");
        assert!(older.contains(&format!("before={}", ids[3])), "{older}");
        let r = w.get(&format!("/attempts?{older}"), None).await;
        assert!(
            r.body.contains(&format!(">{}<", ids[2])) && r.body.contains(&format!(">{}<", ids[1]))
        );
        assert!(!r.body.contains(&format!(">{}<", ids[3])), "{}", r.body);
        assert!(r.body.contains("« Newest"));
        // Bad filters are said, not ignored.
        for q in [
            "limit=0",
            "limit=x",
            "limit=501",
            "event_type=Nope",
            "since=yesterday",
            "before=d3",
            "before=zz",
        ] {
            let r = w.get(&format!("/attempts?{q}"), None).await;
            assert_eq!(r.status, 400, "{q}");
            assert!(r.body.contains("class=\"notice bad\""), "{q}: {}", r.body);
        }
    })
}

#[test]
fn query_parameters_echoed_back_are_escaped() {
    run(|| async {
        let w = world();
        w.attempt("crm", "call-1", "").await;
        let evil = "%22%3E%3Cscript%3Ex()%3C%2Fscript%3E";
        for key in [
            "call_id",
            "since",
            "subscription",
            "limit",
            "event_type",
            "before",
        ] {
            let r = w.get(&format!("/attempts?{key}={evil}"), None).await;
            assert!(!r.body.contains("<script>"), "{key}: {}", r.body);
            assert!(
                r.body.contains("&lt;script&gt;x()"),
                "{key}: the value is shown back, escaped: {}",
                r.body
            );
        }
        let r = w.get(&format!("/attempts/{evil}"), None).await;
        assert_eq!(r.status, 404);
        assert!(!r.body.contains("<script>"), "{}", r.body);
    })
}

#[test]
fn one_attempt_is_shown_in_full_with_input_escaped() {
    run(|| async {
        let w = world();
        let id = w
            .attempt("crm", "call-<7>", "</pre><script>alert(1)</script>")
            .await;
        let r = w.get(&format!("/attempts/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b = &r.body;
        assert!(b.contains(&format!("Attempt {id} of delivery d")), "{b}");
        assert!(b.contains("call-&lt;7&gt;"));
        assert!(
            !b.contains("<script>") && b.contains("&lt;script&gt;alert(1)"),
            "{b}"
        );
        assert!(b.contains("webhook-signature"), "request headers");
        assert!(!b.contains("v1,"), "the signature is masked: {b}");
        assert!(b.contains(&format!("cdrhook show {id}")));
        for missing in ["/attempts/a999999", "/attempts/x1"] {
            assert_eq!(w.get(missing, None).await.status, 404, "{missing}");
        }
    })
}

#[test]
fn a_post_without_a_valid_token_is_refused_and_sends_nothing() {
    run(|| async {
        let w = world();
        let id = w.attempt("crm", "call-1", "").await;
        assert_eq!(w.rx.hits("/crm"), 1);
        let (cookie, token) = w.session().await;
        let (other_cookie, _) = w.session().await;
        for (body, cookie) in [
            (format!("id={id}"), Some(cookie.as_str())),
            (format!("id={id}&csrf=forged"), Some(cookie.as_str())),
            (format!("id={id}&csrf={token}"), None),
            (format!("id={id}&csrf={token}"), Some(other_cookie.as_str())),
        ] {
            let r = w.post("/actions/resend", &body, cookie).await;
            assert_eq!(r.status, 403, "{body} {cookie:?}");
        }
        assert_eq!(w.rx.hits("/crm"), 1, "nothing was sent");
        // Wrong methods and unknown paths.
        let r = w.get("/actions/resend", Some(&cookie)).await;
        assert_eq!((r.status, header(&r, "Allow")), (405, Some("POST")));
        let r = w.post("/attempts", "", Some(&cookie)).await;
        assert_eq!((r.status, header(&r, "Allow")), (405, Some("GET")));
        assert_eq!(w.get("/nope", None).await.status, 404);
    })
}

#[test]
fn resend_makes_one_attempt_and_redirects_to_its_result() {
    run(|| async {
        let w = world();
        let id = w.attempt("crm", "call-1", "").await;
        let (cookie, token) = w.session().await;
        let r = w
            .post(
                "/actions/resend",
                &format!("id={id}&csrf={token}"),
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(w.rx.hits("/crm"), 2, "one more request at the receiver");
        let to = header(&r, "Location").expect("Location").to_string();
        assert!(to.starts_with("/results/"), "{to}");
        let page = w.get(&to, Some(&cookie)).await;
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("Sent") && page.body.contains("200"),
            "{}",
            page.body
        );
        // Its new attempt is journaled with the CLI's trigger.
        let list = w.get("/attempts?subscription=crm", None).await;
        assert!(list.body.contains("<td>resend</td>"), "{}", list.body);
        // Reloading the result sends nothing; another browser cannot see it.
        assert_eq!(w.get(&to, Some(&cookie)).await.status, 200);
        assert_eq!(w.rx.hits("/crm"), 2);
        let (other, _) = w.session().await;
        assert_eq!(w.get(&to, Some(&other)).await.status, 404);
        // Resend all failed of `broken`: one queued.
        w.attempt("broken", "call-2", "").await;
        let r = w
            .post(
                "/actions/resend-failed",
                &format!("subscription=broken&csrf={token}"),
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status, 303);
        let page = w
            .get(header(&r, "Location").expect("Location"), Some(&cookie))
            .await;
        assert!(
            page.body.contains("Queued 1 dead or retrying"),
            "{}",
            page.body
        );
    })
}

#[test]
fn send_test_webhook_shows_its_result() {
    run(|| async {
        let w = world();
        let (cookie, token) = w.session().await;
        for (sub, says, hits) in [
            ("crm", "The test webhook was delivered.", 1),
            ("broken", "The test webhook failed.", 1),
            ("quiet", "does not list App.TestWebhook", 0),
        ] {
            let path = format!("/{}", if sub == "broken" { "fail" } else { sub });
            let r = w
                .post(
                    "/actions/test",
                    &format!("subscription={sub}&csrf={token}"),
                    Some(&cookie),
                )
                .await;
            assert_eq!(r.status, 303, "{sub}");
            let page = w
                .get(header(&r, "Location").expect("Location"), Some(&cookie))
                .await;
            assert!(page.body.contains(says), "{sub}: {}", page.body);
            assert_eq!(w.rx.hits(&path), hits, "{sub}");
        }
        let list = w.get("/attempts?event_type=App.TestWebhook", None).await;
        assert_eq!(
            list.body.matches("<td>test</td>").count(),
            2,
            "{}",
            list.body
        );
    })
}
