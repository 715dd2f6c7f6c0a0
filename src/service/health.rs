//! Is the daemon making progress? One answer for the systemd watchdog,
//! `/healthz` and `/readyz`.
//!
//! The threads that matter stamp a shared [`Liveness`]: the coordinator on
//! every turn of its loop (it wakes at least once a second), the inference
//! thread when a batch starts and ends. The daemon is healthy while the
//! coordinator turned recently and no batch has run longer than the
//! configured `model.batch_timeout`. A camera that is down does not make the
//! daemon unhealthy (restarting florence-edge would not bring it back; its
//! state is in `/api/cameras`, the metrics and MQTT), a wedged inference
//! thread does: then systemd's watchdog fires and restarts the service.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::notify::Notifier;

/// How long the coordinator may go without turning its loop. It wakes at
/// least every second, so this only trips when it is stuck.
pub const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(15);

/// What the threads stamp. Times are milliseconds since `origin` (+1, so
/// that 0 can mean "never"/"idle").
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    coordinator_turn: AtomicU64,
    batch_started: AtomicU64,
    batches_done: AtomicU64,
    ready: AtomicBool,
    stopping: AtomicBool,
    batch_timeout: Duration,
}

/// The verdict, with the reasons when unhealthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub problems: Vec<String>,
}

impl Liveness {
    pub fn new(batch_timeout: Duration) -> Arc<Liveness> {
        let origin = Instant::now();
        Arc::new(Liveness {
            origin,
            coordinator_turn: AtomicU64::new(1),
            batch_started: AtomicU64::new(0),
            batches_done: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            batch_timeout,
        })
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    fn age(&self, stamp: u64, now: Instant) -> Duration {
        let now = self.stamp(now);
        Duration::from_millis(now.saturating_sub(stamp))
    }

    pub fn coordinator_turned(&self) {
        self.coordinator_turn
            .store(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    pub fn batch_started(&self) {
        self.batch_started
            .store(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    pub fn batch_finished(&self) {
        self.batch_started.store(0, Ordering::Relaxed);
        self.batches_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn batches_done(&self) -> u64 {
        self.batches_done.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.ready.store(false, Ordering::Relaxed);
    }

    pub fn batch_timeout(&self) -> Duration {
        self.batch_timeout
    }

    /// Healthy: the pipeline makes progress.
    pub fn health(&self, now: Instant) -> Verdict {
        let mut problems = Vec::new();
        let turn = self.age(self.coordinator_turn.load(Ordering::Relaxed), now);
        if turn > COORDINATOR_TIMEOUT {
            problems.push(format!(
                "the coordinator thread has not run for {:.0} s (limit {} s)",
                turn.as_secs_f64(),
                COORDINATOR_TIMEOUT.as_secs()
            ));
        }
        let started = self.batch_started.load(Ordering::Relaxed);
        if started != 0 {
            let running = self.age(started, now);
            if running > self.batch_timeout {
                problems.push(format!(
                    "the inference thread has been on one batch for {:.0} s (model.batch_timeout = {} s)",
                    running.as_secs_f64(),
                    self.batch_timeout.as_secs_f64()
                ));
            }
        }
        Verdict {
            ok: problems.is_empty(),
            problems,
        }
    }

    /// Ready: the model is loaded, the cameras are started, and it is not
    /// shutting down — and healthy.
    pub fn readiness(&self, now: Instant) -> Verdict {
        let mut v = self.health(now);
        if self.stopping.load(Ordering::Relaxed) {
            v.problems.push("shutting down".into());
        } else if !self.ready.load(Ordering::Relaxed) {
            v.problems
                .push("starting: model or cameras not up yet".into());
        }
        v.ok = v.problems.is_empty();
        v
    }
}

/// Feeds systemd's watchdog at half its timeout while [`Liveness::health`]
/// says the pipeline makes progress, and stops feeding it (logging why,
/// once) when it does not, so that systemd restarts a wedged daemon.
pub struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// `None` when systemd asked for no watchdog.
    pub fn start(notifier: Arc<Notifier>, liveness: Arc<Liveness>) -> Option<Watchdog> {
        let timeout = notifier.watchdog_timeout()?;
        let interval = (timeout / 2).max(Duration::from_millis(10));
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut healthy = true;
                loop {
                    let verdict = liveness.health(Instant::now());
                    if verdict.ok {
                        if !healthy {
                            tracing::warn!("The pipeline makes progress again; feeding the systemd watchdog.");
                        }
                        notifier.watchdog();
                    } else if healthy {
                        let why = verdict.problems.join("; ");
                        tracing::error!(problems = %why, "The pipeline is wedged; no longer feeding the systemd watchdog, which will restart the service.");
                        notifier.status(&format!("Wedged: {why}"));
                    }
                    healthy = verdict.ok;
                    match stop_rx.recv_timeout(interval) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
            })
            .ok()?;
        Some(Watchdog {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_batch_is_unhealthy_and_names_the_limit() {
        let l = Liveness::new(Duration::from_secs(5));
        let now = Instant::now();
        assert!(l.health(now).ok);
        l.batch_started();
        assert!(l.health(now + Duration::from_secs(4)).ok);
        let v = l.health(now + Duration::from_secs(7));
        assert!(!v.ok);
        assert!(v.problems[0].contains("model.batch_timeout = 5 s"), "{v:?}");
        l.batch_finished();
        assert!(l.health(now + Duration::from_secs(7)).ok);
        assert_eq!(l.batches_done(), 1);
    }

    #[test]
    fn a_stuck_coordinator_is_unhealthy() {
        let l = Liveness::new(Duration::from_secs(60));
        let now = Instant::now();
        l.coordinator_turned();
        assert!(l.health(now + Duration::from_secs(10)).ok);
        let v = l.health(now + Duration::from_secs(20));
        assert!(!v.ok && v.problems[0].contains("coordinator"), "{v:?}");
    }

    #[test]
    fn readiness_follows_start_and_stop() {
        let l = Liveness::new(Duration::from_secs(60));
        let now = Instant::now();
        assert!(!l.readiness(now).ok);
        l.set_ready(true);
        assert!(l.readiness(now).ok);
        l.set_stopping();
        let v = l.readiness(now);
        assert!(!v.ok && v.problems.contains(&"shutting down".to_string()));
        // Shutting down is not a health problem.
        assert!(l.health(now).ok);
    }

    #[test]
    fn watchdog_pings_while_healthy_and_stops_when_wedged() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let notifier = Arc::new(
            Notifier::new(
                super::super::notify::NotifySocket::Path(path),
                Some(Duration::from_millis(40)),
            )
            .unwrap(),
        );
        let l = Liveness::new(Duration::from_millis(100));
        let _w = Watchdog::start(notifier, l.clone()).unwrap();
        let mut buf = [0u8; 256];
        let mut pings = 0;
        while pings < 3 {
            let n = sock.recv(&mut buf).expect("a ping while healthy");
            if &buf[..n] == b"WATCHDOG=1" {
                pings += 1;
            }
        }
        l.batch_started();
        // Within the batch timeout pings may still come; after it, one
        // STATUS=Wedged… and then silence.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = sock.recv(&mut buf).expect("the wedged status");
            if buf[..n].starts_with(b"STATUS=Wedged") {
                break;
            }
            assert!(Instant::now() < deadline);
        }
        assert!(
            sock.recv(&mut buf).is_err(),
            "no message while wedged: {:?}",
            String::from_utf8_lossy(&buf)
        );
        l.batch_finished();
        let n = sock.recv(&mut buf).expect("pings again");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
