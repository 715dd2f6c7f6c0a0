//! Zones: polygons in normalized frame coordinates (x right, y down, both in 0..=1), the pixel
//! crop a zone task feeds the model, the exact mapping of crop coordinates back to the frame,
//! the rule deciding which detections a zone keeps, and the location bins of a region prompt.
//!
//! Geometry is closed: a point on a zone's boundary is in the zone, a box touching a zone
//! overlaps it. "On the boundary" allows [`BOUNDARY_EPS`] of slack (normalized units, far below
//! a pixel of any real frame), so a point computed to lie on an edge is not lost to rounding.

use crate::postprocess::quantize;

/// How far (normalized units) a point may lie from a polygon edge and still count as on it:
/// 1e-12 of the frame side, about 4e-9 px on a 4K frame.
pub const BOUNDARY_EPS: f64 = 1e-12;

/// The smallest polygon area (normalized units², i.e. fractions of the frame area) that counts
/// as non-zero: a square a millionth of the frame's side. Below it the points lie on one line
/// (or repeat) as far as f64 can tell.
pub const MIN_POLYGON_AREA: f64 = 1e-12;

/// A zone or setting that cannot be used; each message names the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneError {
    #[error("a polygon needs at least 3 points, got {count}")]
    TooFewPoints { count: usize },
    #[error(
        "points[{index}] has {axis} = {value}, not a finite number; coordinates are normalized \
         numbers in 0..=1"
    )]
    NotFinite {
        index: usize,
        axis: char,
        value: f64,
    },
    #[error(
        "points[{index}] has {axis} = {value}, outside 0..=1; coordinates are normalized \
         (0 = left/top edge of the frame, 1 = right/bottom edge)"
    )]
    OutOfRange {
        index: usize,
        axis: char,
        value: f64,
    },
    #[error(
        "the polygon's {count} points enclose no area (area {area:e}: they lie on one line or \
         repeat); a zone needs an area of more than {min:e} of the frame",
        min = MIN_POLYGON_AREA
    )]
    ZeroArea { count: usize, area: f64 },
    #[error("{name} = {value} is not allowed; allowed: {allowed}")]
    Setting {
        name: &'static str,
        value: String,
        allowed: &'static str,
    },
}

/// A rectangle in normalized coordinates, `x0 <= x1`, `y0 <= y1` (a zero width or height is a
/// line or a point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormRect {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl NormRect {
    /// The same rectangle with its corners in order (`x0 <= x1`, `y0 <= y1`), whatever order
    /// they were given in.
    fn ordered(&self) -> NormRect {
        NormRect {
            x0: self.x0.min(self.x1),
            y0: self.y0.min(self.y1),
            x1: self.x0.max(self.x1),
            y1: self.y0.max(self.y1),
        }
    }

    fn is_finite(&self) -> bool {
        [self.x0, self.y0, self.x1, self.y1]
            .iter()
            .all(|v| v.is_finite())
    }

    /// Corners counter-clockwise in the picture: top-left, top-right, bottom-right, bottom-left.
    fn corners(&self) -> [[f64; 2]; 4] {
        [
            [self.x0, self.y0],
            [self.x1, self.y0],
            [self.x1, self.y1],
            [self.x0, self.y1],
        ]
    }
}

/// A zone: a simple or self-crossing polygon (filled by the even-odd rule) in normalized
/// coordinates, validated on construction.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    points: Vec<[f64; 2]>,
    /// The bounding rectangle, kept for quick rejections.
    bounds: NormRect,
}

impl Polygon {
    /// At least 3 points, each coordinate finite and in 0..=1, enclosing more than
    /// [`MIN_POLYGON_AREA`]. The error names the first offending point and what is allowed.
    pub fn new(points: Vec<[f64; 2]>) -> Result<Polygon, ZoneError> {
        if points.len() < 3 {
            return Err(ZoneError::TooFewPoints {
                count: points.len(),
            });
        }
        for (index, point) in points.iter().enumerate() {
            for (axis, value) in [('x', point[0]), ('y', point[1])] {
                if !value.is_finite() {
                    return Err(ZoneError::NotFinite { index, axis, value });
                }
                if !(0.0..=1.0).contains(&value) {
                    return Err(ZoneError::OutOfRange { index, axis, value });
                }
            }
        }
        let mut bounds = NormRect {
            x0: f64::INFINITY,
            y0: f64::INFINITY,
            x1: f64::NEG_INFINITY,
            y1: f64::NEG_INFINITY,
        };
        for p in &points {
            bounds.x0 = bounds.x0.min(p[0]);
            bounds.y0 = bounds.y0.min(p[1]);
            bounds.x1 = bounds.x1.max(p[0]);
            bounds.y1 = bounds.y1.max(p[1]);
        }
        let polygon = Polygon { points, bounds };
        let area = polygon.area();
        if area <= MIN_POLYGON_AREA {
            return Err(ZoneError::ZeroArea {
                count: polygon.points.len(),
                area,
            });
        }
        Ok(polygon)
    }

    /// The points as given.
    pub fn points(&self) -> &[[f64; 2]] {
        &self.points
    }

    /// The shoelace area (absolute value; for a self-crossing polygon the signed parts may
    /// partly cancel, which can only make it smaller than the filled area).
    fn area(&self) -> f64 {
        let twice: f64 = self.edges().map(|(a, b)| a[0] * b[1] - b[0] * a[1]).sum();
        (twice / 2.0).abs()
    }

    /// Each edge as (start, end), the last one closing the ring.
    fn edges(&self) -> impl Iterator<Item = ([f64; 2], [f64; 2])> + '_ {
        self.points
            .iter()
            .copied()
            .zip(self.points.iter().copied().cycle().skip(1))
    }

    /// Whether the normalized point (x, y) is in the zone: even-odd rule, with points on (or
    /// within [`BOUNDARY_EPS`] of) the boundary inside. A non-finite point is outside.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        if !(x.is_finite() && y.is_finite()) {
            return false;
        }
        if !self.near_bounds(&NormRect {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
        }) {
            return false;
        }
        let p = [x, y];
        let mut inside = false;
        for (a, b) in self.edges() {
            if near_segment(p, a, b) {
                return true;
            }
            // Half-open in y, so a ray through a vertex counts its two edges once in total.
            if (a[1] > y) != (b[1] > y) {
                let t = (y - a[1]) / (b[1] - a[1]);
                let crossing = a[0] + t * (b[0] - a[0]);
                if x < crossing {
                    inside = !inside;
                }
            }
        }
        inside
    }

    /// The bounding rectangle of the points.
    pub fn bounds(&self) -> NormRect {
        self.bounds
    }

    /// Whether the closed rectangle `r` (ordered) comes within [`BOUNDARY_EPS`] of the
    /// bounding rectangle: when not, it cannot meet the zone.
    fn near_bounds(&self, r: &NormRect) -> bool {
        let b = &self.bounds;
        r.x0 <= b.x1 + BOUNDARY_EPS
            && r.x1 >= b.x0 - BOUNDARY_EPS
            && r.y0 <= b.y1 + BOUNDARY_EPS
            && r.y1 >= b.y0 - BOUNDARY_EPS
    }

    /// Whether the zone and the closed rectangle `r` share any point: an overlap of positive
    /// area, or only touching (an edge, a corner). Corners may come in any order; a rectangle
    /// with a non-finite coordinate meets nothing.
    pub fn intersects_rect(&self, r: &NormRect) -> bool {
        if !r.is_finite() {
            return false;
        }
        let r = r.ordered();
        if !self.near_bounds(&r) {
            return false;
        }
        let corners = r.corners();
        // The zone lies (partly) in the rectangle, or the rectangle reaches into the zone, or
        // their boundaries meet.
        self.points.iter().any(|p| {
            p[0] >= r.x0 - BOUNDARY_EPS
                && p[0] <= r.x1 + BOUNDARY_EPS
                && p[1] >= r.y0 - BOUNDARY_EPS
                && p[1] <= r.y1 + BOUNDARY_EPS
        }) || corners.iter().any(|c| self.contains(c[0], c[1]))
            || self.edges().any(|(a, b)| {
                (0..4).any(|i| segments_within(a, b, corners[i], corners[(i + 1) % 4]))
            })
    }

    /// Whether the whole closed rectangle `r` lies in the zone (boundary included). Corners may
    /// come in any order; a zero width or height makes it a line or a point, tested as such.
    pub fn contains_rect(&self, r: &NormRect) -> bool {
        if !r.is_finite() {
            return false;
        }
        let r = r.ordered();
        let corners = r.corners();
        if !corners.iter().all(|c| self.contains(c[0], c[1])) {
            return false;
        }
        let flat_x = r.x1 - r.x0 <= 0.0;
        let flat_y = r.y1 - r.y0 <= 0.0;
        if flat_x || flat_y {
            // A point (both flat) is settled by its corners; a line needs every piece checked.
            return (flat_x && flat_y) || self.contains_segment(corners[0], corners[2]);
        }
        // With no zone edge entering the open rectangle, its inside is all in or all out of the
        // zone (the even-odd parity only flips across an edge); the centre says which.
        if !self.contains((r.x0 + r.x1) / 2.0, (r.y0 + r.y1) / 2.0) {
            return false;
        }
        !self.edges().any(|(a, b)| {
            clip_to_rect(a, b, &r).is_some_and(|(p, q)| {
                // The midpoint of a segment's part in a convex region is in the region's
                // interior whenever any point of that part is.
                let m = [(p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0];
                m[0] > r.x0 + BOUNDARY_EPS
                    && m[0] < r.x1 - BOUNDARY_EPS
                    && m[1] > r.y0 + BOUNDARY_EPS
                    && m[1] < r.y1 - BOUNDARY_EPS
            })
        })
    }

    /// Whether the segment a–b lies wholly in the zone: split at every crossing with an edge's
    /// line, each piece is all in or all out, and its midpoint says which.
    fn contains_segment(&self, a: [f64; 2], b: [f64; 2]) -> bool {
        let d = [b[0] - a[0], b[1] - a[1]];
        let len2 = d[0] * d[0] + d[1] * d[1];
        if len2 <= 0.0 {
            return self.contains(a[0], a[1]);
        }
        let mut cuts = vec![0.0, 1.0];
        for (p, q) in self.edges() {
            let e = [q[0] - p[0], q[1] - p[1]];
            let denom = cross(d, e);
            let ap = [p[0] - a[0], p[1] - a[1]];
            if denom != 0.0 {
                cuts.push(cross(ap, e) / denom);
            } else {
                // Parallel: where the edge's ends project (extra cuts only add checks).
                let aq = [q[0] - a[0], q[1] - a[1]];
                cuts.push(dot(ap, d) / len2);
                cuts.push(dot(aq, d) / len2);
            }
        }
        cuts.retain(|t| (0.0..=1.0).contains(t));
        cuts.sort_by(f64::total_cmp);
        cuts.windows(2).all(|w| {
            let t = (w[0] + w[1]) / 2.0;
            self.contains(a[0] + t * d[0], a[1] + t * d[1])
        })
    }
}

fn cross(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[1] - a[1] * b[0]
}

fn dot(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[0] + a[1] * b[1]
}

/// Whether `p` lies within [`BOUNDARY_EPS`] of the closed segment a–b (a point when a == b).
fn near_segment(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> bool {
    let d = [b[0] - a[0], b[1] - a[1]];
    let ap = [p[0] - a[0], p[1] - a[1]];
    let len2 = dot(d, d);
    let t = if len2 > 0.0 {
        (dot(ap, d) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (ap[0] - t * d[0], ap[1] - t * d[1]);
    dx * dx + dy * dy <= BOUNDARY_EPS * BOUNDARY_EPS
}

/// Whether the closed segments p1–p2 and q1–q2 cross or come within [`BOUNDARY_EPS`].
fn segments_within(p1: [f64; 2], p2: [f64; 2], q1: [f64; 2], q2: [f64; 2]) -> bool {
    let side = |a: [f64; 2], b: [f64; 2], c: [f64; 2]| {
        cross([b[0] - a[0], b[1] - a[1]], [c[0] - a[0], c[1] - a[1]])
    };
    let d1 = side(q1, q2, p1);
    let d2 = side(q1, q2, p2);
    let d3 = side(p1, p2, q1);
    let d4 = side(p1, p2, q2);
    let proper = ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0));
    // Otherwise the closest approach is at one of the four ends.
    proper
        || near_segment(p1, q1, q2)
        || near_segment(p2, q1, q2)
        || near_segment(q1, p1, p2)
        || near_segment(q2, p1, p2)
}

/// The part of segment a–b inside the closed rectangle `r` (Liang–Barsky), if any.
fn clip_to_rect(a: [f64; 2], b: [f64; 2], r: &NormRect) -> Option<([f64; 2], [f64; 2])> {
    let d = [b[0] - a[0], b[1] - a[1]];
    let (mut t0, mut t1) = (0.0_f64, 1.0_f64);
    for (p, q) in [
        (-d[0], a[0] - r.x0),
        (d[0], r.x1 - a[0]),
        (-d[1], a[1] - r.y0),
        (d[1], r.y1 - a[1]),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
            if t0 > t1 {
                return None;
            }
        }
    }
    let at = |t: f64| [a[0] + t * d[0], a[1] + t * d[1]];
    Some((at(t0), at(t1)))
}

/// A rectangle of a frame in whole pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The pixel span `(start, length)` covering `lo..=hi` (normalized) on an axis of `size`
/// pixels: floor of `lo`, ceil of `hi`, clamped to the axis, at least one pixel (none on an
/// axis of zero pixels).
fn covering_span(lo: f64, hi: f64, size: u32) -> (u32, u32) {
    if size == 0 {
        return (0, 0);
    }
    let s = f64::from(size);
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    // NaN survives min/max only when both are NaN; `as` turns it into 0.
    let start = (lo * s).floor().clamp(0.0, s - 1.0);
    let end = (hi * s).ceil().clamp(start + 1.0, s);
    // Both are whole numbers in 0..=size after the clamps, so the casts are exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (start, end) = (start as u32, end as u32);
    (start, end.saturating_sub(start))
}

impl CropRect {
    /// The pixels a zone's bounding rectangle covers in a frame of `frame_w`×`frame_h`: floor of
    /// the left/top edge, ceil of the right/bottom edge, clamped to the frame, at least 1×1 (a
    /// zone smaller than one pixel still gives a pixel). Only a frame with a zero side gives a
    /// zero side.
    pub fn covering(r: &NormRect, frame_w: u32, frame_h: u32) -> CropRect {
        let (x, width) = covering_span(r.x0, r.x1, frame_w);
        let (y, height) = covering_span(r.y0, r.y1, frame_h);
        CropRect {
            x,
            y,
            width,
            height,
        }
    }

    /// A point in crop pixels (what post-processing of the cropped image gives, floats) →
    /// full-frame pixels: the crop's offset added in f64, rounded once at most (not at all
    /// while the sum is representable). `to_frame(from_frame(p)) == p` exactly for every frame
    /// point p at or right of/below the crop's origin (where a crop's results lie);
    /// `from_frame(to_frame(q))` equals q to within half an f64 ulp of the frame coordinate
    /// (about 2e-13 px on a 4K frame), exactly whenever `q + offset` is representable.
    pub fn to_frame(&self, x: f64, y: f64) -> (f64, f64) {
        (x + f64::from(self.x), y + f64::from(self.y))
    }

    /// The inverse of [`to_frame`](Self::to_frame): full-frame pixels → crop pixels.
    pub fn from_frame(&self, x: f64, y: f64) -> (f64, f64) {
        (x - f64::from(self.x), y - f64::from(self.y))
    }
}

/// Which detections a zone keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneFilter {
    /// Frigate's rule: the box's bottom-centre point (where an object stands) lies in the zone.
    BottomCenter,
    /// The box and the zone share any point.
    Overlaps,
    /// The whole box lies in the zone.
    Inside,
}

/// Whether `zone` keeps the detection `bbox` (full-frame pixels `[x1, y1, x2, y2]`, corners in
/// any order) of a `frame_w`×`frame_h` frame under `filter`. A box with a non-finite
/// coordinate, or a frame with a zero side, is never kept.
pub fn keeps(
    zone: &Polygon,
    filter: ZoneFilter,
    bbox: [f64; 4],
    frame_w: u32,
    frame_h: u32,
) -> bool {
    if frame_w == 0 || frame_h == 0 || !bbox.iter().all(|v| v.is_finite()) {
        return false;
    }
    let (w, h) = (f64::from(frame_w), f64::from(frame_h));
    let r = NormRect {
        x0: bbox[0] / w,
        y0: bbox[1] / h,
        x1: bbox[2] / w,
        y1: bbox[3] / h,
    }
    .ordered();
    match filter {
        ZoneFilter::BottomCenter => zone.contains((r.x0 + r.x1) / 2.0, r.y1),
        ZoneFilter::Overlaps => zone.intersects_rect(&r),
        ZoneFilter::Inside => zone.contains_rect(&r),
    }
}

/// Location bins of a pixel rectangle `[x1, y1, x2, y2]` of a `frame_w`×`frame_h` image, for a
/// region prompt (`<loc_x1><loc_y1><loc_x2><loc_y2>`): `floor(v * 1000 / S)` clamped to
/// `0..=999` per coordinate (DESIGN.md §3), through the same [`quantize`] as
/// [`crate::postprocess::LocationBins`]. Total: values outside the image land in the end bins;
/// no ordering or validation is applied (use `LocationBins::from_pixel_box` for that).
pub fn region_bins(rect_px: [f64; 4], frame_w: u32, frame_h: u32) -> [u32; 4] {
    [
        quantize(rect_px[0], frame_w),
        quantize(rect_px[1], frame_h),
        quantize(rect_px[2], frame_w),
        quantize(rect_px[3], frame_h),
    ]
}

#[cfg(test)]
mod tests;
