//! Which frame to analyse with which task, and when: the per-camera task
//! scheduler and the cross-camera batcher.
//!
//! Both are pure state machines in the rumqttc style. Time comes in as
//! `Instant` arguments and nothing here sleeps, spawns or touches a frame: the
//! scheduler sees only frame sequence numbers, the batcher only jobs. The
//! daemon's loop calls [`Scheduler::poll`] and [`Batcher::pop_batch`] at the
//! instants returned by their `next_deadline` methods. The rules are written
//! down in `docs/SCHEDULING.md`.

pub mod backoff;
mod batch;
#[allow(clippy::module_inception)]
mod schedule;
pub mod task;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use backoff::BackoffChange;
pub use batch::{BatchCounters, BatchStats, Batcher};
pub use schedule::{ScheduleCounters, Scheduler};

pub use task::{Region, Task, TaskArgument, TaskInput, UnknownTask};

/// The longest period a task may have (the configuration's limit too).
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// `at + d`, or `at` itself if that is beyond what `Instant` can hold (an
/// absurd period then means "due now", never a panic).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or(at)
}

/// A camera, by its configured id.
pub type CameraId = Arc<str>;

/// One scheduled task of one camera: the unit of rate, of counting and of
/// stale-skipping (at most one job per key waits at any time).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    pub camera: CameraId,
    pub task: Task,
    pub argument: TaskArgument,
}

/// A task of a camera as the scheduler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSchedule {
    pub task: Task,
    pub argument: TaskArgument,
    /// The period; never zero.
    pub every: Duration,
    /// A disabled task stays configured (its settings, its place in the
    /// list, the stream's frame rate) but is never scheduled.
    pub enabled: bool,
    /// Every due tick, or only when the picture changed (scene-change
    /// gating, docs/SCHEDULING.md).
    pub when: When,
}

/// Whether a due task runs on a still picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum When {
    /// Every due tick, whatever the picture (the default).
    #[default]
    Always,
    /// Only on a frame its camera's change detector counted a change in
    /// since the task's last run — and, on a still scene, again once
    /// `max_interval` passed since that run (a heartbeat). Ticks a task
    /// spends waiting for a change are counted (`unchanged`).
    Changed { max_interval: Duration },
}

/// One unit of inference: run `key.task` on frame `frame_seq` of
/// `key.camera`. `F` is what the daemon attaches to carry the frame itself
/// (e.g. an `Arc` of it) through the batcher; the scheduler makes `Job<()>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job<F = ()> {
    /// Unique per scheduler, increasing; names the job in logs and tests.
    pub id: u64,
    pub key: Arc<JobKey>,
    /// The frame to analyse: the newest of its camera when the job was made.
    pub frame_seq: u64,
    /// When that frame reached the scheduler.
    pub frame_at: Instant,
    /// When the task became due (may be before the frame arrived).
    pub due: Instant,
    /// When the job started waiting in the batcher; a job that replaces an
    /// overtaken one inherits its predecessor's time and place.
    pub enqueued: Instant,
    /// The frame, once attached with [`Job::with_frame`].
    pub frame: F,
}

impl Job<()> {
    /// Attaches the frame `frame_seq` names. Bind the frame when the job is
    /// made, not at dispatch: the scheduler has recorded this frame as
    /// analysed, so running a newer one instead could analyse that one twice.
    pub fn with_frame<F>(self, frame: F) -> Job<F> {
        Job {
            id: self.id,
            key: self.key,
            frame_seq: self.frame_seq,
            frame_at: self.frame_at,
            due: self.due,
            enqueued: self.enqueued,
            frame,
        }
    }
}

/// Misuse of the scheduler or batcher by the daemon (configuration is
/// checked before it gets here, so these mean a wiring bug or a race with a
/// reload).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("camera {camera:?} is not scheduled; allowed: a camera of the current configuration")]
    UnknownCamera { camera: String },
    #[error("camera {camera:?} task {task}: period {every:?} is outside the allowed range; allowed: above 0 and at most 365 days")]
    BadPeriod {
        camera: String,
        task: Task,
        every: Duration,
    },
    #[error("max_batch is 0; allowed: 1..=64")]
    ZeroBatch,
}
