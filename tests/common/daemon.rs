//! The daemon in tests: the tiny model's configuration, `florence-edge run`
//! as a child process (results from its stdout, JSON log lines from its
//! stderr), and a plain HTTP GET for its endpoint.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2")
}

pub fn ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/onnxruntime/lib/libonnxruntime.so")
        })
}

/// The sections of a test configuration that differ between tests; the
/// model section is `model_section(20, 4)`: 20 ms batch wait, 4 greedy tokens.
pub struct TestConfig<'a> {
    pub node: &'a str,
    /// Extra `[model]` lines, e.g. `batch_timeout = "1s"`.
    pub model_extra: &'a str,
    /// The `[mqtt]` section's lines.
    pub mqtt: String,
    /// The `[http]` section's lines.
    pub http: &'a str,
    pub cameras: &'a str,
}

impl TestConfig<'_> {
    pub fn toml(&self) -> String {
        format!(
            r#"
[node]
id = "{node}"

{model}
{model_extra}

[mqtt]
{mqtt}

[http]
{http}

{cameras}
"#,
            node = self.node,
            model = model_section(20, 4),
            model_extra = self.model_extra,
            mqtt = self.mqtt,
            http = self.http,
            cameras = self.cameras,
        )
    }
}

/// The `[model]` section: the tiny model on the CPU, one thread, batches of
/// up to 4 waiting at most `max_wait_ms`, greedy decoding of
/// `max_new_tokens`.
pub fn model_section(max_wait_ms: u32, max_new_tokens: u32) -> String {
    format!(
        r#"[model]
dir = "{model}"
backend = "cpu"
threads = 1
max_batch = 4
max_wait_ms = {max_wait_ms}
decoding = {{ strategy = "greedy", max_new_tokens = {max_new_tokens} }}"#,
        model = model_dir().display(),
    )
}

/// `[mqtt]` lines for an unreachable broker: results are spooled in `dir`.
pub fn unreachable_broker(dir: &Path) -> String {
    format!(
        "url = \"mqtt://127.0.0.1:9\"\nspool = {{ dir = \"{}\", max_messages = 10000 }}",
        dir.join("spool").display()
    )
}

/// A `test://` camera of 96×64 at 10 fps with this videotestsrc pattern.
pub fn test_camera(id: &str, pattern: &str, tasks: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nurl = \"test://?pattern={pattern}&width=96&height=64&fps=10\"\ntasks = [{tasks}]\n\n"
    )
}

pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 GET; (status code, body).
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(addr, "GET", path, token, None)
}

/// One HTTP/1.1 request with an optional JSON body; (status code, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_string()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

pub struct DaemonProcess {
    pub child: Child,
    /// Result payloads from stdout, in order.
    results: Arc<Mutex<Vec<serde_json::Value>>>,
    /// JSON log lines from stderr, in order.
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Everything on stderr, JSON or not (GStreamer and libraries may print).
    stderr: Arc<Mutex<String>>,
}

impl DaemonProcess {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> DaemonProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_florence-edge"));
        cmd.args(["--log-format", "json", "--log", "info,ort=warn"])
            .args(["run", "--stdout", "--config"])
            .arg(config)
            .env("ORT_DYLIB_PATH", ort_library())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn florence-edge");
        let results = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let r = results.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    r.lock().unwrap().push(v);
                }
            }
        });
        let l = logs.clone();
        let raw = Arc::new(Mutex::new(String::new()));
        let all = raw.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&format!("{line}\n"));
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => l.lock().unwrap().push(v),
                    Err(_) => eprintln!("daemon (not JSON): {line}"),
                }
            }
        });
        DaemonProcess {
            child,
            results,
            logs,
            stderr: raw,
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "florence-edge did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines with this message, as (camera, line).
    pub fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect()
    }

    /// Log lines with this message once at least one arrived (stderr is
    /// read by a thread, so a line may trail what the daemon did).
    pub fn wait_logged(&self, message: &str, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.logged(message);
            if !lines.is_empty() {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {message:?} within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn results(&self) -> Vec<serde_json::Value> {
        self.results.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on the results so far.
    pub fn wait_results(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !pred(&self.results()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; results per camera/task: {:?}\nlog:\n{}",
                per_key(&self.results()),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn per_key(results: &[serde_json::Value]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in results {
        m.entry((
            r["camera"].as_str().unwrap_or("?").to_string(),
            r["task"].as_str().unwrap_or("?").to_string(),
        ))
        .or_default()
        .push(r["sequence"].as_u64().unwrap_or(0));
    }
    m
}
