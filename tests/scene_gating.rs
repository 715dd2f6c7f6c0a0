//! Scene-change gating end to end: the real binary, four GStreamer test
//! cameras — a moving ball, colour bars with their noise patch masked, the
//! same bars unmasked, the ball under a privacy mask — and the same
//! `when = "changed"` task on all. The moving picture is analysed at
//! the task's rate; the still one once, then only at its heartbeat; what
//! gating saved shows in /metrics.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;

use std::net::SocketAddr;
use std::time::Duration;

use daemon::{http_get, per_key, test_camera, unreachable_broker, DaemonProcess, TestConfig};

fn metric(addr: SocketAddr, name: &str, camera: &str) -> Option<f64> {
    let (code, body) = http_get(addr, "/metrics", None);
    assert_eq!(code, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("camera") == Some(camera))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn a_gated_task_runs_while_the_picture_moves_and_rests_while_it_is_still() {
    let dir = tempfile::tempdir().unwrap();
    let gated = r#"{ task = "<CAPTION>", every = "200ms", when = "changed", max_interval = "1h" }"#;
    // videotestsrc's SMPTE bars are still but for a patch of noise at the
    // bottom right: a motion mask over it leaves a still picture.
    let still = test_camera("still", "smpte", gated).replace(
        "tasks = [",
        "motion = { masks = [[[0.72, 0.72], [1.0, 0.72], [1.0, 1.0], [0.72, 1.0]]] }\ntasks = [",
    );
    // The same bars without the mask: the noise is a change.
    let noisy = test_camera("noisy", "smpte", gated);
    // The moving ball under a privacy mask over the whole picture: the
    // frames are black before the detector (or the model) sees them.
    let private = test_camera("private", "ball", gated).replace(
        "tasks = [",
        "privacy_masks = [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]\ntasks = [",
    );
    let cameras = test_camera("moving", "ball", gated) + &still + &noisy + &private;
    let config = dir.path().join("florence-edge.toml");
    std::fs::write(
        &config,
        TestConfig {
            node: "gating",
            model_extra: "",
            mqtt: unreachable_broker(dir.path()),
            http: "listen = \"127.0.0.1:0\"",
            cameras: &cameras,
        }
        .toml(),
    )
    .unwrap();
    let d = DaemonProcess::start(&config, &[]);
    let line = d.wait_logged("HTTP endpoint listening.", Duration::from_secs(120));
    let addr: SocketAddr = line[0]["addr"].as_str().unwrap().parse().unwrap();
    let count = |results: &[serde_json::Value], camera: &str| {
        results.iter().filter(|r| r["camera"] == camera).count()
    };
    d.wait_results(
        "8 results of the moving camera",
        Duration::from_secs(120),
        |r| count(r, "moving") >= 8,
    );
    let results = d.results();
    // The still picture: its first frame, then nothing (the heartbeat is an
    // hour away) while the moving one was analysed eight times.
    assert_eq!(count(&results, "still"), 1, "{:?}", per_key(&results));
    assert!(count(&results, "noisy") >= 4, "{:?}", per_key(&results));
    assert_eq!(count(&results, "private"), 1, "{:?}", per_key(&results));
    // Counted, not silent: the ticks the still camera's task waited
    // through (published at least every 10 s with the camera statuses).
    daemon::wait_until(
        "the unchanged count on /metrics",
        Duration::from_secs(30),
        || metric(addr, "florence_edge_task_unchanged_total", "still").is_some_and(|n| n >= 5.0),
    );
    let moving = metric(addr, "florence_edge_task_unchanged_total", "moving").unwrap_or(0.0);
    let still = metric(addr, "florence_edge_task_unchanged_total", "still").unwrap();
    assert!(still > moving, "still {still} vs moving {moving}");
}
