//! Frame → `pixel_values`: Florence-2's image preprocessing on the CPU, bit for bit the same as
//! the Hugging Face reference (`CLIPImageProcessor` on its Pillow path, DESIGN.md §3).
//!
//! The reference does, per image:
//! 1. `PIL.Image.resize((W, H), BICUBIC)` on RGB uint8: Pillow's fixed-point separable filter,
//!    horizontal pass then vertical pass, each rounding to uint8 ([`resample`]);
//! 2. `float32(float64(u8) * rescale_factor)`;
//! 3. `(x - mean) / std` in float32;
//! 4. HWC → CHW.
//!
//! Steps 2–4 depend only on the byte value and the channel, so they collapse into a 3×256 table
//! computed once with the same float operations; applying it is exact by construction. Step 1
//! is integer arithmetic after the coefficient tables, so any evaluation order and any split of
//! rows across threads gives the same bytes. The CUDA twin uploads the same tables
//! ([`ResampleCoeffs`], [`Preprocessor::lut_f32`]) and does the same integer sums.

/// Runtime dispatch: the same generic loops compiled once more with AVX2 enabled, chosen when
/// the CPU has it. The integer results are identical either way; only the speed differs.
macro_rules! dispatch {
    ($name:ident, $generic:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        /// # Safety
        /// The CPU must support AVX2.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2($($arg: $ty),*) {
            $generic($($arg),*)
        }

        #[inline(always)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

mod config;
mod frame;
#[cfg(test)]
mod golden_tests;
mod resample;
mod resample_kernels;

use half::f16;

pub use config::{ImageProcessorConfig, RESAMPLE_BICUBIC};
pub use frame::{nv12_to_rgb, Nv12Frame, RgbFrame, YuvMatrix, YuvToRgbCoeffs};
pub use resample::{PassOrder, ResampleCoeffs, ResizePlan, MAX_SIDE, PRECISION_BITS};

/// Everything that can go wrong turning frames into model input.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The preprocessor config file could not be read.
    #[error("cannot read image processor config {path}: {source}")]
    ConfigRead {
        /// File path.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The preprocessor config is not valid JSON.
    #[error("image processor config {path} is not valid JSON: {source}")]
    ConfigParse {
        /// File path.
        path: String,
        /// Parser error with line and column.
        source: serde_json::Error,
    },
    /// A key asks for preprocessing this module does not reproduce.
    #[error("image processor config {path}: key `{key}` found {found}; allowed: {allowed}")]
    ConfigUnsupported {
        /// File path.
        path: String,
        /// The offending key.
        key: String,
        /// Its value as JSON (or `null` when absent).
        found: String,
        /// What would be accepted.
        allowed: String,
    },
    /// A frame with no pixels.
    #[error("frame is {width}x{height}; width and height must be at least 1")]
    FrameEmpty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Rows closer together than one row of pixels.
    #[error("{what}: stride {stride} bytes is shorter than a row of pixels ({min} bytes)")]
    FrameStride {
        /// Which rows.
        what: &'static str,
        /// The stride given.
        stride: usize,
        /// The smallest stride allowed.
        min: usize,
    },
    /// A frame buffer too short for its size and stride.
    #[error("{what} {width}x{height}: buffer holds {got} bytes, needs at least {needed}")]
    FrameBuffer {
        /// Which buffer.
        what: &'static str,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// A resize size outside 1..=MAX_SIDE.
    #[error("resize {what} is {value}; allowed: 1..={max}")]
    ResizeSize {
        /// Which side.
        what: &'static str,
        /// The value given.
        value: u32,
        /// The largest side allowed.
        max: u32,
    },
    /// A frame that does not have the size its resize plan was built for.
    #[error("frame is {got_w}x{got_h} but the resize plan was built for {planned_w}x{planned_h}")]
    FrameSizeChanged {
        /// Planned width.
        planned_w: u32,
        /// Planned height.
        planned_h: u32,
        /// Frame width.
        got_w: u32,
        /// Frame height.
        got_h: u32,
    },
    /// `do_resize` is false and the frame is not already the model's input size.
    #[error(
        "frame is {got_w}x{got_h}, but do_resize is false and the model takes {want_w}x{want_h}"
    )]
    FrameNotModelSize {
        /// Model input width.
        want_w: u32,
        /// Model input height.
        want_h: u32,
        /// Frame width.
        got_w: u32,
        /// Frame height.
        got_h: u32,
    },
    /// An output buffer of the wrong length.
    #[error("{what} holds {got} elements, expected {expected}")]
    OutputLength {
        /// Which buffer.
        what: &'static str,
        /// Elements expected.
        expected: usize,
        /// Elements given.
        got: usize,
    },
}

/// Resize plans kept per source size; cameras rarely change size, so a handful covers a node.
const MAX_CACHED_PLANS: usize = 16;

/// Turns RGB (or NV12) frames into Florence-2's `pixel_values`: `[3, H, W]` per image, batches
/// as contiguous `[N, 3, H, W]`, in float32 or float16.
///
/// Holds its scratch buffers, so steady-state calls do not allocate.
#[derive(Debug)]
pub struct Preprocessor {
    config: ImageProcessorConfig,
    lut_f32: Box<[[f32; 256]; 3]>,
    lut_f16: Box<[[f16; 256]; 3]>,
    threads: usize,
    plans: Vec<ResizePlan>,
    resized: Vec<u8>,
    scratch: Vec<u8>,
    rgb: Vec<u8>,
}

impl Preprocessor {
    /// Builds the value tables for `config`. Runs on the calling thread only until
    /// [`Preprocessor::with_threads`] says otherwise.
    pub fn new(config: ImageProcessorConfig) -> Result<Self, PreprocessError> {
        let (h, w) = config.size;
        for (what, value) in [("output height", h), ("output width", w)] {
            if value == 0 || value > MAX_SIDE {
                return Err(PreprocessError::ResizeSize {
                    what,
                    value,
                    max: MAX_SIDE,
                });
            }
        }
        let mut lut_f32 = Box::new([[0f32; 256]; 3]);
        let mut lut_f16 = Box::new([[f16::ZERO; 256]; 3]);
        for c in 0..3 {
            for v in 0..256 {
                let x = normalized_value(&config, c, v as u8);
                lut_f32[c][v] = x;
                // Round to nearest even, as torch's `.half()` does.
                lut_f16[c][v] = f16::from_f32(x);
            }
        }
        Ok(Preprocessor {
            config,
            lut_f32,
            lut_f16,
            threads: 1,
            plans: Vec::new(),
            resized: Vec::new(),
            scratch: Vec::new(),
            rgb: Vec::new(),
        })
    }

    /// Splits each image's resize and normalization over `threads` scoped threads (1 = the
    /// calling thread only). The output is the same for every thread count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The settings this preprocessor applies.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// Elements of one image's output: `3 * H * W`.
    pub fn image_len(&self) -> usize {
        3 * self.config.size.0 as usize * self.config.size.1 as usize
    }

    /// The float32 value of byte `v` in channel `c` (R, G, B = 0, 1, 2) for every (c, v): what
    /// a GPU kernel uploads to reproduce steps 2–3 exactly.
    pub fn lut_f32(&self) -> &[[f32; 256]; 3] {
        &self.lut_f32
    }

    /// Writes one image, CHW float32, into `out` (`3 * H * W` elements).
    pub fn preprocess_into(
        &mut self,
        frame: &RgbFrame<'_>,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        check_len("pixel_values (f32)", self.image_len(), out.len())?;
        let lut = &*self.lut_f32;
        let (resized, threads) = resize_stage(
            &self.config,
            &mut self.plans,
            &mut self.resized,
            &mut self.scratch,
            self.threads,
            frame,
        )?;
        normalize_chw(lut, &resized.unwrap_or(*frame), out, threads);
        Ok(())
    }

    /// Writes one image, CHW float16 (the float32 result rounded to nearest even).
    pub fn preprocess_into_f16(
        &mut self,
        frame: &RgbFrame<'_>,
        out: &mut [f16],
    ) -> Result<(), PreprocessError> {
        check_len("pixel_values (f16)", self.image_len(), out.len())?;
        let lut = &*self.lut_f16;
        let (resized, threads) = resize_stage(
            &self.config,
            &mut self.plans,
            &mut self.resized,
            &mut self.scratch,
            self.threads,
            frame,
        )?;
        normalize_chw(lut, &resized.unwrap_or(*frame), out, threads);
        Ok(())
    }

    /// Writes a batch, NCHW float32 contiguous, `frames.len() * 3 * H * W` elements.
    pub fn preprocess_batch_into(
        &mut self,
        frames: &[RgbFrame<'_>],
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        let n = self.image_len();
        check_len("batched pixel_values (f32)", frames.len() * n, out.len())?;
        for (frame, image) in frames.iter().zip(out.chunks_exact_mut(n.max(1))) {
            self.preprocess_into(frame, image)?;
        }
        Ok(())
    }

    /// Writes a batch, NCHW float16 contiguous.
    pub fn preprocess_batch_into_f16(
        &mut self,
        frames: &[RgbFrame<'_>],
        out: &mut [f16],
    ) -> Result<(), PreprocessError> {
        let n = self.image_len();
        check_len("batched pixel_values (f16)", frames.len() * n, out.len())?;
        for (frame, image) in frames.iter().zip(out.chunks_exact_mut(n.max(1))) {
            self.preprocess_into_f16(frame, image)?;
        }
        Ok(())
    }

    /// Converts an NV12 frame with `matrix` ([`nv12_to_rgb`]) and preprocesses the result.
    pub fn preprocess_nv12_into(
        &mut self,
        frame: &Nv12Frame<'_>,
        matrix: YuvMatrix,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        let (w, h) = (frame.width(), frame.height());
        let mut rgb = std::mem::take(&mut self.rgb);
        rgb.resize(w as usize * h as usize * 3, 0);
        let result = nv12_to_rgb(frame, matrix, &mut rgb)
            .and_then(|()| RgbFrame::packed(w, h, &rgb))
            .and_then(|rgb_frame| self.preprocess_into(&rgb_frame, out));
        self.rgb = rgb;
        result
    }
}

/// Step 2 and 3 for one byte value: `float32(float64(v) * rescale)`, then `(x - mean) / std`
/// in float32, exactly as numpy evaluates them in the reference.
fn normalized_value(config: &ImageProcessorConfig, channel: usize, v: u8) -> f32 {
    let x = if config.do_rescale {
        (f64::from(v) * config.rescale_factor) as f32
    } else {
        f32::from(v)
    };
    if config.do_normalize {
        (x - config.image_mean[channel]) / config.image_std[channel]
    } else {
        x
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), PreprocessError> {
    if expected != got {
        return Err(PreprocessError::OutputLength {
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// Resizes `frame` to the model size when it needs it. Returns a view of the resized pixels,
/// or `None` when the frame already has the model size (the reference's resize is then a copy).
fn resize_stage<'b>(
    config: &ImageProcessorConfig,
    plans: &mut Vec<ResizePlan>,
    resized: &'b mut Vec<u8>,
    scratch: &mut Vec<u8>,
    threads: usize,
    frame: &RgbFrame<'_>,
) -> Result<(Option<RgbFrame<'b>>, usize), PreprocessError> {
    let (h, w) = config.size;
    if frame.width() == w && frame.height() == h {
        return Ok((None, threads));
    }
    if !config.do_resize {
        return Err(PreprocessError::FrameNotModelSize {
            want_w: w,
            want_h: h,
            got_w: frame.width(),
            got_h: frame.height(),
        });
    }
    let index = match plans
        .iter()
        .position(|p| p.src_w == frame.width() && p.src_h == frame.height())
    {
        Some(i) => i,
        None => {
            if plans.len() >= MAX_CACHED_PLANS {
                plans.remove(0);
            }
            plans.push(ResizePlan::new(frame.width(), frame.height(), w, h)?);
            plans.len() - 1
        }
    };
    let plan = &plans[index];
    resized.resize(plan.output_len(), 0);
    plan.resize_into_threaded(frame, resized, scratch, threads)?;
    Ok((Some(RgbFrame::packed(w, h, resized)?), threads))
}

/// Applies the per-channel table and writes planar CHW, rows split over `threads`.
fn normalize_chw<T: Copy + Send + Sync>(
    lut: &[[T; 256]; 3],
    src: &RgbFrame<'_>,
    out: &mut [T],
    threads: usize,
) {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let plane = w * h;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let rows_per = if threads <= 1 { h } else { h.div_ceil(threads) };
    let chunk = (rows_per * w).max(1);
    let work = |y0: usize, r: &mut [T], g: &mut [T], b: &mut [T]| {
        for (i, ((r, g), b)) in r
            .chunks_exact_mut(w)
            .zip(g.chunks_exact_mut(w))
            .zip(b.chunks_exact_mut(w))
            .enumerate()
        {
            let pixels = src.row(y0 + i).chunks_exact(3);
            for (((px, r), g), b) in pixels.zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
                *r = lut[0][usize::from(px[0])];
                *g = lut[1][usize::from(px[1])];
                *b = lut[2][usize::from(px[2])];
            }
        }
    };
    if threads <= 1 || h < 2 * threads {
        work(0, r, g, b);
        return;
    }
    std::thread::scope(|scope| {
        let work = &work;
        let mut parts = r
            .chunks_mut(chunk)
            .zip(g.chunks_mut(chunk))
            .zip(b.chunks_mut(chunk))
            .enumerate();
        let first = parts.next();
        for (i, ((r, g), b)) in parts {
            scope.spawn(move || work(i * rows_per, r, g, b));
        }
        if let Some((_, ((r, g), b))) = first {
            work(0, r, g, b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config(h: u32, w: u32) -> ImageProcessorConfig {
        ImageProcessorConfig {
            size: (h, w),
            ..ImageProcessorConfig::florence2()
        }
    }

    #[test]
    fn table_matches_float_semantics() {
        let c = ImageProcessorConfig::florence2();
        // 255 * (1/255) is exactly 1.0 in double, so the red value is (1 - 0.485f) / 0.229f.
        assert_eq!(normalized_value(&c, 0, 255), (1.0f32 - 0.485) / 0.229);
        assert_eq!(normalized_value(&c, 2, 0), (0.0f32 - 0.406) / 0.225);
        // The double product differs from a float32 product for some bytes; the table uses
        // the double one, as the reference does.
        let v = 77u8;
        assert_eq!(
            normalized_value(&c, 1, v),
            (((f64::from(v) / 255.0) as f32) - 0.456) / 0.224
        );
    }

    #[test]
    fn identity_size_skips_resize_and_writes_planes() {
        let mut p = Preprocessor::new(small_config(2, 3)).expect("preprocessor");
        let data: Vec<u8> = (0..18).map(|i| (i * 13) as u8).collect();
        let frame = RgbFrame::packed(3, 2, &data).expect("frame");
        let mut out = vec![0f32; 18];
        p.preprocess_into(&frame, &mut out).expect("preprocess");
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..3 {
                    let v = data[(y * 3 + x) * 3 + c];
                    assert_eq!(out[c * 6 + y * 3 + x], p.lut_f32()[c][usize::from(v)]);
                }
            }
        }
        assert!(p.plans.is_empty());
    }

    #[test]
    fn batch_f16_and_threads_agree_with_single_f32() {
        let cfg = small_config(29, 31);
        let mut single = Preprocessor::new(cfg.clone()).expect("preprocessor");
        let mut threaded = Preprocessor::new(cfg)
            .expect("preprocessor")
            .with_threads(3);
        let a: Vec<u8> = (0..23 * 17 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<u8> = (0..40 * 9 * 3).map(|i| (i * 11 % 253) as u8).collect();
        let frames = [
            RgbFrame::packed(23, 17, &a).expect("frame"),
            RgbFrame::packed(40, 9, &b).expect("frame"),
        ];
        let n = single.image_len();
        let mut one = vec![0f32; 2 * n];
        for (f, o) in frames.iter().zip(one.chunks_exact_mut(n)) {
            single.preprocess_into(f, o).expect("preprocess");
        }
        let mut batch = vec![0f32; 2 * n];
        threaded
            .preprocess_batch_into(&frames, &mut batch)
            .expect("batch");
        assert_eq!(one, batch);
        let mut half = vec![f16::ZERO; 2 * n];
        threaded
            .preprocess_batch_into_f16(&frames, &mut half)
            .expect("batch f16");
        assert!(one.iter().zip(&half).all(|(f, h)| f16::from_f32(*f) == *h));
        assert_eq!(threaded.plans.len(), 2);
    }

    #[test]
    fn wrong_lengths_and_unresized_frames_are_errors() {
        let mut p = Preprocessor::new(small_config(4, 4)).expect("preprocessor");
        let data = vec![0u8; 5 * 5 * 3];
        let frame = RgbFrame::packed(5, 5, &data).expect("frame");
        assert!(matches!(
            p.preprocess_into(&frame, &mut [0f32; 47]),
            Err(PreprocessError::OutputLength {
                expected: 48,
                got: 47,
                ..
            })
        ));
        assert!(matches!(
            p.preprocess_batch_into(&[frame, frame], &mut [0f32; 48]),
            Err(PreprocessError::OutputLength { expected: 96, .. })
        ));
        let mut no_resize = Preprocessor::new(ImageProcessorConfig {
            do_resize: false,
            ..small_config(4, 4)
        })
        .expect("preprocessor");
        assert!(matches!(
            no_resize.preprocess_into(&frame, &mut [0f32; 48]),
            Err(PreprocessError::FrameNotModelSize { got_w: 5, .. })
        ));
        assert!(Preprocessor::new(small_config(0, 4)).is_err());
    }

    #[test]
    fn nv12_path_equals_convert_then_preprocess() {
        let (w, h) = (7u32, 5u32);
        let y_plane: Vec<u8> = (0..w * h).map(|i| (16 + i * 5 % 220) as u8).collect();
        let uv_plane: Vec<u8> = (0..8 * 3).map(|i| (60 + i * 9 % 130) as u8).collect();
        let nv12 = Nv12Frame::new(w, h, w as usize, &y_plane, 8, &uv_plane).expect("nv12");
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        nv12_to_rgb(&nv12, YuvMatrix::Bt709Limited, &mut rgb).expect("convert");
        let mut p = Preprocessor::new(small_config(6, 9)).expect("preprocessor");
        let mut expected = vec![0f32; p.image_len()];
        p.preprocess_into(&RgbFrame::packed(w, h, &rgb).expect("frame"), &mut expected)
            .expect("rgb path");
        let mut got = vec![0f32; p.image_len()];
        p.preprocess_nv12_into(&nv12, YuvMatrix::Bt709Limited, &mut got)
            .expect("nv12 path");
        assert_eq!(expected, got);
    }
}
