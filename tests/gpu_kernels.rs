//! CUDA kernels against their CPU twins (DESIGN.md §4, §8).
//!
//! GPU tests are `#[ignore = "needs an NVIDIA GPU"]`; run them with
//! `scripts/gpu-check.sh` (or `cargo test --features cuda --test gpu_kernels -- --ignored`).
//! Inputs are seeded and odd-sized; every comparison prints its maximum error, which
//! must be 0: the u8 resize and the f32 values are bit-exact, f16 is the exact
//! rounding of the f32 value.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "cuda")]

use std::path::PathBuf;

use cudarc::driver::CudaSlice;
use florence_edge::gpu::{
    GpuContext, GpuError, GpuFrame, GpuLocationParser, GpuPreprocessor, OutputElement,
};
use florence_edge::postprocess::loc_ids::{
    parse_location_tokens, LocationGrouping, LocationParse, SequenceInfo, TokenBatch,
};

/// The CPU twin (`florence_edge::preprocess`), behind the few calls these tests need.
mod cpu_twin {
    use florence_edge::preprocess::{
        nv12_to_rgb, ImageProcessorConfig, Nv12Frame, Preprocessor, ResizePlan, RgbFrame, YuvMatrix,
    };

    /// The matrix both paths use for NV12 in these tests.
    pub const MATRIX: YuvMatrix = YuvMatrix::Bt601Limited;

    /// Florence-2's preprocessor_config.json values, with the output size changed.
    pub fn preprocessor(width: u32, height: u32) -> Preprocessor {
        let mut config = ImageProcessorConfig::florence2();
        config.size = (height, width);
        Preprocessor::new(config).expect("CPU preprocessor")
    }

    pub fn rgb_frame(data: &[u8], w: u32, h: u32, stride: u32) -> RgbFrame<'_> {
        RgbFrame::new(w, h, stride as usize, data).expect("valid RGB frame")
    }

    pub fn nv12_as_rgb(
        luma: &[u8],
        chroma: &[u8],
        w: u32,
        h: u32,
        luma_stride: u32,
        chroma_stride: u32,
    ) -> Vec<u8> {
        let frame = Nv12Frame::new(
            w,
            h,
            luma_stride as usize,
            luma,
            chroma_stride as usize,
            chroma,
        )
        .expect("valid NV12 frame");
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        nv12_to_rgb(&frame, MATRIX, &mut rgb).expect("NV12 conversion");
        rgb
    }

    pub fn nv12_f32(
        pre: &mut Preprocessor,
        planes: (&[u8], &[u8]),
        size: (u32, u32),
        strides: (u32, u32),
        out: &mut [f32],
    ) {
        let frame = Nv12Frame::new(
            size.0,
            size.1,
            strides.0 as usize,
            planes.0,
            strides.1 as usize,
            planes.1,
        )
        .expect("valid NV12 frame");
        pre.preprocess_nv12_into(&frame, MATRIX, out)
            .expect("CPU NV12 preprocessing");
    }

    pub fn resize(frame: &RgbFrame<'_>, dw: u32, dh: u32) -> Vec<u8> {
        let plan = ResizePlan::new(frame.width(), frame.height(), dw, dh).expect("resize plan");
        let mut out = vec![0u8; plan.output_len()];
        plan.resize_into(frame, &mut out, &mut Vec::new())
            .expect("CPU resize");
        out
    }
}

const OUT: u32 = 768;

/// SplitMix64: a seeded generator with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A test frame owning its pixels: noise mixed with a gradient, so that both
/// extreme taps (clipping) and smooth areas are exercised.
enum Frame {
    Rgb {
        data: Vec<u8>,
        w: u32,
        h: u32,
        stride: u32,
    },
    Nv12 {
        luma: Vec<u8>,
        chroma: Vec<u8>,
        w: u32,
        h: u32,
        luma_stride: u32,
        chroma_stride: u32,
    },
}

fn textured(rng: &mut Rng, len: usize, row: usize) -> Vec<u8> {
    let noise = rng.bytes(len);
    noise
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let g = ((i % row) * 255 / row.max(1)) as u8;
            if (i / row) % 3 == 0 {
                n
            } else {
                g.wrapping_add(n >> 3)
            }
        })
        .collect()
}

impl Frame {
    fn rgb(rng: &mut Rng, w: u32, h: u32, padding: u32) -> Frame {
        let stride = w * 3 + padding;
        Frame::Rgb {
            data: textured(rng, (stride * h) as usize, stride as usize),
            w,
            h,
            stride,
        }
    }

    fn nv12(rng: &mut Rng, w: u32, h: u32, padding: u32) -> Frame {
        let luma_stride = w + padding;
        let chroma_stride = w.div_ceil(2) * 2 + padding;
        Frame::Nv12 {
            luma: textured(rng, (luma_stride * h) as usize, luma_stride as usize),
            chroma: rng.bytes((chroma_stride * h.div_ceil(2)) as usize),
            w,
            h,
            luma_stride,
            chroma_stride,
        }
    }

    fn gpu(&self) -> GpuFrame<'_> {
        match self {
            Frame::Rgb { data, w, h, stride } => GpuFrame::Rgb {
                data,
                width: *w,
                height: *h,
                stride: *stride,
            },
            Frame::Nv12 {
                luma,
                chroma,
                w,
                h,
                luma_stride,
                chroma_stride,
            } => GpuFrame::Nv12 {
                luma,
                chroma,
                width: *w,
                height: *h,
                luma_stride: *luma_stride,
                chroma_stride: *chroma_stride,
            },
        }
    }

    /// The frame as packed RGB (NV12 converted by the CPU twin), with its stride.
    fn packed_rgb(&self) -> (Vec<u8>, u32) {
        match self {
            Frame::Rgb { data, stride, .. } => (data.clone(), *stride),
            Frame::Nv12 {
                luma,
                chroma,
                w,
                h,
                luma_stride,
                chroma_stride,
            } => (
                cpu_twin::nv12_as_rgb(luma, chroma, *w, *h, *luma_stride, *chroma_stride),
                *w * 3,
            ),
        }
    }

    fn size(&self) -> (u32, u32) {
        match self {
            Frame::Rgb { w, h, .. } | Frame::Nv12 { w, h, .. } => (*w, *h),
        }
    }

    /// The CPU twin's resized u8 image (packed RGB, HWC).
    fn cpu_resized(&self, dw: u32, dh: u32) -> Vec<u8> {
        let (rgb, stride) = self.packed_rgb();
        let (w, h) = self.size();
        cpu_twin::resize(&cpu_twin::rgb_frame(&rgb, w, h, stride), dw, dh)
    }

    fn describe(&self) -> String {
        match self {
            Frame::Rgb { w, h, .. } => format!("RGB {w}x{h}"),
            Frame::Nv12 { w, h, .. } => format!("NV12 {w}x{h}"),
        }
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("FLORENCE_EDGE_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("florence-edge-kernel-cache-tests"))
}

fn gpu() -> GpuContext {
    match GpuContext::new(0, &cache_dir()) {
        Ok(gpu) => {
            let d = gpu.device();
            println!(
                "GPU {}: {} (sm_{}{}), driver CUDA {}.{}, NVRTC {}.{}, {} MiB",
                d.ordinal,
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.driver_version.0,
                d.driver_version.1,
                d.nvrtc_version.0,
                d.nvrtc_version.1,
                d.total_memory_bytes >> 20
            );
            gpu
        }
        Err(e) => panic!("cannot open the GPU: {e}"),
    }
}

fn run_gpu<T: OutputElement + cudarc::driver::ValidAsZeroBits + Clone + Default>(
    gpu: &GpuContext,
    pre: &mut GpuPreprocessor,
    frames: &[Frame],
) -> Vec<T> {
    let stream = gpu.stream();
    let mut out: CudaSlice<T> = stream
        .alloc_zeros(pre.output_len(frames.len()))
        .expect("allocate output");
    let gpu_frames: Vec<_> = frames.iter().map(Frame::gpu).collect();
    pre.preprocess_into(&gpu_frames, &mut out.slice_mut(..))
        .expect("preprocess on the GPU");
    stream.clone_dtoh(&out).expect("download output")
}

fn preprocessor(gpu: &GpuContext, w: u32, h: u32) -> GpuPreprocessor {
    GpuPreprocessor::new(gpu, &cpu_twin::preprocessor(w, h), cpu_twin::MATRIX)
        .expect("create the GPU preprocessor")
}

/// Compares the bare u8 resize of every frame; returns the max absolute error.
fn check_resize(gpu: &GpuContext, frames: &[Frame], dw: u32, dh: u32) -> u8 {
    let mut pre = preprocessor(gpu, dw, dh);
    let got: Vec<u8> = run_gpu(gpu, &mut pre, frames);
    let per = (dw * dh * 3) as usize;
    let mut worst = 0u8;
    for (i, frame) in frames.iter().enumerate() {
        let want = frame.cpu_resized(dw, dh);
        let gpu_frame = &got[i * per..(i + 1) * per];
        let max = want
            .iter()
            .zip(gpu_frame)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        let differing = want.iter().zip(gpu_frame).filter(|(a, b)| a != b).count();
        println!(
            "resize u8 {} -> {dw}x{dh}: max error {max}, {differing} of {per} values differ",
            frame.describe()
        );
        worst = worst.max(max);
    }
    worst
}

/// The CPU twin's normalized CHW batch, f32, through its public entry points.
fn cpu_batch_f32(frames: &[Frame]) -> Vec<f32> {
    let mut pre = cpu_twin::preprocessor(OUT, OUT);
    let n = pre.image_len();
    let mut out = vec![0f32; frames.len() * n];
    for (frame, image) in frames.iter().zip(out.chunks_exact_mut(n)) {
        match frame {
            Frame::Rgb { data, w, h, stride } => pre
                .preprocess_into(&cpu_twin::rgb_frame(data, *w, *h, *stride), image)
                .expect("CPU preprocessing"),
            Frame::Nv12 {
                luma,
                chroma,
                w,
                h,
                luma_stride,
                chroma_stride,
            } => cpu_twin::nv12_f32(
                &mut pre,
                (luma, chroma),
                (*w, *h),
                (*luma_stride, *chroma_stride),
                image,
            ),
        }
    }
    out
}

/// The CPU twin's f16 batch (NV12 converted by the twin first).
fn cpu_batch_f16(frames: &[Frame]) -> Vec<half::f16> {
    let mut pre = cpu_twin::preprocessor(OUT, OUT);
    let n = pre.image_len();
    let mut out = vec![half::f16::ZERO; frames.len() * n];
    for (frame, image) in frames.iter().zip(out.chunks_exact_mut(n)) {
        let (rgb, stride) = frame.packed_rgb();
        let (w, h) = frame.size();
        pre.preprocess_into_f16(&cpu_twin::rgb_frame(&rgb, w, h, stride), image)
            .expect("CPU f16 preprocessing");
    }
    out
}

fn check_f32(gpu: &GpuContext, frames: &[Frame]) {
    let mut pre = preprocessor(gpu, OUT, OUT);
    let got: Vec<f32> = run_gpu(gpu, &mut pre, frames);
    let want = cpu_batch_f32(frames);
    assert_eq!(got.len(), want.len());
    let max = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let differing = want
        .iter()
        .zip(&got)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    println!(
        "f32 batch {} ({}): max abs error {max:e}, {differing} of {} values not bit-identical",
        frames.len(),
        frames
            .iter()
            .map(Frame::describe)
            .collect::<Vec<_>>()
            .join(", "),
        want.len()
    );
    assert_eq!(
        differing, 0,
        "f32 output must be bit-exact with the CPU twin"
    );
}

fn check_f16(gpu: &GpuContext, frames: &[Frame]) {
    let mut pre = preprocessor(gpu, OUT, OUT);
    let got: Vec<half::f16> = run_gpu(gpu, &mut pre, frames);
    let want = cpu_batch_f16(frames);
    let max = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
        .fold(0f32, f32::max);
    let differing = want
        .iter()
        .zip(&got)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    println!(
        "f16 batch {}: max abs error {max:e}, {differing} of {} values not bit-identical",
        frames.len(),
        want.len()
    );
    assert_eq!(
        differing, 0,
        "f16 output must equal f16::from_f32 of the CPU value"
    );
}

#[test]
fn without_a_driver_the_context_is_an_error_not_a_panic() {
    // SAFETY: only tries to load libcuda by name.
    let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
    let result = GpuContext::new(0, &cache_dir());
    if driver_present {
        // A GPU machine: the same call must succeed (so this test can fail there too).
        let gpu = result.expect("libcuda loads, so the context must open");
        assert!(!gpu.device().name.is_empty());
    } else {
        let Err(err) = result else {
            panic!("opened a context without a driver");
        };
        assert!(matches!(err, GpuError::NoDriver { .. }), "{err:?}");
        let message = err.to_string();
        println!("{message}");
        assert!(
            message.starts_with("no CUDA driver found (looked for libcuda.so,"),
            "{message}"
        );
        assert!(message.contains("libcuda.so.1"), "{message}");
    }
}

#[test]
#[ignore = "needs NVRTC (libnvrtc.so.12 or .13 on the library path)"]
fn kernels_compile_with_nvrtc_for_hopper_and_orin() {
    use florence_edge::gpu::context::{compile_cubin, compile_options, KERNEL_SOURCES};
    // SAFETY: only tries to load libnvrtc by name.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    assert!(present, "libnvrtc not found");
    for arch in ["sm_90", "sm_87"] {
        for source in KERNEL_SOURCES {
            let cubin = compile_cubin(&source, arch, &compile_options(arch))
                .unwrap_or_else(|e| panic!("{e}"));
            // An ELF image.
            assert_eq!(&cubin[..4], b"\x7fELF", "{} for {arch}", source.name);
            println!(
                "{}.cu for {arch}: {} bytes of CUBIN",
                source.name,
                cubin.len()
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn kernel_cache_is_reused_and_a_corrupt_entry_recompiled() {
    use florence_edge::gpu::CacheOutcome;
    let dir = tempfile::tempdir().expect("temporary directory");
    let first = GpuContext::new(0, dir.path()).expect("first context");
    let report = first.cache_report();
    assert!(report.iter().all(|(_, o)| matches!(
        o,
        CacheOutcome::Compiled {
            store_error: None,
            ..
        }
    )));
    drop(first);
    let second = GpuContext::new(0, dir.path()).expect("second context");
    let report = second.cache_report();
    assert!(
        report
            .iter()
            .all(|(_, o)| matches!(o, CacheOutcome::Hit { .. })),
        "{report:?}"
    );
    drop(second);
    for entry in std::fs::read_dir(dir.path()).expect("list cache") {
        let path = entry.expect("cache entry").path();
        std::fs::write(&path, b"not a cubin").expect("corrupt the cache entry");
    }
    let third = GpuContext::new(0, dir.path()).expect("context over a corrupt cache");
    assert!(third
        .cache_report()
        .iter()
        .all(|(_, o)| matches!(o, CacheOutcome::Compiled { .. })));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn resize_u8_is_bit_exact_on_odd_sizes() {
    let gpu = gpu();
    let mut rng = Rng(0x5eed_0001);
    // 23x17 -> 31x29: upscale on both axes, odd sizes, padded rows.
    let small = [
        Frame::rgb(&mut rng, 23, 17, 5),
        Frame::nv12(&mut rng, 23, 17, 3),
    ];
    assert_eq!(check_resize(&gpu, &small, 31, 29), 0);
    // Mixed down/up scale, odd output; 8x301, 23x97 and 9x70 take Pillow 13's
    // vertical-first order, the others horizontal-first.
    let mixed = [
        Frame::rgb(&mut rng, 97, 13, 0),
        Frame::nv12(&mut rng, 8, 301, 0),
        Frame::rgb(&mut rng, 23, 97, 2),
        Frame::nv12(&mut rng, 9, 70, 1),
    ];
    assert_eq!(check_resize(&gpu, &mixed, 31, 29), 0);
    // The real sizes into 768x768, including the identity.
    let real = [
        Frame::rgb(&mut rng, 1920, 1080, 0),
        Frame::nv12(&mut rng, 1920, 1080, 64),
        Frame::rgb(&mut rng, 640, 480, 4),
        Frame::nv12(&mut rng, 640, 480, 0),
        Frame::rgb(&mut rng, 768, 768, 0),
        // portrait: vertical first
        Frame::rgb(&mut rng, 1080, 1920, 0),
        Frame::nv12(&mut rng, 1080, 1920, 0),
    ];
    assert_eq!(check_resize(&gpu, &real, OUT, OUT), 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn preprocess_f32_is_bit_exact_batch_1_and_7() {
    let gpu = gpu();
    let mut rng = Rng(0x5eed_0002);
    check_f32(&gpu, &[Frame::rgb(&mut rng, 1920, 1080, 0)]);
    check_f32(&gpu, &[Frame::nv12(&mut rng, 1920, 1080, 0)]);
    let batch = [
        Frame::rgb(&mut rng, 1920, 1080, 0),
        Frame::nv12(&mut rng, 1920, 1080, 32),
        Frame::rgb(&mut rng, 640, 480, 0),
        Frame::nv12(&mut rng, 640, 480, 0),
        Frame::rgb(&mut rng, 23, 17, 1),
        Frame::nv12(&mut rng, 1079, 1919, 1),
        Frame::rgb(&mut rng, 768, 768, 0),
    ];
    check_f32(&gpu, &batch);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn preprocess_f16_rounds_the_f32_values_batch_1_and_7() {
    let gpu = gpu();
    let mut rng = Rng(0x5eed_0003);
    check_f16(&gpu, &[Frame::nv12(&mut rng, 1920, 1080, 0)]);
    let batch = [
        Frame::nv12(&mut rng, 1920, 1080, 0),
        Frame::rgb(&mut rng, 1920, 1080, 12),
        Frame::nv12(&mut rng, 640, 480, 0),
        Frame::rgb(&mut rng, 640, 480, 0),
        Frame::nv12(&mut rng, 23, 17, 0),
        Frame::rgb(&mut rng, 1080, 1920, 0),
        Frame::nv12(&mut rng, 768, 768, 0),
    ];
    check_f16(&gpu, &batch);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn preprocess_rejects_a_wrong_output_size() {
    let gpu = gpu();
    let mut pre = preprocessor(&gpu, OUT, OUT);
    let mut rng = Rng(7);
    let frame = Frame::rgb(&mut rng, 64, 48, 0);
    let mut out: CudaSlice<f32> = gpu
        .stream()
        .alloc_zeros(pre.output_len(1) - 1)
        .expect("allocate");
    let err = pre
        .preprocess_into(&[frame.gpu()], &mut out.slice_mut(..))
        .expect_err("short output buffer");
    assert!(matches!(err, GpuError::OutputSize { .. }), "{err:?}");
}

const LOC0: i64 = 50_269;

/// Sequences like the decoder's: start, BOS, text and runs of location tokens of
/// random lengths (many not a multiple of the group), EOS, padding.
fn token_batch(rng: &mut Rng, count: usize, max_len: usize) -> (Vec<i64>, Vec<SequenceInfo>) {
    let groupings = [
        LocationGrouping::Boxes,
        LocationGrouping::QuadBoxes,
        LocationGrouping::PolygonPoints,
        LocationGrouping::None,
    ];
    let mut ids = vec![1i64; count * max_len];
    let mut seqs = Vec::with_capacity(count);
    for i in 0..count {
        let length = 3 + rng.below(max_len as u64 - 2) as usize;
        let seq = &mut ids[i * max_len..i * max_len + length];
        seq[0] = 2;
        seq[1] = 0;
        let mut t = 2;
        while t < length - 1 {
            if rng.below(3) == 0 {
                seq[t] = 3 + rng.below(50_000) as i64;
                t += 1;
            } else {
                let run = 1 + rng.below(13) as usize;
                for slot in seq[t..(t + run).min(length - 1)].iter_mut() {
                    // mostly valid bins, sometimes ids just outside the range
                    *slot = match rng.below(60) {
                        0 => LOC0 - 1,
                        1 => LOC0 + 1000,
                        2 => i64::MIN,
                        3 => i64::MAX,
                        _ => LOC0 + rng.below(1000) as i64,
                    };
                }
                t += run;
            }
        }
        seq[length - 1] = 2;
        let (w, h) = [(1920.0, 1080.0), (640.0, 480.0), (23.0, 17.0)][i % 3];
        seqs.push(SequenceInfo::new(
            w,
            h,
            length as u32,
            groupings[rng.below(4) as usize],
        ));
    }
    (ids, seqs)
}

fn compare_parses(cpu: &LocationParse, gpu: &LocationParse) -> usize {
    assert_eq!(cpu.max_len, gpu.max_len);
    assert_eq!(cpu.summaries, gpu.summaries);
    let differing = cpu
        .tokens
        .iter()
        .zip(&gpu.tokens)
        .filter(|(a, b)| {
            a.bin != b.bin
                || a.run_start != b.run_start
                || a.run_len != b.run_len
                || a.group != b.group
                || a.axis != b.axis
                || a.complete != b.complete
                || a.coord_px.to_bits() != b.coord_px.to_bits()
                || a.coord_norm.to_bits() != b.coord_norm.to_bits()
        })
        .count();
    let max = cpu
        .tokens
        .iter()
        .zip(&gpu.tokens)
        .map(|(a, b)| (a.coord_px - b.coord_px).abs())
        .fold(0f32, f32::max);
    let malformed: u32 = cpu.summaries.iter().map(|s| s.malformed_groups).sum();
    println!(
        "loc tokens: {} sequences × {}: {differing} tokens differ, max coordinate error {max:e}, {malformed} malformed groups",
        cpu.summaries.len(),
        cpu.max_len
    );
    differing
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn location_tokens_match_the_cpu_twin_batch_1_and_7() {
    let gpu = gpu();
    let mut parser = GpuLocationParser::new(&gpu, LOC0).expect("location parser");
    let mut rng = Rng(0x5eed_0004);
    for (count, max_len) in [(1, 37), (7, 257), (7, 1025)] {
        let (ids, seqs) = token_batch(&mut rng, count, max_len);
        let batch = TokenBatch {
            ids: &ids,
            max_len,
            sequences: &seqs,
        };
        let cpu = parse_location_tokens(&batch, LOC0).expect("CPU parse");
        let got = parser.parse(&batch).expect("GPU parse");
        assert!(cpu.summaries.iter().any(|s| s.location_tokens > 0));
        assert_eq!(compare_parses(&cpu, &got), 0);
    }
    let malformed: u32 = {
        let (ids, seqs) = token_batch(&mut rng, 7, 257);
        let batch = TokenBatch {
            ids: &ids,
            max_len: 257,
            sequences: &seqs,
        };
        parse_location_tokens(&batch, LOC0)
            .expect("CPU parse")
            .summaries
            .iter()
            .map(|s| s.malformed_groups)
            .sum()
    };
    assert!(malformed > 0, "the generator must produce malformed runs");
}
