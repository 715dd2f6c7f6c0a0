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

use super::topic::{check_level, Topics};
use crate::backoff::BackoffPolicy;
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
/// `reconnect` when unset (bounds in [`crate::backoff`]).
pub const DEFAULT_RECONNECT: ReconnectSettings = ReconnectSettings {
    backoff: BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(30)),
    stable_after: Duration::from_secs(10),
};
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

/// `[mqtt] reconnect`: the shared backoff policy, plus how long a
/// connection must last before the backoff starts again from `initial` (a
/// broker that accepts and then drops us at once keeps backing off instead
/// of being hammered).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ReconnectSettings {
    #[serde(flatten)]
    pub backoff: BackoffPolicy,
    #[serde(with = "humantime_text")]
    pub stable_after: Duration,
}

/// The `[mqtt]` section. Nothing here is trusted until
/// [`MqttSettings::check`] (or [`MqttSettings::validate`], which runs it)
/// has passed.
#[derive(Clone, PartialEq, Serialize)]
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
    pub reconnect: ReconnectSettings,
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
            let out = ReconnectSettings {
                backoff: BackoffPolicy::read(&mut t, d.reconnect.backoff, errors),
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
#[derive(Clone, Debug, PartialEq)]
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
    const ALLOWED: &str = "allowed: mqtt[s]://host[:port]";
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e}); {ALLOWED}"))?;
    let tls = match parsed.scheme() {
        "mqtts" => true,
        "mqtt" => false,
        _ => return Err("the scheme must be mqtt:// or mqtts://".into()),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "credentials in the URL are not allowed; use username with password_file".into(),
        );
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return Err(format!(
            "a path, query or fragment is not allowed; {ALLOWED}"
        ));
    }
    let host = match parsed.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_string(),
        _ => return Err(format!("the host is missing; {ALLOWED}")),
    };
    let port = match parsed.port() {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(0) => return Err("the port must be a number from 1 to 65535".into()),
        Some(port) => port,
    };
    Ok(BrokerAddress { host, port, tls })
}

mod check;

#[cfg(test)]
mod tests;
