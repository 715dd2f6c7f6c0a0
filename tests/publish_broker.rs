//! The publisher against a real mosquitto on 127.0.0.1: topics, retain flags,
//! schema validity of what arrives, `offline` on shutdown and as last will.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::time::Duration;

use florence_edge::publish::payload::{camera_status_schema, result_schema};
use florence_edge::publish::{CameraState, CameraStatusPayload, Publisher, STATUS_SCHEMA_VERSION};
use mosquitto::{BrokerOptions, Mosquitto, Subscriber, SubscriberOptions};

const WAIT: Duration = Duration::from_secs(10);

fn status(camera: &str, state: CameraState, last_error: Option<&str>) -> CameraStatusPayload {
    CameraStatusPayload {
        schema_version: STATUS_SCHEMA_VERSION,
        node: "edge-01".into(),
        run_id: mosquitto::TEST_RUN_ID.into(),
        camera: camera.into(),
        state: state.into(),
        fps_in: 25.0,
        fps_out: 2.0,
        frames_in: 500,
        frames_dropped: 450,
        reconnects: 2,
        last_error: last_error.map(str::to_owned),
        updated_unix_ms: 1_764_000_000_000,
    }
}

#[test]
fn every_payload_kind_arrives_on_its_topic_with_its_retain_flag_and_validates() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let live = Subscriber::start(broker.port(), "fe-test/#", SubscriberOptions::default());
    let spool = tempfile::tempdir().expect("spool dir");
    let publisher = Publisher::start(
        &mosquitto::test_settings(&broker.url(), spool.path()),
        "edge-01",
    )
    .expect("start");
    // Snapshots are never spooled, so wait for the connection before sending one.
    live.wait_for(WAIT, "online", |m| m.iter().any(|r| r.text() == "online"));

    publisher
        .publish_camera_status(
            "front-door",
            &status(
                "front-door",
                CameraState::Reconnecting,
                Some("rtsp://admin:s3cret@192.0.2.10/stream1: timeout"),
            ),
        )
        .expect("status");
    let mut caption = mosquitto::od_result("edge-01", "front-door", 1, 0);
    caption.task = "<CAPTION>".into();
    caption.result = serde_json::json!({"<CAPTION>": "A car in front of a door."});
    let mut ocr = mosquitto::od_result("edge-01", "front-door", 1, 0);
    ocr.task = "<OCR_WITH_REGION>".into();
    ocr.result = serde_json::json!({"<OCR_WITH_REGION>": {"quad_boxes": [[1.5, 1.5, 9.5, 1.5, 9.5, 9.5, 1.5, 9.5]], "quad_boxes_normalized": [[0.001, 0.002, 0.007, 0.002, 0.007, 0.013, 0.001, 0.013]], "labels": ["STOP"], "dropped_groups": 0, "dropped_location_tokens": 0}});
    for payload in [
        mosquitto::od_result("edge-01", "front-door", 1, 3),
        caption,
        ocr,
    ] {
        publisher.try_publish_result(payload).expect("queued");
    }
    assert!(publisher
        .try_publish_snapshot("front-door", "<OD>", vec![0xFF, 0xD8, 0xFF, 0xD9])
        .expect("snapshot"));
    assert!(!publisher
        .try_publish_snapshot("front-door", "<OD>", vec![0xFF, 0xD8])
        .expect("rate-limited"));

    let topics = [
        "fe-test/edge-01/status",
        "fe-test/front-door/status",
        "fe-test/front-door/od",
        "fe-test/front-door/caption",
        "fe-test/front-door/ocr_with_region",
        "fe-test/front-door/od/snapshot",
    ];
    let got = live.wait_for(WAIT, "one message per topic", |m| {
        topics.iter().all(|t| m.iter().any(|r| r.topic == *t))
    });
    let on = |topic: &str| got.iter().find(|r| r.topic == topic).expect(topic).clone();
    assert_eq!(on("fe-test/edge-01/status").text(), "online");
    assert_eq!(
        on("fe-test/front-door/od/snapshot").payload,
        vec![0xFF, 0xD8, 0xFF, 0xD9]
    );

    let result_schema = jsonschema::validator_for(&result_schema()).expect("schema");
    for topic in &topics[2..5] {
        let json = on(topic).json();
        assert!(result_schema.is_valid(&json), "{topic}: {json}");
        assert_eq!(json["camera"], "front-door");
    }
    assert_eq!(
        on("fe-test/front-door/od").json()["result"]["<OD>"]["labels"],
        serde_json::json!(["person", "car", "dog"])
    );
    let status_json = on("fe-test/front-door/status").json();
    let status_schema = jsonschema::validator_for(&camera_status_schema()).expect("schema");
    assert!(status_schema.is_valid(&status_json), "{status_json}");
    assert_eq!(status_json["state"], "reconnecting");
    let last_error = status_json["last_error"].as_str().expect("last_error");
    // The password goes, the user name stays (settings::redact_text).
    assert!(!last_error.contains("s3cret"), "{last_error}");
    assert_eq!(last_error, "rtsp://admin:***@192.0.2.10/stream1: timeout");

    // A newer status replaces the retained one.
    publisher
        .publish_camera_status(
            "front-door",
            &status("front-door", CameraState::Streaming, None),
        )
        .expect("status");
    live.wait_for(WAIT, "the streaming status", |m| {
        m.iter()
            .any(|r| r.topic == "fe-test/front-door/status" && r.json()["state"] == "streaming")
    });

    // A late subscriber gets exactly the retained topics: node and camera status.
    let late = Subscriber::start(broker.port(), "fe-test/#", SubscriberOptions::default());
    std::thread::sleep(Duration::from_millis(300));
    let mut retained: Vec<(String, bool)> = late
        .messages()
        .into_iter()
        .map(|r| (r.topic, r.retain))
        .collect();
    retained.sort();
    assert_eq!(
        retained,
        [
            ("fe-test/edge-01/status".to_owned(), true),
            ("fe-test/front-door/status".to_owned(), true)
        ]
    );
    assert_eq!(
        late.messages()
            .iter()
            .find(|r| r.topic == "fe-test/front-door/status")
            .expect("status")
            .json()["state"],
        "streaming"
    );

    let stats = publisher.stats().snapshot();
    assert_eq!(stats.results_published, 3);
    assert_eq!(stats.snapshots_published, 1);
    assert_eq!(stats.snapshots_skipped, 1);
    assert!(stats.statuses_published >= 2);
    assert_eq!(
        (
            stats.connects,
            stats.connection_failures,
            stats.queue_full_drops
        ),
        (1, 0, 0)
    );

    let report = publisher.shutdown(Duration::from_secs(5));
    assert!(
        report.offline_published && report.left_in_spool == 0 && !report.timed_out,
        "{report:?}"
    );
    let after = Subscriber::start(
        broker.port(),
        "fe-test/edge-01/status",
        SubscriberOptions::default(),
    );
    let got = after.wait_for(WAIT, "retained offline", |m| !m.is_empty());
    assert_eq!((got[0].text().as_str(), got[0].retain), ("offline", true));
}

#[test]
fn invalid_camera_ids_and_tasks_are_refused_at_the_caller() {
    let spool = tempfile::tempdir().expect("spool dir");
    // No broker needed: the topic check happens before anything is queued.
    let settings = mosquitto::test_settings(
        &format!("mqtt://127.0.0.1:{}", mosquitto::free_port()),
        spool.path(),
    );
    let publisher = Publisher::start(&settings, "edge-01").expect("start");
    let mut bad_camera = mosquitto::od_result("edge-01", "a/+", 0, 1);
    let err = publisher
        .try_publish_result(bad_camera.clone())
        .expect_err("wildcard camera");
    assert!(err.to_string().contains("camera id"), "{err}");
    bad_camera.camera = "ok".into();
    bad_camera.task = "od".into();
    let err = publisher
        .try_publish_result(bad_camera)
        .expect_err("not a task token");
    assert!(err.to_string().contains("task \"od\""), "{err}");
    let report = publisher.shutdown(Duration::from_secs(1));
    assert_eq!(report.left_in_spool, 0);
}

#[test]
fn invalid_settings_are_all_reported_before_anything_starts() {
    let settings = florence_edge::publish::MqttSettings {
        url: "tcp://broker".into(),
        keep_alive: Duration::from_millis(100),
        qos: 5,
        spool: florence_edge::publish::settings::SpoolSettings {
            dir: std::path::PathBuf::new(),
            max_messages: 0,
        },
        ..Default::default()
    };
    let err = Publisher::start(&settings, "edge-01")
        .err()
        .expect("invalid");
    let text = err.to_string();
    for key in [
        "mqtt.url",
        "mqtt.keep_alive",
        "mqtt.qos",
        "mqtt.spool.dir",
        "mqtt.spool.max_messages",
    ] {
        assert!(text.contains(key), "{key} missing in {text}");
    }
}

#[test]
fn last_will_reads_offline_after_the_process_is_killed() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let sub = Subscriber::start(
        broker.port(),
        "fe-test/edge-kill/status",
        SubscriberOptions::default(),
    );
    let spool = tempfile::tempdir().expect("spool dir");
    let args: Vec<String> = [
        "--url",
        &broker.url(),
        "--spool",
        &spool.path().display().to_string(),
        "--node",
        "edge-kill",
        "--camera",
        "cam",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut harness = mosquitto::Harness::spawn(&args);
    sub.wait_for(WAIT, "online", |m| m.iter().any(|r| r.text() == "online"));
    harness.kill();
    let got = sub.wait_for(WAIT, "offline (last will)", |m| {
        m.last().is_some_and(|r| r.text() == "offline")
    });
    assert_eq!(
        got.iter().map(|r| r.text()).collect::<Vec<_>>(),
        ["online", "offline"]
    );
    // And it is retained: a later subscriber reads offline too.
    let late = Subscriber::start(
        broker.port(),
        "fe-test/edge-kill/status",
        SubscriberOptions::default(),
    );
    let got = late.wait_for(WAIT, "retained offline", |m| !m.is_empty());
    assert_eq!((got[0].text().as_str(), got[0].retain), ("offline", true));
}

#[test]
fn every_qos_level_delivers_every_result_in_order() {
    let broker = Mosquitto::start(BrokerOptions::default());
    for qos in [0u8, 1, 2] {
        let camera = format!("cam-qos{qos}");
        let sub = Subscriber::start(
            broker.port(),
            &format!("fe-test/{camera}/od"),
            SubscriberOptions::default(),
        );
        let spool = tempfile::tempdir().expect("spool dir");
        let settings = florence_edge::publish::MqttSettings {
            qos,
            ..mosquitto::test_settings(&broker.url(), spool.path())
        };
        let publisher = Publisher::start(&settings, "edge-qos").expect("start");
        for sequence in 0..200 {
            publisher
                .try_publish_result(mosquitto::od_result("edge-qos", &camera, sequence, 1))
                .expect("queued");
        }
        let got = sub.wait_for(WAIT, &format!("200 results at QoS {qos}"), |m| {
            m.len() >= 200
        });
        let sequences: Vec<u64> = got
            .iter()
            .map(|r| r.json()["sequence"].as_u64().expect("sequence"))
            .collect();
        assert_eq!(sequences, (0..200).collect::<Vec<u64>>(), "QoS {qos}");
        let report = publisher.shutdown(Duration::from_secs(5));
        assert!(
            report.offline_published && report.left_in_spool == 0 && !report.timed_out,
            "QoS {qos}: {report:?}"
        );
    }
}

/// issue 13 item 8: two nodes with one node id (so one client id) knock
/// each other off the broker; each notices that its connections are
/// accepted and dropped again and says so, instead of only reconnecting.
#[test]
fn a_duplicate_client_id_is_detected_as_a_takeover() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let spool_a = tempfile::tempdir().expect("spool dir");
    let spool_b = tempfile::tempdir().expect("spool dir");
    let a = Publisher::start(
        &mosquitto::test_settings(&broker.url(), spool_a.path()),
        "edge-twin",
    )
    .expect("start");
    let b = Publisher::start(
        &mosquitto::test_settings(&broker.url(), spool_b.path()),
        "edge-twin",
    )
    .expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let suspected = loop {
        let (sa, sb) = (a.stats().snapshot(), b.stats().snapshot());
        if sa.takeovers_suspected + sb.takeovers_suspected > 0 {
            break (sa, sb);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover noticed in 30 s: {sa:?} {sb:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        suspected.0.connects + suspected.1.connects >= 4,
        "{suspected:?}"
    );
    b.shutdown(Duration::from_secs(2));
    a.shutdown(Duration::from_secs(2));
    // A node alone is never suspected: its connection stays up.
    let spool_c = tempfile::tempdir().expect("spool dir");
    let c = Publisher::start(
        &mosquitto::test_settings(&broker.url(), spool_c.path()),
        "edge-single",
    )
    .expect("start");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.stats().snapshot().takeovers_suspected, 0);
    assert!(c.stats().snapshot().connected);
    c.shutdown(Duration::from_secs(2));
}
