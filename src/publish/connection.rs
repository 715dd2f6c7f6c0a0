//! The connection's state machine and its backoff, without any I/O: the shell
//! reports what happened (connected, failed with a reason) and is told how long
//! to wait and whether the change deserves a log line. Time comes in as an
//! argument, so the tests need neither sockets nor sleeps.

use std::time::{Duration, Instant};

use super::settings::ReconnectSettings;
use crate::backoff::{Backoff, Jitter};

/// Where the connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Never connected yet.
    Starting,
    Connected {
        since: Instant,
    },
    /// The last attempt or connection failed for `reason`.
    Down {
        reason: String,
    },
}

/// What the shell should do after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Wait this long before the next attempt.
    pub delay: Duration,
    /// Consecutive failures so far (1 for the first).
    pub attempt: u32,
    /// The state or the reason changed: log it (at WARN). Repeats of the same
    /// failure are not logged again, so an outage is one line, not thousands.
    pub log: bool,
    /// A live connection was lost (as opposed to an attempt failing).
    pub was_connected: bool,
    /// The broker accepted us and dropped us again, shortly, for the
    /// [`TAKEOVER_STREAK`]-th time in a row: what a broker does when
    /// another client connects with the same client id (MQTT 3.1.1 §3.1.4:
    /// the server disconnects the existing client). Set once per streak.
    pub takeover_suspected: bool,
}

/// Short-lived connections in a row (each accepted, each lost before
/// `stable_after`) that make a duplicate client id the likely cause.
pub const TAKEOVER_STREAK: u32 = 3;

/// The connection's state and backoff together.
#[derive(Clone, Debug)]
pub struct LinkState {
    link: Link,
    backoff: Backoff,
    stable_after: Duration,
    consecutive_failures: u32,
    /// Accepted connections in a row that did not last `stable_after`.
    short_lived: u32,
}

impl LinkState {
    /// `jitter` varies the delays between nodes (seed it with the client id).
    pub fn new(policy: ReconnectSettings, jitter: Jitter) -> LinkState {
        LinkState {
            link: Link::Starting,
            backoff: Backoff::new(policy.backoff, jitter),
            stable_after: policy.stable_after,
            consecutive_failures: 0,
            short_lived: 0,
        }
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }

    /// The broker accepted the connection. Returns the failures that preceded
    /// it (0 on a first clean connect).
    pub fn connected(&mut self, now: Instant) -> u32 {
        let failures = self.consecutive_failures;
        self.link = Link::Connected { since: now };
        failures
    }

    /// An attempt failed or a connection dropped.
    pub fn failed(&mut self, now: Instant, reason: &str) -> Retry {
        let was_connected = match &self.link {
            Link::Connected { since } => {
                if now.saturating_duration_since(*since) >= self.stable_after {
                    self.backoff.reset();
                    self.short_lived = 0;
                } else {
                    self.short_lived = self.short_lived.saturating_add(1);
                }
                true
            }
            // A refused attempt (broker down, bad login) is not a takeover.
            _ => {
                self.short_lived = 0;
                false
            }
        };
        let log = match &self.link {
            Link::Down { reason: previous } => previous != reason,
            _ => true,
        };
        if was_connected {
            self.consecutive_failures = 0;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.link = Link::Down {
            reason: reason.to_owned(),
        };
        Retry {
            delay: self.backoff.next_delay(),
            attempt: self.consecutive_failures,
            log,
            was_connected,
            takeover_suspected: was_connected && self.short_lived == TAKEOVER_STREAK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectSettings {
        ReconnectSettings {
            backoff: crate::backoff::BackoffPolicy::new(
                Duration::from_millis(500),
                Duration::from_secs(30),
            ),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn repeated_failures_log_once_and_a_new_reason_logs_again() {
        let t0 = Instant::now();
        let mut state = LinkState::new(policy(), Jitter::new(1));
        let first = state.failed(t0, "connection refused");
        assert!(first.log && !first.was_connected);
        assert_eq!(first.attempt, 1);
        let second = state.failed(t0, "connection refused");
        assert!(!second.log);
        assert_eq!(second.attempt, 2);
        assert!(second.delay >= Duration::from_millis(500));
        let third = state.failed(t0, "not authorized");
        assert!(third.log);
        assert_eq!(state.connected(t0), 3);
        assert!(state.is_connected());
        let lost = state.failed(t0 + Duration::from_secs(1), "connection reset");
        assert!(lost.log && lost.was_connected);
        assert_eq!(lost.attempt, 1);
    }

    #[test]
    fn connections_dropped_right_after_acceptance_suggest_a_duplicate_client_id() {
        let mut t = Instant::now();
        let mut state = LinkState::new(policy(), Jitter::new(5));
        let mut suspected = Vec::new();
        for _ in 0..5 {
            state.connected(t);
            t += Duration::from_secs(2);
            suspected.push(
                state
                    .failed(t, "connection reset by peer")
                    .takeover_suspected,
            );
        }
        assert_eq!(
            suspected,
            [false, false, true, false, false],
            "once per streak"
        );
        // A stable connection ends the streak; refused attempts never count.
        state.connected(t);
        t += Duration::from_secs(11);
        assert!(!state.failed(t, "reset").takeover_suspected);
        for _ in 0..5 {
            assert!(!state.failed(t, "connection refused").takeover_suspected);
        }
        for _ in 0..2 {
            state.connected(t);
            t += Duration::from_secs(1);
            assert!(!state.failed(t, "reset").takeover_suspected);
        }
        state.connected(t);
        assert!(state.failed(t, "reset").takeover_suspected, "a new streak");
    }

    #[test]
    fn only_a_stable_connection_resets_the_backoff() {
        let t0 = Instant::now();
        let mut state = LinkState::new(policy(), Jitter::new(3));
        for _ in 0..4 {
            state.failed(t0, "refused");
        }
        // Flapping: connected for 1 s, then dropped. The backoff keeps growing.
        state.connected(t0);
        let flap = state.failed(t0 + Duration::from_secs(1), "dropped");
        assert!(flap.delay >= Duration::from_secs(4), "{:?}", flap.delay);
        // Stable for 10 s: back to the initial delay.
        state.connected(t0);
        let stable = state.failed(t0 + Duration::from_secs(10), "dropped");
        assert!(
            stable.delay <= Duration::from_millis(600),
            "{:?}",
            stable.delay
        );
    }
}
