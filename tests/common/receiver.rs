//! `Receiver`: a small real HTTP/1.1 server on 127.0.0.1 that records every
//! request and answers each path the way a test asks it to.
//!
//! One thread accepts, one thread serves each connection (keep-alive is
//! supported, request bodies by `Content-Length` or chunked). `stop()` (also
//! run on drop) closes the listener, shuts every open connection down and
//! wakes handlers that sleep or hang, so nothing outlives the test.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::wait_for_value;

/// Longest request line or header line the receiver accepts.
const MAX_LINE: u64 = 64 * 1024;
/// Largest request body the receiver accepts.
const MAX_BODY: usize = 64 * 1024 * 1024;

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
    stopped: bool,
    routes: HashMap<String, Route>,
    default: Route,
    requests: Vec<Request>,
    conns: HashMap<u64, TcpStream>,
    next_conn: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Notified when the receiver stops.
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the receiver stops or `timeout` passes (`None`: forever).
    /// True when it stopped.
    fn wait_stopped(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if state.stopped {
                return true;
            }
            match deadline {
                None => state = self.cond.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    state = self
                        .cond
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// A recording HTTP/1.1 server on 127.0.0.1. Stops on drop.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver on 127.0.0.1:0");
        Receiver::from_listener(listener)
    }

    /// Starts a receiver on `port` (typically one a dropped receiver used),
    /// retrying the bind for up to 10 s.
    pub fn start_on(port: u16) -> Receiver {
        let what = format!("binding a receiver on 127.0.0.1:{port}");
        let mut last_error = String::new();
        let listener = wait_for_value(Duration::from_secs(10), &what, || {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => Some(listener),
                Err(e) => {
                    last_error = e.to_string();
                    None
                }
            }
        });
        if !last_error.is_empty() {
            eprintln!("receiver: bound 127.0.0.1:{port} after retrying ({last_error})");
        }
        Receiver::from_listener(listener)
    }

    fn from_listener(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("receiver local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stopped: false,
                routes: HashMap::new(),
                default: Route::new(Behaviour::Status(200)),
                requests: Vec::new(),
                conns: HashMap::new(),
                next_conn: 1,
            }),
            cond: Condvar::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("receiver-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn receiver accept thread");
        Receiver {
            addr,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/path` (a missing leading `/` is added).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("http://{}{path}", self.addr)
        } else {
            format!("http://{}/{path}", self.addr)
        }
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
    /// returns), shuts every connection down and wakes handlers that sleep
    /// or hang. Requests recorded so far stay readable. Idempotent.
    pub fn stop(&self) {
        let conns: Vec<TcpStream> = {
            let mut state = self.shared.lock();
            state.stopped = true;
            state.conns.drain().map(|(_, c)| c).collect()
        };
        self.shared.cond.notify_all();
        for conn in conns {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(acceptor) = acceptor {
            // Wake the blocking accept() so the thread sees `stopped` and
            // drops the listener.
            match TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) {
                Ok(_) => {
                    let _ = acceptor.join();
                }
                Err(e) => eprintln!(
                    "receiver {}: could not wake the accept thread ({e}); detaching it",
                    self.addr
                ),
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

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.lock().stopped {
            break;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = {
            let mut state = shared.lock();
            if state.stopped {
                let _ = stream.shutdown(Shutdown::Both);
                break;
            }
            let id = state.next_conn;
            state.next_conn += 1;
            state.conns.insert(id, registered);
            id
        };
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("receiver-conn-{id}"))
            .spawn(move || {
                let _ = serve(&conn_shared, stream, id);
                conn_shared.lock().conns.remove(&id);
            });
        if spawned.is_err() {
            if let Some(c) = shared.lock().conns.remove(&id) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
    // The listener is dropped here, which frees the port.
}

/// Serves requests on one connection until it closes or must close.
fn serve(shared: &Shared, stream: TcpStream, conn: u64) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let request = match read_request(&mut reader, &mut writer, conn) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = format!("bad request: {e}");
                let _ = write_response(&mut writer, 400, &[], body.as_bytes(), true);
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let close = wants_close(&request);
        let behaviour = {
            let mut state = shared.lock();
            if state.stopped {
                return Ok(());
            }
            let behaviour = match state.routes.get_mut(&request.path) {
                Some(route) => route.take(),
                None => state.default.take(),
            };
            state.requests.push(request);
            behaviour
        };
        match behaviour {
            Behaviour::Status(status) => {
                write_response(&mut writer, status, &[], &default_body(status), close)?;
            }
            Behaviour::StatusWithHeaders(status, headers) => {
                write_response(&mut writer, status, &headers, &default_body(status), close)?;
            }
            Behaviour::Respond {
                status,
                headers,
                body,
            } => write_response(&mut writer, status, &headers, &body, close)?,
            Behaviour::Sleep(duration) => {
                if shared.wait_stopped(Some(duration)) {
                    return Ok(());
                }
                write_response(&mut writer, 200, &[], b"ok", close)?;
            }
            Behaviour::Hang => {
                shared.wait_stopped(None);
                return Ok(());
            }
            Behaviour::Redirect(location) => {
                let headers = vec![("Location".to_string(), location)];
                write_response(&mut writer, 302, &headers, b"", close)?;
            }
            Behaviour::CloseWithoutResponse => {
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Behaviour::Sequence(_) => unreachable!("sequences are flattened in Route::new"),
        }
        if close {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

fn wants_close(request: &Request) -> bool {
    let connection = request
        .header("connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    let tokens: Vec<&str> = connection.split(',').map(str::trim).collect();
    if tokens.contains(&"close") {
        return true;
    }
    request.version == "HTTP/1.0" && !tokens.contains(&"keep-alive")
}

fn default_body(status: u16) -> Vec<u8> {
    if (200..300).contains(&status) {
        b"ok".to_vec()
    } else {
        format!("status {status}").into_bytes()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line (up to `MAX_LINE`), without its line ending. `None` at a
/// clean end of stream.
fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n as u64 >= MAX_LINE {
            return Err(bad("line too long"));
        }
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-line",
        ));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    conn: u64,
) -> io::Result<Option<Request>> {
    // Request line; tolerate empty lines between requests.
    let line = loop {
        match read_line(reader)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported version {version:?}")));
    }
    let (method, target, version) = (method.to_string(), target.to_string(), version.to_string());

    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in headers",
            ));
        };
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("malformed header line {line:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };

    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }

    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(bad(format!("body of {len} bytes is too large")));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };

    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Some(Request {
        method,
        path,
        target,
        version,
        headers,
        body,
        received: Instant::now(),
        connection: conn,
    }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in body");
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(eof)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailer section, up to an empty line.
            while !read_line(reader)?.ok_or_else(eof)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("chunked body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader)?.ok_or_else(eof)?.is_empty() {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_response(
    writer: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !no_body {
        if !has("content-length") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        if !has("content-type") {
            out.extend_from_slice(b"Content-Type: text/plain\r\n");
        }
    }
    if close && !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !no_body {
        out.extend_from_slice(body);
    }
    writer.write_all(&out)?;
    writer.flush()
}
