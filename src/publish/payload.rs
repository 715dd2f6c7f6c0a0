//! Wire types: what subscribers receive. The JSON Schemas under
//! `docs/schema/` are generated from these types (see [`result_schema`]), and a
//! test fails when the committed files are stale, so the schema consumers read
//! is the one the code writes.
//!
//! Bump the schema versions on any change a consumer could notice (a field
//! removed, renamed or retyped); adding an optional field is not such a change.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// `schema_version` of [`ResultPayload`].
pub const RESULT_SCHEMA_VERSION: u32 = 1;
/// `schema_version` of [`CameraStatusPayload`].
pub const STATUS_SCHEMA_VERSION: u32 = 1;

/// The analysed frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FrameInfo {
    /// Wall-clock capture time, milliseconds since the Unix epoch (UTC).
    pub captured_unix_ms: u64,
    /// Presentation timestamp of the frame in its stream, nanoseconds; null
    /// when the source has none.
    pub pts_ns: Option<u64>,
    /// Frame width in pixels (the coordinates in `result` are in this frame).
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
}

/// The model that produced the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Model directory name, e.g. `Florence-2-base-ft`.
    pub id: String,
    /// Precision or file variant, e.g. `fp32`, `fp16`, `q4`.
    pub precision: String,
    /// Backend that ran it, e.g. `onnxruntime-cpu`, `onnxruntime-cuda`, `tensorrt`.
    pub backend: String,
}

/// Time spent in each stage for this frame, milliseconds. Stages shared by a
/// batch report the batch's time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageLatencies {
    /// From capture until the batch started.
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub encoder_ms: f64,
    pub decode_ms: f64,
    pub postprocess_ms: f64,
}

/// One result: one analysed frame, one task. Published on
/// `{prefix}/{camera}/{task}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "florence-edge result")]
pub struct ResultPayload {
    /// Version of this payload's layout; see docs/MQTT.md.
    pub schema_version: u32,
    /// Node (florence-edge instance) id.
    pub node: String,
    /// This run of the node: a random UUID drawn each time florence-edge
    /// starts. `sequence` restarts at 1 with every run, so results are told
    /// apart by (node, run_id, camera, task, sequence).
    #[schemars(regex(pattern = RUN_ID_PATTERN), extend("format" = "uuid"))]
    pub run_id: String,
    /// The configuration revision the job was made under: it goes up by one
    /// with every change applied (a runtime command, a reload, a start with
    /// a changed file), so results of an old prompt can be told from those
    /// of the new one. Persisted in the state directory across restarts.
    pub revision: u64,
    /// Camera id.
    pub camera: String,
    /// Task token, e.g. `<OD>`.
    pub task: String,
    /// Text input of tasks that take one (phrase grounding, open-vocabulary
    /// detection, region tasks); null otherwise.
    pub text_input: Option<String>,
    /// Sequence number of this camera and task's results, counting up by one
    /// from 1 on each `{prefix}/{camera}/{task}` topic, so a subscriber sees a
    /// gap when a result is lost. It restarts at 1 when florence-edge starts
    /// (a new `run_id`).
    pub sequence: u64,
    pub frame: FrameInfo,
    pub model: ModelInfo,
    /// Frames in the batch this frame was analysed in.
    pub batch_size: u32,
    pub latency_ms: StageLatencies,
    /// The result in Hugging Face's shape: `{task token: value}`, with
    /// normalized coordinates beside the pixel ones.
    #[schemars(schema_with = "hugging_face_result_schema")]
    pub result: serde_json::Value,
}

/// State of a camera's pipeline: the ingest stage's own type.
pub use crate::ingest::CameraState;

/// What a camera status says of the camera: its pipeline's state while this
/// node runs it, or why it no longer does. On the wire it is one string:
/// `starting` … `failed`, `removed` or `offline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusState {
    Pipeline(CameraState),
    NotRunning(NotRunning),
}

/// Why a node no longer runs a camera; a status with one of these is the
/// camera's last until it runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotRunning {
    /// A configuration reload removed or disabled the camera.
    Removed,
    /// The node stopped (SIGTERM or a requested shutdown).
    Offline,
}

impl From<CameraState> for StatusState {
    fn from(state: CameraState) -> Self {
        StatusState::Pipeline(state)
    }
}

impl From<NotRunning> for StatusState {
    fn from(why: NotRunning) -> Self {
        StatusState::NotRunning(why)
    }
}

/// Lower-case, hyphenated UUID text, as `run_id` is written.
pub const RUN_ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// A new `run_id`: a random (version 4) UUID from the operating system's
/// random source.
pub fn new_run_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string())
}

/// The state of one camera. Published retained on `{prefix}/{camera}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "florence-edge camera status")]
pub struct CameraStatusPayload {
    /// Version of this payload's layout; see docs/MQTT.md.
    pub schema_version: u32,
    pub node: String,
    /// The run of the node that published this status (see the result's
    /// `run_id`); the counters below count from this run's start.
    #[schemars(regex(pattern = RUN_ID_PATTERN), extend("format" = "uuid"))]
    pub run_id: String,
    pub camera: String,
    pub state: StatusState,
    /// Frames per second decoded from the camera (recent average).
    pub fps_in: f64,
    /// Frames per second analysed (recent average).
    pub fps_out: f64,
    /// Frames decoded since the start.
    pub frames_in: u64,
    /// Frames decoded but not analysed (the scheduler keeps only the newest).
    pub frames_dropped: u64,
    /// Times the pipeline was rebuilt since the start.
    pub reconnects: u64,
    /// The last error, with any credentials removed; null when none.
    pub last_error: Option<String>,
    /// When this status was produced, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
}

fn hugging_face_result_schema(_: &mut SchemaGenerator) -> Schema {
    let coordinates = |n: u64, what: &str| {
        json_schema!({
            "description": what,
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}
        })
    };
    let polygons = |what: &str| {
        json_schema!({
            "description": what,
            "type": "array",
            "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
        })
    };
    let labels = |what: &str| json_schema!({"description": what, "type": "array", "items": {"type": "string"}});
    let count = |what: &str| json_schema!({"description": what, "type": "integer", "minimum": 0});
    json_schema!({
        "description": "The result in Hugging Face's shape: one key, the task token, whose value is text (caption and OCR tasks) or an object of regions. Pixel coordinates are in the frame (x1, y1, x2, y2 …); the *_normalized twins divide them by the frame's width and height.",
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "propertyNames": {"pattern": "^<[A-Z0-9_]+>$"},
        "additionalProperties": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "bboxes": coordinates(4, "Boxes [x1, y1, x2, y2] in pixels."),
                        "bboxes_normalized": coordinates(4, "Boxes in [0, 1]."),
                        "labels": labels("One label per box, quad or polygon instance."),
                        "bboxes_labels": labels("Labels of the boxes (open-vocabulary detection)."),
                        "quad_boxes": coordinates(8, "Quadrilaterals [x1, y1, … x4, y4] in pixels."),
                        "quad_boxes_normalized": coordinates(8, "Quadrilaterals in [0, 1]."),
                        "polygons": polygons("Per instance, its polygons as [x, y, x, y, …] in pixels."),
                        "polygons_normalized": polygons("Polygons in [0, 1]."),
                        "polygons_labels": labels("Labels of the polygons (open-vocabulary detection)."),
                        "dropped_groups": count("Label groups the reference parser would skip silently."),
                        "dropped_location_tokens": count("Location tokens that did not complete a box, quad or polygon.")
                    }
                }
            ]
        }
    })
}

/// JSON Schema of [`ResultPayload`] (what `docs/schema/result.schema.json` holds).
pub fn result_schema() -> serde_json::Value {
    schemars::schema_for!(ResultPayload).to_value()
}

/// JSON Schema of [`CameraStatusPayload`] (`docs/schema/camera_status.schema.json`).
pub fn camera_status_schema() -> serde_json::Value {
    schemars::schema_for!(CameraStatusPayload).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_state_is_lowercase_on_the_wire() {
        let json = serde_json::to_string(&CameraState::Reconnecting).expect("serialize");
        assert_eq!(json, "\"reconnecting\"");
    }

    #[test]
    fn status_states_are_one_string_each_way() {
        let cases = [
            (StatusState::from(CameraState::Streaming), "\"streaming\""),
            (StatusState::from(CameraState::Failed), "\"failed\""),
            (StatusState::from(NotRunning::Removed), "\"removed\""),
            (StatusState::from(NotRunning::Offline), "\"offline\""),
        ];
        for (state, wire) in cases {
            assert_eq!(serde_json::to_string(&state).expect("serialize"), wire);
            let back: StatusState = serde_json::from_str(wire).expect("deserialize");
            assert_eq!(back, state);
        }
        assert!(serde_json::from_str::<StatusState>("\"sleeping\"").is_err());
    }

    #[test]
    fn run_ids_are_random_v4_uuids_in_the_published_pattern() {
        let pattern = regex::Regex::new(RUN_ID_PATTERN).expect("pattern");
        let a = new_run_id().expect("random source");
        let b = new_run_id().expect("random source");
        assert!(pattern.is_match(&a), "{a}");
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4, "{a}");
    }
}
