//! Scene-change gating on a scene that is still most of the time: model runs
//! with `when = "changed"` against `when = "always"`, on the real change
//! detector and scheduler (the pure state machines the daemon drives), fed
//! synthetic frames on a simulated clock.
//!
//! The scene: a 640×360 luma picture with sensor noise (±2), still for ten
//! minutes but for four motion intervals of 10 s each, in which a bright
//! square crosses it. Frames at 5 fps; one task every 1 s; the heartbeat
//! (`max_interval`) 5 minutes. Reported: model runs per minute, model time
//! per camera-hour at a given cost per run, how many motion intervals got at
//! least one run, and the detector's measured cost per frame.
//!
//! `cargo bench --bench gating` (optional argument: seconds per model run for
//! the camera-hour figure; default 2.95, Florence-2-base `<OD>` on 2 vCPUs,
//! docs/BENCHMARKS.md).

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use florence_edge::scene::motion::{ChangeDetector, ChangeSettings, LumaView};
use florence_edge::schedule::{CameraId, Scheduler, Task, TaskArgument, TaskSchedule, When};

const W: u32 = 640;
const H: u32 = 360;
const FPS: u64 = 5;
const MINUTES: u64 = 10;
/// Motion intervals: (start, end) in seconds.
const MOTION: [(u64, u64); 4] = [(60, 70), (200, 210), (330, 340), (500, 510)];

fn frame(i: u64, state: &mut u64, out: &mut [u8]) {
    for p in out.iter_mut() {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *p = 60 + ((*state >> 62) as u8);
    }
    let t = i as f64 / FPS as f64;
    if let Some((start, end)) = MOTION.iter().find(|(s, e)| t >= *s as f64 && t < *e as f64) {
        let progress = (t - *start as f64) / (*end - *start) as f64;
        let x0 = (progress * f64::from(W - 60)) as usize;
        for y in 150..210 {
            for x in x0..x0 + 60 {
                out[y * W as usize + x] = 220;
            }
        }
    }
}

struct Outcome {
    runs: u64,
    run_times: Vec<f64>,
    unchanged: u64,
    detector_ns: Vec<u64>,
}

fn simulate(when: When) -> Outcome {
    let t0 = Instant::now();
    let task = TaskSchedule {
        task: Task::ObjectDetection,
        argument: TaskArgument::None,
        every: Duration::from_secs(1),
        enabled: true,
        when,
    };
    let mut scheduler = Scheduler::new([(CameraId::from("cam"), vec![task])], t0).unwrap();
    let mut detector = ChangeDetector::new(ChangeSettings::default()).unwrap();
    let mut luma = vec![0u8; (W * H) as usize];
    let mut noise = 7u64;
    let mut out = Outcome {
        runs: 0,
        run_times: Vec::new(),
        unchanged: 0,
        detector_ns: Vec::new(),
    };
    for i in 0..MINUTES * 60 * FPS {
        let now = t0 + Duration::from_millis(i * 1000 / FPS);
        frame(i, &mut noise, &mut luma);
        let started = Instant::now();
        detector.feed(&LumaView {
            data: &luma,
            width: W,
            height: H,
            stride: W as usize,
        });
        out.detector_ns.push(started.elapsed().as_nanos() as u64);
        let changes = matches!(when, When::Changed { .. }).then(|| detector.changes());
        scheduler.on_frame_changes("cam", i, changes, now).unwrap();
        for job in scheduler.poll(now) {
            out.runs += 1;
            out.run_times.push(job.frame_seq as f64 / FPS as f64);
        }
    }
    out.unchanged = scheduler.counters()[0].1.unchanged;
    out
}

fn main() {
    let cost: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(2.95);
    let always = simulate(When::Always);
    let changed = simulate(When::Changed {
        max_interval: Duration::from_secs(300),
    });
    let minutes = MINUTES as f64;
    println!(
        "scene: {W}x{H} luma, {FPS} fps, {MINUTES} min, motion {:?} s; task every 1 s",
        MOTION
    );
    println!(
        "{:<28} {:>10} {:>12} {:>24} {:>18}",
        "", "runs", "runs/min", "model s asked/cam-hour", "motion intervals"
    );
    for (name, o) in [
        ("when = \"always\"", &always),
        ("when = \"changed\"", &changed),
    ] {
        let covered = MOTION
            .iter()
            .filter(|(s, e)| {
                o.run_times
                    .iter()
                    .any(|t| *t >= *s as f64 && *t < *e as f64)
            })
            .count();
        println!(
            "{:<28} {:>10} {:>12.1} {:>24.0} {:>15}/{}",
            name,
            o.runs,
            o.runs as f64 / minutes,
            o.runs as f64 / minutes * 60.0 * cost,
            covered,
            MOTION.len()
        );
    }
    println!(
        "fewer model runs: {:.1}x ({} due runs counted as unchanged)",
        always.runs as f64 / changed.runs.max(1) as f64,
        changed.unchanged
    );
    let mut ns = changed.detector_ns.clone();
    ns.sort_unstable();
    println!(
        "detector per {W}x{H} frame: median {:.1} us, p99 {:.1} us ({} frames)",
        ns[ns.len() / 2] as f64 / 1e3,
        ns[ns.len() * 99 / 100] as f64 / 1e3,
        ns.len()
    );
}
