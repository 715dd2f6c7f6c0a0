//! A stand-in for the Hugging Face Hub in tests that cannot reach the
//! internet: model directories on disk served as Hub repositories on
//! 127.0.0.1 (a port chosen at run time), with the endpoints hf-hub 0.4.3 and
//! huggingface_hub use: the repo info API, `resolve` (plain files served
//! directly, LFS files redirected to a CDN path) and that CDN path. Faults on
//! request: a body cut short, a body with a flipped byte, a gated repo. Every
//! request is recorded.
//!
//! Why HTTP by hand (std::net, a thread per connection, requests parsed by
//! httparse, responses written here) and not hyper: `cut_after` must put
//! exactly N body bytes on the wire and then drop the connection. hyper
//! buffers what a body yields and, when the body fails, closes the connection
//! with whatever it had not flushed yet, so the client would see an unknown
//! prefix. Writing the response ourselves and closing after the write makes
//! the cut exact. One request per connection (`Connection: close`): ureq 2
//! copes, and no keep-alive state is needed.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A repository to serve.
#[derive(Clone, Debug)]
pub struct RepoSpec {
    /// "org/name", e.g. "test-org/tiny-florence2".
    pub id: String,
    /// Every regular file under it, recursively, is a file of the repo
    /// (paths joined with '/'; symbolic links are skipped).
    pub dir: PathBuf,
    /// Revision names that resolve, e.g. `vec!["main".into()]`; the repo's
    /// commit sha always resolves too.
    pub revisions: Vec<String>,
    /// `Some(t)`: every request for this repo (but the CDN, like a presigned
    /// URL) without `Authorization: Bearer t` gets 401 GatedRepo.
    pub gated_token: Option<String>,
}

/// One request as the stand-in saw and answered it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// URL path and query, as received.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    /// The repo file the request was about (resolve and CDN requests).
    pub file: Option<String>,
    /// Body bytes sent: content bytes for a file, JSON bytes otherwise.
    pub body_bytes: u64,
}

pub struct HubStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

struct RepoFile {
    content: Vec<u8>,
    /// Git blob id: of the content for a plain file, of the pointer for LFS.
    blob_id: String,
    sha256: String,
    lfs: bool,
}

struct Repo {
    id: String,
    revisions: Vec<String>,
    gated_token: Option<String>,
    commit: String,
    files: BTreeMap<String, RepoFile>,
}

/// (repo id, file path)
type FileKey = (String, String);

#[derive(Default)]
struct State {
    cuts: HashMap<FileKey, u64>,
    corrupt: HashSet<FileKey>,
    /// Each request with the repo it was about.
    log: Vec<(Option<String>, Request)>,
}

struct Shared {
    endpoint: String,
    repos: Vec<Repo>,
    state: Mutex<State>,
    stop: AtomicBool,
    connections: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Git's object id for a blob: sha1 over "blob {len}\0" and the content.
pub fn git_blob_sha1(content: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex(&hasher.finalize())
}

pub fn sha256_hex(content: &[u8]) -> String {
    hex(&Sha256::digest(content))
}

/// The Git LFS pointer file committed in place of an LFS file.
fn lfs_pointer(sha256: &str, size: usize) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

fn is_lfs(path: &str) -> bool {
    path.ends_with(".onnx") || path.ends_with(".onnx_data")
}

/// Every regular file under `dir`, by its path relative to `dir`.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = pending.pop() {
        let entries = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("read served dir {}: {e}", path.display()));
        for entry in entries {
            let entry = entry.expect("read served dir entry");
            let name = entry.file_name().into_string().expect("UTF-8 file name");
            let kind = entry.file_type().expect("file type");
            let rel = format!("{prefix}{name}");
            if kind.is_dir() {
                pending.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() {
                files.insert(rel, std::fs::read(entry.path()).expect("read served file"));
            }
        }
    }
    files
}

fn load(spec: RepoSpec) -> Repo {
    let tree = read_tree(&spec.dir);
    assert!(!tree.is_empty(), "no files under {}", spec.dir.display());
    let mut commit = Sha1::new();
    let mut files = BTreeMap::new();
    for (path, content) in tree {
        commit.update(format!("{path}\0{}\0", content.len()).as_bytes());
        commit.update(&content);
        let sha256 = sha256_hex(&content);
        let lfs = is_lfs(&path);
        let blob_id = if lfs {
            git_blob_sha1(lfs_pointer(&sha256, content.len()).as_bytes())
        } else {
            git_blob_sha1(&content)
        };
        let file = RepoFile {
            content,
            blob_id,
            sha256,
            lfs,
        };
        files.insert(path, file);
    }
    Repo {
        id: spec.id,
        revisions: spec.revisions,
        gated_token: spec.gated_token,
        commit: hex(&commit.finalize()),
        files,
    }
}

impl HubStandIn {
    pub fn start(repos: Vec<RepoSpec>) -> HubStandIn {
        let repos: Vec<Repo> = repos.into_iter().map(load).collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the hub stand-in");
        let addr = listener.local_addr().expect("hub stand-in address");
        let shared = Arc::new(Shared {
            endpoint: format!("http://{addr}"),
            repos,
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hub-standin".into())
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn the hub stand-in")
        };
        HubStandIn {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// "http://127.0.0.1:PORT", what HF_ENDPOINT gets.
    pub fn endpoint(&self) -> String {
        self.shared.endpoint.clone()
    }

    /// The repo's fake commit: sha1 over its sorted paths, sizes and contents.
    pub fn commit(&self, repo: &str) -> String {
        self.shared
            .repo(repo)
            .expect("a served repo")
            .commit
            .clone()
    }

    /// The next GET response carrying more than one byte of `path`'s content
    /// (a resolve or CDN download, not hf-hub's `bytes=0-0` probe) sends only
    /// `bytes` bytes of its body, then drops the connection; its
    /// Content-Length still announces the whole range.
    pub fn cut_after(&self, repo: &str, path: &str, bytes: u64) {
        let key = self.shared.file_key(repo, path);
        lock(&self.shared.state).cuts.insert(key, bytes);
    }

    /// Every later response with `path`'s content has the file's last byte
    /// inverted (when the range covers it); the metadata (API sizes, sha256,
    /// etags) stays that of the true content.
    pub fn corrupt(&self, repo: &str, path: &str) {
        let key = self.shared.file_key(repo, path);
        lock(&self.shared.state).corrupt.insert(key);
    }

    /// Requests so far, in the order they were answered.
    pub fn requests(&self) -> Vec<Request> {
        let state = lock(&self.shared.state);
        state.log.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Content bytes sent for `path`, by any endpoint.
    pub fn bytes_served(&self, repo: &str, path: &str) -> u64 {
        self.about(repo, path).iter().map(|r| r.body_bytes).sum()
    }

    /// GET responses that sent more than one byte of `path`'s content.
    pub fn downloads(&self, repo: &str, path: &str) -> usize {
        let about = self.about(repo, path);
        about
            .iter()
            .filter(|r| r.method == "GET" && r.body_bytes > 1)
            .count()
    }

    fn about(&self, repo: &str, path: &str) -> Vec<Request> {
        let state = lock(&self.shared.state);
        state
            .log
            .iter()
            .filter(|(r, req)| r.as_deref() == Some(repo) && req.file.as_deref() == Some(path))
            .map(|(_, req)| req.clone())
            .collect()
    }
}

impl Drop for HubStandIn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor blocked in accept(); it sees `stop` and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Shutting a socket down ends a read or write blocked on it.
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for (stream, handle) in connections {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Ends with the stand-in (Drop connects once after setting `stop`) or
    // at the first accept error.
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { return };
        let Ok(handle_side) = stream.try_clone() else {
            continue;
        };
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("hub-standin-conn".into())
            .spawn(move || serve_connection(stream, &conn_shared));
        if let Ok(handle) = spawned {
            let mut connections = lock(&shared.connections);
            connections.retain(|(_, h)| !h.is_finished());
            connections.push((handle_side, handle));
        }
    }
}

/// The request head (up to the blank line), at most 64 KiB.
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    const MAX: usize = 64 * 1024;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while head.len() < MAX {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(head);
        }
    }
    None
}

fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    // A client that stops mid-request cannot hold the thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    if let Some(head) = read_head(&mut stream) {
        serve_request(&mut stream, &head, shared);
    }
    // The end of the exchange, or the cut: FIN after the bytes written. (The
    // clone kept for Drop holds the descriptor open; shutdown does not wait.)
    let _ = stream.shutdown(Shutdown::Both);
}

fn serve_request(stream: &mut TcpStream, head: &[u8], shared: &Shared) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let (method, target) = match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => (
            parsed.method.unwrap_or_default().to_string(),
            parsed.path.unwrap_or_default().to_string(),
        ),
        _ => {
            let reply = Reply::error(400, "BadRequest", "Malformed request".into());
            let _ = write_reply(stream, false, &reply, &reply.json, usize::MAX);
            return;
        }
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let request = Request {
        range: header("range"),
        authorization: header("authorization"),
        method,
        path: target,
        status: 0,
        file: None,
        body_bytes: 0,
    };
    shared.answer(stream, request);
}

/// What a route decided; the body is sent by `Shared::answer`.
#[derive(Default)]
struct Reply<'a> {
    status: u16,
    headers: Vec<(&'static str, String)>,
    json: Vec<u8>,
    /// A file's bytes `start..end`.
    content: Option<(&'a RepoFile, usize, usize)>,
    /// The (repo id, file path) the request was about.
    about: Option<(&'a str, &'a str)>,
}

impl<'a> Reply<'a> {
    fn new(status: u16) -> Reply<'a> {
        Reply {
            status,
            ..Reply::default()
        }
    }

    fn json(status: u16, value: &Value) -> Reply<'a> {
        let mut reply = Reply::new(status);
        reply.json = value.to_string().into_bytes();
        reply.header("Content-Type", "application/json; charset=utf-8");
        reply
    }

    /// The Hub's error form: `X-Error-Code`, `X-Error-Message`, JSON body.
    fn error(status: u16, code: &str, message: String) -> Reply<'a> {
        let mut reply = Reply::json(status, &json!({ "error": message }));
        reply.header("X-Error-Code", code);
        reply.header("X-Error-Message", &message);
        reply
    }

    fn not_found() -> Reply<'a> {
        Reply::json(404, &json!({ "error": "Not Found" }))
    }

    fn header(&mut self, name: &'static str, value: &str) {
        self.headers.push((name, value.to_string()));
    }

    fn about(mut self, repo: &'a Repo, path: &'a str) -> Reply<'a> {
        self.about = Some((&repo.id, path));
        self
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The byte range `start..end` a `Range` header asks of `len` bytes: `None`
/// for the whole body (no header, or a form other than `bytes=a-b` and
/// `bytes=a-`, which RFC 9110 lets a server ignore), `Err` when unsatisfiable.
fn byte_range(range: Option<&str>, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = range?.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let start: usize = first.trim().parse().ok()?;
    let last = last.trim();
    let end = if last.is_empty() {
        len
    } else {
        let last: usize = last.parse().ok()?;
        if last < start {
            return None;
        }
        last.saturating_add(1).min(len)
    };
    if start >= len {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

/// A 200, 206 or 416 with `file`'s content, as `Range` asks.
fn content_reply<'a>(file: &'a RepoFile, range: Option<&str>) -> Reply<'a> {
    let len = file.content.len();
    let (mut reply, content_range) = match byte_range(range, len) {
        None => (Reply::new(200), None),
        Some(Ok((start, end))) => (Reply::new(206), Some((start, end))),
        Some(Err(())) => {
            let mut reply = Reply::new(416);
            reply.header("Content-Range", &format!("bytes */{len}"));
            reply.header("Accept-Ranges", "bytes");
            return reply;
        }
    };
    let (start, end) = content_range.unwrap_or((0, len));
    if content_range.is_some() {
        reply.header("Content-Range", &format!("bytes {start}-{}/{len}", end - 1));
    }
    reply.header("Accept-Ranges", "bytes");
    reply.header("Content-Type", "application/octet-stream");
    reply.content = Some((file, start, end));
    reply
}

impl Shared {
    fn repo(&self, id: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.id == id)
    }

    fn file_key(&self, repo: &str, path: &str) -> FileKey {
        let served = self.repo(repo).expect("a served repo");
        assert!(served.files.contains_key(path), "{repo} has no {path}");
        (repo.to_string(), path.to_string())
    }

    /// The repo `id` if it exists and the request may see it.
    fn open(&self, id: &str, authorization: Option<&str>) -> Result<&Repo, Reply<'_>> {
        let Some(repo) = self.repo(id) else {
            return Err(Reply::error(
                404,
                "RepoNotFound",
                "Repository not found".into(),
            ));
        };
        if let Some(token) = &repo.gated_token {
            if authorization != Some(format!("Bearer {token}").as_str()) {
                let message = format!(
                    "Access to model {id} is restricted. You must have access to it and be \
                     authenticated to access it. Please log in."
                );
                return Err(Reply::error(401, "GatedRepo", message));
            }
        }
        Ok(repo)
    }

    fn check_revision<'a>(repo: &Repo, revision: &str) -> Result<(), Reply<'a>> {
        if revision == repo.commit || repo.revisions.iter().any(|r| r == revision) {
            Ok(())
        } else {
            let message = format!("Invalid rev id: {revision}");
            Err(Reply::error(404, "RevisionNotFound", message))
        }
    }

    fn route<'a>(&'a self, request: &Request) -> Reply<'a> {
        if request.method != "GET" && request.method != "HEAD" {
            return Reply::not_found();
        }
        let (path, query) = match request.path.split_once('?') {
            Some((path, query)) => (path, query),
            None => (request.path.as_str(), ""),
        };
        let auth = request.authorization.as_deref();
        let range = request.range.as_deref();
        let outcome = if let Some(rest) = path.strip_prefix("/api/models/") {
            self.info(rest, query, auth)
        } else if let Some(rest) = path.strip_prefix("/cdn/") {
            self.cdn(rest, range)
        } else if let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") {
            self.resolve(&decode(repo), rest, auth, range)
        } else {
            Ok(Reply::not_found())
        };
        outcome.unwrap_or_else(|reply| reply)
    }

    /// `/api/models/{repo}[/revision/{rev}]`
    fn info<'a>(
        &'a self,
        rest: &str,
        query: &str,
        auth: Option<&str>,
    ) -> Result<Reply<'a>, Reply<'a>> {
        let (id, revision) = match rest.split_once("/revision/") {
            Some((id, revision)) => (decode(id), Some(decode(revision))),
            None => (decode(rest), None),
        };
        let repo = self.open(&id, auth)?;
        if let Some(revision) = &revision {
            Self::check_revision(repo, revision)?;
        }
        let blobs = query.split('&').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, v)| k == "blobs" && (v.eq_ignore_ascii_case("true") || v == "1"))
        });
        let mut siblings = Vec::new();
        for (path, file) in &repo.files {
            let (size, mut sibling) = (file.content.len(), json!({ "rfilename": path }));
            if blobs {
                sibling["blobId"] = json!(file.blob_id);
                sibling["size"] = json!(size);
            }
            if blobs && file.lfs {
                let pointer_size = lfs_pointer(&file.sha256, size).len();
                let lfs =
                    json!({ "sha256": file.sha256, "size": size, "pointerSize": pointer_size });
                sibling["lfs"] = lfs;
            }
            siblings.push(sibling);
        }
        let gated = repo
            .gated_token
            .as_ref()
            .map_or(json!(false), |_| json!("manual"));
        Ok(Reply::json(
            200,
            &json!({
                "_id": &repo.commit[..24], "id": repo.id, "modelId": repo.id,
                "sha": repo.commit, "private": false, "gated": gated, "siblings": siblings,
            }),
        ))
    }

    /// `/{repo}/resolve/{rev}/{path…}`
    fn resolve<'a>(
        &'a self,
        id: &str,
        rest: &str,
        auth: Option<&str>,
        range: Option<&str>,
    ) -> Result<Reply<'a>, Reply<'a>> {
        let repo = self.open(id, auth)?;
        let (revision, path) = rest.split_once('/').unwrap_or((rest, ""));
        Self::check_revision(repo, &decode(revision))?;
        let Some((path, file)) = repo.files.get_key_value(&decode(path)) else {
            let mut reply = Reply::error(404, "EntryNotFound", "Entry not found".into());
            reply.header("X-Repo-Commit", &repo.commit);
            return Err(reply);
        };
        let mut reply = if file.lfs {
            let mut reply = Reply::new(302);
            let location = format!("{}/cdn/{}/{}", self.endpoint, repo.id, file.sha256);
            reply.header("Location", &location);
            reply.header("X-Linked-Etag", &format!("\"{}\"", file.sha256));
            reply.header("X-Linked-Size", &file.content.len().to_string());
            reply.header("ETag", &format!("\"{}\"", file.sha256));
            reply
        } else {
            let mut reply = content_reply(file, range);
            reply.header("ETag", &format!("\"{}\"", file.blob_id));
            reply
        };
        reply.header("X-Repo-Commit", &repo.commit);
        Ok(reply.about(repo, path))
    }

    /// `/cdn/{repo}/{sha256}`: no authorization, like a presigned URL.
    fn cdn<'a>(&'a self, rest: &str, range: Option<&str>) -> Result<Reply<'a>, Reply<'a>> {
        let not_found = || Reply::error(404, "EntryNotFound", "Entry not found".into());
        let (id, sha256) = rest.rsplit_once('/').ok_or_else(not_found)?;
        let repo = self.repo(&decode(id)).ok_or_else(not_found)?;
        // Files with the same content share one CDN object: the first is named.
        let (path, file) = repo
            .files
            .iter()
            .find(|(_, f)| f.lfs && f.sha256 == sha256)
            .ok_or_else(not_found)?;
        let mut reply = content_reply(file, range);
        reply.header("ETag", &format!("\"{}\"", file.sha256));
        Ok(reply.about(repo, path))
    }

    /// Routes `request`, applies the faults, logs it and writes the reply.
    fn answer(&self, stream: &mut TcpStream, mut request: Request) {
        let reply = self.route(&request);
        let head_only = request.method == "HEAD";
        let mut body: Vec<u8> = reply.json.clone();
        let mut limit = usize::MAX;
        let mut state = lock(&self.state);
        if let Some((file, start, end)) = reply.content {
            body = file.content[start..end].to_vec();
            let (repo, path) = reply.about.expect("content has a file");
            let key = (repo.to_string(), path.to_string());
            let last = file.content.len().saturating_sub(1);
            if state.corrupt.contains(&key) && (start..end).contains(&last) {
                body[last - start] ^= 0xff;
            }
            if !head_only && body.len() > 1 {
                if let Some(cut) = state.cuts.remove(&key) {
                    limit = usize::try_from(cut).unwrap_or(usize::MAX);
                }
            }
        }
        let sent = if head_only { 0 } else { body.len().min(limit) };
        request.status = reply.status;
        request.file = reply.about.map(|(_, path)| path.to_string());
        request.body_bytes = sent as u64;
        let repo = reply.about.map(|(repo, _)| repo.to_string());
        // Logged before the write: a client that has its response finds it in the log.
        let index = state.log.len();
        state.log.push((repo, request));
        drop(state);
        let written = write_reply(stream, head_only, &reply, &body, limit);
        if written != sent {
            lock(&self.state).log[index].1.body_bytes = written as u64;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Unknown",
    }
}

/// Writes the head and at most `limit` bytes of `body` (none for HEAD);
/// returns how many body bytes went out.
fn write_reply(
    stream: &mut TcpStream,
    head_only: bool,
    reply: &Reply,
    body: &[u8],
    limit: usize,
) -> usize {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    if stream.write_all(head.as_bytes()).is_err() || head_only {
        return 0;
    }
    let body = &body[..body.len().min(limit)];
    let mut written = 0;
    for chunk in body.chunks(64 * 1024) {
        if stream.write_all(chunk).is_err() {
            break;
        }
        written += chunk.len();
    }
    let _ = stream.flush();
    written
}
