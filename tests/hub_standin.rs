//! The Hub stand-in (tests/common/hub.rs) through the real hf-hub 0.4.3
//! client: the repo info, downloads of plain and LFS files into hf-hub's
//! cache, a cut download resumed from its `.part` file, a corrupted body, a
//! gated repo, unknown repos, revisions and files; and the raw HTTP forms
//! (Range, HEAD, 416) other clients use.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/hub.rs"]
mod hub;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use hub::{HubStandIn, RepoSpec};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256};

const ID: &str = "test-org/tiny-florence2";
const GATED: &str = "test-org/gated-florence2";
const TOKEN: &str = "hf_standin_test_token";
const GRAPH: &str = "onnx/vision_encoder.onnx";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2")
}

/// The fixture's files by repo path, read independently of the stand-in.
fn fixture() -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_str().unwrap());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{name}/"), out);
            } else {
                out.insert(name, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&fixture_dir(), "", &mut files);
    files
}

fn sha256(content: &[u8]) -> String {
    format!("{:x}", Sha256::digest(content))
}

fn git_blob(content: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()));
    hasher.update(content);
    format!("{:x}", hasher.finalize())
}

fn spec(id: &str, gated_token: Option<&str>) -> RepoSpec {
    RepoSpec {
        id: id.into(),
        dir: fixture_dir(),
        revisions: vec!["main".into(), "refs/pr/1".into()],
        gated_token: gated_token.map(str::to_string),
    }
}

fn start() -> HubStandIn {
    HubStandIn::start(vec![spec(ID, None)])
}

/// hf-hub against the stand-in; no token unless the test sets one (the
/// builder would otherwise pick up ~/.cache/huggingface/token).
fn api(hub: &HubStandIn, cache: &Path) -> ApiBuilder {
    ApiBuilder::new()
        .with_progress(false)
        .with_endpoint(hub.endpoint())
        .with_cache_dir(cache.to_path_buf())
        .with_token(None)
}

/// The HTTP status and X-Error-Code of a failed hf-hub call.
fn http_error(err: ApiError) -> (u16, Option<String>) {
    match err {
        ApiError::RequestError(e) => {
            let response = (*e).into_response().expect("an HTTP status error");
            let code = response.header("X-Error-Code").map(str::to_string);
            (response.status(), code)
        }
        other => panic!("not an HTTP status error: {other}"),
    }
}

fn repo_cache(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

#[test]
fn info_lists_the_files_and_the_commit() {
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let api = api(&hub, cache.path()).build().unwrap();
    let commit = hub.commit(ID);
    assert_eq!(commit.len(), 40);
    assert!(commit.chars().all(|c| c.is_ascii_hexdigit()));

    let info = api.model(ID.into()).info().unwrap();
    let mut names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    names.sort();
    let expected: Vec<String> = fixture().into_keys().collect();
    assert_eq!(names, expected);
    assert!(names.contains(&"special_tokens_map.json".to_string()));
    assert_eq!(info.sha, commit);

    // Without ?blobs=true the siblings name their file and nothing else.
    let raw: Value = api
        .model(ID.into())
        .info_request()
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(raw["id"], ID);
    assert_eq!(raw["gated"], false);
    for sibling in raw["siblings"].as_array().unwrap() {
        assert_eq!(sibling.as_object().unwrap().len(), 1, "{sibling}");
    }

    // A revision with a '/' (sent as %2F) and the commit itself resolve.
    for revision in ["refs/pr/1", commit.as_str()] {
        let repo = Repo::with_revision(ID.into(), RepoType::Model, revision.into());
        assert_eq!(api.repo(repo).info().unwrap().sha, commit);
    }
    let paths: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&format!("/api/models/{ID}/revision/refs%2Fpr%2F1")));
}

#[test]
fn info_with_blobs_gives_sizes_blob_ids_and_lfs() {
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let api = api(&hub, cache.path()).build().unwrap();
    let response = api
        .model(ID.into())
        .info_request()
        .query("blobs", "true")
        .call();
    let info: Value = response.unwrap().into_json().unwrap();
    let files = fixture();
    let siblings = info["siblings"].as_array().unwrap();
    assert_eq!(siblings.len(), files.len());
    for sibling in siblings {
        let name = sibling["rfilename"].as_str().unwrap();
        let content = &files[name];
        assert_eq!(sibling["size"], content.len(), "{name}");
        if name.ends_with(".onnx") {
            let lfs = &sibling["lfs"];
            assert_eq!(lfs["sha256"], sha256(content), "{name}");
            assert_eq!(lfs["size"], content.len(), "{name}");
            // The blob of an LFS file is its pointer, as on the Hub.
            let pointer = format!(
                "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
                sha256(content),
                content.len()
            );
            assert_eq!(lfs["pointerSize"], pointer.len(), "{name}");
            assert_eq!(sibling["blobId"], git_blob(pointer.as_bytes()), "{name}");
        } else {
            assert!(sibling.get("lfs").is_none(), "{name}");
            assert_eq!(sibling["blobId"], git_blob(content), "{name}");
        }
    }
}

#[test]
fn downloads_are_byte_identical_and_named_by_their_etag() {
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let api = api(&hub, cache.path()).build().unwrap();
    let files = fixture();
    let snapshot = repo_cache(cache.path(), ID)
        .join("snapshots")
        .join(hub.commit(ID));

    for (name, blob) in [
        ("config.json", git_blob(&files["config.json"])),
        (GRAPH, sha256(&files[GRAPH])),
    ] {
        let path = api.model(ID.into()).download(name).unwrap();
        assert_eq!(path, snapshot.join(name));
        assert_eq!(std::fs::read(&path).unwrap(), files[name], "{name}");
        let target = std::fs::read_link(&path).unwrap();
        assert!(target.is_relative(), "{}", target.display());
        assert_eq!(target.file_name().unwrap().to_str().unwrap(), blob);
        let real = std::fs::canonicalize(&path).unwrap();
        assert_eq!(real.parent().unwrap().file_name().unwrap(), "blobs");
    }
    let main = repo_cache(cache.path(), ID).join("refs/main");
    assert_eq!(std::fs::read_to_string(main).unwrap(), hub.commit(ID));

    // What hf-hub asked for the LFS file: a probe of the first byte through
    // the redirect (not followed by its no-redirect client, then fetched
    // from the Location), then the body from byte 0, redirect followed.
    let seen: Vec<(String, Option<String>, u16)> = hub
        .requests()
        .into_iter()
        .filter(|r| r.file.as_deref() == Some(GRAPH))
        .map(|r| (r.path, r.range, r.status))
        .collect();
    let resolve = format!("/{ID}/resolve/main/{GRAPH}");
    let cdn = format!("/cdn/{ID}/{}", sha256(&files[GRAPH]));
    let first = Some("bytes=0-0".to_string());
    let all = Some("bytes=0-".to_string());
    let expected = vec![
        (resolve.clone(), first.clone(), 302),
        (cdn.clone(), first, 206),
        (resolve, all.clone(), 302),
        (cdn, all, 206),
    ];
    assert_eq!(seen, expected);
    assert_eq!(hub.downloads(ID, GRAPH), 1);
    assert_eq!(hub.bytes_served(ID, GRAPH), files[GRAPH].len() as u64 + 1);
    assert_eq!(hub.downloads(ID, "config.json"), 1);
}

#[test]
fn a_cut_download_resumes_from_its_part_file() {
    const CUT: u64 = 300_000;
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let content = &fixture()[GRAPH];
    let part = repo_cache(cache.path(), ID).join(format!("blobs/{}.part", sha256(content)));

    hub.cut_after(ID, GRAPH, CUT);
    let api = api(&hub, cache.path()).with_retries(0).build().unwrap();
    match api.model(ID.into()).download(GRAPH).unwrap_err() {
        ApiError::IoError(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("expected the body cut short, got {other}"),
    }
    assert_eq!(std::fs::metadata(&part).unwrap().len(), CUT);

    let api = self::api(&hub, cache.path())
        .with_retries(0)
        .build()
        .unwrap();
    let path = api.model(ID.into()).download(GRAPH).unwrap();
    assert_eq!(&std::fs::read(path).unwrap(), content);
    assert!(!part.exists());

    let bodies: Vec<Option<String>> = hub
        .requests()
        .into_iter()
        .filter(|r| r.file.as_deref() == Some(GRAPH) && r.body_bytes > 1)
        .map(|r| r.range)
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let resumed_at: u64 = bodies[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .expect("the second body request resumes with bytes=K-");
    assert!(resumed_at > 0);
    assert_eq!(resumed_at, CUT);
    assert_eq!(hub.downloads(ID, GRAPH), 2);
    let served = hub.bytes_served(ID, GRAPH);
    assert!(
        served < content.len() as u64 * 3 / 2,
        "{served} bytes for {}",
        content.len()
    );
}

#[test]
fn a_complete_part_file_makes_hf_hub_ask_past_the_end() {
    // hf-hub resumes from the `.part` file's length even when nothing is
    // left to fetch: `bytes=N-`, which the Hub (and the stand-in) answer 416.
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let content = &fixture()[GRAPH];
    let blobs = repo_cache(cache.path(), ID).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.part", sha256(content))), content).unwrap();
    let api = api(&hub, cache.path()).build().unwrap();
    let (status, _) = http_error(api.model(ID.into()).download(GRAPH).unwrap_err());
    assert_eq!(status, 416);
    let last = hub.requests().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={}-", content.len())));
    assert!(last.path.starts_with("/cdn/"), "{}", last.path);
}

#[test]
fn hf_hub_retrying_a_resume_appends_the_whole_file() {
    // hf-hub 0.4.3 retries from the file's stream position, which is 0 in
    // an append-mode `.part` nothing was written to yet: a resume whose
    // first attempt fails before its first byte starts over at `bytes=0-`
    // and appends the whole file after the part already there, and the
    // result is kept without a size check. The product must verify.
    const CUT: u64 = 1000;
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let content = &fixture()[GRAPH];
    hub.cut_after(ID, GRAPH, CUT);
    let api = api(&hub, cache.path()).build().unwrap();
    api.model(ID.into()).download(GRAPH).unwrap_err();

    hub.cut_after(ID, GRAPH, 0);
    let api = self::api(&hub, cache.path())
        .with_retries(1)
        .build()
        .unwrap();
    let path = api.model(ID.into()).download(GRAPH).unwrap();
    let got = std::fs::read(path).unwrap();
    assert_eq!(got.len(), CUT as usize + content.len());
    assert_eq!(&got[CUT as usize..], content);
    let ranges: Vec<Option<String>> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/") && r.range.as_deref() != Some("bytes=0-0"))
        .map(|r| r.range)
        .collect();
    let expected = ["bytes=0-", "bytes=1000-", "bytes=0-"].map(|r| Some(r.to_string()));
    assert_eq!(ranges, expected);
}

#[test]
fn a_corrupted_body_is_taken_as_is() {
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let api = api(&hub, cache.path()).build().unwrap();
    let files = fixture();
    for name in ["config.json", GRAPH] {
        hub.corrupt(ID, name);
        let path = api.model(ID.into()).download(name).unwrap();
        let got = std::fs::read(&path).unwrap();
        let want = &files[name];
        assert_eq!(got.len(), want.len(), "{name}");
        let differing: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        assert_eq!(differing, vec![want.len() - 1], "{name}");
    }
    // hf-hub does not check the content against the sha256 it named it by.
    let graph = api.model(ID.into()).download(GRAPH).unwrap();
    let target = std::fs::read_link(&graph).unwrap();
    assert_eq!(
        target.file_name().unwrap().to_str().unwrap(),
        sha256(&files[GRAPH])
    );
}

#[test]
fn a_gated_repo_needs_its_token() {
    let hub = HubStandIn::start(vec![spec(ID, None), spec(GATED, Some(TOKEN))]);
    let cache = tempfile::tempdir().unwrap();
    let files = fixture();
    let gated = Some("GatedRepo".to_string());

    for token in [None, Some("hf_wrong_token".to_string())] {
        let api = api(&hub, cache.path()).with_token(token).build().unwrap();
        let repo = api.model(GATED.into());
        assert_eq!(http_error(repo.info().unwrap_err()), (401, gated.clone()));
        for name in ["config.json", GRAPH] {
            let err = repo.download(name).unwrap_err();
            assert_eq!(http_error(err), (401, gated.clone()), "{name}");
        }
        // The other repo is open to all.
        api.model(ID.into()).info().unwrap();
    }

    let api = api(&hub, cache.path())
        .with_token(Some(TOKEN.into()))
        .build()
        .unwrap();
    let repo = api.model(GATED.into());
    let raw: Value = repo.info_request().call().unwrap().into_json().unwrap();
    assert_eq!(raw["gated"], "manual");
    for name in ["config.json", GRAPH] {
        let path = repo.download(name).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), files[name], "{name}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let resolves: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(&format!("/{GATED}/resolve/")) && r.status != 401)
        .collect();
    assert!(!resolves.is_empty());
    assert!(resolves
        .iter()
        .all(|r| r.authorization.as_deref() == Some(bearer.as_str())));
}

#[test]
fn unknown_repos_revisions_and_files_are_404() {
    let hub = start();
    let cache = tempfile::tempdir().unwrap();
    let api = api(&hub, cache.path()).build().unwrap();
    let not_found = |code: &str| (404, Some(code.to_string()));

    let nope = api.model("test-org/no-such-model".into());
    assert_eq!(
        http_error(nope.info().unwrap_err()),
        not_found("RepoNotFound")
    );
    let err = nope.download("config.json").unwrap_err();
    assert_eq!(http_error(err), not_found("RepoNotFound"));

    let branch = Repo::with_revision(ID.into(), RepoType::Model, "no-such-branch".into());
    let branch = api.repo(branch);
    assert_eq!(
        http_error(branch.info().unwrap_err()),
        not_found("RevisionNotFound")
    );
    let err = branch.download("config.json").unwrap_err();
    assert_eq!(http_error(err), not_found("RevisionNotFound"));

    let err = api
        .model(ID.into())
        .download("no-such-file.json")
        .unwrap_err();
    assert_eq!(http_error(err), not_found("EntryNotFound"));

    // The commit resolves as a revision for downloads too.
    let pinned = Repo::with_revision(ID.into(), RepoType::Model, hub.commit(ID));
    let path = api.repo(pinned).download("config.json").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), fixture()["config.json"]);
}

/// One raw HTTP/1.1 exchange: status, headers (names lowercased), body.
fn raw(
    hub: &HubStandIn,
    method: &str,
    path: &str,
    range: Option<&str>,
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let addr = hub.endpoint().trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: hub\r\n{range}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&response[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_string())
        })
        .collect();
    (status, headers, response[split + 4..].to_vec())
}

#[test]
fn raw_ranges_head_and_other_paths() {
    let hub = start();
    let files = fixture();
    let config = &files["config.json"];
    let n = config.len();
    let url = format!("/{ID}/resolve/main/config.json");

    let (status, headers, body) = raw(&hub, "HEAD", &url, None);
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], n.to_string());
    assert_eq!(headers["etag"], format!("\"{}\"", git_blob(config)));
    assert_eq!(headers["x-repo-commit"], hub.commit(ID));
    assert!(body.is_empty());

    let (status, headers, body) = raw(&hub, "GET", &url, Some("bytes=10-19"));
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], format!("bytes 10-19/{n}"));
    assert_eq!(body, &config[10..20]);

    let (status, headers, body) = raw(&hub, "GET", &url, None);
    assert_eq!((status, &body), (200, config));
    assert!(!headers.contains_key("content-range"));

    let (status, headers, _) = raw(&hub, "GET", &url, Some(&format!("bytes={n}-")));
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{n}"));

    let graph = &files[GRAPH];
    let (status, headers, _) = raw(&hub, "HEAD", &format!("/{ID}/resolve/main/{GRAPH}"), None);
    assert_eq!(status, 302);
    let location = headers["location"].clone();
    assert_eq!(
        location,
        format!("{}/cdn/{ID}/{}", hub.endpoint(), sha256(graph))
    );
    assert_eq!(headers["x-linked-etag"], format!("\"{}\"", sha256(graph)));
    assert_eq!(headers["x-linked-size"], graph.len().to_string());
    let cdn = location.trim_start_matches(&hub.endpoint()).to_string();
    let (status, headers, body) = raw(&hub, "GET", &cdn, Some("bytes=5-"));
    assert_eq!(status, 206);
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(body, &graph[5..]);

    for (method, path) in [
        ("GET", "/no/such/path"),
        ("POST", url.as_str()),
        ("GET", "/cdn/x"),
    ] {
        assert_eq!(raw(&hub, method, path, None).0, 404, "{method} {path}");
    }
    assert_eq!(hub.bytes_served(ID, "config.json"), (10 + n) as u64);
}

#[test]
fn drop_closes_open_connections() {
    let hub = start();
    let addr = hub.endpoint().trim_start_matches("http://").to_string();
    // A client that sent half a request head and waits.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /api/models/").unwrap();
    drop(hub);
    let mut rest = Vec::new();
    match idle.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}
