#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::preprocess::{ImageProcessorConfig, Preprocessor, RgbFrame};

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Polygon {
    Polygon::new(vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]]).unwrap()
}

/// A frame of distinct bytes, so every change shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + 7) as u8).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn an_rgb_mask_fills_the_pixels_it_covers_and_nothing_else() {
    let (w, h, stride) = (100usize, 80usize, 304usize);
    let orig = pattern(stride * h, 0);
    let mut data = orig.clone();
    let layout = Layout::Rgb { stride };
    fill(
        &mut data,
        w as u32,
        h as u32,
        layout,
        &[rect(0.25, 0.25, 0.5, 0.5)],
    )
    .unwrap();
    for y in 0..h {
        for x in 0..w {
            let px = &data[y * stride + x * 3..y * stride + x * 3 + 3];
            let inside = (25..50).contains(&x) && (20..40).contains(&y);
            if inside {
                assert_eq!(px, [0, 0, 0], "({x}, {y})");
            } else {
                assert_eq!(
                    px,
                    &orig[y * stride + x * 3..y * stride + x * 3 + 3],
                    "({x}, {y})"
                );
            }
        }
    }
    // Row padding is never touched.
    for y in 0..h {
        assert_eq!(
            data[y * stride + 300..y * stride + 304],
            orig[y * stride + 300..y * stride + 304]
        );
    }
}

#[test]
fn an_nv12_mask_fills_luma_black_and_the_chroma_of_every_touched_block() {
    // Odd size: the last chroma column and row cover one luma pixel.
    let (w, h) = (33usize, 17usize);
    let (y_stride, uv_stride) = (40usize, 36usize);
    let uv_offset = y_stride * h;
    let len = uv_offset + uv_stride * h.div_ceil(2);
    let orig = pattern(len, 3);
    let mut data = orig.clone();
    let layout = Layout::Nv12 {
        y_stride,
        uv_offset,
        uv_stride,
    };
    // Pixels 30..33 of rows 10..17: the bottom-right corner.
    fill(
        &mut data,
        w as u32,
        h as u32,
        layout,
        &[rect(30.0 / 33.0, 10.0 / 17.0, 1.0, 1.0)],
    )
    .unwrap();
    for y in 0..h {
        for x in 0..w {
            let want = if x >= 30 && y >= 10 {
                16
            } else {
                orig[y * y_stride + x]
            };
            assert_eq!(data[y * y_stride + x], want, "Y ({x}, {y})");
        }
    }
    for cy in 0..h.div_ceil(2) {
        for cx in 0..w.div_ceil(2) {
            let i = uv_offset + cy * uv_stride + cx * 2;
            let touched = cx >= 15 && cy >= 5;
            let want = if touched {
                [128, 128]
            } else {
                [orig[i], orig[i + 1]]
            };
            assert_eq!(data[i..i + 2], want, "UV ({cx}, {cy})");
        }
    }
}

#[test]
fn what_is_masked_never_reaches_the_model_input_or_the_snapshot() {
    // Two frames that differ only under the mask.
    let (w, h) = (333u32, 187u32);
    let stride = w as usize * 3;
    let mask = Polygon::new(vec![[0.1, 0.2], [0.6, 0.1], [0.5, 0.9]]).unwrap();
    let mut a = pattern(stride * h as usize, 0);
    let mut b = a.clone();
    let mut differs = 0;
    for y in 0..h as usize {
        for x in 0..w as usize {
            let (nx, ny) = (
                (x as f64 + 0.5) / f64::from(w),
                (y as f64 + 0.5) / f64::from(h),
            );
            if mask.contains(nx, ny) {
                b[y * stride + x * 3] ^= 0x5a;
                differs += 1;
            }
        }
    }
    assert!(differs > 1000);
    let layout = Layout::Rgb { stride };
    fill(&mut a, w, h, layout, std::slice::from_ref(&mask)).unwrap();
    fill(&mut b, w, h, layout, std::slice::from_ref(&mask)).unwrap();
    assert_eq!(a, b, "the masked frames are the same frame");

    let mut pre = Preprocessor::new(ImageProcessorConfig::florence2()).unwrap();
    let mut ta = vec![0f32; pre.image_len()];
    let mut tb = vec![0f32; pre.image_len()];
    pre.preprocess_into(&RgbFrame::new(w, h, stride, &a).unwrap(), &mut ta)
        .unwrap();
    pre.preprocess_into(&RgbFrame::new(w, h, stride, &b).unwrap(), &mut tb)
        .unwrap();
    assert_eq!(ta, tb);
    // And the mask did change the input: the unmasked frame differs.
    let unmasked = pattern(stride * h as usize, 0);
    let mut tu = vec![0f32; pre.image_len()];
    pre.preprocess_into(&RgbFrame::new(w, h, stride, &unmasked).unwrap(), &mut tu)
        .unwrap();
    assert_ne!(ta, tu);

    let image = |d: &[u8]| image::RgbImage::from_raw(w, h, d.to_vec()).unwrap();
    let result = serde_json::json!({"<CAPTION>": "a"});
    let ja = crate::publish::snapshot::render_snapshot(&image(&a), &result, 80).unwrap();
    let jb = crate::publish::snapshot::render_snapshot(&image(&b), &result, 80).unwrap();
    assert_eq!(ja, jb);
    // In the JPEG, the masked area is black.
    let decoded = image::load_from_memory(&ja).unwrap().to_rgb8();
    let centre = decoded.get_pixel((0.4 * f64::from(w)) as u32, (0.4 * f64::from(h)) as u32);
    assert!(centre.0.iter().all(|c| *c < 8), "{centre:?}");
}

#[test]
fn a_buffer_too_short_is_refused_and_left_alone() {
    let mut data = vec![7u8; 10];
    let e = fill(
        &mut data,
        4,
        4,
        Layout::Rgb { stride: 12 },
        &[rect(0.0, 0.0, 1.0, 1.0)],
    );
    assert!(e.unwrap_err().contains("needs 48"));
    assert_eq!(data, vec![7u8; 10]);
    let e = fill(
        &mut data,
        4,
        4,
        Layout::Rgb { stride: 2 },
        &[rect(0.0, 0.0, 1.0, 1.0)],
    );
    assert!(e.is_err());
}

proptest! {
    /// Every pixel with a point of the polygon in it is filled (checked on
    /// a 5×5 grid of points inside each pixel); no pixel more than
    /// one pixel away from the polygon's bounds is.
    #[test]
    fn a_mask_covers_every_pixel_it_touches(
        pts in prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0), 3..6),
        w in 1u32..40,
        h in 1u32..40,
    ) {
        let Ok(poly) = Polygon::new(pts.iter().map(|&(x, y)| [x, y]).collect()) else {
            return Ok(());
        };
        let stride = w as usize * 3;
        let mut data = vec![255u8; stride * h as usize];
        fill(&mut data, w, h, Layout::Rgb { stride }, std::slice::from_ref(&poly)).unwrap();
        let b = poly.bounds();
        for y in 0..h {
            for x in 0..w {
                let filled = data[y as usize * stride + x as usize * 3] == 0;
                let touched = (0..5).any(|i| (0..5).any(|j| {
                    let px = (f64::from(x) + (f64::from(i) + 0.5) / 5.0) / f64::from(w);
                    let py = (f64::from(y) + (f64::from(j) + 0.5) / 5.0) / f64::from(h);
                    poly.contains(px, py)
                }));
                if touched {
                    prop_assert!(filled, "pixel ({}, {}) touched but not filled", x, y);
                }
                let far = f64::from(x + 2) / f64::from(w) < b.x0
                    || f64::from(x) / f64::from(w) > b.x1 + 1.0 / f64::from(w)
                    || f64::from(y + 2) / f64::from(h) < b.y0
                    || f64::from(y) / f64::from(h) > b.y1 + 1.0 / f64::from(h);
                if far {
                    prop_assert!(!filled, "pixel ({}, {}) far from the mask but filled", x, y);
                }
            }
        }
    }
}
