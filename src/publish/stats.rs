//! Counters and gauges of the publisher, read by the metrics endpoint. Plain
//! atomics: the inference side bumps `queue_full_drops` without taking a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::spool::Spool;

/// Live counters (monotonic) and gauges (current values).
#[derive(Debug, Default)]
pub struct PublisherStats {
    connected: AtomicBool,
    connects: AtomicU64,
    connection_failures: AtomicU64,
    takeovers_suspected: AtomicU64,
    results_published: AtomicU64,
    statuses_published: AtomicU64,
    snapshots_published: AtomicU64,
    snapshots_skipped: AtomicU64,
    retained_published: AtomicU64,
    commands_received: AtomicU64,
    responses_published: AtomicU64,
    responses_dropped: AtomicU64,
    publish_errors: AtomicU64,
    queue_full_drops: AtomicU64,
    results_spooled: AtomicU64,
    spool_messages: AtomicU64,
    spool_oldest_unix_ms: AtomicU64,
    spool_overflow_drops: AtomicU64,
    spool_corrupt_drops: AtomicU64,
    spool_write_errors: AtomicU64,
    last_connection_error: Mutex<Option<String>>,
}

/// A copy of every value at one moment, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublisherStatsSnapshot {
    /// Gauge: the broker accepted us and the connection is up.
    pub connected: bool,
    /// Successful connections (CONNACK accepted), the first included.
    pub connects: u64,
    /// Failed connection attempts and lost connections.
    pub connection_failures: u64,
    /// Streaks of connections the broker dropped right after accepting them:
    /// another client with the same client id, most likely.
    pub takeovers_suspected: u64,
    /// Results the broker acknowledged (QoS 1/2) or that were written (QoS 0).
    pub results_published: u64,
    pub statuses_published: u64,
    pub snapshots_published: u64,
    /// Snapshots not sent because of the rate limit.
    pub snapshots_skipped: u64,
    /// Retained latest values on topics of their own (task states, node
    /// configuration) the broker acknowledged, clears included.
    pub retained_published: u64,
    /// Messages on command topics handed to the command inbox.
    pub commands_received: u64,
    /// Command responses the broker acknowledged (QoS 1/2) or that were
    /// written (QoS 0).
    pub responses_published: u64,
    /// Command responses not delivered: the broker was away, the queue was
    /// full, or the connection dropped before the broker acknowledged them.
    pub responses_dropped: u64,
    /// Publishes rumqttc refused, and results that could not be serialized.
    pub publish_errors: u64,
    /// Results refused because the queue to the publisher thread was full.
    pub queue_full_drops: u64,
    /// Results written to the spool (while the broker was away or a backlog drained).
    pub results_spooled: u64,
    /// Gauge: messages in the spool.
    pub spool_messages: u64,
    /// Gauge: spool time of the oldest spooled message, ms since the Unix epoch (0: empty).
    pub spool_oldest_unix_ms: u64,
    /// Oldest spooled results dropped to stay within `spool.max_messages`.
    pub spool_overflow_drops: u64,
    /// Spool files that could not be read back and were removed.
    pub spool_corrupt_drops: u64,
    /// Results lost because the spool could not be written.
    pub spool_write_errors: u64,
    /// The last connection error, as logged (never holds a password).
    pub last_connection_error: Option<String>,
}

impl PublisherStats {
    pub fn snapshot(&self) -> PublisherStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PublisherStatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            connects: get(&self.connects),
            connection_failures: get(&self.connection_failures),
            takeovers_suspected: get(&self.takeovers_suspected),
            results_published: get(&self.results_published),
            statuses_published: get(&self.statuses_published),
            snapshots_published: get(&self.snapshots_published),
            snapshots_skipped: get(&self.snapshots_skipped),
            retained_published: get(&self.retained_published),
            commands_received: get(&self.commands_received),
            responses_published: get(&self.responses_published),
            responses_dropped: get(&self.responses_dropped),
            publish_errors: get(&self.publish_errors),
            queue_full_drops: get(&self.queue_full_drops),
            results_spooled: get(&self.results_spooled),
            spool_messages: get(&self.spool_messages),
            spool_oldest_unix_ms: get(&self.spool_oldest_unix_ms),
            spool_overflow_drops: get(&self.spool_overflow_drops),
            spool_corrupt_drops: get(&self.spool_corrupt_drops),
            spool_write_errors: get(&self.spool_write_errors),
            last_connection_error: crate::sync::lock(&self.last_connection_error).clone(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn results_published(&self) -> u64 {
        self.results_published.load(Ordering::Relaxed)
    }

    /// Age of the oldest spooled message in seconds (0 when the spool is empty).
    pub fn spool_oldest_age_secs(&self) -> f64 {
        let oldest = self.spool_oldest_unix_ms.load(Ordering::Relaxed);
        if oldest == 0 {
            return 0.0;
        }
        unix_ms().saturating_sub(oldest) as f64 / 1000.0
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if connected {
            self.connects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn takeover_suspected(&self) {
        self.takeovers_suspected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_failed(&self, reason: &str) {
        self.connected.store(false, Ordering::Relaxed);
        self.connection_failures.fetch_add(1, Ordering::Relaxed);
        {
            let mut last = crate::sync::lock(&self.last_connection_error);
            *last = Some(reason.to_owned());
        }
    }

    pub(crate) fn count_queue_full(&self) {
        self.queue_full_drops.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot dropped because the previous one was still being
    /// rendered (counted with the rate-limited ones).
    pub fn count_snapshot_skipped_busy(&self) {
        self.snapshots_skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_snapshot_skipped(&self) {
        self.snapshots_skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_result_published(&self) {
        self.results_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_status_published(&self) {
        self.statuses_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_snapshot_published(&self) {
        self.snapshots_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_retained_published(&self) {
        self.retained_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_command_received(&self) {
        self.commands_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_response_published(&self) {
        self.responses_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_response_dropped(&self) {
        self.responses_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_publish_error(&self) {
        self.publish_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_spooled(&self) {
        self.results_spooled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_spool_overflow(&self, dropped: u64) {
        self.spool_overflow_drops
            .fetch_add(dropped, Ordering::Relaxed);
    }

    pub(crate) fn count_spool_corrupt(&self) {
        self.spool_corrupt_drops.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_spool_write_error(&self) {
        self.spool_write_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Refreshes the spool gauges.
    pub(crate) fn set_spool(&self, spool: &Spool) {
        self.spool_messages.store(spool.len(), Ordering::Relaxed);
        self.spool_oldest_unix_ms.store(
            spool.oldest_spooled_unix_ms().unwrap_or(0),
            Ordering::Relaxed,
        );
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
