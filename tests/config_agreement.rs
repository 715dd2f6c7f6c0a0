//! `validate` and `run` agree: a file `validate` accepts starts, a file it
//! refuses does not, and every refusal names a key of the file.
//!
//! The cases below are the divergences an operator met before the
//! configuration had one definition (each failed then: `validate` accepted
//! the file and `run` refused it, or a value changed on its way to the
//! stage), then a property test over generated files.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use florence_edge::config::{self, Config, Plan};
use florence_edge::daemon;
use florence_edge::publish::settings::DEFAULT_SPOOL_DIR;
use proptest::prelude::*;

/// A directory with a model directory (empty: `plan` checks it exists, the
/// model itself is loaded later by the inference thread) and room for files.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join("model")).expect("model dir");
        Scratch { dir }
    }

    fn model(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    /// A file with `[model]` pointing at the scratch model, a spool in the
    /// scratch directory unless `mqtt` sets one, and `rest`.
    fn write(&self, mqtt: &str, rest: &str) -> PathBuf {
        let spool = if mqtt.contains("spool") {
            String::new()
        } else {
            format!(
                "spool = {{ dir = {:?} }}\n",
                self.dir.path().join("spool").display().to_string()
            )
        };
        let text = format!(
            "[node]\nid = \"edge-01\"\n[model]\ndir = {:?}\n[mqtt]\n{spool}{mqtt}\n{rest}",
            self.model().display().to_string()
        );
        let path = self.dir.path().join("florence-edge.toml");
        std::fs::write(&path, text).expect("written");
        path
    }
}

const CAMERA: &str = "[[cameras]]\nid = \"yard\"\nurl = \"test://\"\ntasks = [{ task = \"<OD>\", every = \"1s\" }]\n";

/// What `run` does before it opens a camera, a model or a socket.
fn start_up(path: &Path) -> Result<Plan, Vec<String>> {
    let lines = |errors: Vec<config::ConfigError>| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<String>>()
    };
    let plan = config::load(path).and_then(config::plan).map_err(lines)?;
    daemon::preflight(&plan.config).map_err(|e| vec![e.to_string()])?;
    Ok(plan)
}

fn valid(path: &Path) -> Plan {
    let problems = config::validate(path, true);
    assert!(problems.is_empty(), "validate refused: {problems:#?}");
    start_up(path).unwrap_or_else(|e| panic!("validate accepted what run refuses: {e:#?}"))
}

/// Refused by `validate` and by start-up, with `key` named by `validate`.
fn refused(path: &Path, key: &str) -> Vec<String> {
    let problems = config::validate(path, true);
    assert!(
        start_up(path).is_err(),
        "run accepts what validate refuses: {problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains(&format!(": {key}: "))),
        "no problem names {key}: {problems:#?}"
    );
    problems
}

#[test]
fn keep_alive_is_what_the_operator_wrote() {
    let s = Scratch::new();
    for (written, want) in [("90s", 90), ("1m 30s", 90), ("0s", 0), ("30s", 30)] {
        let plan = valid(&s.write(&format!("keep_alive = \"{written}\""), CAMERA));
        assert_eq!(
            plan.publisher.settings.keep_alive,
            Duration::from_secs(want),
            "{written}"
        );
    }
    for written in ["1500ms", "500ms", "70000s"] {
        let problems = refused(
            &s.write(&format!("keep_alive = \"{written}\""), CAMERA),
            "mqtt.keep_alive",
        );
        assert!(
            problems.iter().any(|p| p.contains("whole seconds")),
            "{written}: {problems:?}"
        );
    }
}

#[test]
fn the_snapshot_interval_arrives_unchanged() {
    let s = Scratch::new();
    for (written, want) in [
        ("1500ms", Duration::from_millis(1500)),
        ("1m 30s", Duration::from_secs(90)),
        ("0s", Duration::ZERO),
    ] {
        let plan = valid(&s.write(
            &format!("snapshots = {{ enabled = true, min_interval = \"{written}\" }}"),
            CAMERA,
        ));
        assert!(plan.publisher.settings.snapshots.enabled);
        assert_eq!(
            plan.publisher.settings.snapshots.min_interval, want,
            "{written}"
        );
    }
    refused(
        &s.write("snapshots = { min_interval = \"2d\" }", CAMERA),
        "mqtt.snapshots.min_interval",
    );
    refused(
        &s.write("snapshots = { jpeg_quality = 0 }", CAMERA),
        "mqtt.snapshots.jpeg_quality",
    );
}

#[test]
fn the_spool_has_one_bound_and_a_documented_default() {
    let s = Scratch::new();
    let dir = s.dir.path().join("spool").display().to_string();
    let plan = valid(&s.write(
        &format!("spool = {{ dir = {dir:?}, max_messages = 10000000 }}"),
        CAMERA,
    ));
    assert_eq!(plan.publisher.settings.spool.max_messages, 10_000_000);
    let problems = refused(
        &s.write(
            &format!("spool = {{ dir = {dir:?}, max_messages = 100000000 }}"),
            CAMERA,
        ),
        "mqtt.spool.max_messages",
    );
    assert!(problems.iter().any(|p| p.contains("1 to 10000000")));

    // Left out, the spool is where the docs and the example say it is.
    let path = s.write("spool = {}", CAMERA);
    let config = config::load(&path).expect("valid");
    assert_eq!(config.mqtt.spool.dir, Path::new(DEFAULT_SPOOL_DIR));
    assert!(config
        .effective_toml()
        .contains(&format!("dir = \"{DEFAULT_SPOOL_DIR}\"")));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["docs/MQTT.md", "configs/example.toml"] {
        let text = std::fs::read_to_string(root.join(doc)).expect("readable");
        assert!(text.contains(DEFAULT_SPOOL_DIR), "{doc} names the default");
        assert!(!text.contains("in memory"), "{doc} still says in memory");
    }
}

#[test]
fn camera_sources_the_pipeline_cannot_open_are_refused_by_validate() {
    let s = Scratch::new();
    for (camera, key) in [
        ("url = \"test://?pattern=foo\"", "cameras[0].url"),
        ("url = \"test://?fps=0\"", "cameras[0].url"),
        ("url = \"csi://abc\"", "cameras[0].url"),
        ("url = \"ftp://cam/x\"", "cameras[0].url"),
        (
            "url = \"test://\"\ndecoder = \"no such!\"",
            "cameras[0].decoder",
        ),
        (
            "url = \"rtsp://u:p@cam/x\"\nusername = \"v\"",
            "cameras[0].username",
        ),
    ] {
        let rest = format!(
            "[[cameras]]\nid = \"yard\"\n{camera}\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n"
        );
        refused(&s.write("", &rest), key);
    }
    // A task asking for more frames than a camera is analysed at.
    let rest = "[[cameras]]\nid = \"yard\"\nurl = \"test://\"\ntasks = [{ task = \"<OD>\", every = \"500us\" }]\n";
    refused(&s.write("", rest), "cameras[0].tasks");
}

#[test]
fn errors_name_keys_of_the_operators_file() {
    let s = Scratch::new();
    let missing = s.dir.path().join("missing.pem").display().to_string();
    let problems = refused(
        &s.write(
            &format!(
                "url = \"mqtts://127.0.0.1:8883\"\ntls = {{ cert_file = {missing:?}, key_file = {missing:?} }}"
            ),
            CAMERA,
        ),
        "mqtt.tls.cert_file",
    );
    assert!(problems.iter().any(|p| p.contains(": mqtt.tls.key_file: ")));
    let password = s.dir.path().join("camera.pass").display().to_string();
    let rest = format!(
        "[[cameras]]\nid = \"yard\"\nurl = \"rtsp://cam/x\"\nusername = \"viewer\"\npassword_file = {password:?}\ntasks = [{{ task = \"<OD>\", every = \"1s\" }}]\n"
    );
    refused(&s.write("", &rest), "cameras[0].password_file");
    std::fs::write(&password, "s3cret\n").expect("written");
    let plan = valid(&s.write("", &rest));
    // What the camera starts with: the password read from the file.
    let resolved = plan.config.cameras[0].stream.resolve().expect("resolves");
    let login = resolved.credentials.as_ref().expect("login");
    assert_eq!(login.password.expose(), "s3cret");
}

/// Every key docs/MQTT.md documents for `[mqtt]` is one the daemon takes.
#[test]
fn the_documented_mqtt_section_is_accepted() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/MQTT.md"))
        .expect("readable");
    let start = doc.find("```toml\n[mqtt]\n").expect("a [mqtt] example") + 8;
    let block = &doc[start..];
    let block = &block[..block.find("```").expect("closed")];
    assert!(block.starts_with("[mqtt]\n"), "{block}");
    let path = PathBuf::from("docs/MQTT.md");
    let text = format!("[model]\ndir = \"/m\"\n{block}\n{CAMERA}");
    let config: Result<Config, _> =
        config::compile_str(&path, &text, std::iter::empty(), Some("edge-01"));
    assert!(config.is_ok(), "{:#?}", config.err());
}

/// A value operators write: mostly one that works, sometimes one that
/// must be refused.
fn pick(good: &[&'static str], bad: &[&'static str]) -> BoxedStrategy<&'static str> {
    prop_oneof![
        4 => prop::sample::select(good.to_vec()),
        1 => prop::sample::select(bad.to_vec()),
    ]
    .boxed()
}

/// One camera in a generated file: a URL, a decoder and a task period.
fn camera() -> impl Strategy<Value = String> {
    (
        pick(
            &[
                "test://",
                "test://?pattern=snow&fps=5",
                "csi://0",
                "rtsp://cam/x",
                "rtsp://tok3n@cam/x",
                "file:///tmp/clip.mp4",
            ],
            &[
                "test://?pattern=foo",
                "test://?width=8",
                "csi://abc",
                "v4l2://video0",
                "ftp://cam/x",
            ],
        ),
        pick(&["auto", "avdec_h264"], &["bad name", ""]),
        pick(&["1s", "500ms", "2ms", "1m 30s"], &["500us", "0s", "1"]),
    )
        .prop_map(|(url, decoder, every)| {
            format!(
                "url = \"{url}\"\ndecoder = \"{decoder}\"\ntasks = [{{ task = \"<OD>\", every = \"{every}\" }}]\n"
            )
        })
}

fn mqtt() -> impl Strategy<Value = String> {
    (
        pick(&["30s", "90s", "1m 30s", "0s"], &["1500ms", "500ms", "70000s"]),
        pick(&["1", "10000000", "100000"], &["100000000", "0"]),
        pick(&["10s", "1500ms", "1m 30s", "0s"], &["2d", "soon"]),
        pick(&["0", "1", "2"], &["3", "\"one\""]),
        pick(
            &["mqtt://127.0.0.1:1883", "mqtts://broker:8883", "mqtt://[::1]"],
            &["mqtt://u:p@broker", "tcp://broker", "mqtt://broker:0"],
        ),
    )
        .prop_map(|(keep_alive, max_messages, interval, qos, url)| {
            format!(
                "url = \"{url}\"\nkeep_alive = \"{keep_alive}\"\nqos = {qos}\nspool = {{ dir = \"SPOOL\", max_messages = {max_messages} }}\nsnapshots = {{ min_interval = \"{interval}\" }}\n"
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Generated files go through `validate` and through start-up up to the
    /// point where cameras and sockets would open: the verdicts agree, and
    /// every problem names a key whose last part is written in the file.
    #[test]
    fn validate_and_start_up_agree(mqtt in mqtt(), cameras in prop::collection::vec(camera(), 1..3)) {
        let s = Scratch::new();
        let spool = s.dir.path().join("spool").display().to_string();
        let mut rest = String::new();
        for (i, c) in cameras.iter().enumerate() {
            rest.push_str(&format!("[[cameras]]\nid = \"cam{i}\"\n{c}"));
        }
        let path = s.write(&mqtt.replace("SPOOL", &spool), &rest);
        let text = std::fs::read_to_string(&path).expect("readable");
        let problems = config::validate(&path, true);
        let started = start_up(&path);
        prop_assert_eq!(problems.is_empty(), started.is_ok(), "validate: {:#?}\nstart-up: {:#?}\n{}", problems, started.err(), text);
        let errors = config::load(&path).and_then(config::plan).err().unwrap_or_default();
        prop_assert_eq!(errors.len(), problems.len());
        for e in &errors {
            let key = e.key().unwrap_or_default();
            let last = key.rsplit('.').next().unwrap_or_default();
            let last = last.split('[').next().unwrap_or_default();
            prop_assert!(!last.is_empty() && text.contains(last), "{} names no key of the file:\n{}", e, text);
        }
    }
}

/// The `[control]` example of docs/CONTROL.md and the `[homeassistant]`
/// one of docs/HOME_ASSISTANT.md are files the daemon takes.
#[test]
fn the_documented_control_and_homeassistant_sections_are_accepted() {
    for (doc, section) in [
        ("docs/CONTROL.md", "[control]"),
        ("docs/HOME_ASSISTANT.md", "[homeassistant]"),
    ] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
            .expect("readable");
        let start = text
            .find(&format!("```toml\n{section}\n"))
            .unwrap_or_else(|| panic!("a {section} example in {doc}"))
            + 8;
        let block = &text[start..];
        let block = &block[..block.find("```").expect("closed")];
        let path = PathBuf::from(doc);
        let file = format!("[model]\ndir = \"/m\"\n{block}\n{CAMERA}");
        let config = config::compile_str(&path, &file, std::iter::empty(), Some("edge-01"));
        assert!(config.is_ok(), "{doc}: {:#?}", config.err());
    }
}
