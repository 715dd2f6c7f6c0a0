//! Topic names (DESIGN.md §6):
//! `{prefix}/{node}/status`, `{prefix}/{camera}/status`,
//! `{prefix}/{camera}/{task}` and `{prefix}/{camera}/{task}/snapshot`, with the
//! task in lower snake case (`<OCR_WITH_REGION>` → `ocr_with_region`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A name that cannot be used in a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{what} {value:?} cannot be a topic level: {reason}")]
    InvalidLevel {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("task {0:?} is not a task token; allowed: <UPPER_SNAKE_CASE> such as <OD> or <OCR_WITH_REGION>")]
    InvalidTask(String),
    #[error("camera id {0:?} is also the node id; they share `{{prefix}}/{{id}}/status`, so rename the camera")]
    CameraIsNode(String),
    #[error("camera id {0:?} is a reserved topic level; allowed: any id but {reserved}", reserved = RESERVED_LEVELS.join(", "))]
    ReservedCameraId(String),
    #[error("topic prefix {value:?} is not allowed: {reason}")]
    InvalidPrefix { value: String, reason: &'static str },
}

/// Longest topic level we accept; MQTT allows 64 KiB per topic, but an id this
/// long is a mistake, and a short bound keeps topic strings cheap.
const MAX_LEVEL_BYTES: usize = 128;

/// Topic levels the daemon's own topics use beside camera ids (status
/// topics, node info, events, control `…/set` topics, snapshots): a camera
/// named so would share, or shadow, one of them.
pub const RESERVED_LEVELS: &[&str] = &["status", "info", "events", "set", "snapshot"];

/// Checks a camera id against the node's topics: a valid level, not a
/// reserved one, not the node id. `validate` runs it, so a camera whose
/// results could not be published never starts.
pub fn check_camera_id(camera: &str, node: &str) -> Result<(), TopicError> {
    if RESERVED_LEVELS.contains(&camera) {
        return Err(TopicError::ReservedCameraId(camera.to_owned()));
    }
    check_level("camera id", camera)?;
    if camera == node {
        return Err(TopicError::CameraIsNode(camera.to_owned()));
    }
    Ok(())
}

/// Checks one topic level (a node or camera id).
pub fn check_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > MAX_LEVEL_BYTES {
        Some("it is longer than 128 bytes")
    } else if value.contains('/') {
        Some("it contains '/'")
    } else if value.contains(['+', '#']) {
        Some("it contains an MQTT wildcard ('+' or '#')")
    } else if value.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if value == "status" {
        Some("\"status\" is reserved for status topics")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TopicError::InvalidLevel {
            what,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `<OCR_WITH_REGION>` → `ocr_with_region`.
pub fn task_level(task: &str) -> Result<String, TopicError> {
    let inner = task
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .filter(|t| {
            !t.is_empty()
                && t.len() <= MAX_LEVEL_BYTES
                && t.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .ok_or_else(|| TopicError::InvalidTask(task.to_owned()))?;
    Ok(inner.to_ascii_lowercase())
}

/// Topic names of one node under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    node: String,
}

impl Topics {
    pub fn new(prefix: &str, node: &str) -> Result<Topics, TopicError> {
        let bad = |reason| {
            Err(TopicError::InvalidPrefix {
                value: prefix.to_owned(),
                reason,
            })
        };
        if prefix.is_empty() {
            return bad("it is empty; allowed: levels like \"florence-edge\" or \"site/a\"");
        }
        if prefix.contains(['+', '#']) {
            return bad("it contains an MQTT wildcard ('+' or '#')");
        }
        if prefix.starts_with('$') {
            return bad("topics starting with '$' are reserved for the broker");
        }
        if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return bad("it has an empty level (a leading, trailing or doubled '/')");
        }
        if prefix.chars().any(char::is_control) || prefix.len() > 1024 {
            return bad("it contains a control character or is longer than 1024 bytes");
        }
        check_level("node id", node)?;
        Ok(Topics {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// `{prefix}/{node}/status`
    pub fn node_status(&self) -> String {
        format!("{}/{}/status", self.prefix, self.node)
    }

    fn check_camera(&self, camera: &str) -> Result<(), TopicError> {
        check_camera_id(camera, &self.node)
    }

    /// `{prefix}/{camera}/status`
    pub fn camera_status(&self, camera: &str) -> Result<String, TopicError> {
        self.check_camera(camera)?;
        Ok(format!("{}/{camera}/status", self.prefix))
    }

    /// `{prefix}/{camera}/{task}`
    pub fn result(&self, camera: &str, task: &str) -> Result<String, TopicError> {
        self.check_camera(camera)?;
        let task = task_level(task)?;
        Ok(format!("{}/{camera}/{task}", self.prefix))
    }

    /// `{prefix}/{camera}/{task}/snapshot`
    pub fn snapshot(&self, camera: &str, task: &str) -> Result<String, TopicError> {
        Ok(format!("{}/snapshot", self.result(camera, task)?))
    }

    /// The prefix, as configured (`florence-edge`, `site/a`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}/{camera}/{name}/state`: the retained effective settings of
    /// one task; `name` is its control name (`control::task_names`: `od`,
    /// `open_vocabulary_detection_2`).
    pub fn task_state(&self, camera: &str, name: &str) -> Result<String, TopicError> {
        self.check_camera(camera)?;
        check_level("task name", name)?;
        Ok(format!("{}/{camera}/{name}/state", self.prefix))
    }

    /// `{prefix}/{camera}/{name}/set`: commands for one task (JSON keys of
    /// the task; `…/set/enabled`, `…/set/text`, `…/set/every` take plain
    /// values).
    pub fn task_command(&self, camera: &str, name: &str) -> Result<String, TopicError> {
        self.check_camera(camera)?;
        check_level("task name", name)?;
        Ok(format!("{}/{camera}/{name}/set", self.prefix))
    }

    /// `{prefix}/{node}/set`: the node's command topics start here.
    pub fn node_command(&self) -> String {
        format!("{}/{}/set", self.prefix, self.node)
    }

    /// `{prefix}/{node}/response`: where every command is answered.
    pub fn command_response(&self) -> String {
        format!("{}/{}/response", self.prefix, self.node)
    }

    /// `{prefix}/{node}/config`: the retained revision and summary of the
    /// configuration in effect.
    pub fn node_config(&self) -> String {
        format!("{}/{}/config", self.prefix, self.node)
    }
}

/// Rate limit for snapshots: at most one per topic per interval.
#[derive(Debug)]
pub(crate) struct SnapshotGate {
    min_interval: Duration,
    last: HashMap<String, Instant>,
}

impl SnapshotGate {
    pub(crate) fn new(min_interval: Duration) -> SnapshotGate {
        SnapshotGate {
            min_interval,
            last: HashMap::new(),
        }
    }

    /// True (and the time is recorded) when `topic` may carry a snapshot now.
    pub(crate) fn admit(&mut self, topic: &str, now: Instant) -> bool {
        match self.last.get_mut(topic) {
            Some(last) if now.saturating_duration_since(*last) < self.min_interval => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.last.insert(topic.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_design_section_6() {
        let topics = Topics::new("florence-edge", "edge-01").expect("valid");
        assert_eq!(topics.node_status(), "florence-edge/edge-01/status");
        assert_eq!(
            topics.camera_status("front-door").expect("ok"),
            "florence-edge/front-door/status"
        );
        assert_eq!(
            topics
                .result("front-door", "<OCR_WITH_REGION>")
                .expect("ok"),
            "florence-edge/front-door/ocr_with_region"
        );
        assert_eq!(
            topics.snapshot("front-door", "<OD>").expect("ok"),
            "florence-edge/front-door/od/snapshot"
        );
        let nested = Topics::new("site/a", "n").expect("valid");
        assert_eq!(
            nested.result("c", "<CAPTION>").expect("ok"),
            "site/a/c/caption"
        );
    }

    #[test]
    fn bad_names_are_rejected_with_a_reason() {
        let topics = Topics::new("fe", "n").expect("valid");
        for camera in ["", "a/b", "a+", "#", "status", "a\0b", "n"] {
            assert!(topics.result(camera, "<OD>").is_err(), "{camera:?}");
        }
        for task in ["OD", "<od>", "<>", "<O D>", "<OD", "<OD>/x"] {
            assert_eq!(
                topics.result("cam", task),
                Err(TopicError::InvalidTask(task.into())),
                "{task:?}"
            );
        }
        for prefix in ["", "a/#", "+", "$SYS", "/a", "a/", "a//b"] {
            assert!(Topics::new(prefix, "n").is_err(), "{prefix:?}");
        }
        let message = Topics::new("fe", "n")
            .expect("valid")
            .camera_status("a/b")
            .expect_err("slash")
            .to_string();
        assert!(
            message.contains("camera id") && message.contains('/'),
            "{message}"
        );
    }

    #[test]
    fn snapshot_gate_admits_once_per_interval_per_topic() {
        let mut gate = SnapshotGate::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(gate.admit("a", t0));
        assert!(!gate.admit("a", t0 + Duration::from_secs(4)));
        assert!(gate.admit("b", t0 + Duration::from_secs(4)));
        assert!(gate.admit("a", t0 + Duration::from_secs(5)));
        assert!(!gate.admit("a", t0 + Duration::from_secs(9)));
    }
}
