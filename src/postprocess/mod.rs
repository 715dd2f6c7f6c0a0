//! Florence-2 post-processing: the decoder's text (special tokens kept, e.g.
//! `</s><s>car<loc_52><loc_333><loc_932><loc_774></s>`) becomes a result in Hugging Face's shape
//! — captions, boxes, OCR quads, grounded phrases, polygons — with pixel coordinates as floats
//! and normalized [0, 1] coordinates beside them.
//!
//! Parsing follows transformers 5's `Florence2PostProcessor` rule for rule (docs/POSTPROCESS.md
//! lists each rule and every deliberate difference); the coordinates follow Microsoft's original
//! processor, `(bin + 0.5) * size / 1000`, as floats. Whatever the reference silently skips is
//! counted (`dropped_groups`, `dropped_location_tokens`), so data loss is never silent.
//!
//! [`post_process`] returns the inner value (what Hugging Face puts under the task token);
//! [`TaskOutput::keyed`] wraps it as `{"<OD>": {...}}` for publishing.

pub mod loc_ids;
mod location;
mod parse;
#[cfg(test)]
mod proptests;
pub mod stitch;
mod stitch_stream;

use serde::{Deserialize, Serialize, Serializer};

pub use location::{
    dequantize, normalize, quantize, transformers_port_coordinate, LocationBins, LOCATION_BINS,
    MAX_BIN,
};
pub use parse::BANNED_GROUNDING_PHRASES;
pub use stitch::{
    location_grouping, post_process_ids, FallbackReason, GeneratedSequence, Route, RouteCounts,
    StitchError, Stitched,
};

use parse::{BoxInstance, BoxLabels, GroupSize, PolygonInstance, QuadInstance, TextAnswer};

/// Errors of post-processing and of region quantization.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PostprocessError {
    #[error(
        "image size {width}x{height} has a zero side; location bins need an image of at least 1x1 pixels"
    )]
    EmptyImage { width: u32, height: u32 },
    #[error(
        "region coordinate {name} = {value} is not a finite number; a pixel coordinate is required"
    )]
    NonFiniteCoordinate { name: &'static str, value: f64 },
    #[error(
        "region coordinate {name} = {value} lies outside the image; allowed is 0..={limit} pixels"
    )]
    OutsideImage {
        name: &'static str,
        value: f64,
        limit: u32,
    },
    #[error(
        "region is inverted: {low_name} = {low} is greater than {high_name} = {high}; a region needs x1 <= x2 and y1 <= y2"
    )]
    InvertedRegion {
        low_name: &'static str,
        low: f64,
        high_name: &'static str,
        high: f64,
    },
}

/// How a task's answer is parsed (the reference's `tasks_answer_post_processing_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseKind {
    /// Captions, `<OCR>`, region-to-text tasks: the text itself.
    PureText,
    /// `<OD>`, `<DENSE_REGION_CAPTION>`: a label, then one or more boxes.
    DescriptionWithBboxes,
    /// `<REGION_PROPOSAL>`: boxes without labels.
    Bboxes,
    /// `<CAPTION_TO_PHRASE_GROUNDING>`: phrases with boxes; pronouns and the like are filtered.
    PhraseGrounding,
    /// `<OCR_WITH_REGION>`: text lines with quadrilaterals.
    Ocr,
    /// `<REFERRING_EXPRESSION_SEGMENTATION>`, `<REGION_TO_SEGMENTATION>`: polygons.
    Polygons,
    /// `<OPEN_VOCABULARY_DETECTION>`: boxes, or polygons when the answer holds `<poly>`.
    DescriptionWithBboxesOrPolygons,
}

impl ParseKind {
    /// The reference's task table; an unknown task is parsed as pure text, as there.
    pub fn for_task(task_token: &str) -> Self {
        match task_token {
            "<OCR_WITH_REGION>" => Self::Ocr,
            "<OD>" | "<DENSE_REGION_CAPTION>" => Self::DescriptionWithBboxes,
            "<REGION_PROPOSAL>" => Self::Bboxes,
            "<CAPTION_TO_PHRASE_GROUNDING>" => Self::PhraseGrounding,
            "<REFERRING_EXPRESSION_SEGMENTATION>" | "<REGION_TO_SEGMENTATION>" => Self::Polygons,
            "<OPEN_VOCABULARY_DETECTION>" => Self::DescriptionWithBboxesOrPolygons,
            _ => Self::PureText,
        }
    }

    /// The reference's name of the parse type (also the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PureText => "pure_text",
            Self::DescriptionWithBboxes => "description_with_bboxes",
            Self::Bboxes => "bboxes",
            Self::PhraseGrounding => "phrase_grounding",
            Self::Ocr => "ocr",
            Self::Polygons => "polygons",
            Self::DescriptionWithBboxesOrPolygons => "description_with_bboxes_or_polygons",
        }
    }
}

/// Size of the analysed frame in pixels (the original image, not the 768×768 model input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    fn validate(self) -> Result<Self, PostprocessError> {
        if self.width == 0 || self.height == 0 {
            return Err(PostprocessError::EmptyImage {
                width: self.width,
                height: self.height,
            });
        }
        Ok(self)
    }
}

/// What the reference would have skipped without a word. A *location token* is one `<loc_N>` of
/// the text (after `<s>`, `</s>`, `<pad>` are removed) that did not become a coordinate; a
/// *group* is a run of such tokens standing next to each other, counted as ceil(n / 4) for
/// boxes, ceil(n / 8) for quads and 1 per run for polygons. Text answers never drop anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub dropped_groups: usize,
    pub dropped_location_tokens: usize,
}

/// Labelled boxes: `<OD>`, `<DENSE_REGION_CAPTION>`, `<REGION_PROPOSAL>` (labels are all empty)
/// and `<CAPTION_TO_PHRASE_GROUNDING>` (one label per box).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detections {
    /// [x1, y1, x2, y2] in pixels.
    pub bboxes: Vec<[f64; 4]>,
    /// The same divided by width / height.
    pub bboxes_normalized: Vec<[f64; 4]>,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub dropped: Dropped,
}

/// `<OCR_WITH_REGION>`: text lines with their quadrilaterals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuadDetections {
    /// [x1, y1, x2, y2, x3, y3, x4, y4] in pixels, in the model's point order.
    pub quad_boxes: Vec<[f64; 8]>,
    pub quad_boxes_normalized: Vec<[f64; 8]>,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub dropped: Dropped,
}

/// Segmentation: per instance, a list of polygons, each a flat [x1, y1, x2, y2, …] list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segmentations {
    pub polygons: Vec<Vec<Vec<f64>>>,
    pub polygons_normalized: Vec<Vec<Vec<f64>>>,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub dropped: Dropped,
}

/// `<OPEN_VOCABULARY_DETECTION>`: boxes or polygons, each with its own labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenVocabularyDetections {
    pub bboxes: Vec<[f64; 4]>,
    pub bboxes_normalized: Vec<[f64; 4]>,
    pub bboxes_labels: Vec<String>,
    pub polygons: Vec<Vec<Vec<f64>>>,
    pub polygons_normalized: Vec<Vec<Vec<f64>>>,
    pub polygons_labels: Vec<String>,
    #[serde(flatten)]
    pub dropped: Dropped,
}

/// A parsed answer: serializes to exactly what Hugging Face puts under the task token (a string
/// for text tasks, an object otherwise), plus the normalized and dropped fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskOutput {
    Text(String),
    Detections(Detections),
    QuadDetections(QuadDetections),
    Segmentations(Segmentations),
    OpenVocabularyDetections(OpenVocabularyDetections),
}

impl TaskOutput {
    /// What was dropped while parsing (all zero for text).
    pub fn dropped(&self) -> Dropped {
        match self {
            Self::Text(_) => Dropped::default(),
            Self::Detections(d) => d.dropped,
            Self::QuadDetections(q) => q.dropped,
            Self::Segmentations(s) => s.dropped,
            Self::OpenVocabularyDetections(o) => o.dropped,
        }
    }

    /// Wraps the answer under its task token, `{"<OD>": {...}}`, as Hugging Face returns it.
    pub fn keyed<'a>(&'a self, task_token: &'a str) -> KeyedTaskOutput<'a> {
        KeyedTaskOutput {
            task_token,
            output: self,
        }
    }
}

/// A [`TaskOutput`] under its task token; serializes as a one-entry map.
#[derive(Debug, Clone, Copy)]
pub struct KeyedTaskOutput<'a> {
    pub task_token: &'a str,
    pub output: &'a TaskOutput,
}

impl Serialize for KeyedTaskOutput<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.task_token, self.output)?;
        map.end()
    }
}

/// Parses decoder text for a task of the given kind. Never panics; the only error is an image
/// with a zero side. Malformed groups are dropped the way the reference drops them, plus any
/// box, quad or polygon that names a bin outside 0..=999 (the reference would publish a
/// coordinate outside the image), and everything dropped is counted in [`Dropped`].
pub fn post_process(
    text: &str,
    kind: ParseKind,
    image: ImageSize,
) -> Result<TaskOutput, PostprocessError> {
    let image = image.validate()?;
    Ok(assemble(kind, &mut TextAnswer::new(text), image))
}

/// A decoded answer as the reference's structured parsers read it. The text route reads it with
/// regular expressions ([`parse::TextAnswer`]), the id route from the ids and the location bins
/// (`stitch_stream::Stream`); [`assemble`] makes the [`TaskOutput`] from either, so which parser runs
/// for which kind, and how its findings become columns and dropped counts, is written once and
/// the two routes cannot drift apart.
trait StructuredAnswer {
    /// The decoded sequence with its special tokens, as the text route receives it.
    fn decoded_text(&self) -> &str;
    /// Whether the decoded text, before the clean-up, holds `<poly>`: the reference's test for
    /// reading an open-vocabulary answer as polygons rather than boxes.
    fn holds_poly(&self) -> bool;
    /// `parse::boxes`: labelled boxes (or unlabelled ones for region proposals).
    fn boxes(&mut self, labels: BoxLabels) -> Vec<BoxInstance>;
    /// `parse::quads`: OCR lines with their quadrilaterals.
    fn quads(&mut self) -> Vec<QuadInstance>;
    /// `parse::polygons`; `require_label` is true inside open-vocabulary detection.
    fn polygons(&mut self, require_label: bool) -> Vec<PolygonInstance>;
    /// The location tokens no parser used, grouped by `group`.
    fn dropped(&self, group: GroupSize) -> Dropped;
}

/// The task's output from an answer read by either route (see [`StructuredAnswer`]).
fn assemble(kind: ParseKind, answer: &mut impl StructuredAnswer, image: ImageSize) -> TaskOutput {
    match kind {
        ParseKind::PureText => TaskOutput::Text(parse::clean_pure_text(answer.decoded_text())),
        ParseKind::DescriptionWithBboxes | ParseKind::Bboxes | ParseKind::PhraseGrounding => {
            let labels = match kind {
                ParseKind::Bboxes => BoxLabels::Empty,
                ParseKind::PhraseGrounding => BoxLabels::RequiredNotBanned,
                _ => BoxLabels::Required,
            };
            let (bboxes, bboxes_normalized, labels) = box_columns(answer.boxes(labels), image);
            TaskOutput::Detections(Detections {
                bboxes,
                bboxes_normalized,
                labels,
                dropped: answer.dropped(GroupSize::Tokens(4)),
            })
        }
        ParseKind::Ocr => {
            let found = answer.quads();
            let mut quad_boxes = Vec::with_capacity(found.len());
            let mut quad_boxes_normalized = Vec::with_capacity(found.len());
            let mut labels = Vec::with_capacity(found.len());
            for quad in found {
                quad_boxes.push(pixels(quad.bins, image));
                quad_boxes_normalized.push(quad.bins.map(normalize));
                labels.push(quad.label);
            }
            TaskOutput::QuadDetections(QuadDetections {
                quad_boxes,
                quad_boxes_normalized,
                labels,
                dropped: answer.dropped(GroupSize::Tokens(8)),
            })
        }
        ParseKind::Polygons => {
            let (polygons, polygons_normalized, labels) =
                polygon_columns(answer.polygons(false), image);
            TaskOutput::Segmentations(Segmentations {
                polygons,
                polygons_normalized,
                labels,
                dropped: answer.dropped(GroupSize::WholeRun),
            })
        }
        ParseKind::DescriptionWithBboxesOrPolygons if answer.holds_poly() => {
            let (polygons, polygons_normalized, polygons_labels) =
                polygon_columns(answer.polygons(true), image);
            TaskOutput::OpenVocabularyDetections(OpenVocabularyDetections {
                bboxes: Vec::new(),
                bboxes_normalized: Vec::new(),
                bboxes_labels: Vec::new(),
                polygons,
                polygons_normalized,
                polygons_labels,
                dropped: answer.dropped(GroupSize::WholeRun),
            })
        }
        ParseKind::DescriptionWithBboxesOrPolygons => {
            let (bboxes, bboxes_normalized, bboxes_labels) =
                box_columns(answer.boxes(BoxLabels::Required), image);
            TaskOutput::OpenVocabularyDetections(OpenVocabularyDetections {
                bboxes,
                bboxes_normalized,
                bboxes_labels,
                polygons: Vec::new(),
                polygons_normalized: Vec::new(),
                polygons_labels: Vec::new(),
                dropped: answer.dropped(GroupSize::Tokens(4)),
            })
        }
    }
}

/// Pixels of flat x, y, x, y, … bins.
fn pixels<const N: usize>(bins: [u32; N], image: ImageSize) -> [f64; N] {
    let mut out = [0.0; N];
    for (k, (value, bin)) in out.iter_mut().zip(bins).enumerate() {
        let size = if k % 2 == 0 {
            image.width
        } else {
            image.height
        };
        *value = dequantize(bin, size);
    }
    out
}

type BoxColumns = (Vec<[f64; 4]>, Vec<[f64; 4]>, Vec<String>);

fn box_columns(found: Vec<BoxInstance>, image: ImageSize) -> BoxColumns {
    let mut bboxes = Vec::with_capacity(found.len());
    let mut normalized = Vec::with_capacity(found.len());
    let mut labels = Vec::with_capacity(found.len());
    for instance in found {
        bboxes.push(pixels(instance.bins, image));
        normalized.push(instance.bins.map(normalize));
        labels.push(instance.label);
    }
    (bboxes, normalized, labels)
}

type PolygonColumns = (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>, Vec<String>);

fn polygon_columns(found: Vec<PolygonInstance>, image: ImageSize) -> PolygonColumns {
    let mut polygons = Vec::with_capacity(found.len());
    let mut normalized = Vec::with_capacity(found.len());
    let mut labels = Vec::with_capacity(found.len());
    for instance in found {
        polygons.push(
            instance
                .polygons
                .iter()
                .map(|polygon| {
                    polygon
                        .iter()
                        .enumerate()
                        .map(|(k, &bin)| {
                            let size = if k % 2 == 0 {
                                image.width
                            } else {
                                image.height
                            };
                            dequantize(bin, size)
                        })
                        .collect()
                })
                .collect(),
        );
        normalized.push(
            instance
                .polygons
                .iter()
                .map(|polygon| polygon.iter().map(|&bin| normalize(bin)).collect())
                .collect(),
        );
        labels.push(instance.label);
    }
    (polygons, normalized, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VGA: ImageSize = ImageSize {
        width: 640,
        height: 480,
    };

    fn json(task: &str, text: &str, image: ImageSize) -> serde_json::Value {
        let output = post_process(text, ParseKind::for_task(task), image).expect("valid image");
        serde_json::to_value(output.keyed(task)).expect("serializable")
    }

    #[test]
    fn od_has_the_hugging_face_shape() {
        let value = json(
            "<OD>",
            "</s><s>car<loc_52><loc_333><loc_932><loc_774>door<loc_710><loc_276><loc_908><loc_537></s>",
            VGA,
        );
        let od = &value["<OD>"];
        assert_eq!(od["labels"], serde_json::json!(["car", "door"]));
        let first = od["bboxes"][0].as_array().expect("box");
        let expected = [33.6, 160.08, 596.8, 371.76];
        for (got, want) in first.iter().zip(expected) {
            assert!((got.as_f64().expect("number") - want).abs() < 1e-9);
        }
        assert_eq!(od["bboxes_normalized"][0][0], serde_json::json!(0.0525));
        assert_eq!(od["dropped_groups"], 0);
        assert_eq!(od["dropped_location_tokens"], 0);
    }

    #[test]
    fn caption_is_a_plain_string_under_the_task() {
        let value = json("<CAPTION>", "</s><s> A green car.</s>", VGA);
        assert_eq!(value, serde_json::json!({"<CAPTION>": "A green car."}));
    }

    #[test]
    fn segmentation_and_ocr_shapes() {
        let seg = json(
            "<REFERRING_EXPRESSION_SEGMENTATION>",
            "</s><s><loc_0><loc_0><loc_999><loc_0><loc_999><loc_999></s>",
            ImageSize {
                width: 1000,
                height: 2000,
            },
        );
        assert_eq!(
            seg["<REFERRING_EXPRESSION_SEGMENTATION>"]["polygons"],
            serde_json::json!([[[0.5, 1.0, 999.5, 1.0, 999.5, 1999.0]]])
        );
        assert_eq!(
            seg["<REFERRING_EXPRESSION_SEGMENTATION>"]["labels"],
            serde_json::json!([""])
        );
        let ocr = json(
            "<OCR_WITH_REGION>",
            "</s><s>STOP<loc_0><loc_0><loc_9><loc_0><loc_9><loc_9><loc_0><loc_9></s>",
            ImageSize {
                width: 1000,
                height: 1000,
            },
        );
        assert_eq!(
            ocr["<OCR_WITH_REGION>"]["quad_boxes"],
            serde_json::json!([[0.5, 0.5, 9.5, 0.5, 9.5, 9.5, 0.5, 9.5]])
        );
        assert_eq!(
            ocr["<OCR_WITH_REGION>"]["labels"],
            serde_json::json!(["STOP"])
        );
    }

    #[test]
    fn open_vocabulary_names_both_label_lists() {
        let value = json(
            "<OPEN_VOCABULARY_DETECTION>",
            "</s><s>helmet<loc_1><loc_2><loc_3><loc_4></s>",
            VGA,
        );
        let ovd = &value["<OPEN_VOCABULARY_DETECTION>"];
        assert_eq!(ovd["bboxes_labels"], serde_json::json!(["helmet"]));
        assert_eq!(ovd["polygons"], serde_json::json!([]));
        assert_eq!(ovd["polygons_labels"], serde_json::json!([]));
    }

    #[test]
    fn truncated_output_is_counted() {
        let output = post_process(
            "</s><s>car<loc_52><loc_333><loc_932><loc_774>door<loc_710><loc_276>",
            ParseKind::DescriptionWithBboxes,
            VGA,
        )
        .expect("valid image");
        assert_eq!(
            output.dropped(),
            Dropped {
                dropped_groups: 1,
                dropped_location_tokens: 2
            }
        );
    }

    #[test]
    fn empty_image_is_an_error_not_a_panic() {
        let err = post_process(
            "</s><s>x</s>",
            ParseKind::PureText,
            ImageSize {
                width: 0,
                height: 0,
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            PostprocessError::EmptyImage {
                width: 0,
                height: 0
            }
        );
    }

    #[test]
    fn task_table_matches_the_reference() {
        assert_eq!(
            ParseKind::for_task("<OD>"),
            ParseKind::DescriptionWithBboxes
        );
        assert_eq!(ParseKind::for_task("<REGION_PROPOSAL>"), ParseKind::Bboxes);
        assert_eq!(
            ParseKind::for_task("<REGION_TO_SEGMENTATION>"),
            ParseKind::Polygons
        );
        assert_eq!(ParseKind::for_task("<REGION_TO_OCR>"), ParseKind::PureText);
        assert_eq!(ParseKind::for_task("<NOT_A_TASK>"), ParseKind::PureText);
        for kind in [
            ParseKind::PureText,
            ParseKind::DescriptionWithBboxes,
            ParseKind::Bboxes,
            ParseKind::PhraseGrounding,
            ParseKind::Ocr,
            ParseKind::Polygons,
            ParseKind::DescriptionWithBboxesOrPolygons,
        ] {
            assert_eq!(
                serde_json::to_value(kind).expect("serializable"),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(
            ParseKind::DescriptionWithBboxesOrPolygons.as_str(),
            "description_with_bboxes_or_polygons"
        );
    }
}
