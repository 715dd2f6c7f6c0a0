//! The connection's state machine and its backoff, without any I/O: the shell
//! reports what happened (connected, failed with a reason) and is told how long
//! to wait and whether the change deserves a log line. Time comes in as an
//! argument, so the tests need neither sockets nor sleeps.

use std::time::{Duration, Instant};

/// Exponential backoff between connection attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay ceiling before the first retry.
    pub initial: Duration,
    /// The ceiling never grows past this.
    pub max: Duration,
    /// A connection that lasted at least this long counts as stable and
    /// resets the backoff; a broker that accepts and then drops us at once
    /// keeps backing off instead of being hammered.
    pub stable_after: Duration,
}

/// Backoff with "equal jitter": the n-th delay is uniformly drawn from
/// [c/2, c] where c = min(max, initial·2ⁿ). Half the delay is guaranteed, so a
/// down broker is never polled in a tight loop; the random half spreads a fleet
/// of nodes that lost the same broker.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// `seed` varies the jitter between nodes (e.g. a hash of the client id).
    pub fn new(policy: BackoffPolicy, seed: u64) -> Backoff {
        Backoff {
            policy,
            attempt: 0,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt; advances the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the initial delay (after a stable connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// splitmix64: tiny, seeded, and good enough for jitter.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

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
}

/// The connection's state and backoff together.
#[derive(Clone, Debug)]
pub struct LinkState {
    link: Link,
    backoff: Backoff,
    consecutive_failures: u32,
}

impl LinkState {
    pub fn new(policy: BackoffPolicy, seed: u64) -> LinkState {
        LinkState {
            link: Link::Starting,
            backoff: Backoff::new(policy, seed),
            consecutive_failures: 0,
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
                if now.saturating_duration_since(*since) >= self.backoff.policy.stable_after {
                    self.backoff.reset();
                }
                true
            }
            _ => false,
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_ceiling() {
        for seed in 0..50 {
            let mut backoff = Backoff::new(policy(), seed);
            let mut ceiling = Duration::from_millis(500);
            for _ in 0..12 {
                let delay = backoff.next_delay();
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} vs {ceiling:?}"
                );
                ceiling = (ceiling * 2).min(Duration::from_secs(30));
            }
        }
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let first: Vec<Duration> = (0..8)
            .map(|seed| Backoff::new(policy(), seed).next_delay())
            .collect();
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert!(distinct.len() > 4, "{first:?}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(policy(), 7);
        for _ in 0..200 {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(30));
        }
        assert!(backoff.next_delay() >= Duration::from_secs(15));
    }

    #[test]
    fn repeated_failures_log_once_and_a_new_reason_logs_again() {
        let t0 = Instant::now();
        let mut state = LinkState::new(policy(), 1);
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
    fn only_a_stable_connection_resets_the_backoff() {
        let t0 = Instant::now();
        let mut state = LinkState::new(policy(), 3);
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
            stable.delay <= Duration::from_millis(500),
            "{:?}",
            stable.delay
        );
    }
}
