//! The HTTP/1 server (hyper) on the daemon's runtime: the accept loop, the
//! routes of contract §9 that are not the page (`/healthz`, `/readyz`,
//! `/metrics`, the login form), authentication, the 64 KiB body limit, and
//! the hand-over of every other request to `page::handle`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::auth::{self, Sessions};
use super::bind::Listener;
use super::page::{self, PageRequest, PageResponse};
use super::probes::{self, Oldest};
use crate::config::Sensitive;
use crate::control::cmd::lane;
use crate::control::Handles;
use crate::locks::lock;
use crate::shutdown::Shutdown;

/// The largest request body taken (contract §9); larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;

/// A client has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client has this long to send its request body, once its head is in.
/// Without it, a client that announces a body and never sends it (the
/// login form is open to all on TCP) would hold one of the
/// [`MAX_CONNECTIONS`] for good, and enough of them would shut out even
/// `/healthz`.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A stop lets requests being answered finish for this long.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A wrong token at the login form is answered after this pause.
const LOGIN_FAILURE_PAUSE: Duration = Duration::from_millis(500);

struct State {
    handles: Arc<Handles>,
    /// `Some` on a TCP listener: what every path but `/healthz` needs.
    token: Option<Sensitive>,
    sessions: Mutex<Sessions>,
    oldest: Oldest,
}

type Body = Full<Bytes>;

/// Serves `listener` until shutdown. `token` is the bearer token (TCP);
/// a Unix socket is served without one (its mode is the gate).
pub async fn serve(
    listener: Listener,
    handles: Arc<Handles>,
    token: Option<Sensitive>,
    mut shutdown: Shutdown,
) {
    let state = Arc::new(State {
        handles,
        token: match listener {
            Listener::Tcp(_) => token,
            Listener::Unix(..) => None,
        },
        sessions: Mutex::new(Sessions::default()),
        oldest: Oldest::default(),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            _ = shutdown.recv() => break,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(io) => {
                let state = state.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    connection(io, state, shutdown).await;
                });
            }
            Err(e) => {
                log::warn!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Connections got the stop too and finish their request in hand.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    if let Some(path) = listener.socket_path() {
        let _ = std::fs::remove_file(path);
    }
}

/// One accepted stream, of either kind.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Listener::Unix(l, _) => Box::new(l.accept().await?.0),
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            // Answers go out in one write; no reason to wait on Nagle.
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
    })
}

async fn connection(io: Box<dyn Stream>, state: Arc<State>, mut shutdown: Shutdown) {
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                log::debug!("http: connection ended: {e}");
            }
        }
        _ = shutdown.recv() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, conn).await;
        }
    }
}

/// A response with a body and a content type.
fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    reply(status, "application/json", format!("{value}\n"))
}

/// The paths this module answers itself; every other one is the page's.
fn own_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/login" | "/logout"
    )
}

async fn respond(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let cookie = header(header::COOKIE);

    // Without a token (the Unix socket), a browser's request must name
    // localhost or an address: another name is DNS rebinding (see
    // `auth::local_host`). Liveness stays open to all.
    if state.token.is_none() && path != "/healthz" {
        if let Some(host) = header(header::HOST).filter(|h| !auth::local_host(h)) {
            log::debug!("http: refused a request for host {host:?}");
            return closing(text(
                StatusCode::FORBIDDEN,
                "refused: on the Unix socket, open the page as http://localhost:PORT/ \
                 (another host name could be a DNS rebinding attack)\n",
            ));
        }
    }

    // Open to all: liveness, and the login form itself.
    let open = matches!(path.as_str(), "/healthz" | "/login");
    if !open
        && !authorized(
            state,
            header(header::AUTHORIZATION).as_deref(),
            cookie.as_deref(),
        )
    {
        return unauthorized(&path);
    }

    // At most 64 KiB of body, whoever sends it.
    let too_large = header(header::CONTENT_LENGTH)
        .and_then(|l| l.trim().parse::<u64>().ok())
        .is_some_and(|l| l > MAX_BODY as u64);
    if too_large {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes\n"),
        );
    }
    let body = match read_body(body, MAX_BODY, BODY_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };

    if own_path(&path) {
        return match (path.as_str(), method) {
            ("/healthz", Method::GET | Method::HEAD) => healthz().await,
            ("/login", Method::GET) => login_form(state, StatusCode::OK, None),
            ("/readyz", Method::GET | Method::HEAD) => readyz(state).await,
            ("/metrics", Method::GET | Method::HEAD) => metrics(state).await,
            ("/login", Method::POST) => login(state, &body).await,
            ("/logout", Method::POST) => logout(state, cookie.as_deref()),
            _ => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                let allow = if path == "/login" {
                    "GET, POST"
                } else if path == "/logout" {
                    "POST"
                } else {
                    "GET, HEAD"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
        };
    }

    let page_req = PageRequest {
        method: method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        body,
        cookie,
    };
    from_page(page::handle(&state.handles, page_req).await)
}

/// Reads a request body of at most `limit` bytes within `timeout`; the
/// answer to send instead when it is larger (413), slower (408) or cut off
/// (400).
async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<Vec<u8>, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes().to_vec()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {limit} bytes\n"),
            ))
        }
        Ok(Err(e)) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}\n"),
        )),
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}s\n",
                timeout.as_secs()
            ),
        )),
    }
}

fn from_page(p: PageResponse) -> Response<Body> {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = reply(status, p.content_type, p.body);
    for (name, value) in p.headers {
        match (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => {
                r.headers_mut().append(n, v);
            }
            _ => log::warn!("http: the page gave an invalid header {name:?}; left out"),
        }
    }
    r
}

/// Whether the request may go on: always on a Unix socket; on TCP with
/// the bearer token or an open session.
fn authorized(state: &State, authorization: Option<&str>, cookie: Option<&str>) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    if let Some(given) = authorization.and_then(auth::bearer) {
        return auth::token_matches(token, given);
    }
    cookie
        .and_then(|c| auth::cookie(c, auth::COOKIE))
        .is_some_and(|id| lock(&state.sessions).valid(id, Instant::now()))
}

fn unauthorized(path: &str) -> Response<Body> {
    let mut r = if own_path(path) {
        text(
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer TOKEN (the content of http.token_file)\n",
        )
    } else {
        // A browser: the page says where to log in.
        login_page(
            StatusCode::UNAUTHORIZED,
            Some("Log in with the token of http.token_file to see this page."),
        )
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"cdrhook\""),
    );
    closing(r)
}

/// Ends the connection after this answer (`Connection: close`). For
/// clients that are refused: without it, one could pipeline requests and
/// never read the answers, and hyper, blocked writing them, would keep one
/// of the [`MAX_CONNECTIONS`] for good (no timeout covers a write).
fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn healthz() -> Response<Body> {
    if probes::alive().await {
        json(StatusCode::OK, serde_json::json!({"alive": true}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"alive": false, "reason": "the daemon's runtime does not run tasks"}),
        )
    }
}

async fn readyz(state: &Arc<State>) -> Response<Body> {
    let reason = lane::light(&state.handles, probes::not_ready)
        .await
        .unwrap_or_else(|e| Some(e.to_string()));
    match reason {
        None => json(StatusCode::OK, serde_json::json!({"ready": true})),
        Some(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "reason": reason}),
        ),
    }
}

async fn metrics(state: &Arc<State>) -> Response<Body> {
    let st = state.clone();
    let gauges = lane::light(&state.handles, move |h| probes::gauges(h, &st.oldest)).await;
    match gauges {
        Ok(g) => reply(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::global().render(&g),
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn login_html(note: Option<&str>) -> String {
    let note = note.map(|n| format!("<p>{n}</p>\n")).unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cdrhook: log in</title></head>\n\
         <body>\n<h1>cdrhook</h1>\n{note}<form method=\"post\" action=\"/login\">\n\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label>\n\
         <button type=\"submit\">Log in</button>\n</form>\n</body></html>\n"
    )
}

fn login_form(state: &State, status: StatusCode, note: Option<&str>) -> Response<Body> {
    if state.token.is_none() {
        // A Unix socket needs no login.
        return see_other("/", None);
    }
    login_page(status, note)
}

/// The login form as a page, with the headers the Webhooks page has:
/// nothing may frame it (no clickjacking of the token field), load or run
/// anything, or cache it.
fn login_page(status: StatusCode, note: Option<&str>) -> Response<Body> {
    let mut r = reply(status, "text/html; charset=utf-8", login_html(note));
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        r.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    r
}

fn see_other(to: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut r = text(StatusCode::SEE_OTHER, "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// `POST /login` with `token=…` (the login form): an open session in an
/// HttpOnly, SameSite=Strict cookie, and back to the page. Open to all on
/// TCP (it checks the token itself); a Unix socket needs no login.
async fn login(state: &Arc<State>, body: &[u8]) -> Response<Body> {
    let Some(token) = &state.token else {
        return see_other("/", None);
    };
    let given = auth::form_value(body, "token").unwrap_or_default();
    if !auth::token_matches(token, given.trim()) {
        tokio::time::sleep(LOGIN_FAILURE_PAUSE).await;
        return closing(login_form(
            state,
            StatusCode::UNAUTHORIZED,
            Some("Wrong token."),
        ));
    }
    let Some(id) = lock(&state.sessions).open(Instant::now()) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a session id\n",
        );
    };
    let cookie = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        auth::COOKIE,
        auth::SESSION_TTL.as_secs()
    );
    see_other("/", Some(cookie))
}

fn logout(state: &State, cookie: Option<&str>) -> Response<Body> {
    if let Some(id) = cookie.and_then(|c| auth::cookie(c, auth::COOKIE)) {
        lock(&state.sessions).close(id);
    }
    let clear = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        auth::COOKIE
    );
    see_other("/login", Some(clear))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that announces data and never sends any.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_is_read_within_its_limit_and_its_time() {
        let ms = Duration::from_millis(50);
        let got = read_body(Full::new(Bytes::from_static(b"token=x")), 16, ms).await;
        assert_eq!(got.ok().as_deref(), Some(&b"token=x"[..]));
        for (body, limit, want) in [
            (
                read_body(Full::new(Bytes::from(vec![b'x'; 17])), 16, ms).await,
                16,
                413,
            ),
            (read_body(Stalled, 16, ms).await, 16, 408),
        ] {
            match body {
                Err(r) => assert_eq!(r.status().as_u16(), want, "limit {limit}"),
                Ok(b) => panic!("read {} bytes, wanted a {want}", b.len()),
            }
        }
    }
}
