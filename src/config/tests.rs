use std::path::Path;
use std::time::Duration;

use super::*;

mod scene;

const MINIMAL: &str = r#"
[model]
dir = "/models/Florence-2-base-ft"

[[cameras]]
id = "front-door"
url = "rtsp://user:secret@192.0.2.10:554/stream1"
tasks = [
  { task = "<OD>", every = "500ms" },
  { task = "<CAPTION>", every = "30s" },
  { task = "<OPEN_VOCABULARY_DETECTION>", text = "person with a helmet", every = "1s" },
]
"#;

fn compile(text: &str) -> Result<Config, Vec<ConfigError>> {
    compile_env(text, &[])
}

fn compile_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
    compile_str(
        Path::new("test.toml"),
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        Some("edge.example.com"),
    )
}

/// The errors as the `validate` command prints them.
fn lines(text: &str) -> Vec<String> {
    match compile(text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn keys(text: &str) -> Vec<String> {
    match compile(text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| e.key().unwrap_or("-").to_string())
            .collect(),
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = compile(MINIMAL).expect("minimal config is valid");
    assert_eq!(config.node.id, "edge-example-com");
    assert_eq!(config.model.backend, Backend::Auto);
    assert_eq!(config.model.max_batch, 8);
    assert_eq!(config.model.max_wait, Duration::from_millis(40));
    assert_eq!(config.model.decoding.strategy, Strategy::Greedy);
    assert_eq!(config.mqtt.url, "mqtt://127.0.0.1:1883");
    assert_eq!(
        config.mqtt.client_id_for(&config.node.id),
        "florence-edge-edge-example-com"
    );
    assert_eq!(config.mqtt.qos, 1);
    assert_eq!(
        config.http.listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
    );
    let camera = &config.cameras[0];
    assert_eq!(camera.stream.transport, crate::ingest::Transport::Tcp);
    assert_eq!(
        camera.stream.max_attempts,
        crate::ingest::MaxAttempts::Unlimited
    );
    assert_eq!(camera.tasks.len(), 3);
    assert_eq!(camera.tasks[0].task, Task::ObjectDetection);
    assert_eq!(camera.tasks[0].every, Duration::from_millis(500));
    assert_eq!(
        camera.tasks[2].argument,
        TaskArgument::Text(Arc::from("person with a helmet"))
    );
    assert_eq!(camera.analysis_fps(), Some(2.0));
}

#[test]
fn every_problem_is_reported_at_once_with_its_key_path() {
    let text = r#"
[model]
dir = "/m"
max_batch = 0
backend = "gpu"

[mqtt]
qos = 3
topic_prefix = "a/+/b"

[[cameras]]
id = "a"
url = "test://"
tasks = [{ task = "<OD>", every = "0s" }]

[[cameras]]
id = "b"
url = "ftp://x"
tasks = [{ task = "<DETECT>", every = "1s" }, { task = "<CAPTION>", every = "soon" }]
"#;
    assert_eq!(
        keys(text),
        [
            "model.backend",
            "model.max_batch",
            "mqtt.qos",
            "mqtt.topic_prefix",
            "cameras[0].tasks[0].every",
            "cameras[1].tasks[0].task",
            "cameras[1].tasks[1].every",
            "cameras[1].url",
        ]
    );
    let printed = lines(text);
    assert_eq!(
        printed[0],
        "test.toml: model.backend: \"gpu\" is not a known value (allowed: auto | tensorrt | cuda | cpu)"
    );
    assert_eq!(
        printed[4],
        "test.toml: cameras[0].tasks[0].every: \"0s\" is zero (allowed: a duration such as \"500ms\", \"2s\", \"1m 30s\")"
    );
    assert!(printed[5].contains("unknown task \"<DETECT>\""));
    assert!(printed[5].contains("<REGION_TO_OCR>"));
}

#[test]
fn a_typo_is_an_unknown_key_that_names_itself_and_a_suggestion() {
    let text = MINIMAL
        .replace("dir =", "dri =")
        .replace("every = \"30s\"", "evry = \"30s\"");
    let printed = lines(&text);
    assert_eq!(printed.len(), 4, "{printed:#?}");
    assert!(printed.contains(
        &"test.toml: model.dri: unknown key; did you mean `dir`? (allowed: dir, id, revision, cache_dir, download, backend, precision, decoder, engines_dir, build_engines_at_start, max_batch, max_wait_ms, threads, batch_timeout, ort_library, gpu_memory_limit_mb, decoding)".to_string()
    ));
    assert!(printed
        .iter()
        .any(|l| l.starts_with("test.toml: model.dir: missing")));
    assert!(printed.iter().any(|l| l
        .starts_with("test.toml: cameras[0].tasks[1].evry: unknown key; did you mean `every`?")));
    assert!(printed
        .iter()
        .any(|l| l.starts_with("test.toml: cameras[0].tasks[1].every: missing")));
}

#[test]
fn unknown_sections_are_reported() {
    let text = format!("{MINIMAL}\n[detectors]\nx = 1\n");
    assert_eq!(keys(&text), ["detectors"]);
}

#[test]
fn task_inputs_are_checked_against_the_task() {
    let text = r#"
[model]
dir = "/m"
[[cameras]]
id = "c"
url = "test://"
tasks = [
  { task = "<CAPTION_TO_PHRASE_GROUNDING>", every = "1s" },
  { task = "<REGION_TO_OCR>", every = "1s" },
  { task = "<OD>", every = "1s", text = "cars" },
  { task = "<REGION_TO_CATEGORY>", every = "1s", region = [10, 10, 5, 20] },
  { task = "<REGION_TO_DESCRIPTION>", every = "1s", region = [1, 2, 3] },
  { task = "<OPEN_VOCABULARY_DETECTION>", every = "1s", text = "a", region = [0, 0, 1, 1] },
  { task = "<REFERRING_EXPRESSION_SEGMENTATION>", every = "1s", text = "" },
]
"#;
    let printed = lines(text);
    let expected = [
        "test.toml: cameras[0].tasks[0].text: missing; <CAPTION_TO_PHRASE_GROUNDING> needs it",
        "test.toml: cameras[0].tasks[1].region: missing; <REGION_TO_OCR> needs it",
        "test.toml: cameras[0].tasks[2].text: <OD> takes no text",
        "test.toml: cameras[0].tasks[3].region: [10, 10, 5, 20] is empty or reversed",
        "test.toml: cameras[0].tasks[4].region: has 3 numbers, not 4",
        "test.toml: cameras[0].tasks[5].region: <OPEN_VOCABULARY_DETECTION> takes no region",
        "test.toml: cameras[0].tasks[6].text: is empty",
    ];
    assert_eq!(printed.len(), expected.len(), "{printed:#?}");
    for (line, start) in printed.iter().zip(expected) {
        assert!(line.starts_with(start), "{line} should start with {start}");
    }
}

#[test]
fn region_tasks_keep_their_region() {
    let text = MINIMAL.replace(
        "{ task = \"<OD>\", every = \"500ms\" }",
        "{ task = \"<REGION_TO_OCR>\", every = \"2s\", region = [10, 20, 300, 400] }",
    );
    let config = compile(&text).expect("valid");
    assert_eq!(
        config.cameras[0].tasks[0].argument,
        TaskArgument::Region(Region {
            x1: 10,
            y1: 20,
            x2: 300,
            y2: 400
        })
    );
}

#[test]
fn duplicate_camera_ids_name_both_positions() {
    let text = format!(
        "{MINIMAL}\n[[cameras]]\nid = \"x\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n\
         [[cameras]]\nid = \"front-door\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n"
    );
    assert_eq!(
        lines(&text),
        ["test.toml: cameras[2].id: \"front-door\" is also the id of cameras[0] (allowed: a unique id per camera)"]
    );
}

#[test]
fn duplicate_tasks_in_one_camera_are_rejected_but_different_texts_are_not() {
    let text = MINIMAL.replace(
        "{ task = \"<CAPTION>\", every = \"30s\" },",
        "{ task = \"<OD>\", every = \"5s\" }, { task = \"<OPEN_VOCABULARY_DETECTION>\", text = \"a dog\", every = \"1s\" },",
    );
    assert_eq!(keys(&text), ["cameras[0].tasks[1]"]);
}

#[test]
fn camera_ids_must_be_topic_safe() {
    let text = MINIMAL.replace("id = \"front-door\"", "id = \"front/door\"");
    assert_eq!(keys(&text), ["cameras[0].id"]);
}

#[test]
fn passwords_never_appear_in_errors_or_debug_output() {
    let text = MINIMAL.replace(
        "[[cameras]]",
        "[mqtt]\nurl = \"mqtt://bob:hunter2@broker:1883\"\npassword = \"hunter2\"\npassword_file = \"/p\"\n\n[[cameras]]",
    );
    let printed = lines(&text).join("\n");
    assert!(
        printed.contains("mqtt.url: credentials in the URL are not allowed"),
        "{printed}"
    );
    assert!(printed.contains("mqtt.password_file: password and password_file are both set"));
    assert!(!printed.contains("hunter2"), "{printed}");

    let config = compile(MINIMAL).expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("rtsp://user:***@192.0.2.10"));
    assert_eq!(
        config.cameras[0].stream.url, "rtsp://user:secret@192.0.2.10:554/stream1",
        "the URL itself is kept as written, for the pipeline"
    );
    let text = MINIMAL.replace(
        "url = \"rtsp://user:secret@192.0.2.10:554/stream1\"",
        "url = \"rtsp://192.0.2.10/stream1\"\nusername = \"u\"\npassword = \"topsecret\"",
    );
    let config = compile(&text).expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("topsecret"), "{debug}");
    assert!(debug.contains("Inline(***)"));
    assert_eq!(Secret::new("x").to_string(), "***");
}

#[test]
fn a_secret_with_the_wrong_type_is_not_echoed() {
    let text = MINIMAL.replace(
        "url = \"rtsp://user:secret@192.0.2.10:554/stream1\"",
        "url = \"rtsp://192.0.2.10/s\"\nusername = \"u\"\npassword = 918273645",
    );
    let printed = lines(&text).join("\n");
    assert!(printed.contains("password: expected a string, found an integer"));
    assert!(!printed.contains("918273645"));
}

#[test]
fn credentials_are_only_for_rtsp_and_given_once() {
    let text = MINIMAL.replace(
        "url = \"rtsp://user:secret@192.0.2.10:554/stream1\"",
        "url = \"rtsp://user:secret@192.0.2.10:554/stream1\"\nusername = \"user\"",
    );
    assert_eq!(keys(&text), ["cameras[0].username"]);
    let text = MINIMAL.replace(
        "url = \"rtsp://user:secret@192.0.2.10:554/stream1\"",
        "url = \"test://\"\nusername = \"user\"\npassword_file = \"/p\"",
    );
    assert_eq!(keys(&text), ["cameras[0].username"]);
    let text = MINIMAL.replace(
        "url = \"rtsp://user:secret@192.0.2.10:554/stream1\"",
        "url = \"rtsp://cam/x\"\npassword_file = \"/p\"",
    );
    assert_eq!(keys(&text), ["cameras[0].username"]);
}

#[test]
fn environment_overrides_the_file_and_is_named_in_errors() {
    let config = compile_env(
        MINIMAL,
        &[
            ("FLORENCE_EDGE__MQTT__URL", "mqtts://broker.example:8883"),
            ("FLORENCE_EDGE__MQTT__QOS", "2"),
            ("FLORENCE_EDGE__MODEL__MAX_BATCH", "4"),
            ("FLORENCE_EDGE__NODE__ID", "cam-box"),
            ("UNRELATED", "x"),
        ],
    )
    .expect("valid");
    assert_eq!(config.mqtt.url, "mqtts://broker.example:8883");
    assert_eq!(config.mqtt.qos, 2);
    assert_eq!(config.model.max_batch, 4);
    assert_eq!(config.node.id, "cam-box");

    let errors = compile_env(
        MINIMAL,
        &[
            ("FLORENCE_EDGE__MQTT__QOS", "7"),
            ("FLORENCE_EDGE__MQTT__PORT", "1883"),
        ],
    )
    .err()
    .unwrap_or_default();
    let printed: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        printed,
        [
            "environment variable FLORENCE_EDGE__MQTT__PORT: mqtt.port: unknown key (allowed: url, client_id, username, password, password_file, keep_alive, qos, topic_prefix, retain, tls, spool, reconnect, connect_timeout, queue_capacity, max_inflight, snapshots)",
            "environment variable FLORENCE_EDGE__MQTT__QOS: mqtt.qos: 7 is not allowed; allowed: 0, 1 or 2",
        ]
    );
}

#[test]
fn model_combinations_tensorrt_cannot_run_are_rejected() {
    let text = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "dir = \"/m\"\nbackend = \"tensorrt\"\nprecision = \"q4\"\ndecoder = \"merged\"\ndecoding = { strategy = \"beam\", num_beams = 1 }",
    );
    assert_eq!(
        keys(&text),
        [
            "model.decoding.num_beams",
            "model.precision",
            "model.decoder"
        ]
    );
}

#[test]
fn mqtt_tls_needs_mqtts_and_a_complete_client_certificate() {
    let text = MINIMAL.replace(
        "[[cameras]]",
        "[mqtt]\ntls = { cert_file = \"/c.pem\" }\n\n[[cameras]]",
    );
    assert_eq!(keys(&text), ["mqtt.tls", "mqtt.tls.key_file"]);
}

#[test]
fn syntax_errors_name_the_file() {
    let errors = compile("[model\ndir = 1").err().unwrap_or_default();
    assert_eq!(errors.len(), 1);
    assert!(matches!(&errors[0], ConfigError::Syntax { file, .. } if file == "test.toml"));
}

#[test]
fn no_cameras_is_an_error() {
    assert_eq!(keys("[model]\ndir = \"/m\"\n"), ["cameras"]);
}

#[test]
fn a_disabled_camera_needs_no_tasks() {
    let text =
        format!("{MINIMAL}\n[[cameras]]\nid = \"spare\"\nurl = \"test://\"\nenabled = false\n");
    let config = compile(&text).expect("valid");
    assert_eq!(config.cameras.len(), 2);
    assert_eq!(config.enabled_cameras().len(), 1);
    assert_eq!(config.schedules().len(), 1);
}

#[test]
fn diff_separates_stream_changes_from_schedule_changes() {
    let base = format!(
        "{MINIMAL}\n[[cameras]]\nid = \"yard\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n\
         [[cameras]]\nid = \"gate\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n"
    );
    let old = compile(&base).expect("valid");
    assert!(diff(&old, &old).is_empty());

    let changed = base
        .replace("every = \"30s\"", "every = \"10s\"")
        .replace(
            "id = \"yard\"\nurl = \"test://\"",
            "id = \"yard\"\nurl = \"test://?pattern=snow\"",
        )
        .replace(
            "id = \"gate\"\nurl = \"test://\"",
            "id = \"garage\"\nurl = \"test://\"",
        )
        .replace("dir = \"/models/Florence-2-base-ft\"", "dir = \"/m2\"");
    let new = compile(&changed).expect("valid");
    let d = diff(&old, &new);
    assert_eq!(d.with(&CameraChange::TasksChanged), ["front-door"]);
    assert_eq!(d.with(&CameraChange::StreamChanged), ["yard"]);
    assert_eq!(d.with(&CameraChange::Added), ["garage"]);
    assert_eq!(d.with(&CameraChange::Removed), ["gate"]);
    assert!(d.model_changed);
    assert!(!d.mqtt_changed && !d.http_changed && !d.node_changed);

    let disabled = base.replace(
        "id = \"gate\"\nurl = \"test://\"",
        "id = \"gate\"\nurl = \"test://\"\nenabled = false",
    );
    let d = diff(&old, &compile(&disabled).expect("valid"));
    assert_eq!(d.with(&CameraChange::Removed), ["gate"]);
    assert_eq!(d.cameras.len(), 1);
}

#[test]
fn durations_and_ranges_of_camera_settings() {
    let text = MINIMAL.replace(
        "[[cameras]]\nid = \"front-door\"",
        "[[cameras]]\nid = \"front-door\"\nwatchdog = \"50ms\"\nlatency_ms = -1\nreconnect = { initial = \"10s\", max = \"5s\", jitter = 2, max_attempts = 3 }\ntransport = \"quic\"",
    );
    assert_eq!(
        keys(&text),
        [
            "cameras[0].transport",
            "cameras[0].latency_ms",
            "cameras[0].watchdog",
            "cameras[0].reconnect.jitter",
            "cameras[0].reconnect.max",
        ]
    );
}

#[test]
fn http_can_be_disabled_and_listen_must_be_an_address() {
    let text = format!("{MINIMAL}\n[http]\nenabled = false\n");
    assert_eq!(compile(&text).map(|c| c.http.listen).ok(), Some(None));
    let text = format!("{MINIMAL}\n[http]\nlisten = \"localhost\"\n");
    assert_eq!(keys(&text), ["http.listen"]);
}

#[test]
fn validate_reads_files_and_reports_unreadable_ones() {
    let lines = validate(Path::new("/nonexistent/florence-edge.toml"), false);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("/nonexistent/florence-edge.toml: cannot read the file"));
}

#[test]
fn environment_overrides_reach_nested_tables_and_never_panic_on_odd_keys() {
    let config = compile_env(
        MINIMAL,
        &[
            ("FLORENCE_EDGE__MODEL__DECODING__STRATEGY", "beam"),
            ("FLORENCE_EDGE__MQTT__SPOOL__MAX_MESSAGES", "500"),
            ("FLORENCE_EDGE__HTTP__ENABLED", "false"),
        ],
    )
    .expect("valid");
    assert_eq!(
        config.model.decoding.strategy,
        Strategy::Beam { num_beams: 3 }
    );
    assert_eq!(config.mqtt.spool.max_messages, 500);
    assert_eq!(config.http.listen, None);

    for (key, value) in [
        ("FLORENCE_EDGE__CAMERAS__0__URL", "test://"),
        ("FLORENCE_EDGE__CAMERAS", "x"),
        ("FLORENCE_EDGE__MQTT", "x"),
        ("FLORENCE_EDGE__", "x"),
        ("FLORENCE_EDGE____", "x"),
        ("FLORENCE_EDGE__MODEL__DIR__X", "x"),
        ("FLORENCE_EDGE__MODEL[0]", "x"),
    ] {
        let result = compile_env(MINIMAL, &[(key, value)]);
        assert!(
            result.is_err(),
            "{key}={value} must be reported, not ignored: {result:?}"
        );
    }
    let errors = compile_env(MINIMAL, &[("FLORENCE_EDGE__CAMERAS__0__URL", "test://")])
        .err()
        .unwrap_or_default();
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["environment variable FLORENCE_EDGE__CAMERAS__0__URL: cameras.0.url: cameras cannot be set from the environment (allowed: FLORENCE_EDGE__<SECTION>__<KEY> for a key of node, model, mqtt or http)"]
    );
}

#[test]
fn a_key_missing_from_a_section_the_environment_touched_is_missing_in_the_file() {
    let text = MINIMAL.replace("dir = \"/models/Florence-2-base-ft\"", "");
    let printed: Vec<String> = compile_env(&text, &[("FLORENCE_EDGE__MODEL__MAX_BATCH", "2")])
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert!(
        printed[0].starts_with("test.toml: model.dir: missing"),
        "{printed:?}"
    );
}

#[test]
fn batch_timeout_defaults_to_two_minutes_and_refuses_under_a_second() {
    let config = compile(MINIMAL).expect("valid");
    assert_eq!(config.model.batch_timeout, Duration::from_secs(120));
    let text = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "dir = \"/models/Florence-2-base-ft\"\nbatch_timeout = \"300s\"",
    );
    assert_eq!(
        compile(&text).expect("valid").model.batch_timeout,
        Duration::from_secs(300)
    );
    let text = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "dir = \"/models/Florence-2-base-ft\"\nbatch_timeout = \"500ms\"",
    );
    let printed = lines(&text);
    assert_eq!(printed.len(), 1, "{printed:#?}");
    assert!(
        printed[0].starts_with("test.toml: model.batch_timeout:") && printed[0].contains("1s"),
        "{}",
        printed[0]
    );
}

#[test]
fn the_printed_configuration_compiles_back_to_the_same_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["demo.toml", "example.toml", "minimal.toml"] {
        let path = root.join("configs").join(name);
        let config = load_with_env(&path, std::iter::empty()).expect("valid");
        let printed = config.effective_toml();
        let mut again = compile_str(&path, &printed, std::iter::empty(), None)
            .unwrap_or_else(|e| panic!("{name}: the printed file is refused: {e:?}\n{printed}"));
        // The client id is printed as used, the default spelled out.
        assert_eq!(
            again.mqtt.client_id_for(&again.node.id),
            config.mqtt.client_id_for(&config.node.id)
        );
        again.mqtt.client_id = config.mqtt.client_id.clone();
        // The one difference: a password in a URL is printed as ***.
        for (a, b) in again.cameras.iter_mut().zip(&config.cameras) {
            if a.stream.url.contains("***") {
                assert!(!b.stream.url.contains("***"));
                a.stream.url = b.stream.url.clone();
            }
        }
        assert_eq!(again, config, "{name}:\n{printed}");
    }
}

#[test]
fn camera_ids_that_collide_with_topics_are_refused() {
    let camera = |id: &str| {
        format!("[[cameras]]\nid = \"{id}\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n")
    };
    for reserved in ["status", "info", "events", "set", "snapshot"] {
        let text = format!("{MINIMAL}\n{}", camera(reserved));
        assert_eq!(
            lines(&text),
            [format!(
                "test.toml: cameras[1].id: camera id \"{reserved}\" is a reserved topic level; allowed: any id but status, info, events, set, snapshot"
            )],
        );
    }
    let text = format!("[node]\nid = \"gate\"\n{MINIMAL}\n{}", camera("gate"));
    assert_eq!(
        lines(&text),
        ["test.toml: cameras[1].id: camera id \"gate\" is also the node id; they share `{prefix}/{id}/status`, so rename the camera"],
    );
}

#[test]
fn gpu_memory_limit_is_in_mib_within_bounds() {
    let with = |v: &str| {
        MINIMAL.replace(
            "[model]\n",
            &format!("[model]\ngpu_memory_limit_mb = {v}\n"),
        )
    };
    let config = compile(&with("2048")).expect("valid");
    assert_eq!(config.model.gpu_memory_limit_mb, Some(2048));
    assert_eq!(
        compile(MINIMAL).expect("valid").model.gpu_memory_limit_mb,
        None
    );
    assert_eq!(keys(&with("10")), ["model.gpu_memory_limit_mb"]);
    assert_eq!(keys(&with("\"2GB\"")), ["model.gpu_memory_limit_mb"]);
    // What validate --print writes compiles back to the same limit.
    let printed = config.effective_toml();
    assert!(printed.contains("gpu_memory_limit_mb = 2048"), "{printed}");
}

#[test]
fn a_task_can_be_disabled_without_losing_its_settings_or_the_stream_rate() {
    let text = MINIMAL.replace(
        r#"{ task = "<OD>", every = "500ms" },"#,
        r#"{ task = "<OD>", every = "500ms", enabled = false },"#,
    );
    let config = compile(&text).expect("valid");
    let tasks = &config.cameras[0].tasks;
    assert!(!tasks[0].enabled && tasks[1].enabled);
    assert_eq!(tasks[0].every, Duration::from_millis(500));
    // The disabled task still sets the rate, so enabling it again needs no
    // stream restart.
    assert_eq!(config.cameras[0].analysis_fps(), Some(2.0));
    assert!(config.effective_toml().contains("enabled = false"));
    let bad = MINIMAL.replace(
        r#"{ task = "<OD>", every = "500ms" },"#,
        r#"{ task = "<OD>", every = "500ms", enabled = "no" },"#,
    );
    assert_eq!(keys(&bad), ["cameras[0].tasks[0].enabled"]);
}

#[test]
fn the_overlay_in_the_state_directory_is_laid_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = dir.path().join("overrides.json");
    let file = dir.path().join("florence-edge.toml");
    let text = format!(
        "[control]\noverrides_file = \"{}\"\n{MINIMAL}",
        overrides.display()
    );
    std::fs::write(&file, &text).unwrap();
    let plain = load_with_env(&file, Vec::new()).expect("valid without an overlay");
    assert_eq!(plain.control.overrides_file, overrides);
    assert!(plain.control.http);

    let mut overlay = crate::control::overlay::Overlay {
        version: crate::control::overlay::OVERLAY_VERSION,
        ..Default::default()
    };
    let request = crate::control::ControlRequest::PatchTask {
        camera: "front-door".into(),
        task: "open_vocabulary_detection".into(),
        body: serde_json::json!({"text": "a ladder"}),
    };
    let root: toml::Table = toml::from_str(&text).unwrap();
    overlay = overlay
        .with_change(&request, &root, Some(&plain.cameras[0].tasks))
        .expect("a known task");
    overlay.save(&overrides).unwrap();
    let layered = load_with_env(&file, Vec::new()).expect("valid with the overlay");
    assert_eq!(
        layered.cameras[0].tasks[2].argument.text(),
        Some("a ladder")
    );
    assert!(layered.effective_toml().contains("a ladder"));

    // An invalid change in the overlay is reported like one in the file.
    let bad = crate::control::ControlRequest::PatchTask {
        camera: "front-door".into(),
        task: "0".into(),
        body: serde_json::json!({"every": "0s"}),
    };
    overlay
        .with_change(&bad, &root, None)
        .unwrap()
        .save(&overrides)
        .unwrap();
    let errors = load_with_env(&file, Vec::new()).unwrap_err();
    assert_eq!(
        errors[0].key(),
        Some("cameras[0].tasks[0].every"),
        "{errors:?}"
    );

    std::fs::write(&overrides, "[]").unwrap();
    let errors = load_with_env(&file, Vec::new()).unwrap_err();
    assert_eq!(
        errors[0].key(),
        Some("control.overrides_file"),
        "{errors:?}"
    );
    assert!(errors[0].to_string().contains("overrides.json"));
}

#[test]
fn a_hub_model_is_named_by_id_instead_of_dir() {
    let store = tempfile::tempdir().unwrap();
    let hub = format!(
        "id = \"onnx-community/Florence-2-base-ft\"\nrevision = \"v1\"\ncache_dir = \"{}\"\nprecision = \"fp16\"",
        store.path().display()
    );
    let config = compile(&MINIMAL.replace("dir = \"/models/Florence-2-base-ft\"", &hub)).unwrap();
    let h = config.model.hub.as_ref().expect("a hub model");
    assert_eq!(h.model.repo, "onnx-community/Florence-2-base-ft");
    assert_eq!(h.model.revision, "v1");
    assert!(!h.download);
    // Not pulled: the repository's folder in the store, which plan refuses.
    assert_eq!(
        config.model.dir,
        store
            .path()
            .join("models--onnx-community--Florence-2-base-ft")
    );
    let printed = config.effective_toml();
    assert!(
        printed.contains("id = \"onnx-community/Florence-2-base-ft\""),
        "{printed}"
    );
    let model = printed
        .split("[model]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    assert!(!model.contains("\ndir = "), "{model}");
    let errors = plan(config).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text[0].contains("model.id: onnx-community/Florence-2-base-ft@v1 is not in")
            && text[0].contains(
                "florence-edge model pull onnx-community/Florence-2-base-ft --revision v1 --variant fp16 --dir"
            ),
        "{text:?}"
    );
}

#[test]
fn id_and_dir_exclude_each_other_and_hub_keys_need_id() {
    let both = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "dir = \"/m\"\nid = \"org/x\"\ncache_dir = \"/s\"",
    );
    assert_eq!(keys(&both), ["model.dir"]);
    let stray = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "dir = \"/m\"\nrevision = \"main\"\ndownload = true",
    );
    assert_eq!(keys(&stray), ["model.revision", "model.download"]);
    let bad = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "id = \"../etc\"\ncache_dir = \"/s\"",
    );
    assert_eq!(keys(&bad), ["model.id"]);
    let bad_rev = MINIMAL.replace(
        "dir = \"/models/Florence-2-base-ft\"",
        "id = \"org/x\"\nrevision = \"../x\"\ncache_dir = \"/s\"",
    );
    assert_eq!(keys(&bad_rev), ["model.revision"]);
    let neither = MINIMAL.replace("dir = \"/models/Florence-2-base-ft\"", "");
    assert!(
        lines(&neither)[0].contains("model.id = "),
        "{:?}",
        lines(&neither)
    );
}
