//! One supervisor thread per camera: the I/O shell around [`CameraMachine`].
//!
//! It builds the pipeline, reads the bus, feeds decoded-frame progress and
//! bus errors into the state machine, and carries out its commands. Each
//! camera has its own thread, pipeline and bus, so an error in one camera's
//! decoder never reaches another camera.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::Serialize;

use super::frame::Frame;
use super::pipeline::{self, LivePipeline, PipelineContext};
use super::settings::{scrub, CameraSettings, ResolvedCamera};
use super::state::{CameraMachine, CameraState, Command, Transition};
use super::IngestError;
use crate::backoff::Jitter;

/// How often the supervisor looks at the clock when the bus is quiet.
const POLL: Duration = Duration::from_millis(50);

/// Counters operators read; they survive reconnects.
#[derive(Debug, Default)]
pub struct CameraCounters {
    /// Frames that left the decoder.
    pub frames_in: AtomicU64,
    /// Frames handed to the daemon.
    pub frames_out: AtomicU64,
    /// Frames at the analysis rate that the daemon had no room for.
    pub frames_dropped: AtomicU64,
    /// Decoder errors and warnings (corrupt data), whether or not they ended the pipeline.
    pub decode_errors: AtomicU64,
    /// Pipelines built after the first.
    pub reconnects: AtomicU64,
}

/// A camera's status as published on `{prefix}/{camera}/status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CameraStatus {
    pub camera: String,
    pub state: CameraState,
    /// The URL with credentials redacted.
    pub url: String,
    /// Consecutive failed attempts (0 while streaming).
    pub attempt: u32,
    pub reconnects: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_dropped: u64,
    pub decode_errors: u64,
    /// Decoded frames per second over the last second or so.
    pub fps_in: f64,
    /// Handed-over frames per second over the last second or so.
    pub fps_out: f64,
    /// The decode chain in use, once known.
    pub decoder: Option<String>,
    pub last_error: Option<String>,
    /// When the state last changed, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// A state change (or a new reconnect attempt) of one camera.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CameraEvent {
    pub camera: String,
    pub from: CameraState,
    pub to: CameraState,
    pub attempt: u32,
    pub reason: Option<String>,
    pub retry_in_ms: Option<u64>,
    /// The status right after the change.
    pub status: CameraStatus,
}

struct Shared {
    counters: Arc<CameraCounters>,
    status: Mutex<CameraStatus>,
    chain: Arc<Mutex<Option<String>>>,
}

impl Shared {
    fn snapshot(&self) -> CameraStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let c = &self.counters;
        status.frames_in = c.frames_in.load(Ordering::Relaxed);
        status.frames_out = c.frames_out.load(Ordering::Relaxed);
        status.frames_dropped = c.frames_dropped.load(Ordering::Relaxed);
        status.decode_errors = c.decode_errors.load(Ordering::Relaxed);
        status.reconnects = c.reconnects.load(Ordering::Relaxed);
        status.decoder = self
            .chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status
    }

    fn update(&self, f: impl FnOnce(&mut CameraStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Reads a camera's status from any thread (the HTTP endpoint), without
/// owning the camera.
#[derive(Clone)]
pub struct StatusReader(Arc<Shared>);

impl StatusReader {
    pub fn status(&self) -> CameraStatus {
        self.0.snapshot()
    }
}

/// A running camera. Dropping it stops the camera and joins its thread.
pub struct CameraHandle {
    id: String,
    /// The id as this camera's frames carry it; a camera restarted under the
    /// same id gets a new one, so frames of the two can be told apart.
    frame_camera: Arc<str>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl CameraHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `frame` came from this camera's pipeline, not from an earlier
    /// camera of the same id (stopped by a reload, its last frames may still
    /// be queued).
    pub fn sent(&self, frame: &Frame) -> bool {
        Arc::ptr_eq(&self.frame_camera, &frame.camera)
    }

    /// The camera's status now.
    pub fn status(&self) -> CameraStatus {
        self.shared.snapshot()
    }

    pub fn counters(&self) -> &CameraCounters {
        &self.shared.counters
    }

    /// A reader of this camera's status for other threads; it keeps
    /// answering (with the last state) after the camera stopped.
    pub fn status_reader(&self) -> StatusReader {
        StatusReader(self.shared.clone())
    }

    /// Stops the pipeline and waits for the supervisor thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(camera = %self.id, "Camera supervisor thread panicked.");
            }
        }
    }
}

impl Drop for CameraHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a camera: checks its settings and the elements it needs (errors
/// here are configuration errors), then supervises it on its own thread.
/// Frames go to `frames` (never blocking: a full channel counts a drop),
/// status changes to `events`.
pub fn spawn_camera(
    settings: &CameraSettings,
    frames: SyncSender<Frame>,
    events: Sender<CameraEvent>,
) -> Result<CameraHandle, IngestError> {
    // Checked, not resolved: the password file is read by each build
    // attempt, so an unreadable one fails this camera alone (and a rotated
    // one is picked up at the next reconnect).
    let resolved = Arc::new(settings.check()?);
    gst::init().map_err(|e| IngestError::Init(e.to_string()))?;
    let counters = Arc::new(CameraCounters::default());
    let chain = Arc::new(Mutex::new(None));
    let frame_camera: Arc<str> = Arc::from(settings.id.as_str());
    let ctx = Arc::new(PipelineContext {
        camera: resolved.clone(),
        camera_id: frame_camera.clone(),
        transport: settings.transport,
        latency: settings.latency,
        decoder: settings.decoder.clone(),
        output: settings.output,
        analysis_fps: settings.analysis_fps,
        keyframe_skipping: settings.keyframe_skipping,
        watchdog: settings.watchdog,
        counters: counters.clone(),
        frames,
        seq: Arc::new(AtomicU64::new(0)),
        chain: chain.clone(),
    });

    let shared = Arc::new(Shared {
        counters,
        chain,
        status: Mutex::new(CameraStatus {
            camera: resolved.id.clone(),
            state: CameraState::Starting,
            url: resolved.redacted_url.clone(),
            attempt: 0,
            reconnects: 0,
            frames_in: 0,
            frames_out: 0,
            frames_dropped: 0,
            decode_errors: 0,
            fps_in: 0.0,
            fps_out: 0.0,
            decoder: None,
            last_error: None,
            since_unix_ms: unix_ms(SystemTime::now()),
        }),
    });
    let (stop_tx, stop_rx) = mpsc::channel();
    let supervisor = Supervisor {
        settings: settings.clone(),
        camera: resolved.clone(),
        ctx,
        shared: shared.clone(),
        events,
        stop: stop_rx,
        // Differs between cameras and between runs of the daemon.
        jitter: Jitter::from_name(&format!("{}@{:?}", resolved.id, SystemTime::now())),
    };
    // Linux thread names are at most 15 bytes.
    let name: String = format!("cam-{}", resolved.id).chars().take(15).collect();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || supervisor.run())
        .map_err(|source| IngestError::Thread {
            camera: resolved.id.clone(),
            source,
        })?;
    Ok(CameraHandle {
        id: settings.id.clone(),
        frame_camera,
        stop: Some(stop_tx),
        thread: Some(thread),
        shared,
    })
}

/// `loop = true`: back to the start of the file with a flushing seek (the
/// running time restarts, so the file plays at its own pace again). A file
/// that cannot seek (a raw elementary stream) fails the attempt instead,
/// and the rebuild starts it from the beginning.
fn rewind(pipeline: &gst::Pipeline) -> Result<(), String> {
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
            gst::ClockTime::ZERO,
        )
        .map_err(|_| "end of file, and it cannot seek back to the start to loop".to_string())
}

struct Supervisor {
    settings: CameraSettings,
    /// As the latest build attempt resolved it (password read).
    camera: Arc<ResolvedCamera>,
    ctx: Arc<PipelineContext>,
    shared: Arc<Shared>,
    events: Sender<CameraEvent>,
    stop: mpsc::Receiver<()>,
    jitter: Jitter,
}

impl Supervisor {
    fn run(mut self) {
        tracing::info!(camera = %self.camera.id, url = %self.camera.redacted_url, "Camera starting.");
        let mut machine = CameraMachine::new(self.camera.policy, Instant::now());
        let mut live: Option<LivePipeline> = None;
        let mut seen_frames = self.shared.counters.frames_in.load(Ordering::Relaxed);
        let mut rate_window = RateWindow::new(&self.shared.counters);
        loop {
            let now = Instant::now();
            let frames_in = self.shared.counters.frames_in.load(Ordering::Relaxed);
            if frames_in != seen_frames {
                seen_frames = frames_in;
                machine.frame(now);
            }
            let command = machine.tick(now, self.jitter.unit());
            self.apply(command, &mut machine, &mut live);
            if let Some(p) = &live {
                let mut next = p
                    .bus
                    .timed_pop(gst::ClockTime::from_nseconds(POLL.as_nanos() as u64));
                while let Some(msg) = next {
                    let end_of_file = matches!(msg.view(), gst::MessageView::Eos(_))
                        && self.camera.source.is_file();
                    let failure = if !end_of_file {
                        self.inspect(&msg)
                    } else if !self.settings.looping {
                        let command = machine.ended();
                        self.apply(command, &mut machine, &mut live);
                        break;
                    } else {
                        rewind(&p.pipeline).err()
                    };
                    if let Some(reason) = failure {
                        let command = machine.failure(Instant::now(), reason, self.jitter.unit());
                        self.apply(command, &mut machine, &mut live);
                        break;
                    }
                    next = p.bus.pop();
                }
                self.publish(&mut machine);
                rate_window.update(&self.shared);
                match self.stop.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => continue,
                    _ => break,
                }
            }
            self.publish(&mut machine);
            rate_window.update(&self.shared);
            let wait = match machine.retry_at() {
                Some(at) => at.saturating_duration_since(Instant::now()).min(POLL),
                None => Duration::from_secs(1),
            };
            match self.stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
        }
        drop(live);
        tracing::info!(camera = %self.camera.id, "Camera stopped.");
    }

    fn apply(
        &mut self,
        command: Command,
        machine: &mut CameraMachine,
        live: &mut Option<LivePipeline>,
    ) {
        match command {
            Command::Nothing => {}
            Command::TearDown => *live = None,
            Command::Build => {
                self.shared
                    .counters
                    .reconnects
                    .store(machine.reconnects(), Ordering::Relaxed);
                match self.start_pipeline() {
                    Ok(p) => *live = Some(p),
                    Err(e) => {
                        let reason = scrub(&e.to_string(), self.camera.credentials.as_ref());
                        let command = machine.failure(Instant::now(), reason, self.jitter.unit());
                        if command == Command::TearDown {
                            *live = None;
                        }
                    }
                }
            }
        }
    }

    fn start_pipeline(&mut self) -> Result<LivePipeline, IngestError> {
        let camera = Arc::new(self.settings.resolve()?);
        self.camera = camera.clone();
        self.ctx = Arc::new(PipelineContext {
            camera,
            ..(*self.ctx).clone()
        });
        pipeline::preflight(&self.ctx)?;
        let p = pipeline::build(&self.ctx)?;
        p.pipeline.set_state(gst::State::Playing).map_err(|_| {
            // The element that refused posted the reason on the bus.
            let reason =
                first_error(&p.bus).unwrap_or_else(|| "state change to PLAYING failed".into());
            IngestError::Pipeline {
                camera: self.camera.id.clone(),
                reason,
            }
        })?;
        Ok(p)
    }

    /// Turns a bus message into a failure reason when it ends the pipeline;
    /// counts decoder trouble either way.
    fn inspect(&self, msg: &gst::Message) -> Option<String> {
        use gst::MessageView;
        match msg.view() {
            MessageView::Error(err) => {
                let text = describe(msg, &err.error(), err.debug().as_deref());
                if is_decode_trouble(msg, &err.error()) {
                    self.shared
                        .counters
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                Some(scrub(&text, self.camera.credentials.as_ref()))
            }
            MessageView::Warning(w) => {
                if is_decode_trouble(msg, &w.error()) {
                    self.shared
                        .counters
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let text = scrub(
                        &describe(msg, &w.error(), None),
                        self.camera.credentials.as_ref(),
                    );
                    tracing::debug!(camera = %self.camera.id, warning = %text, "Camera decoder reported corrupt data.");
                }
                None
            }
            MessageView::Qos(q) => {
                // GstVideoDecoder does not post its decode errors on the bus
                // (max-errors = -1 since 1.18): it drops the frame and posts a
                // QoS message. A drop that was not late (jitter <= 0) is a
                // frame the decoder could not decode.
                let (jitter, _, _) = q.values();
                if jitter <= 0 && is_decoder(msg) {
                    self.shared
                        .counters
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            MessageView::Eos(_) => Some("end of stream".to_string()),
            _ => None,
        }
    }

    /// Logs, records and sends every transition — the one place that does, so
    /// logs, status and events never disagree.
    fn publish(&mut self, machine: &mut CameraMachine) {
        for t in machine.take_transitions() {
            self.emit(&t);
        }
    }

    fn emit(&self, t: &Transition) {
        let id = &self.camera.id;
        let reason = t.reason.as_ref().map(|r| format!("camera {id}: {r}"));
        self.shared.update(|s| {
            s.state = t.to;
            s.attempt = t.attempt;
            s.since_unix_ms = unix_ms(SystemTime::now());
            if reason.is_some() {
                s.last_error = reason.clone();
            }
        });
        let why = reason.as_deref().unwrap_or("");
        let retry_ms = t.retry_in.map(|d| d.as_millis() as u64);
        match t.to {
            CameraState::Streaming => {
                let chain = self
                    .shared
                    .chain
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                tracing::info!(camera = %id, decoder = chain.as_deref().unwrap_or("unknown"), "Camera streaming.");
            }
            CameraState::Stalled => {
                tracing::warn!(camera = %id, reason = why, "Camera stream stalled, restarting.")
            }
            CameraState::Reconnecting => {
                tracing::warn!(camera = %id, attempt = t.attempt, retry_in_ms = retry_ms, reason = why, "Camera reconnecting.")
            }
            CameraState::Failed => {
                tracing::error!(camera = %id, attempt = t.attempt, reason = why, "Camera failed; giving up until restarted.")
            }
            CameraState::Ended => {
                tracing::info!(camera = %id, "The file played to its end; the camera is ended (loop = false).")
            }
            CameraState::Starting => tracing::info!(camera = %id, "Camera starting."),
        }
        let event = CameraEvent {
            camera: id.clone(),
            from: t.from,
            to: t.to,
            attempt: t.attempt,
            reason,
            retry_in_ms: retry_ms,
            status: self.shared.snapshot(),
        };
        // Nobody listening is fine: status stays readable through the handle.
        let _ = self.events.send(event);
    }
}

fn describe(msg: &gst::Message, error: &gst::glib::Error, debug: Option<&str>) -> String {
    let source = msg
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into());
    match debug.and_then(|d| d.lines().last()) {
        Some(d) if !d.is_empty() => {
            let d: String = d.chars().take(200).collect();
            format!("{source}: {error} ({d})")
        }
        _ => format!("{source}: {error}"),
    }
}

fn is_decode_trouble(msg: &gst::Message, error: &gst::glib::Error) -> bool {
    error.matches(gst::StreamError::Decode) || is_decoder(msg)
}

fn is_decoder(msg: &gst::Message) -> bool {
    msg.src()
        .and_then(|s| s.downcast_ref::<gst::Element>())
        .and_then(|e| e.factory())
        .and_then(|f| {
            f.metadata(gst::ELEMENT_METADATA_KLASS)
                .map(|k| k.contains("Decoder"))
        })
        .unwrap_or(false)
}

fn first_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(describe(&msg, &err.error(), err.debug().as_deref()));
        }
    }
    None
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// fps in/out over roughly the last second.
struct RateWindow {
    at: Instant,
    frames_in: u64,
    frames_out: u64,
}

impl RateWindow {
    fn new(c: &CameraCounters) -> Self {
        RateWindow {
            at: Instant::now(),
            frames_in: c.frames_in.load(Ordering::Relaxed),
            frames_out: c.frames_out.load(Ordering::Relaxed),
        }
    }

    fn update(&mut self, shared: &Shared) {
        let elapsed = self.at.elapsed();
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let next = RateWindow::new(&shared.counters);
        let secs = elapsed.as_secs_f64();
        let fps_in = next.frames_in.saturating_sub(self.frames_in) as f64 / secs;
        let fps_out = next.frames_out.saturating_sub(self.frames_out) as f64 / secs;
        shared.update(|s| {
            s.fps_in = (fps_in * 10.0).round() / 10.0;
            s.fps_out = (fps_out * 10.0).round() / 10.0;
        });
        *self = next;
    }
}
