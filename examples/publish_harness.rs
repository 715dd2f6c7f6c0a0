//! A publisher in a process of its own, for tests that kill it (`kill -9`)
//! and start it again: the last will and the on-disk spool are only tested
//! for real across a process boundary.
//!
//! ```text
//! publish_harness --url mqtt://127.0.0.1:1883 --spool DIR --node N --camera C \
//!                 [--first 0] [--count 0] [--interval-ms 10]
//! ```
//!
//! Prints `started`, `queued <sequence>` per result, `connected` when the
//! broker first accepts it, and `stats published=<n> spool=<n>` every 100 ms.
//! A line `shutdown` on stdin (or stdin closing) shuts down cleanly and prints
//! `stopped offline=<bool> left_in_spool=<n>`.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use florence_edge::publish::{PublishError, Publisher};

fn main() {
    if let Err(message) = run() {
        eprintln!("publish_harness: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let (mut url, mut spool, mut node, mut camera) = (None, None, None, None);
    let (mut first, mut count, mut interval_ms) = (0u64, 0u64, 10u64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value.clone()),
            "--spool" => spool = Some(std::path::PathBuf::from(&value)),
            "--node" => node = Some(value.clone()),
            "--camera" => camera = Some(value.clone()),
            "--first" => first = number()?,
            "--count" => count = number()?,
            "--interval-ms" => interval_ms = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let spool = spool.ok_or("--spool is required")?;
    let node = node.ok_or("--node is required")?;
    let camera = camera.ok_or("--camera is required")?;

    let settings = mosquitto::test_settings(&url, &spool);
    let publisher = Publisher::start(&settings, &node).map_err(|e| e.to_string())?;
    let stats = publisher.stats();
    say("started");

    let done = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (stats, done) = (stats.clone(), done.clone());
        std::thread::spawn(move || {
            let mut announced = false;
            while !done.load(Ordering::Relaxed) {
                let s = stats.snapshot();
                if s.connected && !announced {
                    say("connected");
                    announced = true;
                }
                say(&format!(
                    "stats published={} spool={}",
                    s.results_published, s.spool_messages
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    for sequence in first..first + count {
        let mut payload = mosquitto::od_result(&node, &camera, sequence, 3);
        loop {
            match publisher.try_publish_result(payload) {
                Ok(()) => break,
                Err(PublishError::QueueFull { payload: back, .. }) => {
                    payload = *back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        say(&format!("queued {sequence}"));
        std::thread::sleep(Duration::from_millis(interval_ms));
    }

    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(line) if line.trim() == "shutdown" => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let report = publisher.shutdown(Duration::from_secs(5));
    say(&format!(
        "stopped offline={} left_in_spool={}",
        report.offline_published, report.left_in_spool
    ));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
