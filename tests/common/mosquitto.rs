//! A real mosquitto broker for tests: started on 127.0.0.1 with ports chosen
//! at run time, in its own temporary directory, optionally with a TLS listener
//! and a password file; it can be stopped and restarted on the same ports.
//! Also a recording subscriber built on rumqttc's synchronous client.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Server-side TLS files for a TLS listener.
#[derive(Clone, Debug)]
pub struct BrokerTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by `ca_file`.
    pub require_client_certificate: bool,
}

#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    pub tls: Option<BrokerTls>,
    /// (user, password); when not empty, anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// Keep sessions and queued messages across a stop/restart.
    pub persistence: bool,
}

pub struct Mosquitto {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Mosquitto {
    pub fn start(options: BrokerOptions) -> Mosquitto {
        let dir = tempfile::tempdir().expect("broker temp dir");
        let port = free_port();
        let tls_port = options.tls.as_ref().map(|_| free_port());
        let mut conf = String::new();
        // Running as root, mosquitto would switch to the `mosquitto` user and
        // lose access to the temp dir.
        conf.push_str("user root\n");
        conf.push_str("per_listener_settings false\n");
        conf.push_str(&format!(
            "log_dest file {}\n",
            dir.path().join("mosquitto.log").display()
        ));
        conf.push_str("log_type all\n");
        conf.push_str("max_queued_messages 0\n");
        if options.persistence {
            conf.push_str("persistence true\n");
            conf.push_str(&format!("persistence_location {}/\n", dir.path().display()));
            conf.push_str("autosave_interval 1\n");
        }
        if options.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let file = dir.path().join("passwd");
            for (i, (user, password)) in options.users.iter().enumerate() {
                let mut cmd = Command::new("mosquitto_passwd");
                cmd.arg("-b");
                if i == 0 {
                    cmd.arg("-c");
                }
                let status = cmd
                    .arg(&file)
                    .arg(user)
                    .arg(password)
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd failed");
            }
            conf.push_str("allow_anonymous false\n");
            conf.push_str(&format!("password_file {}\n", file.display()));
        }
        conf.push_str(&format!("listener {port} 127.0.0.1\n"));
        if let (Some(tls), Some(tls_port)) = (&options.tls, tls_port) {
            conf.push_str(&format!("listener {tls_port} 127.0.0.1\n"));
            conf.push_str(&format!("cafile {}\n", tls.ca_file.display()));
            conf.push_str(&format!("certfile {}\n", tls.cert_file.display()));
            conf.push_str(&format!("keyfile {}\n", tls.key_file.display()));
            if tls.require_client_certificate {
                conf.push_str("require_certificate true\n");
            }
        }
        let config = dir.path().join("mosquitto.conf");
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            dir,
            config,
            port,
            tls_port,
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in std::iter::once(self.port).chain(self.tls_port) {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on {port}; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!(
            "mqtts://127.0.0.1:{}",
            self.tls_port.expect("broker started without TLS")
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and waits
    /// until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the broker again on the same ports with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message as a subscriber saw it.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set by the broker only for retained messages sent on subscription.
    pub retain: bool,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.text();
        let short: String = text.chars().take(80).collect();
        write!(f, "{} retain={} {:?}", self.topic, self.retain, short)
    }
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("payload is JSON")
    }
}

#[derive(Clone, Debug, Default)]
pub struct SubscriberOptions {
    /// Keep the session across disconnects (a broker with persistence then
    /// queues what arrives while this subscriber is away).
    pub persistent_client_id: Option<String>,
    pub credentials: Option<(String, String)>,
}

/// Records everything published on `filter` (QoS 1 subscription).
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str, options: SubscriberOptions) -> Subscriber {
        use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
        let id = options
            .persistent_client_id
            .clone()
            .unwrap_or_else(|| format!("test-sub-{}", free_port()));
        let mut mqtt = MqttOptions::new(id, "127.0.0.1", port);
        mqtt.set_clean_session(options.persistent_client_id.is_none());
        mqtt.set_keep_alive(Duration::from_secs(5));
        mqtt.set_max_packet_size(1 << 24, 1 << 16);
        if let Some((user, password)) = &options.credentials {
            mqtt.set_credentials(user.clone(), password.clone());
        }
        let (client, mut connection) = Client::new(mqtt, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (messages, subscribed, stop) = (messages.clone(), subscribed.clone(), stop.clone());
            let filter = filter.to_owned();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            subscribed.store(true, Ordering::Relaxed)
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            messages.lock().expect("lock").push(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            })
                        }
                        Ok(Ok(_)) => {}
                        // The broker is away: wait, do not spin.
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                        Err(_) => {}
                    }
                }
                let _ = client.try_disconnect();
            })
        };
        let subscriber = Subscriber {
            messages,
            subscribed,
            stop,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !subscriber.subscribed.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "test subscriber never got SUBACK"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        subscriber
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the messages so far, or panics after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if done(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {} messages: {:?}",
                messages.len(),
                messages.iter().rev().take(5).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A broker that keeps sessions (`persistence`) and a recorder subscribed to
/// `filter` with the persistent session `client_id`: what is published while
/// the recorder is away (a broker restart) is kept for it and delivered when
/// it reconnects.
pub fn persistent_broker_and_recorder(filter: &str, client_id: &str) -> (Mosquitto, Subscriber) {
    let broker = Mosquitto::start(BrokerOptions {
        persistence: true,
        ..BrokerOptions::default()
    });
    let recorder = Subscriber::start(
        broker.port(),
        filter,
        SubscriberOptions {
            persistent_client_id: Some(client_id.into()),
            ..SubscriberOptions::default()
        },
    );
    (broker, recorder)
}

/// Certificates for a TLS test, made with the openssl command line.
pub struct TestCertificates {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestCertificates {
    pub fn generate() -> TestCertificates {
        let dir = tempfile::tempdir().expect("cert dir");
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .expect("client.ext");
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=florence-edge test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=edge-test")] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    subject,
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        // rustls wants PKCS#8 keys.
        for name in ["server", "client"] {
            openssl(
                d,
                &[
                    "pkcs8",
                    "-topk8",
                    "-nocrypt",
                    "-in",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pk8.key"),
                ],
            );
        }
        TestCertificates {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.pk8.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.pk8.key"),
            other_ca: d.join("other-ca.pem"),
            dir,
        }
    }
}

/// Settings for a publisher under test: QoS 1, fast backoff, a spool in `spool_dir`.
pub fn test_settings(url: &str, spool_dir: &Path) -> florence_edge::publish::MqttSettings {
    use florence_edge::backoff::BackoffPolicy;
    use florence_edge::publish::settings::SpoolSettings;
    use florence_edge::publish::ReconnectSettings;
    florence_edge::publish::MqttSettings {
        url: url.to_owned(),
        topic_prefix: "fe-test".into(),
        keep_alive: std::time::Duration::from_secs(5),
        spool: SpoolSettings {
            dir: spool_dir.to_owned(),
            max_messages: 100_000,
        },
        reconnect: ReconnectSettings {
            backoff: BackoffPolicy::new(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(1),
            ),
            stable_after: std::time::Duration::from_secs(5),
        },
        ..florence_edge::publish::MqttSettings::default()
    }
}

/// The `run_id` of the results and statuses the tests make up.
pub const TEST_RUN_ID: &str = "00000000-0000-4000-8000-000000000001";

/// A typical `<OD>` result with `boxes` detections on a 1280×720 frame.
pub fn od_result(
    node: &str,
    camera: &str,
    sequence: u64,
    boxes: usize,
) -> florence_edge::publish::ResultPayload {
    use florence_edge::publish::{
        FrameInfo, ModelInfo, ResultPayload, StageLatencies, RESULT_SCHEMA_VERSION,
    };
    let (w, h) = (1280.0, 720.0);
    let bboxes: Vec<[f64; 4]> = (0..boxes)
        .map(|i| {
            let x = 10.5 + 100.0 * i as f64;
            [x, 20.5, x + 80.0, 300.5]
        })
        .collect();
    let normalized: Vec<[f64; 4]> = bboxes
        .iter()
        .map(|b| [b[0] / w, b[1] / h, b[2] / w, b[3] / h])
        .collect();
    let labels: Vec<String> = (0..boxes)
        .map(|i| ["person", "car", "dog"][i % 3].to_owned())
        .collect();
    ResultPayload {
        schema_version: RESULT_SCHEMA_VERSION,
        node: node.to_owned(),
        run_id: TEST_RUN_ID.to_owned(),
        revision: 1,
        camera: camera.to_owned(),
        task: "<OD>".into(),
        text_input: None,
        sequence,
        frame: FrameInfo {
            captured_unix_ms: 1_764_000_000_000 + sequence * 40,
            pts_ns: Some(sequence * 40_000_000),
            width: 1280,
            height: 720,
        },
        model: ModelInfo {
            id: "Florence-2-base-ft".into(),
            precision: "fp16".into(),
            backend: "onnxruntime-cpu".into(),
        },
        batch_size: 4,
        latency_ms: StageLatencies {
            queue_ms: 3.2,
            preprocess_ms: 4.1,
            vision_ms: 48.0,
            encoder_ms: 12.5,
            decode_ms: 95.3,
            postprocess_ms: 0.4,
        },
        result: serde_json::json!({"<OD>": {
            "bboxes": bboxes,
            "bboxes_normalized": normalized,
            "labels": labels,
            "dropped_groups": 0,
            "dropped_location_tokens": 0,
        }}),
    }
}

/// Runs `examples/publish_harness` (built by `cargo test` next to the test binaries).
pub fn harness_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/examples/publish_harness
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("publish_harness");
    assert!(path.exists(), "{} missing: run plain `cargo test` (which builds examples) or `cargo build --example publish_harness` first", path.display());
    path
}

/// A child process whose stdout lines are collected as they come.
pub struct Harness {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Harness {
    pub fn spawn(args: &[String]) -> Harness {
        use std::io::BufRead;
        let mut child = Command::new(harness_path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start publish_harness");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("lock").push(line);
            }
        });
        Harness { child, lines }
    }

    pub fn wait_line(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines.lock().expect("lock").iter().find(|l| pred(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "harness never printed {what}; lines: {:?}",
                self.lines.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no DISCONNECT, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill();
    }
}
