//! Every configuration shipped in configs/ loads, and broken files are
//! rejected with every problem named by file, key and what is allowed.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use florence_edge::config::{self, Backend, CameraChange, Config, ConfigError, Task, TaskArgument};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

/// Loads without the process environment, so a developer's
/// FLORENCE_EDGE__… variables cannot change the outcome.
fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    config::load_with_env(path, std::iter::empty())
}

fn load_text(dir: &Path, name: &str, text: &str) -> Result<Config, Vec<String>> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| vec![e.to_string()])?;
    load(&path).map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

#[test]
fn every_shipped_config_is_valid() {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(configs_dir()).expect("configs/ exists");
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        if let Err(errors) = load(&path) {
            panic!(
                "{} is invalid:\n{}",
                path.display(),
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        names.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
    }
    names.sort();
    assert_eq!(
        names,
        [
            Some("demo.toml".to_string()),
            Some("example.toml".to_string()),
            Some("minimal.toml".to_string())
        ]
    );
}

#[test]
fn the_example_sets_what_it_documents() {
    let config = load(&configs_dir().join("example.toml")).expect("valid");
    assert_eq!(config.node.id, "edge-01");
    assert_eq!(config.model.max_batch, 8);
    assert_eq!(config.model.max_wait, Duration::from_millis(40));
    assert_eq!(config.mqtt.url, "mqtts://broker.example.net:8883");
    assert!(config.mqtt.tls.cert_file.is_some() && config.mqtt.tls.key_file.is_some());
    assert_eq!(config.cameras.len(), 3);
    assert_eq!(config.enabled_cameras().len(), 2);
    let front = &config.cameras[0];
    assert_eq!(front.tasks.len(), 4);
    assert_eq!(front.tasks[3].task, Task::RegionToOcr);
    // Debug output of the whole configuration carries no credential.
    let debug = format!("{config:?}");
    assert!(!debug.contains("change-me"), "{debug}");
    assert!(debug.contains("rtsp://viewer:***@192.0.2.11/h265"));
    assert_eq!(
        config::redact_url(&config.cameras[1].stream.url),
        "rtsp://viewer:***@192.0.2.11/h265"
    );
}

#[test]
fn the_demo_uses_test_cameras_the_tiny_model_and_a_local_broker() {
    let config = load(&configs_dir().join("demo.toml")).expect("valid");
    assert_eq!(config.model.dir, Path::new("tests/fixtures/tiny-florence2"));
    assert_eq!(config.model.backend, Backend::Cpu);
    assert_eq!(config.mqtt.url, "mqtt://127.0.0.1:1883");
    assert!(config
        .cameras
        .iter()
        .all(|c| c.stream.url.starts_with("test://")));
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(&config.model.dir)
            .join("tokenizer.json")
            .is_file(),
        "the demo's model directory is the test fixture"
    );
}

#[test]
fn the_environment_overrides_a_shipped_file() {
    let config = config::load_with_env(
        &configs_dir().join("minimal.toml"),
        [
            (
                "FLORENCE_EDGE__MQTT__URL".to_string(),
                "mqtt://10.1.2.3:1884".to_string(),
            ),
            (
                "FLORENCE_EDGE__MODEL__BACKEND".to_string(),
                "cpu".to_string(),
            ),
        ],
    )
    .expect("valid");
    assert_eq!(config.mqtt.url, "mqtt://10.1.2.3:1884");
    assert_eq!(config.model.backend, Backend::Cpu);
}

/// Each broken file and the exact lines `florence-edge validate` prints.
#[test]
fn broken_configs_report_every_problem() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "typo.toml",
            "[model]\ndir = \"/m\"\nmax_bach = 4\n[[cameras]]\nid = \"a\"\nurl = \"test://\"\ntasks = [{ task = \"<OD>\", every = \"1s\" }]\n",
            &["typo.toml: model.max_bach: unknown key; did you mean `max_batch`? (allowed: dir, id, revision, cache_dir, download, backend, precision, decoder, engines_dir, build_engines_at_start, max_batch, max_wait_ms, threads, batch_timeout, ort_library, gpu_memory_limit_mb, decoding)"],
        ),
        (
            "tasks.toml",
            "[model]\ndir = \"/m\"\n[[cameras]]\nid = \"a\"\nurl = \"test://\"\ntasks = [\n  { task = \"<OD>\", every = \"-5s\" },\n  { task = \"<REGION_TO_OCR>\", every = \"1s\" },\n  { task = \"<OPEN_VOCABULARY_DETECTION>\", every = \"1s\" },\n  { task = \"<CAPTION>\", every = \"1s\", text = \"hello\" },\n  { task = \"<SEGMENT>\", every = 5 },\n]\n",
            &[
                "tasks.toml: cameras[0].tasks[0].every: \"-5s\" is negative (allowed: a duration such as \"500ms\", \"2s\", \"1m 30s\")",
                "tasks.toml: cameras[0].tasks[1].region: missing; <REGION_TO_OCR> needs it (allowed: region = [x1, y1, x2, y2] in pixels)",
                "tasks.toml: cameras[0].tasks[2].text: missing; <OPEN_VOCABULARY_DETECTION> needs it (allowed: text = \"…\", e.g. \"person with a helmet\")",
                "tasks.toml: cameras[0].tasks[3].text: <CAPTION> takes no text (allowed: no input for this task)",
                "tasks.toml: cameras[0].tasks[4].task: unknown task \"<SEGMENT>\" (allowed: <CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>, <OD>, <DENSE_REGION_CAPTION>, <REGION_PROPOSAL>, <OCR>, <OCR_WITH_REGION>, <CAPTION_TO_PHRASE_GROUNDING>, <REFERRING_EXPRESSION_SEGMENTATION>, <REGION_TO_SEGMENTATION>, <OPEN_VOCABULARY_DETECTION>, <REGION_TO_CATEGORY>, <REGION_TO_DESCRIPTION>, <REGION_TO_OCR>)",
                "tasks.toml: cameras[0].tasks[4].every: expected a duration string, found integer 5; write the unit, e.g. \"5s\" (allowed: a duration such as \"500ms\", \"2s\", \"1m 30s\")",
            ],
        ),
        (
            "cameras.toml",
            "[model]\ndir = \"/m\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://u:p4ss@cam/s\"\npassword_file = \"/p\"\ntasks = [{ task = \"<OD>\", every = \"1s\" }]\n[[cameras]]\nid = \"yard\"\nurl = \"gopher://cam\"\ntasks = [{ task = \"<OD>\", every = \"1s\" }]\n[[cameras]]\nid = \"gate\"\nurl = \"test://\"\ntasks = [{ task = \"<OD>\", every = \"1s\" }]\n",
            &[
                "cameras.toml: cameras[0].username: missing, but a password is set (allowed: a user name with the password)",
                "cameras.toml: cameras[1].url: \"gopher://cam\": scheme `gopher` is not supported; allowed: rtsp://, rtsps://, file://",
                "cameras.toml: cameras[2].id: \"gate\" is also the id of cameras[0] (allowed: a unique id per camera)",
            ],
        ),
        (
            "mqtt.toml",
            "[model]\ndir = \"/m\"\nmax_batch = 65\n[mqtt]\nurl = \"tcp://broker\"\nqos = \"two\"\ntopic_prefix = \"site/#\"\npassword = \"pw\"\npassword_file = \"/pw\"\n[[cameras]]\nid = \"a\"\nurl = \"test://\"\ntasks = [{ task = \"<OD>\", every = \"1s\" }]\n",
            &[
                "mqtt.toml: model.max_batch: 65 is out of range (allowed: an integer 1..=64)",
                "mqtt.toml: mqtt.password_file: password and password_file are both set (allowed: one of password or password_file)",
                "mqtt.toml: mqtt.qos: expected an integer, found string \"two\" (allowed: a whole number, see docs/MQTT.md)",
                "mqtt.toml: mqtt.url: the scheme must be mqtt:// or mqtts://",
                "mqtt.toml: mqtt.topic_prefix: ",
            ],
        ),
        (
            "syntax.toml",
            "[model\ndir = \"/m\"\n",
            &["syntax.toml: not valid TOML:"],
        ),
    ];
    for (name, text, expected) in cases {
        let lines = load_text(dir.path(), name, text).err().unwrap_or_default();
        let lines: Vec<String> = lines
            .iter()
            .map(|l| l.replace(&format!("{}/", dir.path().display()), ""))
            .collect();
        assert_eq!(lines.len(), expected.len(), "{name}: {lines:#?}");
        for (line, want) in lines.iter().zip(expected.iter()) {
            assert!(
                line.starts_with(want),
                "{name}:\n got: {line}\nwant: {want}"
            );
        }
    }
}

#[test]
fn validate_lists_problems_and_optionally_missing_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let model = dir.path().join("model");
    std::fs::create_dir(&model).expect("model directory");
    let text = format!(
        "[model]\ndir = {model:?}\n[mqtt]\nusername = \"u\"\npassword_file = {pass:?}\n\
         [[cameras]]\nid = \"a\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n",
        model = model.display().to_string(),
        pass = dir.path().join("missing.pass").display().to_string(),
    );
    let path = dir.path().join("files.toml");
    std::fs::write(&path, text).expect("written");
    assert!(config::validate(&path, false).is_empty());
    let lines = config::validate(&path, true);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("mqtt.password_file:"));
    assert!(
        lines[0].contains("cannot read") && lines[0].contains("missing.pass"),
        "{lines:?}"
    );
}

#[test]
fn a_reload_that_only_changes_tasks_keeps_the_stream() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = std::fs::read_to_string(configs_dir().join("demo.toml")).expect("readable");
    let old = load_text(dir.path(), "old.toml", &text).expect("valid");
    let new = load_text(
        dir.path(),
        "new.toml",
        &text.replace("text = \"a colour bar\"", "text = \"a white bar\""),
    )
    .expect("valid");
    let diff = old.diff(&new);
    assert_eq!(diff.with(&CameraChange::TasksChanged), ["bars"]);
    assert_eq!(diff.cameras.len(), 1);
    assert!(!diff.model_changed);
    let bars = &new.cameras[1];
    assert_eq!(
        bars.tasks[1].argument,
        TaskArgument::Text("a white bar".into())
    );
}

/// The demo configuration drives the real scheduler and batcher as the
/// daemon would: the stages' own types, handed over by `config`.
#[test]
fn scheduler_and_batcher_follow_the_demo_config() {
    use florence_edge::schedule::{Batcher, Scheduler};
    use std::time::Instant;
    let config = load(&configs_dir().join("demo.toml")).expect("valid demo");
    let t0 = Instant::now();
    let mut scheduler = Scheduler::new(config.schedules(), t0).expect("valid schedule");
    let mut batcher: Batcher<()> =
        Batcher::new(config.model.max_batch, config.model.max_wait).expect("valid batcher");
    scheduler.on_frame("ball", 1, t0).expect("known camera");
    scheduler.on_frame("bars", 1, t0).expect("known camera");
    for job in scheduler.poll(t0) {
        batcher.push(job, t0);
    }
    assert_eq!(
        batcher.len(),
        5,
        "every task of both cameras is due at start"
    );
    let first = batcher.pop_batch(t0).unwrap_or_default();
    let cameras: Vec<&str> = first.iter().map(|j| &*j.key.camera).collect();
    assert_eq!(
        cameras,
        ["ball", "ball", "bars", "bars"],
        "max_batch 4: cameras in turn, each with its jobs on the same frame"
    );
    assert_eq!(
        batcher.next_deadline(),
        Some(t0 + Duration::from_millis(20)),
        "max_wait_ms 20"
    );
}

/// `validate` counts each configured prompt in tokens against what the
/// model takes (image tokens + prompt ≤ its position embeddings): a text
/// under the character limit can still be far too long.
#[test]
fn validate_refuses_a_prompt_too_long_for_the_model_naming_key_and_limit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2");
    // 150 words, 599 characters: each word is several tokens of the tiny
    // vocabulary.
    let long = vec!["qzx"; 150].join(" ");
    assert!(long.chars().count() < 1000);
    let tokenizer = florence_edge::florence2::tokenizer::FlorenceTokenizer::from_dir(&model)
        .expect("the tiny tokenizer");
    let tokens = tokenizer
        .encode_prompt(&Task::OpenVocabularyDetection.prompt(Some(&long)))
        .expect("encodes")
        .len();
    assert!(tokens > 447, "{tokens}");
    let text = format!(
        "[model]\ndir = {model:?}\n\
         [[cameras]]\nid = \"innocent\"\nurl = \"test://\"\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n\
         [[cameras]]\nid = \"longtext\"\nurl = \"test://\"\ntasks = [\n  {{ task = \"<CAPTION>\", every = \"1s\" }},\n  \
         {{ task = \"<OPEN_VOCABULARY_DETECTION>\", text = \"{long}\", every = \"1s\" }},\n  \
         {{ task = \"<OPEN_VOCABULARY_DETECTION>\", text = \"a person\", every = \"1s\" }},\n]\n",
        model = model.display().to_string(),
    );
    let path = dir.path().join("long.toml");
    std::fs::write(&path, &text).expect("written");
    assert!(
        config::validate(&path, false).is_empty(),
        "the file itself is valid; the model refuses it"
    );
    let lines = config::validate(&path, true);
    assert_eq!(
        lines,
        [format!(
            "{}: cameras[1].tasks[1].text: the <OPEN_VOCABULARY_DETECTION> prompt is {tokens} tokens \
             (allowed: at most 447 tokens with this model (image tokens 577 + prompt ≤ \
             max_position_embeddings 1024))",
            path.display()
        )]
    );
    // The same file with a short text passes.
    std::fs::write(&path, text.replace(&long, "a helmet")).expect("written");
    assert_eq!(config::validate(&path, true), Vec::<String>::new());
}
