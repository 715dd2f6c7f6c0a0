//! Throughput of the CUDA kernels, timed with CUDA events (not host clocks).
//!
//! `cargo bench --no-default-features --features cuda --bench gpu_kernels`, or the
//! prebuilt binary through `scripts/gpu-check.sh`. Prints a Markdown table for
//! docs/GPU.md. Needs an NVIDIA GPU; on a machine without one it says so and exits 1.
//!
//! Preprocessing is measured two ways: the kernels alone on frames already on the
//! device (`relaunch_into`), whose effective bandwidth is compared with the HBM
//! bound, and end to end from pageable host memory (upload + kernels).
//! Effective bytes = source frames read + intermediate rows written and read +
//! output written; the tap tables and descriptors are a few KiB and not counted.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use cudarc::driver::{CudaSlice, CudaStream, ValidAsZeroBits};
use florence_edge::gpu::{
    GpuContext, GpuError, GpuFrame, GpuLocationParser, GpuPreprocessor, OutputElement,
};
use florence_edge::postprocess::loc_ids::{LocationGrouping, SequenceInfo, TokenBatch};
use florence_edge::preprocess::{ImageProcessorConfig, Preprocessor, YuvMatrix};

/// H200 HBM3e peak, bytes/s (NVIDIA's data sheet: 4.8 TB/s).
const HBM_BOUND: f64 = 4.8e12;
const ITERATIONS: usize = 50;
const WARMUP: usize = 5;

struct Owned {
    planes: Vec<Vec<u8>>,
    nv12: bool,
    w: u32,
    h: u32,
}

impl Owned {
    fn new(nv12: bool, w: u32, h: u32, seed: u64) -> Owned {
        let mut x = seed | 1;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect()
        };
        let planes = if nv12 {
            vec![
                bytes((w * h) as usize),
                bytes((w.div_ceil(2) * 2 * h.div_ceil(2)) as usize),
            ]
        } else {
            vec![bytes((w * h * 3) as usize)]
        };
        Owned { planes, nv12, w, h }
    }

    fn frame(&self) -> GpuFrame<'_> {
        if self.nv12 {
            GpuFrame::Nv12 {
                luma: &self.planes[0],
                chroma: &self.planes[1],
                width: self.w,
                height: self.h,
                luma_stride: self.w,
                chroma_stride: self.w.div_ceil(2) * 2,
            }
        } else {
            GpuFrame::Rgb {
                data: &self.planes[0],
                width: self.w,
                height: self.h,
                stride: self.w * 3,
            }
        }
    }

    fn bytes(&self) -> usize {
        self.planes.iter().map(Vec::len).sum()
    }
}

fn time_ms(
    stream: &CudaStream,
    mut work: impl FnMut() -> Result<(), GpuError>,
) -> Result<f64, Box<dyn std::error::Error>> {
    for _ in 0..WARMUP {
        work()?;
    }
    stream.synchronize()?;
    // Host time between two synchronisations, not CUDA events: cudarc's
    // `cuda-13000` bindings time events with cuEventElapsedTime_v2, which
    // JetPack 6's CUDA 12.6 driver does not have (the call would panic
    // there). Over ITERATIONS launches the host overhead is negligible.
    let start = std::time::Instant::now();
    for _ in 0..ITERATIONS {
        work()?;
    }
    stream.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3 / ITERATIONS as f64)
}

fn bench_preprocess<T: OutputElement + ValidAsZeroBits>(
    gpu: &GpuContext,
    nv12: bool,
    batch: usize,
    precision: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let cpu = Preprocessor::new(ImageProcessorConfig::florence2())?;
    let mut pre = GpuPreprocessor::new(gpu, &cpu, YuvMatrix::Bt709Limited)?;
    let owned: Vec<Owned> = (0..batch)
        .map(|i| Owned::new(nv12, 1920, 1080, 0x9e37 + i as u64))
        .collect();
    let frames: Vec<GpuFrame<'_>> = owned.iter().map(Owned::frame).collect();
    let stream = gpu.stream().clone();
    let mut out: CudaSlice<T> = stream.alloc_zeros(pre.output_len(batch))?;
    let end_to_end = time_ms(&stream, || {
        pre.preprocess_into(&frames, &mut out.slice_mut(..))
    })?;
    let kernels = time_ms(&stream, || pre.relaunch_into(&mut out.slice_mut(..)))?;

    let (ow, oh) = pre.output_size();
    let input: usize = owned.iter().map(Owned::bytes).sum();
    // Pillow's row trimming keeps all 1080 rows for 1080 -> 768.
    let intermediate = batch * 1080 * ow as usize * 3;
    let output = pre.output_len(batch) * std::mem::size_of::<T>();
    let moved = (input + 2 * intermediate + output) as f64;
    let bandwidth = moved / (kernels * 1e-3);
    println!(
        "| {} 1920x1080 → {ow}x{oh} | {precision} | {batch} | {kernels:.3} | {:.0} | {:.0} | {:.1}% | {end_to_end:.3} | {:.0} |",
        if nv12 { "NV12" } else { "RGB" },
        batch as f64 / (kernels * 1e-3),
        bandwidth / 1e9,
        100.0 * bandwidth / HBM_BOUND,
        batch as f64 / (end_to_end * 1e-3),
    );
    Ok(())
}

fn bench_loc_tokens(gpu: &GpuContext) -> Result<(), Box<dyn std::error::Error>> {
    const LOC0: i64 = 50_269;
    let (count, max_len) = (8usize, 1025usize);
    let mut ids = vec![1i64; count * max_len];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, id) in ids.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // about 2 in 3 tokens are location tokens, in runs, as in <OD> output
        *id = if (i % 5) == 4 {
            1000 + (x % 40_000) as i64
        } else {
            LOC0 + (x % 1000) as i64
        };
    }
    let seqs: Vec<SequenceInfo> = (0..count)
        .map(|_| SequenceInfo::new(1920.0, 1080.0, max_len as u32, LocationGrouping::Boxes))
        .collect();
    let batch = TokenBatch {
        ids: &ids,
        max_len,
        sequences: &seqs,
    };
    let mut parser = GpuLocationParser::new(gpu, LOC0)?;
    let stream = gpu.stream().clone();
    let round_trip = time_ms(&stream, || parser.parse(&batch).map(|_| ()))?;
    let kernel = time_ms(&stream, || parser.relaunch())?;
    let tokens = (count * max_len) as f64;
    println!(
        "| location tokens, {count} × {max_len} | {kernel:.4} | {:.0} M tokens/s | {round_trip:.4} (upload + kernel + download) |",
        tokens / (kernel * 1e-3) / 1e6
    );
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` passes "--bench"; nothing else is accepted.
    let cache = std::env::var_os("FLORENCE_EDGE_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("florence-edge-kernel-cache-bench"));
    let gpu = match GpuContext::new(0, &cache) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("gpu_kernels bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = gpu.device();
    println!(
        "GPU: {} (sm_{}{}), driver CUDA {}.{}, NVRTC {}.{}, {} MiB; {ITERATIONS} iterations after {WARMUP} warm-up, CUDA events\n",
        d.name,
        d.compute_capability.0,
        d.compute_capability.1,
        d.driver_version.0,
        d.driver_version.1,
        d.nvrtc_version.0,
        d.nvrtc_version.1,
        d.total_memory_bytes >> 20
    );
    println!("| input | output | batch | kernels ms/batch | kernels frames/s | effective GB/s | of 4.8 TB/s | end-to-end ms/batch (pageable upload) | end-to-end frames/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for nv12 in [false, true] {
        for batch in [1, 8] {
            let r = bench_preprocess::<half::f16>(&gpu, nv12, batch, "FP16")
                .and_then(|()| bench_preprocess::<f32>(&gpu, nv12, batch, "FP32"));
            if let Err(e) = r {
                eprintln!("preprocess bench failed: {e}");
                failed = true;
            }
        }
    }
    println!("\n| kernel | ms/launch | throughput | round trip ms |");
    println!("|---|---|---|---|");
    if let Err(e) = bench_loc_tokens(&gpu) {
        eprintln!("location-token bench failed: {e}");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
