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

/// The id route (`stitch::post_process_ids`) against the text route on random token sequences:
/// a toy vocabulary (id → piece) whose pieces can spell every structure the parsers know, and
/// `<loc_0>`…`<loc_999>` contiguous from a random id, so no tokenizer file is needed.
mod ids_route {
    use proptest::prelude::*;

    use super::super::loc_ids::{location_bin, parse_location_tokens, SequenceInfo, TokenBatch};
    use super::super::stitch::{location_grouping, post_process_ids, GeneratedSequence, Route};
    use super::super::{post_process, ImageSize, ParseKind};
    use super::{image, kind};

    const BOS: i64 = 0;
    const PAD: i64 = 1;
    const EOS: i64 = 2;

    /// Pieces that cannot spell `<loc_N>`, whatever their order. Ids are the indices.
    const SAFE: &[&str] = &[
        "<s>",
        "<pad>",
        "</s>",
        "<sep>",
        "<poly>",
        "</poly>",
        "<od>",
        "</od>",
        "<box>",
        "</box>",
        "<bbox>",
        "</bbox>",
        "<ground>",
        "<obj>",
        "<",
        ">",
        "/",
        "<se",
        "p>",
        "<po",
        "ly>",
        "<pa",
        "d>",
        "s>",
        "\n",
        " ",
        "  ",
        "\t",
        "\u{1c}",
        "\u{a0}",
        "a",
        "car",
        " red",
        " car",
        "it",
        " it",
        "the image",
        "I",
        "12",
        "5>",
        " .",
        "'s",
        "é",
        "日本",
        "\u{663}",
        "x\ny",
        "poly>",
        "</s><s>",
    ];
    /// Pieces that can spell a location token out of text (the id route must fall back).
    const SPELLING: &[&str] = &["loc_", "<loc_", "<lo", "c_", "<loc_7>", "<loc_0042>"];

    fn piece(id: i64) -> Option<&'static str> {
        let index = usize::try_from(id).ok()?;
        SAFE.get(index)
            .or_else(|| SPELLING.get(index.checked_sub(SAFE.len())?))
            .copied()
    }

    /// The toy tokenizer: pieces concatenated, `<loc_N>` for location ids.
    fn decode(ids: &[i64], loc0: i64) -> Result<String, String> {
        let mut text = String::new();
        for &id in ids {
            match (location_bin(id, loc0), piece(id)) {
                (Some(bin), _) => text.push_str(&format!("<loc_{bin}>")),
                (None, Some(p)) => text.push_str(p),
                (None, None) => return Err(format!("id {id} is not in the toy vocabulary")),
            }
        }
        Ok(text)
    }

    #[derive(Debug, Clone)]
    enum Chunk {
        Word(i64),
        Locations(Vec<i64>),
    }

    fn chunk(words: usize) -> impl Strategy<Value = Chunk> {
        let words = i64::try_from(words).unwrap_or(i64::MAX);
        prop_oneof![
            3 => (0..words).prop_map(Chunk::Word),
            2 => prop::collection::vec(0_i64..1000, 1..13).prop_map(Chunk::Locations),
        ]
    }

    /// (ids, loc0): decoder start and BOS, random chunks, then maybe EOS and padding.
    fn sequence(words: usize) -> impl Strategy<Value = (Vec<i64>, i64)> {
        let min_loc0 = i64::try_from(SAFE.len() + SPELLING.len()).unwrap_or(i64::MAX);
        (
            prop::collection::vec(chunk(words), 0..24),
            min_loc0..60_000,
            any::<bool>(),
            0_usize..4,
        )
            .prop_map(|(chunks, loc0, eos, pads)| {
                let mut ids = vec![EOS, BOS];
                for chunk in chunks {
                    match chunk {
                        Chunk::Word(id) => ids.push(id),
                        Chunk::Locations(bins) => ids.extend(bins.iter().map(|b| loc0 + b)),
                    }
                }
                if eos {
                    ids.push(EOS);
                }
                ids.extend(std::iter::repeat_n(PAD, pads));
                (ids, loc0)
            })
    }

    /// Runs both routes (the parse padded by `extra` positions, as in a batch) and compares.
    fn both_routes(
        ids: &[i64],
        loc0: i64,
        kind: ParseKind,
        image: ImageSize,
        extra: usize,
    ) -> Result<Route, TestCaseError> {
        let text = decode(ids, loc0).map_err(TestCaseError::fail)?;
        let expected =
            post_process(&text, kind, image).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let max_len = ids.len() + extra;
        let mut padded = ids.to_vec();
        padded.resize(max_len, PAD);
        #[allow(clippy::cast_precision_loss)]
        let info = SequenceInfo::new(
            image.width as f32,
            image.height as f32,
            u32::try_from(ids.len()).map_err(|e| TestCaseError::fail(e.to_string()))?,
            location_grouping(kind),
        );
        let parse = parse_location_tokens(
            &TokenBatch {
                ids: &padded,
                max_len,
                sequences: &[info],
            },
            loc0,
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let locations = parse
            .sequence(0)
            .ok_or_else(|| TestCaseError::fail("the parse has no sequence 0"))?;
        let stitched = post_process_ids(
            GeneratedSequence {
                index: 0,
                ids,
                locations,
            },
            loc0,
            kind,
            image,
            |span| decode(span, loc0),
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&stitched.output, &expected, "text {:?}", text);
        prop_assert_eq!(&stitched.decoded_text, &text);
        Ok(stitched.route)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any mix, including text that spells location tokens: equal output on either route,
        /// and the text route only when a span between location tokens spells one.
        #[test]
        fn ids_route_equals_text_route(
            (ids, loc0) in sequence(SAFE.len() + SPELLING.len()),
            kind in kind(),
            image in image(),
            extra in 0_usize..3,
        ) {
            let route = both_routes(&ids, loc0, kind, image, extra)?;
            let spells = ids.iter().any(|&id| {
                usize::try_from(id).is_ok_and(|i| (SAFE.len()..SAFE.len() + SPELLING.len()).contains(&i))
            });
            if !spells {
                prop_assert_eq!(route, Route::Ids);
            }
            if kind == ParseKind::PureText {
                prop_assert_eq!(route, Route::Ids);
            }
        }

        /// Without pieces that can spell a location token, every sequence takes the id route.
        #[test]
        fn safe_vocabulary_always_takes_the_ids_route(
            (ids, loc0) in sequence(SAFE.len()),
            kind in kind(),
            image in image(),
            extra in 0_usize..3,
        ) {
            prop_assert_eq!(both_routes(&ids, loc0, kind, image, extra)?, Route::Ids);
        }
    }
}
