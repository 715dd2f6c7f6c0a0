//! Florence-2: the model directory (DESIGN.md §3), tokenizer and prompts,
//! the ONNX graphs, and generation.

pub mod config;
pub mod generate;
pub mod graphs;
pub mod model;
pub mod task;
pub mod tokenizer;

use std::path::PathBuf;

pub use config::SequenceLimit;
pub use generate::{Decoding, Strategy};
pub use graphs::{DecoderLayout, Variant};
pub use model::{Florence2, LoadOptions, Pixels, StageTimings};
pub use task::{Task, TaskInput};

use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("{}: key {key:?} {problem}", path.display())]
    Key {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("missing setting {key:?}; looked in {looked_in}")]
    MissingKey { key: String, looked_in: String },
    #[error("{}: {tensor} {problem}", path.display())]
    Contract {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    #[error("unknown model variant {given:?}; allowed: {allowed}")]
    Variant { given: String, allowed: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Region(String),
    #[error("invalid input: {0}")]
    Input(String),
    /// The prompt and the image tokens do not fit the model's position
    /// embeddings (see [`config::SequenceLimit`]).
    #[error("the {task} prompt is {tokens} tokens; allowed: {}", limit.allowed())]
    PromptTooLong {
        task: Task,
        tokens: usize,
        limit: config::SequenceLimit,
    },
    #[error("running {}: {reason}", path.display())]
    Run { path: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The CUDA kernels (preprocessing, location tokens) of a GPU backend.
    #[error("CUDA kernels: {0}")]
    Gpu(String),
}
