//! What to build and building it: [`EngineSpec`] from the configuration
//! and the engine directory's default, [`build_engines`] (every engine, with
//! progress events, the manifest written last), and [`startup_check`], what
//! `run` does at start: use a fresh cache, build when the configuration
//! allows it, else refuse with the command that builds the engines.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::manifest::{read_for_check, state_against};
use super::{
    graph_profile, read_graph_inputs, BuiltGraph, EngineCacheState, EngineFingerprint,
    EngineManifest, HostFacts, ModelShapes, ProfileBounds, ProfileRanges, MANIFEST_FILE,
};
use super::{io_err, EngineError, EngineGraph};
use crate::runtime::{
    open_session_with_tensorrt, Backend, OrtRuntime, SessionOptions, TensorRtSessionOptions,
};

/// How often a running build reports that it is still building.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

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
            ..SessionOptions::default()
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
    use std::path::PathBuf;

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
