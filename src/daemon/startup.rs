//! Start-up: from a configuration to a running [`Daemon`] (model options,
//! the preflight `validate` agrees with, TensorRT engines, signals, the
//! threads), and its stop.

use super::*;

/// Model load options from the `[model]` section.
pub fn load_options(config: &Config) -> LoadOptions {
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
    opts.tensorrt_fp16 = m.tensorrt_fp16();
    opts.gpu_memory_limit = m.gpu_memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20));
    opts
}

/// Everything start-up derives from a configuration before it loads the
/// model or opens a camera or a socket: the model's load options, the
/// batcher, every enabled camera's schedule and its checked ingest
/// settings. [`Daemon::start_with`] runs it first; `tests/config_agreement.rs`
/// checks that it accepts exactly what `validate` accepts.
pub fn preflight(config: &Config) -> Result<LoadOptions, DaemonError> {
    let options = load_options(config);
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
    let choice = crate::runtime::choose_backend(m.backend, rt.providers)?;
    if choice.backend != Backend::TensorRt {
        return Ok(None);
    }
    let notifier = options.notifier.clone();
    let manifest = startup_check(
        &config.engine_spec()?,
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
    run_id: Arc<str>,
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
        let mqtt = sink.publisher().map(|p| Arc::downgrade(&p));
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
        // Sequence numbers start at 1 in every run; the run id tells runs apart.
        let run_id: Arc<str> = crate::publish::new_run_id()
            .map_err(|e| DaemonError::RunId(e.to_string()))?
            .into();
        let inference_ctx = InferenceContext {
            node: config.node.id.clone(),
            run_id: run_id.clone(),
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
        tracing::info!(model = %info.model_id, backend = %info.backend, variant = %info.variant, run_id = %run_id, "Model ready.");

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
        let (overlay, revision) =
            super::control::starting_revision(&config, options.config_path.is_some());
        tracing::info!(
            revision,
            overrides = overlay.cameras.len(),
            "Configuration revision in effect."
        );
        crate::sync::lock(&stats).config_revision = revision;
        let mut coordinator = Coordinator {
            revision,
            overlay,
            prompts: crate::config::PromptCheck::load(&config.model.dir),
            published_states: BTreeMap::new(),
            published_discovery: Vec::new(),
            publisher: mqtt.clone().unwrap_or_default(),
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
            run_id: run_id.clone(),
            last_status: Instant::now() - STATUS_INTERVAL,
            config_path: options.config_path,
            notifier: notifier.clone(),
            liveness: liveness.clone(),
            config: config.clone(),
            task_errors: BTreeMap::new(),
            detectors: HashMap::new(),
            luma: Vec::new(),
        };
        for camera in config.cameras.iter().filter(|c| c.enabled) {
            coordinator.start_camera(camera, now)?;
        }
        coordinator.publish_control_state();
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
            control: Some(super::ControlHandle { tx: tx.clone() }),
            control_writes: config.control.http,
        };
        let http = match config.http.listen {
            None => None,
            Some(addr) => Some(HttpServer::start(addr, http_token, Arc::new(view.clone()))?),
        };
        if config.control.mqtt.enabled {
            if let Some(publisher) = mqtt.as_ref().and_then(std::sync::Weak::upgrade) {
                super::mqtt_control::start(
                    &publisher,
                    config.control.mqtt.clone(),
                    super::ControlHandle { tx: tx.clone() },
                )
                .map_err(|source| DaemonError::Thread {
                    thread: "control-mqtt",
                    source,
                })?;
            }
        }
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
            run_id,
            coordinator: Some(handle),
        })
    }

    /// This run's id, as results and camera statuses carry it.
    pub fn run_id(&self) -> &str {
        &self.run_id
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

    /// Runtime control of this daemon (what the HTTP API and MQTT commands
    /// use).
    pub fn controller(&self) -> super::ControlHandle {
        super::ControlHandle {
            tx: self.tx.clone(),
        }
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

pub(super) struct ModelInfo {
    pub(super) model_id: String,
    pub(super) backend: String,
    pub(super) variant: String,
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
