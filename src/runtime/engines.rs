//! TensorRT engines: optimization profiles, the engine cache and its
//! manifest, and building every engine ahead of time.
//!
//! TensorRT is reached through ONNX Runtime's TensorRT execution provider:
//! opening a session with the provider, its engine cache and explicit
//! optimization profiles is what makes ONNX Runtime build (or load) the
//! engine. This module decides *what* to build — which graphs, which shape
//! ranges, which precision — and *whether* the engines in the cache still fit
//! this machine:
//!
//! - [`ProfileRanges`] turns the configuration (max_batch, beams,
//!   max_new_tokens, prompt length) and the model directory (image size,
//!   image tokens) into axis ranges; [`graph_profile`] maps them onto the
//!   inputs a graph declares, by name, into min/opt/max shapes.
//! - [`EngineFingerprint`] records what the engines depend on: GPU and
//!   compute capability, TensorRT and ONNX Runtime versions, precision,
//!   profiles and the SHA-256 of every graph file. `manifest.json` in the
//!   engine directory stores the fingerprint the engines were built for, and
//!   [`check`] compares it with the machine as it is now, naming what changed
//!   ("TensorRT 10.3.0 → 10.7.0"), so a JetPack upgrade means a rebuild, not
//!   an engine that fails to deserialize.
//! - [`build_engines`] builds every engine with progress events (never
//!   silent for minutes); [`startup_check`] is what `run` calls: it refuses
//!   to build at start unless the configuration allows it.
//!
//! What cannot be checked is never trusted: a fingerprint component that
//! cannot be probed (no `nvidia-smi`, no `libnvinfer`) makes the cache stale,
//! and [`build_engines`] refuses to build engines it could not recognise
//! afterwards.
//!
//! None of this has run against a real TensorRT: the machines this project is
//! tested on have neither a GPU nor the TensorRT libraries. What is tested is
//! the pure logic (profiles, fingerprints, manifest, hash cache, start-up
//! decision) and that every GPU-only path fails loudly on a CPU-only ONNX
//! Runtime. The engine file names ONNX Runtime writes are matched by the
//! prefix we give it, not by a pattern we could not observe.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    open_session_with_tensorrt, Backend, OrtRuntime, RuntimeError, SessionOptions, TensorRtProfile,
    TensorRtSessionOptions,
};

/// The manifest's file name inside the engine directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format and of the profile rules in this file.
/// Raising it makes every existing cache stale: change it whenever
/// [`graph_profile`] or [`ProfileRanges::new`] would produce other shapes.
pub const MANIFEST_FORMAT: u32 = 1;

/// Prompt tokens (BOS + prompt + EOS) the encoder profile allows when the
/// configuration does not say: the longest built-in prompt is 13 tokens,
/// the rest is room for the text of grounding and region tasks.
pub const DEFAULT_MAX_PROMPT_TOKENS: usize = 64;

/// TensorRT tunes kernels for the "opt" shape. Prompts of the built-in
/// tasks are 9–13 tokens long.
const OPT_PROMPT_TOKENS: usize = 16;
/// Decoder steps see every past length from 1 up; results of detection
/// tasks are typically a few dozen tokens.
const OPT_PAST_TOKENS: usize = 64;

/// How often a running build reports that it is still building.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// How long `nvidia-smi` may take before the probe gives up on it (a wedged
/// driver makes it hang).
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {problem}")]
    ModelFile { path: PathBuf, problem: String },
    #[error("optimization profile for {graph}, input {input:?}: {problem}")]
    Profile {
        graph: EngineGraph,
        input: String,
        problem: String,
    },
    #[error("invalid engine build settings: {0}")]
    Settings(String),
    #[error(
        "TensorRT engines are built from the split decoder graphs (decoder_model + decoder_with_past_model); \
         model.decoder = \"merged\" selects decoder_model_merged.onnx, whose If node on use_cache_branch \
         TensorRT cannot build. Set model.decoder = \"split\""
    )]
    MergedDecoder,
    #[error(
        "TensorRT builds engines from float graphs only; precision {variant:?} is an ONNX Runtime (CPU) variant. \
         Allowed for TensorRT: fp32, fp16"
    )]
    NotFloat { variant: String },
    #[error(
        "cannot build TensorRT engines: the loaded ONNX Runtime library {library} has no TensorRT execution provider \
         (a CPU-only build such as the PyPI `onnxruntime` wheel). Install a GPU build with the TensorRT provider \
         (`onnxruntime-gpu` with the TensorRT libraries on the loader path, or JetPack's onnxruntime on a Jetson) \
         and point model.ort_library at it"
    )]
    NoTensorRt { library: PathBuf },
    #[error(
        "cannot build TensorRT engines whose cache could be checked later: {}. Install what is missing \
         (the NVIDIA driver with nvidia-smi, the TensorRT libraries on the loader path) and try again",
        .unknown.join("; ")
    )]
    UnknownHost { unknown: Vec<String> },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: {action} failed: {reason}")]
    Io {
        path: PathBuf,
        action: &'static str,
        reason: String,
    },
    #[error("{path}: not a usable engine manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("building the TensorRT engine for {graph} ({path}) failed after {:.1} s: {reason}", .elapsed.as_secs_f64())]
    Build {
        graph: EngineGraph,
        path: PathBuf,
        elapsed: Duration,
        reason: String,
    },
    #[error(
        "ONNX Runtime opened {path} on TensorRT but wrote no engine file starting with {prefix:?} to {dir}; \
         the engine cache is not working, so every start would build again"
    )]
    NoEngineWritten {
        path: PathBuf,
        prefix: String,
        dir: PathBuf,
    },
    #[error(
        "the TensorRT engines in {dir} {state}; building them takes minutes (on a Jetson), so `run` does not do it \
         unasked. Build them with `florence-edge build-engines --config {config}`, or set \
         model.build_engines_at_start = true to build at start"
    )]
    NotBuilt {
        dir: PathBuf,
        state: String,
        config: String,
    },
}

fn io_err(path: &Path, action: &'static str, e: impl fmt::Display) -> EngineError {
    EngineError::Io {
        path: path.to_path_buf(),
        action,
        reason: e.to_string(),
    }
}

/// The graphs TensorRT engines are built from, in build order. The merged
/// decoder is not among them: its `If` node is what TensorRT rejects.
/// `embed_tokens` is: it is a single Gather, built in seconds, and without a
/// prebuilt engine ONNX Runtime would build one at the first inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineGraph {
    VisionEncoder,
    EmbedTokens,
    Encoder,
    Decoder,
    DecoderWithPast,
}

impl EngineGraph {
    pub const ALL: [EngineGraph; 5] = [
        EngineGraph::VisionEncoder,
        EngineGraph::EmbedTokens,
        EngineGraph::Encoder,
        EngineGraph::Decoder,
        EngineGraph::DecoderWithPast,
    ];

    /// File stem in the onnx-community layout (`onnx/{stem}{_variant}.onnx`).
    pub fn stem(self) -> &'static str {
        match self {
            EngineGraph::VisionEncoder => "vision_encoder",
            EngineGraph::EmbedTokens => "embed_tokens",
            EngineGraph::Encoder => "encoder_model",
            EngineGraph::Decoder => "decoder_model",
            EngineGraph::DecoderWithPast => "decoder_with_past_model",
        }
    }
}

impl fmt::Display for EngineGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.stem())
    }
}

// ---------------------------------------------------------------------------
// Profiles

/// A min/opt/max range of one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AxisRange {
    pub min: u64,
    pub opt: u64,
    pub max: u64,
}

impl AxisRange {
    fn fixed(n: u64) -> Self {
        Self {
            min: n,
            opt: n,
            max: n,
        }
    }

    fn new(min: u64, opt: u64, max: u64) -> Self {
        Self {
            min,
            opt: opt.clamp(min, max),
            max,
        }
    }
}

impl fmt::Display for AxisRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{} (opt {})", self.min, self.max, self.opt)
        }
    }
}

/// What the configuration asks of the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileBounds {
    /// Images, and prompts, per batch (`model.max_batch`).
    pub max_batch: usize,
    /// 1 for greedy decoding; beam search runs `num_beams` decoder rows per
    /// prompt.
    pub num_beams: usize,
    /// `model.decoding.max_new_tokens`.
    pub max_new_tokens: usize,
    /// Longest tokenized prompt, BOS and EOS included.
    pub max_prompt_tokens: usize,
}

/// What the model directory says about shapes (DESIGN.md §3: read from the
/// files, never assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShapes {
    pub image_height: u64,
    pub image_width: u64,
    /// Image tokens the vision encoder produces (577 for Florence-2).
    pub image_tokens: u64,
    /// Position embeddings of the language encoder and decoder, if
    /// config.json says.
    pub max_positions: Option<u64>,
}

fn read_json(path: &Path) -> Result<serde_json::Value, EngineError> {
    let text = fs::read_to_string(path).map_err(|e| EngineError::ModelFile {
        path: path.to_path_buf(),
        problem: format!("cannot be read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::ModelFile {
        path: path.to_path_buf(),
        problem: format!("is not valid JSON: {e}"),
    })
}

impl ModelShapes {
    /// preprocessor_config.json: `size.{height,width}` and
    /// `image_seq_length`; config.json: `text_config.max_position_embeddings`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, EngineError> {
        let pre_path = dir.join("preprocessor_config.json");
        let pre = read_json(&pre_path)?;
        let number = |v: &serde_json::Value, key: &str| -> Result<u64, EngineError> {
            v.as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| EngineError::ModelFile {
                    path: pre_path.clone(),
                    problem: format!("{key} is {v}; expected a positive integer"),
                })
        };
        let size = pre.get("size").ok_or_else(|| EngineError::ModelFile {
            path: pre_path.clone(),
            problem: "has no `size` (the image size the vision encoder takes)".into(),
        })?;
        let image_height = number(&size["height"], "size.height")?;
        let image_width = number(&size["width"], "size.width")?;
        let image_tokens = number(&pre["image_seq_length"], "image_seq_length")?;
        let cfg_path = dir.join("config.json");
        let max_positions = if cfg_path.is_file() {
            let cfg = read_json(&cfg_path)?;
            cfg.get("text_config")
                .and_then(|t| t.get("max_position_embeddings"))
                .or_else(|| cfg.get("max_position_embeddings"))
                .and_then(serde_json::Value::as_u64)
        } else {
            None
        };
        Ok(Self {
            image_height,
            image_width,
            image_tokens,
            max_positions,
        })
    }
}

/// The axis ranges all profiles are made of. Part of the fingerprint: a
/// change here (e.g. a larger max_batch) means a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRanges {
    /// Vision encoder batch: images per batch.
    pub images: AxisRange,
    /// Encoder batch: prompts per batch (several tasks may share an image).
    pub prompts: AxisRange,
    /// Decoder rows: prompts × beams. embed_tokens runs on prompts (for the
    /// encoder) and on decoder rows (one token per step), so it takes these.
    pub rows: AxisRange,
    pub image_height: u64,
    pub image_width: u64,
    /// embed_tokens sequence: 1 (a decoder step) up to the longest prompt.
    pub prompt_tokens: AxisRange,
    /// Encoder sequence: the image tokens plus BOS + prompt + EOS.
    pub encoder_tokens: AxisRange,
    /// Decoder KV cache length fed to decoder_with_past: step k (k ≥ 1)
    /// feeds k past tokens, and decoding stops at max_length − 1 =
    /// max_new_tokens tokens.
    pub past_tokens: AxisRange,
}

impl ProfileRanges {
    pub fn new(bounds: &ProfileBounds, shapes: &ModelShapes) -> Result<Self, EngineError> {
        let ProfileBounds {
            max_batch,
            num_beams,
            max_new_tokens,
            max_prompt_tokens,
        } = *bounds;
        if max_batch == 0 || num_beams == 0 || max_new_tokens == 0 {
            return Err(EngineError::Settings(format!(
                "max_batch ({max_batch}), num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must each be at least 1"
            )));
        }
        // BOS + at least one prompt token + EOS.
        if max_prompt_tokens < 3 {
            return Err(EngineError::Settings(format!(
                "max_prompt_tokens is {max_prompt_tokens}; a prompt is at least 3 tokens (BOS, text, EOS)"
            )));
        }
        let encoder_max = shapes.image_tokens + max_prompt_tokens as u64;
        if let Some(limit) = shapes.max_positions {
            if encoder_max > limit {
                return Err(EngineError::Settings(format!(
                    "{} image tokens + {max_prompt_tokens} prompt tokens = {encoder_max} exceeds the model's {limit} positions; \
                     lower max_prompt_tokens to at most {}",
                    shapes.image_tokens,
                    limit.saturating_sub(shapes.image_tokens)
                )));
            }
            // The decoder sees max_length = 1 + max_new_tokens positions.
            if max_new_tokens as u64 + 1 > limit {
                return Err(EngineError::Settings(format!(
                    "max_new_tokens {max_new_tokens} + 1 exceeds the model's {limit} decoder positions"
                )));
            }
        }
        let batch = max_batch as u64;
        let rows = batch * num_beams as u64;
        let prompt = max_prompt_tokens as u64;
        Ok(Self {
            // Opt at the maximum: batches fill up exactly when throughput
            // matters.
            images: AxisRange::new(1, batch, batch),
            prompts: AxisRange::new(1, batch, batch),
            rows: AxisRange::new(1, rows, rows),
            image_height: shapes.image_height,
            image_width: shapes.image_width,
            prompt_tokens: AxisRange::new(1, 1, prompt),
            encoder_tokens: AxisRange::new(
                shapes.image_tokens + 1,
                shapes.image_tokens + OPT_PROMPT_TOKENS as u64,
                encoder_max,
            ),
            past_tokens: AxisRange::new(1, OPT_PAST_TOKENS as u64, max_new_tokens as u64),
        })
    }

    /// Field-by-field differences, for "what changed" messages.
    fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut axis = |name: &str, a: AxisRange, b: AxisRange| {
            if a != b {
                out.push(format!("profile {name} {a} → {b}"));
            }
        };
        axis("images", self.images, other.images);
        axis("prompts", self.prompts, other.prompts);
        axis("decoder rows", self.rows, other.rows);
        axis("prompt tokens", self.prompt_tokens, other.prompt_tokens);
        axis("encoder tokens", self.encoder_tokens, other.encoder_tokens);
        axis("past tokens", self.past_tokens, other.past_tokens);
        if (self.image_height, self.image_width) != (other.image_height, other.image_width) {
            out.push(format!(
                "image size {}×{} → {}×{}",
                self.image_width, self.image_height, other.image_width, other.image_height
            ));
        }
        out
    }
}

/// One graph input as the graph declares it: `None` for a dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub dims: Vec<Option<u64>>,
}

/// The shapes of one input in a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShapes {
    pub name: String,
    pub min: Vec<u64>,
    pub opt: Vec<u64>,
    pub max: Vec<u64>,
}

/// One graph's optimization profile: every input with its shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphProfile {
    pub graph: EngineGraph,
    pub inputs: Vec<InputShapes>,
}

impl GraphProfile {
    fn shapes(&self, pick: impl Fn(&InputShapes) -> &Vec<u64>) -> String {
        self.inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = pick(i).iter().map(u64::to_string).collect();
                format!("{}:{}", i.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The provider's `trt_profile_{min,opt,max}_shapes` strings.
    pub fn tensorrt_profile(&self) -> TensorRtProfile {
        TensorRtProfile {
            min_shapes: self.shapes(|i| &i.min),
            opt_shapes: self.shapes(|i| &i.opt),
            max_shapes: self.shapes(|i| &i.max),
        }
    }

    pub fn input(&self, name: &str) -> Option<&InputShapes> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// Which range an axis of an input follows, by the graph contract of
/// DESIGN.md §3 (the names are those src/florence2/graphs.rs checks).
fn axis_range(
    graph: EngineGraph,
    input: &str,
    axis: usize,
    r: &ProfileRanges,
) -> Option<AxisRange> {
    use EngineGraph as G;
    let past = input.strip_prefix("past_key_values.");
    match (graph, input, axis) {
        (G::VisionEncoder, "pixel_values", 0) => Some(r.images),
        (G::VisionEncoder, "pixel_values", 1) => Some(AxisRange::fixed(3)),
        (G::VisionEncoder, "pixel_values", 2) => Some(AxisRange::fixed(r.image_height)),
        (G::VisionEncoder, "pixel_values", 3) => Some(AxisRange::fixed(r.image_width)),
        (G::EmbedTokens, "input_ids", 0) => Some(r.rows),
        (G::EmbedTokens, "input_ids", 1) => Some(r.prompt_tokens),
        (G::Encoder, "attention_mask" | "inputs_embeds", 0) => Some(r.prompts),
        (G::Encoder, "attention_mask" | "inputs_embeds", 1) => Some(r.encoder_tokens),
        (G::Decoder | G::DecoderWithPast, _, 0)
            if past.is_some() || DECODER_INPUTS.contains(&input) =>
        {
            Some(r.rows)
        }
        (
            G::Decoder | G::DecoderWithPast,
            "encoder_attention_mask" | "encoder_hidden_states",
            1,
        ) => Some(r.encoder_tokens),
        // One new token per row and step; the first step feeds the decoder
        // start token alone.
        (G::Decoder | G::DecoderWithPast, "inputs_embeds", 1) => Some(AxisRange::fixed(1)),
        (G::DecoderWithPast, _, 2) => match past {
            Some(rest) if rest.contains(".decoder.") => Some(r.past_tokens),
            Some(rest) if rest.contains(".encoder.") => Some(r.encoder_tokens),
            _ => None,
        },
        _ => None,
    }
}

const DECODER_INPUTS: [&str; 3] = [
    "encoder_attention_mask",
    "encoder_hidden_states",
    "inputs_embeds",
];

/// Inputs each graph may declare (past_key_values.* only for the decoder
/// with past).
fn input_allowed(graph: EngineGraph, name: &str) -> bool {
    match graph {
        EngineGraph::VisionEncoder => name == "pixel_values",
        EngineGraph::EmbedTokens => name == "input_ids",
        EngineGraph::Encoder => matches!(name, "attention_mask" | "inputs_embeds"),
        EngineGraph::Decoder => DECODER_INPUTS.contains(&name),
        EngineGraph::DecoderWithPast => {
            DECODER_INPUTS.contains(&name)
                || (name.starts_with("past_key_values.")
                    && (name.contains(".decoder.") || name.contains(".encoder.")))
        }
    }
}

/// The optimization profile of one graph from the inputs it declares.
/// Fixed axes keep the graph's size (heads, head size, hidden size) and must
/// agree with the contract where it names one (image size); every dynamic
/// axis must have a range in the contract — an input or axis this code does
/// not know is an error naming it, never a guess.
pub fn graph_profile(
    graph: EngineGraph,
    inputs: &[InputSpec],
    ranges: &ProfileRanges,
) -> Result<GraphProfile, EngineError> {
    let err = |input: &str, problem: String| EngineError::Profile {
        graph,
        input: input.to_string(),
        problem,
    };
    if inputs.iter().any(|i| i.name == "use_cache_branch") {
        return Err(EngineError::MergedDecoder);
    }
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        if !input_allowed(graph, &input.name) {
            return Err(err(
                &input.name,
                "is not an input of this graph in the Florence-2 graph contract (DESIGN.md §3)"
                    .into(),
            ));
        }
        let (mut min, mut opt, mut max) = (Vec::new(), Vec::new(), Vec::new());
        for (axis, dim) in input.dims.iter().enumerate() {
            let range = match (dim, axis_range(graph, &input.name, axis, ranges)) {
                (Some(n), Some(r)) if r.min == r.max && r.min != *n => {
                    return Err(err(
                        &input.name,
                        format!("axis {axis} is {n} in the graph but {} by the model's configuration", r.min),
                    ))
                }
                (Some(n), Some(r)) if r.min != r.max => {
                    return Err(err(
                        &input.name,
                        format!("axis {axis} is fixed to {n} in the graph but must range over {r}"),
                    ))
                }
                (Some(n), _) => AxisRange::fixed(*n),
                (None, Some(r)) => r,
                (None, None) => {
                    return Err(err(
                        &input.name,
                        format!(
                            "axis {axis} is dynamic in the graph and the graph contract gives no range for it"
                        ),
                    ))
                }
            };
            min.push(range.min);
            opt.push(range.opt);
            max.push(range.max);
        }
        out.push(InputShapes {
            name: input.name.clone(),
            min,
            opt,
            max,
        });
    }
    Ok(GraphProfile { graph, inputs: out })
}

/// The inputs a graph file declares, read with a CPU session (no graph
/// optimization, nothing run).
pub fn read_graph_inputs(rt: &OrtRuntime, path: &Path) -> Result<Vec<InputSpec>, EngineError> {
    use ort::session::builder::GraphOptimizationLevel;
    use ort::session::Session;
    use ort::value::ValueType;
    let err = |e: String| {
        EngineError::Runtime(RuntimeError::Session {
            path: path.to_path_buf(),
            reason: e,
        })
    };
    let session = Session::builder(&rt.environment)
        .map_err(|e| err(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| err(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| err(e.to_string()))?;
    session
        .inputs()
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { shape, .. } => Ok(InputSpec {
                name: o.name().to_string(),
                dims: shape.iter().map(|&d| u64::try_from(d).ok()).collect(),
            }),
            other => Err(err(format!(
                "input {:?} is {other:?}; TensorRT profiles need tensors",
                o.name()
            ))),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Host probes

/// A fingerprint component: known, or unknown with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probed {
    Known(String),
    Unknown(String),
}

impl Probed {
    pub fn known(&self) -> Option<&str> {
        match self {
            Probed::Known(v) => Some(v),
            Probed::Unknown(_) => None,
        }
    }
}

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probed::Known(v) => f.write_str(v),
            Probed::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// What the engines depend on besides the graphs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub gpu_name: Probed,
    pub compute_capability: Probed,
    /// Recorded, not compared: engines depend on TensorRT and the GPU, not
    /// on the driver (TensorRT itself rejects a driver too old for it).
    pub driver_version: Probed,
    pub tensorrt_version: Probed,
    pub onnxruntime_version: Probed,
}

impl HostFacts {
    /// Probes this machine: GPU 0 (the device ONNX Runtime uses by default)
    /// through nvidia-smi or, on a Jetson, the device tree; TensorRT through
    /// `getInferLibVersion` of the libnvinfer the loader finds; ONNX Runtime
    /// through the loaded library's `GetVersionString`.
    pub fn probe(rt: &OrtRuntime) -> Self {
        let gpu = probe_gpu();
        Self {
            gpu_name: gpu.0,
            compute_capability: gpu.1,
            driver_version: gpu.2,
            tensorrt_version: probe_tensorrt(),
            onnxruntime_version: probe_onnxruntime(&rt.library),
        }
    }
}

/// One line of `nvidia-smi --query-gpu=name,compute_cap,driver_version
/// --format=csv,noheader`: `NVIDIA GeForce RTX 4090, 8.9, 550.54.15`.
/// Fields nvidia-smi cannot fill read `[N/A]` (Jetson).
pub fn parse_nvidia_smi_line(line: &str) -> (Probed, Probed, Probed) {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let field = |i: usize, what: &str| match fields.get(i) {
        Some(v) if !v.is_empty() && !v.starts_with('[') => Probed::Known((*v).to_string()),
        Some(v) => Probed::Unknown(format!("nvidia-smi reports {what} as {v:?}")),
        None => Probed::Unknown(format!("nvidia-smi printed no {what} in {line:?}")),
    };
    (
        field(0, "the GPU name"),
        field(1, "the compute capability"),
        field(2, "the driver version"),
    )
}

/// Compute capability of the Tegra SoC named in /proc/device-tree/compatible
/// (NUL-separated strings such as `nvidia,p3737-0000+p3701-0000\0nvidia,tegra234`).
pub fn tegra_compute_capability(compatible: &str) -> Probed {
    let known = [
        ("nvidia,tegra234", "8.7"), // Orin
        ("nvidia,tegra194", "7.2"), // Xavier
        ("nvidia,tegra186", "6.2"), // TX2
        ("nvidia,tegra210", "5.3"), // Nano, TX1
    ];
    let names: Vec<&str> = compatible
        .split('\0')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for (soc, cc) in known {
        if names.contains(&soc) {
            return Probed::Known(cc.to_string());
        }
    }
    Probed::Unknown(format!(
        "no known Tegra SoC in /proc/device-tree/compatible ({})",
        names.join(", ")
    ))
}

/// `/etc/nv_tegra_release`: `# R36 (release), REVISION: 4.0, GCID: …` →
/// `L4T R36.4.0`.
pub fn parse_nv_tegra_release(text: &str) -> Probed {
    let line = text.lines().next().unwrap_or("");
    let release = line
        .split_whitespace()
        .find(|w| w.starts_with('R') && w[1..].chars().all(|c| c.is_ascii_digit()) && w.len() > 1);
    let revision = line
        .split("REVISION:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(str::trim)
        .filter(|r| !r.is_empty());
    match (release, revision) {
        (Some(r), Some(v)) => Probed::Known(format!("L4T {r}.{v}")),
        _ => Probed::Unknown(format!(
            "/etc/nv_tegra_release starts {line:?}; expected `# R36 (release), REVISION: 4.0, …`"
        )),
    }
}

/// Runs a command, giving up after `timeout`; stdout on success.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut so) = child.stdout.take() {
                    so.read_to_string(&mut out)
                        .map_err(|e| format!("cannot read its output: {e}"))?;
                }
                return if status.success() {
                    Ok(out)
                } else {
                    Err(format!("it exited with {status}"))
                };
            }
            Ok(None) if start.elapsed() > timeout => {
                // The child is ours; a failure to kill it leaves nothing to do.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}

fn probe_gpu() -> (Probed, Probed, Probed) {
    let mut cmd = Command::new("nvidia-smi");
    cmd.args([
        "--query-gpu=name,compute_cap,driver_version",
        "--format=csv,noheader",
        "--id=0",
    ]);
    let smi = run_with_timeout(cmd, NVIDIA_SMI_TIMEOUT);
    let (mut name, mut cc, mut driver) = match &smi {
        Ok(out) => match out.lines().find(|l| !l.trim().is_empty()) {
            Some(line) => parse_nvidia_smi_line(line),
            None => {
                let why = Probed::Unknown("nvidia-smi printed nothing".into());
                (why.clone(), why.clone(), why)
            }
        },
        Err(e) => {
            let why = Probed::Unknown(format!("nvidia-smi: {e}"));
            (why.clone(), why.clone(), why)
        }
    };
    // Jetson: nvidia-smi is missing or reports [N/A]; the device tree knows.
    if let Ok(compatible) = fs::read("/proc/device-tree/compatible") {
        let compatible = String::from_utf8_lossy(&compatible);
        if compatible.contains("nvidia,tegra") {
            if name.known().is_none() {
                if let Ok(model) = fs::read("/proc/device-tree/model") {
                    let model = String::from_utf8_lossy(&model);
                    let model = model.trim_end_matches('\0').trim();
                    if !model.is_empty() {
                        name = Probed::Known(model.to_string());
                    }
                }
            }
            if cc.known().is_none() {
                cc = tegra_compute_capability(&compatible);
            }
            if driver.known().is_none() {
                driver = match fs::read_to_string("/etc/nv_tegra_release") {
                    Ok(t) => parse_nv_tegra_release(&t),
                    Err(e) => Probed::Unknown(format!("/etc/nv_tegra_release: {e}")),
                };
            }
        }
    }
    (name, cc, driver)
}

/// `getInferLibVersion()`: TensorRT 10 encodes major·10000 + minor·100 +
/// patch, TensorRT 8 major·1000 + minor·100 + patch.
pub fn decode_tensorrt_version(v: i32) -> String {
    if v >= 100_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// The sonames ONNX Runtime's TensorRT provider links against, newest first.
const LIBNVINFER: [&str; 4] = [
    "libnvinfer.so.10",
    "libnvinfer.so.11",
    "libnvinfer.so.8",
    "libnvinfer.so",
];

/// An error with its sources: libloading's own message is only "dlopen
/// failed"; the loader's reason is in the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn probe_tensorrt() -> Probed {
    let mut tried = Vec::new();
    for name in LIBNVINFER {
        // SAFETY: loading libnvinfer runs its initialisers, which the
        // TensorRT provider runs anyway when it loads the same library.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                // SAFETY: `int32_t getInferLibVersion()` takes nothing and
                // returns an int, in every TensorRT since 5.
                let version = unsafe {
                    lib.get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion")
                        .map(|f| f())
                };
                return match version {
                    Ok(v) => Probed::Known(decode_tensorrt_version(v)),
                    Err(e) => Probed::Unknown(format!(
                        "{name} has no getInferLibVersion: {}",
                        error_chain(&e)
                    )),
                };
            }
            Err(e) => tried.push(error_chain(&e)),
        }
    }
    Probed::Unknown(format!(
        "TensorRT's library is not on the loader path ({})",
        tried.join("; ")
    ))
}

fn probe_onnxruntime(library: &Path) -> Probed {
    // SAFETY: the library is already loaded by `ort`; this takes another
    // reference to the same handle, so no initialiser runs again.
    let lib = match unsafe { libloading::Library::new(library) } {
        Ok(l) => l,
        Err(e) => {
            return Probed::Unknown(format!(
                "cannot open {}: {}",
                library.display(),
                error_chain(&e)
            ))
        }
    };
    // SAFETY: `OrtGetApiBase` is the library's documented entry point and
    // returns a pointer to a static struct; `GetVersionString` returns a
    // static NUL-terminated string.
    unsafe {
        let getter = match lib
            .get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase")
        {
            Ok(g) => g,
            Err(e) => return Probed::Unknown(format!("{}: {e}", library.display())),
        };
        let base = getter();
        if base.is_null() {
            return Probed::Unknown(format!(
                "{}: OrtGetApiBase returned null",
                library.display()
            ));
        }
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return Probed::Unknown(format!(
                "{}: GetVersionString returned null",
                library.display()
            ));
        }
        match std::ffi::CStr::from_ptr(s).to_str() {
            Ok(v) => Probed::Known(v.to_string()),
            Err(e) => Probed::Unknown(format!("{}: version is not UTF-8: {e}", library.display())),
        }
    }
}

// ---------------------------------------------------------------------------
// File hashes

/// One model file the engines were built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphFile {
    /// Path relative to the model directory, e.g. `onnx/decoder_model_fp16.onnx`.
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// A remembered hash: valid while the file keeps its size and mtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashCacheEntry {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
    pub sha256: String,
}

/// Hashes of graph files keyed by (path, size, mtime): hashing a 1 GB
/// graph at every start would take seconds on a Jetson. A file rewritten
/// with the same size and its mtime put back would be missed; copying a new
/// model in never does that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashCache {
    pub entries: Vec<HashCacheEntry>,
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

impl HashCache {
    /// SHA-256 of the file, from the cache when size and mtime match.
    /// Returns the hash and whether it came from the cache.
    pub fn sha256(&mut self, path: &Path) -> Result<(u64, String, bool), EngineError> {
        let meta = fs::metadata(path).map_err(|e| io_err(path, "reading the metadata", e))?;
        let (size, mtime) = (meta.len(), mtime_ns(&meta));
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.path == path && e.size == size && e.mtime_ns == mtime)
        {
            return Ok((size, e.sha256.clone(), true));
        }
        let mut file = fs::File::open(path).map_err(|e| io_err(path, "opening", e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| io_err(path, "reading", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sha = hex(&hasher.finalize());
        self.entries.retain(|e| e.path != path);
        self.entries.push(HashCacheEntry {
            path: path.to_path_buf(),
            size,
            mtime_ns: mtime,
            sha256: sha.clone(),
        });
        Ok((size, sha, false))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// What to build

/// Everything an engine build depends on from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSpec {
    pub model_dir: PathBuf,
    /// Which ONNX files: `fp32` (`encoder_model.onnx`) or `fp16`
    /// (`encoder_model_fp16.onnx`).
    pub variant: String,
    /// TensorRT FP16 kernels (LayerNorm kept in FP32).
    pub fp16: bool,
    /// `model.decoder = "merged"`: refused.
    pub merged_decoder: bool,
    pub engines_dir: PathBuf,
    pub bounds: ProfileBounds,
}

impl EngineSpec {
    /// What a configuration asks TensorRT to build: the graphs of
    /// `model.precision` (fp32 files when unset), FP16 kernels unless fp32 is
    /// asked for explicitly, profiles up to `max_batch` × beams and
    /// `max_new_tokens`.
    pub fn from_config(c: &crate::config::Config) -> EngineSpec {
        use crate::config::{DecoderLayout, DecodingStrategy, Precision};
        let m = &c.model;
        EngineSpec {
            model_dir: m.dir.clone(),
            variant: m.precision.map_or("fp32", |p| p.name()).to_string(),
            fp16: m.precision != Some(Precision::Fp32),
            merged_decoder: m.decoder == DecoderLayout::Merged,
            engines_dir: engines_dir_or_default(m.engines_dir.as_deref()),
            bounds: ProfileBounds {
                max_batch: m.max_batch,
                num_beams: if m.decoding.strategy == DecodingStrategy::Beam {
                    m.decoding.num_beams as usize
                } else {
                    1
                },
                max_new_tokens: m.decoding.max_new_tokens as usize,
                max_prompt_tokens: DEFAULT_MAX_PROMPT_TOKENS,
            },
        }
    }
}

/// The engine directory: the configured one, else `engines` under the
/// service's state directory (`$STATE_DIRECTORY` as systemd sets it, else
/// /var/lib/florence-edge).
pub fn engines_dir_or_default(configured: Option<&Path>) -> PathBuf {
    engines_dir_from(configured, std::env::var("STATE_DIRECTORY").ok().as_deref())
}

/// [`engines_dir_or_default`] with the environment passed in.
pub fn engines_dir_from(configured: Option<&Path>, state_directory: Option<&str>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    // systemd joins several StateDirectory= entries with ':'; the first is
    // the service's own.
    let state = state_directory
        .and_then(|s| s.split(':').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("/var/lib/florence-edge");
    Path::new(state).join("engines")
}

impl EngineSpec {
    fn validate(&self) -> Result<(), EngineError> {
        if self.merged_decoder {
            return Err(EngineError::MergedDecoder);
        }
        if !matches!(self.variant.as_str(), "fp32" | "fp16") {
            return Err(EngineError::NotFloat {
                variant: self.variant.clone(),
            });
        }
        Ok(())
    }

    fn suffix(&self) -> String {
        if self.variant == "fp32" {
            String::new()
        } else {
            format!("_{}", self.variant)
        }
    }

    /// The graph files, in build order, with their paths relative to the
    /// model directory.
    pub fn graph_files(&self) -> Result<Vec<(EngineGraph, String)>, EngineError> {
        self.validate()?;
        let sfx = self.suffix();
        EngineGraph::ALL
            .iter()
            .map(|&g| {
                let rel = format!("onnx/{}{sfx}.onnx", g.stem());
                let abs = self.model_dir.join(&rel);
                if abs.is_file() {
                    return Ok((g, rel));
                }
                // As the loader does: variants often ship embed_tokens in
                // FP32 only.
                let fp32 = format!("onnx/{}.onnx", g.stem());
                if g == EngineGraph::EmbedTokens && self.model_dir.join(&fp32).is_file() {
                    return Ok((g, fp32));
                }
                Err(EngineError::ModelFile {
                    path: abs,
                    problem: format!(
                        "is missing; TensorRT engines for variant {:?} are built from onnx/{}{sfx}.onnx",
                        self.variant,
                        g.stem()
                    ),
                })
            })
            .collect()
    }

    /// Engine file prefix of a graph; the variant is part of it so fp16 and
    /// fp32 engines can share a directory without overwriting each other.
    pub fn engine_prefix(&self, graph: EngineGraph) -> String {
        format!("{}_{}", graph.stem(), self.variant)
    }

    pub fn precision(&self) -> String {
        format!(
            "{} graphs, {} engines",
            self.variant,
            if self.fp16 { "fp16" } else { "fp32" }
        )
    }
}

// ---------------------------------------------------------------------------
// Fingerprint and manifest

/// What a set of engines was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFingerprint {
    pub format: u32,
    pub gpu_name: Probed,
    pub compute_capability: Probed,
    pub driver_version: Probed,
    pub tensorrt_version: Probed,
    pub onnxruntime_version: Probed,
    /// E.g. "fp16 graphs, fp16 engines".
    pub precision: String,
    pub profiles: ProfileRanges,
    pub graphs: Vec<GraphFile>,
}

impl EngineFingerprint {
    /// The fingerprint of this machine and model now. Hashes come from
    /// `hashes` when the files are unchanged; emits a [`BuildEvent::Hashing`]
    /// per file hashed for real.
    pub fn current(
        spec: &EngineSpec,
        host: &HostFacts,
        hashes: &mut HashCache,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<Self, EngineError> {
        let shapes = ModelShapes::from_model_dir(&spec.model_dir)?;
        let profiles = ProfileRanges::new(&spec.bounds, &shapes)?;
        let mut graphs = Vec::new();
        for (_, rel) in spec.graph_files()? {
            let mut files = vec![rel.clone()];
            // Graphs over 2 GB keep their weights beside them.
            let data = format!("{rel}_data");
            if spec.model_dir.join(&data).is_file() {
                files.push(data);
            }
            for file in files {
                let path = spec.model_dir.join(&file);
                let (size, sha256, cached) = hashes.sha256(&path)?;
                if !cached {
                    progress(BuildEvent::Hashed {
                        file: path.clone(),
                        size,
                    });
                }
                graphs.push(GraphFile { file, size, sha256 });
            }
        }
        Ok(Self {
            format: MANIFEST_FORMAT,
            gpu_name: host.gpu_name.clone(),
            compute_capability: host.compute_capability.clone(),
            driver_version: host.driver_version.clone(),
            tensorrt_version: host.tensorrt_version.clone(),
            onnxruntime_version: host.onnxruntime_version.clone(),
            precision: spec.precision(),
            profiles,
            graphs,
        })
    }

    /// Stable JSON (fields in declaration order, lists in build order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of [`Self::to_json`], for logs.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.to_json().as_bytes()))
    }

    /// Components that could not be probed, each with the reason.
    pub fn unknown_components(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, p) in [
            ("GPU name", &self.gpu_name),
            ("compute capability", &self.compute_capability),
            ("TensorRT version", &self.tensorrt_version),
            ("ONNX Runtime version", &self.onnxruntime_version),
        ] {
            if let Probed::Unknown(why) = p {
                out.push(format!("{what} unknown: {why}"));
            }
        }
        out
    }

    /// What differs from `built` (the fingerprint in the manifest) to `self`
    /// (now), in words; unknown components count as changes.
    pub fn changes_since(&self, built: &EngineFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if built.format != self.format {
            out.push(format!(
                "manifest format {} → {} (new profile rules)",
                built.format, self.format
            ));
        }
        for (what, old, new) in [
            ("GPU", &built.gpu_name, &self.gpu_name),
            (
                "compute capability",
                &built.compute_capability,
                &self.compute_capability,
            ),
            ("TensorRT", &built.tensorrt_version, &self.tensorrt_version),
            (
                "ONNX Runtime",
                &built.onnxruntime_version,
                &self.onnxruntime_version,
            ),
        ] {
            match (old, new) {
                (Probed::Known(a), Probed::Known(b)) if a == b => {}
                (Probed::Known(a), Probed::Known(b)) => out.push(format!("{what} {a} → {b}")),
                (_, Probed::Unknown(why)) => out.push(format!(
                    "{what} unknown now ({why}), so the engines cannot be checked"
                )),
                (Probed::Unknown(_), Probed::Known(b)) => out.push(format!(
                    "{what} was unknown when the engines were built, now {b}"
                )),
            }
        }
        if built.precision != self.precision {
            out.push(format!(
                "precision {} → {}",
                built.precision, self.precision
            ));
        }
        out.extend(built.profiles.differences(&self.profiles));
        for g in &self.graphs {
            match built.graphs.iter().find(|b| b.file == g.file) {
                None => out.push(format!("{} was not among the graphs built", g.file)),
                Some(b) if b.sha256 != g.sha256 || b.size != g.size => {
                    out.push(format!("{} changed", file_name(&g.file)))
                }
                Some(_) => {}
            }
        }
        for b in &built.graphs {
            if !self.graphs.iter().any(|g| g.file == b.file) {
                out.push(format!("{} is no longer used", b.file));
            }
        }
        out
    }
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// One built engine in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltGraph {
    pub graph: EngineGraph,
    /// Relative to the model directory.
    pub file: String,
    pub engine_prefix: String,
    pub profile: GraphProfile,
    /// Files ONNX Runtime wrote for it, relative to the engine directory.
    pub engine_files: Vec<String>,
    pub build_ms: u64,
}

/// `manifest.json`: the fingerprint the engines in this directory were
/// built for, the engines, and the hash cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineManifest {
    pub fingerprint: EngineFingerprint,
    pub built_unix_s: u64,
    pub graphs: Vec<BuiltGraph>,
    #[serde(default)]
    pub hash_cache: HashCache,
}

impl EngineManifest {
    pub fn read(engines_dir: &Path) -> Result<Option<Self>, EngineError> {
        let path = engines_dir.join(MANIFEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "reading", e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::Manifest {
                path,
                reason: e.to_string(),
            })
    }

    /// Written to a temporary file, synced and renamed over the old one, so
    /// a crash leaves either the old manifest or the new one.
    pub fn write(&self, engines_dir: &Path) -> Result<PathBuf, EngineError> {
        let path = engines_dir.join(MANIFEST_FILE);
        let tmp = engines_dir.join(format!("{MANIFEST_FILE}.tmp"));
        let json = serde_json::to_string_pretty(self).map_err(|e| EngineError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, "creating", e))?;
        f.write_all(json.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&tmp, "writing", e))?;
        fs::rename(&tmp, &path)
            .map_err(|e| io_err(&path, "renaming the new manifest into place", e))?;
        if let Ok(dir) = fs::File::open(engines_dir) {
            // Makes the rename durable; a failure only weakens that.
            let _ = dir.sync_all();
        }
        Ok(path)
    }

    /// TensorRT settings to open a graph with: the same profile and engine
    /// prefix it was built with, so ONNX Runtime loads the engine instead of
    /// building another.
    pub fn session_options(&self, graph: EngineGraph) -> Option<TensorRtSessionOptions> {
        self.graphs
            .iter()
            .find(|g| g.graph == graph)
            .map(|g| TensorRtSessionOptions {
                profile: Some(g.profile.tensorrt_profile()),
                engine_cache_prefix: Some(g.engine_prefix.clone()),
                detailed_build_log: false,
                builder_optimization_level: None,
            })
    }
}

/// Whether the engine cache can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineCacheState {
    Fresh,
    /// No manifest: nothing was built here (or a build was interrupted).
    Missing,
    Stale {
        what_changed: Vec<String>,
    },
}

impl fmt::Display for EngineCacheState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineCacheState::Fresh => f.write_str("are up to date"),
            EngineCacheState::Missing => f.write_str("have not been built (no manifest.json)"),
            EngineCacheState::Stale { what_changed } => {
                write!(f, "are stale: {}", what_changed.join("; "))
            }
        }
    }
}

/// Compares the manifest in `engines_dir` with `fingerprint` and checks that
/// every engine file it lists is still there.
pub fn check(
    engines_dir: &Path,
    fingerprint: &EngineFingerprint,
) -> Result<EngineCacheState, EngineError> {
    Ok(match read_for_check(engines_dir)? {
        Err(state) => state,
        Ok(manifest) => state_against(&manifest, engines_dir, fingerprint),
    })
}

/// The manifest, or the state its absence or corruption means: a manifest
/// that cannot be parsed is stale (a rebuild writes a good one), not an
/// error that would need a person to delete it.
fn read_for_check(
    engines_dir: &Path,
) -> Result<Result<EngineManifest, EngineCacheState>, EngineError> {
    match EngineManifest::read(engines_dir) {
        Ok(Some(m)) => Ok(Ok(m)),
        Ok(None) => Ok(Err(EngineCacheState::Missing)),
        Err(EngineError::Manifest { path, reason }) => Ok(Err(EngineCacheState::Stale {
            what_changed: vec![format!("{} cannot be used: {reason}", path.display())],
        })),
        Err(e) => Err(e),
    }
}

fn state_against(
    manifest: &EngineManifest,
    engines_dir: &Path,
    fingerprint: &EngineFingerprint,
) -> EngineCacheState {
    let mut what_changed = fingerprint.changes_since(&manifest.fingerprint);
    for g in &manifest.graphs {
        if g.engine_files.is_empty() {
            what_changed.push(format!("no engine file recorded for {}", g.graph));
        }
        for f in &g.engine_files {
            if !engines_dir.join(f).is_file() {
                what_changed.push(format!("engine file {f} is missing"));
            }
        }
    }
    for graph in EngineGraph::ALL {
        if !manifest.graphs.iter().any(|g| g.graph == graph) {
            what_changed.push(format!("no engine was built for {graph}"));
        }
    }
    if what_changed.is_empty() {
        EngineCacheState::Fresh
    } else {
        EngineCacheState::Stale { what_changed }
    }
}

// ---------------------------------------------------------------------------
// Building

/// Progress of a build, for a display (`Display` gives one line each).
#[derive(Debug, Clone, PartialEq)]
pub enum BuildEvent {
    Hashed {
        file: PathBuf,
        size: u64,
    },
    ReadingInputs {
        graph: EngineGraph,
        file: PathBuf,
    },
    Started {
        index: usize,
        total: usize,
        graph: EngineGraph,
        file: PathBuf,
        size: u64,
    },
    StillBuilding {
        index: usize,
        total: usize,
        graph: EngineGraph,
        elapsed: Duration,
    },
    Finished {
        index: usize,
        total: usize,
        graph: EngineGraph,
        elapsed: Duration,
        engine_files: Vec<PathBuf>,
    },
    ManifestWritten {
        path: PathBuf,
    },
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for BuildEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildEvent::Hashed { file, size } => {
                write!(f, "hashed {} ({:.1} MiB)", file.display(), mib(*size))
            }
            BuildEvent::ReadingInputs { graph, file } => {
                write!(f, "reading the inputs of {graph} ({})", file.display())
            }
            BuildEvent::Started {
                index,
                total,
                graph,
                file,
                size,
            } => write!(
                f,
                "[{index}/{total}] building the TensorRT engine for {graph} from {} ({:.1} MiB); this takes minutes on a Jetson",
                file.display(),
                mib(*size)
            ),
            BuildEvent::StillBuilding {
                index,
                total,
                graph,
                elapsed,
            } => write!(
                f,
                "[{index}/{total}] still building {graph}… {} s",
                elapsed.as_secs()
            ),
            BuildEvent::Finished {
                index,
                total,
                graph,
                elapsed,
                engine_files,
            } => write!(
                f,
                "[{index}/{total}] built {graph} in {:.1} s: {}",
                elapsed.as_secs_f64(),
                engine_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            BuildEvent::ManifestWritten { path } => write!(f, "wrote {}", path.display()),
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildReport {
    pub manifest: EngineManifest,
    pub manifest_path: PathBuf,
    pub total: Duration,
    /// [`EngineFingerprint::digest`] of what was built.
    pub fingerprint_digest: String,
}

fn engine_file_names(dir: &Path, prefix: &str) -> Result<Vec<(String, SystemTime)>, EngineError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_err(dir, "listing", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name != MANIFEST_FILE {
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            out.push((name, mtime));
        }
    }
    out.sort();
    Ok(out)
}

/// Builds every engine of `spec` into `spec.engines_dir` and writes the
/// manifest last. The progress callback runs on the calling thread; while
/// an engine builds it gets [`BuildEvent::StillBuilding`] every
/// [`PROGRESS_INTERVAL`].
///
/// Refused before anything is touched: a merged decoder, a non-float
/// variant, an ONNX Runtime without the TensorRT provider, and a machine
/// whose GPU or TensorRT version cannot be probed (the engines could never
/// be recognised as fresh afterwards).
pub fn build_engines(
    spec: &EngineSpec,
    rt: &'static OrtRuntime,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport, EngineError> {
    spec.validate()?;
    if !rt.providers.tensorrt {
        return Err(EngineError::NoTensorRt {
            library: rt.library.clone(),
        });
    }
    let host = HostFacts::probe(rt);
    build_engines_on(spec, rt, &host, progress)
}

fn build_engines_on(
    spec: &EngineSpec,
    rt: &'static OrtRuntime,
    host: &HostFacts,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport, EngineError> {
    let started = Instant::now();
    let dir = &spec.engines_dir;
    // An unreadable old manifest only means no hash cache and a rebuild.
    let old = EngineManifest::read(dir).ok().flatten();
    let mut hashes = old
        .as_ref()
        .map(|m| m.hash_cache.clone())
        .unwrap_or_default();
    let fingerprint = EngineFingerprint::current(spec, host, &mut hashes, progress)?;
    let unknown = fingerprint.unknown_components();
    if !unknown.is_empty() {
        return Err(EngineError::UnknownHost { unknown });
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating the engine directory", e))?;
    // From here on the directory is being changed: without a manifest it
    // reads as Missing until the build completes.
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        fs::remove_file(&manifest_path).map_err(|e| io_err(&manifest_path, "removing", e))?;
    }
    let same_tensorrt = old.as_ref().is_some_and(|m| {
        m.fingerprint.tensorrt_version == fingerprint.tensorrt_version
            && m.fingerprint.compute_capability == fingerprint.compute_capability
    });
    // A timing cache from another TensorRT or GPU is at best useless.
    if !same_tensorrt {
        for entry in fs::read_dir(dir)
            .map_err(|e| io_err(dir, "listing", e))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().ends_with(".timing") {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| io_err(&p, "removing an old timing cache", e))?;
            }
        }
    }
    let shapes = ModelShapes::from_model_dir(&spec.model_dir)?;
    let ranges = ProfileRanges::new(&spec.bounds, &shapes)?;
    let files = spec.graph_files()?;
    let total = files.len();
    let mut built = Vec::new();
    for (i, (graph, rel)) in files.into_iter().enumerate() {
        let index = i + 1;
        let path = spec.model_dir.join(&rel);
        progress(BuildEvent::ReadingInputs {
            graph,
            file: path.clone(),
        });
        let inputs = read_graph_inputs(rt, &path)?;
        let profile = graph_profile(graph, &inputs, &ranges)?;
        let prefix = spec.engine_prefix(graph);
        // Old engines under this prefix would be loaded instead of built
        // (ONNX Runtime names them by the graph, not by TensorRT's version).
        for (name, _) in engine_file_names(dir, &prefix)? {
            let p = dir.join(&name);
            fs::remove_file(&p).map_err(|e| io_err(&p, "removing an old engine", e))?;
        }
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        progress(BuildEvent::Started {
            index,
            total,
            graph,
            file: path.clone(),
            size,
        });
        let options = SessionOptions {
            backend: Backend::TensorRt,
            intra_threads: 0,
            tensorrt_fp16: spec.fp16,
            engine_cache_dir: Some(dir.clone()),
        };
        let trt = TensorRtSessionOptions {
            profile: Some(profile.tensorrt_profile()),
            engine_cache_prefix: Some(prefix.clone()),
            detailed_build_log: true,
            builder_optimization_level: None,
        };
        let t0 = Instant::now();
        let result = std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let path = &path;
            let (options, trt) = (&options, &trt);
            s.spawn(move || {
                let r = open_session_with_tensorrt(rt, path, options, trt).map(drop);
                // The receiver outlives the scope; it only goes away if the
                // caller panicked.
                let _ = tx.send(r);
            });
            loop {
                match rx.recv_timeout(PROGRESS_INTERVAL) {
                    Ok(r) => break r.map_err(|e| e.to_string()),
                    Err(mpsc::RecvTimeoutError::Timeout) => progress(BuildEvent::StillBuilding {
                        index,
                        total,
                        graph,
                        elapsed: t0.elapsed(),
                    }),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break Err("the build thread ended without a result".to_string())
                    }
                }
            }
        });
        let elapsed = t0.elapsed();
        result.map_err(|reason| EngineError::Build {
            graph,
            path: path.clone(),
            elapsed,
            reason,
        })?;
        let engine_files: Vec<String> = engine_file_names(dir, &prefix)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if engine_files.is_empty() {
            return Err(EngineError::NoEngineWritten {
                path,
                prefix,
                dir: dir.clone(),
            });
        }
        progress(BuildEvent::Finished {
            index,
            total,
            graph,
            elapsed,
            engine_files: engine_files.iter().map(|f| dir.join(f)).collect(),
        });
        built.push(BuiltGraph {
            graph,
            file: rel,
            engine_prefix: prefix,
            profile,
            engine_files,
            build_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        });
    }
    let manifest = EngineManifest {
        fingerprint: fingerprint.clone(),
        built_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        graphs: built,
        hash_cache: hashes,
    };
    let manifest_path = manifest.write(dir)?;
    progress(BuildEvent::ManifestWritten {
        path: manifest_path.clone(),
    });
    Ok(BuildReport {
        manifest,
        manifest_path,
        total: started.elapsed(),
        fingerprint_digest: fingerprint.digest(),
    })
}

// ---------------------------------------------------------------------------
// Start-up

/// What `run` does about the engines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupAction {
    /// The cache is fresh: open the graphs with the manifest's settings.
    UseCache,
    /// Build now (allowed by model.build_engines_at_start); the reason is
    /// for the warning.
    BuildNow { reason: String },
}

/// The pure decision: a fresh cache is used; anything else is built only
/// when the configuration allows it, else it is an error that says what
/// changed and which command builds the engines.
pub fn startup_decision(
    state: &EngineCacheState,
    build_at_start: bool,
    engines_dir: &Path,
    config_file: Option<&Path>,
) -> Result<StartupAction, EngineError> {
    match state {
        EngineCacheState::Fresh => Ok(StartupAction::UseCache),
        other if build_at_start => Ok(StartupAction::BuildNow {
            reason: format!("the TensorRT engines in {} {other}", engines_dir.display()),
        }),
        other => Err(EngineError::NotBuilt {
            dir: engines_dir.to_path_buf(),
            state: other.to_string(),
            config: config_file.map_or_else(|| "FILE".to_string(), |p| p.display().to_string()),
        }),
    }
}

/// For `run` on the TensorRT backend: returns the manifest of fresh engines,
/// building them first when they are missing or stale and
/// `build_at_start` allows it (with a warning, and progress through
/// `progress` — the daemon can extend systemd's start timeout from it).
pub fn startup_check(
    spec: &EngineSpec,
    rt: &'static OrtRuntime,
    build_at_start: bool,
    config_file: Option<&Path>,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<EngineManifest, EngineError> {
    spec.validate()?;
    let host = HostFacts::probe(rt);
    let old = read_for_check(&spec.engines_dir)?;
    let mut hashes = old
        .as_ref()
        .map(|m| m.hash_cache.clone())
        .unwrap_or_default();
    let fingerprint = EngineFingerprint::current(spec, &host, &mut hashes, progress)?;
    let state = match &old {
        Err(state) => state.clone(),
        Ok(m) => state_against(m, &spec.engines_dir, &fingerprint),
    };
    match startup_decision(&state, build_at_start, &spec.engines_dir, config_file)? {
        StartupAction::UseCache => old.map_err(|_| EngineError::Manifest {
            path: spec.engines_dir.join(MANIFEST_FILE),
            reason: "disappeared while it was being checked".into(),
        }),
        StartupAction::BuildNow { reason } => {
            tracing::warn!(
                engines_dir = %spec.engines_dir.display(),
                reason = %reason,
                "Building TensorRT engines before starting (model.build_engines_at_start = true); this takes minutes on a Jetson."
            );
            if !rt.providers.tensorrt {
                return Err(EngineError::NoTensorRt {
                    library: rt.library.clone(),
                });
            }
            build_engines_on(spec, rt, &host, progress).map(|r| r.manifest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_ranges() -> ProfileRanges {
        ProfileRanges::new(
            &ProfileBounds {
                max_batch: 8,
                num_beams: 3,
                max_new_tokens: 256,
                max_prompt_tokens: 64,
            },
            &ModelShapes {
                image_height: 768,
                image_width: 768,
                image_tokens: 577,
                max_positions: Some(1024),
            },
        )
        .unwrap()
    }

    #[test]
    fn nvidia_smi_lines_parse_and_not_available_fields_are_unknown() {
        let (n, c, d) = parse_nvidia_smi_line("NVIDIA GeForce RTX 4090, 8.9, 550.54.15");
        assert_eq!(n, Probed::Known("NVIDIA GeForce RTX 4090".into()));
        assert_eq!(c, Probed::Known("8.9".into()));
        assert_eq!(d, Probed::Known("550.54.15".into()));
        let (n, c, _) = parse_nvidia_smi_line("Orin (nvgpu), [N/A], 540.4.0");
        assert_eq!(n, Probed::Known("Orin (nvgpu)".into()));
        assert!(
            matches!(c, Probed::Unknown(ref why) if why.contains("[N/A]")),
            "{c:?}"
        );
    }

    #[test]
    fn jetson_facts_come_from_the_device_tree_and_l4t_release() {
        assert_eq!(
            tegra_compute_capability("nvidia,p3737-0000+p3701-0000\0nvidia,tegra234\0"),
            Probed::Known("8.7".into())
        );
        assert!(tegra_compute_capability("nvidia,tegra264\0")
            .known()
            .is_none());
        assert_eq!(
            parse_nv_tegra_release(
                "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13\n"
            ),
            Probed::Known("L4T R36.4.0".into())
        );
        assert!(parse_nv_tegra_release("garbage").known().is_none());
    }

    #[test]
    fn tensorrt_version_numbers_decode_for_both_encodings() {
        assert_eq!(decode_tensorrt_version(100_300), "10.3.0");
        assert_eq!(decode_tensorrt_version(100_701), "10.7.1");
        assert_eq!(decode_tensorrt_version(8601), "8.6.1");
        assert_eq!(decode_tensorrt_version(8502), "8.5.2");
    }

    #[test]
    fn ranges_follow_batch_beams_and_lengths() {
        let r = base_ranges();
        assert_eq!(
            r.images,
            AxisRange {
                min: 1,
                opt: 8,
                max: 8
            }
        );
        assert_eq!(
            r.rows,
            AxisRange {
                min: 1,
                opt: 24,
                max: 24
            }
        );
        assert_eq!(
            r.encoder_tokens,
            AxisRange {
                min: 578,
                opt: 593,
                max: 641
            }
        );
        assert_eq!(
            r.past_tokens,
            AxisRange {
                min: 1,
                opt: 64,
                max: 256
            }
        );
        assert_eq!(
            r.prompt_tokens,
            AxisRange {
                min: 1,
                opt: 1,
                max: 64
            }
        );
    }

    #[test]
    fn bounds_beyond_the_models_positions_are_refused_with_the_limit() {
        let e = ProfileRanges::new(
            &ProfileBounds {
                max_batch: 1,
                num_beams: 1,
                max_new_tokens: 16,
                max_prompt_tokens: 500,
            },
            &ModelShapes {
                image_height: 768,
                image_width: 768,
                image_tokens: 577,
                max_positions: Some(1024),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("1077") && e.contains("at most 447"), "{e}");
    }

    #[test]
    fn an_unknown_dynamic_axis_is_an_error_naming_it() {
        let e = graph_profile(
            EngineGraph::VisionEncoder,
            &[InputSpec {
                name: "pixel_values".into(),
                dims: vec![None, Some(3), None, None, None],
            }],
            &base_ranges(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pixel_values") && e.contains("axis 4"), "{e}");
    }

    #[test]
    fn a_fixed_image_size_that_disagrees_with_the_preprocessor_is_an_error() {
        let e = graph_profile(
            EngineGraph::VisionEncoder,
            &[InputSpec {
                name: "pixel_values".into(),
                dims: vec![None, Some(3), Some(512), Some(512)],
            }],
            &base_ranges(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("512") && e.contains("768"), "{e}");
    }

    #[test]
    fn the_merged_decoder_input_is_refused() {
        let e = graph_profile(
            EngineGraph::Decoder,
            &[InputSpec {
                name: "use_cache_branch".into(),
                dims: vec![Some(1)],
            }],
            &base_ranges(),
        )
        .unwrap_err();
        assert!(matches!(e, EngineError::MergedDecoder));
    }

    #[test]
    fn startup_refuses_to_build_unasked_and_names_the_command_and_the_change() {
        let stale = EngineCacheState::Stale {
            what_changed: vec!["TensorRT 10.3.0 → 10.7.0".into()],
        };
        let e = startup_decision(
            &stale,
            false,
            Path::new("/e"),
            Some(Path::new("/etc/fe.toml")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("florence-edge build-engines --config /etc/fe.toml")
                && e.contains("TensorRT 10.3.0 → 10.7.0")
                && e.contains("build_engines_at_start"),
            "{e}"
        );
        let e = startup_decision(&EngineCacheState::Missing, false, Path::new("/e"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("have not been built") && e.contains("--config FILE"),
            "{e}"
        );
        assert_eq!(
            startup_decision(&EngineCacheState::Fresh, false, Path::new("/e"), None).unwrap(),
            StartupAction::UseCache
        );
        match startup_decision(&stale, true, Path::new("/e"), None).unwrap() {
            StartupAction::BuildNow { reason } => assert!(reason.contains("10.7.0"), "{reason}"),
            other => panic!("expected BuildNow, got {other:?}"),
        }
    }

    #[test]
    fn default_engines_dir_is_under_the_state_directory() {
        assert_eq!(
            engines_dir_from(Some(Path::new("/x/engines")), Some("/var/lib/fe")),
            PathBuf::from("/x/engines")
        );
        assert_eq!(
            engines_dir_from(None, Some("/var/lib/fe:/var/lib/fe/models")),
            PathBuf::from("/var/lib/fe/engines")
        );
        assert_eq!(
            engines_dir_from(None, None),
            PathBuf::from("/var/lib/florence-edge/engines")
        );
    }
}
