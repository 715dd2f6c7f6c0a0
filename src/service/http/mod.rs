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
//! **hyper on a runtime of its own.** [`HttpServer::start`] binds the socket
//! and starts one thread, `http`, that runs a current-thread tokio runtime.
//! Accepting, reading requests and writing answers are asynchronous there, so
//! an idle or slow client costs a task and a socket, not a thread, and delays
//! no one else — the probes least of all. hyper speaks HTTP/1.1, one request
//! per connection (answers carry `Connection: close`: scrapers and probes make
//! one request per interval). [`HttpSource`] calls are synchronous and run on
//! the runtime's blocking pool (threads `http-worker`), never on the reactor.
//!
//! **Request heads are guarded before hyper sees them.** Each connection's
//! request head must arrive within [`HttpLimits::head_timeout`] (408 otherwise)
//! and fit in [`HttpLimits::max_head_bytes`] (431 otherwise); it is checked
//! with `httparse`, the parser hyper itself uses (400 when malformed, 505 for
//! another HTTP version). Those answers carry a JSON body like every other.
//! hyper's own limits cannot do this: its `header_read_timeout` closes the
//! connection without an answer, its head buffer cannot be smaller than 8 KiB,
//! and it answers 400 with an empty body to a foreign version. hyper then
//! reads the head again from what the guard read, and serves the request. The
//! client must take the answer within [`HttpLimits::write_timeout`].
//!
//! **Bounded concurrency.** At most [`HttpLimits::workers`] source calls run
//! at once and [`HttpLimits::queue`] more wait for one. A request beyond that
//! is answered 503 (`Retry-After: 1`) at once; so, while that lasts, is every
//! connection that has not sent its whole request head yet (a new one before
//! it sends anything), and so is a new connection while
//! [`HttpLimits::max_connections`] are open (idle ones included). Answers that
//! need no source call (401, 404, 405) are never refused.
//!
//! **Stopping.** [`HttpServer::stop`] (and drop) closes the listening socket at
//! once, closes the connections still waiting for their request head, lets
//! answers in progress finish for up to [`STOP_GRACE`] and cuts off the rest,
//! then joins the thread. A source callback still running after that is left
//! to end on its blocking thread (logged at WARN), so a stop is bounded by
//! about [`STOP_GRACE`] even when a callback hangs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use server::{run, Shared};

mod guard;
mod routes;
mod server;

/// Content type of the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// Every path the endpoint serves (listed in 404 answers).
pub const PATHS: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/api/cameras"];

/// How long a stop lets answers in progress finish.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Longest bearer token accepted (a token file with a whole key pasted in is
/// a mistake worth reporting).
const MAX_TOKEN_LEN: usize = 4096;

/// Before closing a connection whose client may still be sending (a body, an
/// oversized head), read for this long and this much: closing with unread
/// data makes the kernel send a reset, and the client could lose the answer.
const LINGER: Duration = Duration::from_millis(500);
const MAX_DRAIN: usize = 64 * 1024;

const BUSY: &str = "the HTTP endpoint is busy; retry later";

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

/// What the endpoint shows, provided by the daemon. Called for every request
/// that needs it, on one of the endpoint's blocking worker threads (at most
/// [`HttpLimits::workers`] at once), so each call should read a snapshot and
/// return quickly; a panic is answered 500.
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
    /// [`HttpSource`] calls running at once, each on a blocking thread
    /// (1 to 16).
    pub workers: usize,
    /// Requests waiting for a worker; more are answered 503.
    pub queue: usize,
    /// Open connections, idle ones included (1 to 65536); more are answered
    /// 503.
    pub max_connections: usize,
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
            max_connections: 256,
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
        if !(1..=65536).contains(&self.max_connections) {
            return Some(format!(
                "max_connections = {} (allowed: 1 to 65536)",
                self.max_connections
            ));
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
    /// `true` asks the server thread to stop (as does dropping it).
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
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
        // Bound here, so that a bind error is returned by start.
        let listener = std::net::TcpListener::bind(listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(limits.workers)
            .thread_name("http-worker")
            .build()
            .map_err(|source| HttpError::Spawn {
                thread: "runtime".into(),
                source,
            })?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind)?
        };
        let shared = Arc::new(Shared {
            source,
            token: bearer_token.map(String::into_bytes),
            workers: Arc::new(Semaphore::new(limits.workers)),
            admitted: watch::Sender::new(0),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        });
        let auth = shared.token.is_some();
        let (stop, stopped) = watch::channel(false);
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || run(runtime, listener, shared, stopped))
            .map_err(|source| HttpError::Spawn {
                thread: "http".into(),
                source,
            })?;
        tracing::info!(addr = %local_addr, auth, "HTTP endpoint listening.");
        Ok(HttpServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the listening socket, lets answers in progress finish (for up
    /// to [`STOP_GRACE`]) and joins the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.send_replace(true);
        let Some(thread) = self.thread.take() else {
            return; // already stopped (stop() then drop)
        };
        if thread.join().is_err() {
            tracing::error!("HTTP thread ended with a panic.");
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

#[cfg(test)]
mod tests {
    use super::super::metrics::{Exposition, Histogram, Kind};
    use super::*;
    use serde_json::json;
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc::{self, Receiver};
    use std::sync::Mutex;
    use std::time::Instant;

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
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        assert!(
            status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
            "{status_line:?}"
        );
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

    /// Keeps the only worker busy in `cameras()` for the connection returned:
    /// the function returns once the callback is entered.
    fn hold_a_worker(source: &FakeSource, addr: SocketAddr) -> (TcpStream, mpsc::Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *source.gate.lock().expect("gate") = Some((entered_tx, release_rx));
        let mut busy = TcpStream::connect(addr).expect("connect");
        busy.write_all(b"GET /api/cameras HTTP/1.1\r\n\r\n")
            .expect("send");
        entered
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker entered cameras()");
        (busy, release)
    }

    #[test]
    fn stop_closes_the_port_at_once_and_lets_an_answer_in_progress_finish() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let addr = server.local_addr();
        let (busy, release) = hold_a_worker(&source, addr);
        let stopping = thread::spawn(move || {
            let started = Instant::now();
            server.stop();
            started.elapsed()
        });
        let mut closed = false;
        for _ in 0..250 {
            if TcpStream::connect(addr).is_err() {
                closed = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert!(closed, "the listening socket is closed once stop begins");
        release.send(()).expect("release the worker");
        assert_eq!(read_answer(busy).status, 200);
        let took = stopping.join().expect("stop returns");
        assert!(took < STOP_GRACE, "stop took {took:?}");
    }

    #[test]
    fn stop_is_bounded_while_a_source_call_hangs() {
        let source = FakeSource::new();
        let server = start(None, &source);
        let (mut busy, release) = hold_a_worker(&source, server.local_addr());
        let started = Instant::now();
        server.stop();
        let took = started.elapsed();
        assert!(
            took >= STOP_GRACE && took < STOP_GRACE + Duration::from_secs(2),
            "stop took {took:?} (grace {STOP_GRACE:?})"
        );
        // Its connection is closed unanswered.
        busy.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut raw = Vec::new();
        let _ = busy.read_to_end(&mut raw);
        assert_eq!(String::from_utf8_lossy(&raw), "");
        // The callback ends on its own.
        drop(release);
    }
}
