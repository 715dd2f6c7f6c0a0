//! florence-edge as systemd runs it: the real binary, started with a
//! `NOTIFY_SOCKET` this test listens on, stopped with SIGTERM, reloaded
//! with SIGHUP, wedged on purpose to see the watchdog go quiet.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::{
    ort_library, per_key, test_camera as camera, unreachable_broker, DaemonProcess as Daemon,
    TestConfig,
};

/// A configuration with the tiny model, no reachable broker (results are
/// spooled; the test reads them from stdout) and the given cameras.
fn config_text(dir: &Path, batch_timeout: &str, cameras: &str) -> String {
    TestConfig {
        node: "svc-test",
        model_extra: &format!("batch_timeout = \"{batch_timeout}\""),
        mqtt: unreachable_broker(dir),
        http: "enabled = false",
        cameras,
    }
    .toml()
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

/// The daemon as a systemd service with a 400 ms watchdog: the config
/// (one `test://` camera, "yard", `<OD>` every 300 ms) written in `dir`,
/// a notification socket listening, the daemon started with `env` added.
fn start_with_notify(
    dir: &Path,
    batch_timeout: &str,
    env: &[(&str, &str)],
) -> (NotifyListener, Daemon) {
    let config = dir.join("florence-edge.toml");
    std::fs::write(
        &config,
        config_text(
            dir,
            batch_timeout,
            &camera("yard", "ball", r#"{ task = "<OD>", every = "300ms" }"#),
        ),
    )
    .unwrap();
    let notify = NotifyListener::new();
    let socket = notify.path.display().to_string();
    let mut daemon_env = vec![
        ("NOTIFY_SOCKET", socket.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    daemon_env.extend_from_slice(env);
    let daemon = Daemon::start(&config, &daemon_env);
    (notify, daemon)
}

#[test]
fn notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (notify, mut daemon) = start_with_notify(dir.path(), "60s", &[]);

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
    let (notify, _daemon) = start_with_notify(
        dir.path(),
        "1s",
        &[("FLORENCE_EDGE_FAULT_WEDGE_INFERENCE", "1")],
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
    let rejected = daemon.wait_logged("Reload rejected.", Duration::from_secs(10));
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

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(60)).success());
    // "Stopped." is the last line: every line before it has been read.
    daemon.wait_logged("Stopped.", Duration::from_secs(10));

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

/// issue 13 item 8: logs redirected to a file or a pipe carry no ANSI
/// colour codes (they did: tracing-subscriber colours by default).
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_florence-edge"))
        .args([
            "--log-format",
            "text",
            "--log",
            "info",
            "infer",
            "--task",
            "<OD>",
        ])
        .arg("--model")
        .arg(daemon::model_dir())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/images/landscape_640x480.png"),
        )
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INFO"), "some log lines: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no escape codes: {stderr:?}");
}
