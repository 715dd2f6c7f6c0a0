//! The daemon over a real mosquitto on 127.0.0.1: what arrives on which
//! topic (snapshots included), what the retained statuses say after a
//! reload removed a camera and after SIGTERM, and results spooled by a
//! florence-edge that is killed during a broker outage, delivered by the
//! next one.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daemon::{wait_until, DaemonProcess, TestConfig};
use florence_edge::daemon::{Daemon, MqttSink};
use mosquitto::{free_port, BrokerOptions, Mosquitto, Received, Subscriber, SubscriberOptions};

/// Writes `florence-edge.toml` in `dir` (results spooled in `dir/spool`)
/// and returns its path; written again, it is the file a SIGHUP reloads.
fn write_config(dir: &Path, mqtt_url: &str, http: &str, cameras: &str) -> PathBuf {
    let path = dir.join("florence-edge.toml");
    let spool = dir.join("spool");
    let text = TestConfig {
        node: "mqtt-node",
        model_extra: "",
        mqtt: format!(
            "url = \"{mqtt_url}\"\ntopic_prefix = \"fe-dtest\"\nqos = 1\nspool = {{ dir = \"{}\", max_messages = 10000 }}\nsnapshots = {{ enabled = true, min_interval = \"1s\" }}",
            spool.display()
        ),
        http,
        cameras,
    }
    .toml();
    std::fs::write(&path, text).unwrap();
    path
}

const CAMERAS: &str = r#"
[[cameras]]
id = "yard"
url = "test://?pattern=ball&width=96&height=64&fps=10"
tasks = [{ task = "<OD>", every = "300ms" }, { task = "<CAPTION>", every = "600ms" }]

[[cameras]]
id = "gate"
url = "test://?pattern=smpte&width=80&height=60&fps=10"
tasks = [{ task = "<OD>", every = "300ms" }]
"#;

fn on<'a>(messages: &'a [Received], topic: &str) -> Vec<&'a Received> {
    messages.iter().filter(|m| m.topic == topic).collect()
}

#[test]
fn results_statuses_and_snapshots_arrive_on_their_topics() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let sub = Subscriber::start(broker.port(), "fe-dtest/#", SubscriberOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), "enabled = false", CAMERAS);
    let config = florence_edge::config::load(&path).expect("valid config");
    let sink = MqttSink::start(&config.mqtt, &config.node.id).expect("publisher");
    let daemon = Daemon::start(config, Box::new(sink)).expect("daemon");

    let messages = sub.wait_for(Duration::from_secs(90), "results and snapshots", |m| {
        on(m, "fe-dtest/yard/od").len() >= 3
            && on(m, "fe-dtest/yard/caption").len() >= 2
            && on(m, "fe-dtest/gate/od").len() >= 3
            && !on(m, "fe-dtest/yard/od/snapshot").is_empty()
            && !on(m, "fe-dtest/gate/od/snapshot").is_empty()
            && !on(m, "fe-dtest/yard/status").is_empty()
    });
    assert_eq!(
        on(&messages, "fe-dtest/mqtt-node/status")[0].text(),
        "online"
    );

    // Results: the payload of DESIGN §6, numbered per (camera, task) from 1.
    let od = on(&messages, "fe-dtest/yard/od");
    let seqs: Vec<u64> = od
        .iter()
        .map(|m| m.json()["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let first = od[0].json();
    assert_eq!(first["camera"], "yard");
    assert_eq!(first["task"], "<OD>");
    assert_eq!(first["frame"]["width"], 96);
    assert!(first["result"]["<OD>"].is_object(), "{first}");

    // Snapshots: JPEGs of the frame's size, at most one per second per
    // (camera, task) although results come every 300 ms.
    for (topic, (w, h)) in [
        ("fe-dtest/yard/od/snapshot", (96, 64)),
        ("fe-dtest/gate/od/snapshot", (80, 60)),
    ] {
        let snap = on(&messages, topic)[0];
        let img = image::load_from_memory_with_format(&snap.payload, image::ImageFormat::Jpeg)
            .unwrap_or_else(|e| panic!("{topic}: not a JPEG: {e}"));
        assert_eq!((img.width(), img.height()), (w, h), "{topic}");
    }
    let status = on(&messages, "fe-dtest/yard/status")[0].json();
    assert_eq!(status["camera"], "yard");

    let started = Instant::now();
    let before = sub.messages();
    std::thread::sleep(Duration::from_secs(3));
    let after = sub.messages();
    let window = started.elapsed().as_secs_f64() + 1.0;
    let snaps = on(&after, "fe-dtest/yard/od/snapshot").len()
        - on(&before, "fe-dtest/yard/od/snapshot").len();
    assert!(
        (snaps as f64) <= window,
        "{snaps} snapshots in {window:.1} s with min_interval = 1s"
    );
    assert!(
        on(&after, "fe-dtest/yard/od").len() > on(&before, "fe-dtest/yard/od").len() + snaps,
        "results go out more often than snapshots"
    );

    daemon.shutdown();
    daemon.wait().expect("clean stop");
    let last = sub.wait_for(Duration::from_secs(10), "offline", |m| {
        on(m, "fe-dtest/mqtt-node/status")
            .last()
            .is_some_and(|s| s.text() == "offline")
    });
    assert!(!on(&last, "fe-dtest/mqtt-node/status").is_empty());
}

fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// The identity of a result: camera, task, sequence and capture time.
fn identity(v: &serde_json::Value) -> (String, String, u64, u64) {
    (
        v["camera"].as_str().unwrap_or("").to_string(),
        v["task"].as_str().unwrap_or("").to_string(),
        v["sequence"].as_u64().unwrap_or(0),
        v["frame"]["captured_unix_ms"].as_u64().unwrap_or(0),
    )
}

#[test]
fn results_spooled_before_a_kill_arrive_after_the_restart() {
    let (mut broker, sub) =
        mosquitto::persistent_broker_and_recorder("fe-dtest/+/+", "daemon-outage-recorder");
    broker.stop();

    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http_section = format!("listen = \"{http}\"");
    let path = write_config(dir.path(), &broker.url(), &http_section, CAMERAS);

    // 1. The broker is down: results go to the spool.
    let first = DaemonProcess::start(&path, &[]);
    wait_until(
        "results of the first process",
        Duration::from_secs(90),
        || first.results().len() >= 8,
    );
    // Stop its cameras with a reload (every camera disabled), wait until
    // every result it printed is in the spool, then kill it.
    let disabled = CAMERAS.replace("[[cameras]]\n", "[[cameras]]\nenabled = false\n");
    write_config(dir.path(), &broker.url(), &http_section, &disabled);
    // SAFETY: kill(2) on our own child.
    let rc = unsafe { libc::kill(first.child.id() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0);
    let mut produced = Vec::new();
    wait_until(
        "the reload and every result spooled",
        Duration::from_secs(30),
        || {
            let before = first.results().len();
            if metric(http, "florence_edge_reloads_total") != Some(1.0) {
                return false;
            }
            let spooled = metric(http, "florence_edge_mqtt_results_spooled_total");
            std::thread::sleep(Duration::from_millis(300));
            produced = first.results();
            produced.len() == before && spooled == Some(produced.len() as f64)
        },
    );
    drop(first); // SIGKILL: no drain, no goodbye.
    assert!(produced.len() >= 8);

    // 2. A new florence-edge starts while the broker is still down, then
    // the broker comes back: the first process' results arrive.
    let second = DaemonProcess::start(&path, &[]);
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    let want: Vec<_> = produced.iter().map(identity).collect();
    let messages = sub.wait_for(Duration::from_secs(60), "the spooled results", |m| {
        let got: Vec<_> = m
            .iter()
            .filter(|r| !r.topic.ends_with("/status"))
            .map(|r| identity(&r.json()))
            .collect();
        want.iter().all(|w| got.contains(w))
    });
    // In order per (camera, task), first arrivals counted (QoS 1 is at
    // least once).
    let mut order: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for m in messages.iter().filter(|r| !r.topic.ends_with("/status")) {
        let id = identity(&m.json());
        if seen.insert(id.clone()) {
            order.entry((id.0, id.1)).or_default().push(id.2);
        }
    }
    for ((camera, task), seqs) in order {
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{camera} {task}"
        );
    }
    drop(second);
}

#[test]
fn the_last_will_says_offline_when_the_daemon_is_killed() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let sub = Subscriber::start(
        broker.port(),
        "fe-dtest/mqtt-node/status",
        SubscriberOptions::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), "enabled = false", CAMERAS);
    let daemon = DaemonProcess::start(&path, &[]);
    sub.wait_for(Duration::from_secs(90), "online", |m| {
        m.last().is_some_and(|s| s.text() == "online")
    });
    wait_until("a result", Duration::from_secs(60), || {
        !daemon.results().is_empty()
    });
    drop(daemon); // SIGKILL: the broker publishes the will.
    let m = sub.wait_for(Duration::from_secs(30), "the last will", |m| {
        m.last().is_some_and(|s| s.text() == "offline")
    });
    assert_eq!(m.last().unwrap().topic, "fe-dtest/mqtt-node/status");
}

/// The `state` of a camera status message.
fn state(m: &Received) -> String {
    m.json()["state"].as_str().unwrap_or_default().to_owned()
}

fn last_state(messages: &[Received], topic: &str) -> Option<String> {
    on(messages, topic).last().map(|m| state(m))
}

#[test]
fn retained_statuses_say_removed_after_a_reload_and_offline_after_sigterm() {
    const NODE: &str = "fe-dtest/mqtt-node/status";
    const YARD: &str = "fe-dtest/yard/status";
    const GATE: &str = "fe-dtest/gate/status";
    let broker = Mosquitto::start(BrokerOptions::default());
    let live = Subscriber::start(
        broker.port(),
        "fe-dtest/+/status",
        SubscriberOptions::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), "enabled = false", CAMERAS);
    let mut daemon = DaemonProcess::start(&path, &[]);
    live.wait_for(Duration::from_secs(90), "both cameras streaming", |m| {
        [YARD, GATE]
            .iter()
            .all(|t| last_state(m, t).as_deref() == Some("streaming"))
    });
    daemon.wait_results("a result", Duration::from_secs(60), |r| !r.is_empty());
    let run_id = daemon.results()[0]["run_id"].as_str().unwrap().to_owned();
    let schema =
        jsonschema::validator_for(&florence_edge::publish::payload::camera_status_schema())
            .unwrap();

    // A reload without the gate: its retained status becomes `removed`.
    let only_yard = &CAMERAS[..CAMERAS.find("[[cameras]]\nid = \"gate\"").unwrap()];
    write_config(dir.path(), &broker.url(), "enabled = false", only_yard);
    daemon.signal(libc::SIGHUP);
    live.wait_for(Duration::from_secs(30), "the gate removed", |m| {
        last_state(m, GATE).as_deref() == Some("removed")
    });
    let late = Subscriber::start(
        broker.port(),
        "fe-dtest/+/status",
        SubscriberOptions::default(),
    );
    let retained = late.wait_for(Duration::from_secs(10), "the retained statuses", |m| {
        [NODE, YARD, GATE].iter().all(|t| !on(m, t).is_empty())
    });
    let gate = on(&retained, GATE)[0];
    assert!(gate.retain);
    let gate = gate.json();
    assert_eq!(gate["state"], "removed", "{gate}");
    assert_eq!(gate["run_id"], run_id.as_str());
    assert_eq!(gate["fps_in"], 0.0);
    assert!(schema.is_valid(&gate), "{gate}");
    assert_eq!(state(on(&retained, YARD)[0]), "streaming");
    assert_eq!(on(&retained, NODE)[0].text(), "online");
    drop(late);

    // SIGTERM: each running camera says `offline`, then the node does; the
    // removed camera stays `removed`.
    let before = live.messages().len();
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    let after = live.wait_for(Duration::from_secs(10), "the node offline", |m| {
        on(m, NODE).last().is_some_and(|s| s.text() == "offline")
    });
    let tail = &after[before..];
    let yard_offline = tail
        .iter()
        .position(|m| m.topic == YARD && state(m) == "offline")
        .unwrap_or_else(|| panic!("no yard offline in {tail:?}"));
    let node_offline = tail
        .iter()
        .position(|m| m.topic == NODE && m.text() == "offline")
        .unwrap();
    assert!(yard_offline < node_offline, "{tail:?}");
    assert!(tail.iter().all(|m| m.topic != GATE), "{tail:?}");

    let late = Subscriber::start(
        broker.port(),
        "fe-dtest/+/status",
        SubscriberOptions::default(),
    );
    let retained = late.wait_for(Duration::from_secs(10), "the retained statuses", |m| {
        [NODE, YARD, GATE].iter().all(|t| !on(m, t).is_empty())
    });
    assert_eq!(on(&retained, NODE)[0].text(), "offline");
    let yard = on(&retained, YARD)[0].json();
    assert_eq!(yard["state"], "offline", "{yard}");
    assert_eq!(yard["run_id"], run_id.as_str());
    assert!(yard["frames_in"].as_u64().unwrap() > 0, "{yard}");
    assert!(schema.is_valid(&yard), "{yard}");
    assert_eq!(state(on(&retained, GATE)[0]), "removed");
}
