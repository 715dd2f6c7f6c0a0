//! Home Assistant MQTT discovery: the retained `…/config` messages that make
//! cameras, tasks and their results appear in Home Assistant with no YAML
//! (docs/HOME_ASSISTANT.md).
//!
//! Pure functions, no I/O: [`discovery`] turns the cameras and tasks in
//! effect into `(topic, payload)` pairs, [`removed`] says which topics of an
//! earlier set are gone (the caller publishes an empty retained payload on
//! each, which is how Home Assistant is told to delete an entity). The
//! inputs ([`HaCamera`], [`HaTask`]) are this module's own, so the publish
//! stage stays independent of `config`.
//!
//! What appears, per node, camera and task, is listed in
//! docs/HOME_ASSISTANT.md. Every entity reads the topics florence-edge
//! already publishes (`{prefix}/{camera}/{task}`, `…/status`, `…/state`,
//! `…/snapshot`) and commands go to the control topics (`…/set/enabled`,
//! `…/set/text`), so nothing here adds a topic of its own besides the
//! discovery topics.
//!
//! Key names are Home Assistant's full ones (`state_topic`, not `stat_t`).

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::topic::{TopicError, Topics};
use crate::postprocess::ParseKind;
use crate::schedule::{Task, TaskInput};
use crate::settings::{boolean, string, Errors, Fields, Problem};

/// Home Assistant's default discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

/// Longest state Home Assistant keeps (`MAX_LENGTH_STATE_STATE`); longer
/// sensor states are refused, and a text entity's `max` may not exceed it.
pub const HA_MAX_STATE_LENGTH: usize = 255;

/// `origin.name`, `device.manufacturer` and the first part of every unique id.
const ORIGIN_NAME: &str = "florence-edge";
/// `device.model` of a camera.
const CAMERA_MODEL: &str = "Florence-2 camera";
/// `device.model` of the node.
const NODE_MODEL: &str = "florence-edge node";

/// The `[homeassistant]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HomeAssistantSettings {
    /// Publish discovery messages. Off by default.
    pub enabled: bool,
    /// The prefix Home Assistant's MQTT integration listens on for
    /// discovery (its "discovery prefix" option, `homeassistant` unless
    /// changed there).
    pub discovery_prefix: String,
}

impl Default for HomeAssistantSettings {
    fn default() -> Self {
        HomeAssistantSettings {
            enabled: false,
            discovery_prefix: DEFAULT_DISCOVERY_PREFIX.into(),
        }
    }
}

impl HomeAssistantSettings {
    /// Reads the `[homeassistant]` table (`f`, at key path `homeassistant`):
    /// `enabled` (boolean) and `discovery_prefix` (a topic prefix without
    /// wildcards). Every problem is reported under its key, unknown keys
    /// included.
    pub(crate) fn from_section(mut f: Fields, errors: &mut Errors) -> Option<Self> {
        let d = HomeAssistantSettings::default();
        let enabled = f.or("enabled", d.enabled, errors, boolean);
        let discovery_prefix = f.or("discovery_prefix", d.discovery_prefix, errors, |v| {
            let prefix = string(v)?;
            check_discovery_prefix(&prefix).map_err(|reason| {
                Problem::new(
                    format!("{prefix:?} is not a discovery prefix: {reason}"),
                    "a topic prefix like \"homeassistant\", the same as Home Assistant's MQTT discovery prefix",
                )
            })?;
            Ok(prefix)
        });
        f.finish(errors);
        Some(HomeAssistantSettings {
            enabled,
            discovery_prefix,
        })
    }
}

/// Checks a discovery prefix with the rules of the topic prefix
/// ([`Topics::new`]): not empty, no wildcards, no leading `$`, no empty
/// levels, no control characters.
pub fn check_discovery_prefix(prefix: &str) -> Result<(), String> {
    match Topics::new(prefix, "node") {
        Ok(_) => Ok(()),
        Err(TopicError::InvalidPrefix { reason, .. }) => Err(reason.to_owned()),
        Err(other) => Err(other.to_string()),
    }
}

/// A camera as Home Assistant shows it: its id and its tasks in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaCamera {
    pub id: String,
    pub tasks: Vec<HaTask>,
}

/// One task of a camera.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaTask {
    /// The task's control name (`control::task_names`: `od`,
    /// `open_vocabulary_detection_2`); its state and command topics use it.
    pub name: String,
    pub task: Task,
    /// The text prompt of a text-input task.
    pub text: Option<String>,
    /// Whether the task runs. The discovery messages do not depend on it (a
    /// disabled task keeps its entities; its switch reads `…/state`).
    pub enabled: bool,
}

/// What the result of a task holds, for the entities made of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// A string: captions, OCR, region-to-text tasks.
    Text,
    /// An object whose instances are named by these label lists (one entry
    /// per instance, possibly empty strings).
    Labels(&'static [&'static str]),
}

/// Read from the post-processor's own table, so a task that changes shape
/// there changes here.
fn output(task: Task) -> Output {
    match ParseKind::for_task(task.token()) {
        ParseKind::PureText => Output::Text,
        ParseKind::DescriptionWithBboxes
        | ParseKind::Bboxes
        | ParseKind::PhraseGrounding
        | ParseKind::Ocr
        | ParseKind::Polygons => Output::Labels(&["labels"]),
        ParseKind::DescriptionWithBboxesOrPolygons => {
            Output::Labels(&["bboxes_labels", "polygons_labels"])
        }
    }
}

/// The task's name in entity names.
fn task_label(task: Task) -> &'static str {
    match task {
        Task::Caption => "Caption",
        Task::DetailedCaption => "Detailed caption",
        Task::MoreDetailedCaption => "More detailed caption",
        Task::ObjectDetection => "Object detection",
        Task::DenseRegionCaption => "Dense region caption",
        Task::RegionProposal => "Region proposal",
        Task::Ocr => "OCR",
        Task::OcrWithRegion => "OCR with region",
        Task::CaptionToPhraseGrounding => "Phrase grounding",
        Task::ReferringExpressionSegmentation => "Referring expression segmentation",
        Task::RegionToSegmentation => "Region segmentation",
        Task::OpenVocabularyDetection => "Open-vocabulary detection",
        Task::RegionToCategory => "Region category",
        Task::RegionToDescription => "Region description",
        Task::RegionToOcr => "Region OCR",
    }
}

/// `Open-vocabulary detection 2` for `open_vocabulary_detection_2`.
fn human_name(task: &HaTask) -> String {
    let base = task.task.topic_name();
    let label = task_label(task.task);
    match task
        .name
        .strip_prefix(base.as_str())
        .and_then(|rest| rest.strip_prefix('_'))
    {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{label} {n}")
        }
        _ => label.to_owned(),
    }
}

/// FNV-1a, 32 bits: a hash that stays the same across releases and
/// platforms (unique ids must survive an upgrade).
fn fnv1a(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// A node or camera id as one part of a unique id and discovery topic:
/// as is when it is made of `[A-Za-z0-9-]`; otherwise those characters
/// with every other one as `-`, then `-` and a hash of the id. The part
/// never holds `_`, which separates the parts, so two different ids never
/// give one unique id (short of a hash collision), and it only holds
/// characters Home Assistant allows in a discovery topic's object id.
fn id_part(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return id.to_owned();
    }
    let clean: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{clean}-{:08x}", fnv1a(id))
}

/// A task name as the part of a unique id: as is when it is a control name
/// (`[a-z0-9_]`), else cleaned and hashed like [`id_part`].
fn name_part(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return name.to_owned();
    }
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{clean}_{:08x}", fnv1a(name))
}

/// `'…'`: `text` as a Jinja string literal. Everything but ASCII letters,
/// digits and spaces is written as a `\uXXXX` escape (Jinja reads literals
/// with Python's unicode escapes), so a prompt with quotes, backslashes,
/// `%}` or `}}` in it cannot end the literal or the template.
fn jinja_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' {
            out.push(c);
        } else if u32::from(c) <= 0xFFFF {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            let _ = write!(out, "\\U{:08x}", u32::from(c));
        }
    }
    out.push('\'');
    out
}

/// What is built for one entity; [`Builder::entity`] adds what every entity
/// carries.
struct Entity<'a> {
    component: &'static str,
    unique_id: String,
    name: String,
    device: &'a Value,
    /// The component's own keys.
    config: Value,
    /// `availability_topic` on the node status; every entity but the node's
    /// connectivity sensor, which reads that topic as its state.
    available_with_node: bool,
}

struct Builder<'a> {
    discovery_prefix: &'a str,
    node_status: String,
    origin: Value,
}

impl Builder<'_> {
    fn entity(&self, e: Entity<'_>) -> (String, Value) {
        let mut config = match e.config {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        // The unique id is made only of [A-Za-z0-9_-] (see id_part), as
        // Home Assistant wants a discovery topic's object id.
        let topic = format!(
            "{}/{}/{}/config",
            self.discovery_prefix, e.component, e.unique_id
        );
        let entity_id = e.unique_id.to_ascii_lowercase().replace('-', "_");
        config.insert("name".into(), Value::String(e.name));
        config.insert("unique_id".into(), Value::String(e.unique_id.clone()));
        // `object_id` for Home Assistant before 2025.10, `default_entity_id`
        // for 2025.10 and later (which deprecated `object_id`); each version
        // drops the key it does not know.
        config.insert("object_id".into(), Value::String(e.unique_id));
        config.insert(
            "default_entity_id".into(),
            Value::String(format!("{}.{entity_id}", e.component)),
        );
        config.insert("device".into(), e.device.clone());
        config.insert("origin".into(), self.origin.clone());
        if e.available_with_node {
            config.insert(
                "availability_topic".into(),
                Value::String(self.node_status.clone()),
            );
            config.insert("payload_available".into(), json!("online"));
            config.insert("payload_not_available".into(), json!("offline"));
        }
        (topic, Value::Object(config))
    }
}

/// The retained discovery messages for this node's cameras and tasks:
/// `(topic, payload)`, topics `{discovery_prefix}/{component}/{object_id}/config`.
///
/// * the node: a device (`florence-edge_{node}`, `sw_version` = `version`)
///   with a connectivity `binary_sensor` on `{prefix}/{node}/status`;
/// * per camera: a device (`florence-edge_{node}_{camera}`, via the node)
///   with a `sensor` of its pipeline state from `{prefix}/{camera}/status`;
/// * per task, from `{prefix}/{camera}/{task}`: a `sensor` of the text
///   (truncated to 255 characters, the full text in an attribute) for text
///   tasks, else a `sensor` of the number of objects with per-label counts
///   in attributes, and for prompted tasks (open-vocabulary detection,
///   phrase grounding, referring expressions) a `binary_sensor` that is on
///   while something was found;
/// * per task, when `snapshots` (`mqtt.snapshots.enabled`): a `camera` on
///   `{prefix}/{camera}/{task}/snapshot` (every result gets a snapshot,
///   text results the bare frame);
/// * per task: a `switch` (`…/set/enabled`, state from `…/state`) and, for
///   prompted tasks, a `text` entity for the prompt (`…/set/text`).
///
/// Tasks that share a token on one camera share its result topic; their
/// result entities then count only results whose `text_input` is their own
/// prompt and keep their state on the others. Those templates hold the
/// prompt, so publish the discovery again after a prompt changes.
///
/// Nothing when `settings.enabled` is false (so [`removed`] against an
/// earlier set clears everything). A camera or task whose topics cannot be
/// formed (a camera id `validate` would refuse) is left out, with a warning.
pub fn discovery(
    settings: &HomeAssistantSettings,
    topics: &Topics,
    version: &str,
    cameras: &[HaCamera],
    snapshots: bool,
) -> Vec<(String, Value)> {
    if !settings.enabled {
        return Vec::new();
    }
    let node = topics.node();
    let node_part = id_part(node);
    let mut origin = json!({ "name": ORIGIN_NAME, "sw_version": version });
    let support_url = env!("CARGO_PKG_REPOSITORY");
    if !support_url.is_empty() {
        origin["support_url"] = json!(support_url);
    }
    let builder = Builder {
        discovery_prefix: &settings.discovery_prefix,
        node_status: topics.node_status(),
        origin,
    };
    let node_identifier = format!("{ORIGIN_NAME}_{node_part}");
    let node_device = json!({
        "identifiers": [node_identifier],
        "name": format!("{ORIGIN_NAME} {node}"),
        "manufacturer": ORIGIN_NAME,
        "model": NODE_MODEL,
        "sw_version": version,
    });
    let mut out = vec![builder.entity(Entity {
        component: "binary_sensor",
        unique_id: format!("{node_identifier}_status"),
        name: "Status".into(),
        device: &node_device,
        config: json!({
            "state_topic": topics.node_status(),
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        }),
        available_with_node: false,
    })];
    for camera in cameras {
        let status_topic = match topics.camera_status(&camera.id) {
            Ok(topic) => topic,
            Err(e) => {
                tracing::warn!(camera = %camera.id, error = %e, "Camera left out of Home Assistant discovery.");
                continue;
            }
        };
        let camera_identifier = format!("{node_identifier}_{}", id_part(&camera.id));
        let device = json!({
            "identifiers": [camera_identifier],
            "name": camera.id,
            "manufacturer": ORIGIN_NAME,
            "model": CAMERA_MODEL,
            "via_device": node_identifier,
        });
        out.push(builder.entity(Entity {
            component: "sensor",
            unique_id: format!("{camera_identifier}_status"),
            name: "Status".into(),
            device: &device,
            config: json!({
                "state_topic": status_topic,
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": status_topic,
                "json_attributes_template": attributes_template(&[
                    ("fps_in", "value_json.get('fps_in')"),
                    ("fps_out", "value_json.get('fps_out')"),
                    ("frames_in", "value_json.get('frames_in')"),
                    ("frames_dropped", "value_json.get('frames_dropped')"),
                    ("reconnects", "value_json.get('reconnects')"),
                    ("last_error", "value_json.get('last_error')"),
                    ("updated_unix_ms", "value_json.get('updated_unix_ms')"),
                ]),
                "icon": "mdi:cctv",
            }),
            available_with_node: true,
        }));
        for task in &camera.tasks {
            let repeated = camera.tasks.iter().filter(|t| t.task == task.task).count() > 1;
            let place = TaskPlace {
                topics,
                camera: &camera.id,
                camera_identifier: &camera_identifier,
                device: &device,
            };
            if let Err(e) = builder.task_entities(&mut out, &place, task, repeated, snapshots) {
                tracing::warn!(camera = %camera.id, task = %task.name, error = %e, "Task left out of Home Assistant discovery.");
            }
        }
    }
    out
}

/// Where a task's entities go.
struct TaskPlace<'a> {
    topics: &'a Topics,
    camera: &'a str,
    camera_identifier: &'a str,
    device: &'a Value,
}

/// `{{ {'key': expression, …} | tojson }}`
fn attributes_template(pairs: &[(&str, &str)]) -> String {
    format!("{{{{ {} | tojson }}}}", attributes_dict(pairs))
}

/// `{'key': expression, …}`
fn attributes_dict(pairs: &[(&str, &str)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(key, expr)| format!("'{key}': {expr}"))
        .collect();
    // The space keeps a closing brace of the last expression from meeting
    // this one as `}}`, which would end the template.
    format!("{{{} }}", body.join(", "))
}

impl Builder<'_> {
    fn task_entities(
        &self,
        out: &mut Vec<(String, Value)>,
        place: &TaskPlace<'_>,
        task: &HaTask,
        repeated: bool,
        snapshots: bool,
    ) -> Result<(), TopicError> {
        let token = task.task.token();
        let result_topic = place.topics.result(place.camera, token)?;
        let snapshot_topic = place.topics.snapshot(place.camera, token)?;
        let state_topic = place.topics.task_state(place.camera, &task.name)?;
        let command_topic = place.topics.task_command(place.camera, &task.name)?;
        let prompted = task.task.input() == TaskInput::Text;
        let label = human_name(task);
        let uid = |kind: &str| {
            format!(
                "{}_{}_{kind}",
                place.camera_identifier,
                name_part(&task.name)
            )
        };
        // Tokens are `<UPPER_SNAKE>`: safe inside a quoted literal.
        let result = format!("value_json.result['{token}']");
        // Results of the same token share the topic; keep to our prompt's.
        let filter = match (&task.text, repeated && prompted) {
            (Some(text), true) => Some(format!("value_json.text_input == {}", jinja_string(text))),
            _ => None,
        };
        let common_attributes = [
            ("text_input", "value_json.text_input"),
            ("captured_unix_ms", "value_json.frame.captured_unix_ms"),
            ("revision", "value_json.get('revision')"),
        ];

        match output(task.task) {
            Output::Text => {
                let text = result.clone();
                let mut attributes = vec![("text", text.as_str())];
                attributes.extend(common_attributes);
                out.push(self.entity(Entity {
                    component: "sensor",
                    unique_id: uid("text"),
                    name: label.clone(),
                    device: place.device,
                    config: json!({
                        "state_topic": result_topic,
                        "value_template": format!("{{{{ {result}[:{HA_MAX_STATE_LENGTH}] }}}}"),
                        "json_attributes_topic": result_topic,
                        "json_attributes_template": attributes_template(&attributes),
                        "icon": "mdi:text-box-outline",
                    }),
                    available_with_node: true,
                }));
            }
            Output::Labels(keys) => {
                let parts: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{result}.get('{k}', [])"))
                    .collect();
                let labels = format!("({})", parts.join(" + "));
                let count = format!("{{{{ {labels} | length }}}}");
                let mut fresh = vec![("counts", "ns.counts")];
                fresh.extend(common_attributes);
                let counts = format!(
                    "{{% set ns = namespace(counts={{}}) %}}\
                     {{% for label in {labels} if label %}}\
                     {{% set ns.counts = dict(ns.counts, **{{label: ns.counts.get(label, 0) + 1}}) %}}\
                     {{% endfor %}}{}",
                    attributes_template(&fresh)
                );
                let kept = attributes_template(&[
                    ("counts", "this.attributes.get('counts', {})"),
                    ("text_input", "this.attributes.get('text_input')"),
                    (
                        "captured_unix_ms",
                        "this.attributes.get('captured_unix_ms')",
                    ),
                    ("revision", "this.attributes.get('revision')"),
                ]);
                let present = format!("{{{{ 'ON' if {labels} | length > 0 else 'OFF' }}}}");
                // An empty rendering is ignored by a numeric sensor and by a
                // binary sensor: the state stays; attributes are carried over.
                let (count, counts, present) = match &filter {
                    Some(f) => (
                        format!("{{% if {f} %}}{count}{{% endif %}}"),
                        format!("{{% if {f} %}}{counts}{{% else %}}{kept}{{% endif %}}"),
                        format!("{{% if {f} %}}{present}{{% endif %}}"),
                    ),
                    None => (count, counts, present),
                };
                out.push(self.entity(Entity {
                    component: "sensor",
                    unique_id: uid("count"),
                    name: format!("{label} count"),
                    device: place.device,
                    config: json!({
                        "state_topic": result_topic,
                        "value_template": count,
                        "unit_of_measurement": "objects",
                        "state_class": "measurement",
                        "json_attributes_topic": result_topic,
                        "json_attributes_template": counts,
                        "icon": "mdi:shape-outline",
                    }),
                    available_with_node: true,
                }));
                if prompted {
                    out.push(self.entity(Entity {
                        component: "binary_sensor",
                        unique_id: uid("present"),
                        name: format!("{label} present"),
                        device: place.device,
                        config: json!({
                            "state_topic": result_topic,
                            "value_template": present,
                            "payload_on": "ON",
                            "payload_off": "OFF",
                            "device_class": "occupancy",
                        }),
                        available_with_node: true,
                    }));
                }
            }
        }
        if snapshots {
            out.push(self.entity(Entity {
                component: "camera",
                unique_id: uid("snapshot"),
                name: format!("{label} snapshot"),
                device: place.device,
                config: json!({ "topic": snapshot_topic }),
                available_with_node: true,
            }));
        }
        out.push(self.entity(Entity {
            component: "switch",
            unique_id: uid("enabled"),
            name: format!("{label} enabled"),
            device: place.device,
            config: json!({
                "command_topic": format!("{command_topic}/enabled"),
                "payload_on": "ON",
                "payload_off": "OFF",
                "state_topic": state_topic,
                "value_template": "{{ 'ON' if value_json.enabled else 'OFF' }}",
                "state_on": "ON",
                "state_off": "OFF",
                "entity_category": "config",
                "icon": "mdi:play-pause",
            }),
            available_with_node: true,
        }));
        if prompted {
            out.push(self.entity(Entity {
                component: "text",
                unique_id: uid("prompt"),
                name: format!("{label} prompt"),
                device: place.device,
                config: json!({
                    "command_topic": format!("{command_topic}/text"),
                    "state_topic": state_topic,
                    "value_template": format!("{{{{ (value_json.text or '')[:{HA_MAX_STATE_LENGTH}] }}}}"),
                    "min": 0,
                    "max": HA_MAX_STATE_LENGTH,
                    "mode": "text",
                    "entity_category": "config",
                    "icon": "mdi:form-textbox",
                }),
                available_with_node: true,
            }));
        }
        Ok(())
    }
}

/// The discovery topics of `previous` that `current` no longer has (a
/// camera or task removed, or Home Assistant discovery switched off), each
/// once, in `previous`'s order. Publishing an empty retained payload on
/// each makes Home Assistant delete the entity and clears the retained
/// configuration from the broker.
pub fn removed(previous: &[(String, Value)], current: &[(String, Value)]) -> Vec<String> {
    let now: HashSet<&str> = current.iter().map(|(topic, _)| topic.as_str()).collect();
    let mut seen = HashSet::new();
    previous
        .iter()
        .map(|(topic, _)| topic.as_str())
        .filter(|topic| !now.contains(topic) && seen.insert(*topic))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
