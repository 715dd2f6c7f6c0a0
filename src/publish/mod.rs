//! Publishing stage: results, camera status and node status out over MQTT.
//!
//! The inference side hands over [`ResultPayload`]s with
//! [`Publisher::try_publish_result`], which never blocks: the result goes into a
//! bounded queue or comes back inside [`PublishError::QueueFull`]. One thread,
//! `fe-publish`, owns the MQTT connection (rumqttc on a current-thread tokio
//! runtime) and an on-disk [`spool`] that keeps results while the broker is away,
//! so neither an outage nor a restart of florence-edge loses them.
//!
//! The parts are split the rumqttc way, pure logic apart from I/O:
//! * [`settings`] — what the operator configured, validated all at once;
//! * [`payload`] — the wire types, with JSON Schemas generated from them;
//! * [`topic`] — topic names (`{prefix}/{camera}/{task}` …);
//! * [`connection`] — backoff with jitter and the connection state machine;
//! * [`spool`] — the bounded on-disk queue, oldest first;
//! * [`stats`] — counters and gauges for `/metrics`;
//! * `shell` — the thread that ties them to rumqttc.
//!
//! The same thread carries the control plane's MQTT side: it subscribes to
//! the command topics given to [`Publisher::set_command_inbox`] and hands
//! what arrives to that inbox (`control::mqtt` makes requests of it), sends
//! the answers ([`Publisher::publish_response`], transient) and keeps
//! retained latest values such as task states
//! ([`Publisher::publish_retained`], sent again after every reconnect).
//!
//! Delivery is at least once with QoS 1 and 2: a result the broker received but
//! whose acknowledgement was lost to a disconnect is sent again after the
//! reconnect. Results arrive in order per camera (first arrivals; a repeat is
//! always of an earlier sequence number).

pub mod connection;
pub mod homeassistant;
pub mod payload;
pub mod settings;
mod shell;
pub mod snapshot;
pub mod spool;
pub mod stats;
pub mod topic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};

pub use connection::LinkState;
pub use payload::{
    new_run_id, CameraState, CameraStatusPayload, FrameInfo, ModelInfo, NotRunning, ResultPayload,
    StageLatencies, StatusState, RESULT_SCHEMA_VERSION, STATUS_SCHEMA_VERSION,
};
pub use settings::{
    MqttSettings, PublisherConfig, QualityOfService, ReconnectSettings, SettingsProblem,
};
pub use snapshot::render_snapshot;
pub use spool::{Spool, SpoolError, SpooledMessage};
pub use stats::{PublisherStats, PublisherStatsSnapshot};
pub use topic::{TopicError, Topics};

/// Everything that can go wrong in the publishing stage.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The queue to the publisher thread is full; the result comes back so the
    /// caller can decide (it is already counted as a queue-full drop).
    #[error("MQTT publish queue is full; the result was not queued (the queue holds {capacity} results, raise mqtt.queue_capacity if this repeats)")]
    QueueFull {
        payload: Box<ResultPayload>,
        capacity: usize,
    },
    /// The publisher thread has stopped (after `shutdown`, or it failed).
    #[error("the MQTT publisher is not running")]
    Stopped,
    /// A camera id or task does not make a valid topic level.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The settings did not validate; every problem is listed.
    #[error("invalid MQTT settings: {}", settings::join_problems(.0))]
    Settings(Vec<SettingsProblem>),
    /// The spool directory could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A payload could not be serialized (a non-finite float in the result).
    #[error("cannot serialize the {what} payload as JSON: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A snapshot could not be encoded as JPEG.
    #[error("cannot encode the snapshot as JPEG: {0}")]
    Snapshot(#[source] image::ImageError),
    /// The publisher thread could not be started.
    #[error("cannot start the MQTT publisher thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A topic given whole (a retained value, a command response) cannot be
    /// published to.
    #[error("cannot publish to topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
}

/// What `shutdown` achieved, for the log line of a clean stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The broker acknowledged `offline` on the node status topic.
    pub offline_published: bool,
    /// Results still in the spool, to be delivered by the next run.
    pub left_in_spool: u64,
    /// Shutdown gave up waiting because the timeout passed.
    pub timed_out: bool,
}

/// What the inference side sends to the publisher thread.
pub(crate) enum Command {
    Result(Box<ResultPayload>),
    Snapshot {
        topic: String,
        jpeg: Vec<u8>,
    },
    /// The answer to a command: transient, neither spooled nor retained.
    Response {
        topic: String,
        payload: Vec<u8>,
    },
}

/// What a [`StatusBoard`] entry is the latest value of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BoardKey {
    /// A camera's status (retained as `mqtt.retain.camera_status` says).
    Camera(String),
    /// A retained latest value on a topic of its own
    /// ([`Publisher::publish_retained`]).
    Topic(String),
}

/// A retained latest value as JSON, and whether it still has to go out.
pub(crate) struct PendingStatus {
    pub(crate) topic: String,
    pub(crate) json: Vec<u8>,
    pub(crate) unsent: bool,
}

/// The latest status of every camera, and other retained latest values
/// (task states, the node's configuration summary), kept apart from the
/// result queue: a newer value replaces an unsent older one instead of
/// queueing behind results, and it is never refused. Every value is sent
/// again after a reconnect (the broker may have lost it).
///
/// It also carries the command inbox to the `fe-publish` thread: the thread
/// subscribes to its filters after every connect, and at once (woken by
/// `notify`) when an inbox is set while connected.
#[derive(Default)]
pub(crate) struct StatusBoard {
    /// camera or topic → (topic, JSON, still to be sent)
    pub(crate) latest: Mutex<std::collections::BTreeMap<BoardKey, PendingStatus>>,
    pub(crate) dirty: AtomicBool,
    pub(crate) notify: Notify,
    pub(crate) inbox: Mutex<Option<Arc<CommandInbox>>>,
    /// Set with a new inbox; the thread then brings its subscriptions in line.
    pub(crate) inbox_changed: AtomicBool,
}

/// Where incoming messages on command topics go.
pub(crate) struct CommandInbox {
    pub(crate) filters: Vec<String>,
    pub(crate) deliver: Box<dyn Fn(String, Vec<u8>) + Send + Sync>,
}

impl CommandInbox {
    pub(crate) fn wants(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| rumqttc::matches(topic, f))
    }
}

/// Checks a topic given whole: one rumqttc would refuse ends the connection.
fn check_publish_topic(topic: &str) -> Result<(), PublishError> {
    let reason = if topic.is_empty() {
        Some("it is empty")
    } else if topic.contains(['+', '#']) {
        Some("it contains an MQTT wildcard ('+' or '#')")
    } else if topic.starts_with('$') {
        Some("topics starting with '$' are reserved for the broker")
    } else if topic.contains('\0') {
        Some("it contains a NUL character")
    } else if topic.len() > usize::from(u16::MAX) {
        Some("it is longer than 65535 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PublishError::InvalidTopic {
            topic: topic.chars().take(200).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Handle to the running publisher. Cheap calls, none of which block on MQTT.
pub struct Publisher {
    commands: mpsc::Sender<Command>,
    board: Arc<StatusBoard>,
    stats: Arc<PublisherStats>,
    topics: Topics,
    queue_capacity: usize,
    snapshot_gate: Mutex<topic::SnapshotGate>,
    shutdown: Option<oneshot::Sender<Instant>>,
    thread: Option<JoinHandle<ShutdownReport>>,
}

impl Publisher {
    /// Validates `settings`, opens the spool (results left by an earlier run
    /// are delivered first) and starts the `fe-publish` thread, which connects
    /// in the background: an unreachable broker is not an error here.
    pub fn start(settings: &MqttSettings, node_id: &str) -> Result<Publisher, PublishError> {
        let config = settings.validate(node_id).map_err(PublishError::Settings)?;
        Publisher::start_validated(config)
    }

    /// Starts from settings that were validated already (e.g. by `validate`).
    pub fn start_validated(config: PublisherConfig) -> Result<Publisher, PublishError> {
        let stats = Arc::new(PublisherStats::default());
        let spool = Spool::open(
            &config.settings.spool.dir,
            config.settings.spool.max_messages,
        )?;
        if !spool.is_empty() {
            tracing::info!(
                spooled = spool.len(),
                dir = %config.settings.spool.dir.display(),
                "Found results spooled by an earlier run; they go out first once the broker is reachable."
            );
        }
        stats.set_spool(&spool);
        let (tx, rx) = mpsc::channel(config.settings.queue_capacity);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let board = Arc::new(StatusBoard::default());
        let topics = config.topics.clone();
        let queue_capacity = config.settings.queue_capacity;
        let snapshot_gate = Mutex::new(topic::SnapshotGate::new(
            config.settings.snapshots.min_interval,
        ));
        let shell = shell::Shell::new(config, spool, rx, shutdown_rx, board.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("fe-publish".into())
            .spawn(move || shell.run())
            .map_err(PublishError::Thread)?;
        Ok(Publisher {
            commands: tx,
            board,
            stats,
            topics,
            queue_capacity,
            snapshot_gate,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Queues one result for `{prefix}/{camera}/{task}`. Never blocks: when the
    /// queue is full the result comes back in [`PublishError::QueueFull`] and
    /// the queue-full counter goes up.
    pub fn try_publish_result(&self, payload: ResultPayload) -> Result<(), PublishError> {
        // Check the topic here so a bad camera id or task fails at the caller,
        // where it can be logged with context, not later on the thread.
        self.topics.result(&payload.camera, &payload.task)?;
        match self.commands.try_send(Command::Result(Box::new(payload))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Command::Result(payload))) => {
                self.stats.count_queue_full();
                Err(PublishError::QueueFull {
                    payload,
                    capacity: self.queue_capacity,
                })
            }
            Err(_) => Err(PublishError::Stopped),
        }
    }

    /// Sets the retained status of `camera`. The newest status wins: if an
    /// older one is still unsent (broker away), it is replaced, not queued.
    pub fn publish_camera_status(
        &self,
        camera: &str,
        payload: &CameraStatusPayload,
    ) -> Result<(), PublishError> {
        let topic = self.topics.camera_status(camera)?;
        let mut payload = payload.clone();
        payload.last_error = payload
            .last_error
            .map(|e| crate::settings::redact_text(&e, &[]));
        let json = serde_json::to_vec(&payload).map_err(|source| PublishError::Serialize {
            what: "camera status",
            source,
        })?;
        {
            let mut latest = crate::sync::lock(&self.board.latest);
            latest.insert(
                BoardKey::Camera(camera.to_owned()),
                PendingStatus {
                    topic,
                    json,
                    unsent: true,
                },
            );
        }
        self.board.dirty.store(true, Ordering::Release);
        self.board.notify.notify_one();
        Ok(())
    }

    /// Sets a retained latest value on `topic` (a task state, the node's
    /// configuration summary), with `retain` always set. Like camera statuses:
    /// the newest value per topic wins, an unsent older one is replaced, and
    /// every value is sent again after each reconnect. An empty `payload`
    /// clears the retained message on the broker; it is sent once and then
    /// forgotten.
    pub fn publish_retained(&self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        check_publish_topic(&topic)?;
        {
            let mut latest = crate::sync::lock(&self.board.latest);
            latest.insert(
                BoardKey::Topic(topic.clone()),
                PendingStatus {
                    topic,
                    json: payload,
                    unsent: true,
                },
            );
        }
        self.board.dirty.store(true, Ordering::Release);
        self.board.notify.notify_one();
        Ok(())
    }

    /// Queues a transient message (the answer to a command) for `topic`:
    /// not spooled, not retained, QoS as configured. Returns whether it was
    /// queued; while the broker is away, or when the queue is full, it is
    /// dropped and counted (`responses_dropped`).
    pub fn publish_response(&self, topic: String, payload: Vec<u8>) -> Result<bool, PublishError> {
        check_publish_topic(&topic)?;
        if !self.stats.is_connected() {
            self.stats.count_response_dropped();
            return Ok(false);
        }
        match self.commands.try_send(Command::Response { topic, payload }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.count_response_dropped();
                Ok(false)
            }
            Err(_) => Err(PublishError::Stopped),
        }
    }

    /// Hands every message arriving on a topic that matches one of
    /// `filters` to `inbox(topic, payload)`, from now on: the publisher
    /// subscribes to them (QoS 1) at once when connected and again after
    /// every reconnect. A later call replaces the filters and the inbox.
    ///
    /// `inbox` runs on the `fe-publish` thread and must not block (send on
    /// a channel). Messages the broker delivers with the retain flag (a
    /// retained command, which would be replayed at every reconnect) are
    /// logged and ignored. Invalid filters are logged and left out.
    pub fn set_command_inbox(
        &self,
        filters: Vec<String>,
        inbox: Box<dyn Fn(String, Vec<u8>) + Send + Sync>,
    ) {
        let filters = filters
            .into_iter()
            .filter(|f| {
                let valid = rumqttc::valid_filter(f) && !f.starts_with('$');
                if !valid {
                    tracing::error!(filter = %f, "Not subscribing to an invalid MQTT topic filter.");
                }
                valid
            })
            .collect();
        *crate::sync::lock(&self.board.inbox) = Some(Arc::new(CommandInbox {
            filters,
            deliver: inbox,
        }));
        self.board.inbox_changed.store(true, Ordering::Release);
        self.board.notify.notify_one();
    }

    /// Queues an annotated JPEG for `{prefix}/{camera}/{task}/snapshot` unless
    /// one went out for the same camera and task less than
    /// `mqtt.snapshot.min_interval` ago. Returns whether it was queued.
    /// Snapshots are never spooled: a stale picture is worth little.
    pub fn try_publish_snapshot(
        &self,
        camera: &str,
        task: &str,
        jpeg: Vec<u8>,
    ) -> Result<bool, PublishError> {
        if !self.claim_snapshot(camera, task)? {
            return Ok(false);
        }
        self.send_snapshot(camera, task, jpeg)
    }

    /// Takes the rate-limit slot of this camera and task's snapshot if
    /// `min_interval` has passed (and counts a skip if not), so that a
    /// caller renders only the snapshots that will be sent.
    pub fn claim_snapshot(&self, camera: &str, task: &str) -> Result<bool, PublishError> {
        let topic = self.topics.snapshot(camera, task)?;
        let due = crate::sync::lock(&self.snapshot_gate).admit(&topic, Instant::now());
        if !due {
            self.stats.count_snapshot_skipped();
        }
        Ok(due)
    }

    /// Queues a snapshot whose slot [`Publisher::claim_snapshot`] gave.
    /// Returns whether it was queued (a full queue is counted).
    pub fn send_snapshot(
        &self,
        camera: &str,
        task: &str,
        jpeg: Vec<u8>,
    ) -> Result<bool, PublishError> {
        let topic = self.topics.snapshot(camera, task)?;
        match self.commands.try_send(Command::Snapshot { topic, jpeg }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.count_queue_full();
                Ok(false)
            }
            Err(_) => Err(PublishError::Stopped),
        }
    }

    /// Counters and gauges, shared with the metrics endpoint.
    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// The topic names this publisher uses.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Delivers what is queued, publishes `offline` on the node status topic
    /// and disconnects, giving up after `timeout`. Whatever is not delivered by
    /// then is left in the spool for the next run. Blocks for at most about
    /// `timeout` (it is the one call that waits, by design).
    pub fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> ShutdownReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(Instant::now() + timeout);
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                tracing::error!("The MQTT publisher thread panicked during shutdown.");
                ShutdownReport::default()
            }),
            None => ShutdownReport::default(),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // A publisher dropped without `shutdown` still spools what it holds.
        if self.thread.is_some() {
            self.stop(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_topics_are_checked_before_rumqttc_sees_them() {
        assert!(check_publish_topic("fe/cam/od/state").is_ok());
        for (topic, why) in [
            ("", "empty"),
            ("fe/+/x", "wildcard"),
            ("fe/#", "wildcard"),
            ("$SYS/x", "reserved"),
            ("fe/a\0b", "NUL"),
        ] {
            let err = check_publish_topic(topic).expect_err(topic).to_string();
            assert!(err.contains(why), "{topic:?}: {err}");
        }
        let long = "a".repeat(70_000);
        assert!(check_publish_topic(&long)
            .expect_err("long")
            .to_string()
            .contains("65535"));
    }

    #[test]
    fn inbox_filters_match_like_the_broker() {
        let inbox = CommandInbox {
            filters: vec!["fe/n/set/#".into(), "fe/+/+/set".into()],
            deliver: Box::new(|_, _| {}),
        };
        assert!(inbox.wants("fe/n/set/config/get"));
        assert!(inbox.wants("fe/cam/od/set"));
        assert!(!inbox.wants("fe/cam/od/set/enabled"));
        assert!(!inbox.wants("fe/n/response"));
    }
}
