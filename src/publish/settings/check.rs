//! The bounds and relations of the `[mqtt]` section ([`MqttSettings::check`],
//! every one written once) and what needs the disk
//! ([`MqttSettings::validate`]: password and TLS files).

use std::path::PathBuf;
use std::time::Duration;

use super::*;

impl MqttSettings {
    /// Every problem that needs no file: each bound and relation of the
    /// section, written once. Keys are as in the configuration file.
    pub fn check(&self, node_id: &str) -> Vec<SettingsProblem> {
        self.check_with_broker(node_id).0
    }

    /// [`MqttSettings::check`], and the broker address when `url` parsed.
    fn check_with_broker(&self, node_id: &str) -> (Vec<SettingsProblem>, Option<BrokerAddress>) {
        let mut problems = Vec::new();
        let mut problem = |key: &str, text: String| {
            problems.push(SettingsProblem {
                key: key.to_owned(),
                problem: text,
            })
        };
        if let Err(e) = check_level("node id", node_id) {
            problem("node.id", e.to_string());
        }
        let broker = parse_broker_url(&self.url)
            .map_err(|e| problem("mqtt.url", e))
            .ok();
        let client_id = self.client_id_for(node_id);
        if client_id.is_empty()
            || client_id.len() > 256
            || client_id
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            problem(
                "mqtt.client_id",
                "must be 1 to 256 bytes without spaces or control characters".into(),
            );
        }
        if self.password.is_some() && self.username.as_deref().is_none_or(str::is_empty) {
            problem(
                "mqtt.username",
                "missing, but a password is set; allowed: a user name with the password".into(),
            );
        }
        let k = self.keep_alive;
        if !(k.subsec_nanos() == 0 && k.as_secs() <= MAX_KEEP_ALIVE_SECS) {
            problem(
                "mqtt.keep_alive",
                format!(
                    "{} is not allowed; allowed: \"0s\" (off) or whole seconds from \"1s\" to \"{MAX_KEEP_ALIVE_SECS}s\" (MQTT counts keep-alive in seconds)",
                    humantime::format_duration(k)
                ),
            );
        }
        if QualityOfService::from_level(self.qos).is_none() {
            problem(
                "mqtt.qos",
                format!("{} is not allowed; allowed: 0, 1 or 2", self.qos),
            );
        }
        if let Err(e) = Topics::new(&self.topic_prefix, node_id) {
            problem("mqtt.topic_prefix", e.to_string());
        }
        let tls_wanted = broker.as_ref().is_some_and(|b| b.tls);
        let t = &self.tls;
        if broker.is_some()
            && !tls_wanted
            && (t.ca_file.is_some() || t.cert_file.is_some() || t.key_file.is_some())
        {
            problem(
                "mqtt.tls",
                "TLS files are set but mqtt.url is mqtt://; allowed: an mqtts:// url, or no [mqtt.tls]".into(),
            );
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            let missing = if t.cert_file.is_some() {
                "mqtt.tls.key_file"
            } else {
                "mqtt.tls.cert_file"
            };
            problem(
                missing,
                "missing; a client certificate needs both; allowed: cert_file and key_file together, or neither".into(),
            );
        }
        if self.spool.dir.as_os_str().is_empty() {
            problem(
                "mqtt.spool.dir",
                format!("is empty; allowed: a writable directory, by default {DEFAULT_SPOOL_DIR}"),
            );
        }
        let (lo, hi) = SPOOL_MAX_MESSAGES;
        if !(lo..=hi).contains(&self.spool.max_messages) {
            problem(
                "mqtt.spool.max_messages",
                format!(
                    "{} is not allowed; allowed: {lo} to {hi}",
                    self.spool.max_messages
                ),
            );
        }
        let mut range = |key: &str, d: Duration, (lo, hi): (Duration, Duration)| {
            if d < lo || d > hi {
                problem(
                    key,
                    format!(
                        "{} is not allowed; allowed: {} to {}",
                        humantime::format_duration(d),
                        humantime::format_duration(lo),
                        humantime::format_duration(hi)
                    ),
                );
            }
        };
        range(
            "mqtt.reconnect.stable_after",
            self.reconnect.stable_after,
            RECONNECT_STABLE_AFTER,
        );
        range(
            "mqtt.connect_timeout",
            self.connect_timeout,
            CONNECT_TIMEOUT,
        );
        range(
            "mqtt.snapshots.min_interval",
            self.snapshots.min_interval,
            SNAPSHOT_MIN_INTERVAL,
        );
        if let Err((key, reason)) = self.reconnect.backoff.check() {
            problem(&format!("mqtt.{key}"), reason);
        }
        if self.connect_timeout.subsec_nanos() != 0 {
            problem(
                "mqtt.connect_timeout",
                "must be whole seconds (rumqttc counts it in seconds)".into(),
            );
        }
        if !(1..=100).contains(&self.snapshots.jpeg_quality) {
            problem(
                "mqtt.snapshots.jpeg_quality",
                format!(
                    "{} is not allowed; allowed: 1 to 100",
                    self.snapshots.jpeg_quality
                ),
            );
        }
        let (lo, hi) = QUEUE_CAPACITY;
        if !(lo..=hi).contains(&self.queue_capacity) {
            problem(
                "mqtt.queue_capacity",
                format!(
                    "{} is not allowed; allowed: {lo} to {hi}",
                    self.queue_capacity
                ),
            );
        }
        if self.max_inflight == 0 {
            problem(
                "mqtt.max_inflight",
                "0 is not allowed; allowed: 1 to 65535".into(),
            );
        }
        (problems, broker)
    }

    /// [`MqttSettings::check`], then reads the password and TLS files, and
    /// returns the settings rumqttc can take, or every problem found.
    pub fn validate(&self, node_id: &str) -> Result<PublisherConfig, Vec<SettingsProblem>> {
        let (mut problems, broker) = self.check_with_broker(node_id);
        let mut problem = |key: &str, text: String| {
            problems.push(SettingsProblem {
                key: key.to_owned(),
                problem: text,
            })
        };
        let password = match &self.password {
            None => None,
            Some(source) => {
                let (path, from_file) = match source {
                    PasswordSource::File(path) => (path.display().to_string(), true),
                    PasswordSource::Inline(_) => (String::new(), false),
                };
                match source.read() {
                    Ok(secret) if from_file && secret.expose().is_empty() => {
                        problem(
                            "mqtt.password_file",
                            format!("{path} is empty; it must hold the password"),
                        );
                        None
                    }
                    Ok(secret) => Some(Password(secret.expose().to_string())),
                    Err(e) => {
                        problem("mqtt.password_file", format!("cannot read {path}: {e}"));
                        None
                    }
                }
            }
        };
        let tls = self.read_tls(broker.as_ref(), &mut problem);
        let topics = Topics::new(&self.topic_prefix, node_id).ok();
        let qos = QualityOfService::from_level(self.qos);
        match (broker, qos, topics, tls) {
            (Some(broker), Some(qos), Some(topics), Some(tls)) if problems.is_empty() => {
                Ok(PublisherConfig {
                    settings: MqttSettings {
                        username: self.username.clone().filter(|u| !u.is_empty()),
                        ..self.clone()
                    },
                    broker,
                    client_id: self.client_id_for(node_id),
                    password,
                    qos,
                    tls,
                    topics,
                })
            }
            _ => Err(problems),
        }
    }

    /// `Some(None)`: plain MQTT; `Some(Some(_))`: TLS material read;
    /// `None`: a problem was recorded.
    fn read_tls(
        &self,
        broker: Option<&BrokerAddress>,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<Option<TlsMaterial>> {
        if !broker.is_some_and(|b| b.tls) {
            return Some(None);
        }
        let mut ok = true;
        let mut read = |key: &str, path: &PathBuf, marker: &str, what: &str| -> Option<Vec<u8>> {
            match std::fs::read(path) {
                Ok(bytes) if contains(&bytes, marker.as_bytes()) => Some(bytes),
                Ok(_) => {
                    problem(
                        key,
                        format!("{} holds no PEM {what} (no \"{marker}\")", path.display()),
                    );
                    None
                }
                Err(e) => {
                    problem(key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        };
        const CERT: &str = "-----BEGIN CERTIFICATE-----";
        let ca_pem = match &self.tls.ca_file {
            Some(path) => {
                let pem = read("mqtt.tls.ca_file", path, CERT, "certificate");
                ok &= pem.is_some();
                pem
            }
            None => None,
        };
        let client_auth = match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                let cert = read("mqtt.tls.cert_file", cert, CERT, "certificate");
                let key = read("mqtt.tls.key_file", key, "PRIVATE KEY-----", "private key");
                match (cert, key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            _ => None,
        };
        ok.then_some(Some(TlsMaterial {
            ca_pem,
            client_auth,
        }))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
