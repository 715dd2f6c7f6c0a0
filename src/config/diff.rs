//! What a reload has to do: the difference between two configurations.
//!
//! A camera whose stream settings are unchanged keeps its pipeline; one whose
//! tasks alone changed gets a new schedule without a reconnect. Disabled
//! cameras count as absent, so enabling one adds it.

use std::collections::BTreeMap;

use super::{CameraConfig, Config};

/// What happened to one camera between two configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CameraChange {
    Added,
    Removed,
    /// Stream settings changed (URL, credentials, transport, decoder,
    /// watchdog, reconnect…): the pipeline restarts; tasks may differ too.
    StreamChanged,
    /// Only the tasks changed: the stream stays up, the schedule is replaced.
    TasksChanged,
}

/// The cameras that a reload touches, by id, and which other sections
/// changed. Cameras not listed are untouched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub cameras: BTreeMap<String, CameraChange>,
    pub node_changed: bool,
    /// Model settings need the model reloaded, batching settings included.
    pub model_changed: bool,
    pub mqtt_changed: bool,
    pub http_changed: bool,
    /// `[control]` (and `[homeassistant]`): read at start.
    pub control_changed: bool,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.cameras.is_empty()
            && !self.node_changed
            && !self.model_changed
            && !self.mqtt_changed
            && !self.http_changed
            && !self.control_changed
    }

    /// Ids of cameras with the given change, in id order.
    pub fn with(&self, change: &CameraChange) -> Vec<&str> {
        self.cameras
            .iter()
            .filter(|(_, c)| *c == change)
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// The reload plan from `old` to `new`.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let before = old.enabled_cameras();
    let after = new.enabled_cameras();
    let mut cameras = BTreeMap::new();
    for (id, camera) in &after {
        let change = match before.get(id) {
            None => Some(CameraChange::Added),
            Some(previous) => camera_change(previous, camera),
        };
        if let Some(change) = change {
            cameras.insert(id.to_string(), change);
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        cameras.insert(id.to_string(), CameraChange::Removed);
    }
    ConfigDiff {
        cameras,
        node_changed: old.node != new.node,
        model_changed: old.model != new.model,
        mqtt_changed: old.mqtt != new.mqtt,
        http_changed: old.http != new.http,
        control_changed: old.control != new.control || old.homeassistant != new.homeassistant,
    }
}

fn camera_change(old: &CameraConfig, new: &CameraConfig) -> Option<CameraChange> {
    if old.stream != new.stream {
        Some(CameraChange::StreamChanged)
    } else if old.tasks != new.tasks
        || old.motion != new.motion
        || old.privacy_masks != new.privacy_masks
    {
        // The change detector is the scheduler's side of the camera: a new
        // one starts with the new settings, the stream keeps running.
        Some(CameraChange::TasksChanged)
    } else {
        None
    }
}

impl Config {
    /// See [`diff`].
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        diff(self, new)
    }
}
