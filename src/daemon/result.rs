//! One analysed frame and task, as the daemon hands it on, and where it goes.

use std::io::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::florence2::engine::TaskResult;
use crate::ingest::Frame;
use crate::schedule::Job;

/// Version of the result payload's shape.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct ModelMeta {
    /// The model directory's name, e.g. `Florence-2-base-ft`.
    pub id: String,
    pub variant: String,
    pub backend: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameMeta {
    /// Per-camera frame sequence number from ingest.
    pub seq: u64,
    /// Stream time in milliseconds, when the stream has one.
    pub pts_ms: Option<f64>,
    /// Wall-clock capture time, milliseconds since the Unix epoch.
    pub captured_at_ms: u64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    /// From the task being due to the batch reaching the model.
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub encoder_ms: f64,
    pub decode_ms: f64,
    pub postprocess_ms: f64,
    /// From capture to this result.
    pub capture_to_result_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnalysisResult {
    pub schema_version: u32,
    pub node: String,
    pub camera: String,
    /// Task token, e.g. `<OD>`.
    pub task: String,
    /// Lower snake case, as in the MQTT topic, e.g. `od`.
    pub task_name: String,
    pub text_input: Option<String>,
    /// Per camera, counts results from 1; a gap means a result was lost.
    pub seq: u64,
    pub frame: FrameMeta,
    /// Milliseconds since the Unix epoch when the result was made.
    pub produced_at_ms: u64,
    pub model: ModelMeta,
    pub batch_size: usize,
    pub latency_ms: Latencies,
    /// Hugging Face's shape under the task token, plus normalized
    /// coordinates.
    pub result: serde_json::Value,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AnalysisResult {
    pub fn new(
        node: &str,
        model: &ModelMeta,
        job: &Job<Arc<Frame>>,
        r: TaskResult,
        seq: u64,
        dispatched: Instant,
    ) -> Self {
        let f = &job.frame;
        let now = SystemTime::now();
        let capture_to_result_ms = now
            .duration_since(f.captured_at)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        AnalysisResult {
            schema_version: SCHEMA_VERSION,
            node: node.to_string(),
            camera: job.key.camera.to_string(),
            task: r.task.clone(),
            task_name: job.key.task.topic_name(),
            text_input: job
                .key
                .argument
                .text()
                .map(str::to_string)
                .or(r.text_input.clone()),
            seq,
            frame: FrameMeta {
                seq: f.seq,
                pts_ms: f.pts.map(|p| p.as_secs_f64() * 1e3),
                captured_at_ms: unix_ms(f.captured_at),
                width: f.width,
                height: f.height,
            },
            produced_at_ms: unix_ms(now),
            model: model.clone(),
            batch_size: r.batch_size,
            latency_ms: Latencies {
                queue_ms: dispatched.saturating_duration_since(job.due).as_secs_f64() * 1e3,
                preprocess_ms: r.timings.preprocess_ms,
                vision_ms: r.timings.model.vision_ms,
                encoder_ms: r.timings.model.encoder_ms,
                decode_ms: r.timings.model.decode_ms,
                postprocess_ms: r.timings.postprocess_ms,
                capture_to_result_ms,
            },
            result: r.result,
        }
    }
}

/// Where results go. Called on the inference thread: implementations must
/// not block (queue and count instead).
pub trait ResultSink: Send {
    fn result(&mut self, result: &AnalysisResult);
    /// Flush what is queued; called once at shutdown.
    fn close(&mut self) {}
}

/// JSON lines on stdout, for debugging and for piping into other tools.
pub struct StdoutSink;

impl ResultSink for StdoutSink {
    fn result(&mut self, result: &AnalysisResult) {
        match serde_json::to_string(result) {
            Ok(line) => {
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    tracing::error!(camera = %result.camera, task = %result.task, "Writing a result to stdout failed; it is lost.");
                }
            }
            Err(e) => tracing::error!(error = %e, "Serializing a result failed; it is lost."),
        }
    }
}

/// Several sinks at once.
pub struct FanOut(pub Vec<Box<dyn ResultSink>>);

impl ResultSink for FanOut {
    fn result(&mut self, result: &AnalysisResult) {
        for s in &mut self.0 {
            s.result(result);
        }
    }
    fn close(&mut self) {
        for s in &mut self.0 {
            s.close();
        }
    }
}
