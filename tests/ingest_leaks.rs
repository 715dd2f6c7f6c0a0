//! 50 reconnect cycles must not leak threads or file descriptors.
//!
//! Alone in its own test binary so no other test's threads or sockets move
//! the counts. The source is a TCP server that answers RTSP with garbage: each
//! cycle connects, builds the whole rtspsrc machinery, fails and is torn down.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/ingest_events.rs"]
mod ingest_events;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use florence_edge::ingest::{
    spawn_camera, BackoffPolicy, CameraSettings, CameraState, MaxAttempts,
};
use ingest_events::{states, wait_for_state};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn threads() -> usize {
    count("/proc/self/task")
}

fn fds() -> usize {
    count("/proc/self/fd")
}

fn garbage_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.0 999 not rtsp\r\n\r\n\x00\x01\x02garbage");
        }
    });
    port
}

fn run_cycles(port: u16, attempts: u32) -> u64 {
    let mut settings = CameraSettings::new("cam-leak", format!("rtsp://127.0.0.1:{port}/stream"));
    settings.backoff = BackoffPolicy {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        multiplier: 2.0,
        jitter: 0.2,
    };
    settings.max_attempts = MaxAttempts::Limit(attempts);
    settings.startup_timeout = Duration::from_secs(5);
    let (ftx, _frx) = mpsc::sync_channel(1);
    let (etx, erx) = mpsc::channel();
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    wait_for_state(
        &erx,
        "cam-leak",
        CameraState::Failed,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|seen| {
        panic!(
            "never failed; last events: {:?}",
            states(&seen[seen.len().saturating_sub(3)..])
        )
    });
    let reconnects = cam.status().reconnects;
    cam.stop();
    reconnects
}

#[test]
fn fifty_reconnect_cycles_leak_no_threads_or_file_descriptors() {
    let port = garbage_server();
    // Warm up: GStreamer's registry, thread pools and plugin state are
    // created once per process and are not leaks.
    run_cycles(port, 5);
    std::thread::sleep(Duration::from_millis(300));
    let (threads_before, fds_before) = (threads(), fds());

    let reconnects = run_cycles(port, 51);
    assert_eq!(reconnects, 50, "50 reconnect cycles ran");
    std::thread::sleep(Duration::from_millis(300));
    let (threads_after, fds_after) = (threads(), fds());

    // GLib keeps up to a couple of idle pool threads around; anything that
    // grew with the number of cycles would show up as dozens.
    assert!(
        threads_after <= threads_before + 2,
        "threads {threads_before} -> {threads_after} after 50 cycles"
    );
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors {fds_before} -> {fds_after} after 50 cycles"
    );
    eprintln!("threads {threads_before} -> {threads_after}, fds {fds_before} -> {fds_after}");
}
