//! Borrowed views of decoded frames (packed RGB and NV12) and the NV12 → RGB conversion.
//!
//! Frames come from GStreamer buffers whose rows may be padded, so every view carries its
//! strides and is checked once, when it is made; after that, row access cannot go out of
//! bounds and nothing here panics on a short buffer.

use super::PreprocessError;

/// A packed 8-bit RGB image (R, G, B bytes per pixel, rows `stride_bytes` apart), as the
/// reference receives it from `PIL.Image.convert("RGB")`.
#[derive(Debug, Clone, Copy)]
pub struct RgbFrame<'a> {
    width: u32,
    height: u32,
    stride_bytes: usize,
    data: &'a [u8],
}

/// Bytes a plane of `rows` rows needs when rows are `stride` apart and each holds `row_bytes`:
/// the last row may stop right after its pixels (GStreamer does not always pad it).
fn plane_len(rows: u32, stride: usize, row_bytes: usize) -> Option<usize> {
    if rows == 0 {
        return Some(0);
    }
    stride
        .checked_mul(rows as usize - 1)?
        .checked_add(row_bytes)
}

impl<'a> RgbFrame<'a> {
    /// Checks that `data` holds `height` rows of `width` RGB pixels, `stride_bytes` apart.
    pub fn new(
        width: u32,
        height: u32,
        stride_bytes: usize,
        data: &'a [u8],
    ) -> Result<Self, PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::FrameEmpty { width, height });
        }
        let row_bytes = width as usize * 3;
        if stride_bytes < row_bytes {
            return Err(PreprocessError::FrameStride {
                what: "RGB rows",
                stride: stride_bytes,
                min: row_bytes,
            });
        }
        let needed =
            plane_len(height, stride_bytes, row_bytes).ok_or(PreprocessError::FrameBuffer {
                what: "RGB frame",
                width,
                height,
                needed: usize::MAX,
                got: data.len(),
            })?;
        if data.len() < needed {
            return Err(PreprocessError::FrameBuffer {
                what: "RGB frame",
                width,
                height,
                needed,
                got: data.len(),
            });
        }
        Ok(RgbFrame {
            width,
            height,
            stride_bytes,
            data,
        })
    }

    /// A frame whose rows are packed without padding.
    pub fn packed(width: u32, height: u32, data: &'a [u8]) -> Result<Self, PreprocessError> {
        Self::new(width, height, width as usize * 3, data)
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Distance between row starts in bytes.
    pub fn stride_bytes(&self) -> usize {
        self.stride_bytes
    }

    /// The bytes the frame views, from its first row to the end of its
    /// last (what an upload to the GPU copies).
    pub fn bytes(&self) -> &'a [u8] {
        let len = plane_len(self.height, self.stride_bytes, self.width as usize * 3)
            .unwrap_or(self.data.len());
        &self.data[..len.min(self.data.len())]
    }

    /// The pixels of row `y` (`width * 3` bytes). `y` must be below `height`; callers in this
    /// module only pass row indices from plans built for this frame's size.
    #[inline(always)]
    pub(crate) fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride_bytes;
        &self.data[start..start + self.width as usize * 3]
    }
}

/// Which Y'CbCr → R'G'B' matrix an NV12 frame uses. Both are limited ("studio") range:
/// Y' in 16..=235 and Cb/Cr in 16..=240 map to 0..=255, as GStreamer's `videoconvert` treats
/// `colorimetry=bt601` (SD) and `colorimetry=bt709` (HD) NV12.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvMatrix {
    /// ITU-R BT.601 (Kr = 0.299, Kb = 0.114), limited range.
    Bt601Limited,
    /// ITU-R BT.709 (Kr = 0.2126, Kb = 0.0722), limited range.
    Bt709Limited,
}

/// The integer matrix, in 8 fractional bits (the precision `videoconvert`'s generic 8-bit
/// matrix path uses). With `c = y * (Y - 16) + 128`, `d = U - 128`, `e = V - 128`:
///
/// ```text
/// R = clamp((c + rv * e)          >> 8, 0, 255)
/// G = clamp((c - gu * d - gv * e) >> 8, 0, 255)
/// B = clamp((c + bu * d)          >> 8, 0, 255)
/// ```
///
/// `>>` is an arithmetic shift (floor) on i32. A CUDA twin that uses these five numbers and
/// this formula, with one chroma sample per 2×2 block of pixels, produces the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YuvToRgbCoeffs {
    /// round(256 · 255/219): luma gain.
    pub y: i32,
    /// round(256 · 2(1−Kr) · 255/224): Cr → R.
    pub rv: i32,
    /// round(256 · 2(1−Kb)Kb/Kg · 255/224): Cb → G (subtracted).
    pub gu: i32,
    /// round(256 · 2(1−Kr)Kr/Kg · 255/224): Cr → G (subtracted).
    pub gv: i32,
    /// round(256 · 2(1−Kb) · 255/224): Cb → B.
    pub bu: i32,
}

impl YuvMatrix {
    /// The fixed-point coefficients of this matrix.
    pub const fn coeffs(self) -> YuvToRgbCoeffs {
        match self {
            YuvMatrix::Bt601Limited => YuvToRgbCoeffs {
                y: 298,
                rv: 409,
                gu: 100,
                gv: 208,
                bu: 516,
            },
            YuvMatrix::Bt709Limited => YuvToRgbCoeffs {
                y: 298,
                rv: 459,
                gu: 55,
                gv: 136,
                bu: 541,
            },
        }
    }
}

/// An NV12 frame: a full-resolution Y plane and a half-resolution interleaved CbCr plane
/// (`ceil(width / 2)` pairs per row, `ceil(height / 2)` rows), each with its own stride, as
/// GStreamer maps them.
#[derive(Debug, Clone, Copy)]
pub struct Nv12Frame<'a> {
    width: u32,
    height: u32,
    y_stride: usize,
    uv_stride: usize,
    y_plane: &'a [u8],
    uv_plane: &'a [u8],
}

impl<'a> Nv12Frame<'a> {
    /// Checks both planes against the size and strides. Odd sizes are allowed (the last chroma
    /// column/row then covers one pixel instead of two).
    pub fn new(
        width: u32,
        height: u32,
        y_stride: usize,
        y_plane: &'a [u8],
        uv_stride: usize,
        uv_plane: &'a [u8],
    ) -> Result<Self, PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::FrameEmpty { width, height });
        }
        let y_row = width as usize;
        let uv_row = width.div_ceil(2) as usize * 2;
        let uv_rows = height.div_ceil(2);
        for (what, stride, min) in [
            ("NV12 Y rows", y_stride, y_row),
            ("NV12 UV rows", uv_stride, uv_row),
        ] {
            if stride < min {
                return Err(PreprocessError::FrameStride { what, stride, min });
            }
        }
        for (what, rows, stride, row, plane) in [
            ("NV12 Y plane", height, y_stride, y_row, y_plane),
            ("NV12 UV plane", uv_rows, uv_stride, uv_row, uv_plane),
        ] {
            let needed = plane_len(rows, stride, row).unwrap_or(usize::MAX);
            if plane.len() < needed {
                return Err(PreprocessError::FrameBuffer {
                    what,
                    width,
                    height,
                    needed,
                    got: plane.len(),
                });
            }
        }
        Ok(Nv12Frame {
            width,
            height,
            y_stride,
            uv_stride,
            y_plane,
            uv_plane,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
}

/// Converts an NV12 frame to packed RGB (`width * height * 3` bytes) with `matrix`'s integer
/// formula ([`YuvToRgbCoeffs`]); each chroma pair applies to its 2×2 block of pixels.
pub fn nv12_to_rgb(
    frame: &Nv12Frame<'_>,
    matrix: YuvMatrix,
    out: &mut [u8],
) -> Result<(), PreprocessError> {
    let width = frame.width as usize;
    let expected = width * frame.height as usize * 3;
    if out.len() != expected {
        return Err(PreprocessError::OutputLength {
            what: "RGB buffer for NV12 conversion",
            expected,
            got: out.len(),
        });
    }
    let m = matrix.coeffs();
    for (y, out_row) in out.chunks_exact_mut(width * 3).enumerate() {
        let luma = &frame.y_plane[y * frame.y_stride..y * frame.y_stride + width];
        let uv_start = (y / 2) * frame.uv_stride;
        let chroma = &frame.uv_plane[uv_start..uv_start + width.div_ceil(2) * 2];
        convert_row(&m, luma, chroma, out_row);
    }
    Ok(())
}

/// Pixels converted per group: fixed-size arrays let the compiler vectorize the arithmetic.
const GROUP: usize = 16;

dispatch!(
    convert_row,
    convert_row_generic,
    convert_row_avx2,
    (m: &YuvToRgbCoeffs, luma: &[u8], chroma: &[u8], out: &mut [u8])
);

/// One row: `luma` has `width` bytes, `chroma` one (Cb, Cr) pair per two pixels.
#[inline(always)]
fn convert_row_generic(m: &YuvToRgbCoeffs, luma: &[u8], chroma: &[u8], out: &mut [u8]) {
    let full = luma.len() - luma.len() % GROUP;
    for ((l, uv), px) in luma[..full]
        .chunks_exact(GROUP)
        .zip(chroma.chunks_exact(GROUP))
        .zip(out.chunks_exact_mut(GROUP * 3))
    {
        let (mut r, mut g, mut b) = ([0u8; GROUP], [0u8; GROUP], [0u8; GROUP]);
        for i in 0..GROUP {
            let c = m.y * (i32::from(l[i]) - 16) + 128;
            let d = i32::from(uv[i & !1]) - 128;
            let e = i32::from(uv[i | 1]) - 128;
            r[i] = ((c + m.rv * e) >> 8).clamp(0, 255) as u8;
            g[i] = ((c - m.gu * d - m.gv * e) >> 8).clamp(0, 255) as u8;
            b[i] = ((c + m.bu * d) >> 8).clamp(0, 255) as u8;
        }
        for (i, p) in px.chunks_exact_mut(3).enumerate() {
            p.copy_from_slice(&[r[i], g[i], b[i]]);
        }
    }
    // The rest, including an odd last column whose chroma pair covers it alone.
    for (x, px) in out.chunks_exact_mut(3).enumerate().skip(full) {
        let c = m.y * (i32::from(luma[x]) - 16) + 128;
        let d = i32::from(chroma[x & !1]) - 128;
        let e = i32::from(chroma[x | 1]) - 128;
        px[0] = ((c + m.rv * e) >> 8).clamp(0, 255) as u8;
        px[1] = ((c - m.gu * d - m.gv * e) >> 8).clamp(0, 255) as u8;
        px[2] = ((c + m.bu * d) >> 8).clamp(0, 255) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_frame_checks_buffer_and_stride() {
        let data = vec![0u8; 4 * 2 * 3];
        assert!(RgbFrame::packed(4, 2, &data).is_ok());
        assert!(matches!(
            RgbFrame::packed(4, 3, &data),
            Err(PreprocessError::FrameBuffer {
                needed: 36,
                got: 24,
                ..
            })
        ));
        assert!(matches!(
            RgbFrame::new(4, 2, 11, &data),
            Err(PreprocessError::FrameStride {
                stride: 11,
                min: 12,
                ..
            })
        ));
        assert!(matches!(
            RgbFrame::packed(0, 2, &data),
            Err(PreprocessError::FrameEmpty { width: 0, .. })
        ));
        // Padded rows: the last row needs no padding.
        let padded = vec![7u8; 16 + 12];
        let frame = RgbFrame::new(4, 2, 16, &padded).expect("padded frame");
        assert_eq!(frame.row(1).len(), 12);
        assert!(RgbFrame::new(4, 2, usize::MAX, &padded).is_err());
    }

    #[test]
    fn coefficients_follow_the_standards() {
        for (matrix, kr, kb) in [
            (YuvMatrix::Bt601Limited, 0.299f64, 0.114f64),
            (YuvMatrix::Bt709Limited, 0.2126, 0.0722),
        ] {
            let kg = 1.0 - kr - kb;
            let c = 255.0 / 224.0 * 256.0;
            let m = matrix.coeffs();
            assert_eq!(m.y, (255.0f64 / 219.0 * 256.0).round() as i32);
            assert_eq!(m.rv, (2.0 * (1.0 - kr) * c).round() as i32);
            assert_eq!(m.gu, (2.0 * (1.0 - kb) * kb / kg * c).round() as i32);
            assert_eq!(m.gv, (2.0 * (1.0 - kr) * kr / kg * c).round() as i32);
            assert_eq!(m.bu, (2.0 * (1.0 - kb) * c).round() as i32);
        }
    }

    #[test]
    fn nv12_limited_range_extremes_and_grey() {
        // 3x3 (odd): Y = 16 (black), 235 (white), 126; neutral chroma.
        let y_plane = [16u8, 235, 126, 16, 235, 126, 16, 235, 126];
        let uv_plane = [128u8; 4 * 2];
        let frame = Nv12Frame::new(3, 3, 3, &y_plane, 4, &uv_plane).expect("frame");
        let mut rgb = vec![0u8; 27];
        nv12_to_rgb(&frame, YuvMatrix::Bt709Limited, &mut rgb).expect("convert");
        assert_eq!(&rgb[0..9], &[0, 0, 0, 255, 255, 255, 128, 128, 128]);
        assert_eq!(&rgb[18..27], &[0, 0, 0, 255, 255, 255, 128, 128, 128]);
    }

    #[test]
    fn nv12_red_and_chroma_siting() {
        // BT.601 pure red is Y=81, Cb=90, Cr=240. Left 2x2 block red, right block grey.
        let y_plane = [81u8, 81, 126, 126, 81, 81, 126, 126];
        let uv_plane = [90u8, 240, 128, 128];
        let frame = Nv12Frame::new(4, 2, 4, &y_plane, 4, &uv_plane).expect("frame");
        let mut rgb = vec![0u8; 24];
        nv12_to_rgb(&frame, YuvMatrix::Bt601Limited, &mut rgb).expect("convert");
        let red = &rgb[0..3];
        assert!(red[0] >= 253 && red[1] <= 2 && red[2] <= 2, "{red:?}");
        assert_eq!(&rgb[0..6], &rgb[12..18]);
        assert_eq!(&rgb[6..12], &[128, 128, 128, 128, 128, 128]);
    }

    #[test]
    fn nv12_wide_rows_follow_the_documented_formula() {
        // 37 wide (two 16-pixel groups and an odd tail), padded strides, every byte value.
        let (w, h, y_stride, uv_stride) = (37usize, 5usize, 40usize, 42usize);
        let y_plane: Vec<u8> = (0..y_stride * h).map(|i| (i * 89 % 256) as u8).collect();
        let uv_plane: Vec<u8> = (0..uv_stride * 3).map(|i| (i * 53 % 256) as u8).collect();
        let frame = Nv12Frame::new(w as u32, h as u32, y_stride, &y_plane, uv_stride, &uv_plane)
            .expect("frame");
        for matrix in [YuvMatrix::Bt601Limited, YuvMatrix::Bt709Limited] {
            let mut rgb = vec![0u8; w * h * 3];
            nv12_to_rgb(&frame, matrix, &mut rgb).expect("convert");
            let m = matrix.coeffs();
            for y in 0..h {
                for x in 0..w {
                    let c = m.y * (i32::from(y_plane[y * y_stride + x]) - 16) + 128;
                    let d = i32::from(uv_plane[(y / 2) * uv_stride + (x / 2) * 2]) - 128;
                    let e = i32::from(uv_plane[(y / 2) * uv_stride + (x / 2) * 2 + 1]) - 128;
                    let expected = [
                        ((c + m.rv * e) >> 8).clamp(0, 255) as u8,
                        ((c - m.gu * d - m.gv * e) >> 8).clamp(0, 255) as u8,
                        ((c + m.bu * d) >> 8).clamp(0, 255) as u8,
                    ];
                    let at = (y * w + x) * 3;
                    assert_eq!(rgb[at..at + 3], expected, "{matrix:?} pixel ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn nv12_rejects_short_planes() {
        let y_plane = [0u8; 15];
        let uv_plane = [128u8; 7];
        assert!(matches!(
            Nv12Frame::new(4, 4, 4, &y_plane, 4, &uv_plane),
            Err(PreprocessError::FrameBuffer {
                what: "NV12 Y plane",
                needed: 16,
                ..
            })
        ));
        let y_plane = [0u8; 16];
        assert!(matches!(
            Nv12Frame::new(4, 4, 4, &y_plane, 4, &uv_plane),
            Err(PreprocessError::FrameBuffer {
                what: "NV12 UV plane",
                needed: 8,
                ..
            })
        ));
        let frame = Nv12Frame::new(4, 4, 4, &y_plane, 4, &[128u8; 8]).expect("frame");
        assert!(matches!(
            nv12_to_rgb(&frame, YuvMatrix::Bt601Limited, &mut [0u8; 10]),
            Err(PreprocessError::OutputLength { expected: 48, .. })
        ));
    }
}
