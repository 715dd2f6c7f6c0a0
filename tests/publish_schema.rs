//! The JSON Schemas under docs/schema/ are generated from the wire types; this
//! test regenerates them and fails when the committed files are stale
//! (`FLORENCE_EDGE_UPDATE_SCHEMAS=1 cargo test --test publish_schema` rewrites
//! them), and checks that real payloads validate and broken ones do not.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mosquitto.rs"]
mod mosquitto;

use florence_edge::publish::payload::{camera_status_schema, result_schema};
use florence_edge::publish::{CameraState, CameraStatusPayload, STATUS_SCHEMA_VERSION};
use serde_json::json;

fn schema_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema")
}

fn check_committed(file: &str, generated: &serde_json::Value) {
    let path = schema_dir().join(file);
    let text = serde_json::to_string_pretty(generated).expect("pretty") + "\n";
    if std::env::var_os("FLORENCE_EDGE_UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(schema_dir()).expect("mkdir docs/schema");
        std::fs::write(&path, &text).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is stale; regenerate with FLORENCE_EDGE_UPDATE_SCHEMAS=1 cargo test --test publish_schema",
        path.display()
    );
}

#[test]
fn committed_schemas_match_the_rust_types() {
    check_committed("result.schema.json", &result_schema());
    check_committed("camera_status.schema.json", &camera_status_schema());
}

fn validator(schema: &serde_json::Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("the schema itself is valid")
}

pub fn status() -> CameraStatusPayload {
    CameraStatusPayload {
        schema_version: STATUS_SCHEMA_VERSION,
        node: "edge-01".into(),
        run_id: mosquitto::TEST_RUN_ID.into(),
        camera: "front-door".into(),
        state: CameraState::Streaming.into(),
        fps_in: 25.0,
        fps_out: 2.0,
        frames_in: 1000,
        frames_dropped: 920,
        reconnects: 1,
        last_error: None,
        updated_unix_ms: 1_764_000_000_000,
    }
}

#[test]
fn every_result_shape_validates_and_broken_ones_do_not() {
    let schema = validator(&result_schema());
    let base = serde_json::to_value(mosquitto::od_result("edge-01", "cam", 7, 2)).expect("json");
    let shapes = [
        json!({"<OD>": {"bboxes": [[1.5, 2.5, 30.5, 40.5]], "bboxes_normalized": [[0.1, 0.2, 0.3, 0.4]], "labels": ["car"], "dropped_groups": 0, "dropped_location_tokens": 0}}),
        json!({"<CAPTION>": "A green car parked in front of a door."}),
        json!({"<OCR_WITH_REGION>": {"quad_boxes": [[0.5, 0.5, 9.5, 0.5, 9.5, 9.5, 0.5, 9.5]], "quad_boxes_normalized": [[0.0005, 0.0005, 0.0095, 0.0005, 0.0095, 0.0095, 0.0005, 0.0095]], "labels": ["STOP"], "dropped_groups": 0, "dropped_location_tokens": 0}}),
        json!({"<REFERRING_EXPRESSION_SEGMENTATION>": {"polygons": [[[0.5, 1.0, 999.5, 1.0, 999.5, 1999.0]]], "polygons_normalized": [[[0.0005, 0.0005, 0.9995, 0.0005, 0.9995, 0.9995]]], "labels": [""], "dropped_groups": 0, "dropped_location_tokens": 0}}),
        json!({"<OPEN_VOCABULARY_DETECTION>": {"bboxes": [], "bboxes_normalized": [], "bboxes_labels": [], "polygons": [], "polygons_normalized": [], "polygons_labels": [], "dropped_groups": 0, "dropped_location_tokens": 1}}),
    ];
    assert!(
        schema.is_valid(&base),
        "{:?}",
        schema
            .iter_errors(&base)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    for shape in shapes {
        let mut payload = base.clone();
        payload["result"] = shape.clone();
        assert!(schema.is_valid(&payload), "{shape}");
    }
    type Breakage = Box<dyn Fn(&mut serde_json::Value)>;
    let broken: Vec<(&str, Breakage)> = vec![
        (
            "missing sequence",
            Box::new(|p| {
                p.as_object_mut().expect("object").remove("sequence");
            }),
        ),
        ("negative sequence", Box::new(|p| p["sequence"] = json!(-1))),
        (
            "missing run_id",
            Box::new(|p| {
                p.as_object_mut().expect("object").remove("run_id");
            }),
        ),
        (
            "run_id not a UUID",
            Box::new(|p| p["run_id"] = json!("run-7")),
        ),
        ("unknown field", Box::new(|p| p["extra"] = json!(1))),
        (
            "two task keys",
            Box::new(|p| p["result"] = json!({"<OD>": "a", "<CAPTION>": "b"})),
        ),
        (
            "lower-case task key",
            Box::new(|p| p["result"] = json!({"od": "a"})),
        ),
        (
            "box with 3 numbers",
            Box::new(|p| p["result"] = json!({"<OD>": {"bboxes": [[1, 2, 3]]}})),
        ),
        (
            "unknown result key",
            Box::new(|p| p["result"] = json!({"<OD>": {"boxes": []}})),
        ),
        (
            "frame width as text",
            Box::new(|p| p["frame"]["width"] = json!("1280")),
        ),
    ];
    for (what, breaks) in broken {
        let mut payload = base.clone();
        breaks(&mut payload);
        assert!(!schema.is_valid(&payload), "{what} validated");
    }
}

#[test]
fn camera_status_validates_and_states_are_enumerated() {
    let schema = validator(&camera_status_schema());
    let mut payload = serde_json::to_value(status()).expect("json");
    assert!(schema.is_valid(&payload));
    payload["last_error"] = json!("rtsp://***@192.0.2.10/stream timed out");
    assert!(schema.is_valid(&payload));
    // A camera this node no longer runs: removed by a reload, or the node stopped.
    for state in ["removed", "offline"] {
        payload["state"] = json!(state);
        assert!(schema.is_valid(&payload), "{state}");
    }
    payload["state"] = json!("sleeping");
    assert!(!schema.is_valid(&payload));
    payload["state"] = json!("streaming");
    payload["run_id"] = json!("not-a-uuid");
    assert!(!schema.is_valid(&payload));
}
