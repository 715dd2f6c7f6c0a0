//! Scene building blocks' cost on one thread: `ChangeDetector::feed` per frame (1080p and
//! 4K, a noisy picture with a moving square, default settings) and `keeps` per 1000 boxes
//! for each zone filter. A plain `harness = false` bench timed with `std::time`, like
//! benches/preprocess.rs: median and fastest wall time per call and, on Linux, the median
//! CPU time of the calling thread.
//!
//! `cargo bench --bench scene` (optional argument: iterations, default 500).

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use cpu_time::thread_cpu_time;

use std::hint::black_box;
use std::time::{Duration, Instant};

use florence_edge::scene::{keeps, ChangeDetector, ChangeSettings, LumaView, Polygon, ZoneFilter};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    fn unit(&mut self) -> f64 {
        f64::from(self.next()) / f64::from(u32::MAX >> 1)
    }
}

/// Median wall, best wall, median CPU time of this thread.
struct Timing {
    median: Duration,
    best: Duration,
    cpu: Option<Duration>,
}

fn time<F: FnMut(usize)>(iterations: usize, mut f: F) -> Timing {
    f(0); // warm-up
    let mut wall = Vec::with_capacity(iterations);
    let mut cpu = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let cpu_start = thread_cpu_time();
        let start = Instant::now();
        f(i + 1);
        wall.push(start.elapsed());
        if let (Some(a), Some(b)) = (cpu_start, thread_cpu_time()) {
            cpu.push(b.saturating_sub(a));
        }
    }
    wall.sort();
    cpu.sort();
    Timing {
        median: wall[wall.len() / 2],
        best: wall[0],
        cpu: cpu.get(cpu.len() / 2).copied(),
    }
}

/// "median / best [cpu]" in µs.
fn cell(t: &Timing) -> String {
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    match t.cpu {
        Some(cpu) => format!("{} / {} [{}]", us(t.median), us(t.best), us(cpu)),
        None => format!("{} / {}", us(t.median), us(t.best)),
    }
}

/// `count` grey frames of `w`×`h`: a textured picture with noise of ±3 and a bright square
/// that moves a little from frame to frame, so the detector sees both still and changed cells.
fn frames(w: u32, h: u32, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Lcg(u64::from(w) * 31 + u64::from(h));
    (0..count)
        .map(|i| {
            let left = w / 8 + (i as u32) * w / 64;
            let top = h / 4;
            let side = h / 5;
            let mut data = vec![0u8; w as usize * h as usize];
            for y in 0..h {
                for x in 0..w {
                    let base = if x >= left && x < left + side && y >= top && y < top + side {
                        220
                    } else {
                        40 + ((x / 32 + y / 32) % 2) * 40 + (x + y) % 23
                    };
                    let v = base as i32 + (rng.next() % 7) as i32 - 3;
                    data[y as usize * w as usize + x as usize] = v.clamp(0, 255) as u8;
                }
            }
            data
        })
        .collect()
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let settings = ChangeSettings::default();
    println!(
        "scene bench: {iterations} iterations, one thread; wall median / best [thread CPU \
         median], µs; grid {}x{}",
        settings.grid.0, settings.grid.1
    );

    println!(
        "{:<22} {:>28} {:>10}",
        "ChangeDetector::feed", "per frame", "changed"
    );
    for (w, h) in [(1920u32, 1080u32), (3840, 2160)] {
        let frames = frames(w, h, 8);
        let mut detector = ChangeDetector::new(settings.clone()).expect("default settings");
        let t = time(iterations, |i| {
            let data = &frames[i % frames.len()];
            let view = LumaView {
                data,
                width: w,
                height: h,
                stride: w as usize,
            };
            black_box(detector.feed(black_box(&view)));
        });
        println!(
            "{:<22} {:>28} {:>10}",
            format!("{w}x{h}"),
            cell(&t),
            format!("{}/{}", detector.changes(), detector.frames())
        );
    }

    // A concave zone of 8 points and 1000 boxes around it, in a 1080p frame.
    let zone = Polygon::new(vec![
        [0.1, 0.2],
        [0.5, 0.1],
        [0.9, 0.2],
        [0.8, 0.5],
        [0.9, 0.9],
        [0.5, 0.7],
        [0.1, 0.9],
        [0.2, 0.5],
    ])
    .expect("valid zone");
    let (w, h) = (1920u32, 1080u32);
    let mut rng = Lcg(11);
    let boxes: Vec<[f64; 4]> = (0..1000)
        .map(|_| {
            let (x, y) = (rng.unit() * f64::from(w), rng.unit() * f64::from(h));
            let (bw, bh) = (rng.unit() * 400.0, rng.unit() * 400.0);
            [x, y, (x + bw).min(f64::from(w)), (y + bh).min(f64::from(h))]
        })
        .collect();
    println!("{:<22} {:>28} {:>10}", "keeps", "per 1000 boxes", "kept");
    for (name, filter) in [
        ("BottomCenter", ZoneFilter::BottomCenter),
        ("Overlaps", ZoneFilter::Overlaps),
        ("Inside", ZoneFilter::Inside),
    ] {
        let mut kept = 0;
        let t = time(iterations, |_| {
            kept = boxes
                .iter()
                .filter(|b| keeps(black_box(&zone), filter, **b, w, h))
                .count();
            black_box(kept);
        });
        println!(
            "{:<22} {:>28} {:>10}",
            name,
            cell(&t),
            format!("{kept}/{}", boxes.len())
        );
    }
}
