#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

/// A deterministic noise source (an LCG), so every run sees the same frames.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    /// Uniform in -3..=3.
    fn pm3(&mut self) -> i32 {
        (self.next() % 7) as i32 - 3
    }
}

/// A synthetic grey frame with a stride: `pixel(x, y)` plus noise of ±3, padding bytes 255
/// (which must never be read).
struct Scene {
    width: u32,
    height: u32,
    stride: usize,
    data: Vec<u8>,
}

impl Scene {
    fn new(width: u32, height: u32, stride: usize) -> Scene {
        Scene {
            width,
            height,
            stride,
            data: vec![255; stride * height as usize],
        }
    }

    fn paint(&mut self, noise: &mut Noise, pixel: impl Fn(u32, u32) -> i32) -> LumaView<'_> {
        for y in 0..self.height {
            for x in 0..self.width {
                let v = pixel(x, y) + noise.pm3();
                self.data[y as usize * self.stride + x as usize] = v.clamp(0, 255) as u8;
            }
        }
        LumaView {
            data: &self.data,
            width: self.width,
            height: self.height,
            stride: self.stride,
        }
    }
}

/// A textured still background: tiles and a gradient, 30..=130.
fn texture(x: u32, y: u32) -> i32 {
    let tile = if (x / 16 + y / 16) % 2 == 0 { 30 } else { 70 };
    tile + ((x + 2 * y) % 61) as i32
}

/// Dark (20) with a bright (220) square of `size` px whose left edge is at `left`.
fn square(left: u32, top: u32, size: u32) -> impl Fn(u32, u32) -> i32 {
    move |x, y| {
        if x >= left && x < left + size && y >= top && y < top + size {
            220
        } else {
            20
        }
    }
}

fn detector(settings: ChangeSettings) -> ChangeDetector {
    ChangeDetector::new(settings).expect("valid settings")
}

/// The verdicts of a square of 80 px moving 16 px a frame for `moves` frames, then standing
/// still for `still` frames, on a frame of `w`×`h` with `stride`.
fn run_square(
    d: &mut ChangeDetector,
    (w, h, stride): (u32, u32, usize),
    moves: u32,
    still: u32,
) -> Vec<Verdict> {
    let mut scene = Scene::new(w, h, stride);
    let mut noise = Noise(42);
    (0..=moves + still)
        .map(|i| {
            let left = 30 + 16 * i.min(moves);
            d.feed(&scene.paint(&mut noise, square(left, 60, 80)))
        })
        .collect()
}

/// Frames after which a change of `contrast` falls below `threshold` at `alpha`:
/// `ceil(ln(threshold / contrast) / ln(1 - alpha))`.
fn absorb_frames(threshold: f64, contrast: f64, alpha: f64) -> usize {
    ((threshold / contrast).ln() / (1.0 - alpha).ln()).ceil() as usize
}

#[test]
fn a_still_noisy_picture_never_changes() {
    let mut d = detector(ChangeSettings::default());
    let mut scene = Scene::new(640, 360, 640);
    let mut noise = Noise(1);
    for i in 0..100 {
        let v = d.feed(&scene.paint(&mut noise, texture));
        assert!(!v.changed, "frame {i}: {v:?}");
        assert!(v.changed_fraction < 0.001, "frame {i}: {v:?}");
    }
    assert_eq!((d.frames(), d.changes(), d.rejected()), (100, 0, 0));
}

#[test]
fn a_moving_square_changes_until_the_background_absorbs_it() {
    for alpha in [0.05, 0.5] {
        let settings = ChangeSettings {
            background_alpha: alpha,
            ..ChangeSettings::default()
        };
        let mut d = detector(settings);
        let (moves, still) = (30, 100);
        let verdicts = run_square(&mut d, (640, 360, 640), moves, still);
        assert!(
            !verdicts[0].changed,
            "the first frame only sets the background"
        );
        for (i, v) in verdicts.iter().enumerate().take(moves as usize + 1).skip(1) {
            assert!(v.changed, "alpha {alpha}: moving frame {i}: {v:?}");
        }
        // Standing still: changed at first (the background has not caught up with the last
        // position), then quiet for good within the absorption time.
        let after: Vec<bool> = verdicts[moves as usize + 1..]
            .iter()
            .map(|v| v.changed)
            .collect();
        assert!(after[0], "alpha {alpha}: the stop is not absorbed at once");
        let quiet_from = after.iter().position(|&c| !c).unwrap();
        let bound = absorb_frames(20.0, 200.0, alpha) + 1;
        assert!(
            quiet_from <= bound,
            "alpha {alpha}: still changing {quiet_from} frames after the stop (bound {bound})"
        );
        assert!(
            after[quiet_from..].iter().all(|&c| !c),
            "alpha {alpha}: {after:?}"
        );
        let changed = verdicts.iter().filter(|v| v.changed).count() as u64;
        assert_eq!(d.changes(), changed);
        assert_eq!(d.frames(), verdicts.len() as u64);
    }
}

#[test]
fn motion_inside_a_mask_is_ignored() {
    // The square's whole path (x 30..=590, y 60..140 of 640×360) and a margin.
    let path = Polygon::new(vec![[0.0, 0.1], [1.0, 0.1], [1.0, 0.45], [0.0, 0.45]]).unwrap();
    let settings = ChangeSettings {
        masks: vec![path],
        ..ChangeSettings::default()
    };
    let mut d = detector(settings);
    let verdicts = run_square(&mut d, (640, 360, 640), 30, 10);
    assert!(verdicts
        .iter()
        .all(|v| !v.changed && v.changed_fraction == 0.0));
    assert_eq!(d.changes(), 0);

    // A mask elsewhere hides nothing of it.
    let elsewhere = Polygon::new(vec![[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]]).unwrap();
    let mut d = detector(ChangeSettings {
        masks: vec![elsewhere],
        ..ChangeSettings::default()
    });
    let verdicts = run_square(&mut d, (640, 360, 640), 30, 0);
    assert!(verdicts[1..].iter().all(|v| v.changed));
}

#[test]
fn masks_covering_everything_never_report_change() {
    let all = Polygon::new(vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).unwrap();
    let mut d = detector(ChangeSettings {
        masks: vec![all],
        min_area: 0.0,
        ..ChangeSettings::default()
    });
    let verdicts = run_square(&mut d, (640, 360, 640), 20, 0);
    assert!(verdicts.iter().all(|v| *v == Verdict::STILL));
    assert_eq!(d.changes(), 0);
}

#[test]
fn a_slow_global_brightness_ramp_does_not_trigger() {
    // +1 per frame over 200 frames, and twice as fast over 100: the background lags by
    // rate / alpha (20 and 40, at and beyond the threshold), the global offset takes it out.
    for (rate, frames) in [(1, 200), (2, 100)] {
        let mut d = detector(ChangeSettings::default());
        let mut scene = Scene::new(640, 360, 640);
        let mut noise = Noise(7);
        for t in 0..frames {
            let v = d.feed(&scene.paint(&mut noise, |x, y| texture(x, y) / 4 + 5 + rate * t));
            assert!(!v.changed, "rate {rate}, frame {t}: {v:?}");
        }
        assert_eq!(d.changes(), 0);
    }
}

#[test]
fn a_uniform_jump_of_the_whole_picture_is_not_a_change_but_an_object_on_it_is() {
    let mut d = detector(ChangeSettings::default());
    let mut scene = Scene::new(640, 360, 640);
    let mut noise = Noise(3);
    d.feed(&scene.paint(&mut noise, texture));
    let v = d.feed(&scene.paint(&mut noise, |x, y| texture(x, y) + 60));
    assert!(!v.changed, "{v:?}");
    let v = d.feed(&scene.paint(&mut noise, |x, y| {
        if (200..300).contains(&x) && (100..200).contains(&y) {
            250
        } else {
            texture(x, y) + 60
        }
    }));
    assert!(v.changed, "{v:?}");
}

#[test]
fn min_area_decides_and_the_fraction_is_reported_below_it() {
    // A 20×20 px square at 640×360 covers 4 of 2304 cells (0.17 %): below the default 0.5 %.
    let small = |on: bool| {
        move |x: u32, y: u32| {
            if on && (100..120).contains(&x) && (100..120).contains(&y) {
                220
            } else {
                20
            }
        }
    };
    for (min_area, expect) in [(0.005, false), (0.001, true), (0.0, true)] {
        let mut d = detector(ChangeSettings {
            min_area,
            ..ChangeSettings::default()
        });
        let mut scene = Scene::new(640, 360, 640);
        let mut noise = Noise(5);
        d.feed(&scene.paint(&mut noise, small(false)));
        let v = d.feed(&scene.paint(&mut noise, small(true)));
        assert_eq!(v.changed, expect, "min_area {min_area}: {v:?}");
        assert!((v.changed_fraction - 4.0 / 2304.0).abs() < 1e-12, "{v:?}");
    }
}

#[test]
fn odd_sizes_and_padded_rows_give_the_same_verdicts_as_packed_rows() {
    let mut packed = detector(ChangeSettings::default());
    let mut padded = detector(ChangeSettings::default());
    let a = run_square(&mut packed, (333, 187, 333), 12, 5);
    let b = run_square(&mut padded, (333, 187, 352), 12, 5);
    assert_eq!(a, b);
    assert!(a[1..=12].iter().all(|v| v.changed), "{a:?}");
}

#[test]
fn a_size_change_resets_the_background() {
    let mut d = detector(ChangeSettings::default());
    let mut noise = Noise(9);
    let mut big = Scene::new(640, 360, 640);
    let mut small = Scene::new(333, 187, 340);
    assert!(!d.feed(&big.paint(&mut noise, texture)).changed);
    assert!(!d.feed(&big.paint(&mut noise, texture)).changed);
    // A new size: only a new background, even though the picture is entirely different.
    assert!(
        !d.feed(&small.paint(&mut noise, square(10, 10, 100)))
            .changed
    );
    assert!(
        d.feed(&small.paint(&mut noise, square(150, 50, 100)))
            .changed
    );
    // And back.
    assert!(!d.feed(&big.paint(&mut noise, |_, _| 0)).changed);
    assert!(
        d.feed(&big.paint(&mut noise, square(100, 100, 200)))
            .changed
    );
    assert_eq!((d.frames(), d.changes(), d.rejected()), (6, 2, 0));
}

#[test]
fn unusable_views_are_counted_and_change_nothing() {
    let mut d = detector(ChangeSettings::default());
    let data = vec![20u8; 100 * 50];
    let good = LumaView {
        data: &data,
        width: 100,
        height: 50,
        stride: 100,
    };
    d.feed(&good);
    for bad in [
        LumaView { width: 0, ..good },
        LumaView { height: 0, ..good },
        LumaView { stride: 99, ..good },
        LumaView {
            data: &data[..data.len() - 1],
            ..good
        },
        LumaView {
            stride: usize::MAX,
            ..good
        },
    ] {
        assert_eq!(d.feed(&bad), Verdict::STILL);
    }
    assert_eq!((d.frames(), d.rejected()), (6, 5));
    // The good frame's background and size survived: the same picture is still, and a
    // square on it is a change (a reset would have made it a first frame, not changed).
    assert!(!d.feed(&good).changed);
    let mut scene = Scene::new(100, 50, 100);
    assert!(
        d.feed(&scene.paint(&mut Noise(2), square(30, 10, 30)))
            .changed
    );
    assert_eq!((d.frames(), d.changes(), d.rejected()), (8, 1, 5));
}

#[test]
fn settings_are_checked_with_the_name_and_what_is_allowed() {
    let bad = [
        (
            ChangeSettings {
                grid: (3, 36),
                ..ChangeSettings::default()
            },
            "grid = (3, 36)",
        ),
        (
            ChangeSettings {
                grid: (64, 257),
                ..ChangeSettings::default()
            },
            "4..=256",
        ),
        (
            ChangeSettings {
                min_area: 1.5,
                ..ChangeSettings::default()
            },
            "min_area = 1.5",
        ),
        (
            ChangeSettings {
                min_area: f64::NAN,
                ..ChangeSettings::default()
            },
            "min_area = NaN",
        ),
        (
            ChangeSettings {
                background_alpha: 0.0,
                ..ChangeSettings::default()
            },
            "background_alpha = 0 ",
        ),
        (
            ChangeSettings {
                background_alpha: 1.01,
                ..ChangeSettings::default()
            },
            "(0, 1]",
        ),
        (
            ChangeSettings {
                threshold: 0,
                ..ChangeSettings::default()
            },
            "threshold = 0",
        ),
    ];
    for (settings, needle) in bad {
        let err = ChangeDetector::new(settings.clone()).unwrap_err();
        assert!(err.to_string().contains(needle), "{settings:?}: {err}");
    }
    for ok in [
        ChangeSettings::default(),
        ChangeSettings {
            grid: (4, 256),
            min_area: 1.0,
            background_alpha: 1.0,
            threshold: 255,
            masks: Vec::new(),
        },
    ] {
        ChangeDetector::new(ok).unwrap();
    }
}

#[test]
fn rgb_to_luma_uses_bt601_weights() {
    let rgb = [
        0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 128, 128, 128,
    ];
    let mut out = vec![9; 50];
    rgb_to_luma(&rgb, 3, 2, &mut out);
    // (77·255 + 128) >> 8 = 77, (150·255 + 128) >> 8 = 149, (29·255 + 128) >> 8 = 29.
    assert_eq!(out, [0, 255, 77, 149, 29, 128]);
    // A short buffer gives a short plane; a long one is cut at width × height.
    rgb_to_luma(&rgb[..7], 3, 2, &mut out);
    assert_eq!(out, [0, 255]);
    rgb_to_luma(&rgb, 2, 1, &mut out);
    assert_eq!(out, [0, 255]);
}

#[test]
fn axis_samples_stay_in_the_picture() {
    for (size, cells) in [(1, 4), (3, 64), (333, 64), (1920, 64), (1080, 36), (7, 256)] {
        let xs = axis_samples(size, cells);
        assert_eq!(xs.len(), cells as usize * SAMPLES_PER_AXIS);
        assert!(xs.iter().all(|&x| x < size as usize), "{size}/{cells}");
        assert!(
            xs.windows(2).all(|w| w[0] <= w[1]),
            "{size}/{cells}: {xs:?}"
        );
    }
    // 1920 / 64 = 30 px a cell, samples at the centres of its quarters (3, 11, 18, 26).
    assert_eq!(
        &axis_samples(1920, 64)[..8],
        &[3, 11, 18, 26, 33, 41, 48, 56]
    );
}

fn view_params() -> impl Strategy<Value = (u32, u32, usize)> {
    (1_u32..200, 1_u32..120, 0_usize..24).prop_map(|(w, h, pad)| (w, h, w as usize + pad))
}

proptest! {
    #[test]
    fn never_panics_and_the_fraction_is_a_fraction(
        frames in prop::collection::vec((view_params(), any::<u64>(), 0_usize..3), 1..12),
        grid in (4_u32..=256, 4_u32..=256),
        threshold in 1_u8..=255,
        min_area in 0.0..=1.0_f64,
        alpha in 0.001..=1.0_f64,
        masked in any::<bool>(),
    ) {
        let masks = if masked {
            vec![Polygon::new(vec![[0.1, 0.1], [0.9, 0.3], [0.4, 0.8]]).unwrap()]
        } else {
            Vec::new()
        };
        let mut d = detector(ChangeSettings { threshold, min_area, masks, grid, background_alpha: alpha });
        let mut changed = 0;
        let mut rejected = 0;
        for ((w, h, stride), seed, cut) in &frames {
            let mut noise = Noise(*seed);
            let len = stride * (*h as usize - 1) + *w as usize;
            let data: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
            // Sometimes a plane that is too short.
            let data = &data[..len.saturating_sub(*cut)];
            let v = d.feed(&LumaView { data, width: *w, height: *h, stride: *stride });
            prop_assert!((0.0..=1.0).contains(&v.changed_fraction), "{:?}", v);
            prop_assert!(!v.changed || v.changed_fraction >= min_area);
            changed += u64::from(v.changed);
            rejected += u64::from(*cut > 0);
        }
        prop_assert_eq!(d.changes(), changed);
        prop_assert_eq!(d.rejected(), rejected);
        prop_assert_eq!(d.frames(), frames.len() as u64);
    }
}
