//! Exponential backoff with a cap and jitter: the one policy behind a
//! camera's reconnects (`[[cameras]] reconnect`) and the broker's
//! (`[mqtt] reconnect`), read from the same keys and bounded the same way.
//!
//! As in `fallbacksrc`'s retry model, attempt n waits
//! `min(max, initial · multiplierⁿ⁻¹ · (1 ± jitter))`. Randomness comes in
//! as a number in `[0, 1)` ([`BackoffPolicy::delay`]) or from a seeded
//! [`Jitter`], so the state machines that use it are tested with fixed
//! numbers and no clock.

use std::time::Duration;

use crate::settings::{duration_in, float_in, Errors, Fields};

/// Bounds of `reconnect.initial` and `reconnect.max`.
pub const DELAY_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(3600));
/// Bounds of `reconnect.multiplier`.
pub const MULTIPLIER_RANGE: (f64, f64) = (1.0, 100.0);
/// Bounds of `reconnect.jitter`: the fraction each delay is spread by.
pub const JITTER_RANGE: (f64, f64) = (0.0, 1.0);
/// `reconnect.multiplier` when unset.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// `reconnect.jitter` when unset: ±20 %, so that many cameras behind one
/// failed switch, or a fleet of nodes that lost the same broker, do not
/// retry in lockstep.
pub const DEFAULT_JITTER: f64 = 0.2;

/// How long to wait before each retry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The wait never grows past this.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Fraction in `[0, 1]` each delay is spread by, both ways.
    pub jitter: f64,
}

impl BackoffPolicy {
    /// A policy with the default multiplier and jitter.
    pub const fn new(initial: Duration, max: Duration) -> BackoffPolicy {
        BackoffPolicy {
            initial,
            max,
            multiplier: DEFAULT_MULTIPLIER,
            jitter: DEFAULT_JITTER,
        }
    }

    /// Says what is wrong with the policy, if anything: the key within the
    /// `reconnect` table (`reconnect.max`, …) and why, with what is allowed.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let (lo, hi) = DELAY_RANGE;
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        for (key, d) in [
            ("reconnect.initial", self.initial),
            ("reconnect.max", self.max),
        ] {
            if d < lo || d > hi {
                return Err((
                    key,
                    format!(
                        "{} is not allowed; allowed: {} to {}",
                        fmt(d),
                        fmt(lo),
                        fmt(hi)
                    ),
                ));
            }
        }
        if self.max < self.initial {
            return Err((
                "reconnect.max",
                format!(
                    "{} is below initial {}; allowed: max >= initial",
                    fmt(self.max),
                    fmt(self.initial)
                ),
            ));
        }
        let (lo, hi) = MULTIPLIER_RANGE;
        if !(self.multiplier.is_finite() && self.multiplier >= lo && self.multiplier <= hi) {
            return Err((
                "reconnect.multiplier",
                format!("{} is not allowed; allowed: {lo} to {hi}", self.multiplier),
            ));
        }
        let (lo, hi) = JITTER_RANGE;
        if !(self.jitter >= lo && self.jitter <= hi) {
            return Err((
                "reconnect.jitter",
                format!("{} is not allowed; allowed: {lo} to {hi}", self.jitter),
            ));
        }
        Ok(())
    }

    /// The wait before attempt `attempt` (1-based); `unit` is a uniform
    /// random number in `[0, 1)` (0.5 means no jitter).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let max = self.max.as_secs_f64();
        let base = (self.initial.as_secs_f64() * self.multiplier.powi(exponent)).min(max);
        let unit = unit.clamp(0.0, 1.0);
        let jittered = base * (1.0 + self.jitter * (2.0 * unit - 1.0));
        Duration::from_secs_f64(jittered.clamp(0.0, max))
    }

    /// Reads the keys of a `reconnect` table (`initial`, `max`,
    /// `multiplier`, `jitter`) over `default`; the caller reads any keys of
    /// its own and then finishes the table. Types, and the ranges of the two
    /// numbers, are checked here; the durations and their relation by
    /// [`BackoffPolicy::check`].
    pub(crate) fn read(
        t: &mut Fields,
        default: BackoffPolicy,
        errors: &mut Errors,
    ) -> BackoffPolicy {
        // Wide enough to hold any typo'd value for `check` to name.
        let any =
            |v: &::config::Value| duration_in(v, Duration::ZERO, Duration::from_secs(365 * 86_400));
        BackoffPolicy {
            initial: t.or("initial", default.initial, errors, any),
            max: t.or("max", default.max, errors, any),
            multiplier: t.or("multiplier", default.multiplier, errors, |v| {
                float_in(v, MULTIPLIER_RANGE.0, MULTIPLIER_RANGE.1)
            }),
            jitter: t.or("jitter", default.jitter, errors, |v| {
                float_in(v, JITTER_RANGE.0, JITTER_RANGE.1)
            }),
        }
    }
}

/// As `validate --print` shows it: durations as humantime text, the keys
/// [`BackoffPolicy::read`] reads.
impl serde::Serialize for BackoffPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut t = s.serialize_struct("reconnect", 4)?;
        t.serialize_field(
            "initial",
            &humantime::format_duration(self.initial).to_string(),
        )?;
        t.serialize_field("max", &humantime::format_duration(self.max).to_string())?;
        t.serialize_field("multiplier", &self.multiplier)?;
        t.serialize_field("jitter", &self.jitter)?;
        t.end()
    }
}

/// A seeded stream of uniform numbers in `[0, 1)` for [`BackoffPolicy::delay`]
/// (splitmix64: tiny, and good enough for jitter). Seed it with something
/// that differs between cameras or nodes (their id).
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A seed from a name (a camera id, a client id).
    pub fn from_name(name: &str) -> Jitter {
        let mut seed = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Jitter::new(seed)
    }

    /// The next number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A policy with its attempt count and jitter: the next delay on each
/// failure, back to the first after [`Backoff::reset`].
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy, jitter: Jitter) -> Backoff {
        Backoff {
            policy,
            attempt: 0,
            jitter,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt; advances the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.policy.delay(self.attempt, self.jitter.unit())
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_JITTER: f64 = 0.5;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> BackoffPolicy {
        BackoffPolicy::new(ms(500), Duration::from_secs(4))
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_cap() {
        let b = policy();
        let delays: Vec<_> = (1..=6).map(|n| b.delay(n, NO_JITTER)).collect();
        assert_eq!(
            delays,
            vec![ms(500), ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]
        );
    }

    #[test]
    fn jitter_spreads_symmetrically_and_never_exceeds_the_cap() {
        let b = policy();
        assert_eq!(b.delay(1, 0.0), ms(400));
        let high = b.delay(1, 0.999_999);
        assert!(high > ms(599) && high <= ms(600), "{high:?}");
        assert_eq!(b.delay(10, 0.999_999), ms(4000));
        assert_eq!(b.delay(10, 0.0), ms(3200));
        assert_eq!(b.delay(u32::MAX, 0.5), ms(4000));
    }

    #[test]
    fn bad_policies_name_their_key() {
        let bad = [
            (
                BackoffPolicy {
                    max: ms(100),
                    ..policy()
                },
                "reconnect.max",
            ),
            (
                BackoffPolicy {
                    jitter: 1.5,
                    ..policy()
                },
                "reconnect.jitter",
            ),
            (
                BackoffPolicy {
                    multiplier: 0.5,
                    ..policy()
                },
                "reconnect.multiplier",
            ),
            (
                BackoffPolicy {
                    multiplier: f64::NAN,
                    ..policy()
                },
                "reconnect.multiplier",
            ),
            (
                BackoffPolicy {
                    initial: Duration::ZERO,
                    ..policy()
                },
                "reconnect.initial",
            ),
            (
                BackoffPolicy {
                    max: Duration::from_secs(7200),
                    ..policy()
                },
                "reconnect.max",
            ),
        ];
        for (b, key) in bad {
            let (got, reason) = b.check().unwrap_err();
            assert_eq!(got, key, "{b:?}: {reason}");
            assert!(reason.contains("allowed"), "{reason}");
        }
        assert!(policy().check().is_ok());
    }

    #[test]
    fn a_backoff_grows_within_its_jitter_and_resets() {
        for seed in 0..50 {
            let mut backoff = Backoff::new(policy(), Jitter::new(seed));
            let mut base = ms(500);
            for _ in 0..8 {
                let delay = backoff.next_delay();
                assert!(
                    delay >= base.mul_f64(0.8)
                        && delay <= base.mul_f64(1.2).min(Duration::from_secs(4)),
                    "{delay:?} vs {base:?}"
                );
                base = (base * 2).min(Duration::from_secs(4));
            }
            assert_eq!(backoff.attempt(), 8);
            backoff.reset();
            assert!(backoff.next_delay() <= ms(600));
        }
    }

    #[test]
    fn jitter_differs_between_seeds_and_stays_in_the_unit_interval() {
        let first: std::collections::HashSet<u64> = (0..8)
            .map(|seed| Jitter::new(seed).unit().to_bits())
            .collect();
        assert!(first.len() > 4);
        let mut j = Jitter::from_name("front-door");
        for _ in 0..10_000 {
            let u = j.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        assert_ne!(
            Jitter::from_name("a").unit().to_bits(),
            Jitter::from_name("b").unit().to_bits()
        );
    }
}
