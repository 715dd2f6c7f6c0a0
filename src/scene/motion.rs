//! The per-camera change detector: a pure state machine fed decoded frames' luma.
//!
//! Each frame is reduced to a coarse grid of cell means (default 64×36), each mean taken over a
//! sparse sample of the cell ([`SAMPLES_PER_AXIS`]² pixels at evenly spread positions), so a
//! 1080p frame costs a few tens of thousands of byte reads. The grid is compared with a
//! running background (an exponential average that follows the picture at `background_alpha`
//! per frame): a cell *changed* when it differs from the background by at least `threshold`,
//! after removing the frame's global offset (the median difference over the cells, so a
//! brightness change of the whole picture — a light ramp, auto exposure — is not a change
//! while an object covering less than half of the picture still is). The frame *changed* when
//! at least `min_area` of the unmasked cells changed. Cells whose centre lies in a motion mask
//! take no part at all.
//!
//! Slow changes are absorbed by the background; a moving object is not (each frame it covers
//! new cells); an object that stops is absorbed within about
//! `ln(threshold / contrast) / ln(1 - background_alpha)` frames (45 at the defaults for a
//! contrast of 200).

use super::zone::{Polygon, ZoneError};

/// Pixels sampled per cell along each axis: 4 × 4 per cell, 36 864 reads per frame at 64×36.
pub const SAMPLES_PER_AXIS: usize = 4;

/// The change detector's settings; [`ChangeDetector::new`] checks them.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSettings {
    /// A cell's luma difference from the background (after the global offset) that counts as
    /// changed, 1..=255 (default 20).
    pub threshold: u8,
    /// The fraction of the unmasked cells that must change for the frame to count as changed,
    /// 0..=1 (default 0.005; 0 means any changed cell).
    pub min_area: f64,
    /// Motion masks: regions ignored, in normalized coordinates.
    pub masks: Vec<Polygon>,
    /// The downscaled luma grid, cells per axis (columns, rows), 4..=256 each (default 64×36).
    pub grid: (u32, u32),
    /// How fast the background follows the picture per frame, in (0, 1] (default 0.05): slow
    /// light changes are absorbed, a moving object is not.
    pub background_alpha: f64,
}

impl Default for ChangeSettings {
    fn default() -> Self {
        ChangeSettings {
            threshold: 20,
            min_area: 0.005,
            masks: Vec::new(),
            grid: (64, 36),
            background_alpha: 0.05,
        }
    }
}

/// An 8-bit luma plane: the Y plane of NV12/I420, or any 8-bit grey image. Row `y` starts at
/// `data[y * stride]`; `stride >= width`, and `data` holds at least
/// `(height - 1) * stride + width` bytes.
#[derive(Debug, Clone, Copy)]
pub struct LumaView<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub stride: usize,
}

impl LumaView<'_> {
    /// Whether the view has pixels and its rows lie within `data`.
    fn is_usable(&self) -> bool {
        let (w, h) = (self.width as usize, self.height as usize);
        w > 0
            && h > 0
            && self.stride >= w
            && (h - 1)
                .checked_mul(self.stride)
                .and_then(|n| n.checked_add(w))
                .is_some_and(|needed| self.data.len() >= needed)
    }
}

/// What one frame showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// At least `min_area` of the unmasked cells changed (and at least one did).
    pub changed: bool,
    /// Changed unmasked cells / unmasked cells, in 0..=1 (0 when every cell is masked).
    pub changed_fraction: f64,
}

impl Verdict {
    const STILL: Verdict = Verdict {
        changed: false,
        changed_fraction: 0.0,
    };
}

/// Where to sample a frame of one size: per cell column the x of its samples, per cell row
/// the y of its samples.
#[derive(Debug)]
struct SamplePlan {
    width: u32,
    height: u32,
    xs: Vec<usize>,
    ys: Vec<usize>,
}

/// `SAMPLES_PER_AXIS` positions per cell for `cells` cells over `size` pixels: cell `i` spans
/// `i*size/cells .. (i+1)*size/cells` (at least one pixel, so a grid finer than the picture
/// repeats pixels), sampled at the centres of its equal parts. Every position is `< size`.
fn axis_samples(size: u32, cells: u32) -> Vec<usize> {
    let (n, g) = (u64::from(size), u64::from(cells));
    let s = SAMPLES_PER_AXIS as u64;
    let mut out = Vec::with_capacity(cells as usize * SAMPLES_PER_AXIS);
    for i in 0..g {
        let start = i * n / g;
        let end = ((i + 1) * n / g).max(start + 1);
        let span = end - start;
        for k in 0..s {
            // start + (k + ½)·span/s, below `end` <= size: fits in usize as `size` does.
            out.push((start + (2 * k + 1) * span / (2 * s)) as usize);
        }
    }
    out
}

impl SamplePlan {
    fn new(width: u32, height: u32, grid: (u32, u32)) -> SamplePlan {
        SamplePlan {
            width,
            height,
            xs: axis_samples(width, grid.0),
            ys: axis_samples(height, grid.1),
        }
    }

    /// Cell means of `luma` (which must have this plan's size) into `out`, row by row.
    fn sample(&self, luma: &LumaView, acc: &mut Vec<u32>, out: &mut Vec<f32>) {
        let cols = self.xs.len() / SAMPLES_PER_AXIS;
        let width = self.width as usize;
        out.clear();
        for ys in self.ys.chunks_exact(SAMPLES_PER_AXIS) {
            acc.clear();
            acc.resize(cols, 0);
            for &y in ys {
                let start = y * luma.stride;
                let row = &luma.data[start..start + width];
                for (sum, xs) in acc.iter_mut().zip(self.xs.chunks_exact(SAMPLES_PER_AXIS)) {
                    *sum += xs.iter().map(|&x| u32::from(row[x])).sum::<u32>();
                }
            }
            let per_cell = (SAMPLES_PER_AXIS * SAMPLES_PER_AXIS) as f32;
            out.extend(acc.iter().map(|&sum| sum as f32 / per_cell));
        }
    }
}

/// The per-camera change detector (see the module documentation).
#[derive(Debug)]
pub struct ChangeDetector {
    settings: ChangeSettings,
    /// Per cell (row-major): whether its centre lies in a mask.
    masked: Vec<bool>,
    unmasked: usize,
    plan: Option<SamplePlan>,
    background: Vec<f32>,
    current: Vec<f32>,
    acc: Vec<u32>,
    offsets: Vec<f32>,
    frames: u64,
    changes: u64,
    rejected: u64,
}

fn setting(name: &'static str, value: impl ToString, allowed: &'static str) -> ZoneError {
    ZoneError::Setting {
        name,
        value: value.to_string(),
        allowed,
    }
}

impl ChangeDetector {
    /// Checks the settings: `grid` 4..=256 cells per axis, `min_area` in 0..=1,
    /// `background_alpha` in (0, 1], `threshold` at least 1 (0 would count every cell as
    /// changed on every frame). The error names the setting and what is allowed.
    pub fn new(settings: ChangeSettings) -> Result<ChangeDetector, ZoneError> {
        let (cols, rows) = settings.grid;
        if !(4..=256).contains(&cols) || !(4..=256).contains(&rows) {
            return Err(setting(
                "grid",
                format!("({cols}, {rows})"),
                "4..=256 cells per axis (columns, rows)",
            ));
        }
        if !(0.0..=1.0).contains(&settings.min_area) {
            return Err(setting(
                "min_area",
                settings.min_area,
                "a fraction of the unmasked picture in 0..=1",
            ));
        }
        let alpha = settings.background_alpha;
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(setting(
                "background_alpha",
                alpha,
                "a fraction per frame in (0, 1] (0 would never update the background)",
            ));
        }
        if settings.threshold == 0 {
            return Err(setting(
                "threshold",
                0,
                "a luma difference in 1..=255 (0 would count every cell as changed)",
            ));
        }
        let masked: Vec<bool> = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (c, r)))
            .map(|(c, r)| {
                let x = (f64::from(c) + 0.5) / f64::from(cols);
                let y = (f64::from(r) + 0.5) / f64::from(rows);
                settings.masks.iter().any(|m| m.contains(x, y))
            })
            .collect();
        let unmasked = masked.iter().filter(|&&m| !m).count();
        Ok(ChangeDetector {
            settings,
            masked,
            unmasked,
            plan: None,
            background: Vec::new(),
            current: Vec::new(),
            acc: Vec::new(),
            offsets: Vec::new(),
            frames: 0,
            changes: 0,
            rejected: 0,
        })
    }

    /// Feeds one decoded frame. The first frame (or a frame of a new size) only sets the
    /// background: not changed. A view that is not usable (a zero side, `stride < width`,
    /// `data` too short) is counted in [`rejected`](Self::rejected), leaves the state as it
    /// was, and is not changed.
    pub fn feed(&mut self, luma: &LumaView) -> Verdict {
        self.frames += 1;
        if !luma.is_usable() {
            self.rejected += 1;
            return Verdict::STILL;
        }
        let plan = match &self.plan {
            Some(p) if p.width == luma.width && p.height == luma.height => p,
            _ => {
                let plan = SamplePlan::new(luma.width, luma.height, self.settings.grid);
                plan.sample(luma, &mut self.acc, &mut self.background);
                self.plan = Some(plan);
                return Verdict::STILL;
            }
        };
        plan.sample(luma, &mut self.acc, &mut self.current);

        // The global offset: the median difference over the unmasked cells.
        self.offsets.clear();
        self.offsets.extend(
            self.current
                .iter()
                .zip(&self.background)
                .zip(&self.masked)
                .filter(|(_, &masked)| !masked)
                .map(|((c, b), _)| c - b),
        );
        let mid = self.offsets.len() / 2;
        let offset = if self.offsets.is_empty() {
            0.0
        } else {
            *self.offsets.select_nth_unstable_by(mid, f32::total_cmp).1
        };

        let threshold = f32::from(self.settings.threshold);
        let alpha = self.settings.background_alpha as f32;
        let mut changed_cells = 0usize;
        for ((bg, &cur), &masked) in self
            .background
            .iter_mut()
            .zip(&self.current)
            .zip(&self.masked)
        {
            if !masked && (cur - *bg - offset).abs() >= threshold {
                changed_cells += 1;
            }
            *bg += alpha * (cur - *bg);
        }

        let changed_fraction = if self.unmasked == 0 {
            0.0
        } else {
            changed_cells as f64 / self.unmasked as f64
        };
        let changed = changed_cells > 0 && changed_fraction >= self.settings.min_area;
        if changed {
            self.changes += 1;
        }
        Verdict {
            changed,
            changed_fraction,
        }
    }

    /// How many fed frames were `changed` so far (a task remembers this at its run and runs
    /// again with `when = "changed"` only once it moved).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// How many frames were fed, rejected ones included.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// How many fed frames were not usable views (see [`feed`](Self::feed)).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &ChangeSettings {
        &self.settings
    }
}

/// An RGB frame's luma (BT.601 weights in 8-bit fixed point: `(77 R + 150 G + 29 B + 128) >> 8`)
/// into `out`, for sources without a Y plane. `rgb` is packed (3 bytes a pixel, no row
/// padding); `out` is replaced by one byte per complete pixel, at most `width * height` (a
/// short `rgb` gives a short plane, which [`ChangeDetector::feed`] rejects).
pub fn rgb_to_luma(rgb: &[u8], width: u32, height: u32, out: &mut Vec<u8>) {
    let pixels = (width as usize).saturating_mul(height as usize);
    out.clear();
    out.extend(rgb.chunks_exact(3).take(pixels).map(|p| {
        let y = (77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2]) + 128) >> 8;
        // The weights sum to 256, so y <= (255 * 256 + 128) >> 8 = 255.
        y as u8
    }));
}

#[cfg(test)]
mod tests;
