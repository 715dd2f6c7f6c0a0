//! Property tests: decoder text made of any mix of special tokens, location tokens (valid and
//! not), separators and arbitrary Unicode never makes `post_process` panic, and what comes out is
//! well formed: coordinates are bin centres inside the image, groups are complete, labels line up
//! with their coordinates, and every location token is either used or counted as dropped.

use proptest::prelude::*;
use regex::Regex;

use super::{dequantize, normalize, post_process, ImageSize, ParseKind, TaskOutput};

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0_u32..1000).prop_map(|b| format!("<loc_{b}>")),
        1 => (1000_u32..100_000).prop_map(|b| format!("<loc_{b}>")),
        1 => "[0-9]{0,30}".prop_map(|d| format!("<loc_{d}>")),
        1 => prop::sample::select(vec![
            "<s>", "</s>", "<pad>", "<sep>", "<poly>", "</poly>", "<od>", "</od>", "<ground>",
            "<obj>", "<loc_", "<", ">", "\n", " ", "<box>", "the image", "it", "\u{1c}",
        ])
        .prop_map(str::to_owned),
        2 => "\\PC{0,6}",
        1 => "[a-z ]{1,10}",
    ]
}

fn decoder_text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..48).prop_map(|pieces| pieces.concat())
}

fn kind() -> impl Strategy<Value = ParseKind> {
    prop::sample::select(vec![
        ParseKind::PureText,
        ParseKind::DescriptionWithBboxes,
        ParseKind::Bboxes,
        ParseKind::PhraseGrounding,
        ParseKind::Ocr,
        ParseKind::Polygons,
        ParseKind::DescriptionWithBboxesOrPolygons,
    ])
}

fn image() -> impl Strategy<Value = ImageSize> {
    (1_u32..8000, 1_u32..8000).prop_map(|(width, height)| ImageSize { width, height })
}

/// Checks one flat x, y, … list against its normalized twin; returns an error message.
fn check_coordinates(values: &[f64], normalized: &[f64], image: ImageSize) -> Result<(), String> {
    if values.len() != normalized.len() || values.len() % 2 != 0 {
        return Err(format!(
            "{} values, {} normalized: not paired",
            values.len(),
            normalized.len()
        ));
    }
    for (k, (&v, &n)) in values.iter().zip(normalized).enumerate() {
        let size = if k % 2 == 0 {
            image.width
        } else {
            image.height
        };
        if !(n > 0.0 && n < 1.0) {
            return Err(format!("normalized {n} outside (0, 1)"));
        }
        if !(v > 0.0 && v < f64::from(size)) {
            return Err(format!("coordinate {v} outside the {size} px axis"));
        }
        let bin = (n * 1000.0 - 0.5).round();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bin = bin as u32;
        if normalize(bin) != n || dequantize(bin, size) != v {
            return Err(format!("{v} / {n} is not the centre of bin {bin}"));
        }
    }
    Ok(())
}

fn check_boxes<const N: usize>(
    boxes: &[[f64; N]],
    normalized: &[[f64; N]],
    labels: &[String],
    image: ImageSize,
) -> Result<usize, String> {
    if boxes.len() != normalized.len() || boxes.len() != labels.len() {
        return Err(format!(
            "{} boxes, {} normalized, {} labels",
            boxes.len(),
            normalized.len(),
            labels.len()
        ));
    }
    for (b, n) in boxes.iter().zip(normalized) {
        check_coordinates(b, n, image)?;
    }
    Ok(boxes.len() * N)
}

fn check_polygons(
    polygons: &[Vec<Vec<f64>>],
    normalized: &[Vec<Vec<f64>>],
    labels: &[String],
    image: ImageSize,
) -> Result<usize, String> {
    if polygons.len() != normalized.len() || polygons.len() != labels.len() {
        return Err("polygon instances, normalized and labels differ in number".into());
    }
    let mut used = 0;
    for (instance, normalized_instance) in polygons.iter().zip(normalized) {
        if instance.is_empty() || instance.len() != normalized_instance.len() {
            return Err("an instance without polygons, or normalized out of step".into());
        }
        for (p, n) in instance.iter().zip(normalized_instance) {
            check_coordinates(p, n, image)?;
            used += p.len();
        }
    }
    Ok(used)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn any_text_gives_well_formed_output(text in decoder_text(), kind in kind(), image in image()) {
        let output = post_process(&text, kind, image);
        prop_assert!(output.is_ok(), "error on a valid image: {:?}", output);
        let Ok(output) = output else { return Ok(()) };
        let used = match &output {
            TaskOutput::Text(t) => {
                prop_assert_eq!(kind, ParseKind::PureText);
                prop_assert!(!t.starts_with(' ') && !t.ends_with(' '));
                0
            }
            TaskOutput::Detections(d) => {
                check_boxes(&d.bboxes, &d.bboxes_normalized, &d.labels, image)
                    .map_err(TestCaseError::fail)?
            }
            TaskOutput::QuadDetections(q) => {
                check_boxes(&q.quad_boxes, &q.quad_boxes_normalized, &q.labels, image)
                    .map_err(TestCaseError::fail)?
            }
            TaskOutput::Segmentations(s) => {
                check_polygons(&s.polygons, &s.polygons_normalized, &s.labels, image)
                    .map_err(TestCaseError::fail)?
            }
            TaskOutput::OpenVocabularyDetections(o) => {
                prop_assert!(o.bboxes.is_empty() || o.polygons.is_empty());
                check_boxes(&o.bboxes, &o.bboxes_normalized, &o.bboxes_labels, image)
                    .map_err(TestCaseError::fail)?
                    + check_polygons(&o.polygons, &o.polygons_normalized, &o.polygons_labels, image)
                        .map_err(TestCaseError::fail)?
            }
        };
        let dropped = output.dropped();
        if kind == ParseKind::PureText {
            prop_assert_eq!(dropped.dropped_location_tokens, 0);
        } else {
            // Every location token of the cleaned text is used or counted, never both.
            let cleaned = text.replace("<s>", "").replace("</s>", "").replace("<pad>", "");
            let loc = Regex::new(r"<loc_\d+>").map_err(|e| TestCaseError::fail(e.to_string()))?;
            let total = loc.find_iter(&cleaned).count();
            prop_assert_eq!(used + dropped.dropped_location_tokens, total);
        }
        prop_assert_eq!(dropped.dropped_groups == 0, dropped.dropped_location_tokens == 0);
        prop_assert!(dropped.dropped_groups <= dropped.dropped_location_tokens);
        // Serialization never fails and keys the answer by its task.
        let keyed = serde_json::to_value(output.keyed("<TASK>"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(keyed.as_object().map(|o| o.len()), Some(1));
    }

    #[test]
    fn zero_sized_images_are_refused(text in decoder_text(), kind in kind(), side in 0_u32..3) {
        let image = ImageSize { width: side * 7, height: 0 };
        prop_assert!(post_process(&text, kind, image).is_err());
    }
}
