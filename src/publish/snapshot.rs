//! Annotated snapshots: the frame as JPEG with the boxes, quads, polygons and
//! labels of a result drawn on it — people would rather look than read.
//!
//! Shapes are placed from the `*_normalized` coordinates when present, so a
//! frame scaled down for the snapshot still lines up; the pixel coordinates
//! are the fallback. Labels use a built-in 5×7 bitmap font (upper case,
//! digits, a little punctuation): no font file to ship or to miss at run time.

use image::{Rgb, RgbImage};
use serde_json::Value;

use super::PublishError;

/// Draws `result` (Hugging Face shape, `{task: value}`) on a copy of `frame`
/// and encodes it as JPEG with `quality` (1–100). Text results draw nothing
/// but still give a snapshot of the frame.
pub fn render_snapshot(
    frame: &RgbImage,
    result: &Value,
    quality: u8,
) -> Result<Vec<u8>, PublishError> {
    let mut canvas = frame.clone();
    for shape in shapes(result, canvas.width(), canvas.height()) {
        draw_shape(&mut canvas, &shape);
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality.clamp(1, 100))
        .encode_image(&canvas)
        .map_err(PublishError::Snapshot)?;
    Ok(jpeg)
}

/// One thing to draw, in pixel coordinates of the canvas.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Shape {
    /// Closed outline: a box has 4 corners, a quad 4, a polygon n.
    pub(crate) points: Vec<(f64, f64)>,
    pub(crate) label: String,
}

/// Collects the shapes of a result, scaled to a `width`×`height` canvas.
pub(crate) fn shapes(result: &Value, width: u32, height: u32) -> Vec<Shape> {
    let Some(value) = result.as_object().and_then(|m| m.values().next()) else {
        return Vec::new();
    };
    let Some(fields) = value.as_object() else {
        return Vec::new();
    };
    let (w, h) = (f64::from(width), f64::from(height));
    let mut out = Vec::new();
    let labels_of = |key: &str| -> Vec<String> {
        fields
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|l| l.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // (normalized key, pixel key, label keys, kind)
    let groups: [(&str, &str, [&str; 2], Kind); 3] = [
        (
            "bboxes_normalized",
            "bboxes",
            ["bboxes_labels", "labels"],
            Kind::Box,
        ),
        (
            "quad_boxes_normalized",
            "quad_boxes",
            ["labels", "labels"],
            Kind::Flat,
        ),
        (
            "polygons_normalized",
            "polygons",
            ["polygons_labels", "labels"],
            Kind::Nested,
        ),
    ];
    for (normalized, pixel, label_keys, kind) in groups {
        let (list, scale) = match (fields.get(normalized), fields.get(pixel)) {
            (Some(Value::Array(list)), _) => (list, (w, h)),
            (_, Some(Value::Array(list))) => (list, (1.0, 1.0)),
            _ => continue,
        };
        let labels = if fields.contains_key(label_keys[0]) {
            labels_of(label_keys[0])
        } else {
            labels_of(label_keys[1])
        };
        for (i, item) in list.iter().enumerate() {
            let label = labels.get(i).cloned().unwrap_or_default();
            let outlines: Vec<Vec<f64>> = match kind {
                Kind::Box | Kind::Flat => vec![numbers(item)],
                Kind::Nested => item
                    .as_array()
                    .map(|polys| polys.iter().map(numbers).collect())
                    .unwrap_or_default(),
            };
            for (j, coords) in outlines.into_iter().enumerate() {
                let points = match kind {
                    Kind::Box if coords.len() == 4 => {
                        let [x1, y1, x2, y2] = [coords[0], coords[1], coords[2], coords[3]];
                        vec![(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
                    }
                    Kind::Box => continue,
                    _ => coords.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
                };
                let points: Vec<(f64, f64)> = points
                    .into_iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|(x, y)| (x * scale.0, y * scale.1))
                    .collect();
                if points.len() >= 2 {
                    out.push(Shape {
                        points,
                        // One label per instance, on its first polygon.
                        label: if j == 0 { label.clone() } else { String::new() },
                    });
                }
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Box,
    Flat,
    Nested,
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// A colour per label, so the same class keeps its colour across frames.
fn colour(label: &str) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ];
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    Rgb(PALETTE[(hash % PALETTE.len() as u64) as usize])
}

fn draw_shape(canvas: &mut RgbImage, shape: &Shape) {
    let colour = colour(&shape.label);
    let thickness = (canvas.width().max(canvas.height()) / 400).max(1) as i64;
    let n = shape.points.len();
    for i in 0..n {
        let (a, b) = (shape.points[i], shape.points[(i + 1) % n]);
        draw_line(canvas, a, b, thickness, colour);
    }
    if !shape.label.is_empty() {
        let (x, y) = shape
            .points
            .iter()
            .fold((f64::MAX, f64::MAX), |(mx, my), &(x, y)| {
                (mx.min(x), my.min(y))
            });
        draw_label(canvas, x, y, &shape.label, colour);
    }
}

fn put(canvas: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(canvas.width()) && y < i64::from(canvas.height()) {
        canvas.put_pixel(x as u32, y as u32, colour);
    }
}

/// Bresenham, with a square pen of `thickness` pixels; clipped per pixel.
fn draw_line(canvas: &mut RgbImage, a: (f64, f64), b: (f64, f64), thickness: i64, colour: Rgb<u8>) {
    let limit = 4.0 * f64::from(canvas.width().max(canvas.height()));
    let clamp = |v: f64| v.clamp(-limit, limit).round() as i64;
    let (mut x0, mut y0, x1, y1) = (clamp(a.0), clamp(a.1), clamp(b.0), clamp(b.1));
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    let half = thickness / 2;
    loop {
        for ox in -half..thickness - half {
            for oy in -half..thickness - half {
                put(canvas, x0 + ox, y0 + oy, colour);
            }
        }
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// The label on a filled tag just above (or, at the top edge, inside) the shape.
fn draw_label(canvas: &mut RgbImage, x: f64, y: f64, text: &str, colour: Rgb<u8>) {
    let scale = i64::from((canvas.width() / 640).max(1));
    let text: Vec<char> = text.chars().take(40).collect();
    let (glyph_w, glyph_h) = (6 * scale, 9 * scale);
    let tag_w = glyph_w * text.len() as i64 + 2 * scale;
    let x = (x.max(0.0).round() as i64).min(i64::from(canvas.width()));
    let top = y.round() as i64 - glyph_h;
    let top = if top < 0 {
        y.max(0.0).round() as i64
    } else {
        top
    };
    for ty in top..top + glyph_h {
        for tx in x..x + tag_w {
            put(canvas, tx, ty, colour);
        }
    }
    let luminance =
        299 * u32::from(colour.0[0]) + 587 * u32::from(colour.0[1]) + 114 * u32::from(colour.0[2]);
    let ink = if luminance > 128_000 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    };
    for (i, c) in text.iter().enumerate() {
        let rows = glyph(*c);
        let gx = x + scale + i as i64 * glyph_w;
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            put(
                                canvas,
                                gx + col * scale + sx,
                                top + scale + row as i64 * scale + sy,
                                ink,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// 5×7 glyphs, one byte per row, bit 4 = leftmost column. Lower case is drawn
/// as upper case; anything unknown as '?'.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ' ' => [0; 7],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '\'' => [0x04, 0x04, 0x08, 0, 0, 0, 0],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GREY: Rgb<u8> = Rgb([128, 128, 128]);

    #[test]
    fn boxes_come_from_normalized_coordinates_scaled_to_the_canvas() {
        let result = json!({"<OD>": {
            "bboxes": [[100.0, 50.0, 300.0, 150.0]],
            "bboxes_normalized": [[0.25, 0.25, 0.75, 0.75]],
            "labels": ["car"]
        }});
        let found = shapes(&result, 80, 40);
        assert_eq!(
            found,
            [Shape {
                points: vec![(20.0, 10.0), (60.0, 10.0), (60.0, 30.0), (20.0, 30.0)],
                label: "car".into()
            }]
        );
        // Without normalized coordinates the pixel ones are used as they are.
        let pixels = json!({"<OD>": {"bboxes": [[1.0, 2.0, 3.0, 4.0]], "labels": ["x"]}});
        assert_eq!(shapes(&pixels, 80, 40)[0].points[2], (3.0, 4.0));
    }

    #[test]
    fn quads_polygons_and_open_vocabulary_labels_are_found() {
        let result = json!({"<OPEN_VOCABULARY_DETECTION>": {
            "bboxes": [], "bboxes_labels": [],
            "polygons": [[[1.0, 1.0, 9.0, 1.0, 9.0, 9.0], [20.0, 20.0, 30.0, 20.0]]],
            "polygons_labels": ["helmet"]
        }});
        let found = shapes(&result, 100, 100);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].points, [(1.0, 1.0), (9.0, 1.0), (9.0, 9.0)]);
        assert_eq!(
            (found[0].label.as_str(), found[1].label.as_str()),
            ("helmet", "")
        );
        let ocr = json!({"<OCR_WITH_REGION>": {"quad_boxes": [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 5.0]], "labels": ["STOP"]}});
        assert_eq!(shapes(&ocr, 10, 10)[0].points.len(), 4);
        assert!(shapes(&json!({"<CAPTION>": "a car"}), 10, 10).is_empty());
        assert!(shapes(&json!({"<OD>": {"bboxes": [[1.0, 2.0, 3.0]]}}), 10, 10).is_empty());
    }

    #[test]
    fn the_box_outline_and_label_tag_are_drawn_and_the_inside_is_untouched() {
        let mut canvas = RgbImage::from_pixel(64, 48, GREY);
        let shape = Shape {
            points: vec![(10.0, 20.0), (50.0, 20.0), (50.0, 40.0), (10.0, 40.0)],
            label: "car".into(),
        };
        draw_shape(&mut canvas, &shape);
        let c = colour("car");
        assert_eq!(*canvas.get_pixel(30, 20), c, "top edge");
        assert_eq!(*canvas.get_pixel(50, 30), c, "right edge");
        assert_eq!(*canvas.get_pixel(30, 40), c, "bottom edge");
        assert_eq!(*canvas.get_pixel(30, 30), GREY, "inside");
        // The tag sits above the box: 9 rows at scale 1, starting at x = 10.
        assert_eq!(*canvas.get_pixel(11, 11), c, "tag background");
        let inked = (11..11 + 18).flat_map(|x| (12..19).map(move |y| (x, y)));
        assert!(
            inked.into_iter().any(|(x, y)| *canvas.get_pixel(x, y) != c),
            "no glyph ink"
        );
    }

    #[test]
    fn shapes_outside_the_frame_are_clipped_not_a_panic() {
        let mut canvas = RgbImage::from_pixel(16, 16, GREY);
        let shape = Shape {
            points: vec![(-1e12, -5.0), (1e12, 40.0), (8.0, f64::MAX / 2.0)],
            label: "far away label that is long".into(),
        };
        draw_shape(&mut canvas, &shape);
        assert_eq!(canvas.dimensions(), (16, 16));
    }

    #[test]
    fn the_snapshot_is_a_jpeg_of_the_frame_size() {
        let frame = RgbImage::from_pixel(320, 240, GREY);
        let result =
            json!({"<OD>": {"bboxes_normalized": [[0.1, 0.1, 0.5, 0.5]], "labels": ["person"]}});
        let jpeg = render_snapshot(&frame, &result, 80).expect("encode");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let decoded = image::load_from_memory(&jpeg).expect("decode").to_rgb8();
        assert_eq!(decoded.dimensions(), (320, 240));
        // The label tag (above the box, x 32.., y 15..24) is a solid block of
        // colour; JPEG keeps that, unlike the inside of the box.
        let difference = |x0: u32, y0: u32| {
            let mut sum = 0u32;
            for y in y0..y0 + 8 {
                for x in x0..x0 + 30 {
                    let p = decoded.get_pixel(x, y).0;
                    sum += p.iter().map(|&v| u32::from(v.abs_diff(128))).sum::<u32>();
                }
            }
            sum / (8 * 30 * 3)
        };
        assert!(
            difference(33, 15) > 30,
            "tag not drawn: {}",
            difference(33, 15)
        );
        assert!(
            difference(60, 60) < 5,
            "inside changed: {}",
            difference(60, 60)
        );
    }
}
