//! `Receiver`: a real HTTP/1.1 server on 127.0.0.1 that records every
//! request and answers each path the way a test asks it to.
//!
//! HTTP itself (parsing, keep-alive, chunked bodies, `Expect: 100-continue`,
//! `Connection: close`, 400 to garbage) is hyper's; this module owns only
//! the recording and the behaviours. Every receiver runs on one tokio
//! runtime shared by the test process, one task per connection, with
//! `TCP_NODELAY` set: a response whose head and body leave in two segments
//! would otherwise wait 40 ms for a delayed ACK. `stop()` (also run on drop)
//! closes the listener and every open connection, which also ends handlers
//! that sleep or hang, so nothing outlives the test.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::wait_for_value;

/// How the receiver answers requests to one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer with this status. The body is `ok` for a 2xx status and
    /// `status NNN` otherwise (none for 204 and 304).
    Status(u16),
    /// Like `Status`, plus these response headers (e.g. `Retry-After`).
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Answer with exactly this status, headers and body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Sleep this long, then answer 200 `ok` (the connection is closed
    /// without an answer if the receiver stops meanwhile).
    Sleep(Duration),
    /// Read the request, then never answer; the connection is closed when
    /// the receiver stops.
    Hang,
    /// Answer `302 Found` with this `Location`.
    Redirect(String),
    /// One behaviour per request, in order; the last one repeats. Nested
    /// sequences are flattened. An empty sequence means the default.
    Sequence(Vec<Behaviour>),
    /// Read the request, then close the connection without any answer.
    CloseWithoutResponse,
    /// Wait this long, then answer as the inner behaviour says.
    Delayed(Duration, Box<Behaviour>),
}

impl Behaviour {
    /// `StatusWithHeaders` from string slices.
    pub fn status_with_headers(status: u16, headers: &[(&str, &str)]) -> Behaviour {
        Behaviour::StatusWithHeaders(
            status,
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn flatten_into(self, out: &mut Vec<Behaviour>) {
        match self {
            Behaviour::Sequence(steps) => {
                for step in steps {
                    step.flatten_into(out);
                }
            }
            other => out.push(other),
        }
    }
}

/// One request as the receiver read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target without its query string, e.g. `/crm`.
    pub path: String,
    /// The request target exactly as sent, e.g. `/crm?x=1`.
    pub target: String,
    /// E.g. `HTTP/1.1`.
    pub version: String,
    /// In the order received; names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request had been read in full.
    pub received: Instant,
    /// Which TCP connection it came on (1, 2, … per receiver): two requests
    /// with the same number shared a keep-alive connection.
    pub connection: u64,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} {} is not JSON ({e}): {}",
                self.method,
                self.target,
                self.body_text()
            )
        })
    }
}

struct Route {
    steps: Vec<Behaviour>,
    next: usize,
}

impl Route {
    fn new(behaviour: Behaviour) -> Route {
        let mut steps = Vec::new();
        behaviour.flatten_into(&mut steps);
        Route { steps, next: 0 }
    }

    fn take(&mut self) -> Behaviour {
        if self.steps.is_empty() {
            return Behaviour::Status(200);
        }
        let i = self.next.min(self.steps.len() - 1);
        self.next = self.next.saturating_add(1);
        self.steps[i].clone()
    }
}

struct State {
    routes: HashMap<String, Route>,
    default: Route,
    requests: Vec<Request>,
    next_conn: u64,
    tls_failures: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The runtime every receiver of this test process runs on. Two workers:
/// receivers only read, record and answer, and a sleeping or hanging
/// behaviour is a parked task, not a blocked thread.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("receiver")
            .enable_all()
            .build()
            .expect("start the receivers' tokio runtime")
    })
}

/// A recording HTTP/1.1 server on 127.0.0.1. Stops on drop.
pub struct Receiver {
    addr: SocketAddr,
    /// Served over TLS (`start_tls`): its URLs are `https://`.
    tls: bool,
    shared: Arc<Shared>,
    /// Set to true by `stop()`; the accept loop and every connection watch it.
    stop: watch::Sender<bool>,
    /// Closed (its sender dropped) once the listener and every connection
    /// are closed; `None` once `stop()` has waited for that.
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub fn start() -> Receiver {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver on 127.0.0.1:0");
        Receiver::from_listener(listener, None)
    }

    /// Starts a receiver on a free port that speaks HTTPS with this rustls
    /// configuration (e.g. one that requires a client certificate, see
    /// `harness::pki`). A handshake that fails is counted
    /// (`tls_failures`), never recorded as a request.
    pub fn start_tls(config: Arc<tokio_rustls::rustls::ServerConfig>) -> Receiver {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver on 127.0.0.1:0");
        Receiver::from_listener(listener, Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    /// Starts a receiver on `port` (typically one a dropped receiver used),
    /// retrying the bind for up to 10 s.
    pub fn start_on(port: u16) -> Receiver {
        let what = format!("binding a receiver on 127.0.0.1:{port}");
        let mut last_error = String::new();
        let listener =
            wait_for_value(
                Duration::from_secs(10),
                &what,
                || match std::net::TcpListener::bind(("127.0.0.1", port)) {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        last_error = e.to_string();
                        None
                    }
                },
            );
        if !last_error.is_empty() {
            eprintln!("receiver: bound 127.0.0.1:{port} after retrying ({last_error})");
        }
        Receiver::from_listener(listener, None)
    }

    fn from_listener(
        listener: std::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Receiver {
        let addr = listener.local_addr().expect("receiver local_addr");
        listener
            .set_nonblocking(true)
            .expect("make the receiver's listener non-blocking");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                routes: HashMap::new(),
                default: Route::new(Behaviour::Status(200)),
                requests: Vec::new(),
                next_conn: 1,
                tls_failures: Vec::new(),
            }),
        });
        let is_tls = tls.is_some();
        let (stop, stopped) = watch::channel(false);
        let (done_tx, done) = mpsc::channel();
        let accept_shared = Arc::clone(&shared);
        runtime().spawn(async move {
            let listener = TcpListener::from_std(listener).expect("register the listener");
            accept_loop(listener, accept_shared, stopped, tls).await;
            drop(done_tx);
        });
        Receiver {
            addr,
            tls: is_tls,
            shared,
            stop,
            done: Mutex::new(Some(done)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/path` (`https://` for a TLS receiver; a
    /// missing leading `/` is added).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if path.starts_with('/') {
            format!("{scheme}://{}{path}", self.addr)
        } else {
            format!("{scheme}://{}/{path}", self.addr)
        }
    }

    /// Why each failed TLS handshake failed, in order (a TLS receiver).
    pub fn tls_failures(&self) -> Vec<String> {
        self.shared.lock().tls_failures.clone()
    }

    /// Sets how requests to `path` (the part before any `?`) are answered
    /// from now on. Setting a `Sequence` starts it from its first step.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.shared
            .lock()
            .routes
            .insert(path.to_string(), Route::new(behaviour));
    }

    /// Sets how requests to paths without their own behaviour are answered
    /// (initially 200 `ok`).
    pub fn set_default(&self, behaviour: Behaviour) {
        self.shared.lock().default = Route::new(behaviour);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The requests to `path`, in order. `path` is compared with the path
    /// without its query, or with the whole target if it contains `?`.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| matches_path(r, path))
            .cloned()
            .collect()
    }

    /// How many requests to `path` were received.
    pub fn count(&self, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| matches_path(r, path))
            .count()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Waits until at least `n` requests to `path` arrived; returns them all.
    #[track_caller]
    pub fn wait_for_requests(&self, path: &str, n: usize, deadline: Duration) -> Vec<Request> {
        let what = format!("{n} request(s) to {path} on {}", self.addr);
        wait_for_value(deadline, &what, || {
            let got = self.requests_for(path);
            (got.len() >= n).then_some(got)
        })
    }

    /// Stops the receiver: closes the listener (the port is free once this
    /// returns) and every connection, which ends handlers that sleep or
    /// hang. Requests recorded so far stay readable. Idempotent.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = done {
            // Err(Disconnected) is the expected end: the accept task dropped
            // its sender after closing everything.
            if let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(5))
            {
                eprintln!(
                    "receiver {}: connections still open 5 s after stop",
                    self.addr
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn matches_path(r: &Request, path: &str) -> bool {
    if path.contains('?') {
        r.target == path
    } else {
        r.path == path
    }
}

/// Accepts connections until the receiver stops, then closes the listener
/// and every connection (aborting a task drops its socket).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = until_stopped(&mut stopped) => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let id = {
                    let mut state = shared.lock();
                    let id = state.next_conn;
                    state.next_conn += 1;
                    id
                };
                let shared = Arc::clone(&shared);
                match tls.clone() {
                    None => {
                        conns.spawn(serve(stream, shared, id));
                    }
                    Some(acceptor) => {
                        conns.spawn(async move {
                            // See the module doc: one segment per response.
                            let _ = stream.set_nodelay(true);
                            match acceptor.accept(stream).await {
                                Ok(tls) => serve_io(tls, shared, id).await,
                                Err(e) => shared.lock().tls_failures.push(e.to_string()),
                            }
                        });
                    }
                }
            }
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Returns once the receiver is stopped (or gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stopped.wait_for(|s| *s).await.map(|_| ());
}

/// Serves one connection with hyper until the client closes it, a behaviour
/// closes it, or the task is aborted by `stop()`.
async fn serve(stream: TcpStream, shared: Arc<Shared>, conn: u64) {
    // See the module doc: one segment per response.
    let _ = stream.set_nodelay(true);
    serve_io(stream, shared, conn).await
}

/// `serve` over any stream (TCP, or TLS over TCP).
async fn serve_io<S>(stream: S, shared: Arc<Shared>, conn: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(Arc::clone(&shared), conn, req));
    let _ = http1::Builder::new()
        // The receiver plays an endpoint that waits as long as the client
        // does; a test that wants a timeout uses `Hang` or `Sleep`.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Records one request, then answers it as its path's behaviour says. An
/// `Err` makes hyper close the connection without an answer.
async fn answer(
    shared: Arc<Shared>,
    conn: u64,
    req: hyper::Request<Incoming>,
) -> io::Result<hyper::Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e))?
        .to_bytes()
        .to_vec();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let path = target.split('?').next().unwrap_or_default().to_string();
    let request = Request {
        method: parts.method.to_string(),
        path,
        target,
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                (n.as_str().to_string(), value)
            })
            .collect(),
        body,
        received: Instant::now(),
        connection: conn,
    };
    let behaviour = {
        let mut state = shared.lock();
        let behaviour = match state.routes.get_mut(&request.path) {
            Some(route) => route.take(),
            None => state.default.take(),
        };
        state.requests.push(request);
        behaviour
    };
    let mut behaviour = behaviour;
    while let Behaviour::Delayed(delay, inner) = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = *inner;
    }
    match behaviour {
        Behaviour::Status(status) => Ok(response(status, &[], default_body(status))),
        Behaviour::StatusWithHeaders(status, headers) => {
            Ok(response(status, &headers, default_body(status)))
        }
        Behaviour::Respond {
            status,
            headers,
            body,
        } => Ok(response(status, &headers, body)),
        Behaviour::Sleep(duration) => {
            tokio::time::sleep(duration).await;
            Ok(response(200, &[], b"ok".to_vec()))
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Redirect(location) => {
            let headers = [(LOCATION.to_string(), location)];
            Ok(response(302, &headers, Vec::new()))
        }
        Behaviour::CloseWithoutResponse => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closing without a response, as the test asked",
        )),
        Behaviour::Sequence(_) => unreachable!("sequences are flattened in Route::new"),
        Behaviour::Delayed(..) => unreachable!("delays are waited out above"),
    }
}

fn default_body(status: u16) -> Vec<u8> {
    if (200..300).contains(&status) {
        b"ok".to_vec()
    } else {
        format!("status {status}").into_bytes()
    }
}

/// A response with `status`, these headers (plus `Content-Type: text/plain`
/// unless given) and `body` (none for 1xx, 204 and 304; hyper adds
/// `Content-Length`).
fn response(
    status: u16,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> hyper::Response<Full<Bytes>> {
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body { Vec::new() } else { body };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status)
        .unwrap_or_else(|e| panic!("receiver: bad status {status}: {e}"));
    let map = response.headers_mut();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("receiver: bad header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("receiver: bad value {value:?} of {name}: {e}"));
        map.append(name, value);
    }
    if !no_body && !map.contains_key(CONTENT_TYPE) {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}
