//! Backoff of one (camera, task) whose jobs fail.
//!
//! A job that fails (its prompt does not fit the model, or it failed alone
//! in a batch) would fail again on the next frame: without a pause the
//! scheduler would retry it every period, each time next to other cameras'
//! jobs. After `n` failures in a row its task makes no job for
//! `FIRST_DELAY · 2^(n-1)`, at most `MAX_DELAY`; one success ends it.
//!
//! The delays are the crate's one retry policy ([`crate::backoff`], as for
//! camera and broker reconnects) with no jitter: there is nothing to
//! spread out here and nothing to configure; this file keeps only the
//! pause state of a task.

use std::time::{Duration, Instant};

use super::later;
use crate::backoff::BackoffPolicy;

/// The pause after the first failure in a row.
pub const FIRST_DELAY: Duration = Duration::from_secs(2);
/// The longest pause, from the 9th failure in a row on.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// What a reported outcome changed. Each is one log line and one count,
/// never a line per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffChange {
    /// `failures` failures in a row: no job for `retry_in`.
    BackedOff { failures: u32, retry_in: Duration },
    /// A success after `failures` failures in a row: back to its period.
    Recovered { failures: u32 },
}

/// The backoff state of one (camera, task).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskBackoff {
    /// Failures in a row.
    failures: u32,
    /// No job before this; `None` once it has passed.
    until: Option<Instant>,
}

/// The policy behind [`delay`].
pub const TASK_BACKOFF: BackoffPolicy = BackoffPolicy {
    initial: FIRST_DELAY,
    max: MAX_DELAY,
    multiplier: 2.0,
    jitter: 0.0,
};

/// The pause after `failures` failures in a row (at least 1).
pub fn delay(failures: u32) -> Duration {
    TASK_BACKOFF.delay(failures.max(1), 0.5)
}

impl TaskBackoff {
    pub(crate) fn failed(&mut self, now: Instant) -> BackoffChange {
        self.failures = self.failures.saturating_add(1);
        let retry_in = delay(self.failures);
        self.until = Some(later(now, retry_in));
        BackoffChange::BackedOff {
            failures: self.failures,
            retry_in,
        }
    }

    /// `Some` only when this ends a run of failures.
    pub(crate) fn succeeded(&mut self) -> Option<BackoffChange> {
        let failures = std::mem::take(&mut self.failures);
        self.until = None;
        (failures > 0).then_some(BackoffChange::Recovered { failures })
    }

    /// Whether the task may make no job at `now`. A pause that has passed
    /// is forgotten (the failure count stays until a success).
    pub(crate) fn blocks(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if until > now => true,
            Some(_) => {
                self.until = None;
                false
            }
            None => false,
        }
    }

    /// When the pause ends, while there is one.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_per_failure_in_a_row_up_to_the_cap_and_a_success_resets() {
        assert_eq!(delay(1), FIRST_DELAY);
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(3), FIRST_DELAY * 4);
        assert_eq!(delay(9), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);

        let t0 = Instant::now();
        let mut b = TaskBackoff::default();
        assert!(!b.blocks(t0));
        assert_eq!(
            b.succeeded(),
            None,
            "a success without failures changes nothing"
        );
        assert_eq!(
            b.failed(t0),
            BackoffChange::BackedOff {
                failures: 1,
                retry_in: FIRST_DELAY
            }
        );
        assert!(b.blocks(t0 + FIRST_DELAY - Duration::from_millis(1)));
        assert!(!b.blocks(t0 + FIRST_DELAY));
        assert_eq!(b.until(), None, "a pause that passed is forgotten");
        let t1 = t0 + FIRST_DELAY;
        assert_eq!(
            b.failed(t1),
            BackoffChange::BackedOff {
                failures: 2,
                retry_in: FIRST_DELAY * 2
            }
        );
        assert_eq!(b.until(), Some(t1 + FIRST_DELAY * 2));
        assert_eq!(
            b.succeeded(),
            Some(BackoffChange::Recovered { failures: 2 })
        );
        assert!(!b.blocks(t1));
        assert_eq!(b.succeeded(), None, "the run of failures was over");
        assert_eq!(
            b.failed(t1),
            BackoffChange::BackedOff {
                failures: 1,
                retry_in: FIRST_DELAY
            },
            "after a success the next failure starts over"
        );
    }
}
