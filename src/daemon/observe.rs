//! What operators see: `/metrics`, `/healthz`, `/readyz` and `/api/cameras`
//! rendered from the daemon's live state at request time. For `/metrics`
//! [`DaemonView`] is a prometheus-client `Collector`: a scrape reads the
//! counters the stages keep and encodes them (no registry metrics to keep in
//! step; see `crate::service::metrics`).
//!
//! Metric names follow Prometheus conventions (`florence_edge_` prefix,
//! `_total` counters, `_seconds` histograms); labels are camera ids and task
//! tokens from the configuration, both bounded by it. The list is in
//! docs/SERVICE.md.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::json;

use crate::ingest::CameraState;
use crate::publish::{PublisherStats, StageLatencies};
use crate::service::http::{Health, HttpSource};
use crate::service::metrics::{
    self, counter, gauge, gauges, histograms, Histogram, ProcessCollector, NO_LABELS,
};
use crate::service::Liveness;

use super::{CameraRegistry, DaemonStats};

/// Bounds of the batch-size histogram: powers of two up to the largest
/// `max_batch` allowed.
const BATCH_SIZE_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Latency per pipeline stage of one (camera, task), in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct StageHistograms {
    pub queue: Histogram,
    pub preprocess: Histogram,
    pub vision: Histogram,
    pub encoder: Histogram,
    pub decode: Histogram,
    pub postprocess: Histogram,
    /// Capture of the frame to the result handed to the sink.
    pub end_to_end: Histogram,
}

impl Default for StageHistograms {
    fn default() -> Self {
        let h = Histogram::latency_seconds;
        StageHistograms {
            queue: h(),
            preprocess: h(),
            vision: h(),
            encoder: h(),
            decode: h(),
            postprocess: h(),
            end_to_end: h(),
        }
    }
}

impl StageHistograms {
    pub fn observe(&mut self, ms: &StageLatencies, end_to_end_s: f64) {
        self.queue.observe(ms.queue_ms / 1e3);
        self.preprocess.observe(ms.preprocess_ms / 1e3);
        self.vision.observe(ms.vision_ms / 1e3);
        self.encoder.observe(ms.encoder_ms / 1e3);
        self.decode.observe(ms.decode_ms / 1e3);
        self.postprocess.observe(ms.postprocess_ms / 1e3);
        self.end_to_end.observe(end_to_end_s);
    }

    fn stages(&self) -> [(&'static str, &Histogram); 7] {
        [
            ("queue", &self.queue),
            ("preprocess", &self.preprocess),
            ("vision", &self.vision),
            ("encoder", &self.encoder),
            ("decode", &self.decode),
            ("postprocess", &self.postprocess),
            ("end_to_end", &self.end_to_end),
        ]
    }
}

/// Jobs per batch handed to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSizes(pub Histogram);

impl Default for BatchSizes {
    fn default() -> Self {
        BatchSizes(
            Histogram::new(&BATCH_SIZE_BUCKETS).unwrap_or_else(|_| Histogram::latency_seconds()),
        )
    }
}

/// The model as the metrics label it.
#[derive(Clone, Debug, Default)]
pub struct ModelLabels {
    pub id: String,
    pub backend: String,
    pub precision: String,
}

/// The daemon's state as the HTTP endpoint reads it.
#[derive(Clone)]
pub struct DaemonView {
    pub node: String,
    pub model: ModelLabels,
    pub stats: Arc<Mutex<DaemonStats>>,
    pub cameras: CameraRegistry,
    pub liveness: Arc<Liveness>,
    pub publisher: Option<Arc<PublisherStats>>,
    /// Where runtime changes go; `None` for a view without a daemon.
    pub control: Option<super::ControlHandle>,
    /// `[control] http`: whether the HTTP endpoint may change things.
    pub control_writes: bool,
}

/// Reads one counter from a camera's status.
type CameraCounter = fn(&crate::ingest::CameraStatus) -> u64;

const CAMERA_STATES: [(CameraState, &str); 6] = [
    (CameraState::Starting, "starting"),
    (CameraState::Streaming, "streaming"),
    (CameraState::Stalled, "stalled"),
    (CameraState::Reconnecting, "reconnecting"),
    (CameraState::Failed, "failed"),
    (CameraState::Ended, "ended"),
];

fn state_name(s: CameraState) -> &'static str {
    CAMERA_STATES
        .iter()
        .find(|(st, _)| *st == s)
        .map_or("unknown", |(_, n)| n)
}

impl DaemonView {
    fn stats(&self) -> DaemonStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The Prometheus exposition: this view and the process metrics, read
    /// now and encoded by prometheus-client.
    pub fn render_metrics(&self) -> String {
        metrics::encode([
            Box::new(self.clone()) as Box<dyn Collector>,
            Box::new(ProcessCollector),
        ])
    }

    fn camera_metrics(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let cameras: Vec<(String, super::CameraEntry)> = self
            .cameras
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let statuses: Vec<_> = cameras
            .iter()
            .map(|(id, e)| (id.as_str(), e.reader.status(), e.restarts))
            .collect();
        gauges(
            e,
            "florence_edge_camera_state",
            "1 for the camera's current state, 0 for the others.",
            statuses.iter().flat_map(|(id, s, _)| {
                CAMERA_STATES.iter().map(move |(state, name)| {
                    (
                        [("camera", *id), ("state", *name)],
                        u64::from(s.state == *state),
                    )
                })
            }),
        )?;
        let counters: [(&str, &str, CameraCounter); 5] = [
            (
                "florence_edge_camera_frames_in_total",
                "Frames decoded from the camera (since its pipeline started).",
                |s| s.frames_in,
            ),
            (
                "florence_edge_camera_frames_out_total",
                "Frames handed to the scheduler at the analysis rate.",
                |s| s.frames_out,
            ),
            (
                "florence_edge_camera_frames_dropped_total",
                "Frames at the analysis rate the daemon had no room for.",
                |s| s.frames_dropped,
            ),
            (
                "florence_edge_camera_decode_errors_total",
                "Decoder errors and warnings (corrupt data).",
                |s| s.decode_errors,
            ),
            (
                "florence_edge_camera_reconnects_total",
                "Pipelines rebuilt after a failure, stall or end of stream.",
                |s| s.reconnects,
            ),
        ];
        for (name, help, get) in counters {
            metrics::counters(
                e,
                name,
                help,
                statuses
                    .iter()
                    .map(|(id, s, _)| ([("camera", *id)], get(s))),
            )?;
        }
        gauges(
            e,
            "florence_edge_camera_fps_in",
            "Decoded frames per second over the last second or so.",
            statuses
                .iter()
                .map(|(id, s, _)| ([("camera", *id)], s.fps_in)),
        )?;
        metrics::counters(
            e,
            "florence_edge_camera_restarts_total",
            "Pipelines restarted by configuration reloads.",
            statuses
                .iter()
                .map(|(id, _, restarts)| ([("camera", *id)], *restarts)),
        )
    }

    fn task_metrics(&self, e: &mut DescriptorEncoder<'_>, st: &DaemonStats) -> fmt::Result {
        metrics::counters(
            e,
            "florence_edge_task_results_total",
            "Results handed on (to MQTT and/or stdout), per camera and task.",
            st.results.iter().map(|((camera, task), n)| {
                ([("camera", camera.as_str()), ("task", task.as_str())], *n)
            }),
        )?;
        metrics::counters(
            e,
            "florence_edge_task_skipped_total",
            "Jobs replaced by a newer frame before the model took them (inference slower than the \
             schedule).",
            st.stale_skipped.iter().map(|((camera, task), n)| {
                ([("camera", camera.as_str()), ("task", task.as_str())], *n)
            }),
        )?;
        metrics::counters(
            e,
            "florence_edge_task_unchanged_total",
            "Due runs of a `when = \"changed\"` task not made because the camera's picture had not \
             changed since its last run (model runs saved by scene-change gating).",
            st.unchanged_skipped.iter().map(|((camera, task), n)| {
                ([("camera", camera.as_str()), ("task", task.as_str())], *n)
            }),
        )?;
        metrics::counters(
            e,
            "florence_edge_job_errors_total",
            "Jobs that produced no result, per camera, task and reason (frame, prompt_too_long, \
             input, inference); the task is then paused, longer after each failure in a row.",
            st.job_errors.iter().map(|((camera, task, reason), n)| {
                (
                    [
                        ("camera", camera.as_str()),
                        ("task", task.as_str()),
                        ("reason", *reason),
                    ],
                    *n,
                )
            }),
        )?;
        metrics::counters(
            e,
            "florence_edge_task_backoffs_total",
            "Times a camera's task was paused after a failed job.",
            st.task_backoffs.iter().map(|((camera, task), n)| {
                ([("camera", camera.as_str()), ("task", task.as_str())], *n)
            }),
        )?;
        histograms(
            e,
            "florence_edge_stage_latency_seconds",
            "Latency per pipeline stage, per camera and task; end_to_end is frame capture to result.",
            st.latency.iter().flat_map(|((camera, task), h)| {
                h.stages().into_iter().map(move |(stage, hist)| {
                    (
                        [
                            ("camera", camera.as_str()),
                            ("task", task.as_str()),
                            ("stage", stage),
                        ],
                        hist,
                    )
                })
            }),
        )
    }

    fn batch_metrics(&self, e: &mut DescriptorEncoder<'_>, st: &DaemonStats) -> fmt::Result {
        counter(
            e,
            "florence_edge_batches_total",
            "Batches handed to the model.",
            st.batches,
        )?;
        histograms(
            e,
            "florence_edge_batch_size",
            "Jobs per batch handed to the model.",
            [(NO_LABELS, &st.batch_sizes.0)],
        )?;
        metrics::counters(
            e,
            "florence_edge_results_parsed_total",
            "Results post-processed from the generated ids (route=ids) or, when their word \
             pieces spell a location token, from the decoded text (route=text).",
            [
                ([("route", "ids")], st.postprocess_routes.ids as u64),
                (
                    [("route", "text")],
                    st.postprocess_routes.text_fallbacks as u64,
                ),
            ],
        )?;
        counter(
            e,
            "florence_edge_failed_jobs_total",
            "Jobs that produced no result (input refused, batch failed); each is logged.",
            st.failed_jobs,
        )?;
        gauge(
            e,
            "florence_edge_batcher_max_waiting",
            "Most jobs waiting for the model at once so far.",
            st.max_waiting as u64,
        )?;
        counter(
            e,
            "florence_edge_reloads_total",
            "Configuration reloads applied (SIGHUP).",
            st.reloads,
        )?;
        counter(
            e,
            "florence_edge_reloads_rejected_total",
            "Reloads rejected because the new file was invalid; the running configuration stayed.",
            st.reloads_rejected,
        )?;
        counter(
            e,
            "florence_edge_control_changes_total",
            "Runtime changes (HTTP API, MQTT commands) applied.",
            st.control_changes,
        )?;
        counter(
            e,
            "florence_edge_control_refused_total",
            "Runtime changes refused (invalid, unknown camera or task, malformed); nothing of them was applied.",
            st.control_refused,
        )?;
        gauge(
            e,
            "florence_edge_config_revision",
            "The configuration revision in effect; results carry it as `revision`.",
            st.config_revision,
        )?;
        counter(
            e,
            "florence_edge_reload_camera_failures_total",
            "Cameras a reload could not start (each is named in the reload's log line).",
            st.reload_camera_failures,
        )?;
        counter(
            e,
            "florence_edge_jobs_dropped_by_reload_total",
            "Waiting jobs of cameras that a reload removed or restarted.",
            st.dropped_by_reload,
        )?;
        counter(
            e,
            "florence_edge_inference_batches_done_total",
            "Batches the inference thread finished (successfully or not).",
            self.liveness.batches_done(),
        )
    }

    /// Per camera: its state and counters, where it streams from (without
    /// credentials) and its tasks.
    pub fn cameras_json(&self) -> serde_json::Value {
        let cameras: BTreeMap<String, super::CameraEntry> =
            self.cameras.lock().map(|c| c.clone()).unwrap_or_default();
        let list: Vec<serde_json::Value> = cameras
            .iter()
            .map(|(id, e)| {
                let s = e.reader.status();
                json!({
                    "id": id,
                    "state": state_name(s.state),
                    "url": s.url,
                    "decoder": s.decoder,
                    "fps_in": s.fps_in,
                    "fps_out": s.fps_out,
                    "frames_in": s.frames_in,
                    "frames_out": s.frames_out,
                    "frames_dropped": s.frames_dropped,
                    "decode_errors": s.decode_errors,
                    "reconnects": s.reconnects,
                    "attempt": s.attempt,
                    "last_error": s.last_error,
                    "state_since_unix_ms": s.since_unix_ms,
                    "started_unix_ms": e.started_unix_ms,
                    "restarts": e.restarts,
                    "tasks": e.tasks,
                })
            })
            .collect();
        json!({ "node": self.node, "cameras": list })
    }
}

fn mqtt_metrics(e: &mut DescriptorEncoder<'_>, p: &PublisherStats) -> fmt::Result {
    let s = p.snapshot();
    gauge(
        e,
        "florence_edge_mqtt_connected",
        "1 while the broker connection is up.",
        u64::from(s.connected),
    )?;
    let counters: [(&str, &str, u64); 10] = [
        (
            "florence_edge_mqtt_connects_total",
            "Successful broker connections.",
            s.connects,
        ),
        (
            "florence_edge_mqtt_connection_failures_total",
            "Failed connection attempts and lost connections.",
            s.connection_failures,
        ),
        (
            "florence_edge_mqtt_takeovers_suspected_total",
            "Streaks of connections the broker dropped right after accepting them (a duplicate client id, most likely).",
            s.takeovers_suspected,
        ),
        (
            "florence_edge_mqtt_results_published_total",
            "Results the broker acknowledged (QoS 1/2) or that were written (QoS 0).",
            s.results_published,
        ),
        (
            "florence_edge_mqtt_statuses_published_total",
            "Camera statuses published.",
            s.statuses_published,
        ),
        (
            "florence_edge_mqtt_publish_errors_total",
            "Publishes refused by the client and results that could not be serialized.",
            s.publish_errors,
        ),
        (
            "florence_edge_mqtt_queue_full_drops_total",
            "Results dropped because the queue to the publisher was full.",
            s.queue_full_drops,
        ),
        (
            "florence_edge_mqtt_results_spooled_total",
            "Results written to the on-disk spool.",
            s.results_spooled,
        ),
        (
            "florence_edge_mqtt_spool_overflow_drops_total",
            "Oldest spooled results dropped to stay within spool.max_messages.",
            s.spool_overflow_drops,
        ),
        (
            "florence_edge_mqtt_spool_write_errors_total",
            "Results lost because the spool could not be written.",
            s.spool_write_errors,
        ),
    ];
    for (name, help, v) in counters {
        counter(e, name, help, v)?;
    }
    gauge(
        e,
        "florence_edge_mqtt_spool_messages",
        "Messages waiting in the spool.",
        s.spool_messages,
    )?;
    gauge(
        e,
        "florence_edge_mqtt_spool_oldest_age_seconds",
        "Age of the oldest spooled message (0 when the spool is empty).",
        p.spool_oldest_age_secs(),
    )
}

/// Collector style: a scrape reads the live counters through this view (a
/// clone shares them), nothing is copied into registry metrics.
impl Collector for DaemonView {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut encoder;
        gauges(
            e,
            "florence_edge_info",
            "The node, model and backend of this daemon (value 1).",
            [(
                [
                    ("node", self.node.as_str()),
                    ("model", self.model.id.as_str()),
                    ("backend", self.model.backend.as_str()),
                    ("precision", self.model.precision.as_str()),
                    ("version", env!("CARGO_PKG_VERSION")),
                ],
                1u64,
            )],
        )?;
        let now = Instant::now();
        gauge(
            e,
            "florence_edge_healthy",
            "1 while the pipeline makes progress (what /healthz and the systemd watchdog use).",
            u64::from(self.liveness.health(now).ok),
        )?;
        gauge(
            e,
            "florence_edge_ready",
            "1 once the model is loaded and the cameras started, 0 while starting or stopping.",
            u64::from(self.liveness.readiness(now).ok),
        )?;
        self.camera_metrics(e)?;
        let st = self.stats();
        self.task_metrics(e, &st)?;
        self.batch_metrics(e, &st)?;
        if let Some(p) = &self.publisher {
            mqtt_metrics(e, p)?;
        }
        Ok(())
    }
}

/// What a collector must be; the counters behind the view are not listed.
impl fmt::Debug for DaemonView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonView")
            .field("node", &self.node)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl HttpSource for DaemonView {
    fn metrics(&self) -> String {
        self.render_metrics()
    }

    fn health(&self) -> Health {
        let v = self.liveness.health(Instant::now());
        let detail =
            json!({ "status": if v.ok { "ok" } else { "wedged" }, "problems": v.problems });
        if v.ok {
            Health::ok(detail)
        } else {
            Health::failing(detail)
        }
    }

    fn readiness(&self) -> Health {
        let v = self.liveness.readiness(Instant::now());
        let mqtt = self.publisher.as_ref().map(|p| p.is_connected());
        let detail = json!({
            "status": if v.ok { "ready" } else { "not ready" },
            "problems": v.problems,
            // Informational: results are spooled while the broker is away,
            // so a missing broker does not make the daemon unready.
            "mqtt_connected": mqtt,
        });
        if v.ok {
            Health::ok(detail)
        } else {
            Health::failing(detail)
        }
    }

    fn cameras(&self) -> serde_json::Value {
        self.cameras_json()
    }

    fn control(&self, request: crate::control::ControlRequest) -> crate::control::ControlReply {
        use crate::control::{ControlReply, Controller};
        let Some(control) = &self.control else {
            return ControlReply::error(404, crate::service::http::NO_CONTROL);
        };
        if request.is_change() && !self.control_writes {
            return ControlReply::error(
                403,
                "changes over HTTP are switched off ([control] http = false); reads are served",
            );
        }
        control.control(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::StageLatencies;

    /// A daemon without cameras, with results, latencies and a batch.
    fn view() -> DaemonView {
        let mut st = DaemonStats {
            batches: 3,
            ..DaemonStats::default()
        };
        let key = ("door".to_owned(), "<OD>".to_owned());
        st.results.insert(key.clone(), 5);
        let mut h = StageHistograms::default();
        h.observe(
            &StageLatencies {
                queue_ms: 2.0,
                preprocess_ms: 30.0,
                vision_ms: 700.0,
                encoder_ms: 0.5,
                decode_ms: 12000.0,
                postprocess_ms: 0.01,
            },
            1.25,
        );
        st.latency.insert(key, h);
        st.batch_sizes.0.observe(3.0);
        DaemonView {
            node: "n1".into(),
            model: ModelLabels {
                id: "m".into(),
                backend: "cpu".into(),
                precision: "fp32".into(),
            },
            stats: Arc::new(Mutex::new(st)),
            cameras: CameraRegistry::default(),
            liveness: Liveness::new(std::time::Duration::from_secs(5)),
            publisher: Some(Arc::new(PublisherStats::default())),
            control: None,
            control_writes: false,
        }
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn a_scrape_encodes_the_daemon_state() {
        let view = view();
        let text = view.render_metrics();
        let version = env!("CARGO_PKG_VERSION");
        let info = format!(
            "florence_edge_info{{node=\"n1\",model=\"m\",backend=\"cpu\",precision=\"fp32\",\
             version=\"{version}\"}} 1"
        );
        let stage = "florence_edge_stage_latency_seconds";
        let decode = "camera=\"door\",task=\"<OD>\",stage=\"decode\"";
        for line in [
            info.as_str(),
            "# HELP florence_edge_task_results_total Results handed on (to MQTT and/or stdout), \
             per camera and task.",
            "# TYPE florence_edge_task_results_total counter",
            "florence_edge_task_results_total{camera=\"door\",task=\"<OD>\"} 5",
            "# TYPE florence_edge_stage_latency_seconds histogram",
            &format!("{stage}_bucket{{{decode},le=\"10\"}} 0"),
            &format!("{stage}_bucket{{{decode},le=\"30\"}} 1"),
            &format!("{stage}_bucket{{{decode},le=\"+Inf\"}} 1"),
            &format!("{stage}_sum{{{decode}}} 12.0"),
            &format!("{stage}_count{{{decode}}} 1"),
            "florence_edge_batches_total 3",
            "florence_edge_batch_size_bucket{le=\"2\"} 0",
            "florence_edge_batch_size_bucket{le=\"4\"} 1",
            "florence_edge_batch_size_bucket{le=\"+Inf\"} 1",
            "florence_edge_results_parsed_total{route=\"ids\"} 0",
            "florence_edge_results_parsed_total{route=\"text\"} 0",
            "florence_edge_ready 0",
            "# TYPE florence_edge_mqtt_connected gauge",
            "florence_edge_mqtt_connected 0",
            "florence_edge_mqtt_spool_write_errors_total 0",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(has_line(&text, line), "{line}\nin\n{text}");
        }
        // No cameras: their families are left out, HELP and TYPE included.
        assert!(!text.contains("florence_edge_camera_"), "{text}");
        assert!(!text.contains("florence_edge_task_skipped_total"), "{text}");
    }

    #[test]
    fn a_scrape_reads_the_live_counters() {
        let view = view();
        let before = view.render_metrics();
        assert!(has_line(&before, "florence_edge_mqtt_connects_total 0"));
        view.stats
            .lock()
            .expect("stats")
            .results
            .insert(("door".into(), "<OD>".into()), 6);
        let publisher = view.publisher.clone().expect("publisher");
        publisher.set_connected(true);
        let after = view.render_metrics();
        for line in [
            "florence_edge_task_results_total{camera=\"door\",task=\"<OD>\"} 6",
            "florence_edge_mqtt_connected 1",
            "florence_edge_mqtt_connects_total 1",
        ] {
            assert!(has_line(&after, line), "{line}\nin\n{after}");
        }
    }

    #[test]
    fn the_exposition_is_well_formed() {
        let text = view().render_metrics();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        assert_eq!(
            scrape
                .samples
                .iter()
                .find(|s| s.metric == "florence_edge_batches_total")
                .map(|s| s.value.clone()),
            Some(prometheus_parse::Value::Counter(3.0))
        );
        // One HELP and one TYPE per family, HELP first; no series twice.
        let mut families = Vec::new();
        let mut series = std::collections::HashSet::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().unwrap_or_default();
                let kind = lines.next().unwrap_or_default();
                assert!(kind.starts_with(&format!("# TYPE {name} ")), "{kind}");
                assert!(!families.contains(&name), "{name} twice in\n{text}");
                families.push(name);
            } else {
                let key = line.rsplit_once(' ').map(|(k, _)| k).unwrap_or(line);
                assert!(series.insert(key), "{key} twice");
            }
        }
        assert!(families.len() > 20, "{families:?}");
    }
}
