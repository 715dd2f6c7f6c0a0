//! `/metrics`: the Prometheus text exposition (format 0.0.4), encoded by the
//! `prometheus-client` crate.
//!
//! Design: collector style over live state. The counters live where the work
//! happens and nothing copies them into registry metrics: atomics in the
//! camera supervisors (`CameraCounters`, read through `StatusReader`) and in
//! the publisher (`PublisherStats`), the daemon's `DaemonStats` behind its
//! mutex, [`super::Liveness`]. Each scrape builds a fresh [`Registry`] of
//! [`Collector`]s (the daemon's `DaemonView`, [`ProcessCollector`]) which
//! read those values at that moment and write them through the crate's
//! encoder ([`encode`]). So `/metrics` cannot disagree with `/api/cameras`
//! or the logs, and there is no second set of counters to keep in step.
//!
//! The crate writes the exposition: HELP and TYPE lines, escaping, numbers,
//! the `_total` suffix of counters, the cumulative `_bucket` series with
//! `le="+Inf"`, `_sum` and `_count`. What stays here is ours: [`Histogram`]
//! (the fixed buckets the stages record into behind the stats lock; a
//! collector reads it as it is), [`counters`], [`gauges`] and
//! [`histograms`], which write one family from `(labels, value)` pairs and
//! leave a family without samples out, and the process metrics from `/proc`.
//!
//! The format is Prometheus text 0.0.4 ([`CONTENT_TYPE`]), not OpenMetrics:
//! the served names and the HELP and TYPE lines stay those dashboards and
//! alerts use (OpenMetrics names a counter's family without `_total` and ends
//! with `# EOF`).
//!
//! Latencies are exported in seconds (Prometheus' base unit convention); see
//! [`Histogram::latency_seconds`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`encode`] writes:
/// `text/plain; version=0.0.4; charset=utf-8`.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Problems with histogram bounds or while reading `/proc`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "invalid histogram bucket bounds {bounds:?}: at least one bound, all finite, \
         strictly increasing (+Inf is added automatically)"
    )]
    InvalidBuckets { bounds: Vec<f64> },
    #[error("cannot read {path}: {reason}")]
    ProcRead { path: &'static str, reason: String },
    #[error("cannot parse {path}: {what}")]
    ProcParse {
        path: &'static str,
        what: &'static str,
    },
}

/// The label set of a series without labels.
pub const NO_LABELS: [(&str, &str); 0] = [];

/// What the collectors read now, as Prometheus text 0.0.4 ([`CONTENT_TYPE`]).
pub fn encode(collectors: impl IntoIterator<Item = Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for collector in collectors {
        registry.register_collector(collector);
    }
    let mut text = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).is_err() {
        // Writing into a String cannot fail, and our collectors only pass on
        // the encoder's errors: this is a bug, and must not take the daemon down.
        tracing::error!(
            "Encoding /metrics failed (a bug in florence-edge); the answer is cut short."
        );
    }
    text
}

/// Writes a counter family. `name` is the served name, ending in `_total`;
/// the encoder adds that suffix itself, so it is taken off here. A name
/// without it is a bug: the family is left out and the problem logged.
pub fn counters<L, V>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeCounterValue,
{
    let Some(family) = name.strip_suffix("_total") else {
        tracing::error!(
            name,
            "Counter without the _total suffix left out of /metrics (a bug in florence-edge)."
        );
        return Ok(());
    };
    write_family(
        encoder,
        family,
        help,
        MetricType::Counter,
        samples,
        |m, v| m.encode_counter::<NoLabelSet, V, u64>(v, None),
    )
}

/// Writes a gauge family.
pub fn gauges<L, V>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeGaugeValue,
{
    write_family(encoder, name, help, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(v)
    })
}

/// Writes a histogram family: per label set its `_bucket` series (the
/// label `le` is added), `_sum` and `_count`.
pub fn histograms<'h, L>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
{
    write_family(
        encoder,
        name,
        help,
        MetricType::Histogram,
        samples,
        |m, h| m.encode_histogram::<NoLabelSet>(h.sum(), h.count(), &h.buckets(), None),
    )
}

/// One counter without labels.
pub fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    counters(encoder, name, help, [(NO_LABELS, value)])
}

/// One gauge without labels.
pub fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    gauges(encoder, name, help, [(NO_LABELS, value)])
}

/// HELP and TYPE once, then one series per sample; nothing at all without
/// samples (Prometheus would see a family that does not exist).
fn write_family<L, V>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
    mut write: impl FnMut(&mut MetricEncoder<'_>, &V) -> fmt::Result,
) -> fmt::Result
where
    L: EncodeLabelSet,
{
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        write(&mut family.encode_family(&labels)?, &value)?;
    }
    Ok(())
}

/// Bucket bounds in seconds for pipeline stage latencies: 1 ms (a cached
/// preprocessing step) to 60 s (a long caption on a Jetson's CPU fallback).
pub const LATENCY_SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with fixed bucket bounds, kept by the stage that measures
/// (behind the daemon's stats lock, so no atomics) and read by a collector at
/// scrape time (the bounds are shared, a clone copies one `u64` per bucket).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Observations per bucket (not cumulative); the last one counts values
    /// above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Bounds must be finite and strictly increasing; the `+Inf` bucket is
    /// implicit.
    pub fn new(bounds: &[f64]) -> Result<Self, MetricsError> {
        let valid = !bounds.is_empty()
            && bounds.iter().all(|b| b.is_finite())
            && bounds.windows(2).all(|w| w[0] < w[1]);
        if !valid {
            return Err(MetricsError::InvalidBuckets {
                bounds: bounds.to_vec(),
            });
        }
        Ok(Self::with_valid_bounds(bounds))
    }

    /// Stage latencies in seconds, buckets [`LATENCY_SECONDS_BUCKETS`]; feed it
    /// with [`Histogram::observe_duration`].
    pub fn latency_seconds() -> Self {
        Self::with_valid_bounds(&LATENCY_SECONDS_BUCKETS)
    }

    fn with_valid_bounds(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.into(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts `v` in the first bucket whose bound is ≥ `v` (Prometheus' `le`).
    /// NaN is ignored: one bad measurement would turn `_sum` into NaN for the
    /// rest of the process' life.
    pub fn observe(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        let bucket = self.bounds.partition_point(|bound| *bound < v);
        self.counts[bucket] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Observes a duration in seconds.
    pub fn observe_duration(&mut self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(upper bound, observations in that bucket)`, not cumulative, ending
    /// with `(+Inf, observations above every bound)`: what prometheus-client's
    /// encoder takes (it accumulates them into the `_bucket` series).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// The standard process metrics (the names the Go and Rust Prometheus
/// clients use, so existing dashboards work): resident and virtual memory,
/// open and maximum file descriptors, threads, CPU time and start time, read
/// from `/proc/self` at each scrape. A file that cannot be read or parsed
/// leaves its metrics out (logged at DEBUG); elsewhere than Linux there are
/// none.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        #[cfg(target_os = "linux")]
        procfs::encode(&mut encoder)?;
        #[cfg(not(target_os = "linux"))]
        let _ = &mut encoder;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod procfs {
    //! Parsers are pure functions of the file text so they can be tested on
    //! fixed examples; `encode` does the reading.

    use std::fmt;

    use prometheus_client::encoding::DescriptorEncoder;

    use super::{counter, gauge, MetricsError};

    /// Clock ticks per second of the times in `/proc/<pid>/stat`. The kernel
    /// reports them in USER_HZ, which is 100 on every architecture Linux
    /// supports (Prometheus' procfs library makes the same assumption).
    const USER_HZ: f64 = 100.0;

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) struct Stat {
        /// utime + stime, in clock ticks.
        pub cpu_ticks: u64,
        /// Start time after boot, in clock ticks.
        pub start_ticks: u64,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct Status {
        pub resident_bytes: Option<u64>,
        pub virtual_bytes: Option<u64>,
        pub threads: Option<u64>,
    }

    const STAT: &str = "/proc/self/stat";
    const STATUS: &str = "/proc/self/status";
    const SYSTEM_STAT: &str = "/proc/stat";
    const LIMITS: &str = "/proc/self/limits";
    const FD_DIR: &str = "/proc/self/fd";

    pub(super) fn encode(e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        match read(STATUS).map(|text| parse_status(&text)) {
            Ok(status) => {
                if let Some(v) = status.resident_bytes {
                    gauge(
                        e,
                        "process_resident_memory_bytes",
                        "Resident memory size in bytes.",
                        v,
                    )?;
                }
                if let Some(v) = status.virtual_bytes {
                    gauge(
                        e,
                        "process_virtual_memory_bytes",
                        "Virtual memory size in bytes.",
                        v,
                    )?;
                }
                if let Some(v) = status.threads {
                    gauge(
                        e,
                        "process_threads",
                        "Number of OS threads in the process.",
                        v,
                    )?;
                }
            }
            Err(error) => skipped(&error),
        }

        match std::fs::read_dir(FD_DIR) {
            Ok(entries) => gauge(
                e,
                "process_open_fds",
                "Number of open file descriptors.",
                entries.count(),
            )?,
            Err(error) => skipped(&MetricsError::ProcRead {
                path: FD_DIR,
                reason: error.to_string(),
            }),
        }

        match read(LIMITS).and_then(|text| parse_max_open_files(&text)) {
            Ok(Some(max)) => gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max,
            )?,
            // "unlimited": nothing meaningful to export.
            Ok(None) => {}
            Err(error) => skipped(&error),
        }

        let stat = match read(STAT).and_then(|text| parse_stat(&text)) {
            Ok(stat) => stat,
            Err(error) => {
                skipped(&error);
                return Ok(());
            }
        };
        counter(
            e,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            stat.cpu_ticks as f64 / USER_HZ,
        )?;
        match read(SYSTEM_STAT).and_then(|text| parse_boot_time(&text)) {
            Ok(boot) => gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.start_ticks as f64 / USER_HZ,
            )?,
            Err(error) => skipped(&error),
        }
        Ok(())
    }

    fn read(path: &'static str) -> Result<String, MetricsError> {
        std::fs::read_to_string(path).map_err(|e| MetricsError::ProcRead {
            path,
            reason: e.to_string(),
        })
    }

    fn skipped(error: &MetricsError) {
        tracing::debug!(%error, "Process metrics from this file left out of the exposition.");
    }

    /// `/proc/self/stat`: the command name (field 2) is in parentheses and may
    /// itself contain spaces and parentheses, so fields are counted after the
    /// last `)`.
    pub(super) fn parse_stat(text: &str) -> Result<Stat, MetricsError> {
        let bad = |what| MetricsError::ProcParse { path: STAT, what };
        let rest = text
            .rfind(')')
            .map(|i| &text[i + 1..])
            .ok_or(bad("no ')' after the command name"))?;
        // Fields after the name, counted from 3 as in proc(5).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize, what| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or(bad(what))
        };
        Ok(Stat {
            cpu_ticks: field(14, "utime (field 14)")? + field(15, "stime (field 15)")?,
            start_ticks: field(22, "starttime (field 22)")?,
        })
    }

    /// `/proc/self/status`: `VmRSS:`/`VmSize:` in kB (kernel threads have
    /// neither) and `Threads:`. Reading sizes here instead of pages from
    /// `stat` avoids needing the page size (64 KiB on some arm64 kernels).
    pub(super) fn parse_status(text: &str) -> Status {
        let value = |key: &str| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Status {
            resident_bytes: value("VmRSS").map(|kb| kb * 1024),
            virtual_bytes: value("VmSize").map(|kb| kb * 1024),
            threads: value("Threads"),
        }
    }

    /// `btime` of `/proc/stat`: boot time, seconds since the Unix epoch.
    pub(super) fn parse_boot_time(text: &str) -> Result<u64, MetricsError> {
        text.lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            .ok_or(MetricsError::ProcParse {
                path: SYSTEM_STAT,
                what: "no btime line",
            })
    }

    /// The soft limit of `Max open files` in `/proc/self/limits`; `None` when
    /// unlimited.
    pub(super) fn parse_max_open_files(text: &str) -> Result<Option<u64>, MetricsError> {
        let bad = MetricsError::ProcParse {
            path: LIMITS,
            what: "no numeric \"Max open files\" soft limit",
        };
        let soft = text
            .lines()
            .find_map(|line| line.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or(bad.clone())?;
        if soft == "unlimited" {
            return Ok(None);
        }
        soft.parse::<u64>().map(Some).map_err(|_| bad)
    }
}

#[cfg(test)]
mod tests;
