//! Home Assistant's side, through a real mosquitto: the retained discovery
//! documents appear; setting the text entity (what Home Assistant publishes
//! on its `command_topic`) re-prompts the camera, and the next result
//! carries the new prompt and a new revision; the switch turns a task off;
//! removing the camera clears its discovery documents.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::time::Duration;

use daemon::{test_camera as camera, DaemonProcess, TestConfig};
use mosquitto::{BrokerOptions, Mosquitto, Received, Subscriber, SubscriberOptions};
use serde_json::Value;

const PREFIX: &str = "fe-ha";

fn publish(port: u16, topic: &str, payload: &str) {
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub {topic}");
}

/// The newest discovery document of each topic (empty payloads included).
fn latest(messages: &[Received]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for m in messages {
        out.insert(m.topic.clone(), m.payload.clone());
    }
    out
}

fn entity(
    docs: &std::collections::BTreeMap<String, Vec<u8>>,
    component: &str,
    pred: impl Fn(&Value) -> bool,
) -> Option<(String, Value)> {
    docs.iter()
        .filter(|(t, p)| t.starts_with(&format!("homeassistant/{component}/")) && !p.is_empty())
        .map(|(t, p)| (t.clone(), serde_json::from_slice::<Value>(p).unwrap()))
        .find(|(_, v)| pred(v))
}

#[test]
fn the_text_entity_reprompts_the_camera_and_removal_clears_the_entities() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    let cameras = [
        camera(
            "porch",
            "snow",
            r#"{ task = "<CAPTION>", every = "300ms" }, { task = "<OPEN_VOCABULARY_DETECTION>", text = "a person", every = "300ms" }"#,
        ),
        camera("yard", "ball", r#"{ task = "<OD>", every = "300ms" }"#),
    ]
    .concat();
    let text = TestConfig {
        node: "ha-node",
        model_extra: "",
        mqtt: format!(
            "url = \"{}\"\ntopic_prefix = \"{PREFIX}\"\nqos = 1\nspool = {{ dir = \"{}\" }}",
            broker.url(),
            dir.path().join("spool").display()
        ),
        http: "enabled = false",
        cameras: &cameras,
    }
    .toml();
    std::fs::write(
        &config,
        format!(
            "[homeassistant]\nenabled = true\n\n[control]\noverrides_file = \"{}\"\n{text}",
            dir.path().join("overrides.json").display()
        ),
    )
    .unwrap();
    let discovery = Subscriber::start(
        broker.port(),
        "homeassistant/#",
        SubscriberOptions::default(),
    );
    let results = Subscriber::start(
        broker.port(),
        &format!("{PREFIX}/#"),
        SubscriberOptions::default(),
    );
    let _d = DaemonProcess::start(&config, &[]);

    // Discovery: a text entity for porch's prompt, a switch per task.
    let msgs = discovery.wait_for(Duration::from_secs(120), "the text entity", |m| {
        entity(&latest(m), "text", |v| {
            v["command_topic"]
                .as_str()
                .is_some_and(|t| t.contains("/porch/"))
        })
        .is_some()
    });
    let docs = latest(&msgs);
    let (_, text_entity) = entity(&docs, "text", |v| {
        v["command_topic"]
            .as_str()
            .is_some_and(|t| t.contains("/porch/"))
    })
    .unwrap();
    assert_eq!(
        text_entity["availability_topic"],
        format!("{PREFIX}/ha-node/status")
    );
    let porch_docs: Vec<String> = docs
        .iter()
        .filter(|(_, p)| String::from_utf8_lossy(p).contains("/porch/"))
        .map(|(t, _)| t.clone())
        .collect();
    assert!(porch_docs.len() >= 4, "{porch_docs:?}");

    // The state topic the text entity reads shows the prompt from the file.
    let state_topic = text_entity["state_topic"].as_str().unwrap().to_string();
    let states = results.wait_for(Duration::from_secs(30), "the task state", |m| {
        m.iter()
            .any(|x| x.topic == state_topic && !x.payload.is_empty())
    });
    let first = states
        .iter()
        .rev()
        .find(|x| x.topic == state_topic)
        .unwrap()
        .json();
    assert_eq!(first["text"], "a person");
    let old_revision = first["revision"].as_u64().unwrap();

    // What Home Assistant sends when the user types a new prompt.
    let result_topic = format!("{PREFIX}/porch/open_vocabulary_detection");
    results.wait_for(Duration::from_secs(90), "a first result", |m| {
        m.iter().any(|x| x.topic == result_topic)
    });
    publish(
        broker.port(),
        text_entity["command_topic"].as_str().unwrap(),
        "a person with a ladder",
    );
    let after = results.wait_for(Duration::from_secs(60), "a result of the new prompt", |m| {
        m.iter()
            .any(|x| x.topic == result_topic && x.json()["text_input"] == "a person with a ladder")
    });
    let r = after
        .iter()
        .find(|x| x.topic == result_topic && x.json()["text_input"] == "a person with a ladder")
        .unwrap()
        .json();
    assert!(r["revision"].as_u64().unwrap() > old_revision, "{r}");
    let state = after
        .iter()
        .rev()
        .find(|x| x.topic == state_topic)
        .unwrap()
        .json();
    assert_eq!(state["text"], "a person with a ladder");
    assert_eq!(state["revision"], r["revision"]);

    // The caption's switch: OFF stops its results.
    let docs = latest(&discovery.messages());
    let (_, switch) = entity(&docs, "switch", |v| {
        v["command_topic"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("{PREFIX}/porch/caption/")))
    })
    .unwrap();
    publish(
        broker.port(),
        switch["command_topic"].as_str().unwrap(),
        switch["payload_off"].as_str().unwrap(),
    );
    let caption_state = switch["state_topic"].as_str().unwrap().to_string();
    let msgs = results.wait_for(Duration::from_secs(30), "the caption switched off", |m| {
        m.iter()
            .rev()
            .find(|x| x.topic == caption_state && !x.payload.is_empty())
            .is_some_and(|x| x.json()["enabled"] == false)
    });
    let off_revision = msgs
        .iter()
        .rev()
        .find(|x| x.topic == caption_state)
        .unwrap()
        .json()["revision"]
        .as_u64()
        .unwrap();
    let mark = results.messages().len();
    results.wait_for(Duration::from_secs(60), "more porch detections", |m| {
        m[mark..].iter().filter(|x| x.topic == result_topic).count() >= 3
    });
    let captions_after: Vec<Value> = results.messages()[mark..]
        .iter()
        .filter(|x| x.topic == format!("{PREFIX}/porch/caption"))
        .map(|x| x.json())
        .filter(|v| v["revision"].as_u64().unwrap() >= off_revision)
        .collect();
    assert!(
        captions_after.is_empty(),
        "captions after the switch went off: {captions_after:?}"
    );

    // A camera added over MQTT (a node command) becomes a device with its
    // entities, and streams.
    publish(
        broker.port(),
        &format!("{PREFIX}/ha-node/set/cameras/gate"),
        r#"{"request_id": "add-gate", "url": "test://?pattern=smpte&width=96&height=64&fps=10", "tasks": [{"task": "<OD>", "every": "300ms"}]}"#,
    );
    let is_answer = |x: &Received| {
        x.topic == format!("{PREFIX}/ha-node/response") && x.json()["request_id"] == "add-gate"
    };
    let answers = results.wait_for(Duration::from_secs(30), "the answer to the add", |m| {
        m.iter().any(is_answer)
    });
    let answer = answers.iter().find(|x| is_answer(x)).unwrap().json();
    assert_eq!(answer["status"], 200, "{answer}");
    discovery.wait_for(Duration::from_secs(30), "gate's entities", |m| {
        entity(&latest(m), "switch", |v| {
            v["command_topic"]
                .as_str()
                .is_some_and(|t| t.contains("/gate/"))
        })
        .is_some()
    });
    results.wait_for(Duration::from_secs(60), "results from gate", |m| {
        m.iter().any(|x| x.topic == format!("{PREFIX}/gate/od"))
    });

    // Removing the camera clears every one of its discovery documents.
    publish(
        broker.port(),
        &format!("{PREFIX}/ha-node/set/cameras/porch/delete"),
        "",
    );
    let msgs = discovery.wait_for(Duration::from_secs(30), "porch's documents cleared", |m| {
        let docs = latest(m);
        porch_docs
            .iter()
            .all(|t| docs.get(t).is_some_and(Vec::is_empty))
    });
    let docs = latest(&msgs);
    assert!(
        entity(&docs, "sensor", |v| v["state_topic"]
            .as_str()
            .is_some_and(|t| t.contains("/yard/")))
        .is_some(),
        "yard's entities stay"
    );
}
