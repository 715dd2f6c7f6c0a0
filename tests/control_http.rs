//! Runtime control over the HTTP API, end to end: the real binary with the
//! tiny model and `test://` cameras; a camera re-prompted, retasked, added
//! and removed while another streams on untouched; an invalid change
//! refused whole; the overlay surviving a restart; `DELETE /api/overrides`
//! going back to the file.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/daemon.rs"]
mod daemon;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use daemon::{http_request, test_camera as camera, unreachable_broker, DaemonProcess, TestConfig};
use serde_json::{json, Value};

const TOKEN: &str = "control-test-token";

fn config_text(dir: &Path) -> String {
    let token = dir.join("http.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let cameras = [
        camera(
            "steady",
            "ball",
            r#"{ task = "<OD>", every = "300ms" }"#,
        ),
        camera(
            "door",
            "snow",
            r#"{ task = "<OD>", every = "300ms" }, { task = "<OPEN_VOCABULARY_DETECTION>", text = "a person", every = "300ms" }"#,
        ),
    ]
    .concat();
    let text = TestConfig {
        node: "ctl-test",
        model_extra: "",
        mqtt: unreachable_broker(dir),
        http: &format!(
            "listen = \"127.0.0.1:0\"\nbearer_token_file = \"{}\"",
            token.display()
        ),
        cameras: &cameras,
    }
    .toml();
    format!(
        "[control]\noverrides_file = \"{}\"\n{text}",
        dir.join("state/overrides.json").display()
    )
}

fn start(config: &Path) -> (DaemonProcess, SocketAddr) {
    let d = DaemonProcess::start(config, &[]);
    let line = d.wait_logged("HTTP endpoint listening.", Duration::from_secs(120));
    let addr = line[0]["addr"].as_str().unwrap().parse().unwrap();
    d.wait_logged("Configuration revision in effect.", Duration::from_secs(10));
    (d, addr)
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (code, text) = http_request(addr, method, path, Some(TOKEN), body.as_deref());
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
    (code, v)
}

/// `frames_in` and `restarts` of a camera from `/api/cameras`.
fn counters(addr: SocketAddr, id: &str) -> (u64, u64) {
    let (code, v) = call(addr, "GET", "/api/cameras", None);
    assert_eq!(code, 200);
    let c = v["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("camera {id} in {v}"))
        .clone();
    (
        c["frames_in"].as_u64().unwrap(),
        c["restarts"].as_u64().unwrap(),
    )
}

fn of<'a>(results: &'a [Value], camera: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let camera = camera.to_string();
    results
        .iter()
        .filter(move |r| r["camera"] == camera.as_str())
}

#[test]
fn cameras_are_reprompted_retasked_added_and_removed_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("florence-edge.toml");
    std::fs::write(&config, config_text(dir.path())).unwrap();
    let (mut d, addr) = start(&config);
    d.wait_results("first results", Duration::from_secs(90), |r| {
        of(r, "steady").count() >= 2 && of(r, "door").count() >= 2
    });
    let (_, cfg) = call(addr, "GET", "/api/config", None);
    let rev0 = cfg["revision"].as_u64().unwrap();
    assert!(rev0 >= 1, "{cfg}");
    assert_eq!(cfg["config"]["cameras"][1]["id"], "door");
    let (frames0, restarts0) = counters(addr, "steady");

    // Without the token: 401, nothing changes.
    let (code, _) = http_request(
        addr,
        "PATCH",
        "/api/cameras/door/tasks/open_vocabulary_detection",
        None,
        Some(r#"{"text":"a ladder"}"#),
    );
    assert_eq!(code, 401);

    // 1. Re-prompt: the next results carry the new prompt and revision.
    let (code, v) = call(
        addr,
        "PATCH",
        "/api/cameras/door/tasks/open_vocabulary_detection",
        Some(json!({"text": "a person with a ladder"})),
    );
    assert_eq!(code, 200, "{v}");
    let rev1 = v["revision"].as_u64().unwrap();
    assert_eq!(rev1, rev0 + 1);
    assert_eq!(v["camera"]["tasks"][1]["text"], "a person with a ladder");
    let at = d.results().len();
    d.wait_results("a result of the new prompt", Duration::from_secs(60), |r| {
        r[at..]
            .iter()
            .any(|x| x["camera"] == "door" && x["text_input"] == "a person with a ladder")
    });
    for r in d.results().iter().filter(|r| r["camera"] == "door") {
        let new_prompt = r["text_input"] == "a person with a ladder";
        let new_rev = r["revision"].as_u64().unwrap() >= rev1;
        if r["task"] == "<OPEN_VOCABULARY_DETECTION>" {
            assert_eq!(new_prompt, new_rev, "prompt and revision agree: {r}");
        }
    }

    // 2. Invalid: every problem listed, nothing applied.
    let (code, v) = call(
        addr,
        "PUT",
        "/api/cameras/door/tasks",
        Some(json!([
            {"task": "<OD>", "every": "0s"},
            {"task": "<CAPTION>", "every": "1s", "txet": "typo"}
        ])),
    );
    assert_eq!(code, 422, "{v}");
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"tasks[0].every"), "{v}");
    assert!(keys.iter().any(|k| k.starts_with("tasks[1]")), "{v}");
    let (_, cfg) = call(addr, "GET", "/api/config", None);
    assert_eq!(cfg["revision"].as_u64(), Some(rev1), "nothing applied");
    let (code, _) = call(
        addr,
        "PATCH",
        "/api/cameras/nope/tasks/0",
        Some(json!({"enabled": false})),
    );
    assert_eq!(code, 404);

    // 3. Retask: OD off, a caption on; the stream stays (same fastest period).
    let (code, v) = call(
        addr,
        "PUT",
        "/api/cameras/door/tasks",
        Some(json!([
            {"task": "<OD>", "every": "300ms", "enabled": false},
            {"task": "<CAPTION>", "every": "300ms"}
        ])),
    );
    assert_eq!(code, 200, "{v}");
    let rev2 = v["revision"].as_u64().unwrap();
    let at = d.results().len();
    d.wait_results("captions from door", Duration::from_secs(60), |r| {
        r[at..]
            .iter()
            .filter(|x| x["camera"] == "door" && x["task"] == "<CAPTION>")
            .count()
            >= 2
    });
    let late: Vec<_> = d.results()[at..]
        .iter()
        .filter(|x| x["camera"] == "door" && x["revision"].as_u64() == Some(rev2))
        .map(|x| x["task"].as_str().unwrap().to_string())
        .collect();
    assert!(late.iter().all(|t| t == "<CAPTION>"), "OD is off: {late:?}");

    // 4. Add a camera, see its results; remove it, see them stop.
    let (code, v) = call(
        addr,
        "PUT",
        "/api/cameras/added",
        Some(json!({
            "url": "test://?pattern=smpte&width=96&height=64&fps=10",
            "tasks": [{"task": "<OD>", "every": "300ms"}]
        })),
    );
    assert_eq!(code, 200, "{v}");
    d.wait_results(
        "results from the added camera",
        Duration::from_secs(60),
        |r| of(r, "added").count() >= 2,
    );
    let (code, v) = call(addr, "DELETE", "/api/cameras/added", None);
    assert_eq!(code, 200, "{v}");
    let (code, _) = call(addr, "GET", "/api/cameras/added", None);
    assert_eq!(code, 404);

    // The untouched camera streamed throughout and never restarted.
    let (frames1, restarts1) = counters(addr, "steady");
    assert!(
        frames1 > frames0,
        "steady kept streaming: {frames0} → {frames1}"
    );
    assert_eq!(restarts1, restarts0, "steady was never restarted");

    // 5. Restart: the overlay and the revision persist.
    let (_, before) = call(addr, "GET", "/api/config", None);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    let print = std::process::Command::new(env!("CARGO_BIN_EXE_florence-edge"))
        .args(["validate", "--print", "--config"])
        .arg(&config)
        .env("ORT_DYLIB_PATH", daemon::ort_library())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&print.stdout);
    assert!(print.status.success(), "{printed}");
    assert!(printed.contains("# runtime overrides from"), "{printed}");
    assert!(
        printed.contains("<CAPTION>") && printed.contains("enabled = false"),
        "{printed}"
    );
    let (d2, addr) = start(&config);
    let (_, after) = call(addr, "GET", "/api/config", None);
    assert_eq!(
        after["revision"], before["revision"],
        "same configuration, same revision"
    );
    assert_eq!(after["config"]["cameras"], before["config"]["cameras"]);
    let (_, door) = call(addr, "GET", "/api/cameras/door", None);
    assert_eq!(door["overridden"], true);

    // 6. Back to the file.
    let (code, v) = call(addr, "DELETE", "/api/overrides", None);
    assert_eq!(code, 200, "{v}");
    let (_, cfg) = call(addr, "GET", "/api/config", None);
    assert_eq!(cfg["overrides"], json!([]));
    assert_eq!(
        cfg["config"]["cameras"][1]["tasks"][1]["text"], "a person",
        "the file's prompt again"
    );
    assert!(cfg["revision"].as_u64().unwrap() > after["revision"].as_u64().unwrap());
    let at = d2.results().len();
    d2.wait_results(
        "the file's prompt runs again",
        Duration::from_secs(60),
        |r| {
            r[at..]
                .iter()
                .any(|x| x["camera"] == "door" && x["text_input"] == "a person")
        },
    );
}
