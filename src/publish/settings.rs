//! The `[mqtt]` table as written by the operator ([`MqttSettings`]) and its
//! checked form ([`PublisherConfig`]).
//!
//! Validation collects every problem at once, each naming its key and what is
//! allowed, so `florence-edge validate` can print them all; and it runs before
//! anything reaches rumqttc, whose option setters assert (keep-alive under a
//! second, zero in-flight messages) instead of returning errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::connection::BackoffPolicy;
use super::topic::{check_level, Topics};

/// One thing wrong with the settings: the key and a sentence that says what is
/// wrong and what is allowed. Never contains a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsProblem {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for SettingsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

pub(crate) fn join_problems(problems: &[SettingsProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// MQTT quality of service, as in the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QualityOfService {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl QualityOfService {
    pub fn level(self) -> u8 {
        match self {
            QualityOfService::AtMostOnce => 0,
            QualityOfService::AtLeastOnce => 1,
            QualityOfService::ExactlyOnce => 2,
        }
    }

    pub(crate) fn from_level(level: u8) -> Option<QualityOfService> {
        match level {
            0 => Some(QualityOfService::AtMostOnce),
            1 => Some(QualityOfService::AtLeastOnce),
            2 => Some(QualityOfService::ExactlyOnce),
            _ => None,
        }
    }

    pub(crate) fn to_rumqttc(self) -> rumqttc::QoS {
        match self {
            QualityOfService::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QualityOfService::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            QualityOfService::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }
}

/// Which kinds of topic are published with the retain flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetainSettings {
    /// `{prefix}/{node}/status` (`online`/`offline`); retained so a late
    /// subscriber learns whether the node is up.
    pub node_status: bool,
    /// `{prefix}/{camera}/status`.
    pub camera_status: bool,
    /// `{prefix}/{camera}/{task}`; off by default, a stale result replayed to
    /// every new subscriber is rarely wanted.
    pub results: bool,
    /// `{prefix}/{camera}/{task}/snapshot`.
    pub snapshots: bool,
}

impl Default for RetainSettings {
    fn default() -> Self {
        RetainSettings {
            node_status: true,
            camera_status: true,
            results: false,
            snapshots: false,
        }
    }
}

/// `[mqtt.tls]`: files for `mqtts://`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA(s) that signed the broker's certificate; without it
    /// the system's roots are used.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// `[mqtt.spool]`: where results wait while the broker is away.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolSettings {
    /// A directory under the state directory, so a restart keeps the spool.
    pub dir: Option<PathBuf>,
    /// Bound on spooled results; beyond it the oldest are dropped and counted.
    pub max_messages: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: None,
            max_messages: 100_000,
        }
    }
}

/// `[mqtt.reconnect]`: exponential backoff between connection attempts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectSettings {
    /// First delay, e.g. "500ms".
    pub initial: String,
    /// Ceiling of the delay, e.g. "30s".
    pub max: String,
    /// A connection that lasted this long resets the backoff.
    pub stable_after: String,
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        ReconnectSettings {
            initial: "500ms".into(),
            max: "30s".into(),
            stable_after: "10s".into(),
        }
    }
}

/// `[mqtt.snapshot]`: annotated JPEGs, rate-limited per camera and task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    pub enabled: bool,
    /// At most one snapshot per camera and task in this interval, e.g. "5s".
    pub min_interval: String,
    /// JPEG quality, 1–100.
    pub jpeg_quality: u8,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            enabled: false,
            min_interval: "5s".into(),
            jpeg_quality: 80,
        }
    }
}

/// The `[mqtt]` table as the operator wrote it. Nothing here is trusted until
/// [`MqttSettings::validate`] has checked it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// Defaults to `florence-edge-{node}`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// Prefer `password_file`: a password here ends up in the config file.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// "30s"; "0s" disables keep-alive.
    pub keep_alive: String,
    /// 0, 1 or 2.
    pub qos: u8,
    pub topic_prefix: String,
    pub retain: RetainSettings,
    pub tls: TlsSettings,
    pub spool: SpoolSettings,
    pub reconnect: ReconnectSettings,
    /// How long one connection attempt (TCP, TLS, CONNACK) may take.
    pub connect_timeout: String,
    /// Results queued between the inference side and the publisher thread.
    pub queue_capacity: usize,
    /// Publishes awaiting acknowledgement at once. The default, 20, is
    /// mosquitto's own `max_inflight_messages`: with QoS 2 mosquitto drops a
    /// client that has more unreleased messages in flight than that.
    pub max_inflight: u16,
    pub snapshot: SnapshotSettings,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            keep_alive: "30s".into(),
            qos: 1,
            topic_prefix: "florence-edge".into(),
            retain: RetainSettings::default(),
            tls: TlsSettings::default(),
            spool: SpoolSettings::default(),
            reconnect: ReconnectSettings::default(),
            connect_timeout: "5s".into(),
            queue_capacity: 1024,
            max_inflight: 20,
            snapshot: SnapshotSettings::default(),
        }
    }
}

impl fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; the password must not.
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("keep_alive", &self.keep_alive)
            .field("qos", &self.qos)
            .field("topic_prefix", &self.topic_prefix)
            .field("retain", &self.retain)
            .field("tls", &self.tls)
            .field("spool", &self.spool)
            .field("reconnect", &self.reconnect)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_inflight", &self.max_inflight)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// Host and port of the broker, and whether to speak TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// A password, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// PEM material read from the TLS files.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// `None`: trust the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// (certificate PEM, key PEM)
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

/// Where the spool lives and how much it may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_messages: u64,
}

/// Snapshot publishing, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    pub enabled: bool,
    pub min_interval: Duration,
    pub jpeg_quality: u8,
}

/// The checked `[mqtt]` table: every value here is one rumqttc accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    pub broker: BrokerAddress,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub keep_alive: Duration,
    pub qos: QualityOfService,
    pub retain: RetainSettings,
    pub tls: Option<TlsMaterial>,
    pub topics: Topics,
    pub spool: SpoolConfig,
    pub reconnect: BackoffPolicy,
    pub connect_timeout: Duration,
    pub queue_capacity: usize,
    pub max_inflight: u16,
    pub snapshot: SnapshotConfig,
}

/// Parses "250ms", "30s", "5m", "1h" (an integer and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Splits `mqtt://host:port` / `mqtts://host:port`. Never echoes the URL in
/// an error: a URL with `user:password@` would leak the password.
pub fn parse_broker_url(url: &str) -> Result<BrokerAddress, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err("the scheme must be mqtt:// or mqtts://".into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(
            "credentials in the URL are not allowed; use username with password_file".into(),
        );
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(
            "a path, query or fragment is not allowed; allowed: mqtt[s]://host[:port]".into(),
        );
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        // IPv6 literal: [::1]:1883
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "an IPv6 address needs a closing ']'".to_string())?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err("after ']' only ':port' is allowed".into()),
        };
        (host, port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing; allowed: mqtt[s]://host[:port]".into());
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535".into()),
            Ok(port) => port,
        },
    };
    Ok(BrokerAddress {
        host: host.to_owned(),
        port,
        tls,
    })
}

impl MqttSettings {
    /// Checks everything, reads the password and TLS files, and returns the
    /// settings rumqttc can take, or every problem found.
    pub fn validate(&self, node_id: &str) -> Result<PublisherConfig, Vec<SettingsProblem>> {
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

        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("florence-edge-{node_id}"));
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

        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                problem(
                    "mqtt.password_file",
                    "give either password or password_file, not both".into(),
                );
                None
            }
            (Some(p), None) => Some(Password(p.clone())),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
                    if secret.is_empty() {
                        problem(
                            "mqtt.password_file",
                            format!("{} is empty; it must hold the password", path.display()),
                        );
                    }
                    Some(Password(secret))
                }
                Err(e) => {
                    problem(
                        "mqtt.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        if password.is_some() && self.username.as_deref().is_none_or(str::is_empty) {
            problem(
                "mqtt.username",
                "a password needs a username; set mqtt.username".into(),
            );
        }

        let keep_alive = match parse_duration(&self.keep_alive) {
            Some(d)
                if d.is_zero()
                    || (d.subsec_nanos() == 0 && (1..=65_535).contains(&d.as_secs())) =>
            {
                Some(d)
            }
            _ => {
                problem(
                    "mqtt.keep_alive",
                    format!(
                        "{:?} is not allowed; allowed: \"0s\" (off) or whole seconds from \"1s\" to \"65535s\"",
                        self.keep_alive
                    ),
                );
                None
            }
        };

        let qos = QualityOfService::from_level(self.qos);
        if qos.is_none() {
            problem(
                "mqtt.qos",
                format!("{} is not allowed; allowed: 0, 1 or 2", self.qos),
            );
        }

        let topics = match Topics::new(&self.topic_prefix, node_id) {
            Ok(t) => Some(t),
            Err(e) => {
                problem("mqtt.topic_prefix", e.to_string());
                None
            }
        };

        let tls = self.validate_tls(broker.as_ref(), &mut problem);

        let spool_dir = match &self.spool.dir {
            Some(dir) if !dir.as_os_str().is_empty() => Some(dir.clone()),
            _ => {
                problem(
                    "mqtt.spool.dir",
                    "missing; allowed: a writable directory under the state directory, e.g. /var/lib/florence-edge/spool".into(),
                );
                None
            }
        };
        if !(1..=10_000_000).contains(&self.spool.max_messages) {
            problem(
                "mqtt.spool.max_messages",
                format!(
                    "{} is not allowed; allowed: 1 to 10000000",
                    self.spool.max_messages
                ),
            );
        }

        let mut duration = |key: &str, text: &str, min: Duration, max: Duration| {
            match parse_duration(text) {
                Some(d) if d >= min && d <= max => Some(d),
                _ => {
                    problem(
                        key,
                        format!("{text:?} is not allowed; allowed: {min:?} to {max:?}, written like \"500ms\", \"30s\", \"5m\""),
                    );
                    None
                }
            }
        };
        let initial = duration(
            "mqtt.reconnect.initial",
            &self.reconnect.initial,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        );
        let max = duration(
            "mqtt.reconnect.max",
            &self.reconnect.max,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        );
        let stable_after = duration(
            "mqtt.reconnect.stable_after",
            &self.reconnect.stable_after,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        let connect_timeout = duration(
            "mqtt.connect_timeout",
            &self.connect_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        let min_interval = duration(
            "mqtt.snapshot.min_interval",
            &self.snapshot.min_interval,
            Duration::ZERO,
            Duration::from_secs(86_400),
        );
        if let (Some(i), Some(m)) = (initial, max) {
            if m < i {
                problem(
                    "mqtt.reconnect.max",
                    "must not be below mqtt.reconnect.initial".into(),
                );
            }
        }
        if connect_timeout.is_some_and(|d| d.subsec_nanos() != 0) {
            problem(
                "mqtt.connect_timeout",
                "must be whole seconds (rumqttc counts it in seconds)".into(),
            );
        }
        if !(1..=100).contains(&self.snapshot.jpeg_quality) {
            problem(
                "mqtt.snapshot.jpeg_quality",
                format!(
                    "{} is not allowed; allowed: 1 to 100",
                    self.snapshot.jpeg_quality
                ),
            );
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            problem(
                "mqtt.queue_capacity",
                format!(
                    "{} is not allowed; allowed: 1 to 1000000",
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

        match (
            broker,
            keep_alive,
            qos,
            topics,
            tls,
            spool_dir,
            initial,
            max,
            stable_after,
            connect_timeout,
            min_interval,
        ) {
            (
                Some(broker),
                Some(keep_alive),
                Some(qos),
                Some(topics),
                Some(tls),
                Some(dir),
                Some(initial),
                Some(max),
                Some(stable_after),
                Some(connect_timeout),
                Some(min_interval),
            ) if problems.is_empty() => Ok(PublisherConfig {
                broker,
                client_id,
                username: self.username.clone().filter(|u| !u.is_empty()),
                password,
                keep_alive,
                qos,
                retain: self.retain,
                tls,
                topics,
                spool: SpoolConfig {
                    dir,
                    max_messages: self.spool.max_messages,
                },
                reconnect: BackoffPolicy {
                    initial,
                    max,
                    stable_after,
                },
                connect_timeout,
                queue_capacity: self.queue_capacity,
                max_inflight: self.max_inflight,
                snapshot: SnapshotConfig {
                    enabled: self.snapshot.enabled,
                    min_interval,
                    jpeg_quality: self.snapshot.jpeg_quality,
                },
            }),
            _ => Err(problems),
        }
    }

    /// `Some(None)`: plain MQTT; `Some(Some(_))`: TLS material read;
    /// `None`: a problem was recorded.
    fn validate_tls(
        &self,
        broker: Option<&BrokerAddress>,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<Option<TlsMaterial>> {
        let tls_wanted = broker.is_some_and(|b| b.tls);
        let any_file = self.tls.ca_file.is_some()
            || self.tls.client_cert_file.is_some()
            || self.tls.client_key_file.is_some();
        if !tls_wanted {
            if any_file && broker.is_some() {
                problem(
                    "mqtt.tls",
                    "TLS files are set but mqtt.url is mqtt://; use mqtts:// or remove [mqtt.tls]"
                        .into(),
                );
                return None;
            }
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
        let ca_pem = match &self.tls.ca_file {
            Some(path) => {
                let pem = read(
                    "mqtt.tls.ca_file",
                    path,
                    "-----BEGIN CERTIFICATE-----",
                    "certificate",
                );
                ok &= pem.is_some();
                pem
            }
            None => None,
        };
        let client_auth = match (&self.tls.client_cert_file, &self.tls.client_key_file) {
            (Some(cert), Some(key)) => {
                let cert = read(
                    "mqtt.tls.client_cert_file",
                    cert,
                    "-----BEGIN CERTIFICATE-----",
                    "certificate",
                );
                let key = read(
                    "mqtt.tls.client_key_file",
                    key,
                    "PRIVATE KEY-----",
                    "private key",
                );
                match (cert, key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            (None, None) => None,
            _ => {
                problem(
                    "mqtt.tls",
                    "client_cert_file and client_key_file go together; set both or neither".into(),
                );
                ok = false;
                None
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_spool() -> MqttSettings {
        MqttSettings {
            spool: SpoolSettings {
                dir: Some("/tmp/spool".into()),
                max_messages: 10,
            },
            ..MqttSettings::default()
        }
    }

    #[test]
    fn defaults_with_a_spool_dir_validate() {
        let config = with_spool().validate("edge-01").expect("valid");
        assert_eq!(
            config.broker,
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(config.client_id, "florence-edge-edge-01");
        assert_eq!(config.keep_alive, Duration::from_secs(30));
        assert_eq!(config.qos, QualityOfService::AtLeastOnce);
        assert_eq!(config.topics.node_status(), "florence-edge/edge-01/status");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let settings = MqttSettings {
            url: "http://broker".into(),
            keep_alive: "500ms".into(),
            qos: 3,
            topic_prefix: "a/+/b".into(),
            password: Some("hunter2".into()),
            queue_capacity: 0,
            max_inflight: 0,
            ..MqttSettings::default()
        };
        let problems = settings.validate("edge/01").expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "node.id",
            "mqtt.url",
            "mqtt.username",
            "mqtt.keep_alive",
            "mqtt.qos",
            "mqtt.topic_prefix",
            "mqtt.spool.dir",
            "mqtt.queue_capacity",
            "mqtt.max_inflight",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let all = join_problems(&problems);
        assert!(!all.contains("hunter2"), "password leaked: {all}");
        assert!(all.contains("allowed: 0, 1 or 2"), "{all}");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtts://broker.lan").expect("ok"),
            BrokerAddress {
                host: "broker.lan".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(
            parse_broker_url("mqtt://[::1]:1884/").expect("ok"),
            BrokerAddress {
                host: "::1".into(),
                port: 1884,
                tls: false
            }
        );
        let err = parse_broker_url("mqtt://edge:s3cret@broker:1883").expect_err("userinfo");
        assert!(!err.contains("s3cret"));
        assert!(parse_broker_url("mqtt://broker:0").is_err());
        assert!(parse_broker_url("mqtt://broker:99999").is_err());
        assert!(parse_broker_url("mqtt://:1883").is_err());
        assert!(parse_broker_url("mqtt://broker/topic").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn password_file_is_read_and_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\n").expect("write");
        let settings = MqttSettings {
            username: Some("edge".into()),
            password_file: Some(path),
            ..with_spool()
        };
        let config = settings.validate("edge-01").expect("valid");
        assert_eq!(
            config.password.as_ref().map(Password::expose),
            Some("s3cret")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn tls_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let settings = MqttSettings {
            url: "mqtts://127.0.0.1:8883".into(),
            tls: TlsSettings {
                ca_file: Some(not_pem),
                client_cert_file: Some(dir.path().join("missing.pem")),
                client_key_file: None,
            },
            ..with_spool()
        };
        let problems = settings.validate("edge-01").expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["mqtt.tls.ca_file", "mqtt.tls"], "{problems:?}");

        let plain = MqttSettings {
            tls: TlsSettings {
                ca_file: Some("/x.pem".into()),
                ..TlsSettings::default()
            },
            ..with_spool()
        };
        let problems = plain.validate("edge-01").expect_err("tls files on mqtt://");
        assert_eq!(problems[0].key, "mqtt.tls");
    }

    #[test]
    fn keep_alive_below_a_second_never_reaches_rumqttc() {
        for bad in ["500ms", "1500ms", "70000s", "x"] {
            let settings = MqttSettings {
                keep_alive: bad.into(),
                ..with_spool()
            };
            let problems = settings.validate("n").expect_err(bad);
            assert_eq!(problems[0].key, "mqtt.keep_alive");
        }
        let off = MqttSettings {
            keep_alive: "0s".into(),
            ..with_spool()
        };
        assert_eq!(off.validate("n").expect("0s").keep_alive, Duration::ZERO);
    }
}
