//! Privacy masks: regions of a camera's picture filled with black in the
//! decoded frame itself, before the change detector, the model's
//! preprocessing and any snapshot see it — nothing under a mask leaves the
//! process.
//!
//! A mask covers every pixel its polygon touches, not only those whose
//! centre lies inside: per pixel row, the spans where the polygon's edges
//! cross the row's band, and the interior between edge crossings at the
//! row's centre line. An NV12 frame has its chroma filled for every 2×2
//! block with a filled pixel.

use super::zone::Polygon;

/// Video-range black luma (BT.601/709 limited range), neutral chroma.
const Y_BLACK: u8 = 16;
const UV_NEUTRAL: u8 = 128;

/// Where the planes of a frame sit in its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Packed RGB, 3 bytes a pixel, `stride` bytes a row.
    Rgb { stride: usize },
    /// NV12: the Y plane at 0, `y_stride` bytes a row; the interleaved UV
    /// plane at `uv_offset`, `uv_stride` bytes a row, half the height.
    Nv12 {
        y_stride: usize,
        uv_offset: usize,
        uv_stride: usize,
    },
}

/// Fills what `masks` cover in a `width`×`height` frame. Errs (changing
/// nothing) when `data` is too short for the layout.
pub fn fill(
    data: &mut [u8],
    width: u32,
    height: u32,
    layout: Layout,
    masks: &[Polygon],
) -> Result<(), String> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || masks.is_empty() {
        return Ok(());
    }
    let need = match layout {
        Layout::Rgb { stride } if stride >= w * 3 => (h - 1) * stride + w * 3,
        Layout::Nv12 {
            y_stride,
            uv_offset,
            uv_stride,
        } if y_stride >= w && uv_stride >= w.div_ceil(2) * 2 => ((h - 1) * y_stride + w)
            .max(uv_offset + (h.div_ceil(2) - 1) * uv_stride + w.div_ceil(2) * 2),
        _ => {
            return Err(format!(
                "a stride too small for a {width}-pixel-wide frame: {layout:?}"
            ))
        }
    };
    if data.len() < need {
        return Err(format!(
            "{} bytes, a {width}×{height} frame laid out as {layout:?} needs {need}",
            data.len()
        ));
    }
    let rows: Vec<Vec<(usize, usize)>> = (0..h)
        .map(|y| {
            let mut spans: Vec<(usize, usize)> = masks
                .iter()
                .flat_map(|m| covered_spans(m, width, height, y as u32))
                .collect();
            merge(&mut spans);
            spans
        })
        .collect();
    match layout {
        Layout::Rgb { stride } => {
            for (y, spans) in rows.iter().enumerate() {
                for &(x0, x1) in spans {
                    data[y * stride + x0 * 3..y * stride + x1 * 3].fill(0);
                }
            }
        }
        Layout::Nv12 {
            y_stride,
            uv_offset,
            uv_stride,
        } => {
            for (y, spans) in rows.iter().enumerate() {
                for &(x0, x1) in spans {
                    data[y * y_stride + x0..y * y_stride + x1].fill(Y_BLACK);
                }
            }
            let cw = w.div_ceil(2);
            for cy in 0..h.div_ceil(2) {
                let mut spans: Vec<(usize, usize)> = rows[2 * cy]
                    .iter()
                    .chain(rows.get(2 * cy + 1).into_iter().flatten())
                    .map(|&(x0, x1)| (x0 / 2, x1.div_ceil(2).min(cw)))
                    .collect();
                merge(&mut spans);
                let row = uv_offset + cy * uv_stride;
                for (c0, c1) in spans {
                    data[row + c0 * 2..row + c1 * 2].fill(UV_NEUTRAL);
                }
            }
        }
    }
    Ok(())
}

/// The pixel spans `[x0, x1)` of row `y` that `polygon` touches.
pub fn covered_spans(polygon: &Polygon, width: u32, height: u32, y: u32) -> Vec<(usize, usize)> {
    let (wf, hf) = (f64::from(width), f64::from(height));
    // Pixels a segment [x0, x1] of the row has a point strictly in: an
    // edge exactly on a pixel boundary touches the pixel beyond it in no
    // area, so that pixel is left to the interior test.
    let to_px = |x0: f64, x1: f64| -> Option<(usize, usize)> {
        let a = (x0 * wf).floor().max(0.0);
        let b = (x1 * wf).ceil().min(wf);
        (a < wf && b > a).then_some((a as usize, b as usize))
    };
    let (band0, band1) = (f64::from(y) / hf, f64::from(y + 1) / hf);
    let pts = polygon.points();
    let mut spans = Vec::new();
    let mut crossings = Vec::new();
    let centre = (f64::from(y) + 0.5) / hf;
    for i in 0..pts.len() {
        let ([ax, ay], [bx, by]) = (pts[i], pts[(i + 1) % pts.len()]);
        // The part of the edge inside the row's band [band0, band1].
        let (lo, hi) = (ay.min(by), ay.max(by));
        let in_band = if lo == hi {
            // A horizontal edge inside the band touches its row; one on
            // the band's border touches neither row in any area (the
            // interior test covers the row it bounds).
            band0 < lo && lo < band1
        } else {
            hi > band0 && lo < band1
        };
        if in_band {
            let x_at = |yy: f64| {
                if (by - ay).abs() < f64::EPSILON {
                    None
                } else {
                    Some(ax + (yy - ay) * (bx - ax) / (by - ay))
                }
            };
            let (c0, c1) = (lo.max(band0), hi.min(band1));
            let (xa, xb) = match (x_at(c0), x_at(c1)) {
                (Some(xa), Some(xb)) => (xa, xb),
                // Horizontal edge: all of it lies in the band.
                _ => (ax, bx),
            };
            if let Some(s) = to_px(xa.min(xb), xa.max(xb)) {
                spans.push(s);
            }
        }
        // Even-odd crossings of the centre line, for the interior.
        if (ay <= centre) != (by <= centre) {
            crossings.push(ax + (centre - ay) * (bx - ax) / (by - ay));
        }
    }
    crossings.sort_by(f64::total_cmp);
    for pair in crossings.chunks_exact(2) {
        if let Some(s) = to_px(pair[0], pair[1]) {
            spans.push(s);
        }
    }
    merge(&mut spans);
    spans
}

fn merge(spans: &mut Vec<(usize, usize)>) {
    spans.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for &(a, b) in spans.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *spans = out;
}

#[cfg(test)]
mod tests;
