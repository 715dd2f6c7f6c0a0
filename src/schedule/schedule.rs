//! The per-camera task scheduler.
//!
//! Every (camera, task) has a grid of due instants `start + k·every`. When a
//! tick passes, the task owes a run; the run takes the camera's newest frame,
//! but only a frame the task has not analysed yet. With no new frame the debt
//! stays open and is paid as soon as one arrives, so a stalled camera produces
//! no duplicate results and a recovered one resumes at once. Ticks that pass
//! while a debt is open, or while the loop was late, are merged into it and
//! counted (`coalesced`): the scheduler never bursts to catch up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::{BackoffChange, TaskBackoff};
use super::{later, CameraId, Job, JobKey, ScheduleError, TaskSchedule, When, MAX_PERIOD};

/// Counts of one (camera, task). `ticks == emitted + coalesced + unchanged
/// + owed` where owed is 1 while a tick waits for a new (or, with
/// `when = "changed"`, a changed) frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleCounters {
    /// Due instants that passed.
    pub ticks: u64,
    /// Jobs made.
    pub emitted: u64,
    /// Ticks merged into an earlier one: no new frame yet, or a late poll.
    pub coalesced: u64,
    /// Ticks that passed while a `when = "changed"` task waited for the
    /// picture to change: model runs saved by the gating.
    pub unchanged: u64,
}

/// The newest frame of a camera. `arrival` counts frames as the scheduler saw
/// them, so a pipeline restart that resets sequence numbers cannot make a new
/// frame look old.
#[derive(Clone, Copy, Debug)]
struct NewestFrame {
    seq: u64,
    at: Instant,
    arrival: u64,
    /// The camera's change count at this frame (`None`: no detector, every
    /// frame counts as changed).
    changes: Option<u64>,
}

#[derive(Debug)]
struct Slot {
    key: Arc<JobKey>,
    every: Duration,
    next_tick: Instant,
    /// The due instant of the oldest tick not yet served.
    owed: Option<Instant>,
    /// `arrival` of the frame the last job of this slot took.
    last_arrival: Option<u64>,
    counters: ScheduleCounters,
    /// Failures in a row and the pause they impose (see `backoff`).
    backoff: TaskBackoff,
    when: When,
    /// The change count of the frame the last job took.
    last_changes: Option<u64>,
    /// When the last job was made (the heartbeat of `when = "changed"`).
    last_run: Option<Instant>,
    /// The last poll found the debt open only for want of a change.
    gated: bool,
}

impl Slot {
    fn new(key: Arc<JobKey>, every: Duration, when: When, now: Instant) -> Slot {
        Slot {
            when,
            last_changes: None,
            last_run: None,
            gated: false,
            key,
            every,
            // A new task is due at once: its first run is on the first frame.
            next_tick: now,
            owed: None,
            last_arrival: None,
            counters: ScheduleCounters::default(),
            backoff: TaskBackoff::default(),
        }
    }

    /// Moves past every tick at or before `now` and records the debt.
    fn advance(&mut self, now: Instant) {
        if self.next_tick > now {
            return;
        }
        let every_ns = self.every.as_nanos().max(1);
        let passed = (now - self.next_tick).as_nanos() / every_ns + 1;
        let passed_u64 = u64::try_from(passed).unwrap_or(u64::MAX);
        self.counters.ticks = self.counters.ticks.saturating_add(passed_u64);
        match self.owed {
            Some(_) if self.gated => {
                self.counters.unchanged = self.counters.unchanged.saturating_add(passed_u64)
            }
            Some(_) => self.counters.coalesced = self.counters.coalesced.saturating_add(passed_u64),
            None => {
                self.owed = Some(self.next_tick);
                self.counters.coalesced = self.counters.coalesced.saturating_add(passed_u64 - 1);
            }
        }
        let step = u64::try_from(passed.saturating_mul(every_ns)).unwrap_or(u64::MAX);
        self.next_tick = self
            .next_tick
            .checked_add(Duration::from_nanos(step))
            .unwrap_or_else(|| later(now, self.every));
    }
}

#[derive(Debug)]
struct CameraSlots {
    newest: Option<NewestFrame>,
    arrivals: u64,
    slots: Vec<Slot>,
}

/// Decides which tasks run on which frames. See the module documentation.
#[derive(Debug, Default)]
pub struct Scheduler {
    cameras: BTreeMap<CameraId, CameraSlots>,
    next_job_id: u64,
}

fn check(camera: &CameraId, tasks: &[TaskSchedule]) -> Result<(), ScheduleError> {
    match tasks
        .iter()
        .find(|t| t.every.is_zero() || t.every > MAX_PERIOD)
    {
        Some(t) => Err(ScheduleError::BadPeriod {
            camera: camera.to_string(),
            task: t.task,
            every: t.every,
        }),
        None => Ok(()),
    }
}

impl Scheduler {
    /// A scheduler for these cameras; every task is due at `now`.
    pub fn new(
        cameras: impl IntoIterator<Item = (CameraId, Vec<TaskSchedule>)>,
        now: Instant,
    ) -> Result<Scheduler, ScheduleError> {
        let mut scheduler = Scheduler::default();
        for (camera, tasks) in cameras {
            scheduler.set_camera(camera, &tasks, now)?;
        }
        Ok(scheduler)
    }

    /// Adds a camera or replaces its tasks (a reload). A task that is kept
    /// keeps its counters and the frame it last analysed; its next tick is
    /// not pushed later than one new period from `now`.
    pub fn set_camera(
        &mut self,
        camera: CameraId,
        tasks: &[TaskSchedule],
        now: Instant,
    ) -> Result<(), ScheduleError> {
        check(&camera, tasks)?;
        let previous = self.cameras.remove(&camera);
        let (newest, arrivals, mut old_slots) = match previous {
            Some(c) => (c.newest, c.arrivals, c.slots),
            None => (None, 0, Vec::new()),
        };
        let slots = tasks
            .iter()
            .filter(|t| t.enabled)
            .map(|t| {
                let key = Arc::new(JobKey {
                    camera: camera.clone(),
                    task: t.task,
                    argument: t.argument.clone(),
                });
                match old_slots.iter().position(|s| s.key == key) {
                    Some(i) => {
                        let mut slot = old_slots.swap_remove(i);
                        slot.every = t.every;
                        slot.next_tick = slot.next_tick.min(later(now, t.every));
                        if slot.when != t.when {
                            slot.when = t.when;
                            slot.gated = false;
                        }
                        slot
                    }
                    None => Slot::new(key, t.every, t.when, now),
                }
            })
            .collect();
        self.cameras.insert(
            camera,
            CameraSlots {
                newest,
                arrivals,
                slots,
            },
        );
        Ok(())
    }

    /// Forgets a camera (removed or disabled by a reload).
    pub fn remove_camera(&mut self, camera: &str) -> bool {
        self.cameras.remove(camera).is_some()
    }

    /// Records that `camera` has a new newest frame. Returns whether a task
    /// of the camera was waiting for one, i.e. whether to [`poll`] now.
    ///
    /// [`poll`]: Scheduler::poll
    pub fn on_frame(
        &mut self,
        camera: &str,
        seq: u64,
        now: Instant,
    ) -> Result<bool, ScheduleError> {
        self.on_frame_changes(camera, seq, None, now)
    }

    /// [`Scheduler::on_frame`] with the camera's change count at this frame
    /// (the detector's `changes()`), which `when = "changed"` tasks run on.
    pub fn on_frame_changes(
        &mut self,
        camera: &str,
        seq: u64,
        changes: Option<u64>,
        now: Instant,
    ) -> Result<bool, ScheduleError> {
        let entry = self
            .cameras
            .get_mut(camera)
            .ok_or_else(|| ScheduleError::UnknownCamera {
                camera: camera.to_string(),
            })?;
        entry.arrivals += 1;
        entry.newest = Some(NewestFrame {
            seq,
            at: now,
            arrival: entry.arrivals,
            changes,
        });
        Ok(entry.slots.iter().any(|s| s.owed.is_some()))
    }

    /// The jobs due at `now`, one per (camera, task) at most, each on the
    /// newest frame of its camera.
    pub fn poll(&mut self, now: Instant) -> Vec<Job> {
        let mut jobs = Vec::new();
        for entry in self.cameras.values_mut() {
            for slot in &mut entry.slots {
                slot.advance(now);
                // A backed-off task keeps its debt (ticks coalesce into it)
                // and is served on the newest frame when the pause ends.
                if slot.backoff.blocks(now) {
                    continue;
                }
                let (Some(due), Some(frame)) = (slot.owed, entry.newest) else {
                    continue;
                };
                if slot.last_arrival.is_some_and(|seen| seen >= frame.arrival) {
                    continue;
                }
                if let When::Changed { max_interval } = slot.when {
                    let changed = match (slot.last_changes, frame.changes) {
                        (Some(seen), Some(now_changes)) => now_changes > seen,
                        _ => true,
                    };
                    let heartbeat = slot
                        .last_run
                        .is_none_or(|at| now.saturating_duration_since(at) >= max_interval);
                    if !changed && !heartbeat {
                        slot.gated = true;
                        continue;
                    }
                }
                slot.gated = false;
                slot.owed = None;
                slot.last_arrival = Some(frame.arrival);
                slot.last_changes = frame.changes;
                slot.last_run = Some(now);
                slot.counters.emitted += 1;
                self.next_job_id += 1;
                jobs.push(Job {
                    id: self.next_job_id,
                    key: slot.key.clone(),
                    frame_seq: frame.seq,
                    frame_at: frame.at,
                    due,
                    enqueued: now,
                    frame: (),
                });
            }
        }
        jobs
    }

    /// The next instant a task becomes due. Tasks waiting for a frame are not
    /// in it: [`Scheduler::on_frame`] says when to poll for them.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.cameras
            .values()
            .flat_map(|c| {
                c.slots.iter().flat_map(|s| {
                    // A task waiting for a change is due again at its
                    // heartbeat.
                    let heartbeat = match (s.gated, s.when, s.last_run) {
                        (true, When::Changed { max_interval }, Some(at)) => {
                            Some(later(at, max_interval))
                        }
                        _ => None,
                    };
                    std::iter::once(s.next_tick)
                        .chain(s.backoff.until())
                        .chain(heartbeat)
                })
            })
            .min()
    }

    fn slot_mut(&mut self, key: &JobKey) -> Option<&mut Slot> {
        self.cameras
            .get_mut(&key.camera)?
            .slots
            .iter_mut()
            .find(|s| *s.key == *key)
    }

    /// Whether `key` is one of the scheduled tasks.
    pub fn has_task(&self, key: &JobKey) -> bool {
        self.cameras
            .get(&key.camera)
            .is_some_and(|c| c.slots.iter().any(|s| *s.key == *key))
    }

    /// A job of `key` produced no result: the task is paused, longer after
    /// each failure in a row (see the `backoff` module). `None` when the
    /// task is no longer scheduled (a reload removed it meanwhile).
    pub fn job_failed(&mut self, key: &JobKey, now: Instant) -> Option<BackoffChange> {
        self.slot_mut(key).map(|s| s.backoff.failed(now))
    }

    /// A job of `key` produced its result; `Some` when that ends a run of
    /// failures.
    pub fn job_succeeded(&mut self, key: &JobKey) -> Option<BackoffChange> {
        self.slot_mut(key).and_then(|s| s.backoff.succeeded())
    }

    /// Counters of every (camera, task), in key order.
    pub fn counters(&self) -> Vec<(Arc<JobKey>, ScheduleCounters)> {
        self.cameras
            .values()
            .flat_map(|c| c.slots.iter().map(|s| (s.key.clone(), s.counters)))
            .collect()
    }

    /// Whether a task of `camera` owes a run and waits for a new frame.
    pub fn is_waiting_for_frame(&self, camera: &str) -> bool {
        self.cameras.get(camera).is_some_and(|c| {
            c.slots.iter().any(|s| {
                s.owed.is_some()
                    && match (c.newest, s.last_arrival) {
                        (None, _) => true,
                        (Some(frame), Some(seen)) => seen >= frame.arrival,
                        (Some(_), None) => false,
                    }
            })
        })
    }
}

#[cfg(test)]
mod gating_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Task, TaskArgument};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn task(task: Task, every: u64) -> TaskSchedule {
        TaskSchedule {
            task,
            argument: TaskArgument::None,
            every: ms(every),
            enabled: true,
            when: When::Always,
        }
    }

    fn one_camera(t0: Instant) -> Scheduler {
        Scheduler::new(
            [(
                CameraId::from("cam"),
                vec![task(Task::ObjectDetection, 500), task(Task::Caption, 2000)],
            )],
            t0,
        )
        .expect("valid schedule")
    }

    fn tasks_of(jobs: &[Job]) -> Vec<(Task, u64)> {
        jobs.iter().map(|j| (j.key.task, j.frame_seq)).collect()
    }

    #[test]
    fn a_disabled_task_is_never_scheduled_and_runs_again_when_enabled() {
        let t0 = Instant::now();
        let mut caption = task(Task::Caption, 1000);
        caption.enabled = false;
        let cam = CameraId::from("cam");
        let mut s = Scheduler::new(
            [(
                cam.clone(),
                vec![task(Task::ObjectDetection, 500), caption.clone()],
            )],
            t0,
        )
        .expect("valid");
        s.on_frame("cam", 1, t0).expect("known camera");
        assert_eq!(tasks_of(&s.poll(t0)), [(Task::ObjectDetection, 1)]);
        caption.enabled = true;
        s.set_camera(
            cam,
            &[task(Task::ObjectDetection, 500), caption],
            t0 + ms(100),
        )
        .expect("valid");
        s.on_frame("cam", 2, t0 + ms(100)).expect("known camera");
        assert_eq!(
            tasks_of(&s.poll(t0 + ms(100))),
            [(Task::Caption, 2)],
            "enabled again: due at once, the kept task keeps its rhythm"
        );
    }

    #[test]
    fn tasks_run_on_the_newest_frame_at_their_own_period() {
        let t0 = Instant::now();
        let mut s = one_camera(t0);
        assert!(s.poll(t0).is_empty(), "no frame yet");
        assert!(s.on_frame("cam", 1, t0 + ms(10)).expect("known camera"));
        let jobs = s.poll(t0 + ms(10));
        assert_eq!(
            tasks_of(&jobs),
            [(Task::ObjectDetection, 1), (Task::Caption, 1)]
        );
        assert_eq!(
            jobs[0].due, t0,
            "due when the tick passed, not when the frame came"
        );
        assert_eq!(s.next_deadline(), Some(t0 + ms(500)));
        for seq in 2..=5 {
            s.on_frame("cam", seq, t0 + ms(100 * seq))
                .expect("known camera");
        }
        assert!(s.poll(t0 + ms(499)).is_empty());
        assert_eq!(
            tasks_of(&s.poll(t0 + ms(500))),
            [(Task::ObjectDetection, 5)]
        );
        s.on_frame("cam", 6, t0 + ms(1000)).expect("known camera");
        assert_eq!(
            tasks_of(&s.poll(t0 + ms(1000))),
            [(Task::ObjectDetection, 6)]
        );
        s.on_frame("cam", 7, t0 + ms(1990)).expect("known camera");
        assert_eq!(
            tasks_of(&s.poll(t0 + ms(2000))),
            [(Task::ObjectDetection, 7), (Task::Caption, 7)]
        );
    }

    #[test]
    fn a_failing_task_is_paused_longer_per_failure_and_its_neighbour_is_not() {
        use crate::schedule::backoff::{BackoffChange, FIRST_DELAY};
        let t0 = Instant::now();
        let mut s = one_camera(t0);
        s.on_frame("cam", 1, t0).expect("known camera");
        let jobs = s.poll(t0);
        let od = jobs[0].key.clone();
        assert_eq!(od.task, Task::ObjectDetection);
        assert_eq!(
            s.job_failed(&od, t0),
            Some(BackoffChange::BackedOff {
                failures: 1,
                retry_in: FIRST_DELAY
            })
        );
        assert_eq!(s.job_succeeded(&jobs[1].key), None);
        // New frames every 100 ms. <OD> (every 500 ms) fails once more on
        // its first retry, then succeeds; <CAPTION> (every 2 s) keeps its
        // period throughout.
        let (mut od_runs, mut caption_runs) = (Vec::new(), Vec::new());
        for step in 1..=70u64 {
            let now = t0 + ms(100 * step);
            s.on_frame("cam", 1 + step, now).expect("known camera");
            for job in s.poll(now) {
                if job.key.task == Task::Caption {
                    caption_runs.push(100 * step);
                    continue;
                }
                od_runs.push(100 * step);
                let change = if od_runs.len() == 1 {
                    s.job_failed(&job.key, now)
                } else {
                    s.job_succeeded(&job.key)
                };
                let want = match od_runs.len() {
                    1 => Some(BackoffChange::BackedOff {
                        failures: 2,
                        retry_in: FIRST_DELAY * 2,
                    }),
                    2 => Some(BackoffChange::Recovered { failures: 2 }),
                    _ => None,
                };
                assert_eq!(change, want, "<OD> run {}", od_runs.len());
            }
        }
        // Retried when the 2 s pause ended, then when the 4 s pause ended,
        // then at its period again.
        assert_eq!(od_runs, [2000, 6000, 6500, 7000]);
        assert_eq!(caption_runs, [2000, 4000, 6000]);
        let od_counters = s
            .counters()
            .into_iter()
            .find(|(k, _)| k.task == Task::ObjectDetection)
            .expect("<OD> counters")
            .1;
        assert_eq!(od_counters.emitted, 5);
        let gone = JobKey {
            camera: "gone".into(),
            task: Task::Ocr,
            argument: TaskArgument::None,
        };
        assert_eq!(s.job_failed(&gone, t0), None, "a task no longer scheduled");
    }

    #[test]
    fn a_paused_task_that_owes_a_run_is_due_when_its_pause_ends() {
        use crate::schedule::backoff::FIRST_DELAY;
        let t0 = Instant::now();
        let mut s = Scheduler::new([(CameraId::from("cam"), vec![task(Task::Ocr, 3000)])], t0)
            .expect("valid schedule");
        s.on_frame("cam", 1, t0).expect("known camera");
        let key = s.poll(t0)[0].key.clone();
        s.job_failed(&key, t0);
        // Nothing owed during the first pause: the next tick is the deadline.
        assert_eq!(s.next_deadline(), Some(t0 + FIRST_DELAY));
        assert!(s.poll(t0 + FIRST_DELAY).is_empty());
        assert_eq!(s.next_deadline(), Some(t0 + ms(3000)));
        s.on_frame("cam", 2, t0 + ms(2500)).expect("known camera");
        let job = s.poll(t0 + ms(3000));
        assert_eq!(tasks_of(&job), [(Task::Ocr, 2)]);
        s.job_failed(&key, t0 + ms(3000));
        // The tick at 6 s is owed but paused until 7 s: due then, not at 9 s.
        s.on_frame("cam", 3, t0 + ms(5000)).expect("known camera");
        assert!(s.poll(t0 + ms(6000)).is_empty());
        assert_eq!(s.next_deadline(), Some(t0 + ms(7000)));
        assert_eq!(tasks_of(&s.poll(t0 + ms(7000))), [(Task::Ocr, 3)]);
    }

    #[test]
    fn a_stalled_camera_produces_no_duplicates_and_resumes_on_the_next_frame() {
        let t0 = Instant::now();
        let mut s = one_camera(t0);
        s.on_frame("cam", 1, t0).expect("known camera");
        assert_eq!(s.poll(t0).len(), 2);
        // The camera stalls for 5 s: ten <OD> ticks and two <CAPTION> ticks pass.
        for step in 1..=10 {
            assert!(s.poll(t0 + ms(500 * step)).is_empty(), "same frame again");
        }
        assert!(s.is_waiting_for_frame("cam"));
        assert_eq!(s.next_deadline(), Some(t0 + ms(5500)), "no busy loop");
        assert!(s.on_frame("cam", 2, t0 + ms(5200)).expect("known camera"));
        let jobs = s.poll(t0 + ms(5200));
        assert_eq!(
            tasks_of(&jobs),
            [(Task::ObjectDetection, 2), (Task::Caption, 2)]
        );
        assert_eq!(jobs[0].due, t0 + ms(500), "the oldest unserved tick");
        let counters: Vec<_> = s.counters().into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            counters[0],
            ScheduleCounters {
                ticks: 11,
                emitted: 2,
                coalesced: 9,
                unchanged: 0,
            }
        );
        assert_eq!(
            counters[1],
            ScheduleCounters {
                ticks: 3,
                emitted: 2,
                coalesced: 1,
                unchanged: 0,
            }
        );
    }

    #[test]
    fn a_late_poll_does_not_burst_to_catch_up() {
        let t0 = Instant::now();
        let mut s = one_camera(t0);
        s.on_frame("cam", 1, t0).expect("known camera");
        s.poll(t0);
        s.on_frame("cam", 2, t0 + ms(3100)).expect("known camera");
        let jobs = s.poll(t0 + ms(3100));
        assert_eq!(jobs.len(), 2, "one job per task however late");
        assert_eq!(s.next_deadline(), Some(t0 + ms(3500)), "stays on the grid");
    }

    #[test]
    fn restarted_sequence_numbers_still_count_as_new_frames() {
        let t0 = Instant::now();
        let mut s = one_camera(t0);
        s.on_frame("cam", 900, t0).expect("known camera");
        s.poll(t0);
        s.on_frame("cam", 1, t0 + ms(400)).expect("known camera");
        assert_eq!(
            tasks_of(&s.poll(t0 + ms(500))),
            [(Task::ObjectDetection, 1)]
        );
    }

    #[test]
    fn reload_keeps_kept_tasks_and_adds_new_ones() {
        let t0 = Instant::now();
        let mut s = one_camera(t0);
        s.on_frame("cam", 1, t0).expect("known camera");
        s.poll(t0);
        s.set_camera(
            CameraId::from("cam"),
            &[task(Task::ObjectDetection, 250), task(Task::Ocr, 1000)],
            t0 + ms(100),
        )
        .expect("valid schedule");
        assert_eq!(
            s.next_deadline(),
            Some(t0 + ms(100)),
            "<OCR> is new: due now"
        );
        let jobs = s.poll(t0 + ms(100));
        assert_eq!(
            tasks_of(&jobs),
            [(Task::Ocr, 1)],
            "<OD> already saw frame 1"
        );
        s.on_frame("cam", 2, t0 + ms(300)).expect("known camera");
        assert_eq!(
            tasks_of(&s.poll(t0 + ms(350))),
            [(Task::ObjectDetection, 2)]
        );
        assert!(s.remove_camera("cam"));
        assert_eq!(
            s.on_frame("cam", 3, t0),
            Err(ScheduleError::UnknownCamera {
                camera: "cam".into()
            })
        );
    }

    #[test]
    fn zero_and_enormous_periods_are_refused() {
        for every in [Duration::ZERO, MAX_PERIOD + ms(1), Duration::MAX] {
            let err = Scheduler::new(
                [(
                    CameraId::from("cam"),
                    vec![TaskSchedule {
                        task: Task::Ocr,
                        argument: TaskArgument::None,
                        every,
                        enabled: true,
                        when: crate::schedule::When::Always,
                    }],
                )],
                Instant::now(),
            )
            .err();
            assert_eq!(
                err,
                Some(ScheduleError::BadPeriod {
                    camera: "cam".into(),
                    task: Task::Ocr,
                    every
                })
            );
        }
    }

    proptest::proptest! {
        /// Random frame arrivals and polls: a task never analyses a frame
        /// twice, never runs more often than its period allows, and every
        /// tick is accounted for as a job, a merge or an open debt.
        #[test]
        fn ticks_are_accounted_for_and_frames_never_repeat(
            events in proptest::collection::vec((0u64..400, proptest::bool::ANY), 1..150),
            periods in proptest::collection::vec(1u64..1000, 1..4),
        ) {
            let t0 = Instant::now();
            let tasks: Vec<TaskSchedule> = periods
                .iter()
                .zip([Task::ObjectDetection, Task::Caption, Task::Ocr])
                .map(|(every, t)| task(t, *every))
                .collect();
            let mut s = Scheduler::new([(CameraId::from("cam"), tasks.clone())], t0)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let mut now = t0;
            let mut seq = 0u64;
            let mut last_frame: std::collections::HashMap<Task, u64> = Default::default();
            let mut runs: std::collections::HashMap<Task, u64> = Default::default();
            for (dt, frame) in events {
                now += ms(dt);
                if frame {
                    seq += 1;
                    s.on_frame("cam", seq, now).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
                }
                for job in s.poll(now) {
                    proptest::prop_assert!(job.due <= now);
                    proptest::prop_assert_eq!(job.frame_seq, seq, "the newest frame");
                    let previous = last_frame.insert(job.key.task, job.frame_seq);
                    proptest::prop_assert!(previous.is_none_or(|p| p < job.frame_seq));
                    *runs.entry(job.key.task).or_default() += 1;
                }
                if let Some(deadline) = s.next_deadline() {
                    proptest::prop_assert!(deadline > now, "nothing due is left behind");
                }
            }
            let elapsed = now - t0;
            for (key, counters) in s.counters() {
                let every = tasks.iter().find(|t| t.task == key.task).map(|t| t.every).unwrap_or(ms(1));
                let most = (elapsed.as_nanos() / every.as_nanos()) as u64 + 1;
                proptest::prop_assert_eq!(counters.ticks, most, "one tick per period");
                let emitted = runs.get(&key.task).copied().unwrap_or(0);
                proptest::prop_assert_eq!(counters.emitted, emitted);
                let owed = counters.ticks - counters.emitted - counters.coalesced;
                proptest::prop_assert!(owed <= 1);
            }
        }
    }
}
