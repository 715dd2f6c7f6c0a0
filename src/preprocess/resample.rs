//! Pillow's bicubic resampling (`src/libImaging/Resample.c`, 8 bits per channel), reproduced
//! bit for bit.
//!
//! The Hugging Face reference resizes with `PIL.Image.resize(..., BICUBIC, reducing_gap=None)`.
//! Pillow builds per-axis coefficient tables in `double`, normalizes every output pixel's taps to
//! sum to one, converts them to fixed point with [`PRECISION_BITS`] fractional bits, and runs two
//! integer passes (horizontal, then vertical) with a clamped 8-bit intermediate image. Every step
//! below mirrors one step there; where integer arithmetic is exact, the loop order is ours (sums
//! of integers do not depend on order), which is what lets the kernels vectorize and split rows
//! across threads without changing a single output byte.
//!
//! This file holds the tables, the fixed-point arithmetic and [`ResizePlan`]; the passes
//! themselves (row split over threads, byte transposes, SIMD tile kernels) are in
//! `resample_kernels.rs`.

use super::resample_kernels::{horizontal_pass, run_rows, vertical_pass, RowSource, BLOCK_ROWS};
use super::{PreprocessError, RgbFrame};

/// Fractional bits of Pillow's fixed-point coefficients: 32 bits, minus 8 for the pixel value,
/// minus 2 for the overshoot of the bicubic lobes and the sign (`#define PRECISION_BITS (32 - 8 - 2)`).
pub const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The accumulator's start value: one half in fixed point, so that the final shift rounds.
pub(super) const ROUNDING_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Support radius of the bicubic kernel in input pixels at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic convolution kernel with a = -0.5, written exactly as Pillow's `bicubic_filter`
/// (same operation order, so the same `double` results).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `clip8`: shift the fixed-point sum down and clamp to a byte. Pillow indexes a table
/// that covers -640..=639; bicubic sums never leave that range, and clamping agrees with the
/// table everywhere inside it.
#[inline(always)]
pub(super) fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One axis' resampling table, exactly as Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc` builds it for `box = (0, in_size)`.
///
/// A CUDA kernel can upload `bounds` and `coeffs` and run the same integer sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResampleCoeffs {
    /// Input length along this axis.
    pub in_size: u32,
    /// Output length along this axis.
    pub out_size: u32,
    /// Taps reserved per output pixel: `2 * ceil(support) + 1`.
    pub ksize: u32,
    /// Per output pixel: (first input index, number of taps used). `first + count <= in_size`.
    pub bounds: Vec<(u32, u32)>,
    /// `out_size * ksize` fixed-point taps (`PRECISION_BITS` fractional bits); unused taps are 0.
    pub coeffs: Vec<i32>,
}

impl ResampleCoeffs {
    /// Pillow's bicubic table for resizing `in_size` pixels to `out_size` pixels.
    ///
    /// Sizes of 0 give an empty table (no output pixels, or output pixels with no taps); callers
    /// that resize images go through [`ResizePlan::new`], which rejects them.
    pub fn bicubic(in_size: u32, out_size: u32) -> Self {
        // Pillow passes the box edges as C floats: `(double)(in1 - in0) / outSize`.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let out_len = out_size as usize;
        let scale = if out_size == 0 {
            1.0
        } else {
            f64::from(in1 - in0) / f64::from(out_size)
        };
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = (support.ceil() as usize) * 2 + 1;

        let mut bounds = Vec::with_capacity(out_len);
        let mut coeffs = vec![0i32; out_len * ksize];
        let mut weights = vec![0f64; ksize];
        for xx in 0..out_len {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // `(int)` in C truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let count = (xmax - xmin).max(0) as usize;
            // A table has ceil(support) * 2 + 1 slots and the window spans at most that many.
            let count = count.min(ksize);
            let mut ww = 0.0f64;
            for (x, w) in weights.iter_mut().enumerate().take(count) {
                *w = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                ww += *w;
            }
            let row = &mut coeffs[xx * ksize..(xx + 1) * ksize];
            for (slot, &w) in row.iter_mut().zip(weights.iter()).take(count) {
                let w = if ww != 0.0 { w / ww } else { w };
                *slot = to_fixed(w);
            }
            bounds.push((xmin as u32, count as u32));
        }
        ResampleCoeffs {
            in_size,
            out_size,
            ksize: ksize as u32,
            bounds,
            coeffs,
        }
    }

    /// The taps of output pixel `index`, trimmed to the ones Pillow uses.
    #[inline(always)]
    pub(super) fn taps(&self, index: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[index];
        let ksize = self.ksize as usize;
        let start = index * ksize;
        (first as usize, &self.coeffs[start..start + count as usize])
    }
}

/// `normalize_coeffs_8bpc`: round half away from zero, then truncate, exactly as the C casts do.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// Which one-dimensional pass runs first. The 8-bit intermediate image is rounded, so the order
/// changes output bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOrder {
    /// Horizontal, then vertical on the rows the vertical pass reads. Every Pillow before 13.0
    /// does this for every size.
    HorizontalFirst,
    /// Vertical on the whole source, then horizontal.
    VerticalFirst,
}

impl PassOrder {
    /// Pillow 13's rule (`ImagingResampleInner`): when the height shrinks by more than twice
    /// as many pixels as the width does, the vertical pass runs first. Landscape cameras
    /// scaled to 768×768 stay horizontal-first; portrait ones (1080×1920) go vertical-first.
    pub fn pillow13(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Self {
        let dh = i64::from(src_h) - i64::from(dst_h);
        let dw = i64::from(src_w) - i64::from(dst_w);
        if dh > 0 && dh > dw * 2 {
            PassOrder::VerticalFirst
        } else {
            PassOrder::HorizontalFirst
        }
    }
}

/// Everything needed to resize frames of one size to one output size, computed once: camera
/// frames keep their size, so the tables are built when a stream starts, not per frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizePlan {
    /// Source width in pixels.
    pub src_w: u32,
    /// Source height in pixels.
    pub src_h: u32,
    /// Output width in pixels.
    pub dst_w: u32,
    /// Output height in pixels.
    pub dst_h: u32,
    /// Horizontal table; `None` when the width does not change (Pillow skips the pass).
    pub horizontal: Option<ResampleCoeffs>,
    /// Vertical table; `None` when the height does not change (Pillow skips the pass). When the
    /// horizontal pass runs first, its `bounds` are relative to `first_row` (Pillow shifts them
    /// so the intermediate image holds only the rows the vertical pass reads).
    pub vertical: Option<ResampleCoeffs>,
    /// Which pass runs first when both run.
    pub order: PassOrder,
    /// First source row the vertical pass reads (`ybox_first` in Pillow); 0 unless the
    /// horizontal pass runs first.
    pub first_row: u32,
    /// One past the last source row the vertical pass reads (`ybox_last` in Pillow); `src_h`
    /// unless the horizontal pass runs first.
    pub end_row: u32,
}

impl ResizePlan {
    /// Plans a bicubic resize from `src_w`×`src_h` to `dst_w`×`dst_h` (no aspect ratio kept, as
    /// the reference does), with the pass order of Pillow 13 ([`PassOrder::pillow13`]). Every
    /// size must be at least 1.
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Result<Self, PreprocessError> {
        let order = PassOrder::pillow13(src_w, src_h, dst_w, dst_h);
        Self::with_order(src_w, src_h, dst_w, dst_h, order)
    }

    /// As [`ResizePlan::new`] with an explicit pass order: `PassOrder::HorizontalFirst`
    /// reproduces Pillow before 13.0 for every size.
    pub fn with_order(
        src_w: u32,
        src_h: u32,
        dst_w: u32,
        dst_h: u32,
        order: PassOrder,
    ) -> Result<Self, PreprocessError> {
        for (what, value) in [
            ("source width", src_w),
            ("source height", src_h),
            ("output width", dst_w),
            ("output height", dst_h),
        ] {
            if value == 0 || value > MAX_SIDE {
                return Err(PreprocessError::ResizeSize {
                    what,
                    value,
                    max: MAX_SIDE,
                });
            }
        }
        let need_horizontal = dst_w != src_w;
        let need_vertical = dst_h != src_h;
        let mut vertical = ResampleCoeffs::bicubic(src_h, dst_h);
        let (mut first_row, mut end_row) = (0, src_h);
        if need_horizontal && order == PassOrder::HorizontalFirst {
            // The horizontal pass only produces the rows the vertical pass will read.
            first_row = vertical.bounds[0].0;
            let last = vertical.bounds[dst_h as usize - 1];
            end_row = last.0 + last.1;
            for bound in &mut vertical.bounds {
                bound.0 -= first_row;
            }
        }
        Ok(ResizePlan {
            src_w,
            src_h,
            dst_w,
            dst_h,
            horizontal: need_horizontal.then(|| ResampleCoeffs::bicubic(src_w, dst_w)),
            vertical: need_vertical.then_some(vertical),
            order,
            first_row,
            end_row,
        })
    }

    /// Bytes of packed RGB the output holds: `dst_w * dst_h * 3`.
    pub fn output_len(&self) -> usize {
        self.dst_w as usize * self.dst_h as usize * 3
    }

    /// True when the plan changes nothing (Pillow returns a copy).
    pub fn is_identity(&self) -> bool {
        self.horizontal.is_none() && self.vertical.is_none()
    }

    /// Resizes `src` into `dst` (packed RGB, `dst_w * dst_h * 3` bytes) on the calling thread.
    /// `scratch` holds the intermediate image; it grows on the first call and is reused after.
    pub fn resize_into(
        &self,
        src: &RgbFrame<'_>,
        dst: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), PreprocessError> {
        self.resize_into_threaded(src, dst, scratch, 1)
    }

    /// As [`ResizePlan::resize_into`], with each pass's rows split across up to `threads`
    /// scoped threads. Rows are independent within a pass, so the bytes are the same for any
    /// thread count.
    pub fn resize_into_threaded(
        &self,
        src: &RgbFrame<'_>,
        dst: &mut [u8],
        scratch: &mut Vec<u8>,
        threads: usize,
    ) -> Result<(), PreprocessError> {
        self.check_frame(src)?;
        if dst.len() != self.output_len() {
            return Err(PreprocessError::OutputLength {
                what: "resized RGB buffer",
                expected: self.output_len(),
                got: dst.len(),
            });
        }
        let threads = threads.max(1);
        let dst_row = self.dst_w as usize * 3;
        // Per thread, the horizontal pass needs room for one transposed block of source rows.
        let block_work = BLOCK_ROWS * self.src_w as usize * 3;
        match (&self.horizontal, &self.vertical) {
            (None, None) => {
                for (y, out) in dst.chunks_exact_mut(dst_row).enumerate() {
                    out.copy_from_slice(&src.row(y)[..dst_row]);
                }
            }
            (Some(h), None) => {
                scratch.resize(block_work * threads, 0);
                let rows = RowSource::Frame(src, 0);
                run_rows(dst, dst_row, threads, scratch, |y0, chunk, work| {
                    horizontal_pass(h, &rows, y0, chunk, work)
                });
            }
            (None, Some(v)) => {
                let rows = RowSource::Frame(src, 0);
                run_rows(dst, dst_row, threads, &mut [], |y0, chunk, _| {
                    vertical_pass(v, &rows, dst_row, y0, chunk)
                });
            }
            (Some(h), Some(v)) if self.order == PassOrder::HorizontalFirst => {
                let temp_len = (self.end_row - self.first_row) as usize * dst_row;
                scratch.resize(temp_len + block_work * threads, 0);
                let (temp, work) = scratch.split_at_mut(temp_len);
                let input = RowSource::Frame(src, self.first_row as usize);
                run_rows(temp, dst_row, threads, work, |y0, chunk, work| {
                    horizontal_pass(h, &input, y0, chunk, work)
                });
                let temp = RowSource::Packed(temp, dst_row);
                run_rows(dst, dst_row, threads, &mut [], |y0, chunk, _| {
                    vertical_pass(v, &temp, dst_row, y0, chunk)
                });
            }
            (Some(h), Some(v)) => {
                let src_row = self.src_w as usize * 3;
                let temp_len = self.dst_h as usize * src_row;
                scratch.resize(temp_len + block_work * threads, 0);
                let (temp, work) = scratch.split_at_mut(temp_len);
                let input = RowSource::Frame(src, 0);
                run_rows(temp, src_row, threads, &mut [], |y0, chunk, _| {
                    vertical_pass(v, &input, src_row, y0, chunk)
                });
                let temp = RowSource::Packed(temp, src_row);
                run_rows(dst, dst_row, threads, work, |y0, chunk, work| {
                    horizontal_pass(h, &temp, y0, chunk, work)
                });
            }
        }
        Ok(())
    }

    /// The frame must be the size the plan was built for; the frame itself checked its buffer.
    pub(crate) fn check_frame(&self, src: &RgbFrame<'_>) -> Result<(), PreprocessError> {
        if src.width() != self.src_w || src.height() != self.src_h {
            return Err(PreprocessError::FrameSizeChanged {
                planned_w: self.src_w,
                planned_h: self.src_h,
                got_w: src.width(),
                got_h: src.height(),
            });
        }
        Ok(())
    }
}

/// Largest side accepted, so that every index and fixed-point product stays in range.
pub const MAX_SIDE: u32 = 1 << 15;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, data: &[u8]) -> RgbFrame<'_> {
        RgbFrame::new(w, h, w as usize * 3, data).expect("valid test frame")
    }

    #[test]
    fn precision_bits_is_pillows() {
        assert_eq!(PRECISION_BITS, 22);
        assert_eq!(ROUNDING_HALF, 1 << 21);
    }

    #[test]
    fn bicubic_filter_matches_keys_kernel() {
        assert_eq!(bicubic_filter(0.0), 1.0);
        assert_eq!(bicubic_filter(1.0), 0.0);
        assert_eq!(bicubic_filter(2.0), 0.0);
        assert_eq!(bicubic_filter(0.5), 0.5625);
        assert_eq!(bicubic_filter(-1.5), -0.0625);
    }

    #[test]
    fn downscale_table_has_pillows_shape() {
        // 1920 -> 768: scale 2.5, support 5, ksize 11.
        let c = ResampleCoeffs::bicubic(1920, 768);
        assert_eq!(c.ksize, 11);
        assert_eq!(c.bounds.len(), 768);
        assert_eq!(c.coeffs.len(), 768 * 11);
        // First pixel: center 1.25, window [(int)(-3.25), (int)6.75) = [0, 6).
        assert_eq!(c.bounds[0], (0, 6));
        // A middle pixel: center 251.25 -> [(int)246.75, (int)256.75) = [246, 256).
        assert_eq!(c.bounds[100], (246, 10));
        let last = c.bounds[767];
        assert_eq!(last.0 + last.1, 1920);
        for xx in 0..768 {
            let (first, count) = c.bounds[xx];
            assert!(first + count <= 1920);
            let row = &c.coeffs[xx * 11..(xx + 1) * 11];
            let sum: i64 = row.iter().map(|&k| i64::from(k)).sum();
            // Taps sum to one within the rounding of each tap.
            assert!((sum - (1 << 22)).abs() <= 11, "pixel {xx}: sum {sum}");
            assert!(row[count as usize..].iter().all(|&k| k == 0));
        }
    }

    #[test]
    fn upscale_table_uses_unit_support() {
        let c = ResampleCoeffs::bicubic(2, 3);
        assert_eq!(c.ksize, 5);
        assert_eq!(c.bounds, vec![(0, 2), (0, 2), (0, 2)]);
        // Symmetric middle pixel: center 1.0 between the two inputs, equal weights.
        assert_eq!(c.coeffs[5], 1 << 21);
        assert_eq!(c.coeffs[6], 1 << 21);
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        assert_eq!(to_fixed(0.5), 1 << 21);
        assert_eq!(to_fixed(-0.5), -(1 << 21));
        assert_eq!(to_fixed(1.0 / f64::from(1u32 << 23)), 1);
        assert_eq!(to_fixed(-1.0 / f64::from(1u32 << 23)), -1);
        assert_eq!(to_fixed(0.9 / f64::from(1u32 << 23)), 0);
    }

    #[test]
    fn clip8_clamps_like_the_lookup_table() {
        assert_eq!(clip8(-1), 0);
        assert_eq!(clip8(ROUNDING_HALF), 0);
        assert_eq!(clip8(255 << 22), 255);
        assert_eq!(clip8(300 << 22), 255);
        assert_eq!(clip8((17 << 22) + ROUNDING_HALF), 17);
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        use PassOrder::*;
        assert_eq!(PassOrder::pillow13(1920, 1080, 768, 768), HorizontalFirst);
        assert_eq!(PassOrder::pillow13(1280, 720, 768, 768), HorizontalFirst);
        assert_eq!(PassOrder::pillow13(1080, 1920, 768, 768), VerticalFirst);
        // 41 rows lost vs 2 * 18 columns: vertical first; 36 would tie and stay horizontal.
        assert_eq!(PassOrder::pillow13(232, 66, 214, 25), VerticalFirst);
        assert_eq!(PassOrder::pillow13(232, 61, 214, 25), HorizontalFirst);
        assert_eq!(PassOrder::pillow13(193, 203, 296, 117), VerticalFirst);
        let plan = ResizePlan::new(1080, 1920, 768, 768).expect("plan");
        assert_eq!(
            (plan.order, plan.first_row, plan.end_row),
            (VerticalFirst, 0, 1920)
        );
        let plan = ResizePlan::with_order(1080, 1920, 768, 768, HorizontalFirst).expect("plan");
        assert_eq!(plan.order, HorizontalFirst);
    }

    #[test]
    fn same_size_is_identity() {
        let data: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let plan = ResizePlan::new(5, 4, 5, 4).expect("plan");
        assert!(plan.is_identity());
        let mut out = vec![0u8; plan.output_len()];
        plan.resize_into(&frame(5, 4, &data), &mut out, &mut Vec::new())
            .expect("resize");
        assert_eq!(out, data);
    }

    #[test]
    fn constant_image_stays_constant() {
        // Taps sum to one (to within a few units of 2^-22), so a flat image stays flat.
        for (sw, sh, dw, dh) in [(23, 17, 31, 29), (64, 48, 7, 5), (3, 9, 9, 3)] {
            let data = vec![200u8; sw * sh * 3];
            let plan = ResizePlan::new(sw as u32, sh as u32, dw, dh).expect("plan");
            let mut out = vec![0u8; plan.output_len()];
            plan.resize_into(
                &frame(sw as u32, sh as u32, &data),
                &mut out,
                &mut Vec::new(),
            )
            .expect("resize");
            assert!(out.iter().all(|&v| v == 200), "{sw}x{sh}->{dw}x{dh}");
        }
    }

    #[test]
    fn one_pixel_upscales_to_flat() {
        let data = [10u8, 20, 30];
        let plan = ResizePlan::new(1, 1, 4, 3).expect("plan");
        let mut out = vec![0u8; plan.output_len()];
        plan.resize_into(&frame(1, 1, &data), &mut out, &mut Vec::new())
            .expect("resize");
        assert_eq!(out, [10u8, 20, 30].repeat(12));
    }

    #[test]
    fn threads_do_not_change_bytes() {
        let (sw, sh) = (97u32, 83u32);
        let data: Vec<u8> = (0..sw * sh * 3)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let f = frame(sw, sh, &data);
        for order in [PassOrder::HorizontalFirst, PassOrder::VerticalFirst] {
            let plan = ResizePlan::with_order(sw, sh, 41, 29, order).expect("plan");
            let mut one = vec![0u8; plan.output_len()];
            let mut many = vec![0u8; plan.output_len()];
            plan.resize_into(&f, &mut one, &mut Vec::new())
                .expect("resize");
            plan.resize_into_threaded(&f, &mut many, &mut Vec::new(), 3)
                .expect("resize");
            assert_eq!(one, many, "{order:?}");
        }
    }

    #[test]
    fn rejects_zero_sizes_and_wrong_frames() {
        assert!(matches!(
            ResizePlan::new(0, 5, 5, 5),
            Err(PreprocessError::ResizeSize {
                what: "source width",
                ..
            })
        ));
        assert!(ResizePlan::new(5, 5, 5, 0).is_err());
        let plan = ResizePlan::new(4, 4, 2, 2).expect("plan");
        let data = vec![0u8; 5 * 4 * 3];
        let mut out = vec![0u8; plan.output_len()];
        assert!(matches!(
            plan.resize_into(&frame(5, 4, &data), &mut out, &mut Vec::new()),
            Err(PreprocessError::FrameSizeChanged { got_w: 5, .. })
        ));
        let mut short = vec![0u8; 3];
        assert!(matches!(
            plan.resize_into(&frame(4, 4, &data[..48]), &mut short, &mut Vec::new()),
            Err(PreprocessError::OutputLength {
                expected: 12,
                got: 3,
                ..
            })
        ));
    }
}
