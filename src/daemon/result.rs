//! Results and camera statuses as the daemon hands them on (the publisher's
//! wire types, whose JSON Schemas are in docs/schema/), and where they go.

use std::io::Write;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ingest::{CameraStatus, Frame};
use crate::pipeline::TaskResult;
use crate::publish::{
    self, CameraStatusPayload, MqttSettings, NotRunning, PublishError, Publisher, ResultPayload,
    RESULT_SCHEMA_VERSION, STATUS_SCHEMA_VERSION,
};
use crate::schedule::Job;

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The published result for one job. `sequence` counts this camera and
/// task's results from 1 within the run `run_id`, so a subscriber of one
/// topic sees a gap when a result is lost.
pub fn result_payload(
    node: &str,
    run_id: &str,
    model: &publish::ModelInfo,
    job: &Job<super::JobFrame>,
    r: TaskResult,
    sequence: u64,
    dispatched: Instant,
) -> ResultPayload {
    let f = &job.frame;
    ResultPayload {
        schema_version: RESULT_SCHEMA_VERSION,
        node: node.to_string(),
        run_id: run_id.to_string(),
        revision: job.frame.revision,
        camera: job.key.camera.to_string(),
        task: r.task.clone(),
        text_input: r.text_input.clone(),
        sequence,
        frame: publish::FrameInfo {
            captured_unix_ms: unix_ms(f.captured_at),
            pts_ns: f.pts.map(|p| p.as_nanos() as u64),
            width: f.width,
            height: f.height,
        },
        model: model.clone(),
        batch_size: r.batch_size as u32,
        latency_ms: publish::StageLatencies {
            queue_ms: dispatched.saturating_duration_since(job.due).as_secs_f64() * 1e3,
            preprocess_ms: r.timings.preprocess_ms,
            vision_ms: r.timings.model.vision_ms,
            encoder_ms: r.timings.model.encoder_ms,
            decode_ms: r.timings.model.decode_ms,
            postprocess_ms: r.timings.postprocess_ms,
        },
        result: r.result,
    }
}

/// The published status of a camera.
pub fn status_payload(node: &str, run_id: &str, s: &CameraStatus) -> CameraStatusPayload {
    CameraStatusPayload {
        schema_version: STATUS_SCHEMA_VERSION,
        node: node.to_string(),
        run_id: run_id.to_string(),
        camera: s.camera.clone(),
        state: s.state.into(),
        fps_in: s.fps_in,
        fps_out: s.fps_out,
        frames_in: s.frames_in,
        frames_dropped: s.frames_dropped,
        reconnects: s.reconnects,
        last_error: s.last_error.clone(),
        updated_unix_ms: unix_ms(SystemTime::now()),
    }
}

/// The last status of a camera this node no longer runs (`why`): its last
/// counters and error, no frame rate.
pub fn final_status_payload(
    node: &str,
    run_id: &str,
    s: &CameraStatus,
    why: NotRunning,
) -> CameraStatusPayload {
    CameraStatusPayload {
        state: why.into(),
        fps_in: 0.0,
        fps_out: 0.0,
        ..status_payload(node, run_id, s)
    }
}

/// Where results and statuses go. Called from the daemon's threads:
/// implementations must not block (queue and count instead).
pub trait ResultSink: Send {
    /// The retained state of one task (`{prefix}/{camera}/{name}/state`);
    /// `None` clears it (the task or camera is gone). Sinks without
    /// retained topics ignore it.
    fn task_state(
        &mut self,
        _camera: &str,
        _name: &str,
        _state: Option<&crate::control::TaskState>,
    ) {
    }

    fn result(&mut self, result: &ResultPayload);
    /// A result with the frame it was computed on (for snapshots). The
    /// daemon calls this one; sinks that need no frame keep the default.
    fn result_with_frame(&mut self, result: &ResultPayload, _frame: &Arc<Frame>) {
        self.result(result);
    }
    fn camera_status(&mut self, _status: &CameraStatusPayload) {}
    /// Flush what is queued; called once at shutdown.
    fn close(&mut self) {}
    /// The MQTT publisher's counters, for the metrics endpoint.
    fn publisher_stats(&self) -> Option<Arc<crate::publish::PublisherStats>> {
        None
    }
    /// The MQTT publisher, for runtime control (command topics, retained
    /// task states, Home Assistant discovery). Callers keep a `Weak` of it:
    /// the sink stops it at shutdown.
    fn publisher(&self) -> Option<Arc<Publisher>> {
        None
    }
}

/// JSON lines on stdout, for debugging and for piping into other tools.
pub struct StdoutSink;

impl ResultSink for StdoutSink {
    fn result(&mut self, result: &ResultPayload) {
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
    fn publisher_stats(&self) -> Option<Arc<crate::publish::PublisherStats>> {
        self.0.iter().find_map(|s| s.publisher_stats())
    }
    fn publisher(&self) -> Option<Arc<Publisher>> {
        self.0.iter().find_map(|s| s.publisher())
    }
    fn result(&mut self, result: &ResultPayload) {
        for s in &mut self.0 {
            s.result(result);
        }
    }
    fn result_with_frame(&mut self, result: &ResultPayload, frame: &Arc<Frame>) {
        for s in &mut self.0 {
            s.result_with_frame(result, frame);
        }
    }
    fn camera_status(&mut self, status: &CameraStatusPayload) {
        for s in &mut self.0 {
            s.camera_status(status);
        }
    }
    fn close(&mut self) {
        for s in &mut self.0 {
            s.close();
        }
    }
}

/// How long shutdown gives the publisher to deliver what is queued before
/// the rest stays in the spool.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(5);

/// Results and statuses to MQTT (src/publish). A full queue is counted by
/// the publisher and logged here; nothing blocks.
///
/// Snapshots (`mqtt.snapshots.enabled`): when the rate limit lets one
/// (camera, task) through, the frame and result go to a snapshot thread
/// that draws and encodes the JPEG, so the inference thread never waits on
/// an encoder. One render waits at most; a snapshot that finds the thread
/// busy is skipped and counted like a rate-limited one.
pub struct MqttSink {
    publisher: Option<Arc<Publisher>>,
    snapshots: Option<SnapshotWorker>,
}

struct SnapshotJob {
    camera: String,
    task: String,
    result: serde_json::Value,
    frame: Arc<Frame>,
}

struct SnapshotWorker {
    tx: Option<SyncSender<SnapshotJob>>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWorker {
    fn start(publisher: Arc<Publisher>, jpeg_quality: u8) -> Result<SnapshotWorker, String> {
        let (tx, rx) = mpsc::sync_channel::<SnapshotJob>(1);
        let thread = std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || {
                for job in rx {
                    let jpeg = frame_image(&job.frame).and_then(|img| {
                        publish::render_snapshot(&img, &job.result, jpeg_quality)
                            .map_err(|e| e.to_string())
                    });
                    match jpeg {
                        Ok(jpeg) => {
                            if let Err(e) = publisher.send_snapshot(&job.camera, &job.task, jpeg) {
                                tracing::warn!(camera = %job.camera, task = %job.task, error = %e, "Snapshot not published.");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(camera = %job.camera, task = %job.task, error = %e, "Snapshot not rendered.")
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the snapshot thread: {e}"))?;
        Ok(SnapshotWorker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A packed RGB copy of a frame for drawing on.
fn frame_image(frame: &Frame) -> Result<image::RgbImage, String> {
    if frame.format != crate::ingest::PixelFormat::Rgb {
        return Err(format!(
            "snapshots need RGB frames, this one is {:?}",
            frame.format
        ));
    }
    let row = frame.width as usize * 3;
    let mut packed = Vec::with_capacity(row * frame.height as usize);
    for y in 0..frame.height as usize {
        let start = y * frame.stride;
        let line = frame
            .data
            .get(start..start + row)
            .ok_or_else(|| format!("frame data ends before row {y}"))?;
        packed.extend_from_slice(line);
    }
    image::RgbImage::from_raw(frame.width, frame.height, packed)
        .ok_or_else(|| "frame size does not match its data".to_string())
}

impl MqttSink {
    pub fn start(settings: &MqttSettings, node: &str) -> Result<Self, String> {
        let config = settings
            .validate(node)
            .map_err(|p| publish::PublishError::Settings(p).to_string())?;
        MqttSink::start_validated(config)
    }

    /// From settings checked already (by `config::plan`).
    pub fn start_validated(config: publish::PublisherConfig) -> Result<Self, String> {
        let snapshot = config.settings.snapshots.clone();
        let publisher = Arc::new(Publisher::start_validated(config).map_err(|e| e.to_string())?);
        let snapshots = if snapshot.enabled {
            Some(SnapshotWorker::start(
                publisher.clone(),
                snapshot.jpeg_quality,
            )?)
        } else {
            None
        };
        Ok(MqttSink {
            publisher: Some(publisher),
            snapshots,
        })
    }

    pub fn stats(&self) -> Option<Arc<publish::PublisherStats>> {
        self.publisher.as_ref().map(|p| p.stats())
    }

    fn snapshot(&self, result: &ResultPayload, frame: &Arc<Frame>) {
        let (Some(p), Some(w)) = (&self.publisher, &self.snapshots) else {
            return;
        };
        let Some(tx) = &w.tx else { return };
        match p.claim_snapshot(&result.camera, &result.task) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(camera = %result.camera, task = %result.task, error = %e, "Snapshot not published.");
                return;
            }
        }
        let job = SnapshotJob {
            camera: result.camera.clone(),
            task: result.task.clone(),
            result: result.result.clone(),
            frame: frame.clone(),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(job) {
            p.stats().count_snapshot_skipped_busy();
            tracing::debug!(camera = %result.camera, task = %result.task, "Snapshot skipped: the previous one is still being rendered.");
        }
    }
}

impl ResultSink for MqttSink {
    fn publisher_stats(&self) -> Option<Arc<crate::publish::PublisherStats>> {
        self.stats()
    }
    fn publisher(&self) -> Option<Arc<Publisher>> {
        self.publisher.clone()
    }
    fn result(&mut self, result: &ResultPayload) {
        let Some(p) = &self.publisher else { return };
        match p.try_publish_result(result.clone()) {
            Ok(()) => {}
            Err(PublishError::QueueFull { payload, capacity }) => tracing::error!(
                camera = %payload.camera,
                task = %payload.task,
                sequence = payload.sequence,
                capacity,
                "MQTT queue full; result dropped (counted in queue-full drops)."
            ),
            Err(e) => {
                tracing::error!(camera = %result.camera, task = %result.task, error = %e, "Result not published.")
            }
        }
    }

    fn camera_status(&mut self, status: &CameraStatusPayload) {
        if let Some(p) = &self.publisher {
            if let Err(e) = p.publish_camera_status(&status.camera, status) {
                tracing::warn!(camera = %status.camera, error = %e, "Camera status not published.");
            }
        }
    }

    fn result_with_frame(&mut self, result: &ResultPayload, frame: &Arc<Frame>) {
        self.result(result);
        self.snapshot(result, frame);
    }

    fn close(&mut self) {
        // The snapshot thread holds the publisher too; it ends first.
        if let Some(mut w) = self.snapshots.take() {
            w.stop();
        }
        if let Some(p) = self.publisher.take() {
            match Arc::try_unwrap(p) {
                Ok(p) => {
                    let report = p.shutdown(PUBLISH_DRAIN);
                    tracing::info!(report = ?report, "MQTT publisher stopped.");
                }
                Err(_) => tracing::error!("The MQTT publisher is still shared at shutdown; queued results stay in the spool."),
            }
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(mut w) = self.snapshots.take() {
            w.stop();
        }
    }
}
