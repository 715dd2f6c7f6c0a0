//! Publisher throughput against a local mosquitto: messages per second and
//! CPU per message of the `fe-publish` thread, for typical `<OD>` results.
//!
//! `cargo bench --bench publish` (needs `mosquitto` on the PATH). Cases:
//! * live QoS 0 / 1 / 2: the broker is up, results go straight out;
//! * spool: the broker is down, results go to the on-disk spool;
//! * drain: the broker comes back and the spool is delivered (QoS 1).
//!
//! CPU time is read from /proc/self/task/<tid>/schedstat of the publisher
//! thread (nanoseconds on CPU), so the feeding thread is not counted.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use std::time::{Duration, Instant};

use florence_edge::publish::{MqttSettings, PublishError, Publisher};
use mosquitto::{BrokerOptions, Mosquitto};

const MESSAGES: u64 = 20_000;

/// Nanoseconds the `fe-publish` thread has spent on a CPU.
fn publisher_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "fe-publish")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

fn settings(url: &str, spool: &std::path::Path, qos: u8) -> MqttSettings {
    MqttSettings {
        qos,
        queue_capacity: 4096,
        ..mosquitto::test_settings(url, spool)
    }
}

/// Feeds `MESSAGES` results as fast as the queue takes them; returns the mean
/// time of one `try_publish_result` call and how often the queue was full.
fn feed(publisher: &Publisher) -> (Duration, u64) {
    let mut call_time = Duration::ZERO;
    let mut full = 0;
    for sequence in 0..MESSAGES {
        let mut payload = mosquitto::od_result("edge-bench", "cam", sequence, 5);
        loop {
            let start = Instant::now();
            let outcome = publisher.try_publish_result(payload);
            call_time += start.elapsed();
            match outcome {
                Ok(()) => break,
                Err(PublishError::QueueFull { payload: back, .. }) => {
                    full += 1;
                    payload = *back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    (call_time / MESSAGES as u32, full)
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn report(case: &str, elapsed: Duration, cpu_ns: u64, call: Option<Duration>, full: u64) {
    let rate = MESSAGES as f64 / elapsed.as_secs_f64();
    let cpu_us = cpu_ns as f64 / 1000.0 / MESSAGES as f64;
    let call = call.map_or("-".to_owned(), |c| format!("{:.2}", c.as_secs_f64() * 1e6));
    println!(
        "| {case:<14} | {rate:>9.0} | {cpu_us:>7.1} | {:>6.0} | {call:>8} | {full:>5} |",
        1e6 / cpu_us.max(1e-9)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let payload_bytes = serde_json::to_vec(&mosquitto::od_result("edge-bench", "cam", 1, 5))
        .map(|v| v.len())
        .unwrap_or(0);
    println!("{MESSAGES} `<OD>` results with 5 boxes, {payload_bytes} bytes of JSON each");
    println!(
        "| case           | msgs/s    | CPU µs/msg | msgs/s per core | call µs | queue full |"
    );
    println!("|---|---|---|---|---|---|");
    let mut broker = Mosquitto::start(BrokerOptions::default());

    for qos in [0u8, 1, 2] {
        let spool = tempfile::tempdir().expect("spool");
        let publisher = Publisher::start(&settings(&broker.url(), spool.path(), qos), "edge-bench")
            .expect("start");
        let stats = publisher.stats();
        wait_until("connected", || stats.is_connected());
        let cpu0 = publisher_cpu_ns();
        let start = Instant::now();
        let (call, full) = feed(&publisher);
        wait_until("all published", || stats.results_published() >= MESSAGES);
        report(
            &format!("live QoS {qos}"),
            start.elapsed(),
            publisher_cpu_ns() - cpu0,
            Some(call),
            full,
        );
        publisher.shutdown(Duration::from_secs(5));
    }

    // The broker is down: everything goes to the spool, then drains.
    let spool = tempfile::tempdir().expect("spool");
    broker.stop();
    let publisher =
        Publisher::start(&settings(&broker.url(), spool.path(), 1), "edge-bench").expect("start");
    let stats = publisher.stats();
    let cpu0 = publisher_cpu_ns();
    let start = Instant::now();
    let (call, full) = feed(&publisher);
    wait_until("all spooled", || {
        stats.snapshot().spool_messages >= MESSAGES
    });
    report(
        "spool (down)",
        start.elapsed(),
        publisher_cpu_ns() - cpu0,
        Some(call),
        full,
    );
    broker.restart();
    wait_until("connected", || stats.is_connected());
    let cpu0 = publisher_cpu_ns();
    let start = Instant::now();
    wait_until("spool drained", || stats.results_published() >= MESSAGES);
    report(
        "drain QoS 1",
        start.elapsed(),
        publisher_cpu_ns() - cpu0,
        None,
        0,
    );
    publisher.shutdown(Duration::from_secs(5));
}
