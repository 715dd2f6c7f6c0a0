//! Issue 13 item 7: idle or slow clients must not starve the probes. Forty
//! TCP connections that never send a request are held open while `/healthz`
//! is probed; every probe must be answered at once, and the idle connections
//! must still be closed by the request-head deadline. A client that does not
//! read its answer delays no probe either, and is cut off by the write
//! deadline.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use florence_edge::service::http::{Health, HttpLimits, HttpServer, HttpSource};

const IDLE_CONNECTIONS: usize = 40;
const PROBES: usize = 10;
/// The issue asks for "answered within 100 ms"; a loaded 2-core CI machine
/// gets some slack, still far below the 5 s head deadline the old server
/// made probes wait behind.
const PROBE_BOUND: Duration = Duration::from_secs(1);

/// Alive and ready, with an exposition of this many bytes.
struct Alive(usize);

impl HttpSource for Alive {
    fn metrics(&self) -> String {
        "#".repeat(self.0)
    }
    fn health(&self) -> Health {
        Health::ok("alive")
    }
    fn readiness(&self) -> Health {
        Health::ok("ready")
    }
    fn cameras(&self) -> serde_json::Value {
        serde_json::json!([])
    }
}

/// Reads until the server closes (at most `wait`), and returns the status
/// code of the answer (0 when none came) and the time it took.
fn read_status(mut stream: TcpStream, wait: Duration) -> (u16, Instant) {
    stream.set_read_timeout(Some(wait)).expect("read timeout");
    let mut raw = Vec::new();
    // A reset or a timeout leaves what arrived before it in `raw`.
    let _ = stream.read_to_end(&mut raw);
    let closed = Instant::now();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, closed)
}

/// One `/healthz` probe: its status (0: no answer within 10 s) and latency.
fn probe(addr: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, started.elapsed());
    };
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
        .is_err()
    {
        return (0, started.elapsed());
    }
    let (status, answered) = read_status(stream, Duration::from_secs(10));
    (status, answered - started)
}

#[test]
fn probes_are_answered_at_once_while_idle_connections_are_held_open() {
    let head_timeout = HttpLimits::default().head_timeout;
    let server = HttpServer::start(([127, 0, 0, 1], 0).into(), None, Arc::new(Alive(0)))
        .expect("server starts on 127.0.0.1:0");
    let addr = server.local_addr();

    let idle: Vec<(TcpStream, Instant)> = (0..IDLE_CONNECTIONS)
        .map(|_| {
            let stream = TcpStream::connect(addr).expect("idle connection");
            (stream, Instant::now())
        })
        .collect();
    // Let the server accept them all before probing.
    std::thread::sleep(Duration::from_millis(200));

    let probes: Vec<(u16, Duration)> = (0..PROBES).map(|_| probe(addr)).collect();
    let latencies: Vec<String> = probes
        .iter()
        .map(|(status, took)| format!("{status} in {:.1} ms", took.as_secs_f64() * 1e3))
        .collect();
    eprintln!(
        "/healthz with {IDLE_CONNECTIONS} idle connections open: {}",
        latencies.join(", ")
    );
    for (i, (status, took)) in probes.iter().enumerate() {
        assert_eq!(*status, 200, "probe {i} not answered 200: {latencies:?}");
        assert!(
            *took < PROBE_BOUND,
            "probe {i} took {took:?} (bound {PROBE_BOUND:?}): {latencies:?}"
        );
    }

    // The idle connections are not kept forever: each is answered 408 and
    // closed by the head deadline, counted from when the server accepted it.
    for (i, (stream, opened)) in idle.into_iter().enumerate() {
        let (status, closed) = read_status(stream, head_timeout + Duration::from_secs(10));
        let held = closed - opened;
        assert_eq!(status, 408, "idle connection {i} (held {held:?})");
        assert!(
            held >= head_timeout.saturating_sub(Duration::from_millis(50))
                && held < head_timeout + Duration::from_secs(3),
            "idle connection {i} closed after {held:?} (head deadline {head_timeout:?})"
        );
    }
    server.stop();
}

#[test]
fn a_client_that_does_not_read_its_answer_delays_no_probe_and_is_cut_off() {
    // Far more than the kernel buffers of both ends take in.
    const BIG: usize = 64 << 20;
    let limits = HttpLimits {
        write_timeout: Duration::from_millis(500),
        ..HttpLimits::default()
    };
    let server = HttpServer::start_with_limits(
        ([127, 0, 0, 1], 0).into(),
        None,
        Arc::new(Alive(BIG)),
        limits,
    )
    .expect("server starts on 127.0.0.1:0");
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .expect("send");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let (status, took) = probe(addr);
        assert_eq!(status, 200, "probe while a client does not read");
        assert!(took < PROBE_BOUND, "probe took {took:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Long past the write deadline: what the buffers held, then the end.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut received = Vec::new();
    let _ = slow.read_to_end(&mut received);
    eprintln!("cut off after {} bytes of {BIG}", received.len());
    assert!(
        !received.is_empty() && received.len() < BIG,
        "received {} bytes of a {BIG}-byte answer",
        received.len()
    );
    server.stop();
}
