//! 1,000 MQTT commands in under a minute, a tenth of them malformed, while
//! two cameras stream: every valid change is applied in order (its answer's
//! revision counts up by one), every bad one is answered with its reason,
//! no result is lost (sequence numbers without gaps on every result topic),
//! and the camera no command touches streams on throughout.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use daemon::{http_get, test_camera as camera, DaemonProcess, TestConfig};
use mosquitto::{BrokerOptions, Mosquitto, Subscriber, SubscriberOptions};
use serde_json::{json, Value};

const COMMANDS: usize = 1000;
/// Pace of the commands: 1,000 in about 30 s.
const PACE: Duration = Duration::from_millis(30);
const PREFIX: &str = "fe-load";
const NODE: &str = "load-node";

/// What a malformed command is, and the status its answer must carry.
fn malformed(i: usize) -> (String, Vec<u8>, u16, bool) {
    let set = format!("{PREFIX}/busy/open_vocabulary_detection/set");
    match (i / 10) % 5 {
        0 => (set, br#"{"request_id": 1, "text": "#.to_vec(), 400, false),
        1 => (
            format!("{PREFIX}/nocamera/od/set"),
            json!({"request_id": i, "enabled": false})
                .to_string()
                .into_bytes(),
            404,
            true,
        ),
        2 => (
            set,
            json!({"request_id": i, "every": 5})
                .to_string()
                .into_bytes(),
            422,
            true,
        ),
        3 => (set, vec![b'x'; 1 << 20], 413, false),
        _ => (
            format!("{PREFIX}/busy/no_such_task/set"),
            json!({"request_id": i, "text": "x"})
                .to_string()
                .into_bytes(),
            404,
            true,
        ),
    }
}

fn frames_in(addr: SocketAddr, id: &str) -> u64 {
    let (code, body) = http_get(addr, "/api/cameras", None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["frames_in"].as_u64())
        .unwrap_or_else(|| panic!("{id} in {v}"))
}

#[test]
fn a_thousand_commands_in_a_minute_apply_in_order_and_lose_no_result() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    let cameras = [
        camera(
            "busy",
            "snow",
            r#"{ task = "<OD>", every = "300ms" }, { task = "<OPEN_VOCABULARY_DETECTION>", text = "prompt start", every = "300ms" }"#,
        ),
        camera("steady", "ball", r#"{ task = "<OD>", every = "300ms" }"#),
    ]
    .concat();
    let text = TestConfig {
        node: NODE,
        model_extra: "",
        mqtt: format!(
            "url = \"{}\"\ntopic_prefix = \"{PREFIX}\"\nqos = 1\nspool = {{ dir = \"{}\", max_messages = 100000 }}",
            broker.url(),
            dir.path().join("spool").display()
        ),
        http: "listen = \"127.0.0.1:0\"",
        cameras: &cameras,
    }
    .toml();
    std::fs::write(
        &config,
        format!(
            "[control]\noverrides_file = \"{}\"\n{text}",
            dir.path().join("overrides.json").display()
        ),
    )
    .unwrap();
    // Results, statuses and answers: three levels below the prefix.
    let seen = Subscriber::start(
        broker.port(),
        &format!("{PREFIX}/+/+"),
        SubscriberOptions::default(),
    );
    let d = DaemonProcess::start(&config, &[]);
    let line = d.wait_logged("HTTP endpoint listening.", Duration::from_secs(120));
    let addr: SocketAddr = line[0]["addr"].as_str().unwrap().parse().unwrap();
    let result_topic = |m: &mosquitto::Received| {
        m.topic.starts_with(&format!("{PREFIX}/busy/"))
            || m.topic.starts_with(&format!("{PREFIX}/steady/"))
    };
    seen.wait_for(Duration::from_secs(90), "results of both cameras", |m| {
        let n = |c: &str| {
            m.iter()
                .filter(|x| x.topic == format!("{PREFIX}/{c}/od"))
                .count()
        };
        n("busy") >= 2 && n("steady") >= 2
    });
    let start_revision = d.wait_logged("Configuration revision in effect.", Duration::from_secs(5))
        [0]["revision"]
        .as_u64()
        .unwrap();

    let mut options = rumqttc::MqttOptions::new("load-commander", "127.0.0.1", broker.port());
    options.set_max_packet_size(1 << 16, 4 << 20);
    let (client, mut connection) = rumqttc::Client::new(options, 256);
    let driver = std::thread::spawn(move || {
        for event in connection.iter() {
            if event.is_err() {
                break;
            }
        }
    });

    let mut expected: BTreeMap<usize, u16> = BTreeMap::new();
    let mut anonymous = 0;
    let mut valid = Vec::new();
    let mut steady_frames = vec![frames_in(addr, "steady")];
    let began = Instant::now();
    for i in 0..COMMANDS {
        let sent_at = Instant::now();
        if i % 10 == 9 {
            let (topic, payload, status, carries_id) = malformed(i);
            if carries_id {
                expected.insert(i, status);
            } else {
                anonymous += 1;
            }
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .unwrap();
        } else {
            // Valid: a new prompt, or (one in five) a new interval, each a
            // real change, so each raises the revision by one.
            let body = if i % 5 == 4 {
                json!({"request_id": i, "every": if (i / 10) % 2 == 0 { "400ms" } else { "500ms" }})
            } else {
                json!({"request_id": i, "text": format!("prompt {i}")})
            };
            expected.insert(i, 200);
            valid.push(i);
            client
                .publish(
                    format!("{PREFIX}/busy/open_vocabulary_detection/set"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body.to_string(),
                )
                .unwrap();
        }
        if i % 100 == 99 {
            steady_frames.push(frames_in(addr, "steady"));
        }
        std::thread::sleep(PACE.saturating_sub(sent_at.elapsed()));
    }
    let sending = began.elapsed();
    assert!(sending < Duration::from_secs(60), "sent in {sending:?}");

    let response_topic = format!("{PREFIX}/{NODE}/response");
    let answers = seen.wait_for(
        Duration::from_secs(120),
        "an answer to every command",
        |m| m.iter().filter(|x| x.topic == response_topic).count() >= COMMANDS,
    );
    let answers: Vec<Value> = answers
        .iter()
        .filter(|x| x.topic == response_topic)
        .map(|x| x.json())
        .collect();
    assert_eq!(answers.len(), COMMANDS, "one answer per command");

    // Every command with an id answered with the expected status; a refusal
    // carries its reason.
    let mut by_id: BTreeMap<usize, &Value> = BTreeMap::new();
    let mut nulls = 0;
    for a in &answers {
        match a["request_id"].as_u64() {
            Some(id) => assert!(
                by_id.insert(id as usize, a).is_none(),
                "answered twice: {a}"
            ),
            None => {
                nulls += 1;
                assert!(a["status"].as_u64().unwrap() >= 400, "{a}");
                assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
            }
        }
    }
    assert_eq!(
        nulls, anonymous,
        "bad JSON and oversized commands answered without an id"
    );
    for (id, status) in &expected {
        let a = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no answer to command {id}"));
        assert_eq!(
            a["status"].as_u64(),
            Some(u64::from(*status)),
            "command {id}: {a}"
        );
        if *status != 200 {
            assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
        }
    }
    // Applied in order: each valid change one revision after the previous.
    let revisions: Vec<u64> = valid
        .iter()
        .map(|i| by_id[i]["revision"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1..=valid.len() as u64)
        .map(|k| start_revision + k)
        .collect();
    assert_eq!(revisions, want, "valid changes applied in the order sent");

    // The last prompt is in effect, with the last revision.
    let last_prompt = valid.iter().rev().find(|i| *i % 5 != 4).unwrap();
    let last_revision = *want.last().unwrap();
    seen.wait_for(
        Duration::from_secs(60),
        "a result of the last prompt",
        |m| {
            m.iter().any(|x| {
                x.topic == format!("{PREFIX}/busy/open_vocabulary_detection") && {
                    let v = x.json();
                    v["text_input"] == format!("prompt {last_prompt}").as_str()
                        && v["revision"].as_u64() == Some(last_revision)
                }
            })
        },
    );

    // The untouched camera never stalled: its frame counter rose between
    // every two samples, and its results kept coming.
    steady_frames.push(frames_in(addr, "steady"));
    for w in steady_frames.windows(2) {
        assert!(w[1] > w[0], "steady's frames_in stalled: {steady_frames:?}");
    }

    // No result lost: on every result topic, sequence numbers without gaps
    // (QoS 1 may repeat one; it never skips one).
    let messages = seen.messages();
    let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in messages
        .iter()
        .filter(|m| result_topic(m) && !m.topic.ends_with("/status"))
    {
        let v = m.json();
        sequences
            .entry(m.topic.clone())
            .or_default()
            .push(v["sequence"].as_u64().unwrap());
    }
    assert!(sequences.len() >= 3, "{:?}", sequences.keys());
    for (topic, seqs) in &sequences {
        let mut firsts: Vec<u64> = Vec::new();
        for s in seqs {
            if !firsts.contains(s) {
                firsts.push(*s);
            }
        }
        let want: Vec<u64> = (1..=firsts.len() as u64).collect();
        assert_eq!(firsts, want, "{topic}: a result was lost");
    }
    let steady_results = sequences[&format!("{PREFIX}/steady/od")].len();
    assert!(
        steady_results >= 30,
        "steady kept producing: {steady_results}"
    );

    // How long the coordinator took per change, for the record (not a
    // check: speed is measured, never asserted).
    let applied = d.logged("Runtime change applied.");
    let ms: Vec<f64> = applied
        .iter()
        .filter_map(|l| l["elapsed_ms"].as_f64())
        .collect();
    assert_eq!(ms.len(), valid.len(), "one log line per applied change");
    eprintln!(
        "{} changes applied, {:.1} ms mean, {:.1} ms max; {COMMANDS} commands sent in {sending:?}",
        ms.len(),
        ms.iter().sum::<f64>() / ms.len() as f64,
        ms.iter().cloned().fold(0.0, f64::max)
    );
    client.disconnect().unwrap();
    let _ = driver.join();
}
