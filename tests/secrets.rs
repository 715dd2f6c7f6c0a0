//! Credentials never leave the daemon: camera passwords and tokens in URLs,
//! the MQTT password and the HTTP bearer token appear in no log line (JSON
//! or raw stderr), no `validate` output (`--print` and errors), no
//! `/api/cameras` or `/metrics` answer and no MQTT payload — while the
//! redacted forms do appear, so each place is shown to be looked at.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::process::Command;
use std::time::Duration;

use daemon::{http_get, model_section, test_camera, wait_until, DaemonProcess};
use mosquitto::{free_port, BrokerOptions, Mosquitto, Subscriber, SubscriberOptions};

const CAMERA_PASSWORD: &str = "cam-pw-9034";
const CAMERA_TOKEN: &str = "tok-cam-4412";
const MQTT_PASSWORD: &str = "mqtt-pw-7731";
const BEARER_TOKEN: &str = "bearer-tok-5521";
const SECRETS: [&str; 4] = [CAMERA_PASSWORD, CAMERA_TOKEN, MQTT_PASSWORD, BEARER_TOKEN];

fn assert_clean(place: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{place} shows the secret {secret}:\n{text}"
        );
    }
}

fn validate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_florence-edge"))
        .args(["--log-format", "text", "validate"])
        .args(args)
        .env("ORT_DYLIB_PATH", daemon::ort_library())
        .output()
        .expect("florence-edge validate");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_secret_reaches_a_log_an_answer_or_a_payload() {
    let broker = Mosquitto::start(BrokerOptions {
        users: vec![("edge".into(), MQTT_PASSWORD.into())],
        ..BrokerOptions::default()
    });
    let all = Subscriber::start(
        broker.port(),
        "#",
        SubscriberOptions {
            credentials: Some(("edge".into(), MQTT_PASSWORD.into())),
            ..SubscriberOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("http.token");
    std::fs::write(&token_file, format!("{BEARER_TOKEN}\n")).expect("token");
    let http_port = free_port();
    // Two cameras nobody answers for (a closed port): their failures are
    // logged, published and shown, each with its URL.
    let dead = free_port();
    let text = format!(
        r#"[node]
id = "secrets"

{model}

[mqtt]
url = "{url}"
username = "edge"
password = "{MQTT_PASSWORD}"
spool = {{ dir = "{spool}" }}

[http]
listen = "127.0.0.1:{http_port}"
bearer_token_file = "{token}"

[[cameras]]
id = "door"
url = "rtsp://viewer:{CAMERA_PASSWORD}@127.0.0.1:{dead}/door"
startup_timeout = "1s"
reconnect = {{ initial = "200ms", max = "500ms" }}
tasks = [{{ task = "<OD>", every = "1s" }}]

[[cameras]]
id = "gate"
url = "rtsp://{CAMERA_TOKEN}@127.0.0.1:{dead}/gate"
startup_timeout = "1s"
reconnect = {{ initial = "200ms", max = "500ms" }}
tasks = [{{ task = "<OD>", every = "1s" }}]

{yard}
"#,
        model = model_section(20, 4),
        url = broker.url(),
        spool = dir.path().join("spool").display(),
        token = token_file.display(),
        yard = test_camera("yard", "ball", r#"{ task = "<CAPTION>", every = "500ms" }"#),
    );
    let path = dir.path().join("florence-edge.toml");
    std::fs::write(&path, &text).expect("config");
    let config = path.display().to_string();

    // validate --print, and validate's errors about a broken copy.
    let printed = validate(&["--print", "--config", &config]);
    assert!(printed.contains("[[cameras]]"), "{printed}");
    assert!(printed.contains("rtsp://viewer:***@127.0.0.1"), "{printed}");
    assert!(printed.contains("rtsp://***@127.0.0.1"), "{printed}");
    assert!(printed.contains("password = \"***\""), "{printed}");
    assert_clean("validate --print", &printed);
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        text.replace("/door\"", "/door\"\nusername = \"x\"")
            .replace("rtsp://tok-cam", "rtspx://tok-cam"),
    )
    .expect("broken config");
    let errors = validate(&["--config", &broken.display().to_string()]);
    assert!(errors.contains("cameras[0].username"), "{errors}");
    assert!(errors.contains("rtspx://***@127.0.0.1"), "{errors}");
    assert_clean("validate errors", &errors);

    let daemon = DaemonProcess::start(&path, &[]);
    daemon.wait_results("results of the test camera", Duration::from_secs(60), |r| {
        r.len() >= 2
    });
    let addr = format!("127.0.0.1:{http_port}").parse().expect("address");
    let mut cameras = String::new();
    wait_until(
        "both dead cameras failed at least once, with a reason",
        Duration::from_secs(30),
        || {
            let (code, body) = http_get(addr, "/api/cameras", Some(BEARER_TOKEN));
            cameras = body;
            let v: serde_json::Value = serde_json::from_str(&cameras).unwrap_or_default();
            code == 200
                && ["door", "gate"].iter().all(|id| {
                    v["cameras"].as_array().is_some_and(|list| {
                        list.iter()
                            .any(|c| c["id"] == *id && c["last_error"].is_string())
                    })
                })
        },
    );
    assert!(cameras.contains("rtsp://viewer:***@127.0.0.1"), "{cameras}");
    assert!(cameras.contains("rtsp://***@127.0.0.1"), "{cameras}");
    assert_clean("/api/cameras", &cameras);
    let (code, metrics) = http_get(addr, "/metrics", Some(BEARER_TOKEN));
    assert_eq!(code, 200);
    assert!(metrics.contains("camera=\"door\""), "{metrics}");
    assert_clean("/metrics", &metrics);
    for path in ["/healthz", "/readyz"] {
        let (_, body) = http_get(addr, path, Some(BEARER_TOKEN));
        assert_clean(path, &body);
    }

    let messages = all.wait_for(Duration::from_secs(30), "camera statuses", |m| {
        m.iter()
            .filter(|m| m.topic.ends_with("/door/status") || m.topic.ends_with("/gate/status"))
            .count()
            >= 2
    });
    daemon.signal(libc::SIGTERM);
    let mut daemon = daemon;
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    let payloads: String = all
        .messages()
        .iter()
        .chain(messages.iter())
        .map(|m| format!("{} {}\n", m.topic, String::from_utf8_lossy(&m.payload)))
        .collect();
    assert!(
        payloads.contains("florence-edge/yard/caption"),
        "{payloads}"
    );
    assert_clean("MQTT payloads", &payloads);
    let logs = daemon.stderr_text();
    assert!(logs.contains("door"), "{logs}");
    assert_clean("the daemon's stderr", &logs);
}
