//! `florence-edge model pull|list|verify` and `[model] id` against a
//! stand-in for the Hugging Face Hub on 127.0.0.1 (tests/common/hub.rs)
//! serving the tiny fixture model as `test-org/tiny-florence2`: the real
//! binary, the real hf-hub client, real HTTP.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/hub.rs"]
mod hub;

#[path = "common/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hub::{HubStandIn, RepoSpec};

const REPO: &str = "test-org/tiny-florence2";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2")
}

fn image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/landscape_640x480.png")
}

fn spec(id: &str) -> RepoSpec {
    RepoSpec {
        id: id.to_string(),
        dir: fixture(),
        revisions: vec!["main".into()],
        gated_token: None,
    }
}

/// The binary with a clean Hugging Face environment pointed at `endpoint`.
fn cli(endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_florence-edge"));
    for k in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HOME",
        "HF_HUB_CACHE",
        "STATE_DIRECTORY",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NOTIFY_SOCKET",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("HF_ENDPOINT", endpoint)
        .env("ORT_DYLIB_PATH", daemon::ort_library())
        .args(["--log", "info,ort=warn"]);
    cmd
}

fn pull(endpoint: &str, store: &Path, extra: &[&str]) -> Output {
    cli(endpoint)
        .args(["model", "pull", REPO, "--dir"])
        .arg(store)
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn pulled_dir(out: &Output) -> PathBuf {
    assert!(
        out.status.success(),
        "pull failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    PathBuf::from(text(&out.stdout).trim())
}

/// What the model generated (tokens, text, parsed result), without the
/// timings.
fn infer(model: &Path) -> serde_json::Value {
    let out = cli("http://127.0.0.1:9")
        .args([
            "infer",
            "--backend",
            "cpu",
            "--threads",
            "1",
            "--max-new-tokens",
            "12",
        ])
        .args(["--task", "<OD>", "--model"])
        .arg(model)
        .arg(image())
        .output()
        .unwrap();
    assert!(out.status.success(), "infer: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["token_ids"].as_array().is_some_and(|t| t.len() > 2),
        "{v}"
    );
    serde_json::json!([v["token_ids"], v["raw_text"], v["result"]])
}

/// The one `error: …` line a failed command ends with.
fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_string()
}

#[test]
fn a_pulled_model_gives_the_fixtures_tokens_and_verifies() {
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let store = tempfile::tempdir().unwrap();
    let dir = pulled_dir(&pull(&hub.endpoint(), store.path(), &[]));
    assert_eq!(
        dir,
        store
            .path()
            .join("models--test-org--tiny-florence2/snapshots")
            .join(hub.commit(REPO))
    );
    assert_eq!(infer(&dir), infer(&fixture()));

    let out = cli(&hub.endpoint())
        .args(["model", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "verify: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("loads as fp32/split"),
        "{}",
        text(&out.stdout)
    );

    let out = cli(&hub.endpoint())
        .args(["model", "list", "--json", "--dir"])
        .arg(store.path())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["repo"], REPO);
    assert_eq!(list[0]["revisions"], serde_json::json!(["main"]));
    assert_eq!(list[0]["verified"], serde_json::json!(["fp32/split"]));

    let out = cli(&hub.endpoint())
        .args(["model", "list", "--dir"])
        .arg(store.path())
        .output()
        .unwrap();
    let table = text(&out.stdout);
    let row = table.lines().find(|l| l.starts_with(REPO)).expect("a row");
    assert!(
        row.contains("main") && row.contains("fp32/split"),
        "{table}"
    );
    assert!(table.starts_with("REPO "), "{table}");

    // A directory nobody pulled (no record): every variant and layout on
    // disk is loaded.
    let out = cli(&hub.endpoint())
        .args(["model", "verify"])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("loads as fp32/split, fp32/merged, quantized/split"),
        "{}",
        text(&out.stdout)
    );

    // A byte changed on disk afterwards is found by verify, named.
    let graph = dir.join("onnx/decoder_model.onnx");
    let blob = std::fs::canonicalize(&graph).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = cli(&hub.endpoint())
        .args(["model", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("onnx/decoder_model.onnx: SHA-256"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn only_the_files_of_the_chosen_variant_are_fetched() {
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let store = tempfile::tempdir().unwrap();
    let dir = pulled_dir(&pull(
        &hub.endpoint(),
        store.path(),
        &["--variant", "quantized"],
    ));
    let fetched = [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "onnx/vision_encoder_quantized.onnx",
        // No quantized embed_tokens: the fp32 one, as the runtime takes it.
        "onnx/embed_tokens.onnx",
        "onnx/encoder_model_quantized.onnx",
        "onnx/decoder_model_quantized.onnx",
        "onnx/decoder_with_past_model_quantized.onnx",
    ];
    for f in fetched {
        assert_eq!(hub.downloads(REPO, f), 1, "{f}");
    }
    for f in [
        "special_tokens_map.json",
        "onnx/vision_encoder.onnx",
        "onnx/encoder_model.onnx",
        "onnx/decoder_model.onnx",
        "onnx/decoder_with_past_model.onnx",
        "onnx/decoder_model_merged.onnx",
    ] {
        assert_eq!(hub.bytes_served(REPO, f), 0, "{f} was not asked for");
    }
    assert!(!dir.join("onnx/vision_encoder.onnx").exists());

    // A second variant of the same commit fetches only its own graphs.
    pulled_dir(&pull(
        &hub.endpoint(),
        store.path(),
        &["--decoder", "merged"],
    ));
    assert_eq!(hub.downloads(REPO, "config.json"), 1);
    assert_eq!(hub.downloads(REPO, "onnx/embed_tokens.onnx"), 1);
    assert_eq!(hub.downloads(REPO, "onnx/decoder_model_merged.onnx"), 1);
    assert_eq!(hub.downloads(REPO, "onnx/vision_encoder.onnx"), 1);
    assert_eq!(hub.bytes_served(REPO, "onnx/decoder_model.onnx"), 0);

    // A variant the repository lacks: refused before any download, with
    // the variants it has.
    let before = hub.requests().len();
    let e = error_line(&pull(&hub.endpoint(), store.path(), &["--variant", "fp16"]));
    assert!(e.contains("onnx/vision_encoder_fp16.onnx"), "{e}");
    assert!(
        e.contains("variants in this repository: fp32, quantized"),
        "{e}"
    );
    let after: Vec<_> = hub.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(after.len(), 1, "only the file list: {after:?}");
}

#[test]
fn a_download_cut_halfway_resumes_where_it_stopped() {
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let file = "onnx/vision_encoder.onnx";
    let size = std::fs::metadata(fixture().join(file)).unwrap().len();

    // Within one pull: hf-hub resumes from what arrived.
    hub.cut_after(REPO, file, size / 2);
    let store = tempfile::tempdir().unwrap();
    let dir = pulled_dir(&pull(&hub.endpoint(), store.path(), &[]));
    assert_eq!(
        std::fs::read(dir.join(file)).unwrap(),
        std::fs::read(fixture().join(file)).unwrap()
    );
    let resumed = hub
        .requests()
        .iter()
        .filter(|r| r.file.as_deref() == Some(file) && r.body_bytes > 1)
        .filter_map(|r| r.range.clone())
        .any(|r| r.starts_with("bytes=") && !r.starts_with("bytes=0-"));
    assert!(resumed, "{:?}", hub.requests());
    assert!(hub.bytes_served(REPO, file) < size * 3 / 2);

    // Across pulls: the first gives up (no retries), says so, keeps what
    // arrived; the next one takes it from there.
    let hub = HubStandIn::start(vec![spec(REPO)]);
    hub.cut_after(REPO, file, size / 2);
    let store = tempfile::tempdir().unwrap();
    let e = error_line(&pull(&hub.endpoint(), store.path(), &["--retries", "0"]));
    assert!(e.contains(REPO) && e.contains("resume"), "{e}");
    let out = cli(&hub.endpoint())
        .args(["model", "list", "--json", "--dir"])
        .arg(store.path())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["verified"] == serde_json::json!([])),
        "{list}"
    );
    let dir = pulled_dir(&pull(&hub.endpoint(), store.path(), &["--retries", "0"]));
    assert_eq!(
        std::fs::read(dir.join(file)).unwrap(),
        std::fs::read(fixture().join(file)).unwrap()
    );
    assert!(
        hub.bytes_served(REPO, file) < size * 3 / 2,
        "{}",
        hub.bytes_served(REPO, file)
    );
}

#[test]
fn a_corrupted_byte_is_caught_and_the_file_is_not_kept() {
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let file = "onnx/encoder_model.onnx";
    hub.corrupt(REPO, file);
    let store = tempfile::tempdir().unwrap();
    let e = error_line(&pull(&hub.endpoint(), store.path(), &[]));
    assert!(
        e.contains(file) && e.contains("corrupted") && e.contains("SHA-256"),
        "{e}"
    );
    let snapshot = store
        .path()
        .join("models--test-org--tiny-florence2/snapshots")
        .join(hub.commit(REPO));
    assert!(std::fs::symlink_metadata(snapshot.join(file)).is_err());
    let sha = florence_edge::hub::store::sha256_file(&fixture().join(file)).unwrap();
    let blobs = store.path().join("models--test-org--tiny-florence2/blobs");
    assert!(!blobs.join(&sha).exists());
    assert!(!snapshot.join(".florence-edge.json").exists());
}

#[test]
fn gated_missing_and_unreachable_each_say_what_to_do() {
    let mut gated = spec("test-org/gated");
    gated.gated_token = Some("hf_secret".into());
    let hub = HubStandIn::start(vec![spec(REPO), gated]);
    let store = tempfile::tempdir().unwrap();
    let run = |repo: &str, extra: &[&str], token: Option<&str>| {
        let mut cmd = cli(&hub.endpoint());
        cmd.args(["model", "pull", repo, "--dir"])
            .arg(store.path())
            .args(extra);
        if let Some(t) = token {
            cmd.env("HF_TOKEN", t);
        }
        cmd.output().unwrap()
    };

    let e = error_line(&run("test-org/gated", &[], None));
    assert!(
        e.contains("test-org/gated is gated or private") && e.contains("HTTP 401"),
        "{e}"
    );
    assert!(
        e.contains("HF_TOKEN") && e.contains("no token was sent"),
        "{e}"
    );
    let e = error_line(&run("test-org/gated", &[], Some("hf_wrong")));
    assert!(e.contains("the token that was sent has no access"), "{e}");
    pulled_dir(&run("test-org/gated", &[], Some("hf_secret")));

    let e = error_line(&run("test-org/nope", &[], None));
    assert!(
        e.contains("test-org/nope was not found") && e.contains("HTTP 404"),
        "{e}"
    );
    let e = error_line(&run(REPO, &["--revision", "v9"], None));
    assert!(
        e.contains("has no revision \"v9\"") && e.contains(REPO),
        "{e}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = pull(&format!("http://127.0.0.1:{port}"), store.path(), &[]);
    let e = error_line(&out);
    assert!(
        e.contains("cannot reach the Hub") && e.contains(REPO),
        "{e}"
    );

    let e = error_line(&run("../etc", &[], None));
    assert!(e.contains("Hub model id"), "{e}");
}

#[test]
fn two_pulls_at_once_into_one_store_take_turns() {
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let store = tempfile::tempdir().unwrap();
    let spawn = || {
        cli(&hub.endpoint())
            .args(["model", "pull", REPO, "--dir"])
            .arg(store.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (da, db) = (pulled_dir(&a), pulled_dir(&b));
    assert_eq!(da, db);
    for f in [
        "config.json",
        "onnx/vision_encoder.onnx",
        "onnx/decoder_model.onnx",
    ] {
        assert_eq!(hub.downloads(REPO, f), 1, "{f} downloaded once");
    }
    assert_eq!(infer(&da), infer(&fixture()));
}

#[test]
fn a_configured_hub_model_is_refused_until_pulled_then_run() {
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let store = tempfile::tempdir().unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = cfg_dir.path().join("florence-edge.toml");
    let toml = |download: bool| {
        format!(
            "[node]\nid = \"n1\"\n\n[model]\nid = \"{REPO}\"\ncache_dir = \"{}\"\nprecision = \"quantized\"\ndownload = {download}\nbackend = \"cpu\"\n\n[mqtt]\n{}\n\n{}",
            store.path().display(),
            daemon::unreachable_broker(cfg_dir.path()),
            daemon::test_camera("cam1", "ball", "{ task = \"<CAPTION>\", every = \"1s\" }"),
        )
    };
    std::fs::write(&config, toml(false)).unwrap();
    let validate = |c: &Path| {
        cli(&hub.endpoint())
            .args(["validate", "--config"])
            .arg(c)
            .output()
            .unwrap()
    };
    let out = validate(&config);
    assert!(!out.status.success());
    // validate prints the problems on stdout, the summary on stderr.
    let stderr = text(&out.stdout) + &text(&out.stderr);
    assert!(stderr.contains("model.id"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "florence-edge model pull {REPO} --variant quantized --dir {}",
            store.path().display()
        )),
        "{stderr}"
    );
    pulled_dir(&pull(
        &hub.endpoint(),
        store.path(),
        &["--variant", "quantized"],
    ));
    let out = validate(&config);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[cfg(feature = "gstreamer")]
#[test]
fn download_true_pulls_a_missing_model_at_start_then_runs() {
    use std::time::Duration;
    let hub = HubStandIn::start(vec![spec(REPO)]);
    let store = tempfile::tempdir().unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = cfg_dir.path().join("florence-edge.toml");
    let toml = daemon::TestConfig {
        node: "n1",
        model_extra: "",
        mqtt: daemon::unreachable_broker(cfg_dir.path()),
        http: "enabled = false",
        cameras: &daemon::test_camera(
            "cam1",
            "ball",
            "{ task = \"<CAPTION>\", every = \"500ms\" }",
        ),
    }
    .toml()
    .replace(
        &format!("dir = \"{}\"", fixture().display()),
        &format!(
            "id = \"{REPO}\"\ncache_dir = \"{}\"\ndownload = true",
            store.path().display()
        ),
    );
    assert!(toml.contains("download = true"));
    std::fs::write(&config, toml).unwrap();
    let endpoint = hub.endpoint();
    // systemd's side of sd_notify: what `systemctl status` would show.
    let socket_path = cfg_dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Read as systemd does, while the daemon runs: a full socket queue
    // would block the sender.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut notes = Vec::new();
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    notes.push(String::from_utf8_lossy(&buf[..n]).to_string());
                }
            }
            notes
        })
    };
    let socket_env = socket_path.display().to_string();
    let mut d = daemon::DaemonProcess::start(
        &config,
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("NOTIFY_SOCKET", socket_env.as_str()),
        ],
    );
    d.wait_logged("Model pulled and verified.", Duration::from_secs(60));
    d.wait_results(
        "a result from the pulled model",
        Duration::from_secs(60),
        |r| !r.is_empty(),
    );
    assert!(!d.logged("Downloading.").is_empty());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let notes = reader.join().unwrap();
    let downloading: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains("STATUS=Downloading test-org/tiny-florence2: "))
        .collect();
    assert!(
        downloading
            .iter()
            .all(|n| n.starts_with("EXTEND_TIMEOUT_USEC=")),
        "{notes:?}"
    );
    assert!(
        downloading.iter().any(|n| n.contains(": 100% (")),
        "{notes:?}"
    );
    let ready = notes.iter().position(|n| n.starts_with("READY=1"));
    assert!(
        ready.is_some_and(|r| r > 0),
        "READY after the download: {notes:?}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(hub.downloads(REPO, "onnx/vision_encoder.onnx"), 1);
}

/// The `[model]` example of docs/MODELS.md and README's my.toml are files
/// `validate` takes (without the machine checks: nothing is pulled here).
#[test]
fn the_documented_hub_model_sections_are_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = std::fs::read_to_string(root.join("docs/MODELS.md")).unwrap();
    let start = models
        .find("```toml\n[model]\n")
        .expect("a [model] example")
        + 8;
    let block = &models[start..start + models[start..].find("```").unwrap()];
    assert!(block.contains("id = \"onnx-community/Florence-2-base-ft\""));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("cat > my.toml <<'EOF'\n")
        .expect("README's my.toml")
        + 22;
    let my = &readme[start..start + readme[start..].find("\nEOF").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    for (name, toml) in [
        (
            "models.toml",
            format!("{block}\n[[cameras]]\nid = \"c\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n"),
        ),
        ("my.toml", my.to_string()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        let out = cli("http://127.0.0.1:9")
            .args(["validate", "--no-files", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}
