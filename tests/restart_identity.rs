//! Results stay identifiable across a restart: sequence numbers start at 1
//! in every run, so a florence-edge restarted during a broker outage
//! delivers the old run's spooled 1…n and then the new run's 1…m on the same
//! topics. The `run_id` in every result tells them apart; a subscriber
//! de-duplicating on (node, run_id, camera, task, sequence) keeps them all.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::{DaemonProcess, TestConfig};
use mosquitto::Received;

/// Writes `florence-edge.toml` in `dir` (spool in `dir/spool`, reconnects
/// within half a second of the broker's return) and returns its path.
fn write_config(dir: &Path, mqtt_url: &str) -> PathBuf {
    let path = dir.join("florence-edge.toml");
    let text = TestConfig {
        node: "rid-node",
        model_extra: "",
        mqtt: format!(
            "url = \"{mqtt_url}\"\ntopic_prefix = \"fe-rid\"\nqos = 1\n\
             spool = {{ dir = \"{}\", max_messages = 10000 }}\n\
             reconnect = {{ initial = \"100ms\", max = \"500ms\", stable_after = \"1s\" }}",
            dir.join("spool").display()
        ),
        http: "enabled = false",
        cameras: &daemon::test_camera(
            "yard",
            "ball",
            r#"{ task = "<OD>", every = "200ms" }, { task = "<CAPTION>", every = "400ms" }"#,
        ),
    }
    .toml();
    std::fs::write(&path, text).unwrap();
    path
}

/// A result's de-duplication key: (node, run_id, camera, task, sequence).
type Key = (String, String, String, String, u64);

fn key(v: &serde_json::Value) -> Key {
    let s = |f: &str| v[f].as_str().unwrap_or_default().to_owned();
    (
        s("node"),
        s("run_id"),
        s("camera"),
        s("task"),
        v["sequence"].as_u64().unwrap_or(0),
    )
}

/// The result payloads among the recorded messages, in arrival order.
fn results(messages: &[Received]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .filter(|m| !m.topic.ends_with("/status"))
        .map(Received::json)
        .collect()
}

#[test]
fn results_of_two_runs_are_told_apart_by_run_id() {
    // A persistent session: what the broker takes while the recorder is
    // itself reconnecting after the broker's restart is kept for it.
    let (mut broker, sub) =
        mosquitto::persistent_broker_and_recorder("fe-rid/+/+", "restart-identity-recorder");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url());

    // Run 1: results go out live, then the broker goes away and they spool.
    let mut first = DaemonProcess::start(&path, &[]);
    sub.wait_for(Duration::from_secs(60), "live results of run 1", |m| {
        results(m).len() >= 2
    });
    broker.stop();
    let live = first.results().len();
    first.wait_results("results spooled by run 1", Duration::from_secs(30), |r| {
        r.len() >= live + 4
    });
    // SIGTERM with the broker away: what is queued goes to the spool too.
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    let run_1 = first.results();

    // Run 2 starts while the broker is still down; its results spool
    // behind run 1's. Then the broker returns.
    let second = DaemonProcess::start(&path, &[]);
    second.wait_results("results spooled by run 2", Duration::from_secs(60), |r| {
        r.len() >= 4
    });
    let run_2 = second.results();
    broker.restart();

    let id_1 = run_1[0]["run_id"].as_str().unwrap().to_owned();
    let id_2 = run_2[0]["run_id"].as_str().unwrap().to_owned();
    assert_ne!(id_1, id_2, "each start draws a new run id");
    for (run, id) in [(&run_1, &id_1), (&run_2, &id_2)] {
        assert!(run.iter().all(|r| r["run_id"] == id.as_str()), "{id}");
    }
    let want: BTreeSet<Key> = run_1.iter().chain(&run_2).map(key).collect();
    assert_eq!(want.len(), run_1.len() + run_2.len(), "keys are distinct");
    let messages = sub.wait_for(Duration::from_secs(60), "every result of both runs", |m| {
        let got: BTreeSet<Key> = results(m).iter().map(key).collect();
        want.is_subset(&got)
    });
    drop(second);

    // Without the run id the two runs collide: both have (yard, <OD>, 1).
    let old_key = |r: &serde_json::Value| {
        let (_, _, camera, task, seq) = key(r);
        (camera, task, seq)
    };
    let in_run_1: BTreeSet<_> = run_1.iter().map(old_key).collect();
    assert!(
        run_2.iter().map(old_key).any(|k| in_run_1.contains(&k)),
        "the runs share (camera, task, sequence) keys"
    );

    // What arrived: two run ids; one result per key (a repeat, QoS 1 being
    // at least once, is the same result: same capture time); per run, camera
    // and task the first arrivals count 1, 2, 3 … in order, none missing.
    let received = results(&messages);
    let runs: BTreeSet<&str> = received
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs, BTreeSet::from([id_1.as_str(), id_2.as_str()]));
    let mut captured: HashMap<Key, u64> = HashMap::new();
    let mut order: BTreeMap<(String, String, String), Vec<u64>> = BTreeMap::new();
    for r in &received {
        let k = key(r);
        let at = r["frame"]["captured_unix_ms"].as_u64().unwrap();
        match captured.get(&k) {
            Some(first_at) => assert_eq!(*first_at, at, "two results share the key {k:?}"),
            None => {
                captured.insert(k.clone(), at);
                order.entry((k.1, k.2, k.3)).or_default().push(k.4);
            }
        }
    }
    for ((run, camera, task), seqs) in &order {
        assert_eq!(
            *seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "run {run}, {camera} {task}"
        );
    }
    // Every result run 1 produced arrived (SIGTERM spooled its queue).
    let arrived_1 = captured.keys().filter(|k| k.1 == id_1).count();
    assert_eq!(arrived_1, run_1.len());
}
