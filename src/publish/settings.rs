//! The `[mqtt]` section: its one definition ([`MqttSettings`], with the
//! `DEFAULT_*` values beside it), how it is read from the configuration file
//! ([`MqttSettings::from_section`]) and its checked, ready-to-connect form
//! ([`PublisherConfig`]).
//!
//! Every bound is written once, in [`MqttSettings::check`], which both the
//! file compiler and programmatic callers go through, so `validate` and `run`
//! can never disagree. [`MqttSettings::validate`] adds what needs the disk
//! (password and TLS files) and runs before anything reaches rumqttc, whose
//! option setters assert (keep-alive under a second, zero in-flight messages)
//! instead of returning errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::connection::BackoffPolicy;
use super::topic::{check_level, Topics};
use crate::settings::{
    boolean, duration_in, non_empty_string, password, path_value, string, uint_in, Errors, Fields,
    PasswordSource, Problem,
};

/// The broker when `url` is not set.
pub const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";
/// `keep_alive`: MQTT counts it in whole seconds, `0s` turns it off.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
pub const MAX_KEEP_ALIVE_SECS: u64 = u16::MAX as u64;
pub const DEFAULT_QOS: u8 = 1;
pub const DEFAULT_TOPIC_PREFIX: &str = "florence-edge";
/// `spool.dir` when unset: under systemd's `StateDirectory=florence-edge`,
/// so results spooled during an outage survive a restart.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/florence-edge/spool";
pub const DEFAULT_SPOOL_MAX_MESSAGES: u64 = 100_000;
/// Bounds of `spool.max_messages` (one file per message).
pub const SPOOL_MAX_MESSAGES: (u64, u64) = (1, 10_000_000);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of `connect_timeout`, whole seconds (rumqttc counts seconds).
pub const CONNECT_TIMEOUT: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(300));
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
pub const QUEUE_CAPACITY: (usize, usize) = (1, 1_000_000);
/// Publishes awaiting acknowledgement at once: mosquitto's own
/// `max_inflight_messages`. With QoS 2 mosquitto drops a client that has
/// more unreleased messages in flight than that.
pub const DEFAULT_MAX_INFLIGHT: u16 = 20;
pub const DEFAULT_RECONNECT: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
    stable_after: Duration::from_secs(10),
};
/// Bounds of `reconnect.initial` and `reconnect.max`.
pub const RECONNECT_DELAY: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
/// Bounds of `reconnect.stable_after`.
pub const RECONNECT_STABLE_AFTER: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(3600));
pub const DEFAULT_SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Bounds of `snapshots.min_interval`.
pub const SNAPSHOT_MIN_INTERVAL: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(86_400));
pub const DEFAULT_JPEG_QUALITY: u8 = 80;

/// Longest duration read before the bounds are checked (a typo beyond it
/// is refused by the reader, a value within it by [`MqttSettings::check`]).
const ANY_DURATION: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(365 * 86_400));

/// One thing wrong with the settings: the key as written in the file
/// (`mqtt.keep_alive`) and a sentence that says what is wrong and what is
/// allowed. Never contains a password.
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

/// `[mqtt.retain]`: which kinds of topic are published with the retain flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    /// PEM file of the CA(s) that signed the broker's certificate; without it
    /// the system's roots are used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[mqtt.spool]`: where results wait while the broker is away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// Bound on spooled results; beyond it the oldest are dropped and counted.
    pub max_messages: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_messages: DEFAULT_SPOOL_MAX_MESSAGES,
        }
    }
}

/// `[mqtt.snapshots]`: annotated JPEGs, rate-limited per camera and task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotSettings {
    pub enabled: bool,
    /// At most one snapshot per camera and task in this interval.
    #[serde(with = "humantime_text")]
    pub min_interval: Duration,
    /// JPEG quality, 1–100.
    pub jpeg_quality: u8,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            enabled: false,
            min_interval: DEFAULT_SNAPSHOT_MIN_INTERVAL,
            jpeg_quality: DEFAULT_JPEG_QUALITY,
        }
    }
}

/// The `[mqtt]` section. Nothing here is trusted until
/// [`MqttSettings::check`] (or [`MqttSettings::validate`], which runs it)
/// has passed.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// Defaults to `florence-edge-{node}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `password` or `password_file` (preferred: a password in the
    /// configuration file ends up in backups and git).
    #[serde(skip)]
    pub password: Option<PasswordSource>,
    /// Whole seconds; zero disables keep-alive.
    #[serde(with = "humantime_text")]
    pub keep_alive: Duration,
    /// 0, 1 or 2.
    pub qos: u8,
    pub topic_prefix: String,
    pub retain: RetainSettings,
    pub tls: TlsSettings,
    pub spool: SpoolSettings,
    #[serde(with = "backoff_text")]
    pub reconnect: BackoffPolicy,
    /// How long one connection attempt (TCP, TLS, CONNACK) may take.
    #[serde(with = "humantime_text")]
    pub connect_timeout: Duration,
    /// Results queued between the inference side and the publisher thread.
    pub queue_capacity: usize,
    /// Publishes awaiting acknowledgement at once.
    pub max_inflight: u16,
    pub snapshots: SnapshotSettings,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            url: DEFAULT_URL.into(),
            client_id: None,
            username: None,
            password: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            qos: DEFAULT_QOS,
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            retain: RetainSettings::default(),
            tls: TlsSettings::default(),
            spool: SpoolSettings::default(),
            reconnect: DEFAULT_RECONNECT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            snapshots: SnapshotSettings::default(),
        }
    }
}

impl fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; the password must not (PasswordSource
        // prints an inline one as ***).
        f.debug_struct("MqttSettings")
            .field("url", &crate::settings::redact_url(&self.url))
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("keep_alive", &self.keep_alive)
            .field("qos", &self.qos)
            .field("topic_prefix", &self.topic_prefix)
            .field("retain", &self.retain)
            .field("tls", &self.tls)
            .field("spool", &self.spool)
            .field("reconnect", &self.reconnect)
            .field("connect_timeout", &self.connect_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_inflight", &self.max_inflight)
            .field("snapshots", &self.snapshots)
            .finish()
    }
}

/// Durations shown as operators write them (`30s`, `1m 30s`) in
/// `validate --print`.
mod humantime_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

mod backoff_text {
    use serde::ser::SerializeStruct;

    use super::BackoffPolicy;

    pub fn serialize<S: serde::Serializer>(b: &BackoffPolicy, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_struct("reconnect", 3)?;
        t.serialize_field(
            "initial",
            &humantime::format_duration(b.initial).to_string(),
        )?;
        t.serialize_field("max", &humantime::format_duration(b.max).to_string())?;
        t.serialize_field(
            "stable_after",
            &humantime::format_duration(b.stable_after).to_string(),
        )?;
        t.end()
    }
}

fn any_duration(value: &::config::Value) -> Result<Duration, Problem> {
    duration_in(value, ANY_DURATION.0, ANY_DURATION.1)
}

/// A whole number of the field's type; its bounds are checked by
/// [`MqttSettings::check`].
fn whole_number<T: TryFrom<u64>>(value: &::config::Value) -> Result<T, Problem> {
    let n = uint_in(value, 0, u64::MAX)
        .map_err(|p| Problem::new(p.problem, "a whole number, see docs/MQTT.md"))?;
    T::try_from(n).map_err(|_| Problem::new(format!("{n} is too large"), "see docs/MQTT.md"))
}

impl MqttSettings {
    /// Reads the `[mqtt]` table of the configuration file (`f`, at key path
    /// `mqtt`): the types of its keys here, their bounds and relations in
    /// [`MqttSettings::check`], every problem reported under the key as
    /// written in the file.
    pub(crate) fn from_section(
        mut f: Fields,
        node_id: Option<&str>,
        errors: &mut Errors,
    ) -> Option<MqttSettings> {
        let origins = f.origins();
        let d = MqttSettings::default();
        let url = f.or("url", d.url, errors, string);
        let client_id = f.opt("client_id", errors, non_empty_string);
        let username = f.opt("username", errors, non_empty_string);
        let password = password(&mut f, errors);
        let keep_alive = f.or("keep_alive", d.keep_alive, errors, any_duration);
        let qos = f.or("qos", d.qos, errors, whole_number);
        let topic_prefix = f.or("topic_prefix", d.topic_prefix, errors, string);
        let retain = f.table("retain", errors).map(|mut t| {
            let r = RetainSettings::default();
            let out = RetainSettings {
                node_status: t.or("node_status", r.node_status, errors, boolean),
                camera_status: t.or("camera_status", r.camera_status, errors, boolean),
                results: t.or("results", r.results, errors, boolean),
                snapshots: t.or("snapshots", r.snapshots, errors, boolean),
            };
            t.finish(errors);
            out
        });
        let tls = f.table("tls", errors).map(|mut t| {
            let out = TlsSettings {
                ca_file: t.opt("ca_file", errors, path_value),
                cert_file: t.opt("cert_file", errors, path_value),
                key_file: t.opt("key_file", errors, path_value),
            };
            t.finish(errors);
            out
        });
        let spool = f.table("spool", errors).map(|mut t| {
            let out = SpoolSettings {
                dir: t.or("dir", d.spool.dir, errors, path_value),
                max_messages: t.or("max_messages", d.spool.max_messages, errors, whole_number),
            };
            t.finish(errors);
            out
        });
        let reconnect = f.table("reconnect", errors).map(|mut t| {
            let out = BackoffPolicy {
                initial: t.or("initial", d.reconnect.initial, errors, any_duration),
                max: t.or("max", d.reconnect.max, errors, any_duration),
                stable_after: t.or(
                    "stable_after",
                    d.reconnect.stable_after,
                    errors,
                    any_duration,
                ),
            };
            t.finish(errors);
            out
        });
        let connect_timeout = f.or("connect_timeout", d.connect_timeout, errors, any_duration);
        let queue_capacity = f.or("queue_capacity", d.queue_capacity, errors, whole_number);
        let max_inflight = f.or("max_inflight", d.max_inflight, errors, whole_number);
        let snapshots = f.table("snapshots", errors).map(|mut t| {
            let s = SnapshotSettings::default();
            let out = SnapshotSettings {
                enabled: t.or("enabled", s.enabled, errors, boolean),
                min_interval: t.or("min_interval", s.min_interval, errors, any_duration),
                jpeg_quality: t.or("jpeg_quality", s.jpeg_quality, errors, whole_number),
            };
            t.finish(errors);
            out
        });
        let section_origin = f.origin().map(str::to_string);
        f.finish(errors);
        let settings = MqttSettings {
            url,
            client_id,
            username,
            password,
            keep_alive,
            qos,
            topic_prefix,
            retain: retain?,
            tls: tls?,
            spool: spool?,
            reconnect: reconnect?,
            connect_timeout,
            queue_capacity,
            max_inflight,
            snapshots: snapshots?,
        };
        // The node id is checked by its own section; only the MQTT keys here.
        let node = node_id.unwrap_or("node");
        for p in settings.check(node) {
            if p.key == "node.id" || errors.has_key(&p.key) {
                continue;
            }
            let origin = origins
                .iter()
                .find(|(key, _)| *key == p.key)
                .map(|(_, origin)| origin.as_str())
                .or(section_origin.as_deref());
            errors.report(origin, &p.key, Problem::message(p.problem));
        }
        Some(settings)
    }

    /// The client id used with the broker.
    pub fn client_id_for(&self, node_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("florence-edge-{node_id}"))
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

/// The checked `[mqtt]` section with what was derived and read from it:
/// every value here is one rumqttc accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// The section as written (checked).
    pub settings: MqttSettings,
    pub broker: BrokerAddress,
    pub client_id: String,
    /// Read from `password` or `password_file`.
    pub password: Option<Password>,
    pub qos: QualityOfService,
    /// Read from the `tls` files; `None` for `mqtt://`.
    pub tls: Option<TlsMaterial>,
    pub topics: Topics,
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
    /// Every problem that needs no file: each bound and relation of the
    /// section, written once. Keys are as in the configuration file.
    pub fn check(&self, node_id: &str) -> Vec<SettingsProblem> {
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
            "mqtt.reconnect.initial",
            self.reconnect.initial,
            RECONNECT_DELAY,
        );
        range("mqtt.reconnect.max", self.reconnect.max, RECONNECT_DELAY);
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
        if self.reconnect.max < self.reconnect.initial {
            problem(
                "mqtt.reconnect.max",
                "is below mqtt.reconnect.initial; allowed: max >= initial".into(),
            );
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
        problems
    }

    /// [`MqttSettings::check`], then reads the password and TLS files, and
    /// returns the settings rumqttc can take, or every problem found.
    pub fn validate(&self, node_id: &str) -> Result<PublisherConfig, Vec<SettingsProblem>> {
        let mut problems = self.check(node_id);
        let mut problem = |key: &str, text: String| {
            problems.push(SettingsProblem {
                key: key.to_owned(),
                problem: text,
            })
        };
        let password = match &self.password {
            None => None,
            Some(PasswordSource::Inline(secret)) => Some(Password(secret.expose().to_string())),
            Some(PasswordSource::File(path)) => match std::fs::read_to_string(path) {
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
        };
        let broker = parse_broker_url(&self.url).ok();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_spool() -> MqttSettings {
        MqttSettings {
            spool: SpoolSettings {
                dir: "/tmp/spool".into(),
                max_messages: 10,
            },
            ..MqttSettings::default()
        }
    }

    #[test]
    fn defaults_validate() {
        let config = MqttSettings::default().validate("edge-01").expect("valid");
        assert_eq!(
            config.broker,
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(config.client_id, "florence-edge-edge-01");
        assert_eq!(config.settings.keep_alive, Duration::from_secs(30));
        assert_eq!(config.qos, QualityOfService::AtLeastOnce);
        assert_eq!(config.topics.node_status(), "florence-edge/edge-01/status");
        assert_eq!(config.settings.spool.dir, PathBuf::from(DEFAULT_SPOOL_DIR));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let settings = MqttSettings {
            url: "http://broker".into(),
            keep_alive: Duration::from_millis(500),
            qos: 3,
            topic_prefix: "a/+/b".into(),
            password: Some(PasswordSource::Inline(crate::settings::Secret::new(
                "hunter2",
            ))),
            queue_capacity: 0,
            max_inflight: 0,
            spool: SpoolSettings {
                dir: PathBuf::new(),
                max_messages: 0,
            },
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
            "mqtt.spool.max_messages",
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
    fn password_file_is_read_and_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\n").expect("write");
        let settings = MqttSettings {
            username: Some("edge".into()),
            password: Some(PasswordSource::File(path)),
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
                cert_file: Some(dir.path().join("missing.pem")),
                key_file: None,
            },
            ..with_spool()
        };
        let problems = settings.validate("edge-01").expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["mqtt.tls.key_file", "mqtt.tls.ca_file"],
            "{problems:?}"
        );

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
    fn keep_alive_is_whole_seconds_and_never_below_one_unless_off() {
        for bad in [
            Duration::from_millis(500),
            Duration::from_millis(1500),
            Duration::from_secs(70_000),
        ] {
            let settings = MqttSettings {
                keep_alive: bad,
                ..with_spool()
            };
            let problems = settings.check("n");
            assert_eq!(problems[0].key, "mqtt.keep_alive", "{bad:?}");
        }
        for good in [
            Duration::ZERO,
            Duration::from_secs(90),
            Duration::from_secs(1),
        ] {
            let settings = MqttSettings {
                keep_alive: good,
                ..with_spool()
            };
            assert_eq!(
                settings.validate("n").expect("valid").settings.keep_alive,
                good
            );
        }
    }
}
