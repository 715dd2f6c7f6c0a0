//! The supervisor's decisions as pure logic: no GStreamer, no threads, no
//! clock of its own. Every input carries `now`, and every random choice
//! (backoff jitter) arrives as a number in `[0, 1)`, so tests drive it with a
//! fake clock and fixed jitter.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::settings::MaxAttempts;
pub use crate::backoff::BackoffPolicy;

// As the supervisor keeps it and as it is published on
// `{prefix}/{camera}/status`: the doc comments are the descriptions in
// docs/schema/camera_status.schema.json.
/// State of a camera's pipeline.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// The pipeline is being built or has not delivered a frame yet.
    Starting,
    /// Frames arrive.
    Streaming,
    /// No frame for longer than the watchdog allows.
    Stalled,
    /// The pipeline is being rebuilt after an error or stall.
    Reconnecting,
    /// Gave up (e.g. the retry limit was reached); needs an operator.
    Failed,
    /// A `file://` camera played its file to the end and does not loop;
    /// nothing more will come until it is restarted.
    Ended,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Starting => "starting",
            CameraState::Streaming => "streaming",
            CameraState::Stalled => "stalled",
            CameraState::Reconnecting => "reconnecting",
            CameraState::Failed => "failed",
            CameraState::Ended => "ended",
        }
    }
}

/// The timing part of a camera's settings that the state machine needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SupervisionPolicy {
    pub watchdog: Duration,
    pub startup_timeout: Duration,
    pub backoff: BackoffPolicy,
    pub max_attempts: MaxAttempts,
}

/// What the shell must do after an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Nothing,
    /// Build a pipeline and set it playing.
    Build,
    /// Stop and drop the pipeline.
    TearDown,
}

/// A change the rest of the daemon hears about. `from == to` happens for
/// `reconnecting`: each new attempt is published with its number.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub from: CameraState,
    pub to: CameraState,
    /// Consecutive failed attempts so far (0 once frames flow).
    pub attempt: u32,
    /// Why, for every state but `streaming`.
    pub reason: Option<String>,
    /// How long until the next attempt, when one is planned.
    pub retry_in: Option<Duration>,
}

/// One camera's supervision state.
#[derive(Debug)]
pub struct CameraMachine {
    policy: SupervisionPolicy,
    state: CameraState,
    attempt: u32,
    pipeline_up: bool,
    builds: u64,
    built_at: Instant,
    last_frame: Option<Instant>,
    retry_at: Option<Instant>,
    transitions: Vec<Transition>,
}

impl CameraMachine {
    /// A camera that is about to build its first pipeline (at the next tick).
    pub fn new(policy: SupervisionPolicy, now: Instant) -> Self {
        CameraMachine {
            policy,
            state: CameraState::Starting,
            attempt: 0,
            pipeline_up: false,
            builds: 0,
            built_at: now,
            last_frame: None,
            retry_at: Some(now),
            transitions: Vec::new(),
        }
    }

    pub fn state(&self) -> CameraState {
        self.state
    }

    /// Consecutive failed attempts.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Pipelines built after the first one.
    pub fn reconnects(&self) -> u64 {
        self.builds.saturating_sub(1)
    }

    /// When the next build is due, if one is planned.
    pub fn retry_at(&self) -> Option<Instant> {
        if self.pipeline_up {
            None
        } else {
            self.retry_at
        }
    }

    /// Transitions since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// Whether the camera is done for good: `failed` or `ended`.
    pub fn is_final(&self) -> bool {
        matches!(self.state, CameraState::Failed | CameraState::Ended)
    }

    /// A decoded frame arrived from the current pipeline.
    pub fn frame(&mut self, now: Instant) {
        if !self.pipeline_up || self.is_final() {
            return;
        }
        self.last_frame = Some(now);
        if self.state != CameraState::Streaming {
            self.attempt = 0;
            self.push(CameraState::Streaming, None, None);
        }
    }

    /// The current pipeline failed: an error or end-of-stream on the bus, or
    /// it could not be built. Returns `TearDown` unless nothing was running.
    pub fn failure(&mut self, now: Instant, reason: impl Into<String>, unit: f64) -> Command {
        if !self.pipeline_up || self.is_final() {
            return Command::Nothing;
        }
        self.fail(now, reason.into(), unit);
        Command::TearDown
    }

    /// A file that does not loop reached its end: `ended`, no retry, no
    /// watchdog. Returns `TearDown` unless nothing was running.
    pub fn ended(&mut self) -> Command {
        if !self.pipeline_up || self.is_final() {
            return Command::Nothing;
        }
        self.pipeline_up = false;
        self.last_frame = None;
        self.retry_at = None;
        self.push(
            CameraState::Ended,
            Some("end of file (loop = false)".into()),
            None,
        );
        Command::TearDown
    }

    /// Time passes: the watchdog, the startup timeout and the backoff timer.
    pub fn tick(&mut self, now: Instant, unit: f64) -> Command {
        if self.is_final() {
            return Command::Nothing;
        }
        if !self.pipeline_up {
            return match self.retry_at {
                Some(at) if now >= at => {
                    self.pipeline_up = true;
                    self.builds += 1;
                    self.built_at = now;
                    self.last_frame = None;
                    self.retry_at = None;
                    Command::Build
                }
                _ => Command::Nothing,
            };
        }
        match self.last_frame {
            Some(last) if now.saturating_duration_since(last) >= self.policy.watchdog => {
                let silent = now.saturating_duration_since(last);
                let reason = format!(
                    "no frame for {:.1}s (watchdog {:.1}s)",
                    silent.as_secs_f64(),
                    self.policy.watchdog.as_secs_f64()
                );
                self.push(CameraState::Stalled, Some(reason.clone()), None);
                self.fail(now, reason, unit);
                Command::TearDown
            }
            None if now.saturating_duration_since(self.built_at) >= self.policy.startup_timeout => {
                let reason = format!(
                    "no frame within {:.1}s of starting the pipeline",
                    self.policy.startup_timeout.as_secs_f64()
                );
                self.fail(now, reason, unit);
                Command::TearDown
            }
            _ => Command::Nothing,
        }
    }

    fn fail(&mut self, now: Instant, reason: String, unit: f64) {
        self.pipeline_up = false;
        self.last_frame = None;
        self.attempt = self.attempt.saturating_add(1);
        let exhausted = match self.policy.max_attempts {
            MaxAttempts::Unlimited => false,
            MaxAttempts::Limit(n) => self.attempt >= n,
        };
        if exhausted {
            self.retry_at = None;
            self.push(CameraState::Failed, Some(reason), None);
        } else {
            let delay = self.policy.backoff.delay(self.attempt, unit);
            self.retry_at = Some(now + delay);
            self.push(CameraState::Reconnecting, Some(reason), Some(delay));
        }
    }

    fn push(&mut self, to: CameraState, reason: Option<String>, retry_in: Option<Duration>) {
        self.transitions.push(Transition {
            from: self.state,
            to,
            attempt: self.attempt,
            reason,
            retry_in,
        });
        self.state = to;
    }
}

/// Drops decoded frames down to the analysis rate, by presentation time, so
/// that frames nobody will analyse are never colour-converted. Works for
/// fractional rates (0.2 fps = one frame every 5 s), which videorate's
/// integer `max-rate` cannot express.
#[derive(Clone, Debug)]
pub struct AnalysisRate {
    interval: Option<Duration>,
    next_due: Option<Duration>,
}

impl AnalysisRate {
    /// `None` lets every frame through.
    pub fn new(fps: Option<f64>) -> Self {
        AnalysisRate {
            interval: fps
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(|f| Duration::from_secs_f64(1.0 / f)),
            next_due: None,
        }
    }

    /// Whether the frame at stream time `pts` is handed over. Frames without
    /// a timestamp are all handed over (there is nothing to space them by).
    pub fn admit(&mut self, pts: Option<Duration>) -> bool {
        let (Some(interval), Some(t)) = (self.interval, pts) else {
            return true;
        };
        // Timestamps jitter by a few microseconds (RTP clock conversions); a
        // frame a tenth of an interval early still counts as on time, so a
        // 15 fps stream analysed at 5 fps yields exactly every third frame.
        let tolerance = interval / 10;
        match self.next_due {
            None => {
                self.next_due = Some(t + interval);
                true
            }
            Some(due) if t + tolerance < due => {
                if due > t + 2 * interval {
                    // Time went backwards (a file restarted): start over.
                    self.next_due = Some(t + interval);
                    true
                } else {
                    false
                }
            }
            Some(due) => {
                self.next_due = Some(if t >= due + interval {
                    t + interval
                } else {
                    due + interval
                });
                true
            }
        }
    }
}

/// Decides, in front of the decoder, whether delta frames may be skipped.
///
/// When a stream's keyframes alone arrive at least as often as the analysis
/// rate needs, decoding only keyframes yields the frames that would have been
/// kept anyway for a fraction of the CPU (a 1 fps analysis of a camera with a
/// one-second GOP decodes 1 frame in 25 or 30). Skipping starts only after two
/// keyframes have shown the GOP length, and only while keyframes come at least
/// twice per watchdog period, so the watchdog never mistakes a long GOP for a
/// stall.
#[derive(Clone, Debug)]
pub struct KeyframeSkip {
    interval: Option<Duration>,
    watchdog: Duration,
    last_key: Option<Duration>,
    key_interval: Option<Duration>,
}

impl KeyframeSkip {
    /// `fps` is the analysis rate; `None` (every frame) never skips.
    pub fn new(fps: Option<f64>, watchdog: Duration) -> Self {
        KeyframeSkip {
            interval: fps
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(|f| Duration::from_secs_f64(1.0 / f)),
            watchdog,
            last_key: None,
            key_interval: None,
        }
    }

    /// Whether the encoded frame at `pts` goes to the decoder.
    pub fn admit(&mut self, pts: Option<Duration>, keyframe: bool) -> bool {
        if keyframe {
            self.key_interval = match (self.last_key, pts) {
                (Some(last), Some(t)) if t > last => Some(t - last),
                _ => None,
            };
            self.last_key = pts;
            return true;
        }
        !self.skipping()
    }

    /// Whether delta frames are being skipped now.
    pub fn skipping(&self) -> bool {
        match (self.interval, self.key_interval) {
            (Some(interval), Some(gop)) => {
                gop <= interval + interval / 10 && gop * 2 <= self.watchdog
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_JITTER: f64 = 0.5;

    #[test]
    fn a_file_that_ends_is_ended_and_never_retried_or_watched() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Unlimited), t0);
        assert_eq!(m.tick(t0, NO_JITTER), Command::Build);
        m.frame(t0 + ms(100));
        assert_eq!(m.ended(), Command::TearDown);
        assert_eq!(m.state(), CameraState::Ended);
        assert_eq!(m.retry_at(), None);
        // Long after the watchdog and any backoff: nothing happens.
        for n in 1..50 {
            assert_eq!(
                m.tick(t0 + Duration::from_secs(n), NO_JITTER),
                Command::Nothing
            );
        }
        assert_eq!(m.failure(t0, "late bus error", NO_JITTER), Command::Nothing);
        assert_eq!(m.ended(), Command::Nothing);
        let to: Vec<_> = m.take_transitions().iter().map(|t| t.to).collect();
        assert_eq!(to, [CameraState::Streaming, CameraState::Ended]);
        assert_eq!(m.reconnects(), 0);
    }

    fn policy(max_attempts: MaxAttempts) -> SupervisionPolicy {
        SupervisionPolicy {
            watchdog: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(5),
            backoff: BackoffPolicy {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(4),
                multiplier: 2.0,
                jitter: 0.2,
            },
            max_attempts,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn states(ts: &[Transition]) -> Vec<(CameraState, CameraState)> {
        ts.iter().map(|t| (t.from, t.to)).collect()
    }

    #[test]
    fn first_frame_makes_a_starting_camera_streaming() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Unlimited), t0);
        assert_eq!(m.state(), CameraState::Starting);
        assert_eq!(m.tick(t0, NO_JITTER), Command::Build);
        assert_eq!(m.tick(t0 + ms(100), NO_JITTER), Command::Nothing);
        m.frame(t0 + ms(300));
        assert_eq!(m.state(), CameraState::Streaming);
        assert_eq!(
            states(&m.take_transitions()),
            vec![(CameraState::Starting, CameraState::Streaming)]
        );
        assert_eq!(m.reconnects(), 0);
    }

    #[test]
    fn silence_past_the_watchdog_is_a_stall_then_a_reconnect() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Unlimited), t0);
        m.tick(t0, NO_JITTER);
        m.frame(t0 + ms(100));
        m.take_transitions();
        assert_eq!(m.tick(t0 + ms(2099), NO_JITTER), Command::Nothing);
        assert_eq!(m.tick(t0 + ms(2100), NO_JITTER), Command::TearDown);
        let ts = m.take_transitions();
        assert_eq!(
            states(&ts),
            vec![
                (CameraState::Streaming, CameraState::Stalled),
                (CameraState::Stalled, CameraState::Reconnecting)
            ]
        );
        assert!(ts[0].reason.as_deref().unwrap_or("").contains("watchdog"));
        assert_eq!(ts[1].retry_in, Some(ms(500)));
        assert_eq!(ts[1].attempt, 1);
        // Backoff: nothing before the retry time, a build at it.
        assert_eq!(m.tick(t0 + ms(2599), NO_JITTER), Command::Nothing);
        assert_eq!(m.tick(t0 + ms(2600), NO_JITTER), Command::Build);
        assert_eq!(m.state(), CameraState::Reconnecting);
        m.frame(t0 + ms(3000));
        assert_eq!(m.state(), CameraState::Streaming);
        assert_eq!(m.attempt(), 0);
        assert_eq!(m.reconnects(), 1);
    }

    #[test]
    fn errors_back_off_exponentially_and_fail_after_the_limit() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Limit(3)), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..3 {
            assert_eq!(m.tick(now, NO_JITTER), Command::Build);
            assert_eq!(
                m.failure(now, "connection refused", NO_JITTER),
                Command::TearDown
            );
            let ts = m.take_transitions();
            assert_eq!(ts.len(), 1);
            match ts[0].retry_in {
                Some(d) => {
                    delays.push(d);
                    now += d;
                }
                None => assert_eq!(ts[0].to, CameraState::Failed),
            }
        }
        assert_eq!(delays, vec![ms(500), ms(1000)]);
        assert_eq!(m.state(), CameraState::Failed);
        assert_eq!(m.attempt(), 3);
        // A failed camera stays failed and asks for nothing.
        assert_eq!(
            m.tick(now + Duration::from_secs(3600), NO_JITTER),
            Command::Nothing
        );
        assert_eq!(m.failure(now, "again", NO_JITTER), Command::Nothing);
        m.frame(now);
        assert_eq!(m.state(), CameraState::Failed);
    }

    #[test]
    fn a_pipeline_that_never_produces_a_frame_times_out() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Unlimited), t0);
        m.tick(t0, NO_JITTER);
        assert_eq!(m.tick(t0 + ms(4999), NO_JITTER), Command::Nothing);
        assert_eq!(m.tick(t0 + ms(5000), NO_JITTER), Command::TearDown);
        let ts = m.take_transitions();
        assert_eq!(
            states(&ts),
            vec![(CameraState::Starting, CameraState::Reconnecting)]
        );
        assert!(ts[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no frame within"));
    }

    #[test]
    fn each_retry_is_published_with_its_attempt_number() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Unlimited), t0);
        let mut now = t0;
        let mut attempts = Vec::new();
        for _ in 0..4 {
            m.tick(now, NO_JITTER);
            m.failure(now, "refused", NO_JITTER);
            for t in m.take_transitions() {
                attempts.push((t.to, t.attempt));
                now += t.retry_in.unwrap_or_default();
            }
        }
        assert_eq!(
            attempts,
            vec![
                (CameraState::Reconnecting, 1),
                (CameraState::Reconnecting, 2),
                (CameraState::Reconnecting, 3),
                (CameraState::Reconnecting, 4)
            ]
        );
        assert_eq!(m.reconnects(), 3);
    }

    #[test]
    fn a_stale_error_after_teardown_changes_nothing() {
        let t0 = Instant::now();
        let mut m = CameraMachine::new(policy(MaxAttempts::Unlimited), t0);
        m.tick(t0, NO_JITTER);
        m.failure(t0, "first", NO_JITTER);
        m.take_transitions();
        assert_eq!(m.failure(t0, "second", NO_JITTER), Command::Nothing);
        assert!(m.take_transitions().is_empty());
        assert_eq!(m.attempt(), 1);
    }

    #[test]
    fn analysis_rate_keeps_every_third_frame_of_15_fps_at_5_fps() {
        let mut rate = AnalysisRate::new(Some(5.0));
        // 15 fps with a few microseconds of timestamp jitter.
        let kept: Vec<usize> = (0..30)
            .filter(|i| {
                let jitter = if i % 2 == 0 { 3 } else { 0 };
                let pts = Duration::from_nanos(*i as u64 * 66_666_667) + ms(1)
                    - Duration::from_micros(jitter);
                rate.admit(Some(pts))
            })
            .collect();
        assert_eq!(kept, vec![0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
    }

    #[test]
    fn analysis_rate_handles_fractional_rates_gaps_and_restarts() {
        let mut rate = AnalysisRate::new(Some(0.5));
        let admitted: Vec<u64> = (0..10)
            .map(Duration::from_secs)
            .filter(|t| rate.admit(Some(*t)))
            .map(|t| t.as_secs())
            .collect();
        assert_eq!(admitted, vec![0, 2, 4, 6, 8]);
        // A gap longer than the interval re-anchors instead of bursting.
        assert!(rate.admit(Some(Duration::from_secs(30))));
        assert!(!rate.admit(Some(Duration::from_secs(31))));
        assert!(rate.admit(Some(Duration::from_secs(32))));
        // Time going backwards (a file restarting) starts over.
        assert!(rate.admit(Some(Duration::from_secs(0))));
        assert!(!rate.admit(Some(Duration::from_secs(1))));
        // No rate, or no timestamp: everything.
        let mut all = AnalysisRate::new(None);
        assert!(all.admit(Some(ms(1))) && all.admit(Some(ms(2))));
        let mut five = AnalysisRate::new(Some(5.0));
        assert!(five.admit(None) && five.admit(None));
    }

    #[test]
    fn keyframe_skip_engages_only_when_keyframes_cover_the_analysis_rate() {
        let watchdog = Duration::from_secs(5);
        // 25 fps, a keyframe every second; analysis at 1 fps.
        let mut skip = KeyframeSkip::new(Some(1.0), watchdog);
        let decoded: Vec<u64> = (0..100u64)
            .filter(|i| skip.admit(Some(ms(i * 40)), i % 25 == 0))
            .collect();
        // Until the second keyframe shows the GOP, everything is decoded.
        let mut expected: Vec<u64> = (0..=25).collect();
        expected.extend([50, 75]);
        assert_eq!(decoded, expected);
        assert!(skip.skipping());

        // At 5 fps one keyframe a second is not enough: decode everything.
        let mut skip = KeyframeSkip::new(Some(5.0), watchdog);
        assert_eq!(
            (0..100u64)
                .filter(|i| skip.admit(Some(ms(i * 40)), i % 25 == 0))
                .count(),
            100
        );

        // A GOP longer than half the watchdog is never skipped (the watchdog
        // would see a stall).
        let mut skip = KeyframeSkip::new(Some(0.2), watchdog);
        assert_eq!(
            (0..300u64)
                .filter(|i| skip.admit(Some(ms(i * 40)), i % 75 == 0))
                .count(),
            300
        );

        // No analysis rate: never skip.
        let mut skip = KeyframeSkip::new(None, watchdog);
        assert_eq!(
            (0..100u64)
                .filter(|i| skip.admit(Some(ms(i * 40)), i % 25 == 0))
                .count(),
            100
        );
    }

    #[test]
    fn keyframe_skip_resets_when_timestamps_restart() {
        let mut skip = KeyframeSkip::new(Some(1.0), Duration::from_secs(5));
        assert!(skip.admit(Some(ms(0)), true));
        assert!(skip.admit(Some(ms(1000)), true));
        assert!(!skip.admit(Some(ms(1040)), false));
        // A keyframe with an earlier timestamp (a rebuilt stream): unknown GOP.
        assert!(skip.admit(Some(ms(0)), true));
        assert!(skip.admit(Some(ms(40)), false));
    }
}
