//! `model pull`: the files of one variant, downloaded by hf-hub, verified,
//! recorded.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::progress::{FileProgress, PullProgress};
use super::select::{select, RemoteFile, RemoteListing, Selection};
use super::store::{selection_key, sha256_file, ModelStore, RecordedFile, RepoLock};
use super::{HubError, ModelRef};

/// What to pull and from where.
#[derive(Clone, Debug)]
pub struct PullOptions {
    pub model: ModelRef,
    pub selection: Selection,
    /// The model store (a Hugging Face cache directory).
    pub cache_dir: PathBuf,
    /// `https://huggingface.co`, or `HF_ENDPOINT`.
    pub endpoint: String,
    pub token: Option<String>,
    /// How often one file's download is resumed within this pull after the
    /// connection broke (1 s, 2 s, 4 s … at most 10 s apart).
    pub retries: usize,
}

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullReport {
    /// The verified snapshot: a model directory `run` and `infer` open.
    pub dir: PathBuf,
    pub commit: String,
    /// Files fetched by this pull.
    pub downloaded: Vec<String>,
    /// Files that were already there and verified.
    pub kept: Vec<String>,
    /// Bytes of all the selected files.
    pub bytes: u64,
}

/// Pulls `opts.selection` of `opts.model` into the store: lists the
/// revision on the Hub, downloads what is missing, verifies every file
/// (SHA-256 for LFS files, size for the rest), removes a file that does not
/// match, and records the verified selection. Holds the repository's lock
/// throughout, so a second pull of the same repository waits.
pub fn pull(opts: &PullOptions, progress: &mut PullProgress) -> Result<PullReport, HubError> {
    let store = ModelStore::new(&opts.cache_dir);
    let _lock = RepoLock::acquire(&store, &opts.model)?;
    let ctx = Ctx {
        repo: &opts.model.repo,
        revision: &opts.model.revision,
        endpoint: &opts.endpoint,
        token_given: opts.token.is_some(),
    };
    let api = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(false)
        .with_retries(0)
        .with_user_agent("florence-edge", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| ctx.api_error(e, "the Hub client"))?;

    let listing = {
        let repo = api.repo(Repo::with_revision(
            opts.model.repo.clone(),
            RepoType::Model,
            opts.model.revision.clone(),
        ));
        let response = repo
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| ctx.ureq_error(e))?;
        let body = response.into_string().map_err(|e| HubError::BadAnswer {
            repo: opts.model.repo.clone(),
            what: "the model's file list".into(),
            detail: e.to_string(),
        })?;
        RemoteListing::parse(&opts.model.repo, &body)?
    };
    let files = select(
        &listing,
        &opts.model.repo,
        &opts.model.revision,
        &opts.selection,
    )?;
    let commit = listing.commit.clone();
    let dir = store.snapshot_dir(&opts.model, &commit);
    let mut record = ModelStore::read_record(&dir).unwrap_or_default();
    record.repo = opts.model.repo.clone();
    record.commit = commit.clone();

    // Files already there and matching the Hub's list are kept (after
    // hashing them once if no pull of ours recorded them).
    let mut kept = Vec::new();
    let mut to_fetch = Vec::new();
    for f in &files {
        let path = dir.join(&f.path);
        let recorded = record.files.get(&f.path);
        let on_disk = std::fs::metadata(&path).map(|m| m.len()).ok();
        let same =
            |r: &RecordedFile| r.size == f.size && (f.sha256.is_none() || r.sha256 == f.sha256);
        if on_disk == Some(f.size) && recorded.is_some_and(same) {
            kept.push(f.path.clone());
        } else if on_disk == Some(f.size) && check(f, &path).is_ok() {
            record.files.insert(f.path.clone(), recorded_of(f));
            kept.push(f.path.clone());
        } else {
            record.files.remove(&f.path);
            to_fetch.push(f.clone());
        }
    }

    let total: u64 = to_fetch.iter().map(|f| f.size).sum();
    progress.begin(to_fetch.len(), total);
    let by_commit = api.repo(Repo::with_revision(
        opts.model.repo.clone(),
        RepoType::Model,
        commit.clone(),
    ));
    let mut downloaded = Vec::new();
    for f in &to_fetch {
        let target = dir.join(&f.path);
        // hf-hub keeps an existing snapshot entry (even a dangling one):
        // take it away so the new download is linked in its place.
        if std::fs::symlink_metadata(&target).is_ok() {
            std::fs::remove_file(&target).map_err(|e| HubError::io(&target, e))?;
        }
        progress.start_file(&f.path);
        let blobs = store.repo_dir(&opts.model).join("blobs");
        // Our own retries, not hf-hub's: each try starts again from the
        // metadata, so hf-hub resumes from the `.part`'s length (its own
        // retry resumes from the file position, 0 when a try wrote nothing,
        // and appends the whole file to the part).
        let mut attempt = 0;
        let path = loop {
            remove_unresumable_part(&blobs, f);
            let got = std::panic::catch_unwind(AssertUnwindSafe(|| {
                by_commit.download_with_progress(&f.path, FileProgress(&mut *progress))
            }));
            match got {
                Ok(Err(e)) if attempt < opts.retries && retryable(&e) => {
                    attempt += 1;
                    let wait =
                        Duration::from_millis(500 << attempt.min(5)).min(Duration::from_secs(10));
                    tracing::warn!(repo = %opts.model.repo, file = %f.path, error = %e, attempt, of = opts.retries, wait_ms = wait.as_millis() as u64, "The download broke off; resuming it.");
                    std::thread::sleep(wait);
                }
                other => break other,
            }
        };
        let path = match path {
            Ok(Ok(path)) => path,
            Ok(Err(ApiError::InvalidResume)) => {
                remove_stale_parts(&store.repo_dir(&opts.model), f.size);
                progress.finish();
                return Err(ctx.download(
                    f,
                    "a partial download left by an earlier pull was longer than the file; it was removed, run the pull again",
                ));
            }
            Ok(Err(e)) => {
                progress.finish();
                return Err(ctx.api_error(e, &f.path));
            }
            Err(_) => {
                progress.finish();
                return Err(ctx.download(
                    f,
                    "the Hub client failed on an answer it did not expect (see the log above)",
                ));
            }
        };
        if let Err(problem) = check(f, &path) {
            remove_download(&path);
            progress.finish();
            return Err(HubError::Corrupt {
                repo: opts.model.repo.clone(),
                file: f.path.clone(),
                problem,
            });
        }
        record.files.insert(f.path.clone(), recorded_of(f));
        progress.finish_file(f.size);
        downloaded.push(f.path.clone());
    }
    progress.finish();

    let key = selection_key(&opts.selection);
    if !record.complete.contains(&key) {
        record.complete.push(key);
        record.complete.sort();
    }
    let refs = store.repo_dir(&opts.model).join("refs");
    if !opts.model.revision_is_commit() {
        if !record.revisions.contains(&opts.model.revision) {
            record.revisions.push(opts.model.revision.clone());
            record.revisions.sort();
        }
        let r = refs.join(&opts.model.revision);
        if let Some(parent) = r.parent() {
            std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        }
        write_atomically(&r, commit.as_bytes())?;
    }
    // hf-hub names a ref after the revision it was asked for, here the
    // commit itself; Python's huggingface_hub writes no such ref.
    let stray = refs.join(&commit);
    if !opts.model.revision_is_commit() && stray.is_file() {
        let _ = std::fs::remove_file(stray);
    }
    std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
    ModelStore::write_record(&dir, &record)?;
    Ok(PullReport {
        dir,
        commit,
        downloaded,
        kept,
        bytes: files.iter().map(|f| f.size).sum(),
    })
}

fn recorded_of(f: &RemoteFile) -> RecordedFile {
    RecordedFile {
        size: f.size,
        sha256: f.sha256.clone(),
    }
}

/// The file at `path` against the Hub's size and, for LFS files, SHA-256.
fn check(f: &RemoteFile, path: &Path) -> Result<(), String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len != f.size {
        return Err(format!("{len} bytes, the Hub lists {}", f.size));
    }
    if let Some(want) = &f.sha256 {
        let got = sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if &got != want {
            return Err(format!("SHA-256 {got}, the Hub lists {want}"));
        }
    }
    Ok(())
}

/// Removes a download that failed its check: the blob it links to, then
/// the link.
fn remove_download(link: &Path) {
    if let Ok(blob) = std::fs::canonicalize(link) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(link);
}

/// Whether a failed try is worth another: a broken connection, a network
/// error, the server busy or failing; not a refusal.
fn retryable(e: &ApiError) -> bool {
    match e {
        ApiError::IoError(_) => true,
        ApiError::RequestError(u) => match &**u {
            ureq::Error::Transport(_) => true,
            ureq::Error::Status(status, _) => *status == 429 || *status >= 500,
        },
        _ => false,
    }
}

/// hf-hub cannot resume a `.part` that already holds the whole file (it
/// asks for the bytes after the end and gets 416 forever): remove it.
fn remove_unresumable_part(blobs: &Path, f: &RemoteFile) {
    let Some(etag) = f.etag() else {
        return;
    };
    let part = blobs.join(format!("{etag}.part"));
    if std::fs::metadata(&part).is_ok_and(|m| m.len() >= f.size) {
        tracing::info!(file = %f.path, part = %part.display(), "Removing a partial download that cannot be resumed (it is already the file's full length).");
        let _ = std::fs::remove_file(part);
    }
}

fn remove_stale_parts(repo_dir: &Path, size: u64) {
    let Ok(entries) = std::fs::read_dir(repo_dir.join("blobs")) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let longer = std::fs::metadata(&p).is_ok_and(|m| m.len() > size);
        if p.extension().is_some_and(|x| x == "part") && longer {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let tmp = path.with_extension("florence-edge.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HubError::io(path, e))
}

struct Ctx<'a> {
    repo: &'a str,
    revision: &'a str,
    endpoint: &'a str,
    token_given: bool,
}

impl Ctx<'_> {
    fn download(&self, f: &RemoteFile, detail: &str) -> HubError {
        HubError::Download {
            repo: self.repo.to_string(),
            file: f.path.clone(),
            detail: detail.to_string(),
        }
    }

    fn ureq_error(&self, e: ureq::Error) -> HubError {
        match e {
            ureq::Error::Status(status, response) => {
                let code = response.header("X-Error-Code").map(str::to_string);
                let url = response.get_url().to_string();
                match (status, code.as_deref()) {
                    // The Hub answers 401 RepoNotFound for a repository it
                    // will not confirm to an anonymous client.
                    (_, Some("RepoNotFound")) | (404, None) => HubError::RepoNotFound {
                        repo: self.repo.to_string(),
                        endpoint: self.endpoint.to_string(),
                        code,
                    },
                    (_, Some("RevisionNotFound")) => HubError::RevisionNotFound {
                        repo: self.repo.to_string(),
                        revision: self.revision.to_string(),
                        endpoint: self.endpoint.to_string(),
                    },
                    (401 | 403, _) => HubError::Unauthorized {
                        repo: self.repo.to_string(),
                        endpoint: self.endpoint.to_string(),
                        status,
                        code,
                        token_given: self.token_given,
                    },
                    _ => HubError::Http {
                        repo: self.repo.to_string(),
                        url,
                        status,
                        code,
                    },
                }
            }
            ureq::Error::Transport(t) => HubError::Unreachable {
                repo: self.repo.to_string(),
                endpoint: self.endpoint.to_string(),
                detail: t.to_string(),
            },
        }
    }

    fn api_error(&self, e: ApiError, file: &str) -> HubError {
        let detail = match e {
            ApiError::RequestError(u) => return self.ureq_error(*u),
            ApiError::TooManyRetries(inner) => {
                format!("{inner}, after every retry; what arrived is kept: run the pull again to resume")
            }
            ApiError::IoError(io) => {
                format!("{io}; what arrived is kept: run the pull again to resume")
            }
            ApiError::MissingHeader(h) => format!(
                "the answer has no {h} header (is {} a Hugging Face Hub?)",
                self.endpoint
            ),
            ApiError::InvalidHeader(h) => format!("the answer's {h} header does not read"),
            ApiError::LockAcquisition(p) => format!(
                "another program holds the lock {} (a huggingface_hub download of the same file?)",
                p.display()
            ),
            other => other.to_string(),
        };
        HubError::Download {
            repo: self.repo.to_string(),
            file: file.to_string(),
            detail,
        }
    }
}

/// For `run`: the directory of `[model] id`, pulled first when the store
/// does not hold it verified and `download = true`. `None` for a
/// `[model] dir` or a model already there; `status` hears "downloading 45%"
/// lines for systemd. Without `download`, a missing model is left for
/// `validate`/`plan` to refuse with the `model pull` command to run.
pub fn ensure_model(
    model: &crate::config::ModelConfig,
    status: impl FnMut(&str) + Send + 'static,
) -> Result<Option<PathBuf>, HubError> {
    let Some(hub) = &model.hub else {
        return Ok(None);
    };
    let selection = model.selection();
    let store = ModelStore::new(&hub.cache_dir);
    let why = match store.resolve(&hub.model, &selection) {
        Ok(_) => return Ok(None),
        Err(why) => why,
    };
    if !hub.download {
        return Ok(None);
    }
    tracing::info!(repo = %hub.model.repo, revision = %hub.model.revision, variant = selection.variant.name(), decoder = selection.layout_name(), store = %hub.cache_dir.display(), reason = %why, "The model is not in the store; pulling it (model.download = true).");
    let mut status = status;
    let mut progress =
        PullProgress::new(super::ProgressMode::Log, &hub.model.repo).with_callback(move |u| {
            status(&format!(
                "Downloading {}: {}% ({})",
                u.repo, u.percent, u.file
            ));
        });
    let report = pull(
        &PullOptions {
            model: hub.model.clone(),
            selection,
            cache_dir: hub.cache_dir.clone(),
            endpoint: super::endpoint_from_env(),
            token: super::token_from_env(),
            retries: 5,
        },
        &mut progress,
    )?;
    tracing::info!(repo = %hub.model.repo, commit = %report.commit, downloaded = report.downloaded.len(), dir = %report.dir.display(), "Model pulled and verified.");
    Ok(Some(report.dir))
}
