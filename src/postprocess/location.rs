//! Location bins: Florence-2 splits each image axis into 1000 bins and speaks of positions as
//! `<loc_N>` tokens. This file turns bins into pixels (decoder output) and pixels into bins
//! (region prompts), following DESIGN.md §3.

use std::fmt;

use super::{ImageSize, PostprocessError};

/// Location bins per image axis: the model's vocabulary defines them.
pub use crate::florence2::tokenizer::LOCATION_BINS;

/// The largest bin a `<loc_N>` token can name.
pub const MAX_BIN: u32 = LOCATION_BINS - 1;

/// Pixel coordinate of the centre of `bin` on an axis of `size` pixels:
/// `(bin + 0.5) * size / 1000`, in f64 (Microsoft's original rule, without its float32 rounding).
pub fn dequantize(bin: u32, size: u32) -> f64 {
    (f64::from(bin) + 0.5) * f64::from(size) / f64::from(LOCATION_BINS)
}

/// The same position as a fraction of the axis: `(bin + 0.5) / 1000`, i.e. `dequantize(bin, S) / S`.
/// It does not depend on the image size, so it survives resizing of the frame.
pub fn normalize(bin: u32) -> f64 {
    (f64::from(bin) + 0.5) / f64::from(LOCATION_BINS)
}

/// The integer the transformers 5 port publishes for `bin`: it computes
/// `float32(bin + 0.5) * float32(size / 1000)` in float32 and truncates with `.int()`.
/// That is not always `trunc(dequantize(bin, size))`: for 768 px and bin 62 the exact value is
/// 48.0, float32 gives 48.0, but elsewhere the float32 product can land just below an integer.
/// Kept for parity checks and for callers that must reproduce the port's numbers.
pub fn transformers_port_coordinate(bin: u32, size: u32) -> i64 {
    // Both casts are the port's own roundings; `as i64` truncates toward zero like `.int()`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let per_bin = (f64::from(size) / f64::from(LOCATION_BINS)) as f32;
    #[allow(clippy::cast_precision_loss)]
    let centre = bin as f32 + 0.5;
    #[allow(clippy::cast_possible_truncation)]
    let truncated = (centre * per_bin) as i64;
    truncated
}

/// Bin of a pixel coordinate: `floor(v * 1000 / size)` clamped to `0..=999`, so the right and
/// bottom image edges (v == size) land in the last bin. Total: a value outside `0..=size` lands
/// in the nearest end bin, and NaN or a zero `size` never panics (NaN gives bin 0).
pub fn quantize(value: f64, size: u32) -> u32 {
    let bin = (value * f64::from(LOCATION_BINS) / f64::from(size)).floor();
    // After the clamp `bin` is in 0..=999 (or NaN, which `as` turns into 0), so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bin = bin.clamp(0.0, f64::from(MAX_BIN)) as u32;
    bin
}

/// A pixel region quantized to location bins, for region prompts such as
/// `<REGION_TO_DESCRIPTION>` whose `{input}` is `<loc_x1><loc_y1><loc_x2><loc_y2>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocationBins {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl LocationBins {
    /// Quantizes the pixel box (x1, y1) – (x2, y2) of an image. Coordinates must be finite,
    /// inside `0..=width` / `0..=height`, and not inverted (x1 <= x2, y1 <= y2); a zero-area box
    /// is allowed (it names a point or a line, which the model accepts).
    pub fn from_pixel_box(
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        image: ImageSize,
    ) -> Result<Self, PostprocessError> {
        image.validate()?;
        let checked = [
            ("x1", x1, image.width),
            ("y1", y1, image.height),
            ("x2", x2, image.width),
            ("y2", y2, image.height),
        ];
        for (name, value, limit) in checked {
            if !value.is_finite() {
                return Err(PostprocessError::NonFiniteCoordinate { name, value });
            }
            if value < 0.0 || value > f64::from(limit) {
                return Err(PostprocessError::OutsideImage { name, value, limit });
            }
        }
        if x1 > x2 {
            return Err(PostprocessError::InvertedRegion {
                low_name: "x1",
                low: x1,
                high_name: "x2",
                high: x2,
            });
        }
        if y1 > y2 {
            return Err(PostprocessError::InvertedRegion {
                low_name: "y1",
                low: y1,
                high_name: "y2",
                high: y2,
            });
        }
        Ok(Self {
            x1: quantize(x1, image.width),
            y1: quantize(y1, image.height),
            x2: quantize(x2, image.width),
            y2: quantize(y2, image.height),
        })
    }

    /// The prompt text `<loc_x1><loc_y1><loc_x2><loc_y2>`.
    pub fn prompt(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for LocationBins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<loc_{}><loc_{}><loc_{}><loc_{}>",
            self.x1, self.y1, self.x2, self.y2
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VGA: ImageSize = ImageSize {
        width: 640,
        height: 480,
    };

    #[test]
    fn dequantize_is_the_bin_centre() {
        assert_eq!(dequantize(0, 1000), 0.5);
        assert_eq!(dequantize(999, 1000), 999.5);
        assert!((dequantize(52, 640) - 33.6).abs() < 1e-12);
        assert_eq!(normalize(0), 0.0005);
        assert_eq!(normalize(999), 0.9995);
    }

    #[test]
    fn port_coordinate_truncates_the_float32_product() {
        // 52.5 * 0.64 = 33.6 → 33; 62.5 * 0.768 = 48.0 exactly in float32 → 48.
        assert_eq!(transformers_port_coordinate(52, 640), 33);
        assert_eq!(transformers_port_coordinate(62, 768), 48);
        assert_eq!(transformers_port_coordinate(999, 1), 0);
        // 1919.04 on a 1920-wide axis.
        assert_eq!(transformers_port_coordinate(999, 1920), 1919);
    }

    #[test]
    fn quantizes_with_floor_and_clamps_the_far_edge() {
        let bins = LocationBins::from_pixel_box(0.0, 0.0, 640.0, 480.0, VGA).expect("valid box");
        assert_eq!(
            bins,
            LocationBins {
                x1: 0,
                y1: 0,
                x2: 999,
                y2: 999
            }
        );
        let bins =
            LocationBins::from_pixel_box(33.6, 160.08, 596.8, 371.76, VGA).expect("valid box");
        assert_eq!(bins.prompt(), "<loc_52><loc_333><loc_932><loc_774>");
    }

    #[test]
    fn round_trips_bin_centres() {
        for size in [1_u32, 17, 640, 641, 1080, 4096] {
            for bin in [0_u32, 1, 52, 499, 500, 998, 999] {
                let v = dequantize(bin, size);
                let image = ImageSize {
                    width: size,
                    height: size,
                };
                let q = LocationBins::from_pixel_box(v, v, v, v, image).expect("centre is inside");
                assert_eq!(q.x1, bin, "bin {bin} on {size} px");
            }
        }
    }

    #[test]
    fn rejects_boxes_outside_inverted_or_not_finite() {
        let err = LocationBins::from_pixel_box(-1.0, 0.0, 10.0, 10.0, VGA).unwrap_err();
        assert!(matches!(
            err,
            PostprocessError::OutsideImage { name: "x1", .. }
        ));
        let err = LocationBins::from_pixel_box(0.0, 0.0, 10.0, 480.5, VGA).unwrap_err();
        assert!(matches!(
            err,
            PostprocessError::OutsideImage {
                name: "y2",
                limit: 480,
                ..
            }
        ));
        let err = LocationBins::from_pixel_box(20.0, 0.0, 10.0, 10.0, VGA).unwrap_err();
        assert!(matches!(
            err,
            PostprocessError::InvertedRegion { low_name: "x1", .. }
        ));
        let err = LocationBins::from_pixel_box(0.0, 30.0, 10.0, 10.0, VGA).unwrap_err();
        assert!(matches!(
            err,
            PostprocessError::InvertedRegion { low_name: "y1", .. }
        ));
        let err = LocationBins::from_pixel_box(f64::NAN, 0.0, 10.0, 10.0, VGA).unwrap_err();
        assert!(matches!(
            err,
            PostprocessError::NonFiniteCoordinate { name: "x1", .. }
        ));
        let empty = ImageSize {
            width: 0,
            height: 480,
        };
        let err = LocationBins::from_pixel_box(0.0, 0.0, 0.0, 0.0, empty).unwrap_err();
        assert!(matches!(err, PostprocessError::EmptyImage { .. }));
        assert!(err.to_string().contains("0x480"));
    }
}
