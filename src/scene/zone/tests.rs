#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::postprocess::{dequantize, ImageSize, LocationBins};

/// Frame sizes the mapping must survive: odd, 4K, a single pixel.
const FRAMES: [(u32, u32); 4] = [(333, 187), (3840, 2160), (1, 1), (1920, 1080)];

fn poly(points: &[[f64; 2]]) -> Polygon {
    Polygon::new(points.to_vec()).expect("valid polygon")
}

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> NormRect {
    NormRect { x0, y0, x1, y1 }
}

/// An L: the union of the closed rectangles [0.1,0.5]×[0.1,0.9] and [0.1,0.9]×[0.5,0.9].
const L_POINTS: [[f64; 2]; 6] = [
    [0.1, 0.1],
    [0.5, 0.1],
    [0.5, 0.5],
    [0.9, 0.5],
    [0.9, 0.9],
    [0.1, 0.9],
];
const L_RECTS: [[f64; 4]; 2] = [[0.1, 0.1, 0.5, 0.9], [0.1, 0.5, 0.9, 0.9]];

/// A U open at the top: [0.1,0.9]² without the notch (0.4,0.6)×[0.1,0.6).
const U_POINTS: [[f64; 2]; 8] = [
    [0.1, 0.1],
    [0.4, 0.1],
    [0.4, 0.6],
    [0.6, 0.6],
    [0.6, 0.1],
    [0.9, 0.1],
    [0.9, 0.9],
    [0.1, 0.9],
];
const U_RECTS: [[f64; 4]; 3] = [
    [0.1, 0.1, 0.4, 0.9],
    [0.6, 0.1, 0.9, 0.9],
    [0.1, 0.6, 0.9, 0.9],
];

/// Membership in a union of closed rectangles: the brute-force truth for L and U.
fn in_union(rects: &[[f64; 4]], x: f64, y: f64) -> bool {
    rects
        .iter()
        .any(|r| x >= r[0] && x <= r[2] && y >= r[1] && y <= r[3])
}

#[test]
fn contains_agrees_with_brute_force_on_a_concave_l() {
    let forward = poly(&L_POINTS);
    let mut reversed_points = L_POINTS.to_vec();
    reversed_points.reverse();
    let reversed = poly(&reversed_points);
    // A grid through every vertex and edge (0.1 = 4/40, 0.5 = 20/40, 0.9 = 36/40), inside,
    // outside and in the notch.
    let mut inside = 0;
    for i in -2..=42 {
        for j in -2..=42 {
            let (x, y) = (f64::from(i) / 40.0, f64::from(j) / 40.0);
            let truth = in_union(&L_RECTS, x, y);
            assert_eq!(forward.contains(x, y), truth, "({x}, {y})");
            assert_eq!(reversed.contains(x, y), truth, "reversed ({x}, {y})");
            inside += usize::from(truth);
        }
    }
    // The grid really hits both the inside and the outside.
    assert!(inside > 100 && inside < 45 * 45 - 100, "{inside}");
    assert!(!forward.contains(0.7, 0.3), "the notch is outside");
    assert!(
        forward.contains(0.5, 0.3),
        "the notch's edge is the boundary"
    );
    assert!(!forward.contains(f64::NAN, 0.5));
}

#[test]
fn bounds_of_the_l() {
    assert_eq!(poly(&L_POINTS).bounds(), rect(0.1, 0.1, 0.9, 0.9));
    let tri = poly(&[[0.2, 0.7], [0.6, 0.3], [0.4, 0.9]]);
    assert_eq!(tri.bounds(), rect(0.2, 0.3, 0.6, 0.9));
    assert_eq!(tri.points(), &[[0.2, 0.7], [0.6, 0.3], [0.4, 0.9]]);
}

#[test]
fn invalid_polygons_are_refused_naming_the_problem() {
    let err = Polygon::new(vec![[0.0, 0.0], [1.0, 1.0]]).unwrap_err();
    assert_eq!(err, ZoneError::TooFewPoints { count: 2 });
    assert!(
        err.to_string().contains("at least 3 points, got 2"),
        "{err}"
    );

    let err = Polygon::new(vec![[0.0, 0.0], [f64::NAN, 0.5], [1.0, 1.0]]).unwrap_err();
    assert!(matches!(
        err,
        ZoneError::NotFinite {
            index: 1,
            axis: 'x',
            ..
        }
    ));
    assert!(err.to_string().contains("points[1] has x = NaN"), "{err}");

    let err = Polygon::new(vec![[0.0, 0.0], [1.0, 0.0], [0.5, 1.2]]).unwrap_err();
    assert!(err
        .to_string()
        .contains("points[2] has y = 1.2, outside 0..=1"));
    let err = Polygon::new(vec![[-0.1, 0.0], [1.0, 0.0], [0.5, 1.0]]).unwrap_err();
    assert!(err.to_string().contains("points[0] has x = -0.1"), "{err}");
    let err = Polygon::new(vec![[0.0, 0.0], [1.0, f64::INFINITY], [0.5, 1.0]]).unwrap_err();
    assert!(err.to_string().contains("points[1] has y = inf"), "{err}");

    // Collinear, repeated, and a there-and-back: no area.
    for points in [
        vec![[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]],
        vec![[0.3, 0.3], [0.3, 0.3], [0.3, 0.3], [0.3, 0.3]],
        vec![[0.1, 0.2], [0.7, 0.2], [0.1, 0.2], [0.7, 0.2]],
    ] {
        let err = Polygon::new(points.clone()).unwrap_err();
        assert!(matches!(err, ZoneError::ZeroArea { .. }), "{points:?}");
        assert!(err.to_string().contains("enclose no area"), "{err}");
    }
    // The corners of the frame and a zone far below a pixel are fine.
    poly(&[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]);
    poly(&[[0.5, 0.5], [0.500_01, 0.5], [0.5, 0.500_01]]);
}

#[test]
fn covering_a_zone_at_the_frame_edges_ends_at_the_frame_edges() {
    for (w, h) in FRAMES {
        let whole = CropRect::covering(&rect(0.0, 0.0, 1.0, 1.0), w, h);
        assert_eq!(
            whole,
            CropRect {
                x: 0,
                y: 0,
                width: w,
                height: h
            }
        );
        // The right/bottom part of the frame: the crop ends exactly at the frame's edge.
        let corner = poly(&[[0.61, 0.73], [1.0, 0.73], [1.0, 1.0], [0.7, 1.0]]);
        let c = CropRect::covering(&corner.bounds(), w, h);
        assert_eq!(c.x + c.width, w, "{w}x{h}: {c:?}");
        assert_eq!(c.y + c.height, h, "{w}x{h}: {c:?}");
        assert!(c.width >= 1 && c.height >= 1);
        // Beyond the frame (a hand-made rectangle) is clamped, not extended.
        let beyond = CropRect::covering(&rect(-0.5, -0.2, 1.5, 1.01), w, h);
        assert_eq!(beyond, whole, "{w}x{h}");
    }
    // Floor of the left/top edge, ceil of the right/bottom edge, on an odd frame:
    // x 0.25·333 = 83.25 → 83, 0.75·333 = 249.75 → 250; y 0.3·187 = 56.1 → 56, 0.9·187 = 168.3 → 169.
    let c = CropRect::covering(&rect(0.25, 0.3, 0.75, 0.9), 333, 187);
    assert_eq!(
        c,
        CropRect {
            x: 83,
            y: 56,
            width: 167,
            height: 113
        }
    );
    // Exactly on pixel edges: no extra pixel.
    let c = CropRect::covering(&rect(0.25, 0.5, 0.75, 1.0), 1920, 1080);
    assert_eq!(
        c,
        CropRect {
            x: 480,
            y: 540,
            width: 960,
            height: 540
        }
    );
    // A frame with no pixels gives a crop with no pixels, not a panic.
    let c = CropRect::covering(&rect(0.1, 0.1, 0.2, 0.2), 0, 10);
    assert_eq!((c.x, c.width, c.height), (0, 0, 1));
}

/// The crop covers the rectangle: its pixel edges lie at or outside the zone's.
fn assert_covers(c: &CropRect, r: &NormRect, w: u32, h: u32) {
    let (fw, fh) = (f64::from(w), f64::from(h));
    assert!(c.width >= 1 && c.height >= 1, "{c:?}");
    assert!(
        c.x + c.width <= w && c.y + c.height <= h,
        "{c:?} in {w}x{h}"
    );
    assert!(f64::from(c.x) <= r.x0 * fw, "{c:?} {r:?}");
    assert!(f64::from(c.y) <= r.y0 * fh, "{c:?} {r:?}");
    assert!(f64::from(c.x + c.width) >= r.x1 * fw, "{c:?} {r:?}");
    assert!(f64::from(c.y + c.height) >= r.y1 * fh, "{c:?} {r:?}");
}

#[test]
fn a_zone_smaller_than_a_pixel_and_a_location_bin_still_gets_a_pixel() {
    // 1e-4 of the axis: below one location bin (1e-3) and below one pixel of every frame here.
    let s: f64 = 1e-4;
    for (w, h) in FRAMES {
        for (x, y) in [
            (0.0, 0.0),
            (0.5, 0.5),
            (0.123_45, 0.876_54),
            (1.0 - s, 1.0 - s),
        ] {
            let (x1, y1) = ((x + s).min(1.0), (y + s).min(1.0));
            let zone = poly(&[[x, y], [x1, y], [x1, y1], [x, y1]]);
            let c = CropRect::covering(&zone.bounds(), w, h);
            assert_covers(&c, &zone.bounds(), w, h);
            assert!(c.width <= 2 && c.height <= 2, "{c:?}");
            // Its region prompt names one or two bins per axis, never an empty or
            // out-of-range one.
            let bins = region_bins(
                [
                    f64::from(c.x),
                    f64::from(c.y),
                    f64::from(c.x + c.width),
                    f64::from(c.y + c.height),
                ],
                w,
                h,
            );
            assert!(bins[0] <= bins[2] && bins[1] <= bins[3] && bins[2] <= 999);
        }
    }
    let c = CropRect::covering(&rect(0.5, 0.5, 0.500_01, 0.500_01), 1, 1);
    assert_eq!(
        c,
        CropRect {
            x: 0,
            y: 0,
            width: 1,
            height: 1
        }
    );
}

#[test]
fn crop_and_frame_coordinates_round_trip() {
    for (w, h) in FRAMES {
        let c = CropRect::covering(&rect(0.37, 0.41, 0.93, 0.77), w, h);
        for (fx, fy) in [(0.0, 0.0), (0.5, 0.25), (1.0 / 3.0, 0.1), (1.0, 1.0)] {
            // Frame → crop → frame: exact, bit for bit.
            let p = (
                f64::from(c.x) + fx * f64::from(c.width),
                f64::from(c.y) + fy * f64::from(c.height),
            );
            let (cx, cy) = c.from_frame(p.0, p.1);
            assert_eq!(c.to_frame(cx, cy), p, "{w}x{h} {p:?}");
        }
        // Crop → frame on values the frame can hold exactly: back exactly.
        let q = (0.75, 1.5);
        assert_eq!(
            c.from_frame(c.to_frame(q.0, q.1).0, c.to_frame(q.0, q.1).1),
            q
        );
    }
    let c = CropRect {
        x: 7,
        y: 11,
        width: 5,
        height: 3,
    };
    assert_eq!(c.to_frame(0.5, 2.25), (7.5, 13.25));
    assert_eq!(c.from_frame(7.5, 13.25), (0.5, 2.25));
}

#[test]
fn the_l_and_the_u_filter_known_boxes() {
    let l = poly(&L_POINTS);
    let u = poly(&U_POINTS);
    let (w, h) = (1000, 1000);
    let all = |zone: &Polygon, b: [f64; 4]| {
        [
            keeps(zone, ZoneFilter::BottomCenter, b, w, h),
            keeps(zone, ZoneFilter::Overlaps, b, w, h),
            keeps(zone, ZoneFilter::Inside, b, w, h),
        ]
    };
    // In the L's upright bar.
    assert_eq!(all(&l, [200.0, 200.0, 400.0, 800.0]), [true, true, true]);
    // Across the L's inner corner: overlaps, not inside.
    assert_eq!(all(&l, [300.0, 300.0, 700.0, 700.0]), [true, true, false]);
    // In the notch.
    assert_eq!(all(&l, [600.0, 150.0, 850.0, 450.0]), [false, false, false]);
    // Filling the notch exactly: touches the L along two edges, corners on its boundary.
    assert_eq!(all(&l, [500.0, 100.0, 900.0, 500.0]), [true, true, false]);
    // Standing on the L's top edge from above (bottom-centre on the boundary).
    assert_eq!(all(&l, [250.0, 20.0, 350.0, 100.0]), [true, true, false]);
    // Corners given the other way round.
    assert_eq!(all(&l, [400.0, 800.0, 200.0, 200.0]), [true, true, true]);
    // All four corners in the U's arms and base, centre in the notch.
    assert_eq!(all(&u, [200.0, 200.0, 800.0, 800.0]), [true, true, false]);
    // Corners and centre inside, but the notch's bottom pokes into the box.
    assert_eq!(all(&u, [200.0, 500.0, 800.0, 800.0]), [true, true, false]);
    // Filling the U's notch exactly: all four corners on the U's boundary, the inside out.
    assert_eq!(all(&u, [400.0, 100.0, 600.0, 600.0]), [true, true, false]);
    // Below the notch: inside.
    assert_eq!(all(&u, [200.0, 650.0, 800.0, 850.0]), [true, true, true]);
    // Flat boxes: a line across the notch, and one below it.
    assert_eq!(all(&u, [200.0, 300.0, 800.0, 300.0]), [false, true, false]);
    assert_eq!(all(&u, [200.0, 700.0, 800.0, 700.0]), [true, true, true]);
    // A zone wholly inside a big box overlaps it.
    assert_eq!(all(&u, [0.0, 0.0, 1000.0, 1000.0]), [false, true, false]);
    // Nothing for broken input.
    assert_eq!(all(&u, [f64::NAN, 0.0, 1000.0, 1000.0]), [false; 3]);
    assert!(!keeps(
        &u,
        ZoneFilter::Overlaps,
        [0.0, 0.0, 1.0, 1.0],
        0,
        1000
    ));
}

#[test]
fn region_bins_follow_design_section_3() {
    assert_eq!(
        region_bins([0.0, 0.0, 640.0, 480.0], 640, 480),
        [0, 0, 999, 999]
    );
    assert_eq!(
        region_bins([33.6, 160.08, 596.8, 371.76], 640, 480),
        [52, 333, 932, 774]
    );
    // Outside the image and broken values clamp instead of panicking.
    assert_eq!(
        region_bins([-5.0, 1e9, f64::NAN, f64::INFINITY], 640, 480),
        [0, 999, 0, 999]
    );
    assert_eq!(region_bins([1.0, 0.0, 0.0, 0.0], 0, 0), [999, 0, 0, 0]);
}

fn frame_size() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        prop::sample::select(FRAMES.to_vec()),
        (1_u32..5000, 1_u32..5000),
    ]
}

/// A rectangle inside the unit square.
fn norm_rect() -> impl Strategy<Value = NormRect> {
    (0.0..=1.0_f64, 0.0..=1.0_f64, 0.0..=1.0_f64, 0.0..=1.0_f64)
        .prop_map(|(a, b, c, d)| rect(a.min(c), b.min(d), a.max(c), b.max(d)))
}

/// A valid polygon of 3 to 8 random points.
fn polygon() -> impl Strategy<Value = Polygon> {
    prop::collection::vec((0.0..=1.0_f64, 0.0..=1.0_f64), 3..9)
        .prop_filter_map("zero area", |pts| {
            Polygon::new(pts.into_iter().map(|(x, y)| [x, y]).collect()).ok()
        })
}

/// A box on the 1/20 grid, in grid units: on a 20×20 frame that is pixels, and normalizing
/// (k / 20) gives the same f64 as the zones' k / 10 literals.
fn grid_box() -> impl Strategy<Value = [u32; 4]> {
    (0_u32..=20, 0_u32..=20, 0_u32..=20, 0_u32..=20)
        .prop_map(|(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)])
}

/// Brute force for a zone that is a union of 1/10-grid rectangles and a box on the 1/20 grid:
/// both are unions of 1/20 cells (or lines and points of that grid), so they meet iff they
/// share a point of the 1/40 grid, and the box is inside iff every 1/40 point in it is (cell
/// centres included, so no sliver is missed).
fn brute(rects: &[[f64; 4]], b: [u32; 4]) -> [bool; 3] {
    let mut any = false;
    let mut all = true;
    for i in 2 * b[0]..=2 * b[2] {
        for j in 2 * b[1]..=2 * b[3] {
            let inside = in_union(rects, f64::from(i) / 40.0, f64::from(j) / 40.0);
            any |= inside;
            all &= inside;
        }
    }
    let bottom_centre = in_union(rects, f64::from(b[0] + b[2]) / 40.0, f64::from(b[3]) / 20.0);
    [bottom_centre, any, all]
}

proptest! {
    #[test]
    fn contains_agrees_with_brute_force_anywhere(x in -0.1..1.1_f64, y in -0.1..1.1_f64) {
        prop_assert_eq!(poly(&L_POINTS).contains(x, y), in_union(&L_RECTS, x, y));
        prop_assert_eq!(poly(&U_POINTS).contains(x, y), in_union(&U_RECTS, x, y));
    }

    #[test]
    fn filters_agree_with_brute_force_on_the_grid(g in grid_box()) {
        let b = g.map(f64::from);
        for (points, rects) in [(&L_POINTS[..], &L_RECTS[..]), (&U_POINTS[..], &U_RECTS[..])] {
            let zone = poly(points);
            let got = [
                keeps(&zone, ZoneFilter::BottomCenter, b, 20, 20),
                keeps(&zone, ZoneFilter::Overlaps, b, 20, 20),
                keeps(&zone, ZoneFilter::Inside, b, 20, 20),
            ];
            prop_assert_eq!(got, brute(rects, g), "box {:?} zone {:?}", g, points);
        }
    }

    #[test]
    fn inside_and_bottom_centre_are_within_overlaps(
        zone in polygon(),
        r in norm_rect(),
        (w, h) in frame_size(),
    ) {
        let b = [r.x0 * f64::from(w), r.y0 * f64::from(h), r.x1 * f64::from(w), r.y1 * f64::from(h)];
        let overlaps = keeps(&zone, ZoneFilter::Overlaps, b, w, h);
        let inside = keeps(&zone, ZoneFilter::Inside, b, w, h);
        let bottom = keeps(&zone, ZoneFilter::BottomCenter, b, w, h);
        prop_assert!(!inside || overlaps, "Inside without Overlaps: {:?}", b);
        prop_assert!(!bottom || overlaps, "BottomCenter without Overlaps: {:?}", b);
        prop_assert!(!inside || bottom, "Inside without its own bottom-centre: {:?}", b);
    }

    #[test]
    fn frame_to_crop_to_frame_is_exact(
        (w, h) in frame_size(),
        r in norm_rect(),
        fx in 0.0..=1.0_f64,
        fy in 0.0..=1.0_f64,
    ) {
        let c = CropRect::covering(&r, w, h);
        // Any frame point at or right of/below the crop's origin, up to the frame's far edge.
        let p = (
            f64::from(c.x) + fx * f64::from(w - c.x),
            f64::from(c.y) + fy * f64::from(h - c.y),
        );
        let (x, y) = c.from_frame(p.0, p.1);
        prop_assert_eq!(c.to_frame(x, y), p);
    }

    #[test]
    fn crop_to_frame_to_crop_is_exact_to_the_frame_precision(
        (w, h) in frame_size(),
        r in norm_rect(),
        fx in 0.0..=1.0_f64,
        fy in 0.0..=1.0_f64,
        k in 0_u32..1 << 20,
    ) {
        let c = CropRect::covering(&r, w, h);
        let q = (fx * f64::from(c.width), fy * f64::from(c.height));
        let (x, y) = c.to_frame(q.0, q.1);
        let back = c.from_frame(x, y);
        // Off by no more than the frame coordinate's own rounding (half an ulp of x or y) ...
        let half_ulp = |v: f64| (f64::from_bits(v.to_bits() + 1) - v) / 2.0;
        prop_assert!((back.0 - q.0).abs() <= half_ulp(x), "{:?} → {:?}", q, back);
        prop_assert!((back.1 - q.1).abs() <= half_ulp(y), "{:?} → {:?}", q, back);
        // ... after which the trip is exact, and exact at once for values the frame holds.
        prop_assert_eq!(c.to_frame(back.0, back.1), (x, y));
        let dyadic = f64::from(k) / 1024.0;
        let (dx, dy) = c.to_frame(dyadic, dyadic);
        prop_assert_eq!(c.from_frame(dx, dy), (dyadic, dyadic));
    }

    #[test]
    fn tiny_zones_get_a_covering_pixel(
        (w, h) in frame_size(),
        x in 0.0..1.0_f64,
        y in 0.0..1.0_f64,
        s in 1e-5..1e-3_f64,
    ) {
        let (x, y) = (x.min(1.0 - s), y.min(1.0 - s));
        let (x1, y1) = ((x + s).min(1.0), (y + s).min(1.0));
        let zone = poly(&[[x, y], [x1, y], [x, y1]]);
        let c = CropRect::covering(&zone.bounds(), w, h);
        assert_covers(&c, &zone.bounds(), w, h);
    }

    #[test]
    fn any_covering_crop_is_in_the_frame_and_covers(r in norm_rect(), (w, h) in frame_size()) {
        assert_covers(&CropRect::covering(&r, w, h), &r, w, h);
    }

    #[test]
    fn boxes_in_the_crop_map_into_the_crops_rectangle(
        (w, h) in frame_size(),
        r in norm_rect(),
        a in 0.0..=1.0_f64, b in 0.0..=1.0_f64, cc in 0.0..=1.0_f64, d in 0.0..=1.0_f64,
        bins in (0_u32..1000, 0_u32..1000),
    ) {
        let c = CropRect::covering(&r, w, h);
        let (cw, ch) = (f64::from(c.width), f64::from(c.height));
        let left = f64::from(c.x);
        let top = f64::from(c.y);
        let right = f64::from(c.x + c.width);
        let bottom = f64::from(c.y + c.height);
        // Random corners in the crop, and the bin centres the model's tokens decode to.
        let corners = [
            (a * cw, b * ch),
            (cc * cw, d * ch),
            (0.0, 0.0),
            (cw, ch),
            (dequantize(bins.0, c.width), dequantize(bins.1, c.height)),
        ];
        for (x, y) in corners {
            let (fx, fy) = c.to_frame(x, y);
            prop_assert!(fx >= left && fx <= right, "x {} → {} outside {:?}", x, fx, c);
            prop_assert!(fy >= top && fy <= bottom, "y {} → {} outside {:?}", y, fy, c);
        }
    }

    #[test]
    fn region_bins_match_location_bins(
        (w, h) in frame_size(),
        r in norm_rect(),
    ) {
        let px = [r.x0 * f64::from(w), r.y0 * f64::from(h), r.x1 * f64::from(w), r.y1 * f64::from(h)];
        let image = ImageSize { width: w, height: h };
        let reference = LocationBins::from_pixel_box(px[0], px[1], px[2], px[3], image).unwrap();
        prop_assert_eq!(
            region_bins(px, w, h),
            [reference.x1, reference.y1, reference.x2, reference.y2]
        );
    }
}
