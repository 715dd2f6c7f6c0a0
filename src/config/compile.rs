//! Raw tree → [`Config`]: one function per section, each reading its keys
//! through [`Fields`] so that every problem is reported, not just the first.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::config::{FileFormat, Source, Value, ValueKind};

use super::{
    Backend, CameraConfig, Config, ConfigError, ControlConfig, DecoderLayout, Decoding, HttpConfig,
    ModelConfig, NodeConfig, Strategy, TaskSchedule, Variant, ENV_PREFIX,
};
use crate::ingest::settings::URL_ALLOWED;
use crate::ingest::{CameraSettings, IngestError};
use crate::publish::MqttSettings;
use crate::scene::motion::{ChangeDetector, ChangeSettings};
use crate::scene::zone::Polygon;
use crate::schedule::{Region, Task, TaskArgument, TaskInput, When};
use crate::settings::{
    boolean, duration, duration_at_least, duration_in, float_in, non_empty_string, one_of,
    path_value, string, uint_in, Errors, Fields, Problem,
};

/// `model.batch_timeout` when unset: generous for a CPU running the large
/// model with beam search; a GPU batch takes a fraction of a second.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// `max_interval` of a `when = "changed"` task when unset: a still scene
/// is still analysed every five minutes.
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(300);

/// Identifiers that end up in MQTT topics and metric labels.
const ID_ALLOWED: &str = "1 to 64 characters of A-Z a-z 0-9 _ -";

/// Longest free-text task input. The prompt has to fit the encoder too,
/// which is counted in tokens against the model (`plan::prompt_problems`).
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
        .map(|f| MqttSettings::from_section(f, node_id.as_deref(), errors));
    let http = root.table("http", errors).map(|f| http(f, errors));
    let control = root.table("control", errors).map(|f| control(f, errors));
    let homeassistant = root
        .table("homeassistant", errors)
        .map(|f| crate::publish::homeassistant::HomeAssistantSettings::from_section(f, errors));
    let cameras = cameras(&mut root, node_id.as_deref(), errors);
    root.finish(errors);
    Some(Config {
        file: path.to_path_buf(),
        node: node??,
        model: model??,
        mqtt: mqtt??,
        http: http??,
        control: control??,
        homeassistant: homeassistant??,
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

/// `[model] id`, `revision`, `cache_dir`, `download`: a Hub model in the
/// daemon's store.
fn hub_model(
    id: String,
    revision: String,
    cache_dir: Option<std::path::PathBuf>,
    download: bool,
    errors: &mut Errors,
) -> Option<super::HubModel> {
    let model = match crate::hub::ModelRef::new(&id, &revision) {
        Ok(m) => m,
        Err(crate::hub::HubError::Invalid { what, allowed }) => {
            let key = if what.starts_with("revision") {
                "model.revision"
            } else {
                "model.id"
            };
            errors.report(
                None,
                key,
                Problem::new(format!("{what} is not valid"), allowed),
            );
            return None;
        }
        Err(e) => {
            errors.report(None, "model.id", Problem::message(e.to_string()));
            return None;
        }
    };
    let cache_dir = match cache_dir {
        Some(d) => d,
        None => match crate::hub::default_cache_dir() {
            Ok(d) => d,
            Err(e) => {
                errors.report(None, "model.cache_dir", Problem::message(e.to_string()));
                return None;
            }
        },
    };
    Some(super::HubModel {
        model,
        cache_dir,
        download,
    })
}

fn model(mut f: Fields, errors: &mut Errors) -> Option<ModelConfig> {
    let hub_keys = ["id", "revision", "cache_dir", "download"];
    let (dir, hub_given) = if f.has("id") {
        if f.has("dir") {
            errors.report(
                f.origin(),
                "model.dir",
                Problem::new(
                    "given together with model.id",
                    "one of them: dir for a directory you manage, id for a Hub model the daemon keeps in its store",
                ),
            );
        }
        let _ = f.opt("dir", errors, path_value);
        (None, true)
    } else {
        for key in &hub_keys[1..] {
            if f.has(key) {
                errors.report(
                    f.origin(),
                    &format!("model.{key}"),
                    Problem::new(
                        "applies to a Hub model only",
                        "model.id = \"onnx-community/Florence-2-base-ft\" with it, or model.dir without it",
                    ),
                );
            }
        }
        let dir = f.required(
            "dir",
            "the model directory (a Hugging Face onnx-community Florence-2 download), or model.id = \"onnx-community/Florence-2-base-ft\" for a model `florence-edge model pull` fetches",
            errors,
            path_value,
        );
        (dir, false)
    };
    let hub_id = f.opt("id", errors, non_empty_string);
    let hub_revision = f.or("revision", "main".to_string(), errors, non_empty_string);
    let hub_cache = f.opt("cache_dir", errors, path_value);
    let hub_download = f.or("download", false, errors, boolean);
    let backend = f.or("backend", Backend::Auto, errors, |v| {
        one_of(v, &["auto", "tensorrt", "cuda", "cpu"]).map(|s| match s {
            "tensorrt" => Backend::TensorRt,
            "cuda" => Backend::Cuda,
            "cpu" => Backend::Cpu,
            _ => Backend::Auto,
        })
    });
    let precision = f.opt("precision", errors, |v| {
        one_of(v, &Variant::ALLOWED).and_then(|s| {
            Variant::parse(s).map_err(|e| Problem::new(e.to_string(), Variant::ALLOWED.join(" | ")))
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
    let gpu_memory_limit_mb = f.opt("gpu_memory_limit_mb", errors, |v| uint_in(v, 64, 1 << 20));
    let decoding = f.table("decoding", errors).map(|d| decoding(d, errors));
    f.finish(errors);

    if backend == Backend::TensorRt {
        if let Some(p) = precision.as_ref().filter(|p| !p.is_float()) {
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

    let selection = crate::hub::Selection {
        variant: precision.clone().unwrap_or_else(Variant::fp32),
        layout: decoder,
    };
    let (dir, hub) = if hub_given {
        let hub = hub_model(hub_id?, hub_revision, hub_cache, hub_download, errors)?;
        let store = crate::hub::ModelStore::new(&hub.cache_dir);
        let dir = store
            .resolve(&hub.model, &selection)
            .unwrap_or_else(|_| store.repo_dir(&hub.model));
        (dir, Some(hub))
    } else {
        (dir?, None)
    };
    Some(ModelConfig {
        dir,
        hub,
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
        gpu_memory_limit_mb: gpu_memory_limit_mb.map(|mb| mb as usize),
        decoding: decoding??,
    })
}

fn decoding(mut f: Fields, errors: &mut Errors) -> Option<Decoding> {
    let beam = f.or("strategy", false, errors, |v| {
        one_of(v, &["greedy", "beam"]).map(|s| s == "beam")
    });
    let num_beams = f.or("num_beams", 3, errors, |v| uint_in(v, 1, 16));
    let max_new_tokens = f.or("max_new_tokens", 256, errors, |v| uint_in(v, 1, 1024));
    f.finish(errors);
    if beam && num_beams < 2 {
        errors.report(
            None,
            "model.decoding.num_beams",
            Problem::new(
                "beam search with 1 beam is greedy search",
                "2..=16, or strategy = \"greedy\"",
            ),
        );
    }
    Some(Decoding {
        strategy: if beam {
            Strategy::Beam {
                num_beams: usize::try_from(num_beams).ok()?,
            }
        } else {
            Strategy::Greedy
        },
        max_new_tokens: usize::try_from(max_new_tokens).ok()?,
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

fn control(mut f: Fields, errors: &mut Errors) -> Option<ControlConfig> {
    let http = f.or("http", true, errors, boolean);
    let overrides_file = f.or(
        "overrides_file",
        std::path::PathBuf::from(super::DEFAULT_OVERRIDES_FILE),
        errors,
        path_value,
    );
    // The MQTT keys, read (and the section finished) by their stage.
    let mqtt = crate::control::mqtt::CommandSettings::from_section(f, errors);
    Some(ControlConfig {
        http,
        overrides_file,
        mqtt: mqtt?,
    })
}

fn cameras(
    root: &mut Fields,
    node_id: Option<&str>,
    errors: &mut Errors,
) -> Option<Vec<CameraConfig>> {
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
                // Topics are `{prefix}/{camera}/…` beside `{prefix}/{node}/status`.
                if let Some(Err(e)) =
                    node_id.map(|node| crate::publish::topic::check_camera_id(&camera.id, node))
                {
                    errors.report(
                        origin.as_deref(),
                        &format!("{path}.id"),
                        Problem::message(e.to_string()),
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

fn camera(mut f: Fields, path: &str, errors: &mut Errors) -> Option<CameraConfig> {
    let id = f.required("id", ID_ALLOWED, errors, identifier);
    let enabled = f.or("enabled", true, errors, boolean);
    let stream = CameraSettings::from_section(&mut f, id.as_deref().unwrap_or(""), errors);
    let privacy_masks = f.or("privacy_masks", Vec::new(), errors, polygons);
    let motion = match f.table("motion", errors) {
        Some(m) => motion(m, &format!("{path}.motion"), errors),
        None => Some(ChangeSettings::default()),
    };
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
    let origin = f.origin().map(str::to_string);
    f.finish(errors);
    let mut stream = stream?;
    stream.analysis_fps = tasks.as_deref().and_then(analysis_fps);
    // The ingest stage's own check, the one every camera start runs; also
    // when the tasks are wrong, so that every problem is reported at once.
    if let Err(e) = stream.check() {
        let (key, problem) = match e {
            IngestError::InvalidSetting {
                setting, reason, ..
            } => (setting, reason),
            IngestError::UnsupportedUrl { url, reason, .. } => {
                ("url", format!("{url:?}: {reason}; allowed: {URL_ALLOWED}"))
            }
            other => ("url", other.to_string()),
        };
        let key = format!("{path}.{key}");
        if !errors.has_key(&key) {
            errors.report(origin.as_deref(), &key, Problem::message(problem));
        }
        return None;
    }
    let camera = CameraConfig {
        id: id?,
        enabled,
        stream,
        motion: motion?,
        privacy_masks,
        tasks: tasks?,
    };
    Some(camera)
}

/// `motion = { threshold, min_area, background_alpha, masks }`: the
/// camera's change detector, which `when = "changed"` tasks wait on.
fn motion(mut f: Fields, path: &str, errors: &mut Errors) -> Option<ChangeSettings> {
    let d = ChangeSettings::default();
    let threshold = f.or("threshold", u64::from(d.threshold), errors, |v| {
        uint_in(v, 1, 255)
    });
    let min_area = f.or("min_area", d.min_area, errors, |v| float_in(v, 0.0, 1.0));
    let background_alpha = f.or("background_alpha", d.background_alpha, errors, |v| {
        float_in(v, 0.001, 1.0)
    });
    let masks = f.or("masks", Vec::new(), errors, polygons);
    f.finish(errors);
    let settings = ChangeSettings {
        threshold: u8::try_from(threshold).ok()?,
        min_area,
        background_alpha,
        masks,
        ..d
    };
    // The detector's own check, the one the daemon runs.
    if let Err(e) = ChangeDetector::new(settings.clone()) {
        errors.report(None, path, Problem::message(e.to_string()));
        return None;
    }
    Some(settings)
}

const POLYGONS_ALLOWED: &str = "a list of polygons, each a list of at least 3 [x, y] points in normalized coordinates 0..1, e.g. [[[0.0, 0.0], [0.3, 0.0], [0.3, 0.2]]]";

/// A list of polygons in normalized coordinates (motion masks; zones).
fn polygons(value: &Value) -> Result<Vec<Polygon>, Problem> {
    let list = match &value.kind {
        ValueKind::Array(list) => list,
        _ => {
            return Err(Problem::new(
                "expected a list of polygons",
                POLYGONS_ALLOWED,
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, poly)| {
            let points = match &poly.kind {
                ValueKind::Array(points) => points,
                _ => {
                    return Err(Problem::new(
                        format!("[{i}] is not a list of points"),
                        POLYGONS_ALLOWED,
                    ))
                }
            };
            let points = points
                .iter()
                .enumerate()
                .map(|(j, p)| match &p.kind {
                    ValueKind::Array(xy) if xy.len() == 2 => {
                        let c = |v: &Value| float_in(v, f64::MIN, f64::MAX).ok();
                        match (c(&xy[0]), c(&xy[1])) {
                            (Some(x), Some(y)) => Ok([x, y]),
                            _ => Err(Problem::new(
                                format!("[{i}][{j}] is not a pair of numbers"),
                                POLYGONS_ALLOWED,
                            )),
                        }
                    }
                    _ => Err(Problem::new(
                        format!("[{i}][{j}] is not an [x, y] pair"),
                        POLYGONS_ALLOWED,
                    )),
                })
                .collect::<Result<Vec<[f64; 2]>, Problem>>()?;
            Polygon::new(points).map_err(|e| Problem::new(format!("[{i}]: {e}"), POLYGONS_ALLOWED))
        })
        .collect()
}

/// Frames per second the tasks need at most.
fn analysis_fps(tasks: &[TaskSchedule]) -> Option<f64> {
    tasks
        .iter()
        .map(|t| t.every)
        .min()
        .map(|every| 1.0 / every.as_secs_f64())
}

fn region(value: &Value) -> Result<Region, Problem> {
    const ALLOWED: &str = "[x1, y1, x2, y2] in whole pixels of the frame, x1 < x2, y1 < y2";
    let ValueKind::Array(items) = &value.kind else {
        return Err(Problem::new(
            format!(
                "expected an array, found {}",
                crate::settings::describe(value)
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
) -> Option<Vec<TaskSchedule>> {
    if items.is_empty() && enabled {
        errors.report(
            None,
            &format!("{camera_path}.tasks"),
            Problem::new("is empty", "at least one task"),
        );
        return None;
    }
    let mut compiled: Vec<(String, TaskSchedule)> = Vec::new();
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

fn task(mut f: Fields, path: &str, errors: &mut Errors) -> Option<TaskSchedule> {
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
    let enabled = f.or("enabled", true, errors, boolean);
    let changed = f.or("when", false, errors, |v| {
        one_of(v, &["always", "changed"]).map(|s| s == "changed")
    });
    let has_max_interval = f.has("max_interval");
    let max_interval = f.or("max_interval", DEFAULT_MAX_INTERVAL, errors, |v| {
        duration_in(v, Duration::from_secs(1), crate::schedule::MAX_PERIOD)
    });
    f.finish(errors);
    if has_max_interval && !changed {
        errors.report(
            None,
            &format!("{path}.max_interval"),
            Problem::new(
                "applies to when = \"changed\" only (a task that always runs needs no heartbeat)",
                "when = \"changed\" with it, or no max_interval",
            ),
        );
    }
    if let (true, Some(every)) = (changed, every) {
        if max_interval < every {
            errors.report(
                None,
                &format!("{path}.max_interval"),
                Problem::new(
                    format!(
                        "{} is shorter than every ({}): the heartbeat would run the task at every tick",
                        humantime::format_duration(max_interval),
                        humantime::format_duration(every)
                    ),
                    "at least the task's every",
                ),
            );
        }
    }
    let when = if changed {
        When::Changed { max_interval }
    } else {
        When::Always
    };
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
    Some(TaskSchedule {
        task,
        argument: argument?,
        every: every?,
        enabled,
        when,
    })
}
