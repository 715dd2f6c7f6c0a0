//! ONNX Runtime: finding the shared library, choosing an execution provider
//! (backend), and opening sessions.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), so the binary
//! builds and runs on machines without it until a model is actually opened,
//! and a missing library is an error that says where we looked — never a
//! panic inside `ort`.
//!
//! TensorRT is reached through ONNX Runtime's TensorRT execution provider and
//! CUDA through its CUDA provider; both need a GPU build of ONNX Runtime
//! (`onnxruntime-gpu`). Neither can be exercised on the CPU-only machines this
//! project is tested on: what is tested here is that asking for them on a CPU
//! build fails with a clear message instead of silently running on the CPU.

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

pub mod device;
pub mod tensorrt;

/// The TensorRT engine management's former path (`runtime::engines`), kept
/// for its callers.
pub use tensorrt as engines;

/// The ONNX Runtime version whose C API this build needs (ort's `api-31`).
pub const REQUIRED_ORT_VERSION: &str = "1.31";

/// Environment variable `ort` itself honours for the library path.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime shared library (libonnxruntime.so, version {REQUIRED_ORT_VERSION}.x) not found; looked in: {}. \
         Install it with `tools/setup.sh` (it unpacks the PyPI `onnxruntime=={REQUIRED_ORT_VERSION}.1` wheel into .local/onnxruntime/lib), \
         or point `--ort-lib`/`model.ort_library`/${ORT_DYLIB_ENV} at the file",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    LibraryNotFound { searched: Vec<PathBuf> },
    #[error("the ONNX Runtime library {path} given by {source_of_path} does not exist")]
    LibraryMissing {
        path: PathBuf,
        source_of_path: &'static str,
    },
    #[error("could not load the ONNX Runtime library {path}: {reason} (this build needs ONNX Runtime {REQUIRED_ORT_VERSION} or newer)")]
    LibraryLoad { path: PathBuf, reason: String },
    #[error("ONNX Runtime was already initialised from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    #[error("could not create the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("backend {requested} is not available: {reason}")]
    BackendUnavailable { requested: Backend, reason: String },
    #[error("unknown backend {0:?}; allowed: auto, tensorrt, cuda, cpu")]
    UnknownBackend(String),
    #[error("could not open {path}: {reason}")]
    Session { path: PathBuf, reason: String },
}

/// Where inference runs. `Auto` picks the best available, in the order
/// TensorRT, CUDA, CPU, and says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    #[serde(rename = "tensorrt")]
    TensorRt,
    Cuda,
    Cpu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::TensorRt => "tensorrt",
            Backend::Cuda => "cuda",
            Backend::Cpu => "cpu",
        })
    }
}

impl FromStr for Backend {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "tensorrt" | "trt" => Ok(Backend::TensorRt),
            "cuda" => Ok(Backend::Cuda),
            "cpu" => Ok(Backend::Cpu),
            _ => Err(RuntimeError::UnknownBackend(s.to_string())),
        }
    }
}

/// Which execution providers the loaded ONNX Runtime library offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderAvailability {
    /// The TensorRT provider is compiled into the library
    /// (`GetAvailableProviders`)…
    pub tensorrt: bool,
    /// …and TensorRT's own library (libnvinfer) loads on this machine. An
    /// `onnxruntime-gpu` install lists the provider without TensorRT being
    /// installed; `auto` must not pick it then.
    pub tensorrt_libraries: bool,
    pub cuda: bool,
}

/// The backend actually used and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    pub backend: Backend,
    pub reason: String,
}

/// Pure decision: requested backend + what the library offers → choice or a
/// clear error. An explicit request that cannot be met never falls back.
pub fn choose_backend(
    requested: Backend,
    available: ProviderAvailability,
) -> Result<BackendChoice, RuntimeError> {
    const CPU_BUILD: &str = "the loaded ONNX Runtime library does not include the {ep} execution provider \
        (a CPU-only build, e.g. the PyPI `onnxruntime` wheel); install a GPU build (`onnxruntime-gpu`, or JetPack's \
        onnxruntime on a Jetson) with CUDA and TensorRT libraries, or set backend = \"cpu\"";
    const NO_NVINFER: &str = "the ONNX Runtime library has the TensorRT execution provider, but TensorRT's own \
        library (libnvinfer.so.10 or .8) does not load on this machine; install TensorRT (JetPack ships it; on x86 \
        the `tensorrt` packages or wheel) and put it on the loader path, or set backend = \"cuda\"";
    match requested {
        Backend::TensorRt if available.tensorrt && available.tensorrt_libraries => {
            Ok(BackendChoice {
                backend: Backend::TensorRt,
                reason: "requested explicitly".into(),
            })
        }
        Backend::TensorRt if available.tensorrt => Err(RuntimeError::BackendUnavailable {
            requested,
            reason: NO_NVINFER.into(),
        }),
        Backend::TensorRt => Err(RuntimeError::BackendUnavailable {
            requested,
            reason: CPU_BUILD.replace("{ep}", "TensorRT"),
        }),
        Backend::Cuda if available.cuda => Ok(BackendChoice {
            backend: Backend::Cuda,
            reason: "requested explicitly".into(),
        }),
        Backend::Cuda => Err(RuntimeError::BackendUnavailable {
            requested,
            reason: CPU_BUILD.replace("{ep}", "CUDA"),
        }),
        Backend::Cpu => Ok(BackendChoice {
            backend: Backend::Cpu,
            reason: "requested explicitly".into(),
        }),
        Backend::Auto if available.tensorrt && available.tensorrt_libraries => Ok(BackendChoice {
            backend: Backend::TensorRt,
            reason: "auto: the TensorRT execution provider is available and TensorRT loads".into(),
        }),
        Backend::Auto if available.cuda && available.tensorrt => Ok(BackendChoice {
            backend: Backend::Cuda,
            reason: "auto: the library has the TensorRT provider but TensorRT's libnvinfer does not load; using CUDA".into(),
        }),
        Backend::Auto if available.cuda => Ok(BackendChoice {
            backend: Backend::Cuda,
            reason: "auto: the CUDA execution provider is available, TensorRT is not".into(),
        }),
        Backend::Auto => Ok(BackendChoice {
            backend: Backend::Cpu,
            reason: "auto: the loaded ONNX Runtime library has neither the TensorRT nor the CUDA execution provider"
                .into(),
        }),
    }
}

/// TensorRT without the engines `run` prepares (optimization profiles, the
/// engine cache, the manifest) would make ONNX Runtime rebuild an engine
/// whenever a shape leaves what it has seen — at nearly every decoder step,
/// since the past length grows by one (minutes per build on a Jetson). So a
/// caller without engines (`infer`, `bench`) never runs on TensorRT: `auto`
/// takes CUDA (or the CPU) instead, and an explicit request is an error that
/// says what to do.
pub fn without_engines(
    choice: BackendChoice,
    requested: Backend,
    available: ProviderAvailability,
) -> Result<BackendChoice, RuntimeError> {
    if choice.backend != Backend::TensorRt {
        return Ok(choice);
    }
    if requested == Backend::TensorRt {
        return Err(RuntimeError::BackendUnavailable {
            requested,
            reason: "TensorRT needs the engines `florence-edge run` builds from its configuration \
                (`florence-edge build-engines`, with optimization profiles and a cache); without them ONNX Runtime \
                would rebuild an engine at nearly every decoder step. Use `run`, or --backend cuda here"
                .into(),
        });
    }
    Ok(if available.cuda {
        BackendChoice {
            backend: Backend::Cuda,
            reason:
                "auto: TensorRT needs prepared engines, which this command has none of; using CUDA"
                    .into(),
        }
    } else {
        BackendChoice {
            backend: Backend::Cpu,
            reason: "auto: TensorRT needs prepared engines, which this command has none of, and CUDA is not available".into(),
        }
    })
}

/// Candidate locations for the library, in search order, with where each
/// candidate came from. Pure, so the order is testable.
pub fn library_candidates(
    explicit: Option<&Path>,
    env_value: Option<&str>,
    exe_dir: Option<&Path>,
    cwd: Option<&Path>,
) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push((
            p.to_path_buf(),
            "the configuration (--ort-lib / model.ort_library)",
        ));
    }
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        out.push((PathBuf::from(v), ORT_DYLIB_ENV));
    }
    let file = "libonnxruntime.so";
    // Project-local install made by tools/setup.sh: next to the binary
    // (target/release/../../.local) and in the working directory.
    if let Some(dir) = exe_dir {
        for up in [
            dir.join(".local"),
            dir.join("../../.local"),
            dir.join("../lib/florence-edge"),
        ] {
            out.push((
                up.join("onnxruntime/lib").join(file),
                "project-local install",
            ));
        }
    }
    if let Some(dir) = cwd {
        out.push((
            dir.join(".local/onnxruntime/lib").join(file),
            "project-local install",
        ));
    }
    for dir in [
        "/var/lib/florence-edge/onnxruntime/lib",
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/opt/onnxruntime/lib",
    ] {
        out.push((Path::new(dir).join(file), "system location"));
    }
    out
}

/// A directory may hold only the versioned file (`libonnxruntime.so.1.31.1`,
/// as the wheel ships it); accept that too.
fn resolve_candidate(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let dir = path.parent()?;
    let stem = path.file_name()?.to_str()?;
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}.")))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// Find the library: explicit path, then `ORT_DYLIB_PATH`, then the
/// project-local install, then system locations.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let env_value = env::var(ORT_DYLIB_ENV).ok();
    let exe_dir = env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let cwd = env::current_dir().ok();
    let candidates = library_candidates(
        explicit,
        env_value.as_deref(),
        exe_dir.as_deref(),
        cwd.as_deref(),
    );
    for (i, (path, source_of_path)) in candidates.iter().enumerate() {
        if let Some(found) = resolve_candidate(path) {
            return Ok(found);
        }
        // An explicitly named library that is missing is an error of its own:
        // silently using another one would hide a typo.
        let explicit_count = usize::from(explicit.is_some())
            + usize::from(env_value.as_deref().is_some_and(|v| !v.is_empty()));
        if i < explicit_count {
            return Err(RuntimeError::LibraryMissing {
                path: path.clone(),
                source_of_path,
            });
        }
    }
    Err(RuntimeError::LibraryNotFound {
        searched: candidates.into_iter().map(|(p, _)| p).collect(),
    })
}

/// The process-wide ONNX Runtime: the library it was loaded from and the
/// environment sessions are created in.
pub struct OrtRuntime {
    pub library: PathBuf,
    pub environment: Environment,
    pub providers: ProviderAvailability,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();

/// Load the library (once per process) and create the environment.
pub fn init(explicit: Option<&Path>) -> Result<&'static OrtRuntime, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        if let Some(p) = explicit {
            if p != rt.library {
                return Err(RuntimeError::AlreadyLoaded {
                    loaded: rt.library.clone(),
                    requested: p.to_path_buf(),
                });
            }
        }
        return Ok(rt);
    }
    let library = locate_library(explicit)?;
    let builder = ort::init_from(&library).map_err(|e| RuntimeError::LibraryLoad {
        path: library.clone(),
        reason: e.to_string(),
    })?;
    let environment = builder
        .with_name("florence-edge")
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    let tensorrt = ep::TensorRT::is_available().unwrap_or(false);
    // Only worth a dlopen when the provider is there to use it.
    let tensorrt_libraries = tensorrt && tensorrt::tensorrt_version().known().is_some();
    let providers = ProviderAvailability {
        tensorrt,
        tensorrt_libraries,
        cuda: ep::CUDA::is_available().unwrap_or(false),
    };
    tracing::info!(
        library = %library.display(),
        tensorrt = providers.tensorrt,
        tensorrt_libraries = providers.tensorrt_libraries,
        cuda = providers.cuda,
        "ONNX Runtime loaded."
    );
    let _ = RUNTIME.set(OrtRuntime {
        library,
        environment,
        providers,
    });
    RUNTIME
        .get()
        .ok_or_else(|| RuntimeError::Environment("runtime initialisation raced".into()))
}

/// How sessions are built. Threads: 0 means one per available core.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub backend: Backend,
    pub intra_threads: usize,
    /// TensorRT: FP16 engines, engine and timing cache under this directory.
    pub tensorrt_fp16: bool,
    pub engine_cache_dir: Option<PathBuf>,
    /// GPU backends: the most device memory one session's CUDA arena may
    /// hold (and TensorRT's builder workspace); `None`: no limit. Set it
    /// on 8–16 GB Jetsons, where the GPU shares memory with the system.
    pub gpu_memory_limit: Option<usize>,
    /// CUDA: TF32 matrix maths on Ampere and later (ONNX Runtime's
    /// default, faster); off gives FP32 results that match the CPU's.
    pub cuda_tf32: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Cpu,
            intra_threads: 0,
            tensorrt_fp16: true,
            engine_cache_dir: None,
            gpu_memory_limit: None,
            cuda_tf32: true,
        }
    }
}

/// The CUDA execution provider as every session uses it: the arena grows
/// by what is requested (the default doubles, which on a Jetson reserves
/// memory the system needs), cuDNN picks convolution algorithms
/// heuristically (the exhaustive default allocates large workspaces to
/// benchmark each), and the arena is capped where a limit is set.
fn cuda_provider(options: &SessionOptions) -> ep::CUDA {
    let mut cuda = ep::CUDA::default()
        .with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested)
        .with_conv_algorithm_search(ep::cuda::ConvAlgorithmSearch::Heuristic)
        .with_tf32(options.cuda_tf32);
    if let Some(limit) = options.gpu_memory_limit {
        cuda = cuda.with_memory_limit(limit);
    }
    cuda
}

/// One TensorRT optimization profile, in the TensorRT execution provider's
/// syntax: `name:d0xd1x…` per input, comma-separated (see
/// [`engines::GraphProfile`]). Every dynamic input of the graph must appear
/// in all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRtProfile {
    pub min_shapes: String,
    pub opt_shapes: String,
    pub max_shapes: String,
}

/// TensorRT settings that differ per graph, on top of [`SessionOptions`].
/// Kept apart from `SessionOptions` so that adding them did not change the
/// struct every caller builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorRtSessionOptions {
    /// Explicit shape ranges: the engine is built once for them and never
    /// rebuilt behind our back when a new shape shows up; a shape outside
    /// them is an error.
    pub profile: Option<TensorRtProfile>,
    /// File name prefix of this graph's engine files in the engine cache, so
    /// the cache can be listed per graph.
    pub engine_cache_prefix: Option<String>,
    /// TensorRT's detailed build log (ONNX Runtime logs it at verbose level).
    pub detailed_build_log: bool,
    /// TensorRT builder optimization level 0–5 (`None`: TensorRT's default, 3).
    pub builder_optimization_level: Option<u8>,
}

/// Open one graph as a session on the chosen backend. The backend must
/// already be resolved (not `Auto`); explicit providers are registered with
/// `error_on_failure` so a provider that fails to initialise is an error,
/// not a silent CPU run.
pub fn open_session(
    rt: &OrtRuntime,
    path: &Path,
    options: &SessionOptions,
) -> Result<Session, RuntimeError> {
    open_session_with_tensorrt(rt, path, options, &TensorRtSessionOptions::default())
}

/// [`open_session`] with per-graph TensorRT settings (ignored by the other
/// backends). On the TensorRT backend, opening the session is what builds
/// the engine (or loads it from the engine cache).
pub fn open_session_with_tensorrt(
    rt: &OrtRuntime,
    path: &Path,
    options: &SessionOptions,
    tensorrt: &TensorRtSessionOptions,
) -> Result<Session, RuntimeError> {
    session_builder(rt, path, options, tensorrt)?
        .commit_from_file(path)
        .map_err(|e| RuntimeError::Session {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// A session for a graph held in memory (the small helper graphs of
/// [`device`]); `name` stands in for the path in errors.
pub fn open_session_from_memory(
    rt: &OrtRuntime,
    name: &Path,
    model: &[u8],
    options: &SessionOptions,
) -> Result<Session, RuntimeError> {
    session_builder(rt, name, options, &TensorRtSessionOptions::default())?
        .commit_from_memory(model)
        .map_err(|e| RuntimeError::Session {
            path: name.to_path_buf(),
            reason: e.to_string(),
        })
}

fn session_builder(
    rt: &OrtRuntime,
    path: &Path,
    options: &SessionOptions,
    tensorrt: &TensorRtSessionOptions,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    let err = |e: String| RuntimeError::Session {
        path: path.to_path_buf(),
        reason: e,
    };
    let mut builder = Session::builder(&rt.environment).map_err(|e| err(e.to_string()))?;
    builder = builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| err(e.to_string()))?;
    // ONNX Runtime's own default measured slower here (2-core box: vision
    // encoder 2.55 s vs 2.33 s with one thread per core), so 0 means one
    // intra-op thread per available core.
    let threads = match options.intra_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    builder = builder
        .with_intra_threads(threads)
        .map_err(|e| err(e.to_string()))?;
    match options.backend {
        Backend::Cpu => {}
        Backend::Cuda => {
            builder = builder
                .with_execution_providers([cuda_provider(options).build().error_on_failure()])
                .map_err(|e| err(e.to_string()))?;
        }
        Backend::TensorRt => {
            let mut trt = ep::TensorRT::default()
                .with_fp16(options.tensorrt_fp16)
                .with_layer_norm_fp32_fallback(true);
            if let Some(limit) = options.gpu_memory_limit {
                trt = trt.with_max_workspace_size(limit);
            }
            if let Some(dir) = &options.engine_cache_dir {
                let dir = dir.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
                if let Some(prefix) = &tensorrt.engine_cache_prefix {
                    trt = trt.with_engine_cache_prefix(prefix);
                }
            }
            if let Some(profile) = &tensorrt.profile {
                trt = trt
                    .with_profile_min_shapes(&profile.min_shapes)
                    .with_profile_opt_shapes(&profile.opt_shapes)
                    .with_profile_max_shapes(&profile.max_shapes);
            }
            if tensorrt.detailed_build_log {
                trt = trt.with_detailed_build_log(true);
            }
            if let Some(level) = tensorrt.builder_optimization_level {
                trt = trt.with_builder_optimization_level(level);
            }
            builder = builder
                .with_execution_providers([
                    trt.build().error_on_failure(),
                    cuda_provider(options).build().error_on_failure(),
                ])
                .map_err(|e| err(e.to_string()))?;
        }
        Backend::Auto => {
            return Err(err(
                "internal error: backend must be resolved before opening sessions".into(),
            ));
        }
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_ONLY: ProviderAvailability = ProviderAvailability {
        tensorrt: false,
        tensorrt_libraries: false,
        cuda: false,
    };
    const GPU: ProviderAvailability = ProviderAvailability {
        tensorrt: true,
        tensorrt_libraries: true,
        cuda: true,
    };
    /// `onnxruntime-gpu` without TensorRT installed.
    const NO_NVINFER: ProviderAvailability = ProviderAvailability {
        tensorrt: true,
        tensorrt_libraries: false,
        cuda: true,
    };

    #[test]
    fn without_engines_tensorrt_is_never_used() {
        let auto = choose_backend(Backend::Auto, GPU).unwrap();
        assert_eq!(auto.backend, Backend::TensorRt);
        let c = without_engines(auto, Backend::Auto, GPU).unwrap();
        assert_eq!(c.backend, Backend::Cuda);
        assert!(c.reason.contains("prepared engines"), "{}", c.reason);
        let explicit = choose_backend(Backend::TensorRt, GPU).unwrap();
        let e = without_engines(explicit, Backend::TensorRt, GPU)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("build-engines") && e.contains("--backend cuda"),
            "{e}"
        );
        let cpu = choose_backend(Backend::Cpu, GPU).unwrap();
        assert_eq!(
            without_engines(cpu, Backend::Cpu, GPU).unwrap().backend,
            Backend::Cpu
        );
    }

    #[test]
    fn a_tensorrt_provider_without_tensorrt_is_not_chosen_by_auto() {
        let c = choose_backend(Backend::Auto, NO_NVINFER).unwrap();
        assert_eq!(c.backend, Backend::Cuda);
        assert!(
            c.reason.contains("libnvinfer does not load"),
            "{}",
            c.reason
        );
        let e = choose_backend(Backend::TensorRt, NO_NVINFER)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("libnvinfer") && e.contains("backend = \"cuda\""),
            "{e}"
        );
    }

    #[test]
    fn explicit_gpu_backends_on_a_cpu_build_are_errors_naming_the_missing_provider() {
        let e = choose_backend(Backend::TensorRt, CPU_ONLY).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("tensorrt is not available"), "{msg}");
        assert!(msg.contains("TensorRT execution provider"), "{msg}");
        let e = choose_backend(Backend::Cuda, CPU_ONLY).unwrap_err();
        assert!(e.to_string().contains("CUDA execution provider"));
    }

    #[test]
    fn auto_prefers_tensorrt_then_cuda_then_cpu_and_says_why() {
        assert_eq!(
            choose_backend(Backend::Auto, GPU).unwrap().backend,
            Backend::TensorRt
        );
        let cuda_only = ProviderAvailability {
            tensorrt: false,
            tensorrt_libraries: false,
            cuda: true,
        };
        let c = choose_backend(Backend::Auto, cuda_only).unwrap();
        assert_eq!(c.backend, Backend::Cuda);
        assert!(c.reason.contains("TensorRT is not"));
        let c = choose_backend(Backend::Auto, CPU_ONLY).unwrap();
        assert_eq!(c.backend, Backend::Cpu);
        assert!(c.reason.contains("neither"));
        assert_eq!(
            choose_backend(Backend::Cpu, GPU).unwrap().backend,
            Backend::Cpu
        );
    }

    #[test]
    fn backend_names_parse_and_unknown_ones_list_the_allowed() {
        assert_eq!("TensorRT".parse::<Backend>().unwrap(), Backend::TensorRt);
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        let e = "vulkan".parse::<Backend>().unwrap_err().to_string();
        assert!(
            e.contains("vulkan") && e.contains("auto, tensorrt, cuda, cpu"),
            "{e}"
        );
    }

    #[test]
    fn library_search_order_is_explicit_env_local_system() {
        let c = library_candidates(
            Some(Path::new("/x/lib.so")),
            Some("/env/lib.so"),
            Some(Path::new("/opt/fe/bin")),
            Some(Path::new("/work")),
        );
        assert_eq!(c[0].0, PathBuf::from("/x/lib.so"));
        assert_eq!(c[1].0, PathBuf::from("/env/lib.so"));
        assert!(c[2].0.starts_with("/opt/fe/bin/.local"));
        let local = c
            .iter()
            .position(|(p, _)| p.starts_with("/work/.local"))
            .unwrap();
        let system = c
            .iter()
            .position(|(p, _)| p.starts_with("/usr/lib"))
            .unwrap();
        assert!(local < system);
    }

    #[test]
    fn a_missing_explicit_library_is_named_in_the_error() {
        let e = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/libonnxruntime.so") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn versioned_library_files_are_found_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").unwrap();
        let found = resolve_candidate(&dir.path().join("libonnxruntime.so")).unwrap();
        assert!(found.ends_with("libonnxruntime.so.1.31.1"));
    }
}
