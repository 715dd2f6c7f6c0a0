//! `florence-edge run`: cameras → schedule → batch → Florence-2 → results.
//!
//! Threads: one supervisor per camera (ingest), one coordinator that owns
//! the scheduler, the batcher and the newest frame of each camera, and one
//! inference thread that owns the model. The coordinator hands a batch to
//! the model only when the model is idle, so waiting work stays in the
//! batcher where a newer job can still replace it (docs/SCHEDULING.md).
//! Inference never runs on an async runtime's workers.

pub mod cameras;
pub mod observe;
pub mod reload;
pub mod result;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{CameraConfig, Config};
use crate::florence2::engine::{Decoding, Engine, TaskRequest};
use crate::florence2::LoadOptions;
use crate::ingest::{self, CameraEvent, CameraHandle, CameraStatus, Frame, StatusReader};
use crate::preprocess::RgbFrame;
use crate::runtime::Backend;
use crate::schedule::{Batcher, Job, Scheduler, TaskSchedule};
use crate::service::http::HttpServer;
use crate::service::{Liveness, Notifier, Watchdog};

pub use observe::{BatchSizes, DaemonView, ModelLabels, StageHistograms};

pub use result::{MqttSink, ResultSink, StdoutSink};

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
    /// The model finished a batch.
    BatchDone {
        jobs: usize,
    },
    /// SIGHUP: re-read the configuration file.
    Reload,
    Shutdown(&'static str),
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

type FrameJob = Job<Arc<Frame>>;

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
    /// Results handed to the sink, per (camera, task token).
    pub results: BTreeMap<(String, String), u64>,
    /// Jobs that produced no result (refused input, failed batch).
    pub failed_jobs: u64,
    /// Reloads applied, and reloads rejected (invalid file: the running
    /// configuration stayed).
    pub reloads: u64,
    pub reloads_rejected: u64,
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

/// Model load options from the `[model]` section.
pub fn load_options(config: &Config) -> Result<LoadOptions, DaemonError> {
    let m = &config.model;
    let mut opts = LoadOptions::new(&m.dir);
    opts.backend = m.backend;
    if let Some(variant) = &m.precision {
        opts.variant = variant.clone();
    }
    opts.layout = m.decoder;
    opts.ort_library = m.ort_library.clone();
    opts.intra_threads = m.threads;
    opts.engine_cache_dir = Some(crate::runtime::engines::engines_dir_or_default(
        m.engines_dir.as_deref(),
    ));
    opts.tensorrt_fp16 = m.precision.as_ref().is_none_or(|v| v.name() != "fp32");
    Ok(opts)
}

/// Everything start-up derives from a configuration before it loads the
/// model or opens a camera or a socket: the model's load options, the
/// batcher, every enabled camera's schedule and its checked ingest
/// settings. [`Daemon::start_with`] runs it first; `tests/config_agreement.rs`
/// checks that it accepts exactly what `validate` accepts.
pub fn preflight(config: &Config) -> Result<LoadOptions, DaemonError> {
    let options = load_options(config)?;
    Batcher::<()>::new(config.model.max_batch, config.model.max_wait)?;
    Scheduler::new(config.schedules(), Instant::now())?;
    for camera in config.cameras.iter().filter(|c| c.enabled) {
        cameras::camera_settings(camera)
            .check()
            .map_err(|source| DaemonError::Camera {
                camera: camera.id.clone(),
                source,
            })?;
    }
    Ok(options)
}

/// On TensorRT, the engines this configuration needs: fresh ones from the
/// cache, or built now when `model.build_engines_at_start` allows it (with
/// progress in the log and more start time asked of systemd), else an error
/// that says to run `florence-edge build-engines`. `None` on other backends.
fn tensorrt_engines(
    config: &Config,
    options: &DaemonOptions,
) -> Result<Option<crate::runtime::engines::EngineManifest>, DaemonError> {
    use crate::runtime::engines::startup_check;
    let m = &config.model;
    let rt = crate::runtime::init(m.ort_library.as_deref())?;
    let backend = load_options(config)?.backend;
    let choice = crate::runtime::choose_backend(backend, rt.providers)?;
    if choice.backend != Backend::TensorRt {
        return Ok(None);
    }
    let notifier = options.notifier.clone();
    let manifest = startup_check(
        &config.engine_spec(),
        rt,
        m.build_engines_at_start,
        options.config_path.as_deref(),
        &mut |event| {
            tracing::info!("{event}");
            // Each step may take minutes on a Jetson: keep systemd waiting.
            notifier.extend_timeout(Duration::from_secs(15 * 60), &event.to_string());
        },
    )?;
    Ok(Some(manifest))
}

/// A running daemon. `wait` blocks until a signal (or `shutdown`) stops it.
pub struct Daemon {
    tx: Sender<Msg>,
    stats: Arc<Mutex<DaemonStats>>,
    liveness: Arc<Liveness>,
    cameras: CameraRegistry,
    signals: signal_hook::iterator::Handle,
    _watchdog: Option<Watchdog>,
    http: Option<HttpServer>,
    view: DaemonView,
    coordinator: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl Daemon {
    /// Loads the model, starts every enabled camera and the coordinator.
    /// Returns once the model is loaded and the cameras are started.
    pub fn start(config: Config, sink: Box<dyn ResultSink>) -> Result<Daemon, DaemonError> {
        Daemon::start_with(config, sink, DaemonOptions::default())
    }

    /// [`Daemon::start`] with a configuration file to reload on SIGHUP and
    /// systemd notifications.
    pub fn start_with(
        config: Config,
        sink: Box<dyn ResultSink>,
        options: DaemonOptions,
    ) -> Result<Daemon, DaemonError> {
        let (tx, rx) = mpsc::channel::<Msg>();
        // Signals first: a SIGTERM during the (slow) model load is honoured
        // as soon as the coordinator runs.
        let signals = StartupSignals {
            handle: signals(tx.clone())?,
            armed: true,
        };
        let notifier = options.notifier.clone();
        notifier.status("Loading the model.");
        let liveness = Liveness::new(config.model.batch_timeout);
        // The watchdog runs from the start: systemd expects pings before
        // READY=1 too, and a model load that hangs must not hang forever.
        let watchdog = Watchdog::start(notifier.clone(), liveness.clone());
        let publisher = sink.publisher_stats();
        let sink: SharedSink = Arc::new(Mutex::new(sink));
        let http_token = config
            .http
            .read_bearer_token()
            .map_err(DaemonError::HttpToken)?
            .map(|t| t.expose().to_string());

        // The model lives on its own thread; it reports whether it loaded.
        let mut opts = preflight(&config)?;
        opts.engine_manifest = tensorrt_engines(&config, &options)?;
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Vec<FrameJob>>(1);
        let (ready_tx, ready_rx) =
            mpsc::channel::<Result<ModelInfo, crate::florence2::ModelError>>();
        let stats = Arc::new(Mutex::new(DaemonStats::default()));
        let inference_ctx = InferenceContext {
            node: config.node.id.clone(),
            decoding: config.model.decoding,
            done: tx.clone(),
            stats: stats.clone(),
            liveness: liveness.clone(),
            wedge: options.wedge_inference,
        };
        if options.wedge_inference {
            tracing::warn!("Fault injection: the inference thread will wedge on its first batch.");
        }
        let inference = thread::Builder::new()
            .name("inference".into())
            .spawn({
                let sink = sink.clone();
                move || inference_thread(opts, inference_ctx, batch_rx, ready_tx, sink)
            })
            .map_err(|source| DaemonError::Thread {
                thread: "inference",
                source,
            })?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => return Err(DaemonError::Model(e)),
            Err(_) => return Err(DaemonError::InferenceGone),
        };
        tracing::info!(model = %info.model_id, backend = %info.backend, variant = %info.variant, "Model ready.");

        // Cameras send frames and events to forwarders feeding the one
        // coordinator channel.
        let (frames_tx, frames_rx) = mpsc::sync_channel::<Frame>(8);
        let (events_tx, events_rx) = mpsc::channel::<CameraEvent>();
        forward(frames_rx, tx.clone(), Msg::Frame, "frames");
        forward(events_rx, tx.clone(), Msg::Event, "camera-events");

        let now = Instant::now();
        let scheduler = Scheduler::new(Vec::new(), now)?;
        let batcher = Batcher::new(config.model.max_batch, config.model.max_wait)?;
        let registry: CameraRegistry = Arc::new(Mutex::new(BTreeMap::new()));
        let mut coordinator = Coordinator {
            scheduler,
            batcher,
            latest: HashMap::new(),
            cameras: BTreeMap::new(),
            registry: registry.clone(),
            frames_tx,
            events_tx,
            batch_tx: Some(batch_tx),
            inference: Some(inference),
            model_busy: false,
            stats: stats.clone(),
            sink,
            node: config.node.id.clone(),
            last_status: Instant::now() - STATUS_INTERVAL,
            config_path: options.config_path,
            notifier: notifier.clone(),
            liveness: liveness.clone(),
            config: config.clone(),
        };
        for camera in config.cameras.iter().filter(|c| c.enabled) {
            coordinator.start_camera(camera, now)?;
        }
        let view = DaemonView {
            node: config.node.id.clone(),
            model: ModelLabels {
                id: info.model_id.clone(),
                backend: info.backend.clone(),
                precision: info.variant.clone(),
            },
            stats: stats.clone(),
            cameras: registry.clone(),
            liveness: liveness.clone(),
            publisher,
        };
        let http = match config.http.listen {
            None => None,
            Some(addr) => Some(HttpServer::start(addr, http_token, Arc::new(view.clone()))?),
        };
        let summary = coordinator.summary();
        let handle = thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || coordinator.run(rx))
            .map_err(|source| DaemonError::Thread {
                thread: "coordinator",
                source,
            })?;
        liveness.set_ready(true);
        notifier.ready(&summary);
        Ok(Daemon {
            tx,
            stats,
            liveness,
            cameras: registry,
            signals: signals.disarm(),
            _watchdog: watchdog,
            http,
            view,
            coordinator: Some(handle),
        })
    }

    pub fn stats(&self) -> DaemonStats {
        crate::sync::lock(&self.stats).clone()
    }

    /// What `/healthz`, `/readyz` and the systemd watchdog look at.
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// The running cameras.
    pub fn cameras(&self) -> CameraRegistry {
        self.cameras.clone()
    }

    /// The shared statistics, for readers on other threads.
    pub fn shared_stats(&self) -> Arc<Mutex<DaemonStats>> {
        self.stats.clone()
    }

    /// Where the HTTP endpoint listens, if it is enabled.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr())
    }

    /// The daemon's state as `/metrics` and `/api/cameras` render it.
    pub fn view(&self) -> DaemonView {
        self.view.clone()
    }

    /// Ask the daemon to stop (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown("requested"));
    }

    /// Ask the daemon to re-read its configuration file (as SIGHUP does).
    pub fn reload(&self) {
        let _ = self.tx.send(Msg::Reload);
    }

    /// Block until the daemon has stopped: cameras stopped, the batch in
    /// flight finished and its results handed on.
    pub fn wait(mut self) -> Result<(), DaemonError> {
        let result = match self.coordinator.take() {
            Some(h) => h.join().map_err(|_| DaemonError::InferenceGone)?,
            None => Ok(()),
        };
        self.signals.close();
        if let Some(http) = self.http.take() {
            http.stop();
        }
        result
    }
}

struct ModelInfo {
    model_id: String,
    backend: String,
    variant: String,
}

fn forward<T: Send + 'static>(rx: Receiver<T>, tx: Sender<Msg>, wrap: fn(T) -> Msg, name: &str) {
    let _ = thread::Builder::new()
        .name(format!("fwd-{name}"))
        .spawn(move || {
            for item in rx {
                if tx.send(wrap(item)).is_err() {
                    break;
                }
            }
        });
}

/// The signal handler while [`Daemon::start_with`] runs: closed on every
/// early return (each `?` included), handed to the daemon once start-up
/// succeeds, so a failed start leaves no signal thread behind.
struct StartupSignals {
    handle: signal_hook::iterator::Handle,
    armed: bool,
}

impl StartupSignals {
    fn disarm(mut self) -> signal_hook::iterator::Handle {
        self.armed = false;
        self.handle.clone()
    }
}

impl Drop for StartupSignals {
    fn drop(&mut self) {
        if self.armed {
            self.handle.close();
        }
    }
}

fn signals(tx: Sender<Msg>) -> Result<signal_hook::iterator::Handle, DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(DaemonError::Signals)?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let msg = match sig {
                    SIGTERM => Msg::Shutdown("SIGTERM"),
                    SIGINT => Msg::Shutdown("SIGINT"),
                    _ => Msg::Reload,
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(handle)
}

struct Coordinator {
    scheduler: Scheduler,
    batcher: Batcher<Arc<Frame>>,
    latest: HashMap<Arc<str>, Arc<Frame>>,
    cameras: BTreeMap<String, CameraHandle>,
    registry: CameraRegistry,
    frames_tx: SyncSender<Frame>,
    events_tx: Sender<CameraEvent>,
    batch_tx: Option<SyncSender<Vec<FrameJob>>>,
    inference: Option<JoinHandle<()>>,
    model_busy: bool,
    stats: Arc<Mutex<DaemonStats>>,
    sink: SharedSink,
    node: String,
    last_status: Instant,
    config_path: Option<PathBuf>,
    notifier: Arc<Notifier>,
    liveness: Arc<Liveness>,
    /// The configuration in effect (sections a reload cannot change keep
    /// their running values).
    config: Config,
}

impl Coordinator {
    fn publish_status(&self, status: &CameraStatus) {
        let payload = result::status_payload(&self.node, status);
        {
            let mut sink = crate::sync::lock(&self.sink);
            sink.camera_status(&payload);
        }
    }

    /// Starts a camera's pipeline and schedules its tasks.
    fn start_camera(&mut self, camera: &CameraConfig, now: Instant) -> Result<(), DaemonError> {
        let settings = cameras::camera_settings(camera);
        let tasks: &[TaskSchedule] = &camera.tasks;
        self.scheduler
            .set_camera(Arc::from(camera.id.as_str()), tasks, now)?;
        let handle =
            ingest::spawn_camera(&settings, self.frames_tx.clone(), self.events_tx.clone())
                .map_err(|e| {
                    self.scheduler.remove_camera(&camera.id);
                    DaemonError::Camera {
                        camera: camera.id.clone(),
                        source: e,
                    }
                })?;
        {
            let mut reg = crate::sync::lock(&self.registry);
            let restarts = reg.get(&camera.id).map_or(0, |e| e.restarts + 1);
            reg.insert(
                camera.id.clone(),
                CameraEntry {
                    reader: handle.status_reader(),
                    started_unix_ms: result::unix_ms(SystemTime::now()),
                    restarts,
                    tasks: cameras::task_summaries(camera),
                },
            );
        }
        self.cameras.insert(camera.id.clone(), handle);
        Ok(())
    }

    /// Stops a camera: its pipeline, its schedule, its waiting jobs and its
    /// newest frame. With `forget`, it also leaves the registry.
    fn stop_camera(&mut self, id: &str, forget: bool) {
        if let Some(handle) = self.cameras.remove(id) {
            handle.stop();
        }
        self.scheduler.remove_camera(id);
        self.latest.remove(id);
        let dropped = self.batcher.remove_camera(id).len();
        if dropped > 0 {
            tracing::info!(
                camera = id,
                jobs = dropped,
                "Waiting jobs of a stopped camera dropped."
            );
            {
                let mut st = crate::sync::lock(&self.stats);
                st.dropped_by_reload += dropped as u64;
            }
        }
        if forget {
            {
                let mut reg = crate::sync::lock(&self.registry);
                reg.remove(id);
            }
        }
    }

    /// One line for systemd's STATUS=.
    fn summary(&self) -> String {
        let streaming = self
            .cameras
            .values()
            .filter(|c| c.status().state == ingest::CameraState::Streaming)
            .count();
        let results: u64 = crate::sync::lock(&self.stats).results.values().sum();
        format!(
            "{streaming}/{} cameras streaming; {results} results.",
            self.cameras.len()
        )
    }

    fn run(mut self, rx: Receiver<Msg>) -> Result<(), DaemonError> {
        let reason = loop {
            self.liveness.coordinator_turned();
            let now = Instant::now();
            let mut deadline = self.scheduler.next_deadline();
            if !self.model_busy {
                deadline = min_opt(deadline, self.batcher.next_deadline());
            }
            let wait =
                deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
            match rx.recv_timeout(wait) {
                Ok(Msg::Frame(frame)) => {
                    // A frame queued by a pipeline that a reload stopped.
                    let current = self
                        .cameras
                        .get(frame.camera.as_ref())
                        .is_some_and(|c| c.sent(&frame));
                    if !current {
                        continue;
                    }
                    let camera = frame.camera.clone();
                    let seq = frame.seq;
                    self.latest.insert(camera.clone(), Arc::new(frame));
                    if let Err(e) = self.scheduler.on_frame(&camera, seq, Instant::now()) {
                        tracing::debug!(camera = %camera, error = %e, "Frame of an unscheduled camera ignored.");
                    }
                }
                Ok(Msg::Event(event)) => {
                    // The supervisor logged the transition (ingest/supervisor.rs,
                    // the one place camera transitions are logged).
                    self.publish_status(&event.status);
                }
                Ok(Msg::BatchDone { jobs }) => {
                    tracing::debug!(jobs, "Batch finished.");
                    self.model_busy = false;
                }
                Ok(Msg::Reload) => self.reload(),
                Ok(Msg::Shutdown(why)) => break why,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break "all senders gone",
            }
            let now = Instant::now();
            if now.duration_since(self.last_status) >= STATUS_INTERVAL {
                self.last_status = now;
                for cam in self.cameras.values() {
                    self.publish_status(&cam.status());
                }
                self.notifier.status(&self.summary());
            }
            for job in self.scheduler.poll(now) {
                // The scheduler only emits a job once its camera has a frame.
                if let Some(frame) = self.latest.get(&job.key.camera) {
                    let frame = frame.clone();
                    if let Some(stale) = self.batcher.push(job.with_frame(frame), now) {
                        tracing::debug!(camera = %stale.key.camera, task = %stale.key.task, "Stale job replaced by a newer frame.");
                    }
                }
            }
            let waiting = self.batcher.len();
            if !self.model_busy {
                if let Some(batch) = self.batcher.pop_batch(now) {
                    self.record_dispatch(batch.len(), waiting);
                    self.dispatch(batch)?;
                }
            }
        };
        tracing::info!(
            reason,
            "Shutting down: stopping cameras, finishing the batch in flight."
        );
        self.shutdown(rx)
    }

    fn record_dispatch(&self, size: usize, waiting: usize) {
        {
            let mut st = crate::sync::lock(&self.stats);
            st.batches += 1;
            st.jobs += size as u64;
            st.largest_batch = st.largest_batch.max(size);
            st.max_waiting = st.max_waiting.max(waiting);
            st.batch_sizes.0.observe(size as f64);
            for (key, c) in self.batcher.all_counters() {
                st.stale_skipped.insert(
                    (key.camera.to_string(), key.task.token().to_string()),
                    c.stale_skipped,
                );
            }
        }
    }

    fn dispatch(&mut self, batch: Vec<FrameJob>) -> Result<(), DaemonError> {
        let tx = self.batch_tx.as_ref().ok_or(DaemonError::InferenceGone)?;
        tx.send(batch).map_err(|_| DaemonError::InferenceGone)?;
        self.model_busy = true;
        Ok(())
    }

    fn shutdown(mut self, rx: Receiver<Msg>) -> Result<(), DaemonError> {
        self.liveness.set_stopping();
        self.notifier
            .stopping("Stopping: cameras stop, the batch in flight finishes.");
        for (_, cam) in std::mem::take(&mut self.cameras) {
            cam.stop();
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.model_busy {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Msg::BatchDone { .. }) => self.model_busy = false,
                Ok(_) => {}
                Err(_) => {
                    tracing::error!("The batch in flight did not finish within {DRAIN_TIMEOUT:?}; its results are lost.");
                    break;
                }
            }
        }
        drop(self.batch_tx.take());
        if let Some(h) = self.inference.take() {
            if !self.model_busy {
                let _ = h.join();
            }
        }
        // Results of the last batch are queued by now; deliver them (or
        // spool them) and say offline.
        {
            let mut sink = crate::sync::lock(&self.sink);
            sink.close();
        }
        tracing::info!("Stopped.");
        Ok(())
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

struct InferenceContext {
    node: String,
    decoding: Decoding,
    done: Sender<Msg>,
    stats: Arc<Mutex<DaemonStats>>,
    liveness: Arc<Liveness>,
    /// Fault injection: sleep forever on the first batch.
    wedge: bool,
}

fn inference_thread(
    opts: LoadOptions,
    ctx: InferenceContext,
    batches: Receiver<Vec<FrameJob>>,
    ready: Sender<Result<ModelInfo, crate::florence2::ModelError>>,
    sink: SharedSink,
) {
    let mut engine = match Engine::load(&opts) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let model_id = opts
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| opts.dir.display().to_string());
    let info = crate::publish::ModelInfo {
        id: model_id.clone(),
        precision: engine.model.variant.name().to_string(),
        backend: format!("onnxruntime-{}", engine.model.backend.backend),
    };
    let _ = ready.send(Ok(ModelInfo {
        model_id,
        backend: info.backend.clone(),
        variant: info.precision.clone(),
    }));
    let mut result_seq: HashMap<(Arc<str>, crate::florence2::Task), u64> = HashMap::new();
    for batch in batches {
        ctx.liveness.batch_started();
        if ctx.wedge {
            tracing::warn!("Fault injection: the inference thread wedges now.");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        let dispatched = Instant::now();
        let n = batch.len();
        // Items whose request does not fit their frame (a region outside a
        // resized stream) are refused one by one, not with the batch.
        let mut items = Vec::with_capacity(n);
        let mut jobs = Vec::with_capacity(n);
        for job in &batch {
            let f = &job.frame;
            let frame = match RgbFrame::new(f.width, f.height, f.stride, &f.data) {
                Ok(fr) => fr,
                Err(e) => {
                    tracing::error!(camera = %job.key.camera, task = %job.key.task, error = %e, "Frame refused; no result for this job.");
                    continue;
                }
            };
            let req = TaskRequest {
                task: job.key.task,
                text: job.key.argument.text().map(str::to_string),
                region: job.key.argument.region_pixels(),
            };
            if let Err(e) = engine.prompt_ids(&req, f.width, f.height) {
                tracing::error!(camera = %job.key.camera, task = %job.key.task, error = %e, "Task input does not fit the frame or the engines; no result for this job.");
                continue;
            }
            items.push((frame, req));
            jobs.push(job);
        }
        let jobs_len = jobs.len();
        let mut items_ok = false;
        if !items.is_empty() {
            match engine.run(&items, ctx.decoding) {
                Ok(results) => {
                    items_ok = true;
                    for (job, r) in jobs.iter().zip(results) {
                        let seq = result_seq
                            .entry((job.key.camera.clone(), job.key.task))
                            .or_insert(0);
                        *seq += 1;
                        let out =
                            result::result_payload(&ctx.node, &info, job, r, *seq, dispatched);
                        {
                            let mut sink = crate::sync::lock(&sink);
                            sink.result_with_frame(&out, &job.frame);
                        }
                        let end_to_end = SystemTime::now()
                            .duration_since(job.frame.captured_at)
                            .map_or(0.0, |d| d.as_secs_f64());
                        {
                            let mut st = crate::sync::lock(&ctx.stats);
                            let key = (out.camera.clone(), out.task.clone());
                            st.latency
                                .entry(key.clone())
                                .or_default()
                                .observe(&out.latency_ms, end_to_end);
                            *st.results.entry(key).or_insert(0) += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(jobs = items.len(), error = %e, "Inference failed for a batch; its results are lost.");
                }
            }
        }
        let produced = if items_ok { jobs_len } else { 0 };
        {
            let mut st = crate::sync::lock(&ctx.stats);
            st.failed_jobs += (n - produced) as u64;
            st.postprocess_routes = engine.route_counts();
        }
        ctx.liveness.batch_finished();
        if ctx.done.send(Msg::BatchDone { jobs: n }).is_err() {
            break;
        }
    }
}
