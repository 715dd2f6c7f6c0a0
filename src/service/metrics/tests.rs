use super::*;

/// A collector of a fixed state, written by `write`.
#[derive(Debug)]
struct Fixed<T: fmt::Debug + Send + Sync + 'static> {
    state: T,
    write: fn(&T, &mut DescriptorEncoder<'_>) -> fmt::Result,
}

impl<T: fmt::Debug + Send + Sync + 'static> Collector for Fixed<T> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        (self.write)(&self.state, &mut encoder)
    }
}

fn encode_fixed<T: fmt::Debug + Send + Sync + 'static>(
    state: T,
    write: fn(&T, &mut DescriptorEncoder<'_>) -> fmt::Result,
) -> String {
    encode([Box::new(Fixed { state, write }) as Box<dyn Collector>])
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("exposition parses")
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[derive(Debug)]
struct Known {
    frames: Vec<(&'static str, u64)>,
    up: Vec<(&'static str, bool)>,
    latency: Histogram,
}

fn write_known(k: &Known, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
    counters(
        e,
        "florence_edge_camera_frames_total",
        "Frames decoded.",
        k.frames
            .iter()
            .map(|(camera, n)| ([("camera", *camera)], *n)),
    )?;
    gauges(
        e,
        "florence_edge_camera_up",
        "1 while streaming.",
        k.up.iter()
            .map(|(camera, up)| ([("camera", *camera), ("kind", "rtsp")], u64::from(*up))),
    )?;
    histograms(
        e,
        "florence_edge_stage_seconds",
        "Stage latency.",
        [([("stage", "vision")], &k.latency)],
    )?;
    histograms(
        e,
        "florence_edge_empty_seconds",
        "No samples: left out.",
        std::iter::empty::<([(&str, &str); 0], &Histogram)>(),
    )?;
    counter(e, "florence_edge_batches_total", "Batches.", 7u64)?;
    gauge(e, "florence_edge_ratio", "A float.", 0.25)
}

#[test]
fn a_known_state_encodes_to_these_lines() {
    let mut latency = Histogram::new(&[0.5, 1.0, 2.0]).expect("valid bounds");
    for v in [0.1, 0.5, 0.75, 1.0, 1.5, 5.0] {
        latency.observe(v);
    }
    let known = Known {
        frames: vec![("a", 3), ("b", 5)],
        up: vec![("a", true), ("b", false)],
        latency,
    };
    let text = encode_fixed(known, write_known);
    assert_eq!(
        text,
        "# HELP florence_edge_camera_frames_total Frames decoded.\n\
         # TYPE florence_edge_camera_frames_total counter\n\
         florence_edge_camera_frames_total{camera=\"a\"} 3\n\
         florence_edge_camera_frames_total{camera=\"b\"} 5\n\
         # HELP florence_edge_camera_up 1 while streaming.\n\
         # TYPE florence_edge_camera_up gauge\n\
         florence_edge_camera_up{camera=\"a\",kind=\"rtsp\"} 1\n\
         florence_edge_camera_up{camera=\"b\",kind=\"rtsp\"} 0\n\
         # HELP florence_edge_stage_seconds Stage latency.\n\
         # TYPE florence_edge_stage_seconds histogram\n\
         florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"0.5\"} 2\n\
         florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"1\"} 4\n\
         florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"2\"} 5\n\
         florence_edge_stage_seconds_bucket{stage=\"vision\",le=\"+Inf\"} 6\n\
         florence_edge_stage_seconds_sum{stage=\"vision\"} 8.85\n\
         florence_edge_stage_seconds_count{stage=\"vision\"} 6\n\
         # HELP florence_edge_batches_total Batches.\n\
         # TYPE florence_edge_batches_total counter\n\
         florence_edge_batches_total 7\n\
         # HELP florence_edge_ratio A float.\n\
         # TYPE florence_edge_ratio gauge\n\
         florence_edge_ratio 0.25\n"
    );
    let scrape = parse(&text);
    use prometheus_parse::Value as V;
    let find = |metric: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| (s.labels.get("camera").unwrap_or(""), s.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        find("florence_edge_camera_frames_total"),
        [("a", V::Counter(3.0)), ("b", V::Counter(5.0))]
    );
    assert_eq!(
        find("florence_edge_camera_up"),
        [("a", V::Gauge(1.0)), ("b", V::Gauge(0.0))]
    );
    let [(_, V::Histogram(buckets))] = &find("florence_edge_stage_seconds")[..] else {
        panic!("one histogram in {:?}", scrape.samples);
    };
    assert_eq!(
        buckets
            .iter()
            .map(|b| (b.less_than, b.count))
            .collect::<Vec<_>>(),
        [(0.5, 2.0), (1.0, 4.0), (2.0, 5.0), (f64::INFINITY, 6.0)]
    );
}

#[test]
fn a_histogram_without_labels_or_observations_has_all_its_series() {
    let text = encode_fixed(Histogram::new(&[1.0]).expect("valid"), |h, e| {
        histograms(
            e,
            "florence_edge_batch_size",
            "Jobs per batch.",
            [(NO_LABELS, h)],
        )
    });
    assert_eq!(
        text,
        "# HELP florence_edge_batch_size Jobs per batch.\n\
         # TYPE florence_edge_batch_size histogram\n\
         florence_edge_batch_size_bucket{le=\"1\"} 0\n\
         florence_edge_batch_size_bucket{le=\"+Inf\"} 0\n\
         florence_edge_batch_size_sum 0.0\n\
         florence_edge_batch_size_count 0\n"
    );
}

#[test]
fn a_counter_without_the_total_suffix_is_left_out() {
    let text = encode_fixed((), |_, e| {
        counter(e, "florence_edge_frames", "No suffix.", 1u64)?;
        gauge(e, "florence_edge_up", "Up.", 1u64)
    });
    assert_eq!(
        text,
        "# HELP florence_edge_up Up.\n# TYPE florence_edge_up gauge\nflorence_edge_up 1\n"
    );
}

#[test]
fn label_values_and_help_are_escaped() {
    let text = encode_fixed((), |_, e| {
        gauges(
            e,
            "florence_edge_info",
            "Build info; path C:\\x\nsecond line \"quoted\".",
            [([("camera", "say \"hi\"\\now\nnext"), ("empty", "")], 1u64)],
        )
    });
    assert_eq!(
        text,
        "# HELP florence_edge_info Build info; path C:\\\\x\\nsecond line \"quoted\".\n\
         # TYPE florence_edge_info gauge\n\
         florence_edge_info{camera=\"say \\\"hi\\\"\\\\now\\nnext\",empty=\"\"} 1\n"
    );
}

#[test]
fn values_are_written_as_prometheus_parses_them() {
    let floats = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.5,
        2.0,
        0.0,
        1e-9,
        -1.5e-7,
        1e300,
        123456789012345.5,
        1795914845.05,
        0.1,
    ];
    #[derive(Debug)]
    struct Values(Vec<f64>);
    let text = encode_fixed(Values(floats.to_vec()), |v, e| {
        gauges(
            e,
            "f",
            "Floats.",
            v.0.iter().enumerate().map(|(i, x)| ([("i", i)], *x)),
        )?;
        counter(e, "big_total", "Exact.", u64::MAX)?;
        gauge(e, "nan", "Not a number.", f64::NAN)
    });
    let scrape = parse(&text);
    for (i, expected) in floats.iter().enumerate() {
        let label = i.to_string();
        let value = scrape
            .samples
            .iter()
            .find(|s| s.metric == "f" && s.labels.get("i") == Some(label.as_str()))
            .map(|s| s.value.clone());
        assert_eq!(
            value,
            Some(prometheus_parse::Value::Gauge(*expected)),
            "{text}"
        );
    }
    assert!(
        text.contains("\nbig_total 18446744073709551615\n"),
        "{text}"
    );
    assert!(text.contains("\nnan NaN\n"), "{text}");
}

#[test]
fn the_content_type_is_the_one_the_endpoint_sends() {
    assert_eq!(CONTENT_TYPE, crate::service::http::METRICS_CONTENT_TYPE);
}

#[test]
fn histogram_counts_values_on_a_bound_in_that_bucket() {
    let mut h = Histogram::new(&[0.5, 1.0, 2.0]).expect("valid bounds");
    for v in [0.1, 0.5, 0.75, 1.0, 1.5, 5.0, f64::NAN, f64::INFINITY] {
        h.observe(v);
    }
    assert_eq!(h.count(), 7, "NaN is not counted");
    assert_eq!(h.sum(), f64::INFINITY);
    assert_eq!(
        h.buckets(),
        [(0.5, 2), (1.0, 2), (2.0, 1), (f64::INFINITY, 2)]
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
        h.buckets().iter().find(|(_, n)| *n == 1).map(|(b, _)| *b),
        Some(0.05)
    );
    assert_eq!(latency.count(), 0, "a clone does not share counts");
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
    let status = "Name:\tflorence-edge\nVmSize:\t  123456 kB\nVmRSS:\t   2048 kB\nThreads:\t17\n";
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
    let text = encode([Box::new(ProcessCollector) as Box<dyn Collector>]);
    let scrape = parse(&text);
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
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "process_cpu_seconds_total"
            && matches!(s.value, prometheus_parse::Value::Counter(_))));
}
