//! `florence-edge bench`: per-stage latency and throughput of the inference
//! core on one machine, for docs/BENCHMARKS.md. Speed is measured here,
//! never in tests.

use std::time::Instant;

use serde::Serialize;

use crate::florence2::ModelError;
use crate::pipeline::{Decoding, Pipeline, TaskRequest};
use crate::preprocess::RgbFrame;

/// Distribution of one figure over the measured iterations.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        Stat {
            min: at(0.0),
            median: at(0.5),
            p90: at(0.9),
            max: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub task: String,
    pub image: [u32; 2],
    pub batch: usize,
    pub iterations: usize,
    pub decode_steps: usize,
    /// Per call (whole batch), milliseconds.
    pub total_ms: Stat,
    pub preprocess_ms: Stat,
    pub vision_ms: Stat,
    pub encoder_ms: Stat,
    pub decode_ms: Stat,
    pub decode_step_ms: Stat,
    pub postprocess_ms: Stat,
    /// Time inside ONNX Runtime `run` calls.
    pub session_ms: Stat,
    /// Share of the model stages (vision+encoder+decode) spent outside
    /// ONNX Runtime: tensor building, search, cache handling.
    pub orchestration_share: f64,
    pub images_per_s: f64,
    pub peak_rss_mb: Option<f64>,
}

/// A deterministic synthetic frame: smooth gradients with some structure,
/// so the resize does real work.
pub fn synthetic_frame(width: u32, height: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let r = (x * 255 / width.max(1)) as u8;
            let g = (y * 255 / height.max(1)) as u8;
            let b = (((x / 16) ^ (y / 16)) & 1) as u8 * 200;
            data.extend_from_slice(&[r, g, b]);
        }
    }
    data
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(
    engine: &mut Pipeline,
    request: &TaskRequest,
    decoding: Decoding,
    size: (u32, u32),
    batch: usize,
    warmup: usize,
    iterations: usize,
) -> Result<BenchReport, ModelError> {
    // One buffer per item: the engine encodes a frame shared by several
    // items once, and a batch of N cameras has N different frames.
    let data: Vec<Vec<u8>> = (0..batch)
        .map(|_| synthetic_frame(size.0, size.1))
        .collect();
    let items: Vec<(RgbFrame<'_>, TaskRequest)> = data
        .iter()
        .map(|d| {
            RgbFrame::packed(size.0, size.1, d)
                .map(|f| (f, request.clone()))
                .map_err(|e| ModelError::Input(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    for _ in 0..warmup {
        engine.run(&items, decoding)?;
    }
    let mut cols: [Vec<f64>; 8] = Default::default();
    let mut steps = 0;
    let start = Instant::now();
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        let out = engine.run(&items, decoding)?;
        let total = t.elapsed().as_secs_f64() * 1e3;
        let tm = out[0].timings;
        steps = tm.model.decode_steps;
        let vals = [
            total,
            tm.preprocess_ms,
            tm.model.vision_ms,
            tm.model.encoder_ms,
            tm.model.decode_ms,
            tm.model.decode_ms / tm.model.decode_steps.max(1) as f64,
            tm.postprocess_ms,
            tm.model.session_ms,
        ];
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let model_ms: f64 = cols[2]
        .iter()
        .zip(&cols[3])
        .zip(&cols[4])
        .map(|((a, b), c)| a + b + c)
        .sum();
    let session_ms: f64 = cols[7].iter().sum();
    Ok(BenchReport {
        task: request.task.token().to_string(),
        image: [size.0, size.1],
        batch,
        iterations: iterations.max(1),
        decode_steps: steps,
        total_ms: Stat::of(&cols[0]),
        preprocess_ms: Stat::of(&cols[1]),
        vision_ms: Stat::of(&cols[2]),
        encoder_ms: Stat::of(&cols[3]),
        decode_ms: Stat::of(&cols[4]),
        decode_step_ms: Stat::of(&cols[5]),
        postprocess_ms: Stat::of(&cols[6]),
        session_ms: Stat::of(&cols[7]),
        orchestration_share: if model_ms > 0.0 {
            (model_ms - session_ms) / model_ms
        } else {
            0.0
        },
        images_per_s: (iterations.max(1) * batch) as f64 / elapsed,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_pick_order_statistics() {
        let s = Stat::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        assert_eq!(s.p90, 5.0);
    }

    #[test]
    fn synthetic_frames_have_the_asked_size_and_vary() {
        let f = synthetic_frame(31, 17);
        assert_eq!(f.len(), 31 * 17 * 3);
        assert!(f.iter().any(|&v| v != f[0]));
    }
}
