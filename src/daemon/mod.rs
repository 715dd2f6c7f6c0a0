//! `florence-edge run`: cameras → schedule → batch → Florence-2 → results.
//!
//! Threads: one supervisor per camera (ingest), one coordinator that owns
//! the scheduler, the batcher and the newest frame of each camera, and one
//! inference thread that owns the model. The coordinator hands a batch to
//! the model only when the model is idle, so waiting work stays in the
//! batcher where a newer job can still replace it (docs/SCHEDULING.md).
//! Inference never runs on an async runtime's workers.

pub mod cameras;
mod control;
mod coordinator;
mod inference;
mod isolate;
mod mqtt_control;
pub mod observe;
pub mod reload;
pub mod result;
mod startup;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{CameraConfig, Config};
use crate::florence2::LoadOptions;
use crate::ingest::{self, CameraEvent, CameraHandle, CameraStatus, Frame, StatusReader};
use crate::pipeline::{Decoding, Pipeline, TaskRequest};
use crate::preprocess::RgbFrame;
use crate::runtime::Backend;
use crate::schedule::{Batcher, Job, JobKey, Scheduler, TaskSchedule};
use crate::service::http::HttpServer;
use crate::service::{Liveness, Notifier, Watchdog};

pub use observe::{BatchSizes, DaemonView, ModelLabels, StageHistograms};

pub use control::{ControlHandle, CONTROL_TIMEOUT};
pub use result::{MqttSink, ResultSink, StdoutSink};
pub use startup::{load_options, preflight, Daemon};

use coordinator::Coordinator;
use inference::{inference_thread, InferenceContext};
use startup::ModelInfo;

/// The sink is shared by the inference thread (results) and the
/// coordinator (camera statuses); calls never block.
pub type SharedSink = Arc<Mutex<Box<dyn ResultSink>>>;

/// How often every camera's status is published even without a change
/// (rates move).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Why the daemon could not start or stopped; each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("ONNX Runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("TensorRT engines: {0}")]
    Engines(#[from] crate::runtime::engines::EngineError),
    #[error("loading the model: {0}")]
    Model(#[from] crate::florence2::ModelError),
    #[error("camera {camera}: {source}")]
    Camera {
        camera: String,
        #[source]
        source: ingest::IngestError,
    },
    #[error("scheduling: {0}")]
    Schedule(#[from] crate::schedule::ScheduleError),
    #[error("cannot draw a run id from the operating system's random source: {0}")]
    RunId(String),
    #[error("signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] crate::service::http::HttpError),
    #[error("http.bearer_token_file: {0}")]
    HttpToken(String),
    #[error("cannot start the {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the inference thread stopped unexpectedly")]
    InferenceGone,
}

/// What the coordinator reacts to.
enum Msg {
    Frame(Frame),
    Event(CameraEvent),
    /// The model finished a batch: how each of its jobs ended.
    BatchDone {
        jobs: usize,
        outcomes: Vec<JobOutcome>,
    },
    /// SIGHUP: re-read the configuration file.
    Reload,
    /// A runtime change (HTTP or MQTT), answered on `reply`.
    Control {
        request: crate::control::ControlRequest,
        reply: SyncSender<crate::control::ControlReply>,
    },
    Shutdown(&'static str),
}

/// How one job of a finished batch ended; a failure pauses its task
/// (`schedule::backoff`).
struct JobOutcome {
    key: Arc<JobKey>,
    /// Why it produced no result; `None` when it did.
    error: Option<String>,
}

/// How the daemon is run, beyond its configuration.
pub struct DaemonOptions {
    /// The file SIGHUP re-reads. `None` (a configuration built in memory):
    /// SIGHUP is logged and ignored.
    pub config_path: Option<PathBuf>,
    /// systemd's notification socket (a no-op outside systemd).
    pub notifier: Arc<Notifier>,
    /// Fault injection for tests of the watchdog: the inference thread
    /// wedges (sleeps forever) on its first batch. Never set in service.
    pub wedge_inference: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            config_path: None,
            notifier: Arc::new(Notifier::disabled()),
            wedge_inference: false,
        }
    }
}

/// A camera as the daemon runs it, for `/api/cameras` and the metrics.
#[derive(Clone)]
pub struct CameraEntry {
    pub reader: StatusReader,
    /// When this camera's current pipeline was started (by the start or
    /// by a reload that restarted it).
    pub started_unix_ms: u64,
    /// Restarts by reloads since the daemon started.
    pub restarts: u64,
    /// Task tokens with their periods, e.g. `<OD> every 500ms`.
    pub tasks: Vec<String>,
}

/// The running cameras by id, readable from other threads.
pub type CameraRegistry = Arc<Mutex<BTreeMap<String, CameraEntry>>>;

type FrameJob = Job<JobFrame>;

/// What a job carries through the batcher: its frame, and the configuration
/// revision it was made under (the revision its result names).
#[derive(Clone, Debug)]
pub struct JobFrame {
    pub frame: Arc<Frame>,
    pub revision: u64,
}

impl std::ops::Deref for JobFrame {
    type Target = Frame;

    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// What the daemon has done so far, for operators and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaemonStats {
    /// Batches handed to the model, and the jobs in them.
    pub batches: u64,
    pub jobs: u64,
    /// Largest batch so far.
    pub largest_batch: usize,
    /// Most jobs waiting in the batcher at once.
    pub max_waiting: usize,
    /// Jobs replaced by a newer one before the model took them, per
    /// (camera, task token).
    pub stale_skipped: BTreeMap<(String, String), u64>,
    /// Ticks a `when = "changed"` task waited through on a still picture,
    /// per (camera, task token).
    pub unchanged_skipped: BTreeMap<(String, String), u64>,
    /// Results handed to the sink, per (camera, task token).
    pub results: BTreeMap<(String, String), u64>,
    /// Jobs that produced no result (refused input, failed batch).
    pub failed_jobs: u64,
    /// The same, per (camera, task token, reason): `frame` (a frame the
    /// model cannot take), `prompt_too_long` (the prompt and the image
    /// tokens exceed the model's position embeddings), `input` (another
    /// input the task refuses), `inference` (failed alone in the model).
    pub job_errors: BTreeMap<(String, String, &'static str), u64>,
    /// Times a (camera, task token) was paused after a failure (each
    /// failure in a row pauses it longer).
    pub task_backoffs: BTreeMap<(String, String), u64>,
    /// Reloads applied, and reloads rejected (invalid file: the running
    /// configuration stayed).
    pub reloads: u64,
    pub reloads_rejected: u64,
    /// Runtime changes (HTTP, MQTT) applied, and refused (invalid, unknown
    /// camera, malformed).
    pub control_changes: u64,
    pub control_refused: u64,
    /// The configuration revision in effect.
    pub config_revision: u64,
    /// Cameras a reload could not start at all (a camera that starts and
    /// then fails is `reconnecting`/`failed` in its own status instead).
    pub reload_camera_failures: u64,
    /// Jobs dropped because their camera was removed or restarted.
    pub dropped_by_reload: u64,
    /// Results post-processed from their ids, and those parsed from text
    /// because their word pieces spell a location token.
    pub postprocess_routes: crate::postprocess::RouteCounts,
    /// Latency per stage, per (camera, task token).
    pub latency: BTreeMap<(String, String), StageHistograms>,
    pub batch_sizes: BatchSizes,
}

/// How long a shutdown waits for the batch in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
