//! From a checked configuration to the daemon's plan: the one function
//! `validate` and `run` share.
//!
//! [`super::load`] checks the file itself; [`plan`] checks it against the
//! machine it will run on, reading every file it names the way the stages
//! read them when they start (the publisher's password and TLS files, the
//! cameras' password files, the HTTP token, the model directory, whose
//! tokenizer and limits the configured prompts are counted against). A file
//! that `validate` accepts can then fail in `run` only for reasons outside
//! it — a camera down, a broker away, a GPU missing — and those are
//! reported by the stages as such, not as configuration errors.

use std::path::Path;

use super::{Config, ConfigError, DecoderLayout, Strategy, TaskArgument};
use crate::florence2::tokenizer::FlorenceTokenizer;
use crate::florence2::SequenceLimit;
use crate::ingest::{DecoderChoice, IngestError};
use crate::publish::PublisherConfig;
use crate::runtime::engines::{
    engines_dir_or_default, EngineError, EngineSpec, ProfileBounds, ProfileData,
};

/// What `run` starts from. The cameras' password files and the HTTP token
/// are read here only to check them: the stages read them again when they
/// start (a camera on each reconnect, so a rotated password is picked up).
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    /// The `[mqtt]` section ready to connect: password and TLS files read.
    pub publisher: PublisherConfig,
}

/// Checks `config` against the disk, collecting every problem, each named
/// by the key of the file it is about.
pub fn plan(config: Config) -> Result<Plan, Vec<ConfigError>> {
    plan_with(config, None)
}

/// The model's tokenizer and sequence limit, loaded once by a daemon that
/// plans many changes (runtime control) against the same model directory.
pub struct PromptCheck {
    limit: SequenceLimit,
    tokenizer: FlorenceTokenizer,
}

impl PromptCheck {
    /// `None` when the directory has no tokenizer.json/config.json or no
    /// limit (then [`plan`] checks nothing either) or they do not read (then
    /// [`plan`] reports them).
    pub fn load(dir: &Path) -> Option<PromptCheck> {
        if !dir.join("tokenizer.json").is_file() || !dir.join("config.json").is_file() {
            return None;
        }
        let limit = SequenceLimit::from_dir(dir).ok()??;
        let tokenizer = FlorenceTokenizer::from_dir(dir).ok()?;
        Some(PromptCheck { limit, tokenizer })
    }
}

/// [`plan`], with the prompts counted by `prompts` when given instead of a
/// tokenizer loaded from the model directory.
pub fn plan_with(config: Config, prompts: Option<&PromptCheck>) -> Result<Plan, Vec<ConfigError>> {
    let file = config.file.display().to_string();
    let mut errors = Vec::new();
    let mut report = |key: String, problem: String| {
        errors.push(ConfigError::Invalid {
            origin: file.clone(),
            key,
            problem,
            allowed: None,
        })
    };
    let need = |path: &Path, dir: bool| -> Option<String> {
        let ok = if dir { path.is_dir() } else { path.is_file() };
        (!ok).then(|| {
            format!(
                "{} does not exist or is not a {}",
                path.display(),
                if dir { "directory" } else { "file" }
            )
        })
    };
    match &config.model.hub {
        None => {
            if let Some(p) = need(&config.model.dir, true) {
                report("model.dir".into(), p);
            }
        }
        Some(hub) => {
            let store = crate::hub::ModelStore::new(&hub.cache_dir);
            let selection = config.model.selection();
            // With `download = true` the daemon pulls a missing model
            // before it loads it (and plans again on the pulled files).
            if let (Err(why), false) = (store.resolve(&hub.model, &selection), hub.download) {
                report(
                    "model.id".into(),
                    format!(
                        "{why}; fetch it with `{}` (as the user the daemon runs as), or set model.download = true to pull it at start",
                        crate::hub::pull_command(&hub.model, &selection, Some(&hub.cache_dir))
                    ),
                );
            }
        }
    }
    if let Some(p) = config
        .model
        .ort_library
        .as_deref()
        .and_then(|lib| need(lib, false))
    {
        report("model.ort_library".into(), p);
    }
    let publisher = match config.mqtt.validate(&config.node.id) {
        Ok(publisher) => Some(publisher),
        Err(problems) => {
            for p in problems {
                report(p.key, p.problem);
            }
            None
        }
    };
    if let Err(problem) = config.http.read_bearer_token() {
        report("http.bearer_token_file".into(), problem);
    }
    for (i, camera) in config.cameras.iter().enumerate() {
        if !camera.enabled {
            continue;
        }
        if let DecoderChoice::Element(name) = &camera.stream.decoder {
            if crate::ingest::element_installed(name) == Some(false) {
                report(
                    format!("cameras[{i}].decoder"),
                    format!("`{name}` is not installed on this machine (GStreamer has no such element); allowed: \"auto\" or an installed decoder, as `gst-inspect-1.0 {name}` shows"),
                );
            }
        }
        match camera.stream.resolve() {
            Ok(_) => {}
            Err(IngestError::InvalidSetting {
                setting, reason, ..
            }) => report(format!("cameras[{i}].{setting}"), reason),
            Err(other) => report(format!("cameras[{i}].url"), other.to_string()),
        }
    }
    errors.extend(match prompts {
        Some(check) => count_prompts(&config, &file, check),
        None => prompt_problems(&config, &file),
    });
    match publisher {
        Some(publisher) if errors.is_empty() => Ok(Plan { config, publisher }),
        _ => Err(errors),
    }
}

/// The enabled cameras' prompts against the model's sequence limit, in
/// tokens, the way the daemon checks each job before batching it
/// (`Pipeline::prompt_ids`): image tokens + prompt tokens must fit the
/// position embeddings config.json declares. Checked when the model
/// directory has tokenizer.json and config.json (otherwise the model load
/// reports what is missing); a file there that does not read is a
/// `model.dir` problem, as it would stop `run`.
fn prompt_problems(config: &Config, file: &str) -> Vec<ConfigError> {
    let dir = &config.model.dir;
    if !dir.join("tokenizer.json").is_file() || !dir.join("config.json").is_file() {
        return Vec::new();
    }
    let invalid = |key: String, problem: String, allowed: Option<String>| ConfigError::Invalid {
        origin: file.to_string(),
        key,
        problem,
        allowed,
    };
    let limit = match SequenceLimit::from_dir(dir) {
        Ok(Some(limit)) => limit,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![invalid("model.dir".into(), e.to_string(), None)],
    };
    let tokenizer = match FlorenceTokenizer::from_dir(dir) {
        Ok(t) => t,
        Err(e) => return vec![invalid("model.dir".into(), e.to_string(), None)],
    };
    count_prompts(config, file, &PromptCheck { limit, tokenizer })
}

fn count_prompts(config: &Config, file: &str, check: &PromptCheck) -> Vec<ConfigError> {
    let (limit, tokenizer) = (&check.limit, &check.tokenizer);
    let invalid = |key: String, problem: String, allowed: Option<String>| ConfigError::Invalid {
        origin: file.to_string(),
        key,
        problem,
        allowed,
    };
    // Every `<loc_N>` is one token, so any bins count the same.
    let region = "<loc_0>".repeat(4);
    let mut errors = Vec::new();
    for (i, camera) in config.cameras.iter().enumerate() {
        if !camera.enabled {
            continue;
        }
        for (j, t) in camera.tasks.iter().enumerate() {
            let (field, input) = match &t.argument {
                TaskArgument::None => ("task", None),
                TaskArgument::Text(text) => ("text", Some(&**text)),
                TaskArgument::Region(_) => ("region", Some(region.as_str())),
            };
            let key = format!("cameras[{i}].tasks[{j}].{field}");
            match tokenizer.encode_prompt(&t.task.prompt(input)) {
                Ok(ids) if ids.len() > limit.max_prompt_tokens() => errors.push(invalid(
                    key,
                    format!("the {} prompt is {} tokens", t.task, ids.len()),
                    Some(limit.allowed()),
                )),
                Ok(_) => {}
                Err(e) => errors.push(invalid(key, e.to_string(), None)),
            }
        }
    }
    errors
}

impl Config {
    /// What this configuration asks TensorRT to build: the graphs of
    /// `model.precision` (fp32 files when unset), FP16 kernels unless fp32 is
    /// asked for explicitly, profiles up to `max_batch` × beams and
    /// `max_new_tokens`. Fails only if the compiled-in profile data
    /// (`engines/profiles.toml`) does not parse, which its unit test rules
    /// out.
    pub fn engine_spec(&self) -> Result<EngineSpec, EngineError> {
        let m = &self.model;
        let prompt = ProfileData::embedded()?.prompt.default_max_tokens;
        Ok(EngineSpec {
            model_dir: m.dir.clone(),
            variant: m.variant_name().to_string(),
            fp16: m.tensorrt_fp16(),
            merged_decoder: m.decoder == DecoderLayout::Merged,
            engines_dir: engines_dir_or_default(m.engines_dir.as_deref()),
            bounds: ProfileBounds {
                max_batch: m.max_batch,
                num_beams: match m.decoding.strategy {
                    Strategy::Beam { num_beams } => num_beams,
                    Strategy::Greedy => 1,
                },
                max_new_tokens: m.decoding.max_new_tokens,
                max_prompt_tokens: prompt,
            },
        })
    }
}
