//! Prometheus text exposition, format 0.0.4 — what `/metrics` answers.
//!
//! Collector style: nothing is registered globally. At scrape time the daemon
//! reads snapshots of its state (camera supervisors, scheduler, publisher stats)
//! and writes them into a fresh [`Exposition`]; the exposition is then turned
//! into text with [`Exposition::finish`]. Counters therefore live where the work
//! happens (plain atomics), and the metrics endpoint can never disagree with
//! what the daemon reports elsewhere.
//!
//! The writer groups samples by family: a family gets its `# HELP` and `# TYPE`
//! lines once, followed by all its samples, however the calls are interleaved
//! (Prometheus rejects a scrape in which a family's samples are split or its
//! TYPE repeats).
//!
//! Names are chosen by code, not by users, so an invalid name is a programming
//! error. It must not take the daemon down, though: the offending family or
//! sample is left out, the problem is logged at ERROR and kept in
//! [`Exposition::problems`], where tests assert that none occurred.
//!
//! Latencies are exported in seconds (Prometheus' base unit convention); see
//! [`Histogram::latency_seconds`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Problems found while writing an exposition or reading `/proc`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("invalid metric name {name:?}: a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName { name: String },
    #[error(
        "invalid label name {label:?} on metric {metric}: a label name must match \
         [a-zA-Z_][a-zA-Z0-9_]* and must not start with \"__\""
    )]
    InvalidLabelName { metric: String, label: String },
    #[error("label {label:?} is given twice on one sample of metric {metric}")]
    DuplicateLabel { metric: String, label: String },
    #[error("label \"le\" on histogram {metric} is reserved for the bucket bounds")]
    ReservedLabel { metric: String },
    #[error("counter {name} must have a name ending in \"_total\"")]
    CounterWithoutTotal { name: String },
    #[error(
        "metric family {name} is declared again with a different type or help text \
         (first {first}, now {second}); a family has one type and one help text"
    )]
    FamilyRedeclared {
        name: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("metric name {name} of family {family} is already used by family {owner}")]
    NameTaken {
        name: String,
        family: String,
        owner: String,
    },
    #[error("metric {metric} has two samples with the same labels {{{labels}}}")]
    DuplicateSample { metric: String, labels: String },
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

/// The type of a family of plain samples (histograms have their own builder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the daemon restarts); name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
}

impl FamilyKind {
    fn as_str(self) -> &'static str {
        match self {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge => "gauge",
            FamilyKind::Histogram => "histogram",
        }
    }
}

impl From<Kind> for FamilyKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Counter => FamilyKind::Counter,
            Kind::Gauge => FamilyKind::Gauge,
        }
    }
}

/// A sample value. Integers are written exactly (a `u64` counter above 2^53
/// would lose digits as an `f64`); floats as Prometheus parses them, with
/// `+Inf`, `-Inf` and `NaN`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SampleValue {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for SampleValue {
    fn from(v: u64) -> Self {
        SampleValue::Unsigned(v)
    }
}
impl From<u32> for SampleValue {
    fn from(v: u32) -> Self {
        SampleValue::Unsigned(u64::from(v))
    }
}
impl From<usize> for SampleValue {
    fn from(v: usize) -> Self {
        SampleValue::Unsigned(v as u64)
    }
}
impl From<i64> for SampleValue {
    fn from(v: i64) -> Self {
        SampleValue::Signed(v)
    }
}
impl From<f64> for SampleValue {
    fn from(v: f64) -> Self {
        SampleValue::Float(v)
    }
}
impl From<bool> for SampleValue {
    /// Gauges of a state (`connected`, `up`) are 1 or 0.
    fn from(v: bool) -> Self {
        SampleValue::Unsigned(u64::from(v))
    }
}

/// One family's text, collected until [`Exposition::finish`].
#[derive(Debug)]
struct FamilyText {
    name: String,
    help: String,
    kind: FamilyKind,
    samples: String,
    /// Rendered label sets seen so far, to refuse duplicate series.
    label_sets: HashSet<String>,
}

/// A Prometheus text exposition being written (a `String` builder).
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<FamilyText>,
    /// Family name → index in `families`.
    by_family: HashMap<String, usize>,
    /// Every metric name a family writes (a histogram writes three) → family name.
    taken: HashMap<String, String>,
    problems: Vec<MetricsError>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (or continues) a counter or gauge family; add samples with
    /// [`Family::sample`].
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        let index = self.declare(name, help, kind.into());
        Family { exp: self, index }
    }

    /// Starts (or continues) a histogram family; add histograms with
    /// [`HistogramFamily::sample`].
    pub fn histogram_family(&mut self, name: &str, help: &str) -> HistogramFamily<'_> {
        let index = self.declare(name, help, FamilyKind::Histogram);
        HistogramFamily { exp: self, index }
    }

    /// One counter sample; the family's HELP/TYPE are written once however
    /// often this is called.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<SampleValue>,
    ) {
        self.family(name, help, Kind::Counter).sample(labels, value);
    }

    /// One gauge sample.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<SampleValue>,
    ) {
        self.family(name, help, Kind::Gauge).sample(labels, value);
    }

    /// One histogram (its `_bucket`, `_sum` and `_count` series).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) {
        self.histogram_family(name, help).sample(labels, histogram);
    }

    /// Problems met so far (invalid names, duplicates); the offending families
    /// or samples are not in the output.
    pub fn problems(&self) -> &[MetricsError] {
        &self.problems
    }

    /// The exposition text: families in the order they were first declared,
    /// families without samples left out.
    pub fn finish(self) -> String {
        let mut out = String::with_capacity(
            self.families
                .iter()
                .map(|f| f.samples.len() + f.help.len() + 2 * f.name.len() + 32)
                .sum(),
        );
        for family in self.families.iter().filter(|f| !f.samples.is_empty()) {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            out.push(' ');
            escape_help(&family.help, &mut out);
            out.push('\n');
            out.push_str("# TYPE ");
            out.push_str(&family.name);
            out.push(' ');
            out.push_str(family.kind.as_str());
            out.push('\n');
            out.push_str(&family.samples);
        }
        out
    }

    fn problem(&mut self, problem: MetricsError) {
        tracing::error!(%problem, "Metric left out of the exposition (a bug in florence-edge).");
        self.problems.push(problem);
    }

    /// Index of the family, declaring it if new; `None` if it cannot be written.
    fn declare(&mut self, name: &str, help: &str, kind: FamilyKind) -> Option<usize> {
        if let Some(&index) = self.by_family.get(name) {
            let family = &self.families[index];
            if family.kind != kind || family.help != help {
                let first = family.kind.as_str();
                self.problem(MetricsError::FamilyRedeclared {
                    name: name.to_owned(),
                    first,
                    second: kind.as_str(),
                });
                return None;
            }
            return Some(index);
        }
        if !is_metric_name(name) {
            self.problem(MetricsError::InvalidMetricName {
                name: name.to_owned(),
            });
            return None;
        }
        if kind == FamilyKind::Counter && !name.ends_with("_total") {
            self.problem(MetricsError::CounterWithoutTotal {
                name: name.to_owned(),
            });
            return None;
        }
        let mut names = vec![name.to_owned()];
        if kind == FamilyKind::Histogram {
            names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
        }
        if let Some((taken, owner)) = names
            .iter()
            .find_map(|n| self.taken.get(n).map(|owner| (n.clone(), owner.clone())))
        {
            self.problem(MetricsError::NameTaken {
                name: taken,
                family: name.to_owned(),
                owner,
            });
            return None;
        }
        for n in names {
            self.taken.insert(n, name.to_owned());
        }
        let index = self.families.len();
        self.families.push(FamilyText {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: String::new(),
            label_sets: HashSet::new(),
        });
        self.by_family.insert(name.to_owned(), index);
        Some(index)
    }

    /// Renders `{a="x",b="y"}` (empty for no labels) after validating the
    /// names, and refuses a label set the family already has.
    fn label_set(&mut self, index: usize, labels: &[(&str, &str)]) -> Option<String> {
        let family = &self.families[index];
        let mut problem = None;
        for (i, (label, _)) in labels.iter().enumerate() {
            if !is_label_name(label) {
                problem = Some(MetricsError::InvalidLabelName {
                    metric: family.name.clone(),
                    label: (*label).to_owned(),
                });
            } else if family.kind == FamilyKind::Histogram && *label == "le" {
                problem = Some(MetricsError::ReservedLabel {
                    metric: family.name.clone(),
                });
            } else if labels[..i].iter().any(|(other, _)| other == label) {
                problem = Some(MetricsError::DuplicateLabel {
                    metric: family.name.clone(),
                    label: (*label).to_owned(),
                });
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(problem) = problem {
            self.problem(problem);
            return None;
        }
        let mut rendered = String::new();
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            rendered.push_str(label);
            rendered.push_str("=\"");
            escape_label_value(value, &mut rendered);
            rendered.push('"');
        }
        if !self.families[index].label_sets.insert(rendered.clone()) {
            let metric = self.families[index].name.clone();
            self.problem(MetricsError::DuplicateSample {
                metric,
                labels: rendered,
            });
            return None;
        }
        Some(rendered)
    }
}

/// Builder for one counter or gauge family.
#[derive(Debug)]
pub struct Family<'a> {
    exp: &'a mut Exposition,
    /// `None` when the family could not be declared: samples are dropped.
    index: Option<usize>,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<SampleValue>) -> &mut Self {
        let Some(index) = self.index else {
            return self;
        };
        let Some(labels) = self.exp.label_set(index, labels) else {
            return self;
        };
        let family = &mut self.exp.families[index];
        let out = &mut family.samples;
        out.push_str(&family.name);
        if !labels.is_empty() {
            out.push('{');
            out.push_str(&labels);
            out.push('}');
        }
        out.push(' ');
        write_value(value.into(), out);
        out.push('\n');
        self
    }
}

/// Builder for one histogram family.
#[derive(Debug)]
pub struct HistogramFamily<'a> {
    exp: &'a mut Exposition,
    index: Option<usize>,
}

impl HistogramFamily<'_> {
    /// Writes the cumulative `_bucket` series (ending with `le="+Inf"`), `_sum`
    /// and `_count` of one histogram.
    pub fn sample(&mut self, labels: &[(&str, &str)], histogram: &Histogram) -> &mut Self {
        let Some(index) = self.index else {
            return self;
        };
        let Some(labels) = self.exp.label_set(index, labels) else {
            return self;
        };
        let family = &mut self.exp.families[index];
        let name = &family.name;
        let out = &mut family.samples;
        let separator = if labels.is_empty() { "" } else { "," };
        for (bound, cumulative) in histogram.cumulative_buckets() {
            let _ = write!(out, "{name}_bucket{{{labels}{separator}le=\"");
            write_value(SampleValue::Float(bound), out);
            out.push_str("\"} ");
            write_value(SampleValue::Unsigned(cumulative), out);
            out.push('\n');
        }
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = write!(out, "{name}_sum{braced} ");
        write_value(SampleValue::Float(histogram.sum()), out);
        let _ = writeln!(out, "\n{name}_count{braced} {}", histogram.count());
        self
    }
}

/// Bucket bounds in seconds for pipeline stage latencies: 1 ms (a cached
/// preprocessing step) to 60 s (a long caption on a Jetson's CPU fallback).
pub const LATENCY_SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with fixed bucket bounds, kept by the stage that measures and
/// cloned into the exposition at scrape time (the bounds are shared, a clone
/// copies one `u64` per bucket).
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

    /// `(upper bound, observations ≤ bound)` for every bucket, ending with
    /// `(+Inf, count)`.
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            }))
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// HELP text: backslash and line feed are escaped.
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Label values: backslash, double quote and line feed are escaped.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a value the way Prometheus' parser (Go's `strconv.ParseFloat`)
/// reads it back exactly: the shortest decimal that round-trips for finite
/// floats, `+Inf`, `-Inf` and `NaN` otherwise.
fn write_value(value: SampleValue, out: &mut String) {
    let _ = match value {
        SampleValue::Unsigned(v) => write!(out, "{v}"),
        SampleValue::Signed(v) => write!(out, "{v}"),
        SampleValue::Float(v) if v.is_nan() => write!(out, "NaN"),
        SampleValue::Float(v) if v == f64::INFINITY => write!(out, "+Inf"),
        SampleValue::Float(v) if v == f64::NEG_INFINITY => write!(out, "-Inf"),
        // Plain decimals where they stay short, exponent notation beyond
        // (Display alone would write 1e300 with 300 zeros).
        SampleValue::Float(v) if v == 0.0 || (1e-5..1e15).contains(&v.abs()) => write!(out, "{v}"),
        SampleValue::Float(v) => write!(out, "{v:e}"),
    };
}

/// Adds the standard process metrics (the names the Go and Rust Prometheus
/// clients use, so existing dashboards work): resident and virtual memory,
/// open and maximum file descriptors, threads, CPU time and start time, read
/// from `/proc/self`. A file that cannot be read or parsed leaves its metrics
/// out (logged at DEBUG); elsewhere than Linux nothing is added.
pub fn process_metrics(exp: &mut Exposition) {
    #[cfg(target_os = "linux")]
    procfs::collect(exp);
    #[cfg(not(target_os = "linux"))]
    let _ = exp;
}

#[cfg(target_os = "linux")]
mod procfs {
    //! Parsers are pure functions of the file text so they can be tested on
    //! fixed examples; `collect` does the reading.

    use super::{Exposition, MetricsError};

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

    pub(super) fn collect(exp: &mut Exposition) {
        match read(STATUS).map(|text| parse_status(&text)) {
            Ok(status) => {
                if let Some(v) = status.resident_bytes {
                    exp.gauge(
                        "process_resident_memory_bytes",
                        "Resident memory size in bytes.",
                        &[],
                        v,
                    );
                }
                if let Some(v) = status.virtual_bytes {
                    exp.gauge(
                        "process_virtual_memory_bytes",
                        "Virtual memory size in bytes.",
                        &[],
                        v,
                    );
                }
                if let Some(v) = status.threads {
                    exp.gauge(
                        "process_threads",
                        "Number of OS threads in the process.",
                        &[],
                        v,
                    );
                }
            }
            Err(error) => skipped(&error),
        }

        match std::fs::read_dir(FD_DIR) {
            Ok(entries) => {
                exp.gauge(
                    "process_open_fds",
                    "Number of open file descriptors.",
                    &[],
                    entries.count(),
                );
            }
            Err(e) => skipped(&MetricsError::ProcRead {
                path: FD_DIR,
                reason: e.to_string(),
            }),
        }

        match read(LIMITS).and_then(|text| parse_max_open_files(&text)) {
            Ok(Some(max)) => exp.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                &[],
                max,
            ),
            // "unlimited": nothing meaningful to export.
            Ok(None) => {}
            Err(error) => skipped(&error),
        }

        let stat = match read(STAT).and_then(|text| parse_stat(&text)) {
            Ok(stat) => stat,
            Err(error) => return skipped(&error),
        };
        exp.counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            &[],
            stat.cpu_ticks as f64 / USER_HZ,
        );
        match read(SYSTEM_STAT).and_then(|text| parse_boot_time(&text)) {
            Ok(boot) => exp.gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                &[],
                boot as f64 + stat.start_ticks as f64 / USER_HZ,
            ),
            Err(error) => skipped(&error),
        }
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
mod tests {
    use super::*;

    fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn interleaved_samples_are_grouped_under_one_help_and_type() {
        let mut exp = Exposition::new();
        let frames = "florence_edge_camera_frames_total";
        exp.counter(frames, "Frames decoded.", &[("camera", "a")], 3u64);
        exp.gauge(
            "florence_edge_camera_up",
            "1 while streaming.",
            &[("camera", "a")],
            true,
        );
        exp.counter(frames, "Frames decoded.", &[("camera", "b")], 5u64);
        exp.family(frames, "Frames decoded.", Kind::Counter)
            .sample(&[("camera", "c")], 7u64)
            .sample(&[("camera", "d")], 0u64);
        exp.gauge(
            "florence_edge_camera_up",
            "1 while streaming.",
            &[("camera", "b")],
            false,
        );
        assert!(exp.problems().is_empty(), "{:?}", exp.problems());
        let text = exp.finish();
        assert_eq!(
            text,
            "# HELP florence_edge_camera_frames_total Frames decoded.\n\
             # TYPE florence_edge_camera_frames_total counter\n\
             florence_edge_camera_frames_total{camera=\"a\"} 3\n\
             florence_edge_camera_frames_total{camera=\"b\"} 5\n\
             florence_edge_camera_frames_total{camera=\"c\"} 7\n\
             florence_edge_camera_frames_total{camera=\"d\"} 0\n\
             # HELP florence_edge_camera_up 1 while streaming.\n\
             # TYPE florence_edge_camera_up gauge\n\
             florence_edge_camera_up{camera=\"a\"} 1\n\
             florence_edge_camera_up{camera=\"b\"} 0\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut exp = Exposition::new();
        exp.gauge(
            "florence_edge_info",
            "Build info; path C:\\x\nsecond line \"quoted\".",
            &[("camera", "say \"hi\"\\now\nnext"), ("empty", "")],
            1u64,
        );
        let text = exp.finish();
        assert_eq!(
            text,
            "# HELP florence_edge_info Build info; path C:\\\\x\\nsecond line \"quoted\".\n\
             # TYPE florence_edge_info gauge\n\
             florence_edge_info{camera=\"say \\\"hi\\\"\\\\now\\nnext\",empty=\"\"} 1\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_parses_them() {
        let cases: [(SampleValue, &str); 15] = [
            (f64::INFINITY.into(), "+Inf"),
            (f64::NEG_INFINITY.into(), "-Inf"),
            (f64::NAN.into(), "NaN"),
            (0.5f64.into(), "0.5"),
            (2.0f64.into(), "2"),
            (0.0f64.into(), "0"),
            (1e-9f64.into(), "1e-9"),
            ((-1.5e-7f64).into(), "-1.5e-7"),
            (1e300f64.into(), "1e300"),
            (123456789012345.5f64.into(), "123456789012345.5"),
            (1795914845.05f64.into(), "1795914845.05"),
            (u64::MAX.into(), "18446744073709551615"),
            ((-3i64).into(), "-3"),
            (7u32.into(), "7"),
            (0.1f64.into(), "0.1"),
        ];
        for (value, expected) in cases {
            let mut out = String::new();
            write_value(value, &mut out);
            assert_eq!(out, expected, "{value:?}");
            if let SampleValue::Float(f) = value {
                if f.is_finite() {
                    assert_eq!(out.parse::<f64>().ok(), Some(f), "round trip of {f}");
                }
            }
        }
    }

    #[test]
    fn names_are_validated_and_bad_families_left_out() {
        let mut exp = Exposition::new();
        exp.gauge("2fast", "x", &[], 1u64);
        exp.gauge("has-dash", "x", &[], 1u64);
        exp.gauge("", "x", &[], 1u64);
        exp.counter("florence_edge_frames", "x", &[], 1u64);
        exp.gauge("ok_gauge", "x", &[("bad:label", "v")], 1u64);
        exp.gauge("ok_gauge", "x", &[("__reserved", "v")], 1u64);
        exp.gauge("ok_gauge", "x", &[("camera", "a"), ("camera", "b")], 1u64);
        exp.gauge("ok_gauge", "x", &[("camera", "a")], 1u64);
        exp.gauge("ok_gauge", "x", &[("camera", "a")], 2u64);
        exp.counter("ok_gauge", "x", &[("camera", "z")], 1u64);
        exp.gauge("ok_gauge", "other help", &[("camera", "y")], 1u64);
        exp.gauge("colons:are_fine", "x", &[], 1u64);
        let problems = exp.problems().to_vec();
        assert_eq!(
            problems,
            vec![
                MetricsError::InvalidMetricName {
                    name: "2fast".into()
                },
                MetricsError::InvalidMetricName {
                    name: "has-dash".into()
                },
                MetricsError::InvalidMetricName { name: "".into() },
                MetricsError::CounterWithoutTotal {
                    name: "florence_edge_frames".into()
                },
                MetricsError::InvalidLabelName {
                    metric: "ok_gauge".into(),
                    label: "bad:label".into()
                },
                MetricsError::InvalidLabelName {
                    metric: "ok_gauge".into(),
                    label: "__reserved".into()
                },
                MetricsError::DuplicateLabel {
                    metric: "ok_gauge".into(),
                    label: "camera".into()
                },
                MetricsError::DuplicateSample {
                    metric: "ok_gauge".into(),
                    labels: "camera=\"a\"".into()
                },
                MetricsError::FamilyRedeclared {
                    name: "ok_gauge".into(),
                    first: "gauge",
                    second: "counter"
                },
                MetricsError::FamilyRedeclared {
                    name: "ok_gauge".into(),
                    first: "gauge",
                    second: "gauge"
                },
            ]
        );
        let text = exp.finish();
        assert_eq!(
            text,
            "# HELP ok_gauge x\n# TYPE ok_gauge gauge\nok_gauge{camera=\"a\"} 1\n\
             # HELP colons:are_fine x\n# TYPE colons:are_fine gauge\ncolons:are_fine 1\n"
        );
    }

    #[test]
    fn histogram_names_cannot_collide_with_other_families() {
        let mut exp = Exposition::new();
        exp.gauge("stage_seconds_count", "x", &[], 1u64);
        let h = Histogram::latency_seconds();
        exp.histogram("stage_seconds", "y", &[], &h);
        exp.histogram("other_seconds", "y", &[("le", "1")], &h);
        assert_eq!(
            exp.problems(),
            [
                MetricsError::NameTaken {
                    name: "stage_seconds_count".into(),
                    family: "stage_seconds".into(),
                    owner: "stage_seconds_count".into()
                },
                MetricsError::ReservedLabel {
                    metric: "other_seconds".into()
                }
            ]
        );
        let text = exp.finish();
        assert!(!text.contains("stage_seconds_bucket"), "{text}");
        assert!(!text.contains("other_seconds"), "{text}");
    }

    #[test]
    fn histogram_counts_values_on_a_bound_in_that_bucket_and_renders_cumulatively() {
        let mut h = Histogram::new(&[0.5, 1.0, 2.0]).expect("valid bounds");
        for v in [0.1, 0.5, 0.75, 1.0, 1.5, 5.0, f64::NAN, f64::INFINITY] {
            h.observe(v);
        }
        assert_eq!(h.count(), 7, "NaN is not counted");
        assert_eq!(h.sum(), f64::INFINITY);
        let mut h2 = Histogram::new(&[0.5, 1.0, 2.0]).expect("valid bounds");
        for v in [0.1, 0.5, 0.75, 1.0, 1.5, 5.0] {
            h2.observe(v);
        }
        assert_eq!(
            h2.cumulative_buckets().collect::<Vec<_>>(),
            [(0.5, 2), (1.0, 4), (2.0, 5), (f64::INFINITY, 6)]
        );
        let mut exp = Exposition::new();
        exp.histogram_family("florence_edge_stage_seconds", "Stage latency.")
            .sample(&[("stage", "vision")], &h2)
            .sample(&[], &Histogram::new(&[1.0]).expect("valid"));
        let text = exp.finish();
        assert_eq!(
            text,
            "# HELP florence_edge_stage_seconds Stage latency.\n\
             # TYPE florence_edge_stage_seconds histogram\n\
             florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"0.5\"} 2\n\
             florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"1\"} 4\n\
             florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"2\"} 5\n\
             florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"+Inf\"} 6\n\
             florence_edge_stage_seconds_sum{stage=\"vision\"} 8.85\n\
             florence_edge_stage_seconds_count{stage=\"vision\"} 6\n\
             florence_edge_stage_seconds_bucket{le=\"1\"} 0\n\
             florence_edge_stage_seconds_bucket{le=\"+Inf\"} 0\n\
             florence_edge_stage_seconds_sum 0\n\
             florence_edge_stage_seconds_count 0\n"
        );
    }

    #[test]
    fn histogram_bounds_must_be_finite_and_increasing() {
        for bad in [
            &[][..],
            &[1.0, 1.0],
            &[2.0, 1.0],
            &[f64::NAN],
            &[1.0, f64::INFINITY],
        ] {
            assert!(
                matches!(
                    Histogram::new(bad),
                    Err(MetricsError::InvalidBuckets { .. })
                ),
                "{bad:?}"
            );
        }
        let latency = Histogram::latency_seconds();
        assert_eq!(
            Histogram::new(&LATENCY_SECONDS_BUCKETS).as_ref(),
            Ok(&latency)
        );
        assert_eq!(latency.bounds().first(), Some(&0.001));
        assert_eq!(latency.bounds().last(), Some(&60.0));
        let mut h = latency.clone();
        h.observe_duration(Duration::from_millis(30));
        assert_eq!(
            h.cumulative_buckets()
                .find(|(_, n)| *n == 1)
                .map(|(b, _)| b),
            Some(0.05)
        );
        assert_eq!(latency.count(), 0, "a clone does not share counts");
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let mut exp = Exposition::new();
        exp.family("florence_edge_cameras", "Cameras.", Kind::Gauge);
        exp.gauge("florence_edge_up", "Up.", &[], 1u64);
        assert_eq!(
            exp.finish(),
            "# HELP florence_edge_up Up.\n# TYPE florence_edge_up gauge\nflorence_edge_up 1\n"
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and parentheses, as a thread can set it.
        let text = "4242 (fe (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(
            procfs::parse_stat(text),
            Ok(procfs::Stat {
                cpu_ticks: 325,
                start_ticks: 123456
            })
        );
        assert!(matches!(
            procfs::parse_stat("4242 (truncated) S 1 2"),
            Err(MetricsError::ProcParse {
                what: "utime (field 14)",
                ..
            })
        ));
        assert!(procfs::parse_stat("no parenthesis").is_err());
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status =
            "Name:\tflorence-edge\nVmSize:\t  123456 kB\nVmRSS:\t   2048 kB\nThreads:\t17\n";
        assert_eq!(
            procfs::parse_status(status),
            procfs::Status {
                resident_bytes: Some(2048 * 1024),
                virtual_bytes: Some(123456 * 1024),
                threads: Some(17)
            }
        );
        assert_eq!(
            procfs::parse_status("Name:\tkthreadd\nThreads:\t1\n"),
            procfs::Status {
                resident_bytes: None,
                virtual_bytes: None,
                threads: Some(1)
            }
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95000         95000         processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(procfs::parse_max_open_files(limits), Ok(Some(1024)));
        assert_eq!(
            procfs::parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Ok(None)
        );
        assert!(procfs::parse_max_open_files("Max processes 1 1\n").is_err());
        assert_eq!(
            procfs::parse_boot_time("cpu  1 2 3\nbtime 1764370000\nprocesses 5\n"),
            Ok(1764370000)
        );
        assert!(procfs::parse_boot_time("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn process_metrics_of_this_test_process_are_plausible() {
        let mut exp = Exposition::new();
        process_metrics(&mut exp);
        assert!(exp.problems().is_empty(), "{:?}", exp.problems());
        let text = exp.finish();
        let value = |name: &str| -> f64 {
            let line = lines_starting(&text, &format!("{name} "));
            assert_eq!(line.len(), 1, "{name} in\n{text}");
            line[0]
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let rss = value("process_resident_memory_bytes");
        assert!(
            rss > 1e5 && rss < value("process_virtual_memory_bytes"),
            "{text}"
        );
        // The test harness runs this on a thread of its own, beside main.
        assert!(value("process_threads") >= 2.0, "{text}");
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(
            value("process_max_fds") >= value("process_open_fds"),
            "{text}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0, "{text}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let start = value("process_start_time_seconds");
        // Started before now (1 s of slack for rounding of btime) and after 2020.
        assert!(
            start <= now + 1.0 && start > 1.58e9,
            "start {start}, now {now}"
        );
        assert_eq!(
            lines_starting(&text, "# TYPE process_cpu_seconds_total counter").len(),
            1
        );
    }
}
