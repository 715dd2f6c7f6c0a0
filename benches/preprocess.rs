//! Preprocessing speed: frame → 3×768×768 `pixel_values`, per frame size, on one thread and
//! split over threads. A plain `harness = false` bench timed with `std::time` (no criterion):
//! it prints the median and the fastest wall time of a short run and, on Linux, the median CPU
//! time of the calling thread (which a busy machine does not inflate the way it inflates wall
//! time), enough to compare with the reference processor
//! (`tools/make_preprocess_golden.py --bench`).
//!
//! `cargo bench --bench preprocess` (optional arguments: iterations, thread count).

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use cpu_time::thread_cpu_time;

use std::hint::black_box;
use std::time::{Duration, Instant};

use florence_edge::preprocess::{
    nv12_to_rgb, ImageProcessorConfig, Nv12Frame, Preprocessor, ResizePlan, RgbFrame, YuvMatrix,
};
use half::f16;

fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// Median wall, best wall, median CPU time of this thread.
struct Timing {
    median: Duration,
    best: Duration,
    cpu: Option<Duration>,
}

fn time<F: FnMut()>(iterations: usize, mut f: F) -> Timing {
    f(); // warm-up: plans, scratch buffers, page faults
    let mut wall = Vec::with_capacity(iterations);
    let mut cpu = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let cpu_start = thread_cpu_time();
        let start = Instant::now();
        f();
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

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// "median / best [cpu]" in ms; the CPU column only for single-thread runs.
fn cell(t: &Timing, with_cpu: bool) -> String {
    match (with_cpu, t.cpu) {
        (true, Some(cpu)) => format!("{} / {} [{}]", ms(t.median), ms(t.best), ms(cpu)),
        _ => format!("{} / {}", ms(t.median), ms(t.best)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let iterations: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let avx2 = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    println!(
        "preprocess bench: {iterations} iterations; wall median / best [thread CPU median], ms; \
         threads = {threads}; avx2 = {avx2}"
    );
    println!(
        "{:<10} {:>24} {:>24} {:>16} {:>16} {:>24}",
        "frame",
        "resize 1T",
        "f32 1T",
        &format!("f32 {threads}T"),
        &format!("f16 {threads}T"),
        "nv12→rgb 1T"
    );

    let config = ImageProcessorConfig::florence2();
    let mut single = Preprocessor::new(config.clone()).expect("florence2 config is valid");
    let mut threaded = Preprocessor::new(config)
        .expect("florence2 config is valid")
        .with_threads(threads);
    let mut out = vec![0f32; single.image_len()];
    let mut out16 = vec![f16::ZERO; single.image_len()];

    for (w, h) in [
        (1920u32, 1080u32),
        (1280, 720),
        (640, 480),
        (768, 768),
        (1080, 1920),
    ] {
        let data = noise(w as usize * h as usize * 3, u64::from(w * h));
        let frame = RgbFrame::packed(w, h, &data).expect("frame");
        let plan = ResizePlan::new(w, h, 768, 768).expect("plan");
        let mut resized = vec![0u8; plan.output_len()];
        let mut scratch = Vec::new();
        let resize = time(iterations, || {
            plan.resize_into(&frame, &mut resized, &mut scratch)
                .expect("resize");
            black_box(&resized);
        });
        let f32_single = time(iterations, || {
            single
                .preprocess_into(&frame, &mut out)
                .expect("preprocess");
            black_box(&out);
        });
        let f32_threaded = time(iterations, || {
            threaded
                .preprocess_into(&frame, &mut out)
                .expect("preprocess");
            black_box(&out);
        });
        let f16_threaded = time(iterations, || {
            threaded
                .preprocess_into_f16(&frame, &mut out16)
                .expect("preprocess");
            black_box(&out16);
        });
        let y_plane = noise(w as usize * h as usize, 7);
        let uv_plane = noise(w as usize * h.div_ceil(2) as usize, 9);
        let nv12 =
            Nv12Frame::new(w, h, w as usize, &y_plane, w as usize, &uv_plane).expect("nv12 frame");
        let mut rgb = vec![0u8; data.len()];
        let convert = time(iterations, || {
            nv12_to_rgb(&nv12, YuvMatrix::Bt709Limited, &mut rgb).expect("convert");
            black_box(&rgb);
        });
        println!(
            "{:<10} {:>24} {:>24} {:>16} {:>16} {:>24}",
            format!("{w}x{h}"),
            cell(&resize, true),
            cell(&f32_single, true),
            cell(&f32_threaded, false),
            cell(&f16_threaded, false),
            cell(&convert, true)
        );
    }
}
