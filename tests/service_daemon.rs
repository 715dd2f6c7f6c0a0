//! florence-edge as systemd runs it: the real binary, started with a
//! `NOTIFY_SOCKET` this test listens on, stopped with SIGTERM, reloaded
//! with SIGHUP, wedged on purpose to see the watchdog go quiet.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2")
}

fn ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/onnxruntime/lib/libonnxruntime.so")
        })
}

/// A configuration with the tiny model, no reachable broker (results are
/// spooled; the test reads them from stdout) and the given cameras.
fn config_text(dir: &Path, batch_timeout: &str, cameras: &str) -> String {
    format!(
        r#"
[node]
id = "svc-test"

[model]
dir = "{model}"
backend = "cpu"
threads = 1
max_batch = 4
max_wait_ms = 20
batch_timeout = "{batch_timeout}"
decoding = {{ strategy = "greedy", max_new_tokens = 4 }}

[mqtt]
url = "mqtt://127.0.0.1:9"
spool = {{ dir = "{spool}", max_messages = 10000 }}

[http]
enabled = false

{cameras}
"#,
        model = model_dir().display(),
        spool = dir.join("spool").display(),
    )
}

fn camera(id: &str, pattern: &str, tasks: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nurl = \"test://?pattern={pattern}&width=96&height=64&fps=10\"\ntasks = [{tasks}]\n\n"
    )
}

struct Daemon {
    child: Child,
    /// Result payloads from stdout, in order.
    results: Arc<Mutex<Vec<serde_json::Value>>>,
    /// JSON log lines from stderr, in order.
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Daemon {
    fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_florence-edge"));
        cmd.args(["--log-format", "json", "--log", "info,ort=warn"])
            .args(["run", "--stdout", "--config"])
            .arg(config)
            .env("ORT_DYLIB_PATH", ort_library())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn florence-edge");
        let results = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let r = results.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    r.lock().unwrap().push(v);
                }
            }
        });
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => l.lock().unwrap().push(v),
                    Err(_) => eprintln!("daemon (not JSON): {line}"),
                }
            }
        });
        Daemon {
            child,
            results,
            logs,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "florence-edge did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines with this message, as (camera, line).
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect()
    }

    fn results(&self) -> Vec<serde_json::Value> {
        self.results.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on the results so far.
    fn wait_results(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !pred(&self.results()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; results per camera/task: {:?}\nlog:\n{}",
                per_key(&self.results()),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn per_key(results: &[serde_json::Value]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in results {
        m.entry((
            r["camera"].as_str().unwrap_or("?").to_string(),
            r["task"].as_str().unwrap_or("?").to_string(),
        ))
        .or_default()
        .push(r["sequence"].as_u64().unwrap_or(0));
    }
    m
}

/// The notification socket systemd would give the service.
struct NotifyListener {
    _dir: tempfile::TempDir,
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifyListener {
    fn new() -> NotifyListener {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifyListener {
            _dir: dir,
            sock,
            path,
        }
    }

    /// The next message within `within`, if any.
    fn next(&self, within: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one satisfies `pred` (returned last); panics after
    /// `within`.
    fn until(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching notification within {within:?}; got {seen:?}"
            );
            if let Some(m) = self.next(left) {
                let done = pred(&m);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
    }
}

#[test]
fn notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    std::fs::write(
        &config,
        config_text(
            dir.path(),
            "60s",
            &camera("yard", "ball", r#"{ task = "<OD>", every = "300ms" }"#),
        ),
    )
    .unwrap();
    let notify = NotifyListener::new();
    let socket = notify.path.display().to_string();
    let mut daemon = Daemon::start(
        &config,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );

    let before_ready = notify.until(Duration::from_secs(120), |m| m.starts_with("READY=1"));
    let ready = before_ready.last().unwrap();
    assert!(
        ready.contains("STATUS=") && ready.contains("cameras streaming"),
        "{ready}"
    );
    // Results flow, and while they do the watchdog is fed every ~200 ms.
    daemon.wait_results("a result", Duration::from_secs(60), |r| !r.is_empty());
    let mut pings = 0;
    let window = Instant::now();
    while pings < 5 {
        assert!(
            window.elapsed() < Duration::from_secs(20),
            "only {pings} WATCHDOG=1 in 20 s"
        );
        if notify.next(Duration::from_secs(1)).as_deref() == Some("WATCHDOG=1") {
            pings += 1;
        }
    }

    daemon.signal(libc::SIGTERM);
    let stopping = notify.until(Duration::from_secs(30), |m| m.starts_with("STOPPING=1"));
    assert!(stopping.last().unwrap().contains("STATUS=Stopping"));
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_wedged_inference_thread_starves_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    std::fs::write(
        &config,
        config_text(
            dir.path(),
            "1s",
            &camera("yard", "ball", r#"{ task = "<OD>", every = "300ms" }"#),
        ),
    )
    .unwrap();
    let notify = NotifyListener::new();
    let socket = notify.path.display().to_string();
    let _daemon = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", "400000"),
            ("FLORENCE_EDGE_FAULT_WEDGE_INFERENCE", "1"),
        ],
    );
    notify.until(Duration::from_secs(120), |m| m.starts_with("READY=1"));
    // The first batch wedges; a second after it the verdict turns.
    let wedged = notify.until(Duration::from_secs(60), |m| m.starts_with("STATUS=Wedged"));
    let line = wedged.last().unwrap();
    assert!(line.contains("model.batch_timeout = 1 s"), "{line}");
    // From then on: no WATCHDOG=1 (systemd would kill the service after
    // WatchdogSec); other messages (STATUS) may still come.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        if let Some(m) = notify.next(Duration::from_millis(200)) {
            assert!(!m.contains("WATCHDOG=1"), "watchdog fed while wedged: {m}");
        }
    }
}

#[test]
fn sighup_applies_camera_changes_and_rejects_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    let od = r#"{ task = "<OD>", every = "300ms" }"#;
    let first = [
        camera("keep", "ball", od),
        camera("retask", "snow", od),
        camera("restream", "smpte", od),
        camera("remove", "gradient", od),
    ]
    .concat();
    std::fs::write(&config, config_text(dir.path(), "60s", &first)).unwrap();
    let notify = NotifyListener::new();
    let socket = notify.path.display().to_string();
    let mut daemon = Daemon::start(&config, &[("NOTIFY_SOCKET", &socket)]);
    notify.until(Duration::from_secs(120), |m| m.starts_with("READY=1"));
    let all = |names: &[&str], at_least: usize| {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        move |r: &[serde_json::Value]| {
            names.iter().all(|n| {
                r.iter()
                    .filter(|v| v["camera"].as_str() == Some(n.as_str()))
                    .count()
                    >= at_least
            })
        }
    };
    daemon.wait_results(
        "results from the four cameras",
        Duration::from_secs(90),
        all(&["keep", "retask", "restream", "remove"], 2),
    );

    // 1. An invalid file: rejected, nothing restarts, results go on.
    std::fs::write(
        &config,
        config_text(
            dir.path(),
            "60s",
            &camera("keep", "ball", r#"{ task = "<NOPE>", every = "1s" }"#),
        ),
    )
    .unwrap();
    let before = daemon.results().len();
    daemon.signal(libc::SIGHUP);
    let msgs = notify.until(Duration::from_secs(30), |m| m.starts_with("READY=1"));
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{msgs:?}"
    );
    let ready = msgs.last().unwrap();
    assert!(ready.contains("Reload rejected"), "{ready}");
    let rejected = daemon.logged("Reload rejected.");
    assert!(
        rejected
            .iter()
            .any(|l| l["problem"].as_str().unwrap_or("").contains("<NOPE>")),
        "the problem is logged: {rejected:?}"
    );
    daemon.wait_results(
        "results after the rejected reload",
        Duration::from_secs(60),
        |r| {
            r[before..]
                .iter()
                .filter(|v| v["camera"] == "remove")
                .count()
                >= 2
        },
    );

    // 2. A valid change: "remove" goes, "added" comes, "restream" gets a
    // new URL, "retask" gets a second task at the same fastest period,
    // "keep" is untouched.
    let second = [
        camera("keep", "ball", od),
        camera(
            "retask",
            "snow",
            r#"{ task = "<OD>", every = "300ms" }, { task = "<CAPTION>", every = "600ms" }"#,
        ),
        camera("restream", "pinwheel", od),
        camera("added", "gradient", od),
    ]
    .concat();
    std::fs::write(&config, config_text(dir.path(), "60s", &second)).unwrap();
    let reload_at = daemon.results().len();
    daemon.signal(libc::SIGHUP);
    let msgs = notify.until(Duration::from_secs(60), |m| m.starts_with("READY=1"));
    let ready = msgs.last().unwrap();
    assert!(
        ready.contains("Reloaded: 1 added, 1 removed, 1 restarted, 1 rescheduled"),
        "{ready}"
    );
    daemon.wait_results(
        "results of the added camera and the new task",
        Duration::from_secs(90),
        |r| {
            let r = &r[reload_at..];
            r.iter().any(|v| v["camera"] == "added")
                && r.iter()
                    .any(|v| v["camera"] == "retask" && v["task"] == "<CAPTION>")
                && r.iter().filter(|v| v["camera"] == "restream").count() >= 2
                && r.iter().filter(|v| v["camera"] == "keep").count() >= 3
        },
    );
    // Give a removed camera's last batch time to drain, then none of its
    // results may appear.
    std::thread::sleep(Duration::from_secs(1));
    let settled = daemon.results().len();
    daemon.wait_results("more results", Duration::from_secs(60), |r| {
        r.len() >= settled + 6
    });
    assert!(
        daemon.results()[settled..]
            .iter()
            .all(|v| v["camera"] != "remove"),
        "the removed camera still produces results"
    );

    // Pipelines started: keep and retask once, restream twice, added once.
    let mut starts: BTreeMap<String, usize> = BTreeMap::new();
    for l in daemon.logged("Camera starting.") {
        *starts
            .entry(l["camera"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [
        ("added", 1),
        ("keep", 1),
        ("remove", 1),
        ("restream", 2),
        ("retask", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(starts, expected, "pipeline starts per camera");

    // Sequence numbers of every (camera, task) run 1, 2, 3… without a gap
    // or a restart, across both reloads.
    for ((cam, task), seqs) in per_key(&daemon.results()) {
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "{cam} {task}");
    }

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(60)).success());
}

#[test]
fn a_tensorrt_backend_without_tensorrt_fails_to_start_and_never_says_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    let text = config_text(
        dir.path(),
        "60s",
        &camera("yard", "ball", r#"{ task = "<OD>", every = "300ms" }"#),
    )
    .replace("backend = \"cpu\"", "backend = \"tensorrt\"");
    std::fs::write(&config, text).unwrap();
    let notify = NotifyListener::new();
    let socket = notify.path.display().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_florence-edge"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ORT_DYLIB_PATH", ort_library())
        .env("NOTIFY_SOCKET", &socket)
        .output()
        .expect("run florence-edge");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tensorrt") && stderr.contains("TensorRT execution provider"),
        "{stderr}"
    );
    while let Some(m) = notify.next(Duration::from_millis(200)) {
        assert!(
            !m.contains("READY=1"),
            "READY sent by a daemon that failed: {m}"
        );
    }
}
