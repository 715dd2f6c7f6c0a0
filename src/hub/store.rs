//! The local side: a Hugging Face cache directory and florence-edge's record
//! of what in it was verified.
//!
//! Layout (as `huggingface_hub` and `hf-hub` write it):
//! `{root}/models--org--name/refs/{revision}` holds a commit id,
//! `snapshots/{commit}/{file}` are symlinks into `blobs/{etag}`. The record
//! `snapshots/{commit}/.florence-edge.json` lists every file a pull verified,
//! with its size and SHA-256, and the selections (variant + decoder layout)
//! that were pulled complete. The daemon takes a snapshot as a model only
//! through [`ModelStore::resolve`], which wants that record.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::select::{graph_path, Selection};
use super::{HubError, ModelRef};
use crate::florence2::{DecoderLayout, Variant};

/// File name of the record of verified files inside a snapshot.
pub const RECORD: &str = ".florence-edge.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub repo: String,
    pub commit: String,
    /// Revisions pulled that pointed at this commit, e.g. `main`.
    #[serde(default)]
    pub revisions: Vec<String>,
    /// Verified files by path in the repository.
    pub files: BTreeMap<String, RecordedFile>,
    /// `variant/layout` pairs pulled complete, e.g. `fp16/split`.
    #[serde(default)]
    pub complete: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedFile {
    pub size: u64,
    /// Present for LFS files (checked against the Hub's SHA-256) and for
    /// small ones after `model verify` hashed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

pub(crate) fn selection_key(selection: &Selection) -> String {
    format!("{}/{}", selection.variant.name(), selection.layout_name())
}

/// One snapshot found on disk, for `model list`.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotSummary {
    pub repo: String,
    pub commit: String,
    pub revisions: Vec<String>,
    pub path: PathBuf,
    /// Variant/layout pairs whose files are all there and verified.
    pub verified: Vec<String>,
    /// Graph variants found on disk (`onnx/vision_encoder*.onnx`).
    pub variants_present: Vec<String>,
    pub bytes: u64,
    /// Why nothing or not everything here counts as verified.
    pub problems: Vec<String>,
}

/// A directory of models in the Hugging Face cache layout.
#[derive(Clone, Debug)]
pub struct ModelStore {
    pub root: PathBuf,
}

impl ModelStore {
    pub fn new(root: impl Into<PathBuf>) -> ModelStore {
        ModelStore { root: root.into() }
    }

    pub fn repo_dir(&self, model: &ModelRef) -> PathBuf {
        self.root.join(model.folder_name())
    }

    pub fn snapshot_dir(&self, model: &ModelRef, commit: &str) -> PathBuf {
        self.repo_dir(model).join("snapshots").join(commit)
    }

    /// The commit a revision points at locally: the revision itself when it
    /// is a commit id, else `refs/{revision}`.
    pub fn commit_of(&self, model: &ModelRef) -> Option<String> {
        if model.revision_is_commit() {
            return Some(model.revision.to_ascii_lowercase());
        }
        let path = self.repo_dir(model).join("refs").join(&model.revision);
        let c = std::fs::read_to_string(path).ok()?;
        let c = c.trim();
        super::is_commit(c).then(|| c.to_string())
    }

    pub fn read_record(dir: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the record atomically (a temporary file renamed over it).
    pub fn write_record(dir: &Path, record: &Record) -> Result<(), HubError> {
        let path = dir.join(RECORD);
        let tmp = dir.join(format!("{RECORD}.tmp"));
        let text = serde_json::to_string_pretty(record).map_err(|e| HubError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, text).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| HubError::io(&path, e))
    }

    /// The verified snapshot directory for `model` and `selection`, or why
    /// there is none. Checks that every file the record lists for the
    /// selection is there with its recorded size (hashes are re-checked by
    /// `model verify`, not at every start).
    pub fn resolve(&self, model: &ModelRef, selection: &Selection) -> Result<PathBuf, String> {
        let commit = self.commit_of(model).ok_or_else(|| {
            format!(
                "{} is not in {} (no refs/{} in {})",
                model,
                self.root.display(),
                model.revision,
                self.repo_dir(model).display()
            )
        })?;
        let dir = self.snapshot_dir(model, &commit);
        let record = Self::read_record(&dir).ok_or_else(|| {
            format!(
                "{} has no record of a verified pull ({} is missing)",
                dir.display(),
                RECORD
            )
        })?;
        let key = selection_key(selection);
        if !record.complete.contains(&key) {
            return Err(format!(
                "{} at {} was not pulled for variant {} with the {} decoder (pulled: {})",
                model.repo,
                &commit[..12],
                selection.variant.name(),
                selection.layout_name(),
                if record.complete.is_empty() {
                    "nothing complete".to_string()
                } else {
                    record.complete.join(", ")
                }
            ));
        }
        for path in needed_files(&record, selection) {
            let Some(want) = record.files.get(&path) else {
                return Err(format!("{path} is not in the record of {}", dir.display()));
            };
            match std::fs::metadata(dir.join(&path)) {
                Ok(m) if m.len() == want.size => {}
                Ok(m) => {
                    return Err(format!(
                        "{} is {} bytes, the verified file was {}",
                        dir.join(&path).display(),
                        m.len(),
                        want.size
                    ))
                }
                Err(e) => return Err(format!("{}: {e}", dir.join(&path).display())),
            }
        }
        Ok(dir)
    }

    /// Every snapshot under the root, for `model list`.
    pub fn list(&self) -> Result<Vec<SnapshotSummary>, HubError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(HubError::io(&self.root, e)),
        };
        let mut repos: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("models--"))
            })
            .collect();
        repos.sort();
        for repo_dir in repos {
            let folder = repo_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let repo = folder.trim_start_matches("models--").replacen("--", "/", 1);
            let refs = read_refs(&repo_dir.join("refs"));
            let Ok(snaps) = std::fs::read_dir(repo_dir.join("snapshots")) else {
                continue;
            };
            let mut snaps: Vec<PathBuf> = snaps.filter_map(|e| e.ok().map(|e| e.path())).collect();
            snaps.sort();
            for dir in snaps {
                let commit = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                out.push(summarize(&repo, &commit, &dir, &refs));
            }
        }
        Ok(out)
    }
}

fn read_refs(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: refs/ holds a handful of names (refs/pr/N nests one level).
    let mut budget = 1000;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            budget -= 1;
            if budget == 0 {
                return out;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let (Ok(name), Ok(commit)) =
                (p.strip_prefix(dir), std::fs::read_to_string(&p))
            {
                out.push((
                    name.to_string_lossy().to_string(),
                    commit.trim().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn summarize(repo: &str, commit: &str, dir: &Path, refs: &[(String, String)]) -> SnapshotSummary {
    let revisions: Vec<String> = refs
        .iter()
        .filter(|(_, c)| c == commit)
        .map(|(n, _)| n.clone())
        .filter(|n| n != commit)
        .collect();
    let mut problems = Vec::new();
    let mut verified = Vec::new();
    let record = ModelStore::read_record(dir);
    match &record {
        None => problems.push(format!(
            "no record of a verified pull ({RECORD}); `florence-edge model verify {}` checks it",
            dir.display()
        )),
        Some(r) => {
            for key in &r.complete {
                let Some(selection) = parse_key(key) else {
                    continue;
                };
                let mut ok = true;
                for path in needed_files(r, &selection) {
                    let size = std::fs::metadata(dir.join(&path)).map(|m| m.len()).ok();
                    let want = r.files.get(&path).map(|f| f.size);
                    if size.is_none() || size != want {
                        ok = false;
                        problems.push(format!(
                            "{key}: {path} is {}, the verified file was {} bytes",
                            size.map_or("missing".into(), |s| format!("{s} bytes")),
                            want.map_or("?".into(), |s| s.to_string())
                        ));
                    }
                }
                if ok {
                    verified.push(key.clone());
                }
            }
        }
    }
    let mut bytes = 0;
    for_each_file(dir, &mut |_, len| bytes += len);
    SnapshotSummary {
        repo: repo.to_string(),
        commit: commit.to_string(),
        revisions,
        path: dir.to_path_buf(),
        verified,
        variants_present: variants_on_disk(dir),
        bytes,
        problems,
    }
}

pub(crate) fn parse_key(key: &str) -> Option<Selection> {
    let (v, l) = key.split_once('/')?;
    Some(Selection {
        variant: Variant::parse(v).ok()?,
        layout: match l {
            "split" => DecoderLayout::Split,
            "merged" => DecoderLayout::Merged,
            _ => return None,
        },
    })
}

/// The files of `selection` that `record` knows: the JSON files and each
/// graph (with the embed_tokens fallback) plus its external data.
pub(crate) fn needed_files(record: &Record, selection: &Selection) -> Vec<String> {
    let mut out: Vec<String> = super::select::JSON_FILES
        .iter()
        .map(|s| s.to_string())
        .collect();
    for stem in selection.stems() {
        let mut g = graph_path(stem, &selection.variant);
        if !record.files.contains_key(&g) && *stem == "embed_tokens" {
            g = graph_path(stem, &Variant::fp32());
        }
        let data = format!("{g}_data");
        out.extend(
            record
                .files
                .keys()
                .filter(|k| **k == data || k.starts_with(&format!("{data}_")))
                .cloned(),
        );
        out.push(g);
    }
    out
}

/// Graph variants present on disk, by their vision encoder.
pub fn variants_on_disk(dir: &Path) -> Vec<String> {
    Variant::ALLOWED
        .iter()
        .filter(|v| {
            dir.join(graph_path(
                "vision_encoder",
                &Variant::parse(v).unwrap_or_else(|_| Variant::fp32()),
            ))
            .is_file()
        })
        .map(|v| v.to_string())
        .collect()
}

/// Calls `f(relative path, length)` for every regular file below `dir`
/// (symlinks followed), skipping the record. Bounded by a file budget.
pub fn for_each_file(dir: &Path, f: &mut dyn FnMut(&str, u64)) {
    let mut stack = vec![dir.to_path_buf()];
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return;
            }
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let rel = rel.to_string_lossy().replace('\\', "/");
                if rel != RECORD && !rel.ends_with(".tmp") {
                    f(&rel, meta.len());
                }
            }
        }
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// An advisory lock on one repository of the store (`flock` on
/// `models--org--name/.florence-edge.lock`), held for a whole pull.
pub struct RepoLock {
    _file: std::fs::File,
}

impl RepoLock {
    /// Takes the lock, waiting for another pull of the same repository
    /// (said once in the log) to finish.
    pub fn acquire(store: &ModelStore, model: &ModelRef) -> Result<RepoLock, HubError> {
        use std::os::fd::AsRawFd;
        let dir = store.repo_dir(model);
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        let path = dir.join(".florence-edge.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| HubError::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            tracing::info!(repo = %model.repo, lock = %path.display(), "Another pull of this repository is running; waiting for it to finish.");
            // SAFETY: as above; blocks until the other holder closes it.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(HubError::io(&path, std::io::Error::last_os_error()));
            }
        }
        Ok(RepoLock { _file: file })
    }
}
