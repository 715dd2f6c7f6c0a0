//! Throughput and latency of the whole daemon at capacity: N `test://`
//! cameras × `max_batch`, every task due far more often than the model can
//! serve (`every = "10ms"`), results collected in memory (no MQTT).
//!
//! ```sh
//! cargo bench --bench daemon                      # full grid, tiny test model
//! cargo bench --bench daemon -- cameras=1,2 batch=1,4 seconds=10 model=models/florence2-base-random tokens=32
//! FE_BENCH_CAMERAS=1,2 FE_BENCH_BATCH=1,4 cargo bench --bench daemon
//! cargo bench --bench daemon -- sharing=8         # engine-level before/after of vision sharing only
//! ```
//!
//! Settings (argument `name=value`, or environment `FE_BENCH_<NAME>`; an
//! argument wins):
//!
//! | name | default | meaning |
//! |---|---|---|
//! | `cameras` | `1,2,4,8` | camera counts to run |
//! | `batch` | `1,2,4,8` | `max_batch` values to run |
//! | `seconds` | `10` | measurement window per configuration |
//! | `warmup` | `3` | seconds after every camera delivered its first result |
//! | `model` | `tests/fixtures/tiny-florence2` | model directory |
//! | `tasks` | `<OD>` | tasks of every camera, `;`-separated |
//! | `every` | `10ms` | period of every task (overload) |
//! | `fps`, `size` | `15`, `640x480` | test camera frame rate and size |
//! | `tokens` | `32` | `max_new_tokens` (greedy) |
//! | `wait_ms` | `40` | `max_wait_ms` |
//! | `threads` | `0` | intra-op threads (0: one per core) |
//! | `sharing` | `0` | iterations of the engine-level vision-sharing comparison (0: skip) |
//!
//! Per configuration: analysed frames (results) per second in total and per
//! camera (the slowest camera shows fairness), mean batch size, latency
//! from capture to the result reaching the sink (frame `captured_unix_ms`
//! against the wall clock) and queue time (dispatch − due), p50/p95/p99,
//! and jobs skipped as stale per second. A markdown table at the end and
//! one JSON line per configuration as it finishes.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use florence_edge::daemon::{Daemon, DaemonStats, ResultSink};
use florence_edge::florence2::{LoadOptions, Strategy, Task};
use florence_edge::pipeline::{Decoding, Pipeline, TaskRequest};
use florence_edge::preprocess::RgbFrame;
use florence_edge::publish::ResultPayload;
use florence_edge::runtime::Backend;
use serde::Serialize;

/// What the sink keeps of one result.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    camera: String,
    /// Capture to sink, milliseconds (wall clock).
    capture_to_result_ms: f64,
    queue_ms: f64,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Received>>>);

impl ResultSink for Collect {
    fn result(&mut self, r: &ResultPayload) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let rec = Received {
            at: Instant::now(),
            camera: r.camera.clone(),
            capture_to_result_ms: now_ms - r.frame.captured_unix_ms as f64,
            queue_ms: r.latency_ms.queue_ms,
        };
        if let Ok(mut v) = self.0.lock() {
            v.push(rec);
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    cameras: Vec<usize>,
    batch: Vec<usize>,
    seconds: f64,
    warmup: f64,
    model: PathBuf,
    tasks: Vec<String>,
    every: String,
    fps: u32,
    size: (u32, u32),
    tokens: usize,
    wait_ms: u64,
    threads: usize,
    sharing: usize,
}

fn list(v: &str, name: &str) -> Result<Vec<usize>, String> {
    v.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name}: {s:?} is not a positive integer (e.g. 1,2,4)"))
        })
        .collect()
}

fn number<T: std::str::FromStr>(v: &str, name: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a number"))
}

impl Settings {
    fn from_env_and_args() -> Result<Self, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut s = Settings {
            cameras: vec![1, 2, 4, 8],
            batch: vec![1, 2, 4, 8],
            seconds: 10.0,
            warmup: 3.0,
            model: root.join("tests/fixtures/tiny-florence2"),
            tasks: vec!["<OD>".into()],
            every: "10ms".into(),
            fps: 15,
            size: (640, 480),
            tokens: 32,
            wait_ms: 40,
            threads: 0,
            sharing: 0,
        };
        let names = [
            "cameras", "batch", "seconds", "warmup", "model", "tasks", "every", "fps", "size",
            "tokens", "wait_ms", "threads", "sharing",
        ];
        let mut given: Vec<(String, String)> = names
            .iter()
            .filter_map(|n| {
                std::env::var(format!("FE_BENCH_{}", n.to_ascii_uppercase()))
                    .ok()
                    .map(|v| (n.to_string(), v))
            })
            .collect();
        // `cargo bench` passes `--bench`; everything else is name=value.
        for arg in std::env::args().skip(1).filter(|a| a != "--bench") {
            let (k, v) = arg.split_once('=').ok_or_else(|| {
                format!(
                    "argument {arg:?}: expected name=value, names: {}",
                    names.join(", ")
                )
            })?;
            if !names.contains(&k) {
                return Err(format!(
                    "unknown setting {k:?}; allowed: {}",
                    names.join(", ")
                ));
            }
            given.push((k.to_string(), v.to_string()));
        }
        for (k, v) in given {
            match k.as_str() {
                "cameras" => s.cameras = list(&v, &k)?,
                "batch" => s.batch = list(&v, &k)?,
                "seconds" => s.seconds = number(&v, &k)?,
                "warmup" => s.warmup = number(&v, &k)?,
                "model" => {
                    let p = PathBuf::from(&v);
                    s.model = if p.is_absolute() { p } else { root.join(p) };
                }
                "tasks" => s.tasks = v.split(';').map(|t| t.trim().to_string()).collect(),
                "every" => s.every = v,
                "fps" => s.fps = number(&v, &k)?,
                "size" => {
                    let (w, h) = v
                        .split_once('x')
                        .ok_or_else(|| format!("size: {v:?}; expected WIDTHxHEIGHT"))?;
                    s.size = (number(w, &k)?, number(h, &k)?);
                }
                "tokens" => s.tokens = number(&v, &k)?,
                "wait_ms" => s.wait_ms = number(&v, &k)?,
                "threads" => s.threads = number(&v, &k)?,
                "sharing" => s.sharing = number(&v, &k)?,
                _ => unreachable!("names are checked above"),
            }
        }
        for t in &s.tasks {
            let task: Task = t
                .parse()
                .map_err(|_| format!("tasks: unknown task {t:?}"))?;
            if task.input() != florence_edge::florence2::TaskInput::None {
                return Err(format!("tasks: {t} needs an input; use tasks without one"));
            }
        }
        Ok(s)
    }

    fn config_text(&self, cameras: usize, max_batch: usize, spool: &Path) -> String {
        let tasks = self
            .tasks
            .iter()
            .map(|t| format!("{{ task = \"{t}\", every = \"{}\" }}", self.every))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            r#"
[node]
id = "bench"

[model]
dir = "{model}"
backend = "cpu"
threads = {threads}
max_batch = {max_batch}
max_wait_ms = {wait}
decoding = {{ strategy = "greedy", max_new_tokens = {tokens} }}

[mqtt]
url = "mqtt://127.0.0.1:9"
spool = {{ dir = "{spool}", max_messages = 100 }}
"#,
            model = self.model.display(),
            threads = self.threads,
            wait = self.wait_ms,
            tokens = self.tokens,
            spool = spool.display(),
        );
        // Different patterns, so the cameras' frames differ.
        let patterns = [
            "ball",
            "smpte",
            "snow",
            "colors",
            "pinwheel",
            "gradient",
            "circular",
            "zone-plate",
        ];
        for i in 0..cameras {
            text.push_str(&format!(
                "\n[[cameras]]\nid = \"cam{i}\"\nurl = \"test://?pattern={p}&width={w}&height={h}&fps={fps}\"\ntasks = [{tasks}]\n",
                p = patterns[i % patterns.len()],
                w = self.size.0,
                h = self.size.1,
                fps = self.fps,
            ));
        }
        text
    }
}

/// Value at quantile `q` (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Percentiles {
            p50: quantile(&v, 0.5),
            p95: quantile(&v, 0.95),
            p99: quantile(&v, 0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Measurement {
    cameras: usize,
    max_batch: usize,
    tasks: Vec<String>,
    window_s: f64,
    results: usize,
    results_per_s: f64,
    per_camera_per_s: BTreeMap<String, f64>,
    min_camera_per_s: f64,
    max_camera_per_s: f64,
    batches: u64,
    mean_batch: f64,
    capture_to_result_ms: Percentiles,
    queue_ms: Percentiles,
    stale_skips_per_s: f64,
    failed_jobs: u64,
}

fn stale_total(s: &DaemonStats) -> u64 {
    s.stale_skipped.values().sum()
}

fn measure(settings: &Settings, cameras: usize, max_batch: usize) -> Result<Measurement, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let text = settings.config_text(cameras, max_batch, &dir.path().join("spool"));
    let config = florence_edge::config::compile_str(
        Path::new("bench.toml"),
        &text,
        std::iter::empty(),
        Some("bench"),
    )
    .map_err(|errs| {
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let sink = Collect::default();
    let daemon =
        Daemon::start(config, Box::new(sink.clone())).map_err(|e| format!("daemon: {e}"))?;

    // Warm up: every camera has delivered a result, then `warmup` more.
    let patience = Instant::now() + Duration::from_secs(600);
    loop {
        let seen: std::collections::BTreeSet<String> = sink
            .0
            .lock()
            .map(|v| v.iter().map(|r| r.camera.clone()).collect())
            .unwrap_or_default();
        if seen.len() >= cameras {
            break;
        }
        if Instant::now() > patience {
            daemon.shutdown();
            let _ = daemon.wait();
            return Err(format!(
                "only {} of {cameras} cameras delivered a result in 600 s",
                seen.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs_f64(settings.warmup));

    let before = daemon.stats();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(settings.seconds));
    let after = daemon.stats();
    let t1 = Instant::now();
    daemon.shutdown();
    daemon.wait().map_err(|e| format!("daemon stop: {e}"))?;

    let window = t1.duration_since(t0).as_secs_f64();
    let got: Vec<Received> = sink
        .0
        .lock()
        .map(|v| {
            v.iter()
                .filter(|r| r.at >= t0 && r.at < t1)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut per_camera: BTreeMap<String, f64> =
        (0..cameras).map(|i| (format!("cam{i}"), 0.0)).collect();
    for r in &got {
        *per_camera.entry(r.camera.clone()).or_insert(0.0) += 1.0;
    }
    for v in per_camera.values_mut() {
        *v /= window;
    }
    let batches = after.batches - before.batches;
    let jobs = after.jobs - before.jobs;
    Ok(Measurement {
        cameras,
        max_batch,
        tasks: settings.tasks.clone(),
        window_s: window,
        results: got.len(),
        results_per_s: got.len() as f64 / window,
        min_camera_per_s: per_camera.values().copied().fold(f64::INFINITY, f64::min),
        max_camera_per_s: per_camera.values().copied().fold(0.0, f64::max),
        per_camera_per_s: per_camera,
        batches,
        mean_batch: if batches > 0 {
            jobs as f64 / batches as f64
        } else {
            0.0
        },
        capture_to_result_ms: Percentiles::of(got.iter().map(|r| r.capture_to_result_ms).collect()),
        queue_ms: Percentiles::of(got.iter().map(|r| r.queue_ms).collect()),
        stale_skips_per_s: (stale_total(&after) - stale_total(&before)) as f64 / window,
        failed_jobs: after.failed_jobs - before.failed_jobs,
    })
}

fn table(rows: &[Measurement]) {
    println!();
    println!("| cameras | max_batch | results/s | min/max per camera /s | mean batch | capture→result p50/p95/p99 ms | queue p50/p95/p99 ms | stale skips/s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in rows {
        let c = m.capture_to_result_ms;
        let q = m.queue_ms;
        println!(
            "| {} | {} | {:.2} | {:.2} / {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.1} |",
            m.cameras,
            m.max_batch,
            m.results_per_s,
            m.min_camera_per_s,
            m.max_camera_per_s,
            m.mean_batch,
            c.p50,
            c.p95,
            c.p99,
            q.p50,
            q.p95,
            q.p99,
            m.stale_skips_per_s
        );
    }
}

/// Pipeline-level before/after of the per-frame vision sharing: `<OD>` and
/// `<CAPTION>` on one frame in one batch, once with both items viewing the
/// same buffer (shared: one vision-encoder row) and once with the second
/// item on a copy of the frame (what every batch cost before sharing: two
/// rows). Same engine, same pixels, same tokens.
fn sharing(settings: &Settings) -> Result<(), String> {
    let mut opts = LoadOptions::new(&settings.model);
    opts.backend = Backend::Cpu;
    opts.intra_threads = settings.threads;
    let mut engine = Pipeline::load(&opts).map_err(|e| e.to_string())?;
    let (w, h) = (1920u32, 1080u32);
    let data = florence_edge::bench::synthetic_frame(w, h);
    let copy = data.clone();
    let frame = RgbFrame::packed(w, h, &data).map_err(|e| e.to_string())?;
    let other = RgbFrame::packed(w, h, &copy).map_err(|e| e.to_string())?;
    let od = TaskRequest::new(Task::ObjectDetection);
    let cap = TaskRequest::new(Task::Caption);
    let decoding = Decoding {
        strategy: Strategy::Greedy,
        max_new_tokens: settings.tokens,
    };
    println!("\nvision sharing, <OD> + <CAPTION> on one 1920x1080 frame, greedy {} tokens, {} iterations after 1 warm-up (medians, ms per batch):", settings.tokens, settings.sharing);
    println!("| items view | vision rows | preprocess | vision | encoder | decode | total |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, items) in [
        (
            "one buffer (shared)",
            [(frame, od.clone()), (frame, cap.clone())],
        ),
        (
            "two buffers (not shared)",
            [(frame, od.clone()), (other, cap.clone())],
        ),
    ] {
        let first = engine.run(&items, decoding).map_err(|e| e.to_string())?;
        let mut cols: [Vec<f64>; 5] = Default::default();
        let mut rows = 0;
        for _ in 0..settings.sharing.max(1) {
            let t = Instant::now();
            let out = engine.run(&items, decoding).map_err(|e| e.to_string())?;
            let total = t.elapsed().as_secs_f64() * 1e3;
            if out
                .iter()
                .zip(&first)
                .any(|(a, b)| a.token_ids != b.token_ids)
            {
                return Err("tokens changed between iterations".into());
            }
            let tm = out[0].timings;
            rows = tm.model.vision_images;
            for (c, v) in cols.iter_mut().zip([
                tm.preprocess_ms,
                tm.model.vision_ms,
                tm.model.encoder_ms,
                tm.model.decode_ms,
                total,
            ]) {
                c.push(v);
            }
        }
        let med: Vec<f64> = cols.into_iter().map(|c| Percentiles::of(c).p50).collect();
        println!(
            "| {label} | {rows} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            med[0], med[1], med[2], med[3], med[4]
        );
        println!(
            "{}",
            serde_json::json!({"sharing": label, "vision_rows": rows, "preprocess_ms": med[0], "vision_ms": med[1], "encoder_ms": med[2], "decode_ms": med[3], "total_ms": med[4]})
        );
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env_and_args()?;
    println!(
        "model {} | tasks {} every {} | test cameras {}x{} @ {} fps | greedy {} tokens | max_wait {} ms | threads {} | window {} s after {} s warm-up",
        settings.model.display(),
        settings.tasks.join(" "),
        settings.every,
        settings.size.0,
        settings.size.1,
        settings.fps,
        settings.tokens,
        settings.wait_ms,
        settings.threads,
        settings.seconds,
        settings.warmup
    );
    if settings.sharing > 0 {
        return sharing(&settings);
    }
    let mut rows = Vec::new();
    for &cameras in &settings.cameras {
        for &max_batch in &settings.batch {
            let m = measure(&settings, cameras, max_batch)?;
            println!(
                "{}",
                serde_json::to_string(&m).map_err(|e| format!("json: {e}"))?
            );
            rows.push(m);
        }
    }
    table(&rows);
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("daemon bench: {e}");
        std::process::exit(2);
    }
}
