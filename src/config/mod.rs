//! The configuration file: TOML in, a checked [`Config`] out.
//!
//! Raw input (the file, then `FLORENCE_EDGE__SECTION__KEY` environment
//! overrides, merged by the `config` crate) is compiled into typed settings
//! the way Vector does it: every problem is collected, each naming the file
//! (or environment variable), the key path such as
//! `cameras[2].tasks[0].every`, what is wrong and what is allowed. Nothing
//! here opens a camera, a model or a socket; [`Config::check_files`] is the
//! one optional look at the disk beyond the file itself.

mod compile;
mod diff;
mod plan;
mod print;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::schedule::{Region, Task, TaskArgument, TaskInput, TaskSchedule, UnknownTask};
pub use diff::{diff, CameraChange, ConfigDiff};
pub use plan::{plan, plan_with, Plan, PromptCheck};

/// Environment variables starting with this, then `__SECTION__KEY`, override
/// the file (`FLORENCE_EDGE__MQTT__URL`).
pub const ENV_PREFIX: &str = "FLORENCE_EDGE";

pub use crate::settings::{redact_url, ConfigError, PasswordSource, Secret};

/// The whole, checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub file: PathBuf,
    pub node: NodeConfig,
    pub model: ModelConfig,
    pub mqtt: crate::publish::MqttSettings,
    pub http: HttpConfig,
    pub control: ControlConfig,
    /// `[homeassistant]`: MQTT discovery (docs/HOME_ASSISTANT.md).
    pub homeassistant: crate::publish::homeassistant::HomeAssistantSettings,
    /// In file order, enabled or not.
    pub cameras: Vec<CameraConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Names this node in MQTT topics; `[A-Za-z0-9_-]`.
    pub id: String,
}

pub use crate::florence2::Decoding;
pub use crate::florence2::{DecoderLayout, Strategy, Variant};
pub use crate::runtime::Backend;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The model directory: `[model] dir`, or for a Hub model the verified
    /// snapshot in the store (its repository folder while there is none).
    pub dir: PathBuf,
    /// `[model] id`: a Hub model kept in a store (docs/MODELS.md).
    pub hub: Option<HubModel>,
    pub backend: Backend,
    /// The graphs' file variant (`fp16` loads `*_fp16.onnx`); `None`: the
    /// fp32 files.
    pub precision: Option<Variant>,
    pub decoder: DecoderLayout,
    /// `None`: the engine cache under the state directory.
    pub engines_dir: Option<PathBuf>,
    /// Build missing TensorRT engines at start (minutes on a Jetson) instead
    /// of refusing to start until `florence-edge build-engines` ran.
    pub build_engines_at_start: bool,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Intra-op threads for ONNX Runtime on the CPU; 0 lets it decide.
    pub threads: usize,
    /// A batch running longer than this means the inference is wedged:
    /// `/healthz` fails and the systemd watchdog is no longer fed.
    pub batch_timeout: Duration,
    /// `libonnxruntime.so` to load instead of the one found by the loader.
    pub ort_library: Option<PathBuf>,
    /// GPU backends: device memory each ONNX Runtime session's arena (and
    /// TensorRT's builder workspace) may take, in MiB; `None`: no limit.
    pub gpu_memory_limit_mb: Option<usize>,
    pub decoding: Decoding,
}

/// `[model] id = "org/name"` with `revision`, `cache_dir` and `download`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    pub model: crate::hub::ModelRef,
    /// The store (a Hugging Face cache directory).
    pub cache_dir: PathBuf,
    /// Pull a missing model at start instead of refusing to start.
    pub download: bool,
}

impl ModelConfig {
    /// The files `run` opens: the precision variant and decoder layout.
    pub fn selection(&self) -> crate::hub::Selection {
        crate::hub::Selection {
            variant: self.precision.clone().unwrap_or_else(Variant::fp32),
            layout: self.decoder,
        }
    }

    /// The graphs' file variant in effect: `precision`, or the fp32 files.
    pub fn variant_name(&self) -> &str {
        self.precision.as_ref().map_or("fp32", |p| p.name())
    }

    /// TensorRT builds FP16 kernels unless fp32 is asked for explicitly
    /// (the fp32 graphs are the default files, not a request for fp32
    /// engines).
    pub fn tensorrt_fp16(&self) -> bool {
        self.precision.as_ref().is_none_or(|p| p.name() != "fp32")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// `None` when `enabled = false`: no metrics or health endpoint.
    pub listen: Option<SocketAddr>,
    pub bearer_token_file: Option<PathBuf>,
}

/// `[control]`: changes at run time (docs/CONTROL.md).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    /// Accept changes on the HTTP endpoint (`PUT /api/cameras/…`); reads
    /// (`GET /api/config`) are always served.
    pub http: bool,
    /// Where runtime changes persist; laid over the file at every start
    /// and reload.
    pub overrides_file: PathBuf,
    /// `mqtt`, `mqtt_allow`, `max_command_bytes`: commands on MQTT topics.
    pub mqtt: crate::control::mqtt::CommandSettings,
}

/// `control.overrides_file` when unset: under systemd's
/// `StateDirectory=florence-edge`.
pub const DEFAULT_OVERRIDES_FILE: &str = "/var/lib/florence-edge/overrides.json";

#[derive(Clone, Debug, PartialEq)]
pub struct CameraConfig {
    /// `[A-Za-z0-9_-]`, unique; used in MQTT topics.
    pub id: String,
    pub enabled: bool,
    /// The stream settings, as the ingest stage defines them; a change
    /// restarts the camera. `analysis_fps` is set from the tasks.
    pub stream: crate::ingest::CameraSettings,
    /// `motion`: the change detector `when = "changed"` tasks wait on.
    pub motion: crate::scene::motion::ChangeSettings,
    /// `privacy_masks`: filled black in every frame before anything reads
    /// it (the detector, the model, snapshots).
    pub privacy_masks: Vec<crate::scene::zone::Polygon>,
    /// Never empty.
    pub tasks: Vec<TaskSchedule>,
}

impl HttpConfig {
    /// The bearer token: the first line of `bearer_token_file`, trimmed.
    /// The one reader of that file, for `validate` and the daemon.
    pub fn read_bearer_token(&self) -> Result<Option<Secret>, String> {
        let Some(path) = &self.bearer_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(format!(
                "{} is empty; it must hold the token on its first line",
                path.display()
            ));
        }
        Ok(Some(Secret::new(token)))
    }
}

impl CameraConfig {
    /// Frames per second the camera's tasks need at most: the ingest stage
    /// can drop the rest before decoding work is spent on them.
    pub fn analysis_fps(&self) -> Option<f64> {
        self.stream.analysis_fps
    }
}

impl Config {
    /// The enabled cameras, by id.
    pub fn enabled_cameras(&self) -> BTreeMap<&str, &CameraConfig> {
        self.cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| (c.id.as_str(), c))
            .collect()
    }

    /// The task schedule of every enabled camera, in the scheduler's terms.
    pub fn schedules(&self) -> Vec<(Arc<str>, Vec<TaskSchedule>)> {
        self.cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| (Arc::from(c.id.as_str()), c.tasks.clone()))
            .collect()
    }
}

/// Reads `path`, applies `FLORENCE_EDGE__…` overrides from the process
/// environment, and checks everything.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with the environment given explicitly (tests, reloads that must
/// see the environment the daemon started with).
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::Unreadable {
            file: file.clone(),
            reason: e.to_string(),
        }]
    })?;
    let env: Vec<(String, String)> = env.into_iter().collect();
    // A file that is not TOML is reported by the compile, as a syntax error.
    let Ok(root) = toml::from_str::<toml::Table>(&text) else {
        return compile::compile(path, &text, env, hostname().as_deref());
    };
    let overrides = overrides_file(&root, &env);
    let overlay = crate::control::overlay::Overlay::load(&overrides).map_err(|e| {
        vec![ConfigError::Invalid {
            origin: file.clone(),
            key: "control.overrides_file".into(),
            problem: e.to_string(),
            allowed: None,
        }]
    })?;
    compile_layered(path, root, &overlay, env)
}

/// The file's tree with `overlay` laid over it, compiled as [`load`] does:
/// the one way runtime changes (`control`) are checked.
pub fn compile_layered(
    path: &Path,
    mut root: toml::Table,
    overlay: &crate::control::overlay::Overlay,
    env: Vec<(String, String)>,
) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    overlay.apply(&mut root).map_err(|p| {
        vec![ConfigError::Invalid {
            origin: file.clone(),
            key: p.key,
            problem: p.reason,
            allowed: None,
        }]
    })?;
    let text = toml::to_string(&root).map_err(|e| {
        vec![ConfigError::Syntax {
            file: file.clone(),
            reason: e.to_string(),
        }]
    })?;
    compile::compile(path, &text, env, hostname().as_deref())
}

/// `control.overrides_file`: the environment's override, the file's key,
/// or [`DEFAULT_OVERRIDES_FILE`]. Read before the compile, since the overlay
/// it names is part of what is compiled (a key of the wrong type is
/// reported by the compile).
pub fn overrides_file(root: &toml::Table, env: &[(String, String)]) -> PathBuf {
    let from_env = env
        .iter()
        .find(|(k, _)| k == &format!("{ENV_PREFIX}__CONTROL__OVERRIDES_FILE"))
        .map(|(_, v)| v.as_str());
    let from_file = root
        .get("control")
        .and_then(|c| c.get("overrides_file"))
        .and_then(toml::Value::as_str);
    PathBuf::from(from_env.or(from_file).unwrap_or(DEFAULT_OVERRIDES_FILE))
}

/// The `FLORENCE_EDGE__…` variables of the process environment.
pub fn config_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect()
}

/// Compiles configuration text that did not come from disk; `path` only
/// names it in errors. `hostname` is the default node id.
pub fn compile_str(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    hostname: Option<&str>,
) -> Result<Config, Vec<ConfigError>> {
    compile::compile(path, text, env, hostname)
}

/// Every problem with the file, one line each —
/// `file: key: problem (allowed: …)` — empty when it is valid.
/// `with_files` also runs [`plan`], exactly as `run` does before it opens
/// a camera or a socket.
pub fn validate(path: &Path, with_files: bool) -> Vec<String> {
    let checked = load(path).and_then(|config| {
        if with_files {
            plan(config).map(drop)
        } else {
            Ok(())
        }
    });
    match checked {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The host name, the default node id.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests;
