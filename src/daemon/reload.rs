//! SIGHUP: re-read the configuration and apply what changed, touching
//! nothing else.
//!
//! - An invalid file is rejected as a whole (every problem logged) and the
//!   running configuration keeps running.
//! - Added cameras start, removed (or disabled) cameras stop (their retained
//!   status becomes `removed`), cameras whose stream settings changed restart.
//! - A camera whose tasks alone changed keeps its stream: its schedule is
//!   replaced in place (kept tasks keep their counters and rhythm). Only if
//!   its fastest task changes the frame rate ingest delivers does the
//!   stream restart, since that rate is set when the pipeline is built.
//! - `[node]`, `[model]`, `[mqtt]` and `[http]` need a restart: a change
//!   there is logged and the running values stay in effect.
//!
//! systemd sees `RELOADING=1` and then `READY=1` with a one-line outcome.

use std::time::Instant;

use crate::config::CameraChange;

use super::Coordinator;

impl Coordinator {
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            tracing::warn!("SIGHUP received, but this daemon was not started from a configuration file; nothing to reload.");
            return;
        };
        self.notifier.reloading();
        tracing::info!(file = %path.display(), "Reloading the configuration.");
        // The same checks as `validate` and start-up: the file, then the
        // machine (password files, installed decoders, the model directory).
        let new = match crate::config::load(&path).and_then(crate::config::plan) {
            Ok(plan) => plan.config,
            Err(errors) => {
                for e in &errors {
                    tracing::error!(problem = %e, "Reload rejected.");
                }
                tracing::error!(
                    file = %path.display(),
                    problems = errors.len(),
                    "The new configuration is invalid; the running one stays in effect."
                );
                {
                    let mut st = crate::sync::lock(&self.stats);
                    st.reloads_rejected += 1;
                }
                self.notifier.ready(&format!(
                    "Reload rejected: {} problem(s) in {}; running the previous configuration. {}",
                    errors.len(),
                    path.display(),
                    self.summary()
                ));
                return;
            }
        };
        let outcome = format!("Reloaded: {}", self.apply(new));
        {
            let mut st = crate::sync::lock(&self.stats);
            st.reloads += 1;
        }
        self.bump_revision();
        tracing::info!("{outcome}");
        self.notifier
            .ready(&format!("{outcome} {}", self.summary()));
    }

    /// Applies a checked configuration the way a reload does (see the
    /// module docs) and returns the one-line outcome.
    pub(super) fn apply(&mut self, mut new: crate::config::Config) -> String {
        let diff = self.config.diff(&new);
        // Sections that need a restart keep their running values, so the
        // next reload compares against what really runs.
        for (changed, section) in [
            (diff.node_changed, "node"),
            (diff.model_changed, "model"),
            (diff.mqtt_changed, "mqtt"),
            (diff.http_changed, "http"),
            (diff.control_changed, "control"),
        ] {
            if changed {
                tracing::warn!(
                    section,
                    "[{section}] changed; that takes a restart (systemctl restart florence-edge). The running settings stay."
                );
            }
        }
        new.node = self.config.node.clone();
        new.model = self.config.model.clone();
        new.mqtt = self.config.mqtt.clone();
        new.http = self.config.http.clone();
        new.control = self.config.control.clone();
        new.homeassistant = self.config.homeassistant.clone();

        let now = Instant::now();
        let mut failed = Vec::new();
        let mut kept_old = Vec::new();
        for (id, change) in &diff.cameras {
            let camera = new.cameras.iter().find(|c| c.enabled && &c.id == id);
            let restart = match (change, camera) {
                (CameraChange::Removed, _) | (_, None) => {
                    tracing::info!(camera = %id, "Camera removed by the reload; stopping it.");
                    self.remove_camera(id);
                    continue;
                }
                (CameraChange::Added, Some(_)) => {
                    tracing::info!(camera = %id, "Camera added by the reload; starting it.");
                    false
                }
                (CameraChange::StreamChanged, Some(_)) => {
                    tracing::info!(camera = %id, "Stream settings changed; restarting the camera.");
                    true
                }
                (CameraChange::TasksChanged, Some(camera)) => {
                    // Recreated on the next frame, with the new settings.
                    self.detectors.remove(id.as_str());
                    let old_rate = self
                        .config
                        .cameras
                        .iter()
                        .find(|c| &c.id == id)
                        .and_then(|c| c.analysis_fps());
                    if old_rate == camera.analysis_fps() {
                        match self.scheduler.set_camera(
                            std::sync::Arc::from(id.as_str()),
                            &camera.tasks,
                            now,
                        ) {
                            Ok(()) => {
                                tracing::info!(camera = %id, "Tasks changed; new schedule applied, stream untouched.");
                                {
                                    let mut reg = crate::sync::lock(&self.registry);
                                    if let Some(e) = reg.get_mut(id) {
                                        e.tasks = super::cameras::task_summaries(camera);
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::error!(camera = %id, error = %e, "The new schedule was refused; the old one stays.");
                                kept_old.push(id.clone());
                            }
                        }
                        continue;
                    }
                    tracing::info!(camera = %id, from_fps = ?old_rate, to_fps = ?camera.analysis_fps(), "Tasks changed the analysis frame rate; restarting the stream.");
                    true
                }
            };
            if restart {
                self.stop_camera(id, false);
            }
            if let Some(camera) = camera {
                if let Err(e) = self.start_camera(camera, now) {
                    tracing::error!(camera = %id, error = %e, "Camera could not be started by the reload.");
                    failed.push(id.clone());
                }
            }
        }
        // Cameras that failed to start are not running; the configuration
        // in effect says so, so the next reload tries them again.
        new.cameras.retain(|c| !failed.contains(&c.id));
        for id in &kept_old {
            if let (Some(slot), Some(old)) = (
                new.cameras.iter_mut().find(|c| &c.id == id),
                self.config.cameras.iter().find(|c| &c.id == id),
            ) {
                *slot = old.clone();
            }
        }
        self.config = new;
        {
            let mut st = crate::sync::lock(&self.stats);
            st.reload_camera_failures += failed.len() as u64;
        }
        format!(
            "{} added, {} removed, {} restarted, {} rescheduled{}.",
            diff.with(&CameraChange::Added).len(),
            diff.with(&CameraChange::Removed).len(),
            diff.with(&CameraChange::StreamChanged).len(),
            diff.with(&CameraChange::TasksChanged).len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed to start: {}", failed.join(", "))
            }
        )
    }
}
