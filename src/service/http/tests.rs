//! The endpoint end to end: a server on 127.0.0.1 with a fake source,
//! spoken to over real sockets.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::control::{ControlReply, ControlRequest, Problem};

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
    /// Every control request received, in order.
    controls: Mutex<Vec<ControlRequest>>,
    /// What `control()` answers.
    control_reply: Mutex<ControlReply>,
}

impl FakeSource {
    fn new() -> Arc<Self> {
        Arc::new(FakeSource {
            healthy: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            panic_in_metrics: AtomicBool::new(false),
            metrics_calls: AtomicUsize::new(0),
            gate: Mutex::new(None),
            controls: Mutex::new(Vec::new()),
            control_reply: Mutex::new(ControlReply::ok(json!({"applied": true}))),
        })
    }

    /// The control requests received so far (and forgets them).
    fn take_controls(&self) -> Vec<ControlRequest> {
        std::mem::take(&mut *self.controls.lock().expect("controls"))
    }
}

/// A metrics body as the daemon's collector encodes it (src/service/metrics.rs
/// tests the encoding; here the endpoint must hand it over byte for byte).
const POPULATED_EXPOSITION: &str = r#"# HELP florence_edge_camera_frames_total Frames decoded per camera.
# TYPE florence_edge_camera_frames_total counter
florence_edge_camera_frames_total{camera="front-door"} 1234
florence_edge_camera_frames_total{camera="garage"} 56
# HELP florence_edge_camera_up 1 while the camera streams.
# TYPE florence_edge_camera_up gauge
florence_edge_camera_up{camera="back \"yard\" \\ cam\nB"} 1
florence_edge_camera_up{camera="front-door"} 0
# HELP florence_edge_stage_seconds Latency of a pipeline stage.
# TYPE florence_edge_stage_seconds histogram
florence_edge_stage_seconds_bucket{stage="decode",le="0.01"} 1
florence_edge_stage_seconds_bucket{stage="decode",le="0.1"} 3
florence_edge_stage_seconds_bucket{stage="decode",le="1.0"} 4
florence_edge_stage_seconds_bucket{stage="decode",le="+Inf"} 5
florence_edge_stage_seconds_sum{stage="decode"} 3.625
florence_edge_stage_seconds_count{stage="decode"} 5
# HELP florence_edge_backlog_ratio Ratio.
# TYPE florence_edge_backlog_ratio gauge
florence_edge_backlog_ratio +Inf
"#;

fn populated_exposition() -> String {
    POPULATED_EXPOSITION.to_string()
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
    fn control(&self, request: ControlRequest) -> ControlReply {
        self.controls.lock().expect("controls").push(request);
        self.control_reply.lock().expect("reply").clone()
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
                s.metric == metric && s.labels.get(label).map(unescape).as_deref() == Some(value)
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
    let Some(V::Histogram(buckets)) = find("florence_edge_stage_seconds", "stage", "decode") else {
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
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "florence_edge_backlog_ratio" && s.value == V::Gauge(f64::INFINITY)));
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
    let server = HttpServer::start(addr, None, source.clone()).expect("restart on the same port");
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

mod control;
