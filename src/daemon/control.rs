//! Runtime control in the coordinator: a [`ControlRequest`] from HTTP or
//! MQTT becomes a new overlay, the file plus that overlay is compiled and
//! planned as `validate` does, and the result is applied as a reload
//! applies a file ([`Coordinator::apply`]). Refused changes leave nothing
//! behind; applied ones are persisted before they are applied and raise the
//! configuration revision.
//!
//! Requests are handled one at a time on the coordinator thread, in the
//! order they arrive, so two changes never interleave.

use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use serde_json::json;

use super::{Coordinator, Msg};
use crate::config::{Config, ConfigError};
use crate::control::overlay::{self, Overlay};
use crate::control::{task_names, ControlReply, ControlRequest, Controller, Problem, TaskState};

/// How long a caller waits for the coordinator to apply a change (a camera
/// start preflights its elements; the model is never waited for).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// The overlay and revision a start runs under: the stored revision, one
/// higher when the effective configuration differs from the one it was
/// stored with (the file changed between runs). A configuration not read
/// from a file runs at revision 1 with no overlay.
pub(super) fn starting_revision(config: &Config, from_file: bool) -> (Overlay, u64) {
    let mut overlay = Overlay {
        version: overlay::OVERLAY_VERSION,
        ..Overlay::default()
    };
    if !from_file {
        return (overlay, 1);
    }
    let path = &config.control.overrides_file;
    match Overlay::load(path) {
        Ok(stored) => overlay = stored,
        // `config::load` read it a moment ago; if it went bad since, run
        // without it rather than not at all, and say so.
        Err(e) => {
            tracing::error!(error = %e, "Runtime overrides not read; running the file alone.")
        }
    }
    let digest = overlay::digest(&config.effective_toml(), &[]);
    if overlay.digest != digest {
        overlay.revision += 1;
        overlay.digest = digest;
        if let Err(e) = overlay.save(path) {
            tracing::warn!(error = %e, "Cannot store the configuration revision; runtime changes will be refused until the state directory is writable.");
        }
    }
    let revision = overlay.revision.max(1);
    (overlay, revision)
}

/// The handle HTTP and MQTT use: sends the request to the coordinator and
/// waits for its answer.
#[derive(Clone)]
pub struct ControlHandle {
    pub(super) tx: Sender<Msg>,
}

impl Controller for ControlHandle {
    fn control(&self, request: ControlRequest) -> ControlReply {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        if self
            .tx
            .send(Msg::Control {
                request,
                reply: reply_tx,
            })
            .is_err()
        {
            return ControlReply::error(503, "the daemon is stopping");
        }
        reply_rx
            .recv_timeout(CONTROL_TIMEOUT)
            .unwrap_or_else(|_| {
                ControlReply::error(
                    503,
                    format!(
                        "the daemon did not answer within {}s; the change may still be applied, check GET /api/config",
                        CONTROL_TIMEOUT.as_secs()
                    ),
                )
            })
    }
}

impl Coordinator {
    /// Answers one control request (see the module docs).
    pub(super) fn control(&mut self, request: ControlRequest) -> ControlReply {
        let began = std::time::Instant::now();
        let reply = self.control_inner(&request);
        let elapsed_ms = began.elapsed().as_secs_f64() * 1e3;
        {
            let mut st = crate::sync::lock(&self.stats);
            if !request.is_change() {
            } else if reply.is_ok() {
                st.control_changes += 1;
            } else {
                st.control_refused += 1;
            }
        }
        if request.is_change() {
            if reply.is_ok() {
                tracing::info!(
                    ?request,
                    revision = self.revision,
                    elapsed_ms,
                    "Runtime change applied."
                );
            } else {
                tracing::warn!(?request, status = reply.status, answer = %reply.body, elapsed_ms, "Runtime change refused.");
            }
        }
        reply
    }

    fn control_inner(&mut self, request: &ControlRequest) -> ControlReply {
        match request {
            ControlRequest::Config => {
                return ControlReply::ok(json!({
                    "revision": self.revision,
                    "overrides": self.overlay.cameras.iter().map(|c| &c.id).collect::<Vec<_>>(),
                    "config": self.config.effective_json(),
                }))
            }
            ControlRequest::GetCamera { camera } => {
                return match self.config.camera_json(camera) {
                    Some(c) => ControlReply::ok(json!({
                        "revision": self.revision,
                        "overridden": self.overlay.cameras.iter().any(|o| &o.id == camera),
                        "running": self.cameras.contains_key(camera.as_str()),
                        "camera": c,
                    })),
                    None => ControlReply::error(
                        404,
                        format!("no camera {camera:?} in the configuration"),
                    ),
                }
            }
            _ => {}
        }
        let Some(path) = self.config_path.clone() else {
            return ControlReply::error(
                409,
                "this daemon was not started from a configuration file; runtime changes need one (florence-edge run --config FILE)",
            );
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                return ControlReply::error(409, format!("cannot read {}: {e}", path.display()))
            }
        };
        let file_root: toml::Table = match toml::from_str(&text) {
            Ok(root) => root,
            Err(e) => {
                return ControlReply::error(
                    409,
                    format!(
                        "{} is not valid TOML now ({e}); fix the file first",
                        path.display()
                    ),
                )
            }
        };
        let mut effective = file_root.clone();
        if let Err(p) = self.overlay.apply(&mut effective) {
            return ControlReply::problems(vec![p]);
        }
        let tasks = request
            .camera()
            .and_then(|id| self.config.cameras.iter().find(|c| c.id == id))
            .map(|c| c.tasks.as_slice());
        let mut next = match self.overlay.with_change(request, &effective, tasks) {
            Ok(next) => next,
            Err(reply) => return reply,
        };
        next.prune(&file_root);
        let env = crate::config::config_env();
        let index = request.camera().and_then(|id| {
            let mut layered = file_root.clone();
            next.apply(&mut layered).ok()?;
            layered
                .get("cameras")?
                .as_array()?
                .iter()
                .position(|c| c.get("id").and_then(toml::Value::as_str) == Some(id))
        });
        let planned = crate::config::compile_layered(&path, file_root, &next, env)
            .and_then(|config| crate::config::plan_with(config, self.prompts.as_ref()));
        let new = match planned {
            Ok(plan) => plan.config,
            Err(errors) => return ControlReply::problems(problems(&errors, index)),
        };
        let digest = overlay::digest(&new.effective_toml(), &[]);
        if digest == self.overlay.digest && next.cameras == self.overlay.cameras {
            return ControlReply::ok(json!({
                "revision": self.revision,
                "changed": false,
                "camera": request.camera().and_then(|id| self.config.camera_json(id)),
            }));
        }
        next.revision = self.revision + 1;
        next.digest = digest;
        if let Err(e) = next.save(&new.control.overrides_file) {
            return ControlReply::error(
                500,
                format!("{e}; the change was not applied (it could not be kept across a restart)"),
            );
        }
        self.overlay = next;
        self.revision += 1;
        crate::sync::lock(&self.stats).config_revision = self.revision;
        let outcome = self.apply(new);
        self.publish_control_state();
        ControlReply::ok(json!({
            "revision": self.revision,
            "changed": true,
            "applied": outcome,
            "camera": request.camera().and_then(|id| self.config.camera_json(id)),
        }))
    }

    /// After a reload: a new revision when the configuration in effect
    /// changed, persisted with the overlay.
    pub(super) fn bump_revision(&mut self) {
        let digest = overlay::digest(&self.config.effective_toml(), &[]);
        if digest == self.overlay.digest {
            return;
        }
        self.revision += 1;
        crate::sync::lock(&self.stats).config_revision = self.revision;
        self.overlay.revision = self.revision;
        self.overlay.digest = digest;
        if self.config_path.is_some() {
            if let Err(e) = self.overlay.save(&self.config.control.overrides_file) {
                tracing::warn!(error = %e, "Cannot store the configuration revision.");
            }
        }
        self.publish_control_state();
    }

    /// The retained state of every configured task (`…/{task}/state`);
    /// tasks and cameras gone since the last call get an empty retained
    /// message, which clears them.
    pub(super) fn publish_control_state(&mut self) {
        let mut current = std::collections::BTreeMap::new();
        for camera in self.config.cameras.iter().filter(|c| c.enabled) {
            for (task, name) in camera.tasks.iter().zip(task_names(&camera.tasks)) {
                let state = TaskState {
                    schema_version: 1,
                    node: self.node.clone(),
                    camera: camera.id.clone(),
                    name: name.clone(),
                    task: task.task.token().to_string(),
                    enabled: task.enabled,
                    every: humantime::format_duration(task.every).to_string(),
                    text: task.argument.text().map(str::to_string),
                    region: match &task.argument {
                        crate::schedule::TaskArgument::Region(r) => Some([r.x1, r.y1, r.x2, r.y2]),
                        _ => None,
                    },
                    revision: self.revision,
                };
                current.insert((camera.id.clone(), name), state);
            }
        }
        if let Some(publisher) = self.publisher.upgrade() {
            let topics = publisher.topics().clone();
            let send = |camera: &str, name: &str, payload: Vec<u8>| {
                let sent = topics
                    .task_state(camera, name)
                    .map_err(crate::publish::PublishError::from)
                    .and_then(|topic| publisher.publish_retained(topic, payload));
                if let Err(e) = sent {
                    tracing::warn!(camera, task = name, error = %e, "Task state not published.");
                }
            };
            for key in self.published_states.keys() {
                if !current.contains_key(key) {
                    send(&key.0, &key.1, Vec::new());
                }
            }
            for ((camera, name), state) in &current {
                if self.published_states.get(&(camera.clone(), name.clone())) != Some(state) {
                    match serde_json::to_vec(state) {
                        Ok(json) => send(camera, name, json),
                        Err(e) => tracing::warn!(error = %e, "Task state not serialized."),
                    }
                }
            }
        }
        self.published_states = current;
        self.publish_discovery();
    }

    /// Home Assistant discovery (`[homeassistant] enabled`): the documents
    /// of every enabled camera's entities, retained; those of removed
    /// cameras and tasks cleared with an empty retained message. Only
    /// documents that changed are sent again.
    fn publish_discovery(&mut self) {
        use crate::publish::homeassistant::{discovery, removed, HaCamera, HaTask};
        let Some(publisher) = self.publisher.upgrade() else {
            return;
        };
        let cameras: Vec<HaCamera> = self
            .config
            .cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| HaCamera {
                id: c.id.clone(),
                tasks: c
                    .tasks
                    .iter()
                    .zip(task_names(&c.tasks))
                    .map(|(t, name)| HaTask {
                        name,
                        task: t.task,
                        text: t.argument.text().map(str::to_string),
                        enabled: t.enabled,
                    })
                    .collect(),
            })
            .collect();
        let docs = discovery(
            &self.config.homeassistant,
            publisher.topics(),
            env!("CARGO_PKG_VERSION"),
            &cameras,
            self.config.mqtt.snapshots.enabled,
        );
        let send = |topic: String, payload: Vec<u8>| {
            if let Err(e) = publisher.publish_retained(topic.clone(), payload) {
                tracing::warn!(%topic, error = %e, "Home Assistant discovery not published.");
            }
        };
        for topic in removed(&self.published_discovery, &docs) {
            send(topic, Vec::new());
        }
        for (topic, doc) in &docs {
            if self
                .published_discovery
                .iter()
                .any(|(t, d)| t == topic && d == doc)
            {
                continue;
            }
            match serde_json::to_vec(doc) {
                Ok(json) => send(topic.clone(), json),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "Home Assistant discovery not serialized.")
                }
            }
        }
        self.published_discovery = docs;
    }
}

/// The compile's errors as control problems; keys of the camera the change
/// is about (`cameras[index]`) are given relative to it (`tasks[0].every`).
fn problems(errors: &[ConfigError], index: Option<usize>) -> Vec<Problem> {
    let prefix = index.map(|i| format!("cameras[{i}]."));
    errors
        .iter()
        .map(|e| match e {
            ConfigError::Invalid {
                key,
                problem,
                allowed,
                ..
            } => Problem {
                key: prefix
                    .as_deref()
                    .and_then(|p| key.strip_prefix(p))
                    .unwrap_or(key)
                    .to_string(),
                reason: match allowed {
                    Some(a) => format!("{problem} (allowed: {a})"),
                    None => problem.clone(),
                },
            },
            other => Problem {
                key: String::new(),
                reason: other.to_string(),
            },
        })
        .collect()
}
