//! The host-side half of `kernels/preprocess.cu` that needs no GPU: the `#[repr(C)]` types the
//! kernels read ([`TapTable`], [`PreprocessItem`], [`KernelYuvCoeffs`]), the frames of a batch
//! ([`GpuFrame`]) and their checks, the output element types, and [`BatchPlan`], which lays a
//! batch out (descriptors, staging offsets, concatenated tap tables). Pure data, so the layout
//! and the kernels' logic are tested here on the host. [`super::preprocess`] uploads a plan and
//! launches the kernels ([`GpuPreprocessor`](super::GpuPreprocessor)) and re-exports the public
//! items of this module, so their paths are `gpu::preprocess::*`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

use super::GpuError;
use crate::preprocess::{PassOrder, ResampleCoeffs, YuvToRgbCoeffs, MAX_SIDE};

/// Largest batch: the batch is the grid's z dimension (CUDA allows 65 535).
pub const MAX_BATCH: usize = 1024;
/// Frames are placed at this alignment in the staging buffer.
const STAGING_ALIGN: usize = 256;

/// One axis of the resize: where its (first input, tap count) pairs and its
/// coefficients start in the uploaded tables.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapTable {
    pub bounds_offset: u32,
    pub coeff_offset: u32,
    pub ksize: u32,
    pub out_size: u32,
}

/// Per-frame descriptor read by both kernels (mirrors `PreprocessItem` in the .cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreprocessItem {
    pub src: u64,
    pub src_uv: u64,
    pub tmp_offset: u64,
    pub format: u32,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub uv_stride: u32,
    pub row_first: u32,
    pub rows: u32,
    /// 1 when the vertical pass runs first (Pillow 13's order for this size).
    pub vertical_first: u32,
    pub horizontal: TapTable,
    pub vertical: TapTable,
}

/// The CPU twin's integer YUV → RGB coefficients ([`YuvToRgbCoeffs`]) as the kernel
/// takes them (`YuvCoeffs` in preprocess.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelYuvCoeffs {
    pub y: i32,
    pub rv: i32,
    pub gu: i32,
    pub gv: i32,
    pub bu: i32,
}

impl From<YuvToRgbCoeffs> for KernelYuvCoeffs {
    fn from(c: YuvToRgbCoeffs) -> Self {
        KernelYuvCoeffs {
            y: c.y,
            rv: c.rv,
            gu: c.gu,
            gv: c.gv,
            bu: c.bu,
        }
    }
}

// SAFETY: #[repr(C)] structs of plain scalars, mirrored in preprocess.cu and pinned
// by the size tests below.
unsafe impl DeviceRepr for TapTable {}
// SAFETY: as TapTable: #[repr(C)] plain scalars mirrored in preprocess.cu.
unsafe impl DeviceRepr for PreprocessItem {}
// SAFETY: as TapTable: #[repr(C)] plain scalars mirrored in preprocess.cu.
unsafe impl DeviceRepr for KernelYuvCoeffs {}
// SAFETY: zero is a valid value of every field.
unsafe impl ValidAsZeroBits for PreprocessItem {}

/// Up to two planes of a frame (RGB, or luma then chroma) as (bytes, stride).
type FramePlanes<'a> = [Option<(&'a [u8], u32)>; 2];

/// A frame in host memory, borrowed for the duration of the upload.
#[derive(Debug, Clone, Copy)]
pub enum GpuFrame<'a> {
    /// Packed RGB8, `stride` bytes per row (≥ 3 × width).
    Rgb {
        data: &'a [u8],
        width: u32,
        height: u32,
        stride: u32,
    },
    /// NV12: a luma plane and an interleaved U/V plane at half resolution (rounded
    /// up for odd sizes); each chroma sample covers a 2×2 block of luma.
    Nv12 {
        luma: &'a [u8],
        chroma: &'a [u8],
        width: u32,
        height: u32,
        luma_stride: u32,
        chroma_stride: u32,
    },
}

impl GpuFrame<'_> {
    pub fn size(&self) -> (u32, u32) {
        match *self {
            GpuFrame::Rgb { width, height, .. } | GpuFrame::Nv12 { width, height, .. } => {
                (width, height)
            }
        }
    }

    /// The planes as (bytes to upload, stride); checks that the slices hold them.
    pub(super) fn planes(&self, index: usize) -> Result<FramePlanes<'_>, GpuError> {
        let bad = |reason: String| GpuError::Frame { index, reason };
        let (w, h) = self.size();
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(bad(format!(
                "size {w}x{h}; each side must be between 1 and {MAX_SIDE}"
            )));
        }
        let needed = |stride: u32, rows: u32, row_bytes: u32| {
            stride as usize * (rows as usize - 1) + row_bytes as usize
        };
        match *self {
            GpuFrame::Rgb { data, stride, .. } => {
                if stride < 3 * w {
                    return Err(bad(format!("RGB stride {stride} < 3 × width {w}")));
                }
                let n = needed(stride, h, 3 * w);
                let bytes = data.get(..n).ok_or_else(|| {
                    bad(format!(
                        "RGB data has {} bytes, {w}x{h} with stride {stride} needs {n}",
                        data.len()
                    ))
                })?;
                Ok([Some((bytes, stride)), None])
            }
            GpuFrame::Nv12 {
                luma,
                chroma,
                luma_stride,
                chroma_stride,
                ..
            } => {
                let cw = w.div_ceil(2) * 2;
                let ch = h.div_ceil(2);
                if luma_stride < w || chroma_stride < cw {
                    return Err(bad(format!(
                        "NV12 strides {luma_stride}/{chroma_stride} < {w}/{cw} (luma width / interleaved chroma width)"
                    )));
                }
                let nl = needed(luma_stride, h, w);
                let nc = needed(chroma_stride, ch, cw);
                let l = luma.get(..nl).ok_or_else(|| {
                    bad(format!("NV12 luma has {} bytes, needs {nl}", luma.len()))
                })?;
                let c = chroma.get(..nc).ok_or_else(|| {
                    bad(format!(
                        "NV12 chroma has {} bytes, needs {nc}",
                        chroma.len()
                    ))
                })?;
                Ok([Some((l, luma_stride)), Some((c, chroma_stride))])
            }
        }
    }
}

/// Which kernel writes the output, by element type. Sealed: f32 and f16 are the
/// normalized CHW planes; u8 is the bare resize (packed RGB, HWC, per frame), which
/// the tests compare with the CPU resize on its own.
pub trait OutputElement: DeviceRepr + sealed::Sealed {
    const KIND: OutputKind;
}
impl OutputElement for f32 {
    const KIND: OutputKind = OutputKind::F32;
}
impl OutputElement for half::f16 {
    const KIND: OutputKind = OutputKind::F16;
}
impl OutputElement for u8 {
    const KIND: OutputKind = OutputKind::U8;
}

/// The output formats, each written by its own vertical-pass kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    F32,
    F16,
    U8,
}

impl OutputKind {
    pub fn function(self) -> &'static str {
        match self {
            OutputKind::F32 => "resize_second_pass_f32",
            OutputKind::F16 => "resize_second_pass_f16",
            OutputKind::U8 => "resize_second_pass_u8",
        }
    }
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for u8 {}
}

/// Everything the kernels need for one batch, computed on the host: descriptors with
/// source addresses relative to the staging buffer, the concatenated tap tables, and
/// where each plane goes. Pure data, so the layout is tested without a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// `src` / `src_uv` are byte offsets into the staging buffer here.
    pub items: Vec<PreprocessItem>,
    /// (first input, tap count) pairs, flattened.
    pub bounds: Vec<u32>,
    pub coeffs: Vec<i32>,
    /// Staging offset of each frame's planes (RGB or luma, then chroma).
    pub plane_offsets: Vec<[usize; 2]>,
    pub staging_len: usize,
    /// Bytes of the intermediate (first-pass) images of the whole batch.
    pub tmp_len: usize,
    /// Largest intermediate height of any item: the first pass's grid height.
    pub max_rows: u32,
    /// Largest intermediate width of any item: the first pass's grid width in threads.
    pub max_cols: u32,
}

impl BatchPlan {
    /// `tables(in, out)` gives the CPU twin's bicubic table for one axis.
    pub fn build(
        frames: &[GpuFrame<'_>],
        out_width: u32,
        out_height: u32,
        mut tables: impl FnMut(u32, u32) -> Arc<ResampleCoeffs>,
    ) -> Result<Self, GpuError> {
        if frames.is_empty() {
            return Err(GpuError::EmptyBatch);
        }
        if frames.len() > MAX_BATCH {
            return Err(GpuError::Frame {
                index: MAX_BATCH,
                reason: format!("batch of {} frames; at most {MAX_BATCH}", frames.len()),
            });
        }
        let mut plan = BatchPlan {
            items: Vec::with_capacity(frames.len()),
            bounds: Vec::new(),
            coeffs: Vec::new(),
            plane_offsets: Vec::with_capacity(frames.len()),
            staging_len: 0,
            tmp_len: 0,
            max_rows: 0,
            max_cols: 0,
        };
        let mut placed: HashMap<(u32, u32), TapTable> = HashMap::new();
        for (index, frame) in frames.iter().enumerate() {
            let planes = frame.planes(index)?;
            let (w, h) = frame.size();
            let horizontal = tables(w, out_width);
            let vertical = tables(h, out_height);
            let vertical_first =
                PassOrder::pillow13(w, h, out_width, out_height) == PassOrder::VerticalFirst;
            // Pillow's ybox_first / ybox_last: the rows the vertical pass reads.
            let (row_first, row_end) = match (vertical.bounds.first(), vertical.bounds.last()) {
                (Some(&(first, _)), Some(&(start, n))) => (first, start + n),
                _ => {
                    return Err(GpuError::Frame {
                        index,
                        reason: format!("empty resize table for height {h}"),
                    })
                }
            };
            let mut offsets = [0usize; 2];
            for (slot, plane) in offsets.iter_mut().zip(&planes) {
                if let Some((bytes, _)) = plane {
                    *slot = plan.staging_len;
                    plan.staging_len += bytes.len().div_ceil(STAGING_ALIGN) * STAGING_ALIGN;
                }
            }
            let (format, stride, uv_stride) = match *frame {
                GpuFrame::Rgb { stride, .. } => (0, stride, 0),
                GpuFrame::Nv12 {
                    luma_stride,
                    chroma_stride,
                    ..
                } => (1, luma_stride, chroma_stride),
            };
            // Horizontal first: out_width × the trimmed source rows. Vertical first: the
            // whole source width × out_height (Pillow trims nothing in that order).
            let (row_first, rows, cols) = if vertical_first {
                (0, out_height, w)
            } else {
                (row_first, row_end - row_first, out_width)
            };
            let horizontal = plan.place(&mut placed, &horizontal);
            let vertical = plan.place(&mut placed, &vertical);
            plan.items.push(PreprocessItem {
                src: offsets[0] as u64,
                src_uv: offsets[1] as u64,
                tmp_offset: plan.tmp_len as u64,
                format,
                width: w,
                height: h,
                stride,
                uv_stride,
                row_first,
                rows,
                vertical_first: u32::from(vertical_first),
                horizontal,
                vertical,
            });
            plan.plane_offsets.push(offsets);
            plan.tmp_len += rows as usize * cols as usize * 3;
            plan.max_rows = plan.max_rows.max(rows);
            plan.max_cols = plan.max_cols.max(cols);
        }
        Ok(plan)
    }

    /// Appends a table once per (in, out) pair and says where it is.
    fn place(
        &mut self,
        placed: &mut HashMap<(u32, u32), TapTable>,
        table: &ResampleCoeffs,
    ) -> TapTable {
        *placed
            .entry((table.in_size, table.out_size))
            .or_insert_with(|| {
                let t = TapTable {
                    bounds_offset: (self.bounds.len() / 2) as u32,
                    coeff_offset: self.coeffs.len() as u32,
                    ksize: table.ksize,
                    out_size: table.out_size,
                };
                self.bounds
                    .extend(table.bounds.iter().flat_map(|&(first, n)| [first, n]));
                self.coeffs.extend_from_slice(&table.coeffs);
                t
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::YuvMatrix;

    #[test]
    fn repr_c_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<TapTable>(), 16);
        assert_eq!(std::mem::size_of::<PreprocessItem>(), 88);
        assert_eq!(std::mem::align_of::<PreprocessItem>(), 8);
        assert_eq!(std::mem::size_of::<KernelYuvCoeffs>(), 20);
        assert_eq!(std::mem::offset_of!(PreprocessItem, horizontal), 56);
    }

    #[test]
    fn frame_sizes_and_strides_are_checked() {
        let data = vec![0u8; 10 * 4 * 3];
        let ok = GpuFrame::Rgb {
            data: &data,
            width: 10,
            height: 4,
            stride: 30,
        };
        assert!(ok.planes(0).is_ok());
        let short = GpuFrame::Rgb {
            data: &data[..100],
            width: 10,
            height: 4,
            stride: 30,
        };
        assert!(matches!(
            short.planes(3),
            Err(GpuError::Frame { index: 3, .. })
        ));
        let narrow = GpuFrame::Rgb {
            data: &data,
            width: 10,
            height: 4,
            stride: 29,
        };
        assert!(narrow.planes(0).is_err());
        // odd NV12: 5x3 luma, chroma 3 pairs wide (6 bytes) and 2 rows
        let luma = [0u8; 15];
        let chroma = [0u8; 12];
        let nv12 = |chroma: &[u8]| {
            GpuFrame::Nv12 {
                luma: &luma,
                chroma,
                width: 5,
                height: 3,
                luma_stride: 5,
                chroma_stride: 6,
            }
            .planes(0)
            .is_ok()
        };
        assert!(nv12(&chroma));
        assert!(!nv12(&chroma[..11]));
        let zero = GpuFrame::Rgb {
            data: &data,
            width: 0,
            height: 4,
            stride: 30,
        };
        assert!(zero.planes(0).is_err());
    }

    #[test]
    fn yuv_coefficients_come_from_the_cpu_twin() {
        let k = KernelYuvCoeffs::from(YuvMatrix::Bt709Limited.coeffs());
        let c = YuvMatrix::Bt709Limited.coeffs();
        assert_eq!((k.y, k.rv, k.gu, k.gv, k.bu), (c.y, c.rv, c.gu, c.gv, c.bu));
    }

    /// `source_rgb` of preprocess.cu over the host staging buffer.
    fn source_rgb(
        staging: &[u8],
        it: &PreprocessItem,
        yuv: &KernelYuvCoeffs,
        x: usize,
        y: usize,
    ) -> [i32; 3] {
        if it.format == 0 {
            let p = it.src as usize + y * it.stride as usize + x * 3;
            [
                staging[p].into(),
                staging[p + 1].into(),
                staging[p + 2].into(),
            ]
        } else {
            let l = i32::from(staging[it.src as usize + y * it.stride as usize + x]);
            let uv = it.src_uv as usize + (y >> 1) * it.uv_stride as usize + (x >> 1) * 2;
            let c = yuv.y * (l - 16) + 128;
            let (d, e) = (
                i32::from(staging[uv]) - 128,
                i32::from(staging[uv + 1]) - 128,
            );
            [
                ((c + yuv.rv * e) >> 8).clamp(0, 255),
                ((c - yuv.gu * d - yuv.gv * e) >> 8).clamp(0, 255),
                ((c + yuv.bu * d) >> 8).clamp(0, 255),
            ]
        }
    }

    /// The taps of entry `i` of `table`: (first index, coefficients).
    fn taps<'p>(plan: &'p BatchPlan, table: &TapTable, i: u32) -> (usize, &'p [i32]) {
        let bi = (table.bounds_offset + i) as usize * 2;
        let k = (table.coeff_offset + i * table.ksize) as usize;
        (
            plan.bounds[bi] as usize,
            &plan.coeffs[k..k + plan.bounds[bi + 1] as usize],
        )
    }

    /// Both kernels of preprocess.cu transcribed to the host, thread by thread, over a
    /// plan built by [`BatchPlan::build`]: checks descriptors, offsets, pass order and
    /// table placement against the CPU twin without a GPU.
    fn emulate_kernels(plan: &BatchPlan, frames: &[GpuFrame<'_>], yuv: KernelYuvCoeffs) -> Vec<u8> {
        use crate::preprocess::PRECISION_BITS;
        let mut staging = vec![0u8; plan.staging_len];
        for (frame, offsets) in frames.iter().zip(&plan.plane_offsets) {
            for (plane, &offset) in frame.planes(0).expect("valid").iter().zip(offsets) {
                if let Some((bytes, _)) = plane {
                    staging[offset..offset + bytes.len()].copy_from_slice(bytes);
                }
            }
        }
        let clip8 = |v: i32| (v >> PRECISION_BITS).clamp(0, 255) as u8;
        let half = 1i32 << (PRECISION_BITS - 1);
        let mut tmp = vec![0u8; plan.tmp_len];
        // resize_first_pass_u8: grid (max_cols, max_rows, batch)
        for it in &plan.items {
            for r in 0..plan.max_rows {
                for c in 0..plan.max_cols {
                    let mut acc = [half; 3];
                    let o = if it.vertical_first == 0 {
                        if r >= it.rows || c >= it.horizontal.out_size {
                            continue;
                        }
                        let (first, k) = taps(plan, &it.horizontal, c);
                        for (x, &w) in k.iter().enumerate() {
                            let rgb = source_rgb(
                                &staging,
                                it,
                                &yuv,
                                first + x,
                                (it.row_first + r) as usize,
                            );
                            for ch in 0..3 {
                                acc[ch] += rgb[ch] * w;
                            }
                        }
                        (r * it.horizontal.out_size + c) as usize
                    } else {
                        if r >= it.vertical.out_size || c >= it.width {
                            continue;
                        }
                        let (first, k) = taps(plan, &it.vertical, r);
                        for (y, &w) in k.iter().enumerate() {
                            let rgb = source_rgb(&staging, it, &yuv, c as usize, first + y);
                            for ch in 0..3 {
                                acc[ch] += rgb[ch] * w;
                            }
                        }
                        (r * it.width + c) as usize
                    };
                    for ch in 0..3 {
                        tmp[it.tmp_offset as usize + o * 3 + ch] = clip8(acc[ch]);
                    }
                }
            }
        }
        // resize_second_pass_u8: grid (out_w, out_h, batch)
        let mut out = Vec::new();
        for it in &plan.items {
            let (w, h) = (it.horizontal.out_size, it.vertical.out_size);
            for yy in 0..h {
                for xx in 0..w {
                    let mut acc = [half; 3];
                    if it.vertical_first == 0 {
                        let (first, k) = taps(plan, &it.vertical, yy);
                        let col = it.tmp_offset as usize
                            + ((first - it.row_first as usize) * w as usize + xx as usize) * 3;
                        for (y, &c) in k.iter().enumerate() {
                            for ch in 0..3 {
                                acc[ch] += i32::from(tmp[col + y * w as usize * 3 + ch]) * c;
                            }
                        }
                    } else {
                        let (first, k) = taps(plan, &it.horizontal, xx);
                        let row = it.tmp_offset as usize + ((yy * it.width) as usize + first) * 3;
                        for (x, &c) in k.iter().enumerate() {
                            for ch in 0..3 {
                                acc[ch] += i32::from(tmp[row + x * 3 + ch]) * c;
                            }
                        }
                    }
                    out.extend(acc.map(clip8));
                }
            }
        }
        out
    }

    #[test]
    fn kernel_logic_on_the_host_matches_the_cpu_twin() {
        use crate::preprocess::{nv12_to_rgb, Nv12Frame, ResizePlan, RgbFrame};
        let mut seed = 0x1234_5678_u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect()
        };
        let rgb_a = bytes((23 * 3 + 5) * 17);
        let rgb_b = bytes(31 * 29 * 3);
        let luma = bytes(25 * 17);
        let chroma = bytes(26 * 9);
        let rgb_c = bytes(9 * 70 * 3);
        let luma_d = bytes(23 * 97);
        let chroma_d = bytes(24 * 49);
        let frames = [
            GpuFrame::Rgb {
                data: &rgb_a,
                width: 23,
                height: 17,
                stride: 23 * 3 + 5,
            },
            GpuFrame::Nv12 {
                luma: &luma,
                chroma: &chroma,
                width: 23,
                height: 17,
                luma_stride: 25,
                chroma_stride: 26,
            },
            GpuFrame::Rgb {
                data: &rgb_b,
                width: 31,
                height: 29,
                stride: 31 * 3,
            },
            GpuFrame::Rgb {
                data: &rgb_c,
                width: 9,
                height: 70,
                stride: 27,
            },
            GpuFrame::Nv12 {
                luma: &luma_d,
                chroma: &chroma_d,
                width: 23,
                height: 97,
                luma_stride: 23,
                chroma_stride: 24,
            },
        ];
        let matrix = YuvMatrix::Bt709Limited;
        for (out_w, out_h) in [(31, 29), (7, 5), (31, 40)] {
            let plan = BatchPlan::build(&frames, out_w, out_h, |i, o| {
                Arc::new(ResampleCoeffs::bicubic(i, o))
            })
            .expect("plan");
            assert_eq!(plan.items.len(), frames.len());
            assert!(plan
                .plane_offsets
                .iter()
                .flatten()
                .all(|o| o % STAGING_ALIGN == 0));
            // Both pass orders occur in this batch.
            assert!(plan.items.iter().any(|i| i.vertical_first == 1));
            assert!(plan.items.iter().any(|i| i.vertical_first == 0));
            let got = emulate_kernels(&plan, &frames, matrix.coeffs().into());
            let per = (out_w * out_h * 3) as usize;
            for (i, frame) in frames.iter().enumerate() {
                let (w, h) = frame.size();
                let rgb = match *frame {
                    GpuFrame::Rgb { data, stride, .. } => data
                        [..(stride * (h - 1) + w * 3) as usize]
                        .chunks(stride as usize)
                        .flat_map(|row| row[..(w * 3) as usize].to_vec())
                        .collect::<Vec<u8>>(),
                    GpuFrame::Nv12 {
                        luma,
                        chroma,
                        luma_stride,
                        chroma_stride,
                        ..
                    } => {
                        let f = Nv12Frame::new(
                            w,
                            h,
                            luma_stride as usize,
                            luma,
                            chroma_stride as usize,
                            chroma,
                        )
                        .expect("nv12");
                        let mut rgb = vec![0u8; (w * h * 3) as usize];
                        nv12_to_rgb(&f, matrix, &mut rgb).expect("convert");
                        rgb
                    }
                };
                let resize = ResizePlan::new(w, h, out_w, out_h).expect("plan");
                let mut want = vec![0u8; resize.output_len()];
                resize
                    .resize_into(
                        &RgbFrame::packed(w, h, &rgb).expect("frame"),
                        &mut want,
                        &mut Vec::new(),
                    )
                    .expect("resize");
                assert_eq!(
                    &got[i * per..(i + 1) * per],
                    &want[..],
                    "frame {i} -> {out_w}x{out_h}"
                );
            }
        }
    }

    #[test]
    fn kernel_logic_on_the_host_matches_the_cpu_twin_at_camera_sizes() {
        use crate::preprocess::{nv12_to_rgb, Nv12Frame, RgbFrame};
        let noise = |n: usize, mut x: u64| -> Vec<u8> {
            (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // half noise, half gradient
                    if (i / 4096) % 2 == 0 {
                        (x >> 40) as u8
                    } else {
                        (i % 251) as u8
                    }
                })
                .collect()
        };
        let luma = noise(1920 * 1080, 3);
        let chroma = noise(1920 * 540, 5);
        let portrait = noise(1080 * 1920 * 3, 7);
        let frames = [
            GpuFrame::Nv12 {
                luma: &luma,
                chroma: &chroma,
                width: 1920,
                height: 1080,
                luma_stride: 1920,
                chroma_stride: 1920,
            },
            GpuFrame::Rgb {
                data: &portrait,
                width: 1080,
                height: 1920,
                stride: 1080 * 3,
            },
        ];
        let matrix = YuvMatrix::Bt601Limited;
        let plan = BatchPlan::build(&frames, 768, 768, |i, o| {
            Arc::new(ResampleCoeffs::bicubic(i, o))
        })
        .expect("plan");
        assert_eq!(
            plan.items
                .iter()
                .map(|i| i.vertical_first)
                .collect::<Vec<_>>(),
            vec![0, 1],
            "landscape horizontal first, portrait vertical first"
        );
        let got = emulate_kernels(&plan, &frames, matrix.coeffs().into());
        let per = 768 * 768 * 3;
        let nv12 = Nv12Frame::new(1920, 1080, 1920, &luma, 1920, &chroma).expect("nv12");
        let mut rgb = vec![0u8; 1920 * 1080 * 3];
        nv12_to_rgb(&nv12, matrix, &mut rgb).expect("convert");
        for (i, (w, h, data)) in [(1920, 1080, &rgb[..]), (1080, 1920, &portrait[..])]
            .into_iter()
            .enumerate()
        {
            let plan = crate::preprocess::ResizePlan::new(w, h, 768, 768).expect("plan");
            let mut want = vec![0u8; per];
            plan.resize_into(
                &RgbFrame::packed(w, h, data).expect("frame"),
                &mut want,
                &mut Vec::new(),
            )
            .expect("resize");
            let differing = want
                .iter()
                .zip(&got[i * per..(i + 1) * per])
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "frame {i} ({w}x{h})");
        }
    }
}
