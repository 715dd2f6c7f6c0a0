//! The daemon's HTTP endpoint with real parts: an RTSP camera on 127.0.0.1
//! that the test stops and restarts, a test-pattern camera, the tiny
//! Florence-2, `/metrics` parsed as Prometheus text.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/rtsp.rs"]
mod rtsp;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use daemon::{http_get, test_camera, unreachable_broker, wait_until, TestConfig};

use florence_edge::daemon::{Daemon, MqttSink};
use rtsp::{Encoding, RtspTestServer, StreamSpec};

fn scrape(addr: SocketAddr, token: Option<&str>) -> prometheus_parse::Scrape {
    let (code, body) = http_get(addr, "/metrics", token);
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as Prometheus text")
}

/// The value of a sample with these labels.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn camera_state(addr: SocketAddr, token: Option<&str>, camera: &str) -> String {
    let (code, body) = http_get(addr, "/api/cameras", token);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["cameras"]
        .as_array()
        .expect("cameras array")
        .iter()
        .find(|c| c["id"] == camera)
        .unwrap_or_else(|| panic!("camera {camera} in {v}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn metrics_health_and_cameras_follow_the_pipeline() {
    let server = RtspTestServer::start(StreamSpec::new(Encoding::H264));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let http = format!(
        "listen = \"127.0.0.1:0\"\nbearer_token_file = \"{}\"",
        token_file.display()
    );
    let door = format!(
        r#"[[cameras]]
id = "door"
url = "{rtsp}"
watchdog = "1s"
startup_timeout = "3s"
reconnect = {{ initial = "300ms", max = "1s" }}
tasks = [{{ task = "<OD>", every = "500ms" }}]

"#,
        rtsp = server.url(),
    );
    let yard = test_camera("yard", "ball", r#"{ task = "<CAPTION>", every = "500ms" }"#);
    let path = dir.path().join("florence-edge.toml");
    std::fs::write(
        &path,
        TestConfig {
            node: "http-test",
            model_extra: "",
            mqtt: unreachable_broker(dir.path()),
            http: &http,
            cameras: &(door + &yard),
        }
        .toml(),
    )
    .unwrap();
    let config = florence_edge::config::load(&path).expect("valid config");
    // The broker is unreachable: results are spooled, the metrics say so.
    let mqtt = MqttSink::start(&config.mqtt, &config.node.id).expect("publisher starts");
    let daemon = Daemon::start(config, Box::new(mqtt)).expect("daemon starts");
    let addr = daemon.http_addr().expect("HTTP enabled");
    let token = Some("s3cret-token");

    // Probes answer; /metrics needs the token.
    let (code, body) = http_get(addr, "/healthz", None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(addr, "/readyz", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(http_get(addr, "/metrics", None).0, 401);
    assert_eq!(http_get(addr, "/metrics", Some("wrong")).0, 401);

    // Counters move while frames flow.
    wait_until("both cameras streaming", Duration::from_secs(60), || {
        camera_state(addr, token, "door") == "streaming"
            && camera_state(addr, token, "yard") == "streaming"
    });
    let first = scrape(addr, token);
    assert_eq!(
        value(
            &first,
            "florence_edge_camera_state",
            &[("camera", "door"), ("state", "streaming")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &first,
            "florence_edge_info",
            &[("node", "http-test"), ("backend", "onnxruntime-cpu")]
        ),
        Some(1.0),
        "info labels"
    );
    let frames = |s: &prometheus_parse::Scrape, cam| {
        value(
            s,
            "florence_edge_camera_frames_in_total",
            &[("camera", cam)],
        )
        .unwrap_or(-1.0)
    };
    let results = |s: &prometheus_parse::Scrape, cam, task| {
        value(
            s,
            "florence_edge_task_results_total",
            &[("camera", cam), ("task", task)],
        )
        .unwrap_or(0.0)
    };
    wait_until(
        "frames and results counted",
        Duration::from_secs(60),
        || {
            let later = scrape(addr, token);
            frames(&later, "door") > frames(&first, "door")
                && frames(&later, "yard") > frames(&first, "yard")
                && results(&later, "door", "<OD>") >= 2.0
                && results(&later, "yard", "<CAPTION>") >= 2.0
        },
    );
    let s = scrape(addr, token);
    // The end-to-end latency histogram has one observation per result.
    let count = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "florence_edge_stage_latency_seconds_count"
                && x.labels.get("camera") == Some("door")
                && x.labels.get("stage") == Some("end_to_end")
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            _ => -1.0,
        });
    let produced = results(&s, "door", "<OD>");
    assert!(
        count.is_some_and(|c| c >= produced - 1.0 && c <= produced + 1.0),
        "end_to_end count {count:?} vs results {produced}"
    );
    // Every result is post-processed from its ids or, failing that, from
    // its text; the route counts are taken after each batch, so they may
    // trail the result counters by one batch.
    let parsed = value(
        &s,
        "florence_edge_results_parsed_total",
        &[("route", "ids")],
    )
    .unwrap_or(-1.0)
        + value(
            &s,
            "florence_edge_results_parsed_total",
            &[("route", "text")],
        )
        .unwrap_or(-1.0);
    let all_results = produced + results(&s, "yard", "<CAPTION>");
    assert!(
        parsed > 0.0 && parsed <= all_results && parsed >= all_results - 4.0,
        "results parsed {parsed} vs results {all_results}"
    );
    assert!(value(&s, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6));
    assert_eq!(value(&s, "florence_edge_mqtt_connected", &[]), Some(0.0));
    assert!(
        value(&s, "florence_edge_mqtt_results_spooled_total", &[]).is_some_and(|v| v >= 1.0),
        "results spooled while the broker is away"
    );

    // The camera goes dark: /api/cameras says so, the daemon stays healthy.
    server.stop();
    wait_until(
        "the RTSP camera reported down",
        Duration::from_secs(30),
        || camera_state(addr, token, "door") != "streaming",
    );
    assert_eq!(camera_state(addr, token, "yard"), "streaming");
    assert_eq!(http_get(addr, "/healthz", None).0, 200);
    let down = scrape(addr, token);
    assert_eq!(
        value(
            &down,
            "florence_edge_camera_state",
            &[("camera", "door"), ("state", "streaming")]
        ),
        Some(0.0)
    );

    // And comes back.
    server.restart();
    wait_until(
        "the RTSP camera streaming again",
        Duration::from_secs(60),
        || camera_state(addr, token, "door") == "streaming",
    );
    let back = scrape(addr, token);
    assert!(
        value(
            &back,
            "florence_edge_camera_reconnects_total",
            &[("camera", "door")]
        )
        .is_some_and(|v| v >= 1.0),
        "reconnect counted"
    );

    daemon.shutdown();
    daemon.wait().expect("clean stop");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the endpoint is closed after the daemon stopped"
    );
}
