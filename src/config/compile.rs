//! Raw tree → [`Config`]: one function per section, each reading its keys
//! through [`Fields`] so that every problem is reported, not just the first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::config::{FileFormat, Source, Value, ValueKind};

use super::fields::{
    boolean, duration, duration_at_least, float_in, non_empty_string, one_of, secret_string,
    string, uint_in, Errors, Fields, Problem,
};
use super::task::{Region, Task, TaskArgument, TaskInput};
use super::{
    redact_url, Backend, CameraConfig, CameraCredentials, Config, ConfigError, DecoderChoice,
    DecoderLayout, DecodingConfig, DecodingStrategy, HttpConfig, ModelConfig, MqttConfig, MqttTls,
    NodeConfig, PasswordSource, Precision, ReconnectConfig, Secret, SnapshotConfig, SpoolConfig,
    StreamConfig, TaskConfig, Transport, ENV_PREFIX,
};

/// `model.batch_timeout` when unset: generous for a CPU running the large
/// model with beam search; a GPU batch takes a fraction of a second.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Identifiers that end up in MQTT topics and metric labels.
const ID_ALLOWED: &str = "1 to 64 characters of A-Z a-z 0-9 _ -";

/// Camera URL schemes the ingest stage can open.
const CAMERA_SCHEMES: &[&str] = &[
    "rtsp", "rtsps", "rtspt", "file", "http", "https", "v4l2", "test", "csi",
];

/// Schemes whose cameras take a user name and password.
const CREDENTIAL_SCHEMES: &[&str] = &["rtsp", "rtsps", "rtspt"];

/// Longest free-text task input; the prompt has to fit the encoder.
const MAX_TEXT_CHARS: usize = 1000;

pub(super) fn compile(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    hostname: Option<&str>,
) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let mut root = Value::new(None, ValueKind::Table(Default::default()));
    ::config::File::from_str(text, FileFormat::Toml)
        .collect_to(&mut root)
        .map_err(|e| {
            vec![ConfigError::Syntax {
                file: file.clone(),
                reason: e.to_string(),
            }]
        })?;
    let prefix = format!("{ENV_PREFIX}__");
    let mut env_errors = Vec::new();
    let overrides: ::config::Map<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .filter(|(name, _)| match env_key_problem(&name[prefix.len()..]) {
            None => true,
            Some(problem) => {
                env_errors.push(ConfigError::Invalid {
                    origin: format!("environment variable {name}"),
                    key: name[prefix.len()..].to_ascii_lowercase().replace("__", "."),
                    problem: problem.into(),
                    allowed: Some(format!(
                        "{prefix}<SECTION>__<KEY> for a key of node, model, mqtt or http"
                    )),
                });
                false
            }
        })
        .collect();
    if !overrides.is_empty() {
        ::config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(overrides))
            .collect_to(&mut root)
            .map_err(|e| {
                vec![ConfigError::Syntax {
                    file: "environment".into(),
                    reason: e.to_string(),
                }]
            })?;
    }

    let mut errors = Errors::new(&file, ENV_PREFIX);
    errors.list = env_errors;
    let config = Fields::of(root, "", &mut errors)
        .and_then(|root| compile_root(path, root, hostname, &mut errors));
    match config {
        Some(config) if errors.list.is_empty() => Ok(config),
        _ => Err(errors.list),
    }
}

/// Why an environment variable (without the prefix) cannot override a key:
/// cameras are an array, which `SECTION__KEY` paths cannot address.
fn env_key_problem(rest: &str) -> Option<&'static str> {
    let segments: Vec<&str> = rest.split("__").collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Some("is not a SECTION__KEY path");
    }
    if segments
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("cameras"))
    {
        return Some("cameras cannot be set from the environment");
    }
    if segments.len() < 2 {
        return Some("names a whole section");
    }
    None
}

fn compile_root(
    path: &Path,
    mut root: Fields,
    hostname: Option<&str>,
    errors: &mut Errors,
) -> Option<Config> {
    let node = root
        .table("node", errors)
        .map(|f| node(f, hostname, errors));
    let model = root.table("model", errors).map(|f| model(f, errors));
    let node_id = node.clone().flatten().map(|n| n.id);
    let mqtt = root
        .table("mqtt", errors)
        .map(|f| mqtt(f, node_id.as_deref(), errors));
    let http = root.table("http", errors).map(|f| http(f, errors));
    let cameras = cameras(&mut root, errors);
    root.finish(errors);
    Some(Config {
        file: path.to_path_buf(),
        node: node??,
        model: model??,
        mqtt: mqtt??,
        http: http??,
        cameras: cameras?,
    })
}

fn identifier(value: &Value) -> Result<String, Problem> {
    let id = string(value).map_err(|p| Problem::new(p.problem, ID_ALLOWED))?;
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Problem::new(
            format!("{id:?} is not a valid id"),
            ID_ALLOWED,
        ));
    }
    Ok(id)
}

fn path_value(value: &Value) -> Result<PathBuf, Problem> {
    non_empty_string(value)
        .map(PathBuf::from)
        .map_err(|p| Problem::new(p.problem, "a file system path"))
}

/// A host name made fit for topics: dots and other characters become `-`.
fn node_id_from_hostname(hostname: &str) -> String {
    hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

fn node(mut f: Fields, hostname: Option<&str>, errors: &mut Errors) -> Option<NodeConfig> {
    let given = f.has("id");
    let id = match f.opt("id", errors, identifier) {
        Some(id) => Some(id),
        None if given => None,
        None => match hostname.map(node_id_from_hostname) {
            Some(id) if !id.is_empty() => Some(id),
            _ => {
                errors.report(
                    f.origin(),
                    "node.id",
                    Problem::new("missing, and the host name could not be read", ID_ALLOWED),
                );
                None
            }
        },
    };
    f.finish(errors);
    Some(NodeConfig { id: id? })
}

fn model(mut f: Fields, errors: &mut Errors) -> Option<ModelConfig> {
    let dir = f.required(
        "dir",
        "the model directory (a Hugging Face onnx-community Florence-2 download)",
        errors,
        path_value,
    );
    let backend = f.or("backend", Backend::Auto, errors, |v| {
        one_of(v, &["auto", "tensorrt", "cuda", "cpu"]).map(|s| match s {
            "tensorrt" => Backend::TensorRt,
            "cuda" => Backend::Cuda,
            "cpu" => Backend::Cpu,
            _ => Backend::Auto,
        })
    });
    let precision = f.opt("precision", errors, |v| {
        one_of(v, &Precision::NAMES).map(|s| match s {
            "fp16" => Precision::Fp16,
            "q4" => Precision::Q4,
            "q4f16" => Precision::Q4f16,
            "int8" => Precision::Int8,
            "uint8" => Precision::Uint8,
            "quantized" => Precision::Quantized,
            "bnb4" => Precision::Bnb4,
            _ => Precision::Fp32,
        })
    });
    let decoder = f.or("decoder", DecoderLayout::Split, errors, |v| {
        one_of(v, &["split", "merged"]).map(|s| match s {
            "merged" => DecoderLayout::Merged,
            _ => DecoderLayout::Split,
        })
    });
    let engines_dir = f.opt("engines_dir", errors, path_value);
    let build_engines_at_start = f.or("build_engines_at_start", true, errors, boolean);
    let max_batch = f.or("max_batch", 8, errors, |v| uint_in(v, 1, 64));
    let max_wait_ms = f.or("max_wait_ms", 40, errors, |v| uint_in(v, 0, 10_000));
    let threads = f.or("threads", 0, errors, |v| uint_in(v, 0, 1024));
    let batch_timeout = f.or("batch_timeout", DEFAULT_BATCH_TIMEOUT, errors, |v| {
        duration_at_least(v, Duration::from_secs(1))
    });
    let ort_library = f.opt("ort_library", errors, path_value);
    let decoding = f.table("decoding", errors).map(|d| decoding(d, errors));
    f.finish(errors);

    if backend == Backend::TensorRt {
        if let Some(p) = precision.filter(|p| !p.tensorrt_can_build()) {
            errors.report(
                None,
                "model.precision",
                Problem::new(
                    format!(
                        "{} graphs run on ONNX Runtime only; TensorRT builds engines from float graphs",
                        p.name()
                    ),
                    "fp32 or fp16 with backend = \"tensorrt\"",
                ),
            );
        }
        if decoder == DecoderLayout::Merged {
            errors.report(
                None,
                "model.decoder",
                Problem::new(
                    "the merged decoder's If node is rejected by TensorRT",
                    "\"split\" with backend = \"tensorrt\"",
                ),
            );
        }
    }

    Some(ModelConfig {
        dir: dir?,
        backend,
        precision,
        decoder,
        engines_dir,
        build_engines_at_start,
        max_batch: usize::try_from(max_batch).ok()?,
        max_wait: Duration::from_millis(max_wait_ms),
        threads: usize::try_from(threads).ok()?,
        batch_timeout,
        ort_library,
        decoding: decoding??,
    })
}

fn decoding(mut f: Fields, errors: &mut Errors) -> Option<DecodingConfig> {
    let strategy = f.or("strategy", DecodingStrategy::Greedy, errors, |v| {
        one_of(v, &["greedy", "beam"]).map(|s| match s {
            "beam" => DecodingStrategy::Beam,
            _ => DecodingStrategy::Greedy,
        })
    });
    let num_beams = f.or("num_beams", 3, errors, |v| uint_in(v, 1, 16));
    let max_new_tokens = f.or("max_new_tokens", 256, errors, |v| uint_in(v, 1, 1024));
    f.finish(errors);
    if strategy == DecodingStrategy::Beam && num_beams < 2 {
        errors.report(
            None,
            "model.decoding.num_beams",
            Problem::new(
                "beam search with 1 beam is greedy search",
                "2..=16, or strategy = \"greedy\"",
            ),
        );
    }
    Some(DecodingConfig {
        strategy,
        num_beams: u32::try_from(num_beams).ok()?,
        max_new_tokens: u32::try_from(max_new_tokens).ok()?,
    })
}

/// Checks an MQTT broker URL; credentials belong in `username` and
/// `password_file`, and the URL is redacted in the message.
fn mqtt_url(value: &Value) -> Result<String, Problem> {
    const ALLOWED: &str = "mqtt://host[:port] or mqtts://host[:port]";
    let url = string(value).map_err(|p| Problem::new(p.problem, ALLOWED))?;
    let shown = redact_url(&url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Problem::new(format!("{shown:?} has no scheme"), ALLOWED));
    };
    if scheme != "mqtt" && scheme != "mqtts" {
        return Err(Problem::new(
            format!("scheme {scheme:?} is not supported"),
            ALLOWED,
        ));
    }
    let authority = rest.trim_end_matches('/');
    if authority.contains('@') {
        return Err(Problem::new(
            format!("{shown:?} carries credentials"),
            "username = \"…\" and password_file = \"…\" instead",
        ));
    }
    if authority.is_empty() || authority.contains(['/', '?', '#']) {
        return Err(Problem::new(
            format!("{shown:?} is not host[:port]"),
            ALLOWED,
        ));
    }
    if let Some((host, port)) = authority.rsplit_once(':') {
        let bracketed_v6 = authority.starts_with('[') && !host.ends_with(']');
        if !bracketed_v6 && (host.is_empty() || !matches!(port.parse::<u16>(), Ok(p) if p > 0)) {
            return Err(Problem::new(
                format!("{shown:?} has no valid host and port"),
                ALLOWED,
            ));
        }
    }
    Ok(url)
}

fn topic_prefix(value: &Value) -> Result<String, Problem> {
    const ALLOWED: &str = "a non-empty topic without + # or NUL, not starting or ending with /";
    let prefix = string(value).map_err(|p| Problem::new(p.problem, ALLOWED))?;
    if prefix.is_empty()
        || prefix.contains(['+', '#', '\0'])
        || prefix.starts_with('/')
        || prefix.ends_with('/')
    {
        return Err(Problem::new(
            format!("{prefix:?} is not a valid topic prefix"),
            ALLOWED,
        ));
    }
    Ok(prefix)
}

/// `password` or `password_file`, never both.
fn password(f: &mut Fields, errors: &mut Errors) -> Option<PasswordSource> {
    let inline = f.opt("password", errors, secret_string);
    let file = f.opt("password_file", errors, path_value);
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.report(
                f.origin(),
                &f.key_path("password_file"),
                Problem::new(
                    "password and password_file are both set",
                    "one of password or password_file",
                ),
            );
            None
        }
        (Some(secret), None) => Some(PasswordSource::Inline(Secret::new(secret))),
        (None, Some(path)) => Some(PasswordSource::File(path)),
        (None, None) => None,
    }
}

fn mqtt(mut f: Fields, node_id: Option<&str>, errors: &mut Errors) -> Option<MqttConfig> {
    let url = f.or("url", "mqtt://127.0.0.1:1883".to_string(), errors, mqtt_url);
    let client_id = f.opt("client_id", errors, |v| {
        let id = non_empty_string(v).map_err(|p| Problem::new(p.problem, "1 to 256 characters"))?;
        if id.len() > 256 || id.contains(char::is_whitespace) {
            return Err(Problem::new(
                format!("{id:?} is not a usable client id"),
                "1 to 256 characters without spaces",
            ));
        }
        Ok(id)
    });
    let username = f.opt("username", errors, non_empty_string);
    let password = password(&mut f, errors);
    if password.is_some() && username.is_none() {
        errors.report(
            f.origin(),
            "mqtt.username",
            Problem::new(
                "missing, but a password is set",
                "a user name with the password",
            ),
        );
    }
    let topic_prefix = f.or(
        "topic_prefix",
        "florence-edge".to_string(),
        errors,
        topic_prefix,
    );
    let qos = f.or("qos", 1, errors, |v| uint_in(v, 0, 2));
    let keep_alive = f.or("keep_alive", Duration::from_secs(30), errors, |v| {
        let d = duration_at_least(v, Duration::from_secs(1))?;
        if d > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(Problem::new(
                "is longer than MQTT allows",
                "1s to 18h 12m 15s",
            ));
        }
        Ok(d)
    });
    let tls = f.opt_table("tls", errors).map(|t| tls(t, errors));
    if tls.is_some() && !url.starts_with("mqtts://") {
        errors.report(
            f.origin(),
            "mqtt.tls",
            Problem::new("TLS settings with a plain mqtt:// url", "an mqtts:// url"),
        );
    }
    let spool = f.table("spool", errors).map(|mut s| {
        let dir = s.opt("dir", errors, path_value);
        let max_messages = s.or("max_messages", 100_000, errors, |v| {
            uint_in(v, 1, 100_000_000)
        });
        s.finish(errors);
        SpoolConfig { dir, max_messages }
    });
    let snapshots = f.table("snapshots", errors).map(|mut s| {
        let enabled = s.or("enabled", false, errors, boolean);
        let min_interval = s.or("min_interval", Duration::from_secs(10), errors, duration);
        s.finish(errors);
        SnapshotConfig {
            enabled,
            min_interval,
        }
    });
    f.finish(errors);
    let client_id =
        client_id.unwrap_or_else(|| format!("florence-edge-{}", node_id.unwrap_or("node")));
    Some(MqttConfig {
        url,
        client_id,
        username,
        password,
        topic_prefix,
        qos: u8::try_from(qos).ok()?,
        keep_alive,
        tls: match tls {
            Some(parsed) => Some(parsed?),
            None => None,
        },
        spool: spool?,
        snapshots: snapshots?,
    })
}

fn tls(mut f: Fields, errors: &mut Errors) -> Option<MqttTls> {
    let ca_file = f.opt("ca_file", errors, path_value);
    let cert = f.opt("cert_file", errors, path_value);
    let key = f.opt("key_file", errors, path_value);
    let client_auth = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (cert, _) => {
            let missing = if cert.is_some() {
                "key_file"
            } else {
                "cert_file"
            };
            errors.report(
                f.origin(),
                &f.key_path(missing),
                Problem::new(
                    "missing; a client certificate needs both",
                    "cert_file and key_file together, or neither",
                ),
            );
            None
        }
    };
    f.finish(errors);
    Some(MqttTls {
        ca_file,
        client_auth,
    })
}

fn http(mut f: Fields, errors: &mut Errors) -> Option<HttpConfig> {
    let enabled = f.or("enabled", true, errors, boolean);
    let default: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9464));
    let listen = f.or("listen", default, errors, |v| {
        let text = string(v)?;
        text.parse::<SocketAddr>().map_err(|_| {
            Problem::new(
                format!("{text:?} is not a socket address"),
                "ip:port, e.g. \"127.0.0.1:9464\" or \"[::]:9464\"",
            )
        })
    });
    let bearer_token_file = f.opt("bearer_token_file", errors, path_value);
    f.finish(errors);
    Some(HttpConfig {
        listen: enabled.then_some(listen),
        bearer_token_file,
    })
}

fn cameras(root: &mut Fields, errors: &mut Errors) -> Option<Vec<CameraConfig>> {
    let given = root.has("cameras");
    let Some(items) = root.array("cameras", errors) else {
        if !given {
            errors.report(
                root.origin(),
                "cameras",
                Problem::new("missing", "at least one [[cameras]] table"),
            );
        }
        return None;
    };
    if items.is_empty() {
        errors.report(
            root.origin(),
            "cameras",
            Problem::new("is empty", "at least one [[cameras]] table"),
        );
        return None;
    }
    let mut compiled = Vec::new();
    let mut all_ok = true;
    let mut seen: Vec<(String, String)> = Vec::new();
    for (path, value) in items {
        let origin = value.origin().map(str::to_string);
        match Fields::of(value, &path, errors).and_then(|f| camera(f, &path, errors)) {
            Some(camera) => {
                if let Some((_, first)) = seen.iter().find(|(id, _)| *id == camera.id) {
                    errors.report(
                        origin.as_deref(),
                        &format!("{path}.id"),
                        Problem::new(
                            format!("{:?} is also the id of {first}", camera.id),
                            "a unique id per camera",
                        ),
                    );
                    all_ok = false;
                }
                seen.push((camera.id.clone(), path));
                compiled.push(camera);
            }
            None => all_ok = false,
        }
    }
    all_ok.then_some(compiled)
}

/// The scheme of a camera URL, checked, with what follows it.
fn camera_url(value: &Value) -> Result<String, Problem> {
    let allowed = CAMERA_SCHEMES
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ");
    let url = string(value).map_err(|p| Problem::new(p.problem, allowed.clone()))?;
    let shown = redact_url(&url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Problem::new(format!("{shown:?} has no scheme"), allowed));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !CAMERA_SCHEMES.contains(&scheme.as_str()) {
        return Err(Problem::new(
            format!("scheme {scheme:?} is not supported"),
            allowed,
        ));
    }
    let needs_host = matches!(
        scheme.as_str(),
        "rtsp" | "rtsps" | "rtspt" | "http" | "https"
    );
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if needs_host && host.rsplit('@').next().unwrap_or_default().is_empty() {
        return Err(Problem::new(format!("{shown:?} has no host"), allowed));
    }
    if scheme == "file" && (rest.is_empty() || rest == "/") {
        return Err(Problem::new(format!("{shown:?} has no path"), allowed));
    }
    if scheme == "v4l2" && !rest.starts_with("/dev/") {
        return Err(Problem::new(
            format!("{shown:?} does not name a /dev device"),
            "v4l2:///dev/videoN",
        ));
    }
    Ok(url)
}

fn url_has_userinfo(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default())
        .is_some_and(|authority| authority.contains('@'))
}

fn camera(mut f: Fields, path: &str, errors: &mut Errors) -> Option<CameraConfig> {
    let id = f.required("id", ID_ALLOWED, errors, identifier);
    let enabled = f.or("enabled", true, errors, boolean);
    let url = f.required(
        "url",
        "rtsp://, rtsps://, file://, http(s)://, v4l2://, test://, csi:// URL",
        errors,
        camera_url,
    );
    let username = f.opt("username", errors, non_empty_string);
    let password = password(&mut f, errors);
    let transport = f.or("transport", Transport::Tcp, errors, |v| {
        one_of(v, &["tcp", "udp", "auto"]).map(|s| match s {
            "udp" => Transport::Udp,
            "auto" => Transport::Auto,
            _ => Transport::Tcp,
        })
    });
    let latency_ms = f.or("latency_ms", 200, errors, |v| uint_in(v, 0, 60_000));
    let decoder = f.or("decoder", DecoderChoice::Auto, errors, |v| {
        let name = string(v)?;
        if name == "auto" {
            return Ok(DecoderChoice::Auto);
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Problem::new(
                format!("{name:?} is not an element name"),
                "\"auto\" or a GStreamer element name such as \"nvv4l2decoder\"",
            ));
        }
        Ok(DecoderChoice::Element(name))
    });
    let min = Duration::from_millis(100);
    let watchdog = f.or("watchdog", Duration::from_secs(5), errors, |v| {
        duration_at_least(v, min)
    });
    let startup_timeout = f.or("startup_timeout", Duration::from_secs(15), errors, |v| {
        duration_at_least(v, min)
    });
    let keyframe_skipping = f.or("keyframe_skipping", true, errors, boolean);
    let reconnect = f.table("reconnect", errors).map(|r| reconnect(r, errors));
    let tasks_given = f.has("tasks");
    let tasks = match f.array("tasks", errors) {
        Some(items) => tasks(items, enabled, path, errors),
        None if tasks_given => None,
        None if enabled => {
            errors.report(
                f.origin(),
                &format!("{path}.tasks"),
                Problem::new(
                    "missing",
                    "at least one task, e.g. tasks = [{ task = \"<OD>\", every = \"1s\" }]",
                ),
            );
            None
        }
        None => Some(Vec::new()),
    };
    if let Some(url) = &url {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let takes_credentials = scheme
            .as_deref()
            .is_some_and(|s| CREDENTIAL_SCHEMES.contains(&s));
        let has_credentials = username.is_some() || password.is_some() || url_has_userinfo(url);
        if has_credentials && !takes_credentials {
            errors.report(
                f.origin(),
                &format!("{path}.username"),
                Problem::new(
                    "credentials on a camera whose URL takes none",
                    "credentials only with rtsp://, rtsps:// cameras",
                ),
            );
        } else if username.is_some() && url_has_userinfo(url) {
            errors.report(
                f.origin(),
                &format!("{path}.username"),
                Problem::new(
                    "set both here and in the URL",
                    "credentials in the URL or in username/password, not both",
                ),
            );
        }
    }
    if password.is_some() && username.is_none() {
        errors.report(
            f.origin(),
            &format!("{path}.username"),
            Problem::new(
                "missing, but a password is set",
                "a user name with the password",
            ),
        );
    }
    f.finish(errors);
    Some(CameraConfig {
        id: id?,
        enabled,
        stream: StreamConfig {
            url: url?,
            credentials: username.map(|username| CameraCredentials { username, password }),
            transport,
            latency: Duration::from_millis(latency_ms),
            decoder,
            watchdog,
            startup_timeout,
            reconnect: reconnect??,
            keyframe_skipping,
        },
        tasks: tasks?,
    })
}

fn reconnect(mut f: Fields, errors: &mut Errors) -> Option<ReconnectConfig> {
    let initial = f.or("initial", Duration::from_secs(1), errors, duration);
    let max = f.or("max", Duration::from_secs(30), errors, duration);
    let multiplier = f.or("multiplier", 2.0, errors, |v| float_in(v, 1.0, 100.0));
    let jitter = f.or("jitter", 0.2, errors, |v| float_in(v, 0.0, 1.0));
    let max_attempts = f.or("max_attempts", 0, errors, |v| {
        uint_in(v, 0, u64::from(u32::MAX))
    });
    if max < initial {
        errors.report(
            f.origin(),
            &f.key_path("max"),
            Problem::new(
                format!(
                    "{} is below initial {}",
                    humantime::format_duration(max),
                    humantime::format_duration(initial)
                ),
                "max >= initial",
            ),
        );
    }
    f.finish(errors);
    Some(ReconnectConfig {
        initial,
        max,
        multiplier,
        jitter,
        max_attempts: match u32::try_from(max_attempts).ok()? {
            0 => None,
            n => Some(n),
        },
    })
}

fn region(value: &Value) -> Result<Region, Problem> {
    const ALLOWED: &str = "[x1, y1, x2, y2] in whole pixels of the frame, x1 < x2, y1 < y2";
    let ValueKind::Array(items) = &value.kind else {
        return Err(Problem::new(
            format!(
                "expected an array, found {}",
                super::fields::describe(value)
            ),
            ALLOWED,
        ));
    };
    if items.len() != 4 {
        return Err(Problem::new(
            format!("has {} numbers, not 4", items.len()),
            ALLOWED,
        ));
    }
    let mut v = [0u32; 4];
    for (slot, item) in v.iter_mut().zip(items) {
        let n = uint_in(item, 0, 65_535).map_err(|p| Problem::new(p.problem, ALLOWED))?;
        *slot = u32::try_from(n).map_err(|_| Problem::new("out of range", ALLOWED))?;
    }
    let [x1, y1, x2, y2] = v;
    if x1 >= x2 || y1 >= y2 {
        return Err(Problem::new(
            format!("[{x1}, {y1}, {x2}, {y2}] is empty or reversed"),
            ALLOWED,
        ));
    }
    Ok(Region { x1, y1, x2, y2 })
}

fn tasks(
    items: Vec<(String, Value)>,
    enabled: bool,
    camera_path: &str,
    errors: &mut Errors,
) -> Option<Vec<TaskConfig>> {
    if items.is_empty() && enabled {
        errors.report(
            None,
            &format!("{camera_path}.tasks"),
            Problem::new("is empty", "at least one task"),
        );
        return None;
    }
    let mut compiled: Vec<(String, TaskConfig)> = Vec::new();
    let mut all_ok = true;
    for (path, value) in items {
        match Fields::of(value, &path, errors).and_then(|f| task(f, &path, errors)) {
            Some(task) => {
                if let Some((first, _)) = compiled
                    .iter()
                    .find(|(_, t)| t.task == task.task && t.argument == task.argument)
                {
                    errors.report(
                        None,
                        &path,
                        Problem::new(
                            format!("same task and input as {first}"),
                            "each task and input once per camera; change `every` instead",
                        ),
                    );
                    all_ok = false;
                }
                compiled.push((path, task));
            }
            None => all_ok = false,
        }
    }
    all_ok.then(|| compiled.into_iter().map(|(_, t)| t).collect())
}

fn task(mut f: Fields, path: &str, errors: &mut Errors) -> Option<TaskConfig> {
    let allowed = Task::ALL
        .iter()
        .map(|t| t.token())
        .collect::<Vec<_>>()
        .join(", ");
    let task = f.required("task", &allowed, errors, |v| {
        let token = string(v).map_err(|p| Problem::new(p.problem, allowed.clone()))?;
        token
            .parse::<Task>()
            .map_err(|e| Problem::new(format!("unknown task {:?}", e.given), e.allowed))
    });
    let every = f.required(
        "every",
        "a duration such as \"500ms\", \"2s\", \"1m 30s\"",
        errors,
        duration,
    );
    let has_text = f.has("text");
    let has_region = f.has("region");
    let text = f.opt("text", errors, |v| {
        let text = non_empty_string(v)?;
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(Problem::new(
                format!("is {} characters long", text.chars().count()),
                format!("at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        Ok(text)
    });
    let region = f.opt("region", errors, region);
    f.finish(errors);
    let task = task?;
    let needs = |key: &str, errors: &mut Errors, allowed: &str| {
        errors.report(
            None,
            &format!("{path}.{key}"),
            Problem::new(format!("missing; {task} needs it"), allowed),
        );
    };
    let refuse = |key: &str, errors: &mut Errors, allowed: &str| {
        errors.report(
            None,
            &format!("{path}.{key}"),
            Problem::new(format!("{task} takes no {key}"), allowed),
        );
    };
    let argument = match task.input() {
        TaskInput::None => {
            if has_text {
                refuse("text", errors, "no input for this task");
            }
            if has_region {
                refuse("region", errors, "no input for this task");
            }
            (!has_text && !has_region).then_some(TaskArgument::None)
        }
        TaskInput::Text => {
            if has_region {
                refuse("region", errors, "text = \"…\"");
            }
            if !has_text {
                needs(
                    "text",
                    errors,
                    "text = \"…\", e.g. \"person with a helmet\"",
                );
            }
            text.filter(|_| !has_region)
                .map(|t| TaskArgument::Text(Arc::from(t.as_str())))
        }
        TaskInput::Region => {
            if has_text {
                refuse("text", errors, "region = [x1, y1, x2, y2]");
            }
            if !has_region {
                needs("region", errors, "region = [x1, y1, x2, y2] in pixels");
            }
            region.filter(|_| !has_text).map(TaskArgument::Region)
        }
    };
    Some(TaskConfig {
        task,
        argument: argument?,
        every: every?,
    })
}
