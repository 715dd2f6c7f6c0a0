//! issue 13's soak: eight cameras on the tiny model; at every round one of
//! two "victim" cameras is broken through a SIGHUP reload — a prompt too
//! long for the model, a dead URL, a corrupt file — while the one broken in
//! the round before is restored. The six cameras nobody touches must show
//! no gap in their sequence numbers and no stall in their results.
//!
//! CI runs a short soak (6 rounds of 6 s). The full one, as the issue asks
//! (10 minutes, a fault every 30 s):
//! `FLORENCE_EDGE_SOAK_SECS=600 FLORENCE_EDGE_SOAK_ROUND_SECS=30 cargo test --features cuda --test soak -- --nocapture`

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use florence_edge::daemon::{Daemon, DaemonOptions, ResultSink};
use florence_edge::publish::ResultPayload;

/// Every result with the time it reached the sink.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<(Instant, ResultPayload)>>>);

impl ResultSink for Collect {
    fn result(&mut self, result: &ResultPayload) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), result.clone()));
    }
}

const STEADY: [&str; 6] = ["ball", "snow", "smpte", "bars", "zone", "pinwheel"];
const PATTERNS: [&str; 6] = ["ball", "snow", "smpte", "colors", "zone-plate", "pinwheel"];
const VICTIMS: [&str; 2] = ["victim-a", "victim-b"];
/// The steady cameras' task period.
const PERIOD: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
enum Fault {
    LongPrompt,
    DeadUrl,
    CorruptFile,
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn camera(id: &str, url: &str, task: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\nreconnect = {{ initial = \"100ms\", max = \"1s\" }}\ntasks = [{task}]\n\n"
    )
}

fn write_config(path: &Path, dir: &Path, broken: Option<(usize, Fault)>, corrupt: &Path) {
    let mut text = format!(
        "[node]\nid = \"soak\"\n\n{}\n\n[mqtt]\n{}\n\n[http]\nenabled = false\n\n",
        daemon::model_section(50, 8),
        daemon::unreachable_broker(dir),
    );
    for (id, pattern) in STEADY.iter().zip(PATTERNS) {
        text += &camera(
            id,
            &format!("test://?pattern={pattern}&width=96&height=64&fps=5"),
            &format!("{{ task = \"<OD>\", every = \"{}s\" }}", PERIOD.as_secs()),
        );
    }
    for (i, id) in VICTIMS.iter().enumerate() {
        let good_url = "test://?pattern=ball&width=96&height=64&fps=5";
        let good_task = "{ task = \"<CAPTION>\", every = \"2s\" }".to_string();
        let (url, task) = match broken {
            Some((v, Fault::LongPrompt)) if v == i => (
                good_url.to_string(),
                format!(
                    "{{ task = \"<OPEN_VOCABULARY_DETECTION>\", text = \"{}\", every = \"2s\" }}",
                    vec!["qzx"; 150].join(" ")
                ),
            ),
            Some((v, Fault::DeadUrl)) if v == i => {
                ("rtsp://127.0.0.1:9/nothing-here".to_string(), good_task)
            }
            Some((v, Fault::CorruptFile)) if v == i => {
                (format!("file://{}", corrupt.display()), good_task)
            }
            _ => (good_url.to_string(), good_task),
        };
        text += &camera(id, &url, &task);
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn eight_cameras_through_a_reload_fault_every_round_show_no_gap_and_no_stall() {
    let total = env_secs("FLORENCE_EDGE_SOAK_SECS", 36);
    let round = env_secs("FLORENCE_EDGE_SOAK_ROUND_SECS", 6);
    let dir = tempfile::tempdir().unwrap();
    let corrupt: PathBuf = dir.path().join("corrupt.mp4");
    let mut x: u32 = 0x2545_f491;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&corrupt, garbage).unwrap();
    let path = dir.path().join("florence-edge.toml");
    write_config(&path, dir.path(), None, &corrupt);

    let config = florence_edge::config::load(&path).expect("a valid config");
    let sink = Collect::default();
    let options = DaemonOptions {
        config_path: Some(path.clone()),
        ..Default::default()
    };
    let daemon = Daemon::start_with(config, Box::new(sink.clone()), options).expect("starts");
    let started = Instant::now();
    let faults = [Fault::LongPrompt, Fault::DeadUrl, Fault::CorruptFile];
    let mut rounds = 0usize;
    let mut long_prompt_rounds = 0u64;
    while started.elapsed() + round <= total {
        std::thread::sleep(round);
        let fault = faults[rounds % faults.len()];
        if matches!(fault, Fault::LongPrompt) {
            long_prompt_rounds += 1;
        }
        write_config(
            &path,
            dir.path(),
            Some((rounds % VICTIMS.len(), fault)),
            &corrupt,
        );
        daemon.reload();
        rounds += 1;
    }
    std::thread::sleep(round);
    let stats = daemon.stats();
    let readiness = daemon.liveness().readiness(Instant::now());
    daemon.shutdown();
    daemon.wait().unwrap();
    let elapsed = started.elapsed();
    let results = sink.0.lock().unwrap().clone();

    let mut per_camera: BTreeMap<&str, Vec<(Instant, u64)>> = BTreeMap::new();
    for (at, r) in &results {
        per_camera
            .entry(r.camera.as_str())
            .or_default()
            .push((*at, r.sequence));
    }
    eprintln!(
        "soak: {rounds} rounds in {:.0} s; results per camera: {:?}; reloads {} applied, {} rejected; \
         {} batches, {} jobs, {} failed, {} dropped by reloads",
        elapsed.as_secs_f64(),
        per_camera
            .iter()
            .map(|(c, v)| (c.to_string(), v.len()))
            .collect::<Vec<_>>(),
        stats.reloads,
        stats.reloads_rejected,
        stats.batches,
        stats.jobs,
        stats.failed_jobs,
        stats.dropped_by_reload,
    );
    assert!(rounds >= 3, "at least one round of each fault: {rounds}");
    assert!(
        readiness.ok,
        "still ready at the end: {:?}",
        readiness.problems
    );
    // A too-long prompt is refused by the reload's checks as a whole; the
    // dead URL and the corrupt file are applied and fail that camera alone.
    assert_eq!(stats.reloads_rejected, long_prompt_rounds, "{stats:?}");
    assert_eq!(
        stats.reloads,
        rounds as u64 - long_prompt_rounds,
        "{stats:?}"
    );
    for id in STEADY {
        let seen = per_camera.get(id).cloned().unwrap_or_default();
        let sequences: Vec<u64> = seen.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            sequences,
            (1..=sequences.len() as u64).collect::<Vec<_>>(),
            "{id}: no gap in its sequence numbers"
        );
        let ideal = elapsed.as_secs_f64() / PERIOD.as_secs_f64();
        assert!(
            sequences.len() as f64 >= ideal / 2.0,
            "{id}: {} results in {elapsed:?} (period {PERIOD:?})",
            sequences.len()
        );
        // No stall: never more than a few periods without a result, through
        // every reload.
        let longest = seen
            .windows(2)
            .map(|w| w[1].0.duration_since(w[0].0))
            .max()
            .unwrap_or_default();
        assert!(
            longest <= PERIOD * 4,
            "{id}: {longest:?} without a result (period {PERIOD:?})"
        );
    }
}
