use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::schedule::{Scheduler, TaskSchedule};
use crate::schedule::{Task, TaskArgument};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The tasks used to tell jobs of one camera apart.
const TASKS: [Task; 4] = [
    Task::ObjectDetection,
    Task::Caption,
    Task::Ocr,
    Task::RegionProposal,
];

/// Task `n` of a camera: the four tasks above, then open-vocabulary
/// detections of different objects, so a camera can have any number.
fn key(camera: &str, task: usize) -> Arc<JobKey> {
    let (task, argument) = match TASKS.get(task) {
        Some(t) => (*t, TaskArgument::None),
        None => (
            Task::OpenVocabularyDetection,
            TaskArgument::Text(Arc::from(format!("object {task}").as_str())),
        ),
    };
    Arc::new(JobKey {
        camera: CameraId::from(camera),
        task,
        argument,
    })
}

fn job(id: u64, camera: &str, task: usize, at: Instant) -> Job {
    Job {
        id,
        key: key(camera, task),
        frame_seq: id,
        frame_at: at,
        due: at,
        enqueued: at,
        frame: (),
    }
}

fn ids(batch: &[Job]) -> Vec<u64> {
    batch.iter().map(|j| j.id).collect()
}

#[test]
fn a_full_batch_leaves_at_once() {
    let t0 = Instant::now();
    let mut b = Batcher::new(3, ms(40)).expect("valid");
    for (i, camera) in ["a", "b", "c"].iter().enumerate() {
        assert!(b.pop_batch(t0).is_none());
        b.push(job(i as u64, camera, 0, t0), t0);
    }
    assert_eq!(b.next_deadline(), Some(t0), "full: ready now");
    assert_eq!(b.pop_batch(t0).as_deref().map(ids), Some(vec![0, 1, 2]));
    assert_eq!(b.stats().full_batches, 1);
    assert!(b.is_empty());
    assert_eq!(b.next_deadline(), None);
}

#[test]
fn a_partial_batch_leaves_after_max_wait_of_its_oldest_job() {
    let t0 = Instant::now();
    let mut b = Batcher::new(8, ms(40)).expect("valid");
    b.push(job(1, "a", 0, t0), t0);
    b.push(job(2, "b", 0, t0 + ms(30)), t0 + ms(30));
    assert_eq!(b.next_deadline(), Some(t0 + ms(40)));
    assert!(b.pop_batch(t0 + ms(39)).is_none());
    assert_eq!(
        b.pop_batch(t0 + ms(40)).as_deref().map(ids),
        Some(vec![1, 2])
    );
    assert_eq!(
        b.stats(),
        BatchStats {
            batches: 1,
            jobs: 2,
            full_batches: 0
        }
    );
}

#[test]
fn an_overtaken_job_is_skipped_and_its_successor_keeps_its_place() {
    let t0 = Instant::now();
    let mut b = Batcher::new(8, ms(100)).expect("valid");
    b.push(job(1, "a", 0, t0), t0);
    b.push(job(2, "a", 1, t0 + ms(10)), t0 + ms(10));
    let overtaken = b.push(job(3, "a", 0, t0 + ms(50)), t0 + ms(50));
    assert_eq!(overtaken.map(|j| j.id), Some(1));
    assert_eq!(b.len(), 2);
    assert_eq!(
        b.next_deadline(),
        Some(t0 + ms(100)),
        "waiting time inherited"
    );
    let batch = b.pop_batch(t0 + ms(100)).unwrap_or_default();
    assert_eq!(ids(&batch), [3, 2], "place inherited");
    assert_eq!(batch[0].enqueued, t0);
    assert_eq!(
        b.counters(&key("a", 0)),
        BatchCounters {
            enqueued: 2,
            dispatched: 1,
            stale_skipped: 1,
            cancelled: 0
        }
    );
}

#[test]
fn batches_go_round_robin_over_cameras_and_continue_where_they_stopped() {
    let t0 = Instant::now();
    let mut b = Batcher::new(2, ms(0)).expect("valid");
    // Camera a has four tasks waiting, b and c one each.
    let mut id = 0;
    for task in 0..4 {
        id += 1;
        b.push(job(id, "a", task, t0), t0);
    }
    b.push(job(10, "b", 0, t0), t0);
    b.push(job(20, "c", 0, t0), t0);
    let cameras = |batch: Option<Vec<Job>>| -> Vec<String> {
        batch
            .unwrap_or_default()
            .iter()
            .map(|j| j.key.camera.to_string())
            .collect()
    };
    assert_eq!(cameras(b.pop_batch(t0)), ["a", "b"]);
    assert_eq!(cameras(b.pop_batch(t0)), ["c", "a"]);
    // b gets new work; it is next after a in the cycle.
    b.push(job(11, "b", 1, t0), t0);
    assert_eq!(cameras(b.pop_batch(t0)), ["b", "a"]);
    assert_eq!(cameras(b.pop_batch(t0)), ["a"]);
    assert!(b.pop_batch(t0).is_none());
}

#[test]
fn different_tasks_share_a_batch() {
    let t0 = Instant::now();
    let mut b = Batcher::new(4, ms(0)).expect("valid");
    for task in 0..4 {
        b.push(job(task as u64, "a", task, t0), t0);
    }
    let tasks: Vec<Task> = b
        .pop_batch(t0)
        .unwrap_or_default()
        .iter()
        .map(|j| j.key.task)
        .collect();
    assert_eq!(tasks, TASKS);
}

#[test]
fn removing_a_camera_cancels_its_waiting_jobs() {
    let t0 = Instant::now();
    let mut b = Batcher::new(8, ms(40)).expect("valid");
    b.push(job(1, "a", 0, t0), t0);
    b.push(job(2, "b", 0, t0), t0);
    b.push(job(3, "a", 1, t0), t0);
    assert_eq!(ids(&b.remove_camera("a")), [1, 3]);
    assert_eq!(b.len(), 1);
    assert_eq!(b.counters(&key("a", 1)).cancelled, 1);
    assert_eq!(b.flush().as_deref().map(ids), Some(vec![2]));
}

#[test]
fn jobs_carry_their_frame_through_the_batcher() {
    let t0 = Instant::now();
    let mut b: Batcher<Arc<Vec<u8>>> = Batcher::new(2, ms(0)).expect("valid");
    let frame = Arc::new(vec![7u8; 12]);
    b.push(job(1, "a", 0, t0).with_frame(frame.clone()), t0);
    let newer = Arc::new(vec![9u8; 12]);
    let overtaken = b.push(job(2, "a", 0, t0).with_frame(newer.clone()), t0);
    assert_eq!(overtaken.map(|j| j.frame), Some(frame.clone()));
    assert_eq!(
        Arc::strong_count(&frame),
        1,
        "the overtaken frame is released"
    );
    let batch = b.pop_batch(t0).unwrap_or_default();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].frame, newer);
}

#[test]
fn a_cameras_jobs_on_one_frame_go_together_in_its_turn() {
    let t0 = Instant::now();
    let on_frame = |id: u64, camera: &str, task: usize, frame: u64| Job {
        frame_seq: frame,
        ..job(id, camera, task, t0)
    };
    let mut b = Batcher::new(2, ms(40)).expect("valid");
    // Camera a: three tasks due on frame 7; camera b: one on frame 3.
    b.push(on_frame(1, "a", 0, 7), t0);
    b.push(on_frame(2, "b", 0, 3), t0);
    b.push(on_frame(3, "a", 1, 7), t0);
    b.push(on_frame(4, "a", 2, 7), t0);
    // a's turn takes two of its frame-7 jobs (one vision pass); b is next.
    assert_eq!(ids(&b.pop_batch(t0).expect("full")), [1, 3]);
    assert_eq!(ids(&b.pop_batch(t0).expect("full")), [2, 4]);
    assert!(b.is_empty());

    // Jobs of one camera on different frames do not jump the queue.
    let mut b = Batcher::new(4, ms(40)).expect("valid");
    b.push(on_frame(1, "a", 0, 7), t0);
    b.push(on_frame(2, "a", 1, 8), t0);
    b.push(on_frame(3, "b", 0, 3), t0);
    b.push(on_frame(4, "a", 2, 7), t0);
    assert_eq!(ids(&b.pop_batch(t0).expect("full")), [1, 4, 3, 2]);
}

#[test]
fn zero_max_batch_is_refused() {
    assert_eq!(
        Batcher::<()>::new(0, ms(1)).err(),
        Some(ScheduleError::ZeroBatch)
    );
}

/// Scheduler and batcher under 4x overload: the queue stays at one job per
/// (camera, task), newer frames win, and the counters give the effective
/// rate.
#[test]
fn overload_keeps_the_queue_bounded_and_the_rate_measurable() {
    let t0 = Instant::now();
    let cameras: Vec<CameraId> = ["a", "b", "c", "d"]
        .into_iter()
        .map(CameraId::from)
        .collect();
    let every = ms(100);
    let mut scheduler = Scheduler::new(
        cameras.iter().map(|c| {
            (
                c.clone(),
                vec![
                    TaskSchedule {
                        task: Task::ObjectDetection,
                        argument: TaskArgument::None,
                        every,
                        enabled: true,
                        when: crate::schedule::When::Always,
                    },
                    TaskSchedule {
                        task: Task::OpenVocabularyDetection,
                        argument: TaskArgument::Text(Arc::from("a forklift")),
                        every,
                        enabled: true,
                        when: crate::schedule::When::Always,
                    },
                ],
            )
        }),
        t0,
    )
    .expect("valid schedule");
    let mut batcher = Batcher::new(4, ms(20)).expect("valid");
    // 8 jobs are due every 100 ms; the model runs one batch of 4 per 200 ms:
    // a quarter of the demand.
    let mut seq = 0;
    let mut model_free_at = t0;
    let mut max_len = 0;
    let mut dispatched_frames: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for step in 0..=200u64 {
        let now = t0 + ms(10 * step);
        seq += 1;
        for camera in &cameras {
            scheduler.on_frame(camera, seq, now).expect("known camera");
        }
        for job in scheduler.poll(now) {
            batcher.push(job, now);
        }
        max_len = max_len.max(batcher.len());
        if now >= model_free_at {
            if let Some(batch) = batcher.pop_batch(now) {
                for job in &batch {
                    assert!(job.frame_seq <= seq);
                    dispatched_frames
                        .entry(format!("{}/{}", job.key.camera, job.key.task))
                        .or_default()
                        .push(job.frame_seq);
                }
                model_free_at = now + ms(200);
            }
        }
    }
    assert_eq!(max_len, 8, "at most one job per (camera, task)");
    let window = 2.0; // seconds
    let pending: u64 = batcher
        .all_counters()
        .iter()
        .map(|(key, _)| batcher_pending(&batcher, key))
        .sum();
    assert_eq!(
        pending,
        batcher.len() as u64,
        "enqueued = dispatched + skipped + waiting"
    );
    for (key, counters) in batcher.all_counters() {
        let rate = counters.dispatched as f64 / window;
        assert!(
            (2.0..=3.0).contains(&rate),
            "{key:?}: {rate} jobs/s of 10 demanded"
        );
        assert!(counters.stale_skipped > 0);
    }
    for frames in dispatched_frames.values() {
        assert!(
            frames.windows(2).all(|w| w[0] < w[1]),
            "each (camera, task) sees ever newer frames: {frames:?}"
        );
    }
}

fn batcher_pending(batcher: &Batcher, key: &JobKey) -> u64 {
    let c = batcher.counters(key);
    c.enqueued - c.dispatched - c.stale_skipped - c.cancelled
}

/// One step of a random workload.
#[derive(Clone, Debug)]
enum Op {
    /// Time passes, then a job of (camera, task) is pushed.
    Push {
        dt_ms: u64,
        camera: usize,
        task: usize,
    },
    /// Time passes.
    Wait { dt_ms: u64 },
}

fn op(cameras: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..30u64, 0..cameras, 0..TASKS.len()).prop_map(|(dt_ms, camera, task)| Op::Push {
            dt_ms,
            camera,
            task
        }),
        1 => (0..60u64).prop_map(|dt_ms| Op::Wait { dt_ms }),
    ]
}

fn camera_name(i: usize) -> String {
    format!("cam{i:02}")
}

proptest! {
    /// With a consumer that takes every batch the moment it is ready: every
    /// job is dispatched exactly once or skipped as stale, no batch is over
    /// max_batch, no job waits longer than max_wait, and the queue never holds
    /// more than one job per (camera, task).
    #[test]
    fn jobs_are_never_lost_or_duplicated_and_waits_are_bounded(
        max_batch in 1usize..8,
        max_wait_ms in 0u64..50,
        cameras in 1usize..6,
        ops in prop::collection::vec(op(6), 1..200),
    ) {
        let t0 = Instant::now();
        let max_wait = ms(max_wait_ms);
        let mut b = Batcher::new(max_batch, max_wait).expect("valid");
        let mut now = t0;
        let mut pushed = HashSet::new();
        let mut dispatched = HashSet::new();
        let mut skipped = HashSet::new();
        let mut next_id = 0u64;
        let deliver = |b: &mut Batcher, at: Instant, dispatched: &mut HashSet<u64>| -> Result<(), TestCaseError> {
            while let Some(batch) = b.pop_batch(at) {
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= max_batch);
                for job in batch {
                    prop_assert!(at.duration_since(job.enqueued) <= max_wait,
                        "job {} waited {:?}", job.id, at.duration_since(job.enqueued));
                    prop_assert!(dispatched.insert(job.id), "job {} dispatched twice", job.id);
                }
            }
            Ok(())
        };
        for op in ops {
            let (dt, push) = match op {
                Op::Push { dt_ms, camera, task } => (dt_ms, Some((camera % cameras, task))),
                Op::Wait { dt_ms } => (dt_ms, None),
            };
            let until = now + ms(dt);
            // Serve every deadline that falls in the gap, at its instant.
            while let Some(deadline) = b.next_deadline().filter(|d| *d <= until) {
                deliver(&mut b, deadline.max(now), &mut dispatched)?;
            }
            now = until;
            if let Some((camera, task)) = push {
                next_id += 1;
                pushed.insert(next_id);
                if let Some(old) = b.push(job(next_id, &camera_name(camera), task, now), now) {
                    prop_assert!(skipped.insert(old.id));
                    let name = camera_name(camera);
                    prop_assert_eq!(old.key.camera.as_ref(), name.as_str());
                }
                deliver(&mut b, now, &mut dispatched)?;
            }
            prop_assert!(b.len() <= cameras * TASKS.len());
        }
        while let Some(batch) = b.flush() {
            prop_assert!(batch.len() <= max_batch);
            for job in batch {
                prop_assert!(dispatched.insert(job.id));
            }
        }
        prop_assert!(dispatched.is_disjoint(&skipped));
        let accounted: HashSet<u64> = dispatched.union(&skipped).copied().collect();
        prop_assert_eq!(accounted, pushed);
        let totals = b.all_counters().into_iter().fold((0, 0, 0), |acc, (_, c)| {
            (acc.0 + c.enqueued, acc.1 + c.dispatched, acc.2 + c.stale_skipped)
        });
        prop_assert_eq!(totals, (next_id, dispatched.len() as u64, skipped.len() as u64));
    }

    /// N cameras that always have work (at least a batch's worth of tasks,
    /// each due again before every batch) each get their share of every
    /// window of batches, within one job, however many tasks they have.
    #[test]
    fn cameras_that_are_always_ready_share_batches_evenly(
        max_batch in 1usize..9,
        cameras in 1usize..7,
        extra_tasks in prop::collection::vec(0usize..=6, 7),
        batches in 1usize..40,
    ) {
        let tasks_per_camera: Vec<usize> = extra_tasks.iter().map(|extra| max_batch + extra).collect();
        let t0 = Instant::now();
        let mut b = Batcher::new(max_batch, ms(0)).expect("valid");
        let mut next_id = 0u64;
        let mut refill = |b: &mut Batcher| {
            for (camera, tasks) in tasks_per_camera.iter().enumerate().take(cameras) {
                for task in 0..*tasks {
                    next_id += 1;
                    b.push(job(next_id, &camera_name(camera), task, t0), t0);
                }
            }
        };
        let mut served = vec![0usize; cameras];
        let mut total = 0usize;
        for _ in 0..batches {
            refill(&mut b);
            let batch = b.pop_batch(t0).unwrap_or_default();
            prop_assert!(batch.len() <= max_batch);
            for job in &batch {
                let index = job.key.camera[3..].parse::<usize>().unwrap_or(usize::MAX);
                prop_assert!(index < cameras);
                served[index] += 1;
            }
            total += batch.len();
            let share = total / cameras;
            for (camera, count) in served.iter().enumerate() {
                prop_assert!(
                    *count == share || *count == share + 1,
                    "camera {} served {} of {} ({} cameras): {:?}", camera, count, total, cameras, served
                );
            }
        }
    }
}

#[test]
fn the_waiting_job_of_a_paused_task_is_dropped_alone_and_counted() {
    let t0 = Instant::now();
    let mut b = Batcher::new(4, ms(40)).expect("valid");
    b.push(job(1, "a", 0, t0), t0);
    b.push(job(2, "a", 1, t0), t0);
    b.push(job(3, "b", 0, t0), t0);
    assert_eq!(b.remove_key(&key("a", 0)).map(|j| j.id), Some(1));
    assert_eq!(b.remove_key(&key("a", 0)).map(|j| j.id), None);
    assert_eq!(b.remove_key(&key("c", 0)).map(|j| j.id), None);
    assert_eq!(b.len(), 2);
    assert_eq!(b.counters(&key("a", 0)).cancelled, 1);
    assert_eq!(b.remove_key(&key("b", 0)).map(|j| j.id), Some(3));
    assert_eq!(b.flush().as_deref().map(ids), Some(vec![2]));
    assert!(b.is_empty());
    assert_eq!(b.next_deadline(), None);
}
