//! The operators' HTTP endpoint: Prometheus metrics, health and readiness
//! probes, and a JSON view of the cameras.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | 200, `text/plain; version=0.0.4; charset=utf-8` |
//! | `GET /healthz` | 200 when the daemon is alive, else 503; JSON |
//! | `GET /readyz` | 200 when it is ready to do its work, else 503; JSON |
//! | `GET /api/cameras` | 200, JSON |
//!
//! `HEAD` is answered like `GET` without the body. Other paths get 404 with
//! the list of paths, other methods 405 with `Allow: GET, HEAD`; query strings
//! are ignored. A panic in the daemon's [`HttpSource`] is caught and answered
//! with 500: the endpoint keeps serving.
//!
//! **Authentication.** With a bearer token configured, `/metrics` and
//! `/api/cameras` need `Authorization: Bearer <token>` (compared in constant
//! time) and answer 401 with `WWW-Authenticate: Bearer` otherwise, because
//! they name cameras and show their state. `/healthz` and `/readyz` stay
//! open, as probes from systemd, Kubernetes or a load balancer carry no
//! credentials; without a valid token they answer only the status
//! (`{"status":"ok"}`), and the detail — which may name cameras — only to a
//! caller with the token.
//!
//! **Threads, not the async runtime.** One accept thread hands connections to
//! a few worker threads over a bounded queue; when the queue is full the
//! connection is answered 503 at once instead of piling up. Each connection
//! carries one request and is closed after the answer (`Connection: close`):
//! scrapers and probes make one request per interval, and a worker is never
//! held by an idle keep-alive connection. The request head is bounded in size
//! (431 beyond it) and must arrive within a deadline (408 otherwise), so a slow
//! or silent client holds a worker for seconds, not forever.
//!
//! **Why std and not `tiny_http`.** tiny_http 0.12 (the current release) reads
//! request lines and headers without a size limit, sets no read timeout and
//! offers no way to set one on the sockets it accepts, spawns a new thread for
//! every concurrent connection (kept while a keep-alive client idles), and on
//! drop leaves its accept and connection threads running detached, so a stop
//! could not be joined or bounded. Each of those is a requirement here, and
//! the GET-only HTTP/1.1 subset this endpoint speaks is about as long as the
//! code that would work around them.
//!
//! **Stopping.** [`HttpServer::stop`] (and drop) sets a flag that the accept
//! thread polls every [`POLL_INTERVAL`] and the workers check between reads
//! and writes; queued connections are closed unanswered. It returns when all
//! threads have ended and the listening socket is closed, within about one
//! poll interval plus the time a [`HttpSource`] callback in progress takes.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

/// Content type of the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// Every path the endpoint serves (listed in 404 answers).
pub const PATHS: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/api/cameras"];

/// How often the accept thread and blocked workers look at the stop flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Longest bearer token accepted (a token file with a whole key pasted in is
/// a mistake worth reporting).
const MAX_TOKEN_LEN: usize = 4096;

/// The state of one probe, as the daemon reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// 200 when true, 503 when false.
    pub ok: bool,
    /// Why: shown as `detail` in the JSON answer (to authorized callers when
    /// a token is configured). Any JSON: a sentence or an object per camera.
    pub detail: serde_json::Value,
}

impl Health {
    pub fn ok(detail: impl Into<serde_json::Value>) -> Self {
        Health {
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn failing(detail: impl Into<serde_json::Value>) -> Self {
        Health {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the endpoint shows, provided by the daemon. Called on the HTTP worker
/// threads for every request, so each call should read a snapshot and return
/// quickly (a stop waits for calls in progress); a panic is answered 500.
pub trait HttpSource: Send + Sync + 'static {
    /// The whole Prometheus exposition (see `super::metrics::Exposition`).
    fn metrics(&self) -> String;
    /// Liveness: is the daemon's main loop running?
    fn health(&self) -> Health;
    /// Readiness: model loaded, publisher up — can it do its work now?
    fn readiness(&self) -> Health;
    /// The cameras and their state, for `/api/cameras`.
    fn cameras(&self) -> serde_json::Value;
}

/// Bounds on the server's resources; [`HttpLimits::default`] suits a metrics
/// endpoint scraped by a few clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Worker threads answering requests (1 to 16).
    pub workers: usize,
    /// Accepted connections waiting for a worker; more are answered 503.
    pub queue: usize,
    /// Largest request line plus headers, in bytes (at least 256).
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub head_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            workers: 3,
            queue: 32,
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpLimits {
    fn problem(&self) -> Option<String> {
        if !(1..=16).contains(&self.workers) {
            return Some(format!("workers = {} (allowed: 1 to 16)", self.workers));
        }
        if self.queue == 0 {
            return Some("queue = 0 (allowed: 1 or more)".into());
        }
        if self.max_head_bytes < 256 {
            return Some(format!(
                "max_head_bytes = {} (allowed: 256 or more)",
                self.max_head_bytes
            ));
        }
        if self.head_timeout.is_zero() || self.write_timeout.is_zero() {
            return Some("a zero timeout (allowed: more than 0)".into());
        }
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "the HTTP bearer token {problem} (allowed: 1 to {MAX_TOKEN_LEN} visible ASCII \
         characters, no spaces or line breaks — check the token file for a trailing newline)"
    )]
    InvalidToken { problem: &'static str },
    #[error("invalid HTTP server limits: {0}")]
    InvalidLimits(String),
    #[error("cannot start the HTTP {thread} thread: {source}")]
    Spawn { thread: String, source: io::Error },
}

/// A running HTTP endpoint. Stops on [`HttpServer::stop`] or drop.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What the workers share.
struct Shared {
    source: Arc<dyn HttpSource>,
    token: Option<Vec<u8>>,
    limits: HttpLimits,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    /// Binds `listen` (port 0 picks a free port, see [`HttpServer::local_addr`])
    /// and starts serving with [`HttpLimits::default`].
    pub fn start(
        listen: SocketAddr,
        bearer_token: Option<String>,
        source: Arc<dyn HttpSource>,
    ) -> Result<HttpServer, HttpError> {
        Self::start_with_limits(listen, bearer_token, source, HttpLimits::default())
    }

    pub fn start_with_limits(
        listen: SocketAddr,
        bearer_token: Option<String>,
        source: Arc<dyn HttpSource>,
        limits: HttpLimits,
    ) -> Result<HttpServer, HttpError> {
        if let Some(problem) = limits.problem() {
            return Err(HttpError::InvalidLimits(problem));
        }
        if let Some(token) = &bearer_token {
            check_token(token)?;
        }
        let bind = |source| HttpError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).map_err(bind)?;
        // Non-blocking so the accept thread can notice the stop flag; std has
        // no accept with a timeout.
        listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;

        let stop = Arc::new(AtomicBool::new(false));
        // From here on, an early return drops `server`, which stops and joins
        // the threads already started.
        let mut server = HttpServer {
            local_addr,
            stop: stop.clone(),
            threads: Vec::with_capacity(limits.workers + 1),
        };
        let (queue, connections) = mpsc::sync_channel::<TcpStream>(limits.queue);
        let connections = Arc::new(Mutex::new(connections));
        let shared = Arc::new(Shared {
            source,
            token: bearer_token.map(String::into_bytes),
            limits,
            stop,
        });
        for i in 0..shared.limits.workers {
            let name = format!("http-worker-{i}");
            let (shared, connections) = (shared.clone(), connections.clone());
            let handle = thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker(&shared, &connections))
                .map_err(|source| HttpError::Spawn {
                    thread: name,
                    source,
                })?;
            server.threads.push(handle);
        }
        let stop = shared.stop.clone();
        let handle = thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept(&listener, &queue, &stop))
            .map_err(|source| HttpError::Spawn {
                thread: "http-accept".into(),
                source,
            })?;
        server.threads.push(handle);
        tracing::info!(
            addr = %local_addr,
            auth = shared.token.is_some(),
            "HTTP endpoint listening."
        );
        Ok(server)
    }

    /// The address actually bound (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes the listening socket and joins every thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if self.threads.is_empty() {
            return; // already stopped (stop() then drop)
        }
        for handle in self.threads.drain(..) {
            let name = handle.thread().name().unwrap_or("http").to_owned();
            if handle.join().is_err() {
                tracing::error!(thread = %name, "HTTP thread ended with a panic.");
            }
        }
        tracing::debug!(addr = %self.local_addr, "HTTP endpoint stopped.");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_token(token: &str) -> Result<(), HttpError> {
    let problem = if token.is_empty() {
        "is empty"
    } else if token.len() > MAX_TOKEN_LEN {
        "is too long"
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "contains a space, control or non-ASCII character"
    } else {
        return Ok(());
    };
    Err(HttpError::InvalidToken { problem })
}

/// Accepts until stopped; the listener (and with it the port) is closed when
/// this returns, and dropping `queue` lets the workers finish.
fn accept(listener: &TcpListener, queue: &SyncSender<TcpStream>, stop: &AtomicBool) {
    let mut last_error_log: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Accepted sockets inherit non-blocking mode on some systems.
                if let Err(error) = stream.set_nonblocking(false) {
                    tracing::debug!(
                        %peer,
                        %error,
                        "HTTP connection dropped: cannot make it blocking."
                    );
                    continue;
                }
                match queue.try_send(stream) {
                    Ok(()) => {}
                    Err(TrySendError::Full(stream)) => {
                        tracing::warn!(%peer, "HTTP workers busy and queue full; answered 503.");
                        answer_busy(stream);
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(error) => {
                // E.g. out of file descriptors: back off, and log at most
                // every 10 s while it lasts.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(%error, "HTTP endpoint cannot accept connections.");
                    last_error_log = Some(Instant::now());
                }
                thread::sleep(POLL_INTERVAL * 4);
            }
        }
    }
}

/// 503 from the accept thread, without waiting on the client: the answer is
/// small enough for the socket buffer (a short timeout bounds the write
/// anyway), and only bytes that already arrived are read before closing
/// (closing with unread bytes would reset the connection under the answer).
fn answer_busy(mut stream: TcpStream) {
    let response = Response::json(
        503,
        &json!({"error": "the HTTP endpoint is busy; retry later"}),
    )
    .header("Retry-After", "1".into());
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    if stream.write_all(&response.to_bytes(false)).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut chunk = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(stream.read(&mut chunk), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

fn worker(shared: &Shared, connections: &Mutex<Receiver<TcpStream>>) {
    loop {
        // The lock is held only while waiting; no code panics under it, and a
        // poisoned receiver is still usable.
        let next = connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv();
        let Ok(stream) = next else {
            return; // accept thread ended
        };
        if shared.stop.load(Ordering::Acquire) {
            continue; // stopping: close queued connections unanswered
        }
        serve(stream, shared);
    }
}

/// A parsed request head (only what the routes need).
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    /// Without query string or fragment.
    path: String,
    authorization: Option<Vec<u8>>,
    /// The client announced a body (Content-Length > 0 or Transfer-Encoding):
    /// it must be drained before closing, or the close resets the connection
    /// and the client may lose the answer.
    has_body: bool,
}

#[derive(Debug, PartialEq)]
enum HeadError {
    /// Closed (or stopped) before a complete head; nothing to answer.
    Gone,
    TooLarge,
    TimedOut,
    Malformed(&'static str),
    Version,
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let peer = stream.peer_addr().ok();
    let (head, extra_bytes) = match read_head(&mut stream, &shared.limits, &shared.stop) {
        Ok(read) => read,
        Err(HeadError::Gone) => return,
        Err(error) => {
            let response = refusal(&error, &shared.limits);
            tracing::debug!(
                ?peer,
                status = response.status,
                ?error,
                "HTTP request refused."
            );
            // The client may still be sending what we did not read.
            if write_all_by(&mut stream, &response.to_bytes(false), shared) {
                linger(&mut stream, shared);
            }
            return;
        }
    };
    let response = route(&head, shared);
    tracing::debug!(
        ?peer,
        method = %head.method,
        path = %head.path,
        status = response.status,
        "HTTP request answered."
    );
    let bytes = response.to_bytes(head.method == "HEAD");
    if write_all_by(&mut stream, &bytes, shared) && (head.has_body || extra_bytes) {
        linger(&mut stream, shared);
    }
}

/// The answer to a request head that could not be read.
fn refusal(error: &HeadError, limits: &HttpLimits) -> Response {
    let (status, message) = match error {
        HeadError::TooLarge => (
            431,
            format!("request head larger than {} bytes", limits.max_head_bytes),
        ),
        HeadError::TimedOut => (408, "request head not received in time".into()),
        HeadError::Version => (505, "only HTTP/1.0 and HTTP/1.1 are supported".into()),
        HeadError::Malformed(what) => (400, format!("bad request: {what}")),
        HeadError::Gone => (400, "connection closed".into()),
    };
    Response::json(status, &json!({ "error": message }))
}

/// Reads up to the blank line ending the head, within the size and time
/// limits, and parses it. The flag says whether bytes beyond the head arrived.
fn read_head(
    stream: &mut TcpStream,
    limits: &HttpLimits,
    stop: &AtomicBool,
) -> Result<(Head, bool), HeadError> {
    let deadline = Instant::now() + limits.head_timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            if end > limits.max_head_bytes {
                return Err(HeadError::TooLarge);
            }
            return Ok((parse_head(&buf[..end])?, buf.len() > end));
        }
        if buf.len() > limits.max_head_bytes {
            return Err(HeadError::TooLarge);
        }
        if stop.load(Ordering::Acquire) {
            return Err(HeadError::Gone);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HeadError::TimedOut);
        }
        // Short slices so a stop is noticed; the deadline bounds the total.
        let slice = (deadline - now).min(POLL_INTERVAL);
        if stream.set_read_timeout(Some(slice)).is_err() {
            return Err(HeadError::Gone);
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Gone),
            Ok(0) => {
                return Err(HeadError::Malformed(
                    "connection closed inside the request head",
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_transient(&e) => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

/// A timed-out slice or an interrupted call: try again (within the deadline).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Length of the head including its terminating empty line (CRLF CRLF, or
/// LF LF from lenient clients), if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(offset) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + offset;
        let rest = &buf[lf + 1..];
        if rest.first() == Some(&b'\n') {
            return Some(lf + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(lf + 3);
        }
        i = lf + 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().ok_or(HeadError::Malformed("empty request"))?;
    let request_line = std::str::from_utf8(request_line)
        .map_err(|_| HeadError::Malformed("request line is not ASCII"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(HeadError::Malformed("invalid method"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed("invalid HTTP version")),
    }
    let path = request_path(target).ok_or(HeadError::Malformed("invalid request target"))?;

    let mut authorization = None;
    let mut has_body = false;
    for line in lines.take_while(|line| !line.is_empty()) {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HeadError::Malformed("folded header line"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HeadError::Malformed("header line without a colon"))?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().copied().all(is_token_byte) {
            return Err(HeadError::Malformed("invalid header name"));
        }
        if name.eq_ignore_ascii_case(b"authorization") {
            if authorization.is_some() {
                return Err(HeadError::Malformed("two Authorization headers"));
            }
            authorization = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"content-length") {
            has_body |= value != b"0";
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        }
    }
    Ok(Head {
        method: method.to_owned(),
        path,
        authorization,
        has_body,
    })
}

/// The path of an origin-form (`/metrics?x`) or absolute-form
/// (`http://host/metrics`) target, without query or fragment.
fn request_path(target: &str) -> Option<String> {
    let path = if target.starts_with('/') {
        target
    } else {
        let after_scheme = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))?;
        after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    Some(path[..end].to_owned())
}

/// RFC 9110 `tchar`: what methods and header names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn route(head: &Head, shared: &Shared) -> Response {
    if head.method != "GET" && head.method != "HEAD" {
        return Response::json(
            405,
            &json!({
                "error": format!("method {} is not allowed", head.method),
                "allow": ["GET", "HEAD"],
            }),
        )
        .header("Allow", "GET, HEAD".into());
    }
    let authorized = match &shared.token {
        None => true,
        Some(token) => head
            .authorization
            .as_deref()
            .and_then(bearer_token)
            .is_some_and(|given| constant_time_eq(token, given)),
    };
    let path = head.path.as_str();
    match path {
        "/healthz" | "/readyz" => {
            let health = call_source(shared, path, |source| {
                if path == "/healthz" {
                    source.health()
                } else {
                    source.readiness()
                }
            });
            let Some(health) = health else {
                return Response::internal_error();
            };
            let status = if health.ok { "ok" } else { "unavailable" };
            let body = if authorized {
                json!({"status": status, "detail": health.detail})
            } else {
                json!({"status": status})
            };
            Response::json(if health.ok { 200 } else { 503 }, &body)
        }
        "/metrics" | "/api/cameras" if !authorized => Response::json(
            401,
            &json!({"error": "this path needs an Authorization: Bearer token"}),
        )
        .header("WWW-Authenticate", "Bearer realm=\"florence-edge\"".into()),
        "/metrics" => match call_source(shared, path, |source| source.metrics()) {
            Some(text) => Response {
                status: 200,
                content_type: METRICS_CONTENT_TYPE,
                headers: Vec::new(),
                body: text.into_bytes(),
            },
            None => Response::internal_error(),
        },
        "/api/cameras" => match call_source(shared, path, |source| source.cameras()) {
            Some(cameras) => Response::json(200, &cameras),
            None => Response::internal_error(),
        },
        _ => Response::json(
            404,
            &json!({"error": format!("no such path: {path}"), "paths": PATHS}),
        ),
    }
}

/// Runs a source callback; a panic becomes `None` (logged at ERROR).
fn call_source<T>(
    shared: &Shared,
    path: &str,
    call: impl FnOnce(&dyn HttpSource) -> T,
) -> Option<T> {
    let source = shared.source.as_ref();
    let payload = match panic::catch_unwind(AssertUnwindSafe(|| call(source))) {
        Ok(value) => return Some(value),
        Err(payload) => payload,
    };
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!(
        path,
        panic = %message,
        "HTTP source panicked; answered 500 (a bug in florence-edge)."
    );
    None
}

/// The token of an `Authorization: Bearer <token>` value (scheme names are
/// case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&value[..space], value[space + 1..].trim_ascii());
    scheme.eq_ignore_ascii_case(b"bearer").then_some(token)
}

/// Compares without an early exit, so the time taken does not reveal how
/// many leading bytes of a guess were right; it depends only on the length of
/// the expected token.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = expected.len() ^ given.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(e ^ given.get(i).copied().unwrap_or(0));
    }
    std::hint::black_box(diff) == 0
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, value: &serde_json::Value) -> Self {
        // A `Value` always serializes (its map keys are strings).
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: JSON_CONTENT_TYPE,
            headers: Vec::new(),
            body,
        }
    }

    fn internal_error() -> Self {
        Response::json(
            500,
            &json!({"error": "internal error; see the florence-edge log"}),
        )
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Status line, headers and (unless `head_only`) body in one buffer, so
    /// one write sends it all.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes everything within `write_timeout`, in slices so a stop is noticed.
/// False when the client went away, stalled, or the server is stopping.
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], shared: &Shared) -> bool {
    let deadline = Instant::now() + shared.limits.write_timeout;
    while !bytes.is_empty() {
        let now = Instant::now();
        if now >= deadline || shared.stop.load(Ordering::Acquire) {
            return false;
        }
        if stream
            .set_write_timeout(Some((deadline - now).min(POLL_INTERVAL)))
            .is_err()
        {
            return false;
        }
        match stream.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Before closing a connection whose client may still be sending (a body, an
/// oversized head), stop writing and read until the client closes, briefly:
/// closing with unread data makes the kernel send a reset, and the client
/// could lose the answer.
fn linger(stream: &mut TcpStream, shared: &Shared) {
    const LINGER: Duration = Duration::from_millis(500);
    const MAX_DRAIN: usize = 64 * 1024;
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut chunk = [0u8; 4096];
    while drained < MAX_DRAIN && !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= deadline
            || stream
                .set_read_timeout(Some((deadline - now).min(POLL_INTERVAL)))
                .is_err()
        {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{Exposition, Histogram, Kind};
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::AtomicUsize;

    const TOKEN: &str = "s3cret-token_value";

    /// A source whose health, readiness and panics the test controls.
    struct FakeSource {
        healthy: AtomicBool,
        ready: AtomicBool,
        panic_in_metrics: AtomicBool,
        metrics_calls: AtomicUsize,
        /// When set, `cameras()` reports that it was entered and waits for
        /// the test to release it (to keep a worker busy).
        gate: Mutex<Option<(mpsc::Sender<()>, Receiver<()>)>>,
    }

    impl FakeSource {
        fn new() -> Arc<Self> {
            Arc::new(FakeSource {
                healthy: AtomicBool::new(true),
                ready: AtomicBool::new(false),
                panic_in_metrics: AtomicBool::new(false),
                metrics_calls: AtomicUsize::new(0),
                gate: Mutex::new(None),
            })
        }
    }

    fn populated_exposition() -> String {
        let mut exp = Exposition::new();
        let mut frames = exp.family(
            "florence_edge_camera_frames_total",
            "Frames decoded per camera.",
            Kind::Counter,
        );
        frames
            .sample(&[("camera", "front-door")], 1234u64)
            .sample(&[("camera", "garage")], 56u64);
        exp.gauge(
            "florence_edge_camera_up",
            "1 while the camera streams.",
            &[("camera", "back \"yard\" \\ cam\nB")],
            1u64,
        );
        exp.gauge(
            "florence_edge_camera_up",
            "1 while the camera streams.",
            &[("camera", "front-door")],
            0u64,
        );
        let mut latency = Histogram::new(&[0.01, 0.1, 1.0]).expect("valid bounds");
        for v in [0.005, 0.05, 0.07, 0.5, 3.0] {
            latency.observe(v);
        }
        exp.histogram(
            "florence_edge_stage_seconds",
            "Latency of a pipeline stage.",
            &[("stage", "decode")],
            &latency,
        );
        exp.gauge("florence_edge_backlog_ratio", "Ratio.", &[], f64::INFINITY);
        assert!(exp.problems().is_empty(), "{:?}", exp.problems());
        exp.finish()
    }

    impl HttpSource for FakeSource {
        fn metrics(&self) -> String {
            self.metrics_calls.fetch_add(1, Ordering::SeqCst);
            if self.panic_in_metrics.load(Ordering::SeqCst) {
                panic!("collector bug");
            }
            populated_exposition()
        }
        fn health(&self) -> Health {
            if self.healthy.load(Ordering::SeqCst) {
                Health::ok("main loop running")
            } else {
                Health::failing("main loop stalled for 42 s")
            }
        }
        fn readiness(&self) -> Health {
            if self.ready.load(Ordering::SeqCst) {
                Health::ok(json!({"model": "loaded"}))
            } else {
                Health::failing(json!({"model": "loading", "camera": "front-door"}))
            }
        }
        fn cameras(&self) -> serde_json::Value {
            let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((entered, release)) = gate {
                let _ = entered.send(());
                let _ = release.recv();
            }
            json!([{"id": "front-door", "state": "streaming"}])
        }
    }

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn start(token: Option<&str>, source: &Arc<FakeSource>) -> HttpServer {
        HttpServer::start(localhost(), token.map(String::from), source.clone())
            .expect("server starts on 127.0.0.1:0")
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
        }
    }

    /// Sends raw bytes and reads the answer until the server closes.
    fn send(addr: SocketAddr, raw: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(raw).expect("send request");
        read_answer(stream)
    }

    fn read_answer(stream: TcpStream) -> Answer {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header has a colon");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut body = String::new();
        reader.read_to_string(&mut body).expect("body");
        Answer {
            status,
            headers,
            body,
        }
    }

    fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        send(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}\r\n").as_bytes(),
        )
    }

    /// Undoes the label value escaping of the text format (prometheus-parse
    /// hands values back still escaped).
    fn unescape(value: &str) -> String {
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                },
                (c, false) => out.push(c),
            }
        }
        out
    }

    #[test]
    fn metrics_body_parses_back_to_the_values_written() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let answer = get(server.local_addr(), "/metrics", None);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("Content-Type"), Some(METRICS_CONTENT_TYPE));
        assert_eq!(
            answer.header("Content-Length"),
            Some(answer.body.len().to_string().as_str())
        );
        assert_eq!(answer.body, populated_exposition());

        let scrape = prometheus_parse::Scrape::parse(answer.body.lines().map(|l| Ok(l.to_owned())))
            .expect("exposition parses");
        let find = |metric: &str, label: &str, value: &str| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric
                        && s.labels.get(label).map(unescape).as_deref() == Some(value)
                })
                .map(|s| s.value.clone())
        };
        use prometheus_parse::Value as V;
        assert_eq!(
            find("florence_edge_camera_frames_total", "camera", "front-door"),
            Some(V::Counter(1234.0))
        );
        assert_eq!(
            find("florence_edge_camera_frames_total", "camera", "garage"),
            Some(V::Counter(56.0))
        );
        assert_eq!(
            find(
                "florence_edge_camera_up",
                "camera",
                "back \"yard\" \\ cam\nB"
            ),
            Some(V::Gauge(1.0))
        );
        assert_eq!(
            find("florence_edge_camera_up", "camera", "front-door"),
            Some(V::Gauge(0.0))
        );
        let Some(V::Histogram(buckets)) = find("florence_edge_stage_seconds", "stage", "decode")
        else {
            panic!("no histogram in {:?}", scrape.samples);
        };
        let buckets: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        assert_eq!(
            buckets,
            [(0.01, 1.0), (0.1, 3.0), (1.0, 4.0), (f64::INFINITY, 5.0)]
        );
        // prometheus-parse files _sum and _count as untyped samples.
        assert_eq!(
            find("florence_edge_stage_seconds_count", "stage", "decode"),
            Some(V::Untyped(5.0))
        );
        let sum = find("florence_edge_stage_seconds_sum", "stage", "decode");
        assert!(
            matches!(sum, Some(V::Untyped(s)) if (s - 3.625).abs() < 1e-12),
            "{sum:?}"
        );
        assert!(scrape.samples.iter().any(
            |s| s.metric == "florence_edge_backlog_ratio" && s.value == V::Gauge(f64::INFINITY)
        ));
        assert_eq!(
            scrape
                .docs
                .get("florence_edge_camera_up")
                .map(String::as_str),
            Some("1 while the camera streams.")
        );
        // One HELP and one TYPE per family, however many label sets.
        for family in [
            "florence_edge_camera_frames_total",
            "florence_edge_camera_up",
            "florence_edge_stage_seconds",
        ] {
            for kind in ["HELP", "TYPE"] {
                let prefix = format!("# {kind} {family} ");
                assert_eq!(
                    answer
                        .body
                        .lines()
                        .filter(|l| l.starts_with(&prefix))
                        .count(),
                    1
                );
            }
        }
        server.stop();
    }

    #[test]
    fn head_answers_the_headers_of_get_without_a_body() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let addr = server.local_addr();
        let full = get(addr, "/metrics", None);
        let head = send(addr, b"HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
        assert_eq!(head.status, 200);
        assert_eq!(head.body, "");
        assert_eq!(
            head.header("Content-Length"),
            Some(full.body.len().to_string().as_str())
        );
        assert_eq!(head.header("Content-Type"), Some(METRICS_CONTENT_TYPE));
        let head = send(addr, b"HEAD /readyz HTTP/1.1\r\n\r\n");
        assert_eq!((head.status, head.body.as_str()), (503, ""));
    }

    #[test]
    fn health_and_readiness_follow_the_source() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let addr = server.local_addr();

        let health = get(addr, "/healthz", None);
        assert_eq!(health.status, 200);
        assert_eq!(health.header("Content-Type"), Some("application/json"));
        assert_eq!(
            health.json(),
            json!({"status": "ok", "detail": "main loop running"})
        );
        let ready = get(addr, "/readyz", None);
        assert_eq!(ready.status, 503);
        assert_eq!(
            ready.json(),
            json!({"status": "unavailable", "detail": {"model": "loading", "camera": "front-door"}})
        );

        source.healthy.store(false, Ordering::SeqCst);
        source.ready.store(true, Ordering::SeqCst);
        let health = get(addr, "/healthz", None);
        assert_eq!(health.status, 503);
        assert_eq!(
            health.json(),
            json!({"status": "unavailable", "detail": "main loop stalled for 42 s"})
        );
        let ready = get(addr, "/readyz?verbose=1", None);
        assert_eq!(ready.status, 200);
        assert_eq!(
            ready.json(),
            json!({"status": "ok", "detail": {"model": "loaded"}})
        );
    }

    #[test]
    fn cameras_are_served_as_json() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let answer = get(server.local_addr(), "/api/cameras", None);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("Content-Type"), Some("application/json"));
        assert_eq!(answer.header("Connection"), Some("close"));
        assert_eq!(
            answer.json(),
            json!([{"id": "front-door", "state": "streaming"}])
        );
    }

    #[test]
    fn unknown_paths_get_404_listing_the_paths_and_other_methods_405() {
        let source = FakeSource::new();
        let server = start(Some(TOKEN), &source);
        let addr = server.local_addr();
        for path in ["/", "/metrics/", "/api", "/favicon.ico"] {
            let answer = get(addr, path, None);
            assert_eq!(answer.status, 404, "{path}");
            assert_eq!(
                answer.json(),
                json!({"error": format!("no such path: {path}"), "paths": PATHS})
            );
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let answer = send(
                addr,
                format!("{method} /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
            );
            assert_eq!(answer.status, 405, "{method}");
            assert_eq!(answer.header("Allow"), Some("GET, HEAD"));
            assert_eq!(answer.json()["allow"], json!(["GET", "HEAD"]));
        }
        assert_eq!(source.metrics_calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn token_is_required_for_metrics_and_cameras_but_not_probes() {
        let source = FakeSource::new();
        let server = start(Some(TOKEN), &source);
        let addr = server.local_addr();
        let wrong = format!("{TOKEN}x");
        let short = &TOKEN[..TOKEN.len() - 1];
        for path in ["/metrics", "/api/cameras"] {
            for token in [None, Some(wrong.as_str()), Some(short), Some("")] {
                let answer = get(addr, path, token);
                assert_eq!(answer.status, 401, "{path} {token:?}");
                assert_eq!(
                    answer.header("WWW-Authenticate"),
                    Some("Bearer realm=\"florence-edge\"")
                );
                assert!(!answer.body.contains("front-door"), "{}", answer.body);
            }
            assert_eq!(get(addr, path, Some(TOKEN)).status, 200, "{path}");
        }
        // Scheme names are case-insensitive; Basic is not Bearer.
        let answer = send(
            addr,
            format!("GET /metrics HTTP/1.1\r\nauthorization: bearer {TOKEN}\r\n\r\n").as_bytes(),
        );
        assert_eq!(answer.status, 200);
        let answer = send(
            addr,
            format!("GET /metrics HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n").as_bytes(),
        );
        assert_eq!(answer.status, 401);
        assert_eq!(source.metrics_calls.load(Ordering::SeqCst), 2);

        // Probes answer without the token, but only the status.
        let open = get(addr, "/readyz", None);
        assert_eq!(
            (open.status, open.json()),
            (503, json!({"status": "unavailable"}))
        );
        let open = get(addr, "/healthz", Some(wrong.as_str()));
        assert_eq!((open.status, open.json()), (200, json!({"status": "ok"})));
        let full = get(addr, "/healthz", Some(TOKEN));
        assert_eq!(
            full.json(),
            json!({"status": "ok", "detail": "main loop running"})
        );
    }

    #[test]
    fn invalid_tokens_and_limits_are_refused_at_start() {
        let source: Arc<dyn HttpSource> = FakeSource::new();
        for token in ["", "has space", "line\n", "caf\u{e9}"] {
            let error = HttpServer::start(localhost(), Some(token.into()), source.clone())
                .expect_err("token refused");
            assert!(
                matches!(error, HttpError::InvalidToken { .. }),
                "{token:?}: {error}"
            );
        }
        let limits = HttpLimits {
            workers: 0,
            ..HttpLimits::default()
        };
        let error = HttpServer::start_with_limits(localhost(), None, source, limits)
            .expect_err("limits refused");
        assert_eq!(
            error.to_string(),
            "invalid HTTP server limits: workers = 0 (allowed: 1 to 16)"
        );
    }

    #[test]
    fn a_panicking_source_gets_500_and_the_server_keeps_serving() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let addr = server.local_addr();
        source.panic_in_metrics.store(true, Ordering::SeqCst);
        // More panics than workers: none of them may take a worker down.
        for _ in 0..5 {
            let answer = get(addr, "/metrics", None);
            assert_eq!(answer.status, 500);
            assert_eq!(
                answer.json()["error"],
                "internal error; see the florence-edge log"
            );
        }
        source.panic_in_metrics.store(false, Ordering::SeqCst);
        assert_eq!(get(addr, "/metrics", None).status, 200);
        assert_eq!(get(addr, "/healthz", None).status, 200);
        assert_eq!(source.metrics_calls.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn malformed_oversized_and_slow_requests_are_refused() {
        let source = FakeSource::new();
        let limits = HttpLimits {
            max_head_bytes: 1024,
            head_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let server = HttpServer::start_with_limits(localhost(), None, source.clone(), limits)
            .expect("server starts");
        let addr = server.local_addr();
        assert_eq!(send(addr, b"GARBAGE\r\n\r\n").status, 400);
        assert_eq!(send(addr, b"GET  /metrics HTTP/1.1\r\n\r\n").status, 400);
        assert_eq!(
            send(addr, b"GET /metrics HTTP/1.1\r\n folded\r\n\r\n").status,
            400
        );
        assert_eq!(
            send(addr, b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n").status,
            400
        );
        assert_eq!(send(addr, b"GET metrics HTTP/1.1\r\n\r\n").status, 400);
        assert_eq!(send(addr, b"GET /metrics HTTP/2.0\r\n\r\n").status, 505);
        // Lenient line endings and absolute-form targets are understood.
        assert_eq!(send(addr, b"GET /healthz HTTP/1.0\n\n").status, 200);
        assert_eq!(
            send(addr, b"GET http://example/healthz HTTP/1.1\r\n\r\n").status,
            200
        );

        let big = format!(
            "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(2000)
        );
        let answer = send(addr, big.as_bytes());
        assert_eq!(answer.status, 431);
        assert_eq!(
            answer.json()["error"],
            "request head larger than 1024 bytes"
        );

        // A client that starts a request and never finishes it gets 408.
        let answer = send(addr, b"GET /metrics HTTP/1.1\r\nHost: slow");
        assert_eq!(answer.status, 408);
        assert_eq!(source.metrics_calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_full_queue_is_answered_503() {
        let source = FakeSource::new();
        let limits = HttpLimits {
            workers: 1,
            queue: 1,
            ..HttpLimits::default()
        };
        let server = HttpServer::start_with_limits(localhost(), None, source.clone(), limits)
            .expect("server starts");
        let addr = server.local_addr();
        // Declared after the server so that, should an assertion fail, the
        // release sender is dropped first and the blocked worker can end.
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *source.gate.lock().expect("gate") = Some((entered_tx, release_rx));

        // The only worker blocks inside /api/cameras…
        let mut busy = TcpStream::connect(addr).expect("connect");
        busy.write_all(b"GET /api/cameras HTTP/1.1\r\n\r\n")
            .expect("send");
        entered
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker entered cameras()");
        // …the next connection fills the queue, the one after is refused
        // (answered at once, before it even sends its request).
        let mut queued = TcpStream::connect(addr).expect("connect");
        queued
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .expect("send");
        let refused = read_answer(TcpStream::connect(addr).expect("connect"));
        assert_eq!(refused.status, 503);
        assert_eq!(refused.header("Retry-After"), Some("1"));
        assert_eq!(
            refused.json()["error"],
            "the HTTP endpoint is busy; retry later"
        );

        release.send(()).expect("release the worker");
        assert_eq!(read_answer(busy).status, 200);
        assert_eq!(read_answer(queued).status, 200);
    }

    #[test]
    fn bind_errors_name_the_address_and_stop_releases_the_port() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let Err(error) = HttpServer::start(addr, None, source.clone()) else {
            panic!("a second server bound {addr}");
        };
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot listen for HTTP on {addr}: ")),
            "{message}"
        );
        assert!(matches!(&error, HttpError::Bind { source, .. }
                if source.kind() == ErrorKind::AddrInUse));

        // An idle client holding a connection must not delay the stop forever.
        let idle = TcpStream::connect(addr).expect("connect");
        assert_eq!(get(addr, "/healthz", None).status, 200);
        let (done_tx, done) = mpsc::channel();
        thread::spawn(move || {
            server.stop();
            let _ = done_tx.send(());
        });
        done.recv_timeout(Duration::from_secs(30))
            .expect("stop() returned while a client idled");
        drop(idle);
        let again = TcpListener::bind(addr).expect("port released by stop()");
        drop(again);

        // Drop stops as well.
        let server =
            HttpServer::start(addr, None, source.clone()).expect("restart on the same port");
        assert_eq!(get(addr, "/healthz", None).status, 200);
        drop(server);
        TcpListener::bind(addr).expect("port released by drop");
    }

    #[test]
    fn head_parsing_details() {
        let head = parse_head(
            b"GET /metrics?x=1#frag HTTP/1.1\r\nHost: a\r\n\
              AUTHORIZATION:   Bearer abc  \r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            head,
            Ok(Head {
                method: "GET".into(),
                path: "/metrics".into(),
                authorization: Some(b"Bearer abc".to_vec()),
                has_body: false,
            })
        );
        let two = parse_head(b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n");
        assert_eq!(two, Err(HeadError::Malformed("two Authorization headers")));
        let body = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(body.is_ok_and(|h| h.has_body));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\n"), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(bearer_token(b"Bearer  tok "), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"Bearertok"), None);
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
        // A guess that extends the token by a multiple of 256 bytes must not
        // pass (a length folded into a byte would).
        let long = vec![b'a'; 256 + 3];
        assert!(!constant_time_eq(b"aaa", &long));
    }
}
