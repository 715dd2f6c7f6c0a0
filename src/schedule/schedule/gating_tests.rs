//! `when = "changed"`: the scheduler's side of scene-change gating.

use super::*;
use crate::schedule::{Task, TaskArgument};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn task(task: Task, every: u64, when: When) -> TaskSchedule {
    TaskSchedule {
        task,
        argument: TaskArgument::None,
        every: ms(every),
        enabled: true,
        when,
    }
}

fn changed(max_interval: u64) -> When {
    When::Changed {
        max_interval: ms(max_interval),
    }
}

fn camera(t0: Instant) -> Scheduler {
    Scheduler::new(
        [(
            CameraId::from("cam"),
            vec![
                task(Task::ObjectDetection, 100, changed(1000)),
                task(Task::Caption, 100, When::Always),
            ],
        )],
        t0,
    )
    .unwrap()
}

fn counters_of(s: &Scheduler, task: Task) -> ScheduleCounters {
    s.counters()
        .into_iter()
        .find(|(k, _)| k.task == task)
        .map(|(_, c)| c)
        .unwrap()
}

/// Frames every 100 ms for `frames` frames starting at `from`, each with
/// `changes(i)` as the detector's count; the jobs per task.
fn run(
    s: &mut Scheduler,
    t0: Instant,
    from: u64,
    frames: u64,
    changes: impl Fn(u64) -> u64,
) -> (Vec<u64>, Vec<u64>) {
    let (mut od, mut caption) = (Vec::new(), Vec::new());
    for i in from..from + frames {
        let now = t0 + ms(i * 100);
        s.on_frame_changes("cam", i, Some(changes(i)), now).unwrap();
        for job in s.poll(now) {
            match job.key.task {
                Task::ObjectDetection => od.push(job.frame_seq),
                _ => caption.push(job.frame_seq),
            }
        }
    }
    (od, caption)
}

#[test]
fn a_still_picture_runs_the_gated_task_only_at_its_heartbeat() {
    let t0 = Instant::now();
    let mut s = camera(t0);
    // 3 s of a still picture (the change count never moves).
    let (od, caption) = run(&mut s, t0, 0, 30, |_| 7);
    // The first frame, then once per max_interval.
    assert_eq!(od, [0, 10, 20]);
    // The ungated task of the same camera runs on every frame.
    assert_eq!(caption.len(), 30);
    let c = counters_of(&s, Task::ObjectDetection);
    assert_eq!(c.emitted, 3);
    assert!(c.unchanged >= 25, "{c:?}");
    let owed = u64::from(s.cameras["cam"].slots[0].owed.is_some());
    assert_eq!(
        c.ticks,
        c.emitted + c.coalesced + c.unchanged + owed,
        "{c:?}"
    );
}

#[test]
fn a_change_runs_the_gated_task_on_the_next_due_frame() {
    let t0 = Instant::now();
    let mut s = camera(t0);
    // Still for 0.5 s, then every frame changes for 0.5 s, then still.
    let (od, _) = run(&mut s, t0, 0, 15, |i| match i {
        0..=4 => 0,
        5..=9 => i - 4,
        _ => 5,
    });
    assert_eq!(od, [0, 5, 6, 7, 8, 9]);
}

#[test]
fn frames_without_a_change_count_run_gated_tasks_as_always() {
    let t0 = Instant::now();
    let mut s = camera(t0);
    for i in 0..10 {
        let now = t0 + ms(i * 100);
        s.on_frame("cam", i, now).unwrap();
        assert_eq!(s.poll(now).len(), 2, "frame {i}");
    }
    assert_eq!(counters_of(&s, Task::ObjectDetection).unchanged, 0);
}

#[test]
fn the_heartbeat_is_a_deadline_and_a_reload_keeps_the_slot() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(
        [(
            CameraId::from("cam"),
            vec![task(Task::ObjectDetection, 100, changed(5000))],
        )],
        t0,
    )
    .unwrap();
    run(&mut s, t0, 0, 3, |_| 1);
    // Waiting for a change: the next ticks and the heartbeat are the
    // instants to poll at.
    let deadline = s.next_deadline().unwrap();
    assert!(deadline <= t0 + ms(5000));
    // A reload to `always` runs it on the next frame.
    s.set_camera(
        CameraId::from("cam"),
        &[task(Task::ObjectDetection, 100, When::Always)],
        t0 + ms(300),
    )
    .unwrap();
    let (od, _) = run(&mut s, t0, 3, 1, |_| 1);
    assert_eq!(od, [3]);
    assert_eq!(counters_of(&s, Task::ObjectDetection).emitted, 2);
}
