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
//!   max_new_tokens, prompt length), the model directory (image size,
//!   image tokens) and `engines/profiles.toml` ([`ProfileData`]: prompt
//!   lengths, opt points) into axis ranges; [`graph_profile`] maps them onto
//!   the inputs a graph declares, by name, into min/opt/max shapes.
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
//!
//! Where each part lives: `profiles.rs` (shape ranges and per-graph
//! profiles), `probe.rs` (GPU, TensorRT and ONNX Runtime versions),
//! `manifest.rs` (graph hashes, the fingerprint, `manifest.json` and the
//! fresh/missing/stale check), `build.rs` (what to build, building, the
//! start-up decision). This file holds what they share: the error type and
//! the graphs engines are built from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RuntimeError;

mod build;
mod manifest;
mod probe;
mod profiles;

pub use build::{
    build_engines, engines_dir_from, engines_dir_or_default, startup_check, startup_decision,
    BuildEvent, BuildReport, EngineSpec, StartupAction, PROGRESS_INTERVAL,
};
pub use manifest::{
    check, BuiltGraph, EngineCacheState, EngineFingerprint, EngineManifest, GraphFile, HashCache,
    HashCacheEntry, MANIFEST_FILE, MANIFEST_FORMAT,
};
pub use probe::{
    decode_tensorrt_version, parse_nv_tegra_release, parse_nvidia_smi_line,
    tegra_compute_capability, tensorrt_version, HostFacts, Probed,
};
pub use profiles::{
    graph_profile, read_graph_inputs, AxisRange, DecoderData, GraphProfile, InputShapes, InputSpec,
    ModelShapes, ProfileBounds, ProfileData, ProfileRanges, PromptData,
};

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
    /// Cannot happen in a tested build: the file is compiled in and a unit
    /// test parses it.
    #[error("engines/profiles.toml (compiled in) is not valid profile data: {0}")]
    ProfileData(String),
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
