//! The coordinator thread: owns the scheduler, the batcher and the newest
//! frame of each camera, starts and stops cameras, and hands a batch to the
//! model only when the model is idle.

use super::*;
use crate::publish::NotRunning;

pub(super) struct Coordinator {
    /// The configuration revision in effect (`control::overlay`).
    pub(super) revision: u64,
    /// The runtime overlay in effect, as last persisted.
    pub(super) overlay: crate::control::overlay::Overlay,
    /// The model's prompt limits, loaded once for planning runtime changes.
    pub(super) prompts: Option<crate::config::PromptCheck>,
    /// The MQTT publisher, when results go to MQTT (the sink owns it).
    pub(super) publisher: std::sync::Weak<crate::publish::Publisher>,
    /// The Home Assistant discovery documents last published.
    pub(super) published_discovery: Vec<(String, serde_json::Value)>,
    /// The task states last published, by (camera, task name).
    pub(super) published_states:
        std::collections::BTreeMap<(String, String), crate::control::TaskState>,
    pub(super) scheduler: Scheduler,
    pub(super) batcher: Batcher<super::JobFrame>,
    pub(super) latest: HashMap<Arc<str>, Arc<Frame>>,
    pub(super) cameras: BTreeMap<String, CameraHandle>,
    pub(super) registry: CameraRegistry,
    pub(super) frames_tx: SyncSender<Frame>,
    pub(super) events_tx: Sender<CameraEvent>,
    pub(super) batch_tx: Option<SyncSender<Vec<FrameJob>>>,
    pub(super) inference: Option<JoinHandle<()>>,
    pub(super) model_busy: bool,
    pub(super) stats: Arc<Mutex<DaemonStats>>,
    pub(super) sink: SharedSink,
    pub(super) node: String,
    /// This run's id, in every camera status.
    pub(super) run_id: Arc<str>,
    pub(super) last_status: Instant,
    pub(super) config_path: Option<PathBuf>,
    pub(super) notifier: Arc<Notifier>,
    pub(super) liveness: Arc<Liveness>,
    /// The configuration in effect (sections a reload cannot change keep
    /// their running values).
    pub(super) config: Config,
    /// The error of each task paused after failures, until it succeeds:
    /// its camera's status carries it as `last_error`.
    pub(super) task_errors: BTreeMap<Arc<JobKey>, String>,
    /// The change detector of each camera with a `when = "changed"` task.
    pub(super) detectors: HashMap<Arc<str>, crate::scene::motion::ChangeDetector>,
    /// Scratch space: the luma of an RGB frame, for its detector.
    pub(super) luma: Vec<u8>,
}

impl Coordinator {
    pub(super) fn publish_status(&self, status: &CameraStatus) {
        let mut payload = result::status_payload(&self.node, &self.run_id, status);
        // While the stream is up, a paused task's error is the news; a
        // stream that is down says why itself.
        if status.state == ingest::CameraState::Streaming {
            if let Some(error) = self
                .task_errors
                .iter()
                .find(|(key, _)| *key.camera == *status.camera && self.scheduler.has_task(key))
                .map(|(_, error)| error)
            {
                payload.last_error = Some(error.clone());
            }
        }
        self.send_status(&payload);
    }

    fn send_status(&self, payload: &crate::publish::CameraStatusPayload) {
        let mut sink = crate::sync::lock(&self.sink);
        sink.camera_status(payload);
    }

    /// Publishes the last status of a camera this node no longer runs, so
    /// the retained topic does not go on saying `streaming`.
    fn publish_final(&self, status: &CameraStatus, why: NotRunning) {
        self.send_status(&result::final_status_payload(
            &self.node,
            &self.run_id,
            status,
            why,
        ));
    }

    /// A camera that a reload removed (or disabled): stopped, forgotten,
    /// and its status set to `removed`.
    pub(super) fn remove_camera(&mut self, id: &str) {
        self.detectors.remove(id);
        let reader = self.cameras.get(id).map(CameraHandle::status_reader);
        self.stop_camera(id, true);
        if let Some(reader) = reader {
            self.publish_final(&reader.status(), NotRunning::Removed);
        }
    }

    /// Starts a camera's pipeline and schedules its tasks.
    pub(super) fn start_camera(
        &mut self,
        camera: &CameraConfig,
        now: Instant,
    ) -> Result<(), DaemonError> {
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

    /// A finished batch's jobs: a failure pauses its task (longer after
    /// each failure in a row) and drops its waiting job, so it does not
    /// fail again next to other cameras' jobs every period; a success ends
    /// the pause. Logged and counted once per change.
    fn job_outcomes(&mut self, outcomes: Vec<JobOutcome>, now: Instant) {
        use crate::schedule::BackoffChange;
        for outcome in outcomes {
            let key = outcome.key;
            let camera = key.camera.to_string();
            let task = key.task.token();
            let change = match &outcome.error {
                Some(_) => self.scheduler.job_failed(&key, now),
                None => self.scheduler.job_succeeded(&key),
            };
            match (change, outcome.error) {
                (Some(BackoffChange::BackedOff { failures, retry_in }), Some(error)) => {
                    let dropped = self.batcher.remove_key(&key).is_some();
                    tracing::warn!(
                        camera,
                        task,
                        failures,
                        retry_in_s = retry_in.as_secs_f64(),
                        waiting_job_dropped = dropped,
                        error = %error,
                        "Job failed; its task is paused, longer after each failure in a row."
                    );
                    {
                        let mut st = crate::sync::lock(&self.stats);
                        *st.task_backoffs
                            .entry((camera.clone(), task.to_string()))
                            .or_insert(0) += 1;
                    }
                    self.task_errors
                        .insert(key, format!("task {task}: {error}"));
                    self.publish_camera_status(&camera);
                }
                (Some(BackoffChange::Recovered { failures }), None) => {
                    tracing::info!(
                        camera,
                        task,
                        failures,
                        "Task succeeded again after failures; back to its period."
                    );
                    if self.task_errors.remove(&key).is_some() {
                        self.publish_camera_status(&camera);
                    }
                }
                _ => {}
            }
        }
    }

    fn publish_camera_status(&self, camera: &str) {
        if let Some(cam) = self.cameras.get(camera) {
            self.publish_status(&cam.status());
        }
    }

    /// Stops a camera: its pipeline, its schedule, its waiting jobs and its
    /// newest frame. With `forget`, it also leaves the registry.
    pub(super) fn stop_camera(&mut self, id: &str, forget: bool) {
        if let Some(handle) = self.cameras.remove(id) {
            handle.stop();
        }
        self.scheduler.remove_camera(id);
        self.task_errors.retain(|key, _| &*key.camera != id);
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
    pub(super) fn summary(&self) -> String {
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

    pub(super) fn run(mut self, rx: Receiver<Msg>) -> Result<(), DaemonError> {
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
                    let Some(frame) = self.mask_privacy(frame) else {
                        continue;
                    };
                    let camera = frame.camera.clone();
                    let seq = frame.seq;
                    let changes = self.detect_change(&frame);
                    self.latest.insert(camera.clone(), Arc::new(frame));
                    if let Err(e) =
                        self.scheduler
                            .on_frame_changes(&camera, seq, changes, Instant::now())
                    {
                        tracing::debug!(camera = %camera, error = %e, "Frame of an unscheduled camera ignored.");
                    }
                }
                Ok(Msg::Event(event)) => {
                    // The supervisor logged the transition (ingest/supervisor.rs,
                    // the one place camera transitions are logged). An event
                    // queued by a camera that a reload removed since must not
                    // overwrite its `removed`.
                    if self.cameras.contains_key(&event.status.camera) {
                        self.publish_status(&event.status);
                    }
                }
                Ok(Msg::BatchDone { jobs, outcomes }) => {
                    tracing::debug!(jobs, "Batch finished.");
                    self.model_busy = false;
                    self.job_outcomes(outcomes, Instant::now());
                }
                Ok(Msg::Reload) => self.reload(),
                Ok(Msg::Control { request, reply }) => {
                    let answer = self.control(request);
                    // The caller may have given up waiting; nothing to do then.
                    let _ = reply.try_send(answer);
                }
                Ok(Msg::Shutdown(why)) => break why,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break "all senders gone",
            }
            let now = Instant::now();
            if now.duration_since(self.last_status) >= STATUS_INTERVAL {
                self.last_status = now;
                self.record_schedule_counters();
                for cam in self.cameras.values() {
                    self.publish_status(&cam.status());
                }
                self.notifier.status(&self.summary());
            }
            for job in self.scheduler.poll(now) {
                // The scheduler only emits a job once its camera has a frame.
                if let Some(frame) = self.latest.get(&job.key.camera) {
                    let frame = frame.clone();
                    let tagged = super::JobFrame {
                        frame,
                        revision: self.revision,
                    };
                    if let Some(stale) = self.batcher.push(job.with_frame(tagged), now) {
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

    /// The frame with its camera's privacy masks filled black (a copy of
    /// the decoded bytes), before the detector, the model or a snapshot
    /// reads it. A frame whose bytes do not fit its layout is dropped, so
    /// nothing under a mask can pass unmasked.
    fn mask_privacy(&self, frame: Frame) -> Option<Frame> {
        use crate::ingest::PixelFormat;
        use crate::scene::privacy::{fill, Layout};
        let Some(camera) = self
            .config
            .cameras
            .iter()
            .find(|c| *c.id == *frame.camera)
            .filter(|c| !c.privacy_masks.is_empty())
        else {
            return Some(frame);
        };
        let layout = match (frame.format, frame.chroma) {
            (PixelFormat::Rgb, _) => Layout::Rgb {
                stride: frame.stride,
            },
            (PixelFormat::Nv12, Some(uv)) => Layout::Nv12 {
                y_stride: frame.stride,
                uv_offset: uv.offset,
                uv_stride: uv.stride,
            },
            (PixelFormat::Nv12, None) => {
                tracing::warn!(camera = %frame.camera, "NV12 frame without its chroma plane dropped: its privacy masks cannot be applied.");
                return None;
            }
        };
        let mut bytes = frame.data.to_vec();
        if let Err(e) = fill(
            &mut bytes,
            frame.width,
            frame.height,
            layout,
            &camera.privacy_masks,
        ) {
            tracing::warn!(camera = %frame.camera, error = %e, "Frame dropped: its privacy masks cannot be applied.");
            return None;
        }
        Some(Frame {
            data: crate::ingest::FrameData::owned(bytes),
            ..frame
        })
    }

    /// Feeds `frame` to its camera's change detector, when one of the
    /// camera's tasks waits on it; the detector's change count for the
    /// scheduler (`None`: no task of the camera is gated).
    fn detect_change(&mut self, frame: &Frame) -> Option<u64> {
        use crate::ingest::PixelFormat;
        use crate::scene::motion::{ChangeDetector, LumaView};
        let camera = self
            .config
            .cameras
            .iter()
            .find(|c| *c.id == *frame.camera)?;
        let gated = camera
            .tasks
            .iter()
            .any(|t| t.enabled && matches!(t.when, crate::schedule::When::Changed { .. }));
        if !gated {
            self.detectors.remove(&frame.camera);
            return None;
        }
        let detector = match self.detectors.entry(frame.camera.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                // The settings passed the same check in `validate`.
                match ChangeDetector::new(camera.motion.clone()) {
                    Ok(d) => v.insert(d),
                    Err(e) => {
                        tracing::error!(camera = %frame.camera, error = %e, "Change detector refused its settings; the camera's gated tasks run as if every frame changed.");
                        return None;
                    }
                }
            }
        };
        let verdict = match frame.format {
            // NV12: the Y plane comes first, `stride` bytes per row.
            PixelFormat::Nv12 => detector.feed(&LumaView {
                data: &frame.data,
                width: frame.width,
                height: frame.height,
                stride: frame.stride,
            }),
            PixelFormat::Rgb => {
                let (w, h) = rgb_luma_thumbnail(frame, &mut self.luma);
                detector.feed(&LumaView {
                    data: &self.luma,
                    width: w,
                    height: h,
                    stride: w as usize,
                })
            }
        };
        tracing::trace!(camera = %frame.camera, seq = frame.seq, changed = verdict.changed, fraction = verdict.changed_fraction, changes = detector.changes(), "Change detector.");
        Some(detector.changes())
    }

    /// The scheduler's per-task counters into the stats `/metrics` reads.
    pub(super) fn record_schedule_counters(&self) {
        let mut st = crate::sync::lock(&self.stats);
        for (key, c) in self.scheduler.counters() {
            st.unchanged_skipped.insert(
                (key.camera.to_string(), key.task.token().to_string()),
                c.unchanged,
            );
        }
    }

    pub(super) fn record_dispatch(&self, size: usize, waiting: usize) {
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
        self.record_schedule_counters();
    }

    pub(super) fn dispatch(&mut self, batch: Vec<FrameJob>) -> Result<(), DaemonError> {
        let tx = self.batch_tx.as_ref().ok_or(DaemonError::InferenceGone)?;
        tx.send(batch).map_err(|_| DaemonError::InferenceGone)?;
        self.model_busy = true;
        Ok(())
    }

    pub(super) fn shutdown(mut self, rx: Receiver<Msg>) -> Result<(), DaemonError> {
        self.liveness.set_stopping();
        self.notifier
            .stopping("Stopping: cameras stop, the batch in flight finishes.");
        // Each camera's retained status says `offline` before the node's
        // does (the publisher sends statuses before its `offline`).
        for (_, cam) in std::mem::take(&mut self.cameras) {
            let reader = cam.status_reader();
            cam.stop();
            self.publish_final(&reader.status(), NotRunning::Offline);
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

/// Luma of an RGB frame at most 256 pixels wide (nearest samples, BT.601
/// integer weights) into `out`: the change detector averages a grid far
/// coarser than that, so converting every pixel of a 1080p frame would be
/// wasted work. Returns the thumbnail's size.
fn rgb_luma_thumbnail(frame: &Frame, out: &mut Vec<u8>) -> (u32, u32) {
    let (w, h) = (frame.width.max(1), frame.height.max(1));
    let tw = w.min(256);
    let th = (u64::from(h) * u64::from(tw) / u64::from(w)).clamp(1, u64::from(h)) as u32;
    out.clear();
    out.reserve((tw * th) as usize);
    let data: &[u8] = &frame.data;
    for ty in 0..th {
        let y = (u64::from(ty) * u64::from(h) / u64::from(th)) as usize;
        for tx in 0..tw {
            let x = (u64::from(tx) * u64::from(w) / u64::from(tw)) as usize;
            let i = y * frame.stride + x * 3;
            let luma = match data.get(i..i + 3) {
                Some(p) => {
                    (77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2])) >> 8
                }
                None => 0,
            };
            out.push(luma as u8);
        }
    }
    (tw, th)
}
