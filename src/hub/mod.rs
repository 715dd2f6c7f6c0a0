//! Models from the Hugging Face Hub: `florence-edge model pull|list|verify`
//! and `[model] id = "…"` in the configuration.
//!
//! Downloads go through the `hf-hub` crate's synchronous client into the
//! Hugging Face cache layout (`models--org--name/{blobs,snapshots,refs}`),
//! so a directory filled by `huggingface-cli download` or by Python's
//! `huggingface_hub` serves us too and the other way round. What the crate
//! does not do, this module adds:
//!
//! - **Only the files the runtime opens** for one precision variant and
//!   decoder layout ([`select`]): the JSON files and four or five graphs,
//!   never the 40+ files of an onnx-community repository.
//! - **Verification**: every large (LFS) file against the SHA-256 the Hub
//!   lists for it, every small one against its size. A file that does not
//!   match is removed, never kept.
//! - **A record of verified pulls** (`.florence-edge.json` in the snapshot):
//!   the daemon takes a snapshot as a model only when the record lists every
//!   file of the asked variant with its size, so a half-written or
//!   unverified download is never taken for a model ([`store`]).
//! - **One pull at a time per repository** (an advisory lock), so two pulls
//!   into one directory wait for each other instead of interleaving.
//! - **Errors that say what to do**: a gated repository, a wrong name or
//!   revision and an unreachable endpoint each name the repository.

pub mod cli;
pub mod progress;
pub mod pull;
pub mod select;
pub mod store;
pub mod verify;

use std::fmt;
use std::path::{Path, PathBuf};

pub use progress::{ProgressMode, PullProgress};
pub use pull::{ensure_model, pull, PullOptions, PullReport};
pub use select::{RemoteFile, RemoteListing, Selection};
pub use store::{ModelStore, SnapshotSummary};

/// The Hub's own address; `HF_ENDPOINT` replaces it (a mirror, a proxy, a
/// test's stand-in).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A repository on the Hub and the revision (branch, tag or commit) to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    /// `org/name` (or a bare `name` for the few repositories without one).
    pub repo: String,
    pub revision: String,
}

const REPO_ALLOWED: &str =
    "a Hub model id such as \"onnx-community/Florence-2-base-ft\" (letters, digits, '-', '_', '.'; at most 96 per part)";
const REVISION_ALLOWED: &str =
    "a branch, tag or commit, e.g. \"main\" (letters, digits, '-', '_', '.', '/'; no \"..\")";

impl ModelRef {
    /// Checks the repository id and revision the way the Hub names them, so
    /// neither can escape the cache directory.
    pub fn new(repo: &str, revision: &str) -> Result<ModelRef, HubError> {
        let repo = repo.trim();
        let parts: Vec<&str> = repo.split('/').collect();
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p != "."
                && p != ".."
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) {
            return Err(HubError::Invalid {
                what: format!("repository {repo:?}"),
                allowed: REPO_ALLOWED.into(),
            });
        }
        let revision = revision.trim();
        let rev_ok = !revision.is_empty()
            && revision.len() <= 255
            && !revision.starts_with('/')
            && !revision.ends_with('/')
            && !revision.contains("..")
            && !revision.contains("//")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !rev_ok {
            return Err(HubError::Invalid {
                what: format!("revision {revision:?}"),
                allowed: REVISION_ALLOWED.into(),
            });
        }
        Ok(ModelRef {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The cache's folder for this repository: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// Whether the revision is a full commit id (40 hex digits).
    pub fn revision_is_commit(&self) -> bool {
        is_commit(&self.revision)
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// A full git commit id.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where models are kept when neither `--dir` nor `[model] cache_dir` says:
/// the Hugging Face rules (`HF_HUB_CACHE`, then `HF_HOME/hub`), then the
/// service's state directory (`$STATE_DIRECTORY/models`, which the systemd
/// unit creates), then `$XDG_CACHE_HOME/huggingface/hub` and
/// `~/.cache/huggingface/hub` as Python's `huggingface_hub` does.
pub fn default_cache_dir() -> Result<PathBuf, HubError> {
    default_cache_dir_from(&|k| std::env::var_os(k).filter(|v| !v.is_empty()))
}

fn default_cache_dir_from(
    var: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, HubError> {
    if let Some(p) = var("HF_HUB_CACHE") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = var("HF_HOME") {
        return Ok(PathBuf::from(p).join("hub"));
    }
    if let Some(p) = var("STATE_DIRECTORY") {
        // systemd passes every StateDirectory=, colon-separated; the first
        // is the service's own.
        let first = p
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return Ok(PathBuf::from(first).join("models"));
        }
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(p).join("huggingface").join("hub"));
    }
    if let Some(p) = var("HOME") {
        return Ok(PathBuf::from(p)
            .join(".cache")
            .join("huggingface")
            .join("hub"));
    }
    Err(HubError::Invalid {
        what: "the model cache directory (no HF_HUB_CACHE, HF_HOME, STATE_DIRECTORY, XDG_CACHE_HOME or HOME is set)".into(),
        allowed: "--dir DIR, or [model] cache_dir in the configuration".into(),
    })
}

/// The access token, the way the Hugging Face tools find it: `HF_TOKEN`,
/// then the file `HF_TOKEN_PATH`, then `$HF_HOME/token` (default
/// `~/.cache/huggingface/token`, where `huggingface-cli login` writes it).
pub fn token_from_env() -> Option<String> {
    token_from(&|k| std::env::var_os(k).filter(|v| !v.is_empty()))
}

fn token_from(var: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Option<String> {
    if let Some(t) = var("HF_TOKEN") {
        let t = t.to_string_lossy().trim().to_string();
        if !t.is_empty() {
            return Some(t);
        }
    }
    let file = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| {
        var("HF_HOME")
            .map(|h| PathBuf::from(h).join("token"))
            .or_else(|| {
                var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface").join("token"))
            })
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/token")))
    })?;
    let t = std::fs::read_to_string(file).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The endpoint in effect: `HF_ENDPOINT` or the Hub's own.
pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// The command that fetches what a configuration or a refusal names, for
/// messages that tell the user what to run.
pub fn pull_command(model: &ModelRef, selection: &Selection, dir: Option<&Path>) -> String {
    let mut cmd = format!("florence-edge model pull {}", model.repo);
    if model.revision != "main" {
        cmd.push_str(&format!(" --revision {}", model.revision));
    }
    if selection.variant.name() != "fp32" {
        cmd.push_str(&format!(" --variant {}", selection.variant.name()));
    }
    if selection.layout == crate::florence2::DecoderLayout::Merged {
        cmd.push_str(" --decoder merged");
    }
    if let Some(dir) = dir {
        cmd.push_str(&format!(" --dir {}", dir.display()));
    }
    cmd
}

/// Everything that can go wrong between the Hub and a verified directory.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{what} is not valid; allowed: {allowed}")]
    Invalid { what: String, allowed: String },
    #[error("{repo} is gated or private and the Hub refused access (HTTP {status}{}): accept its terms on {endpoint}/{repo} with your account, then give a token with read access in HF_TOKEN (or `huggingface-cli login`){}", code_note(.code), if *.token_given { "; the token that was sent has no access to it" } else { "; no token was sent" })]
    Unauthorized {
        repo: String,
        endpoint: String,
        status: u16,
        code: Option<String>,
        token_given: bool,
    },
    #[error("{repo} was not found on {endpoint} (HTTP 404{}): check the id, e.g. onnx-community/Florence-2-base-ft", code_note(.code))]
    RepoNotFound {
        repo: String,
        endpoint: String,
        code: Option<String>,
    },
    #[error("{repo} has no revision {revision:?} on {endpoint} (HTTP 404): give a branch, tag or commit it has (--revision main)")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    #[error("cannot reach the Hub at {endpoint} for {repo}: {detail}; check the network (or HF_ENDPOINT for a mirror), then run the pull again: what arrived is kept and resumed")]
    Unreachable {
        repo: String,
        endpoint: String,
        detail: String,
    },
    #[error("{repo}: {url} answered HTTP {status}{}", code_note(.code))]
    Http {
        repo: String,
        url: String,
        status: u16,
        code: Option<String>,
    },
    #[error("{repo}: the Hub's answer for {what} could not be read: {detail}")]
    BadAnswer {
        repo: String,
        what: String,
        detail: String,
    },
    #[error("{at} has no {file} ({}): the runtime opens it for {selection}; variants in this repository: {available}", if *.layout_note { "the merged decoder is one graph, the split one two" } else { "not in the repository's file list" })]
    MissingFile {
        /// `repo@revision`.
        at: String,
        file: String,
        /// `variant fp16, decoder split`.
        selection: String,
        layout_note: bool,
        available: String,
    },
    #[error(
        "{file} of {repo} arrived corrupted: {problem}; the file was removed, run the pull again"
    )]
    Corrupt {
        repo: String,
        file: String,
        problem: String,
    },
    #[error("{repo}: downloading {file} failed: {detail}")]
    Download {
        repo: String,
        file: String,
        detail: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn code_note(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(", {c}")).unwrap_or_default()
}

impl HubError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> HubError {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn repo_ids_and_revisions_are_checked() {
        assert!(ModelRef::new("onnx-community/Florence-2-base-ft", "main").is_ok());
        assert!(ModelRef::new("gpt2", "refs/pr/1").is_ok());
        for bad in ["", "a/b/c", "../x", "org/..", "org/na me", "org/", "/x"] {
            let e = ModelRef::new(bad, "main").unwrap_err().to_string();
            assert!(e.contains("Hub model id"), "{bad}: {e}");
        }
        for bad in ["", "../main", "a//b", "/main", "main/", "ma in"] {
            let e = ModelRef::new("org/x", bad).unwrap_err().to_string();
            assert!(e.contains("branch, tag or commit"), "{bad}: {e}");
        }
        let m = ModelRef::new("onnx-community/Florence-2-base-ft", "main").unwrap();
        assert_eq!(
            m.folder_name(),
            "models--onnx-community--Florence-2-base-ft"
        );
        assert!(!m.revision_is_commit());
        assert!(is_commit(&"a".repeat(40)));
        assert!(!is_commit(&"g".repeat(40)));
    }

    #[test]
    fn the_cache_directory_follows_the_hugging_face_rules_then_the_service() {
        let d = |pairs: &[(&str, &str)]| default_cache_dir_from(&env(pairs)).unwrap();
        assert_eq!(
            d(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")]),
            PathBuf::from("/c")
        );
        assert_eq!(
            d(&[("HF_HOME", "/h"), ("HOME", "/home/u")]),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            d(&[
                (
                    "STATE_DIRECTORY",
                    "/var/lib/florence-edge:/var/lib/florence-edge/models"
                ),
                ("XDG_CACHE_HOME", "/var/cache/florence-edge")
            ]),
            PathBuf::from("/var/lib/florence-edge/models")
        );
        assert_eq!(
            d(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/home/u")]),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            d(&[("HOME", "/home/u")]),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert!(default_cache_dir_from(&env(&[])).is_err());
    }

    #[test]
    fn the_token_comes_from_hf_token_then_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(
            token_from(&env(&[("HF_TOKEN", "hf_env"), ("HF_HOME", home)])).as_deref(),
            Some("hf_env")
        );
        assert_eq!(
            token_from(&env(&[("HF_HOME", home)])).as_deref(),
            Some("hf_file")
        );
        let file = dir.path().join("token");
        assert_eq!(
            token_from(&env(&[("HF_TOKEN_PATH", file.to_str().unwrap())])).as_deref(),
            Some("hf_file")
        );
        assert_eq!(token_from(&env(&[("HOME", "/nonexistent")])), None);
    }

    #[test]
    fn the_pull_command_names_only_what_differs_from_the_defaults() {
        use crate::florence2::{DecoderLayout, Variant};
        let m = ModelRef::new("onnx-community/Florence-2-base-ft", "main").unwrap();
        let fp32 = Selection {
            variant: Variant::fp32(),
            layout: DecoderLayout::Split,
        };
        assert_eq!(
            pull_command(&m, &fp32, None),
            "florence-edge model pull onnx-community/Florence-2-base-ft"
        );
        let m2 = ModelRef::new("org/x", "v1").unwrap();
        let fp16 = Selection {
            variant: Variant::parse("fp16").unwrap(),
            layout: DecoderLayout::Merged,
        };
        assert_eq!(
            pull_command(&m2, &fp16, Some(Path::new("/var/lib/florence-edge/models"))),
            "florence-edge model pull org/x --revision v1 --variant fp16 --decoder merged --dir /var/lib/florence-edge/models"
        );
    }
}
