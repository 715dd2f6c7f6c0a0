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
mod fields;
pub mod task;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diff::{diff, CameraChange, ConfigDiff};
pub use task::{Region, Task, TaskArgument, TaskInput, UnknownTask};

/// Environment variables starting with this, then `__SECTION__KEY`, override
/// the file (`FLORENCE_EDGE__MQTT__URL`).
pub const ENV_PREFIX: &str = "FLORENCE_EDGE";

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the file: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}: not valid TOML: {reason}")]
    Syntax { file: String, reason: String },
    /// `origin` is the file or `environment variable FLORENCE_EDGE__…`.
    #[error("{origin}: {key}: {problem}{}", allowed_suffix(.allowed))]
    Invalid {
        origin: String,
        key: String,
        problem: String,
        allowed: Option<String>,
    },
}

fn allowed_suffix(allowed: &Option<String>) -> String {
    match allowed {
        Some(allowed) => format!(" (allowed: {allowed})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The key path the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A credential. Debug and Display print `***` so that a `{:?}` of any
/// settings struct can go to a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The credential itself, for the one place that hands it to a library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A password given inline or as a file to read at start (the file keeps it
/// out of the configuration, which is often world-readable or in git).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(Secret),
    File(PathBuf),
}

impl PasswordSource {
    /// The password; a file's trailing newline is not part of it.
    pub fn read(&self) -> std::io::Result<Secret> {
        match self {
            PasswordSource::Inline(secret) => Ok(secret.clone()),
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path)?;
                Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
        }
    }
}

/// `scheme://user:password@host/…` → `scheme://user:***@host/…`, for
/// anything that prints a camera or broker URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_string(),
    }
}

/// The whole, checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub file: PathBuf,
    pub node: NodeConfig,
    pub model: ModelConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    /// In file order, enabled or not.
    pub cameras: Vec<CameraConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Names this node in MQTT topics; `[A-Za-z0-9_-]`.
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// TensorRT if present, else CUDA, else CPU; the daemon logs the choice.
    Auto,
    TensorRt,
    Cuda,
    Cpu,
}

/// Which ONNX variant of the model to load (`onnx/<graph>{suffix}.onnx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    Q4,
    Q4f16,
    Int8,
    Uint8,
    Quantized,
    Bnb4,
}

impl Precision {
    pub const NAMES: [&'static str; 8] = [
        "fp32",
        "fp16",
        "q4",
        "q4f16",
        "int8",
        "uint8",
        "quantized",
        "bnb4",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Q4 => "q4",
            Precision::Q4f16 => "q4f16",
            Precision::Int8 => "int8",
            Precision::Uint8 => "uint8",
            Precision::Quantized => "quantized",
            Precision::Bnb4 => "bnb4",
        }
    }

    /// The file name suffix of the onnx-community export: `""` for fp32,
    /// `"_fp16"`, `"_q4"`, ….
    pub fn file_suffix(self) -> String {
        match self {
            Precision::Fp32 => String::new(),
            other => format!("_{}", other.name()),
        }
    }

    /// TensorRT builds engines from float graphs only.
    pub fn tensorrt_can_build(self) -> bool {
        matches!(self, Precision::Fp32 | Precision::Fp16)
    }
}

/// Which decoder graphs to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderLayout {
    /// `decoder_model` + `decoder_with_past_model`.
    Split,
    /// `decoder_model_merged` (an If node; ONNX Runtime only).
    Merged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodingStrategy {
    Greedy,
    Beam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodingConfig {
    pub strategy: DecodingStrategy,
    /// Used when `strategy` is beam.
    pub num_beams: u32,
    pub max_new_tokens: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub dir: PathBuf,
    pub backend: Backend,
    /// `None`: the backend decides (fp16 on TensorRT and CUDA, fp32 on CPU).
    pub precision: Option<Precision>,
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
    pub decoding: DecodingConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttTls {
    /// CA bundle; `None` uses the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, always both or neither.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// `None`: the spool lives in memory only and a restart loses it.
    pub dir: Option<PathBuf>,
    pub max_messages: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    pub enabled: bool,
    /// At most one snapshot per camera and task this often.
    pub min_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`; never holds credentials.
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<PasswordSource>,
    pub topic_prefix: String,
    pub qos: u8,
    pub keep_alive: Duration,
    pub tls: Option<MqttTls>,
    pub spool: SpoolConfig,
    pub snapshots: SnapshotConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// `None` when `enabled = false`: no metrics or health endpoint.
    pub listen: Option<SocketAddr>,
    pub bearer_token_file: Option<PathBuf>,
}

/// RTSP lower transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Auto,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecoderChoice {
    Auto,
    /// A GStreamer element name, e.g. `nvv4l2decoder`.
    Element(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReconnectConfig {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// Fraction in `[0, 1]` each delay is spread by.
    pub jitter: f64,
    /// Consecutive failures before the camera is `failed`; `None` = forever.
    pub max_attempts: Option<u32>,
}

/// User name and password of a camera, kept apart from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraCredentials {
    pub username: String,
    pub password: Option<PasswordSource>,
}

/// One configured task of a camera.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    pub task: Task,
    pub argument: TaskArgument,
    pub every: Duration,
}

/// The settings that shape a camera's stream; a change restarts it.
#[derive(Clone, PartialEq)]
pub struct StreamConfig {
    /// As written, possibly with `user:password@`; print [`redact_url`] of it.
    pub url: String,
    pub credentials: Option<CameraCredentials>,
    pub transport: Transport,
    pub latency: Duration,
    pub decoder: DecoderChoice,
    pub watchdog: Duration,
    pub startup_timeout: Duration,
    pub reconnect: ReconnectConfig,
    pub keyframe_skipping: bool,
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; a password in the URL must not.
        f.debug_struct("StreamConfig")
            .field("url", &redact_url(&self.url))
            .field("credentials", &self.credentials)
            .field("transport", &self.transport)
            .field("latency", &self.latency)
            .field("decoder", &self.decoder)
            .field("watchdog", &self.watchdog)
            .field("startup_timeout", &self.startup_timeout)
            .field("reconnect", &self.reconnect)
            .field("keyframe_skipping", &self.keyframe_skipping)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CameraConfig {
    /// `[A-Za-z0-9_-]`, unique; used in MQTT topics.
    pub id: String,
    pub enabled: bool,
    pub stream: StreamConfig,
    /// Never empty.
    pub tasks: Vec<TaskConfig>,
}

impl CameraConfig {
    /// Frames per second the camera's tasks need at most: the ingest stage
    /// can drop the rest before decoding work is spent on them.
    pub fn analysis_fps(&self) -> Option<f64> {
        self.tasks
            .iter()
            .map(|t| t.every)
            .min()
            .map(|every| 1.0 / every.as_secs_f64())
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
    pub fn schedules(&self) -> Vec<(Arc<str>, Vec<TaskConfig>)> {
        self.cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| (Arc::from(c.id.as_str()), c.tasks.clone()))
            .collect()
    }

    /// Checks that the files the configuration names exist: the model
    /// directory, password and token files, TLS files. Separate from
    /// [`load`] so that example files validate on any machine; the
    /// `validate` command runs both.
    pub fn check_files(&self) -> Vec<ConfigError> {
        let file = self.file.display().to_string();
        let mut errors = Vec::new();
        let mut need = |key: String, path: &Path, dir: bool| {
            let ok = if dir { path.is_dir() } else { path.is_file() };
            if !ok {
                errors.push(ConfigError::Invalid {
                    origin: file.clone(),
                    key,
                    problem: format!(
                        "{} does not exist or is not a {}",
                        path.display(),
                        if dir { "directory" } else { "file" }
                    ),
                    allowed: None,
                });
            }
        };
        need("model.dir".into(), &self.model.dir, true);
        if let Some(lib) = &self.model.ort_library {
            need("model.ort_library".into(), lib, false);
        }
        if let Some(PasswordSource::File(path)) = &self.mqtt.password {
            need("mqtt.password_file".into(), path, false);
        }
        if let Some(tls) = &self.mqtt.tls {
            if let Some(ca) = &tls.ca_file {
                need("mqtt.tls.ca_file".into(), ca, false);
            }
            if let Some((cert, key)) = &tls.client_auth {
                need("mqtt.tls.cert_file".into(), cert, false);
                need("mqtt.tls.key_file".into(), key, false);
            }
        }
        if let Some(token) = &self.http.bearer_token_file {
            need("http.bearer_token_file".into(), token, false);
        }
        for (i, camera) in self.cameras.iter().enumerate() {
            if let Some(CameraCredentials {
                password: Some(PasswordSource::File(path)),
                ..
            }) = &camera.stream.credentials
            {
                need(format!("cameras[{i}].password_file"), path, false);
            }
        }
        errors
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
    compile::compile(path, &text, env, hostname().as_deref())
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
/// `with_files` also checks that the files it names exist.
pub fn validate(path: &Path, with_files: bool) -> Vec<String> {
    match load(path) {
        Ok(config) if with_files => config
            .check_files()
            .iter()
            .map(ToString::to_string)
            .collect(),
        Ok(_) => Vec::new(),
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
