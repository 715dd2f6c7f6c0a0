//! Nothing lost: a 30 s broker outage while results keep coming, and a
//! florence-edge process killed and restarted during an outage.
//!
//! Delivery guarantee checked here: with QoS 1 every result arrives **at least
//! once**, and the first arrivals of each camera are in sequence order with
//! none missing. (A result the broker received but whose PUBACK was lost to
//! the disconnect is sent again; the test counts such repeats.)

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use florence_edge::publish::{PublishError, Publisher};
use mosquitto::Received;

/// Per camera: first-arrival sequence numbers in arrival order, and repeats.
fn first_arrivals(messages: &[Received]) -> (BTreeMap<String, Vec<u64>>, usize) {
    let mut seen = HashSet::new();
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut repeats = 0;
    for m in messages.iter().filter(|m| m.topic.ends_with("/od")) {
        let json = m.json();
        let camera = json["camera"].as_str().expect("camera").to_owned();
        let sequence = json["sequence"].as_u64().expect("sequence");
        if seen.insert((camera.clone(), sequence)) {
            order.entry(camera).or_default().push(sequence);
        } else {
            repeats += 1;
        }
    }
    (order, repeats)
}

fn complete(messages: &[Received], expected: &BTreeMap<String, u64>) -> bool {
    let (order, _) = first_arrivals(messages);
    expected
        .iter()
        .all(|(camera, n)| order.get(camera).map_or(0, Vec::len) as u64 >= *n)
}

#[test]
fn a_30_second_broker_outage_loses_nothing_and_keeps_order_per_camera() {
    // A persistent session: the broker keeps what arrives for this subscriber
    // while it is itself reconnecting after the restart.
    let (mut broker, sub) =
        mosquitto::persistent_broker_and_recorder("fe-test/+/od", "outage-recorder");
    let spool = tempfile::tempdir().expect("spool dir");
    let publisher = Arc::new(
        Publisher::start(
            &mosquitto::test_settings(&broker.url(), spool.path()),
            "edge-01",
        )
        .expect("start"),
    );
    let stats = publisher.stats();

    // Two cameras at 20 results/s each, for the whole test.
    let cameras = ["cam-a", "cam-b"];
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (publisher, stop) = (publisher.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent: BTreeMap<String, u64> = BTreeMap::new();
            let mut queue_full = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for camera in cameras {
                    let sequence = *sent.get(camera).unwrap_or(&0);
                    match publisher
                        .try_publish_result(mosquitto::od_result("edge-01", camera, sequence, 2))
                    {
                        Ok(()) => {
                            sent.insert(camera.to_owned(), sequence + 1);
                        }
                        Err(PublishError::QueueFull { .. }) => queue_full += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (sent, queue_full)
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    broker.stop();
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let during = stats.snapshot();
    broker.restart();
    eprintln!(
        "outage lasted {:?}; stats at its end: {during:?}",
        outage.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (sent, queue_full) = producer.join().expect("producer");
    assert_eq!(queue_full, 0, "the inference side was refused");

    let messages = sub.wait_for(Duration::from_secs(30), "every result", |m| {
        complete(m, &sent)
    });
    let (order, repeats) = first_arrivals(&messages);
    for (camera, n) in &sent {
        let expected: Vec<u64> = (0..*n).collect();
        assert_eq!(
            order.get(camera),
            Some(&expected),
            "{camera}: first arrivals out of order or missing"
        );
    }
    eprintln!("sent {sent:?}; {repeats} repeated deliveries (at least once)");

    // The outage was seen, spooled and counted, and the spool drained.
    assert!(!during.connected);
    assert!(during.results_spooled >= 2 * 20 * 25, "{during:?}");
    assert!(during.spool_messages >= 2 * 20 * 25, "{during:?}");
    assert!(during.spool_oldest_unix_ms > 0);
    // Backoff, not a spin: with delays of 0.1–1 s, 30 s hold at most ~60 attempts.
    assert!((1..=80).contains(&during.connection_failures), "{during:?}");
    let after = stats.snapshot();
    assert_eq!(after.spool_messages, 0, "{after:?}");
    assert_eq!(after.spool_overflow_drops, 0);
    assert_eq!(after.connects, 2);
    let total: u64 = sent.values().sum();
    assert!(after.results_published >= total, "{after:?}");

    let publisher = Arc::try_unwrap(publisher).ok().expect("sole owner");
    let report = publisher.shutdown(Duration::from_secs(5));
    assert!(
        report.offline_published && report.left_in_spool == 0,
        "{report:?}"
    );
}

fn harness_args(url: &str, spool: &std::path::Path, first: u64, count: u64) -> Vec<String> {
    [
        "--url",
        url,
        "--spool",
        &spool.display().to_string(),
        "--node",
        "edge-restart",
        "--camera",
        "cam",
        "--first",
        &first.to_string(),
        "--count",
        &count.to_string(),
        "--interval-ms",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn results_spooled_before_a_kill_arrive_after_the_restart() {
    let (mut broker, sub) =
        mosquitto::persistent_broker_and_recorder("fe-test/cam/od", "restart-recorder");
    let spool = tempfile::tempdir().expect("spool dir");
    broker.stop();

    // First run: the broker is down; 40 results go to the spool, then kill -9.
    let mut first = mosquitto::Harness::spawn(&harness_args(&broker.url(), spool.path(), 0, 40));
    first.wait_line(Duration::from_secs(10), "queued 39", |l| l == "queued 39");
    first.wait_line(Duration::from_secs(10), "40 spooled", |l| {
        l.ends_with("spool=40")
    });
    first.kill();
    let on_disk = std::fs::read_dir(spool.path())
        .expect("spool dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".msg"))
        })
        .count();
    assert_eq!(on_disk, 40);

    // Second run, still during the outage: 10 more, then the broker returns.
    let second = mosquitto::Harness::spawn(&harness_args(&broker.url(), spool.path(), 40, 10));
    second.wait_line(Duration::from_secs(10), "queued 49", |l| l == "queued 49");
    broker.restart();
    second.wait_line(Duration::from_secs(20), "connected", |l| l == "connected");

    let expected: BTreeMap<String, u64> = [("cam".to_owned(), 50)].into();
    let messages = sub.wait_for(Duration::from_secs(20), "all 50 results", |m| {
        complete(m, &expected)
    });
    let (order, repeats) = first_arrivals(&messages);
    assert_eq!(order["cam"], (0..50).collect::<Vec<u64>>());
    assert_eq!(repeats, 0, "nothing was in flight, so nothing repeats");
    second.wait_line(Duration::from_secs(10), "an empty spool", |l| {
        l == "stats published=50 spool=0"
    });
}

#[test]
fn a_full_spool_drops_the_oldest_and_counts_them() {
    let (mut broker, sub) =
        mosquitto::persistent_broker_and_recorder("fe-test/cam/od", "overflow-recorder");
    broker.stop();
    let spool = tempfile::tempdir().expect("spool dir");
    let mut settings = mosquitto::test_settings(&broker.url(), spool.path());
    settings.spool.max_messages = 5;
    let publisher = Publisher::start(&settings, "edge-overflow").expect("start");
    for sequence in 0..8 {
        publisher
            .try_publish_result(mosquitto::od_result("edge-overflow", "cam", sequence, 1))
            .expect("queued");
    }
    let stats = publisher.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.snapshot().results_spooled < 8 {
        assert!(Instant::now() < deadline, "{:?}", stats.snapshot());
        std::thread::sleep(Duration::from_millis(10));
    }
    let full = stats.snapshot();
    assert_eq!(
        (full.spool_messages, full.spool_overflow_drops),
        (5, 3),
        "{full:?}"
    );
    assert!(stats.spool_oldest_age_secs() >= 0.0);

    broker.restart();
    let expected: BTreeMap<String, u64> = [("cam".to_owned(), 5)].into();
    let messages = sub.wait_for(Duration::from_secs(20), "the 5 newest", |m| {
        complete(m, &expected)
    });
    let (order, _) = first_arrivals(&messages);
    assert_eq!(order["cam"], [3, 4, 5, 6, 7], "oldest dropped first");
    let report = publisher.shutdown(Duration::from_secs(5));
    assert_eq!(report.left_in_spool, 0);
    assert_eq!(stats.snapshot().spool_overflow_drops, 3);
}
