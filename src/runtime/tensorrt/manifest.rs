//! The engine cache's manifest: the fingerprint a set of engines was built
//! for ([`EngineFingerprint`]: host facts, precision, profile ranges and the
//! SHA-256 of every graph file, hashed through a size/mtime [`HashCache`]),
//! `manifest.json` that stores it beside the engines, and [`check`], which
//! tells whether the cache is fresh, missing or stale and, if stale, what
//! changed.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{io_err, EngineError, EngineGraph};
use super::{BuildEvent, EngineSpec, GraphProfile, HostFacts, ModelShapes, Probed, ProfileRanges};
use crate::runtime::TensorRtSessionOptions;

/// The manifest's file name inside the engine directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format and of the profile rules (profiles.rs).
/// Raising it makes every existing cache stale: change it whenever
/// [`graph_profile`](super::graph_profile) or [`ProfileRanges::new`] would
/// produce other shapes from the same inputs. Edits of
/// `engines/profiles.toml` need no new version: the ranges they change are
/// part of the fingerprint.
pub const MANIFEST_FORMAT: u32 = 1;

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
    /// `hashes` when the files are unchanged; emits a [`BuildEvent::Hashed`]
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
pub(super) fn read_for_check(
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

pub(super) fn state_against(
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
