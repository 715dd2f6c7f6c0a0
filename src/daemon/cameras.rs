//! From a configured camera to the settings the ingest stage runs.

use crate::config::CameraConfig;
use crate::ingest::{CameraSettings, PixelFormat};

/// The ingest settings for a configured camera: frames at the rate its
/// most frequent task needs (set when the file was compiled), RGB for the
/// CPU preprocessing.
pub fn camera_settings(camera: &CameraConfig) -> CameraSettings {
    CameraSettings {
        output: PixelFormat::Rgb,
        ..camera.stream.clone()
    }
}

/// The camera's tasks as operators read them, e.g. `<OD> every 500ms`.
pub fn task_summaries(camera: &CameraConfig) -> Vec<String> {
    camera
        .tasks
        .iter()
        .map(|t| {
            let mut s = t.task.token().to_string();
            if let Some(text) = t.argument.text() {
                s.push_str(&format!(" {text:?}"));
            }
            s.push_str(&format!(" every {}", humantime::format_duration(t.every)));
            s
        })
        .collect()
}
