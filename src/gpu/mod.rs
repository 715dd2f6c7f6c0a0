//! CUDA kernels for the two hot, embarrassingly parallel stages around the model
//! (DESIGN.md §4): preprocessing (RGB8 / NV12 → resized, normalized CHW FP32/FP16)
//! and location-token parsing (token ids → bins and coordinates).
//!
//! Everything is loaded at run time through `cudarc`'s dynamic loading, so building
//! needs no CUDA toolkit and a machine without a driver gets [`GpuError::NoDriver`]
//! instead of a panic. Kernel sources live in `kernels/*.cu`, are compiled once at
//! start-up with NVRTC to a CUBIN for the GPU at hand (cached on disk, see
//! [`context::KernelCacheKey`]), and every function is loaded eagerly so that a
//! misspelt kernel name fails at start, not at the first frame.
//!
//! Each kernel has a CPU twin that is the reference (`crate::preprocess`,
//! `crate::postprocess::loc_ids`); `tests/gpu_kernels.rs` compares them.

pub mod context;
pub mod loc_tokens;
pub mod preprocess;
mod preprocess_plan;

pub use context::{CacheOutcome, DeviceInfo, GpuContext, KernelCacheKey};
pub use loc_tokens::GpuLocationParser;
pub use preprocess::{GpuFrame, GpuPreprocessor, KernelYuvCoeffs, OutputElement, OutputKind};

use std::path::PathBuf;

/// Everything that can go wrong on the CUDA path. Messages name the thing and what
/// is expected, so that an operator reading the log can act on it.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no CUDA driver found (looked for {looked_for}); install the NVIDIA driver or use the CPU backend")]
    NoDriver { looked_for: String },
    #[error("no NVRTC library found (looked for {looked_for}); install the CUDA runtime compiler (libnvrtc, e.g. the nvidia-cuda-nvrtc package); on a Jetson it is in /usr/local/cuda/lib64, which must be on LD_LIBRARY_PATH (the service's jetson.conf sets it); or use the CPU backend")]
    NoNvrtc { looked_for: String },
    #[error("CUDA driver call failed while {while_doing}: {source}")]
    Driver {
        while_doing: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error(
        "NVRTC failed to compile kernel source {kernel}.cu for {arch} (options {options:?}): {log}"
    )]
    Compile {
        kernel: &'static str,
        arch: String,
        options: Vec<String>,
        log: String,
    },
    #[error(
        "kernel function {function} is missing from the compiled {kernel}.cu module: {source}"
    )]
    MissingFunction {
        kernel: &'static str,
        function: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error("kernel cache directory {path} cannot be created: {source}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("frame {index} of the batch is invalid: {reason}")]
    Frame { index: usize, reason: String },
    #[error("the batch is empty; at least one frame or sequence is required")]
    EmptyBatch,
    #[error("output buffer holds {actual} elements, the batch needs {expected} (batch × 3 × height × width)")]
    OutputSize { expected: usize, actual: usize },
    #[error("invalid output size {width}x{height}; both sides must be between 1 and {max}")]
    OutputShape { width: u32, height: u32, max: u32 },
    #[error("token batch is invalid: {0}")]
    Tokens(#[from] crate::postprocess::loc_ids::LocIdsError),
}

/// Wraps a driver error with what we were doing, for [`GpuError::Driver`].
pub(crate) fn driver(
    while_doing: impl Into<String>,
) -> impl FnOnce(cudarc::driver::DriverError) -> GpuError {
    let while_doing = while_doing.into();
    move |source| GpuError::Driver {
        while_doing,
        source,
    }
}
