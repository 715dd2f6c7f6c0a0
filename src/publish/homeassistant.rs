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
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use ::config::{Value as ConfigValue, ValueKind};

    use super::*;

    // Keys Home Assistant's MQTT integration documents, per component.
    //
    // Discovery, device, origin and availability (every component):
    // https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery —
    // `device` needs `identifiers` or `connections`; `origin` needs `name`
    // (`sw_version`, `support_url` optional); `unique_id` ties the entity to
    // the device registry; `object_id` (before 2025.10) and
    // `default_entity_id` (2025.10 on) set the entity id.
    const COMMON_REQUIRED: &[&str] = &[
        "name",
        "unique_id",
        "object_id",
        "default_entity_id",
        "device",
        "origin",
        "availability_topic",
        "payload_available",
        "payload_not_available",
    ];
    const COMMON_ALLOWED: &[&str] = &[
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "device",
        "origin",
        "enabled_by_default",
        "entity_category",
        "icon",
        "json_attributes_topic",
        "json_attributes_template",
        "name",
        "object_id",
        "default_entity_id",
        "unique_id",
        "qos",
        "encoding",
    ];

    /// (component, required by the docs, required by us, documented)
    fn component_keys(
        component: &str,
    ) -> (
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    ) {
        match component {
            // https://www.home-assistant.io/integrations/sensor.mqtt/
            "sensor" => (
                &["state_topic"],
                &[
                    "value_template",
                    "json_attributes_topic",
                    "json_attributes_template",
                ],
                &[
                    "state_topic",
                    "value_template",
                    "device_class",
                    "state_class",
                    "unit_of_measurement",
                    "expire_after",
                    "force_update",
                    "last_reset_value_template",
                    "suggested_display_precision",
                    "options",
                ],
            ),
            // https://www.home-assistant.io/integrations/binary_sensor.mqtt/
            "binary_sensor" => (
                &["state_topic"],
                &["payload_on", "payload_off"],
                &[
                    "state_topic",
                    "value_template",
                    "payload_on",
                    "payload_off",
                    "device_class",
                    "expire_after",
                    "force_update",
                    "off_delay",
                ],
            ),
            // https://www.home-assistant.io/integrations/switch.mqtt/
            "switch" => (
                &[],
                &[
                    "command_topic",
                    "state_topic",
                    "value_template",
                    "payload_on",
                    "payload_off",
                    "state_on",
                    "state_off",
                ],
                &[
                    "command_topic",
                    "command_template",
                    "state_topic",
                    "value_template",
                    "payload_on",
                    "payload_off",
                    "state_on",
                    "state_off",
                    "optimistic",
                    "retain",
                    "device_class",
                ],
            ),
            // https://www.home-assistant.io/integrations/text.mqtt/
            "text" => (
                &["command_topic"],
                &["state_topic", "value_template", "max", "mode"],
                &[
                    "command_topic",
                    "command_template",
                    "state_topic",
                    "value_template",
                    "max",
                    "min",
                    "mode",
                    "pattern",
                    "retain",
                ],
            ),
            // https://www.home-assistant.io/integrations/camera.mqtt/
            "camera" => (&["topic"], &[], &["topic", "image_encoding"]),
            other => panic!("unexpected component {other}"),
        }
    }

    fn topics() -> Topics {
        Topics::new("florence-edge", "edge-01").expect("valid")
    }

    fn enabled() -> HomeAssistantSettings {
        HomeAssistantSettings {
            enabled: true,
            ..HomeAssistantSettings::default()
        }
    }

    fn task(name: &str, task: Task, text: Option<&str>) -> HaTask {
        HaTask {
            name: name.into(),
            task,
            text: text.map(str::to_owned),
            enabled: true,
        }
    }

    /// A camera with one task of each output shape, and one with two
    /// open-vocabulary detections.
    fn cameras() -> Vec<HaCamera> {
        vec![
            HaCamera {
                id: "front-door".into(),
                tasks: vec![
                    task("od", Task::ObjectDetection, None),
                    task("caption", Task::Caption, None),
                    task(
                        "open_vocabulary_detection",
                        Task::OpenVocabularyDetection,
                        Some("a person with a helmet"),
                    ),
                    task("ocr_with_region", Task::OcrWithRegion, None),
                ],
            },
            HaCamera {
                id: "yard".into(),
                tasks: vec![
                    task(
                        "open_vocabulary_detection",
                        Task::OpenVocabularyDetection,
                        Some("a cat"),
                    ),
                    task(
                        "open_vocabulary_detection_2",
                        Task::OpenVocabularyDetection,
                        Some("it's a \"dog\" %} {{ x }}"),
                    ),
                ],
            },
        ]
    }

    fn all() -> Vec<(String, Value)> {
        discovery(&enabled(), &topics(), "0.1.0", &cameras(), true)
    }

    fn component_of(topic: &str) -> &str {
        topic.split('/').nth(1).expect("component level")
    }

    fn by_unique_id(messages: &[(String, Value)], uid: &str) -> Value {
        messages
            .iter()
            .find(|(_, p)| p["unique_id"] == uid)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no entity {uid}"))
    }

    #[test]
    fn every_component_has_the_documented_required_keys_and_no_unknown_ones() {
        let messages = all();
        let mut components = BTreeSet::new();
        for (topic, payload) in &messages {
            let component = component_of(topic);
            components.insert(component.to_owned());
            let (required, ours, documented) = component_keys(component);
            let keys: BTreeSet<&str> = payload
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            let node_status = payload["unique_id"] == "florence-edge_edge-01_status";
            for key in required.iter().chain(ours) {
                assert!(keys.contains(key), "{topic}: missing {key}");
            }
            for key in COMMON_REQUIRED {
                // The node's connectivity sensor reads the availability
                // topic as its state; it is never unavailable itself.
                if node_status
                    && [
                        "availability_topic",
                        "payload_available",
                        "payload_not_available",
                    ]
                    .contains(key)
                {
                    continue;
                }
                assert!(keys.contains(key), "{topic}: missing {key}");
            }
            for key in &keys {
                assert!(
                    COMMON_ALLOWED.contains(key) || documented.contains(key),
                    "{topic}: {key} is not a documented {component} key"
                );
            }
            let device = &payload["device"];
            assert!(
                device["identifiers"]
                    .as_array()
                    .is_some_and(|ids| !ids.is_empty()),
                "{topic}: device without identifiers"
            );
            assert_eq!(payload["origin"]["name"], "florence-edge");
            assert_eq!(payload["origin"]["sw_version"], "0.1.0");
        }
        let expected: BTreeSet<String> = ["binary_sensor", "camera", "sensor", "switch", "text"]
            .map(str::to_owned)
            .into();
        assert_eq!(components, expected);
    }

    #[test]
    fn devices_name_the_node_and_each_camera_via_the_node() {
        let messages = all();
        let node = by_unique_id(&messages, "florence-edge_edge-01_status");
        assert_eq!(
            node["device"]["identifiers"],
            json!(["florence-edge_edge-01"])
        );
        assert_eq!(node["device"]["sw_version"], "0.1.0");
        assert_eq!(node["state_topic"], "florence-edge/edge-01/status");
        assert_eq!(node["device_class"], "connectivity");
        assert!(node.get("availability_topic").is_none());
        let status = by_unique_id(&messages, "florence-edge_edge-01_front-door_status");
        assert_eq!(
            status["device"],
            json!({
                "identifiers": ["florence-edge_edge-01_front-door"],
                "name": "front-door",
                "manufacturer": "florence-edge",
                "model": "Florence-2 camera",
                "via_device": "florence-edge_edge-01",
            })
        );
        assert_eq!(status["state_topic"], "florence-edge/front-door/status");
        assert_eq!(status["value_template"], "{{ value_json.state }}");
        assert!(status["json_attributes_template"]
            .as_str()
            .is_some_and(|t| t.contains("'fps_in': value_json.get('fps_in')")));
        for (_, payload) in &messages {
            if payload.get("availability_topic").is_some() {
                assert_eq!(
                    payload["availability_topic"],
                    "florence-edge/edge-01/status"
                );
                assert_eq!(payload["payload_available"], "online");
                assert_eq!(payload["payload_not_available"], "offline");
            }
        }
    }

    #[test]
    fn text_sensors_truncate_to_the_state_limit_and_keep_the_full_text() {
        let messages = all();
        let caption = by_unique_id(&messages, "florence-edge_edge-01_front-door_caption_text");
        assert_eq!(caption["state_topic"], "florence-edge/front-door/caption");
        assert_eq!(
            caption["value_template"],
            "{{ value_json.result['<CAPTION>'][:255] }}"
        );
        let attributes = caption["json_attributes_template"]
            .as_str()
            .expect("template");
        for part in [
            "'text': value_json.result['<CAPTION>']",
            "'text_input': value_json.text_input",
            "'captured_unix_ms': value_json.frame.captured_unix_ms",
            "'revision': value_json.get('revision')",
            "| tojson",
        ] {
            assert!(attributes.contains(part), "{part} in {attributes}");
        }
        assert!(!messages
            .iter()
            .any(|(_, p)| p["unique_id"] == "florence-edge_edge-01_front-door_caption_count"));
    }

    #[test]
    fn detections_count_objects_and_labels_per_task_shape() {
        let messages = all();
        let od = by_unique_id(&messages, "florence-edge_edge-01_front-door_od_count");
        assert_eq!(
            od["value_template"],
            "{{ (value_json.result['<OD>'].get('labels', [])) | length }}"
        );
        assert_eq!(od["unit_of_measurement"], "objects");
        assert_eq!(od["state_class"], "measurement");
        assert!(od["json_attributes_template"].as_str().is_some_and(|t| t
            .contains("namespace(counts={})")
            && t.contains("'counts': ns.counts")));
        let ovd = by_unique_id(
            &messages,
            "florence-edge_edge-01_front-door_open_vocabulary_detection_count",
        );
        assert_eq!(
            ovd["value_template"],
            "{{ (value_json.result['<OPEN_VOCABULARY_DETECTION>'].get('bboxes_labels', []) + value_json.result['<OPEN_VOCABULARY_DETECTION>'].get('polygons_labels', [])) | length }}"
        );
        // Only prompted tasks get a presence sensor.
        let present = by_unique_id(
            &messages,
            "florence-edge_edge-01_front-door_open_vocabulary_detection_present",
        );
        assert!(present["value_template"].as_str().is_some_and(
            |t| t.starts_with("{{ 'ON' if (") && t.contains("| length > 0 else 'OFF'")
        ));
        assert_eq!(present["payload_on"], "ON");
        assert!(!messages
            .iter()
            .any(|(_, p)| p["unique_id"] == "florence-edge_edge-01_front-door_od_present"));
    }

    #[test]
    fn switches_and_prompts_use_the_control_topics() {
        let messages = all();
        let switch = by_unique_id(
            &messages,
            "florence-edge_edge-01_yard_open_vocabulary_detection_2_enabled",
        );
        assert_eq!(
            switch["command_topic"],
            "florence-edge/yard/open_vocabulary_detection_2/set/enabled"
        );
        assert_eq!(
            switch["state_topic"],
            "florence-edge/yard/open_vocabulary_detection_2/state"
        );
        assert_eq!(
            switch["value_template"],
            "{{ 'ON' if value_json.enabled else 'OFF' }}"
        );
        assert_eq!(switch["name"], "Open-vocabulary detection 2 enabled");
        let prompt = by_unique_id(
            &messages,
            "florence-edge_edge-01_yard_open_vocabulary_detection_2_prompt",
        );
        assert_eq!(
            prompt["command_topic"],
            "florence-edge/yard/open_vocabulary_detection_2/set/text"
        );
        assert_eq!(prompt["max"], 255);
        assert_eq!(prompt["mode"], "text");
        assert_eq!(
            prompt["value_template"],
            "{{ (value_json.text or '')[:255] }}"
        );
        // Tasks without a text input have no prompt entity.
        assert!(!messages
            .iter()
            .any(|(_, p)| p["unique_id"] == "florence-edge_edge-01_front-door_od_prompt"));
        let snapshot = by_unique_id(&messages, "florence-edge_edge-01_front-door_od_snapshot");
        assert_eq!(snapshot["topic"], "florence-edge/front-door/od/snapshot");
    }

    #[test]
    fn repeated_tokens_filter_on_their_own_prompt() {
        let messages = all();
        let first = by_unique_id(
            &messages,
            "florence-edge_edge-01_yard_open_vocabulary_detection_count",
        );
        let template = first["value_template"].as_str().expect("template");
        assert!(
            template.starts_with("{% if value_json.text_input == 'a cat' %}{{ "),
            "{template}"
        );
        assert!(template.ends_with("{% endif %}"), "{template}");
        let attributes = first["json_attributes_template"]
            .as_str()
            .expect("template");
        assert!(attributes.contains("{% else %}{{ {'counts': this.attributes.get('counts', {})"));
        let second = by_unique_id(
            &messages,
            "florence-edge_edge-01_yard_open_vocabulary_detection_2_present",
        );
        let template = second["value_template"].as_str().expect("template");
        let literal =
            "'it\\u0027s a \\u0022dog\\u0022 \\u0025\\u007d \\u007b\\u007b x \\u007d\\u007d'";
        assert!(
            template.starts_with(&format!("{{% if value_json.text_input == {literal} %}}")),
            "{template}"
        );
        // A single task of its token takes every result of the topic.
        let single = by_unique_id(
            &messages,
            "florence-edge_edge-01_front-door_open_vocabulary_detection_count",
        );
        assert!(!single["value_template"]
            .as_str()
            .is_some_and(|t| t.contains("text_input")));
    }

    #[test]
    fn jinja_literals_escape_everything_that_could_end_them() {
        assert_eq!(jinja_string("a cat"), "'a cat'");
        assert_eq!(jinja_string("it's"), "'it\\u0027s'");
        assert_eq!(jinja_string("\\"), "'\\u005c'");
        assert_eq!(jinja_string("é\n"), "'\\u00e9\\u000a'");
        assert_eq!(jinja_string("🐈"), "'\\U0001f408'");
        let nasty = jinja_string("'}}%}{%\"\\");
        let inner = &nasty[1..nasty.len() - 1];
        assert!(!inner.contains(['\'', '"', '{', '}', '%']), "{nasty}");
    }

    #[test]
    fn unique_ids_are_unique_stable_and_valid_object_ids() {
        let messages = all();
        let uids: Vec<&str> = messages
            .iter()
            .map(|(_, p)| p["unique_id"].as_str().expect("string"))
            .collect();
        let distinct: BTreeSet<&str> = uids.iter().copied().collect();
        assert_eq!(distinct.len(), uids.len(), "{uids:?}");
        for (topic, payload) in &messages {
            let uid = payload["unique_id"].as_str().expect("string");
            assert!(uid.starts_with("florence-edge_edge-01"));
            assert!(uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            assert_eq!(payload["object_id"], uid);
            assert_eq!(
                topic,
                &format!("homeassistant/{}/{uid}/config", component_of(topic))
            );
            let entity_id = payload["default_entity_id"].as_str().expect("string");
            assert_eq!(
                entity_id,
                format!("{}.{}", component_of(topic), uid.replace('-', "_"))
            );
        }
        // The same configuration gives the same messages; other cameras and
        // their order do not change a camera's ids.
        assert_eq!(all(), messages);
        let mut reversed = cameras();
        reversed.reverse();
        reversed.push(HaCamera {
            id: "garage".into(),
            tasks: vec![task("od", Task::ObjectDetection, None)],
        });
        let other = discovery(&enabled(), &topics(), "0.1.0", &reversed, true);
        let other_topics: BTreeSet<&String> = other.iter().map(|(t, _)| t).collect();
        for (topic, _) in &messages {
            assert!(other_topics.contains(topic), "{topic}");
        }
    }

    #[test]
    fn ids_that_are_not_plain_get_a_stable_hash_and_never_collide() {
        // `x_more` + detailed caption and `x` + more detailed caption would
        // meet at `…_x_more_detailed_caption_text` if `_` passed through.
        let cams = vec![
            HaCamera {
                id: "x_more".into(),
                tasks: vec![task("detailed_caption", Task::DetailedCaption, None)],
            },
            HaCamera {
                id: "x".into(),
                tasks: vec![task(
                    "more_detailed_caption",
                    Task::MoreDetailedCaption,
                    None,
                )],
            },
            HaCamera {
                id: "Hall Way.1".into(),
                tasks: vec![task("od", Task::ObjectDetection, None)],
            },
        ];
        let messages = discovery(&enabled(), &topics(), "0.1.0", &cams, false);
        let uids: BTreeSet<&str> = messages
            .iter()
            .map(|(_, p)| p["unique_id"].as_str().expect("string"))
            .collect();
        assert_eq!(uids.len(), messages.len());
        assert_eq!(id_part("x_more"), format!("x-more-{:08x}", fnv1a("x_more")));
        assert_eq!(id_part("front-door"), "front-door");
        // The example in docs/HOME_ASSISTANT.md.
        assert_eq!(id_part("cam_1"), "cam-1-70cbcfa8");
        assert!(id_part("Hall Way.1").starts_with("Hall-Way-1-"));
        // FNV-1a's published test vector: the hash must never change.
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        for (topic, _) in &messages {
            let object_id = topic.split('/').nth(2).expect("object id");
            assert!(object_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
    }

    fn assert_valid_topic(topic: &str, what: &str) {
        assert!(!topic.is_empty(), "{what}: empty");
        assert!(!topic.contains(['+', '#', '\0']), "{what}: {topic}");
        assert!(!topic.starts_with('$'), "{what}: {topic}");
        assert!(
            topic.split('/').all(|level| !level.is_empty()),
            "{what}: {topic}"
        );
        assert!(topic.len() <= 65_535, "{what}: too long");
    }

    #[test]
    fn every_topic_is_a_valid_mqtt_topic_without_wildcards() {
        let settings = HomeAssistantSettings {
            enabled: true,
            discovery_prefix: "ha/discovery".into(),
        };
        let nested = Topics::new("site/a", "edge-01").expect("valid");
        for messages in [all(), discovery(&settings, &nested, "1", &cameras(), true)] {
            for (topic, payload) in &messages {
                assert_valid_topic(topic, "discovery topic");
                assert!(topic.ends_with("/config"));
                for (key, value) in payload.as_object().expect("object") {
                    if key.ends_with("topic") {
                        assert_valid_topic(value.as_str().expect("string"), key);
                    }
                }
            }
        }
    }

    #[test]
    fn removed_lists_the_topics_of_a_removed_task_only() {
        let before = all();
        let mut cams = cameras();
        cams[0].tasks.retain(|t| t.name != "caption");
        let after = discovery(&enabled(), &topics(), "0.1.0", &cams, true);
        let gone = removed(&before, &after);
        let expected: BTreeSet<String> = [
            "sensor/florence-edge_edge-01_front-door_caption_text",
            "camera/florence-edge_edge-01_front-door_caption_snapshot",
            "switch/florence-edge_edge-01_front-door_caption_enabled",
        ]
        .iter()
        .map(|t| format!("homeassistant/{t}/config"))
        .collect();
        assert_eq!(gone.iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert_eq!(gone.len(), expected.len());
        assert!(removed(&after, &before).is_empty());
        // Switched off: everything goes.
        let off = discovery(
            &HomeAssistantSettings::default(),
            &topics(),
            "0.1.0",
            &cams,
            true,
        );
        assert!(off.is_empty());
        assert_eq!(removed(&after, &off).len(), after.len());
    }

    #[test]
    fn snapshots_off_means_no_camera_entities() {
        let messages = discovery(&enabled(), &topics(), "0.1.0", &cameras(), false);
        assert!(!messages.iter().any(|(t, _)| component_of(t) == "camera"));
        let with = all();
        let cameras_with = with
            .iter()
            .filter(|(t, _)| component_of(t) == "camera")
            .count();
        assert_eq!(cameras_with, 6, "one per task");
    }

    #[test]
    fn templates_are_balanced() {
        for (topic, payload) in &all() {
            for (key, value) in payload.as_object().expect("object") {
                if !key.ends_with("template") {
                    continue;
                }
                let t = value.as_str().expect("string");
                assert_eq!(
                    t.matches("{{").count(),
                    t.matches("}}").count(),
                    "{topic} {key}: {t}"
                );
                assert_eq!(
                    t.matches("{%").count(),
                    t.matches("%}").count(),
                    "{topic} {key}: {t}"
                );
                let ifs = t.matches("{% if ").count();
                assert_eq!(ifs, t.matches("{% endif %}").count(), "{topic} {key}: {t}");
            }
        }
    }

    fn section(entries: &[(&str, ValueKind)]) -> ConfigValue {
        let map: BTreeMap<String, ConfigValue> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ConfigValue::new(None, v.clone())))
            .collect();
        ConfigValue::new(None, ValueKind::Table(map.into_iter().collect()))
    }

    fn read(entries: &[(&str, ValueKind)]) -> (Option<HomeAssistantSettings>, Vec<String>) {
        let mut errors = Errors::new("florence-edge.toml", "FLORENCE_EDGE");
        let settings = Fields::of(section(entries), "homeassistant", &mut errors)
            .and_then(|f| HomeAssistantSettings::from_section(f, &mut errors));
        (
            settings,
            errors.list.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn the_section_reads_its_keys_with_defaults() {
        let (settings, errors) = read(&[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(settings, Some(HomeAssistantSettings::default()));
        assert_eq!(
            HomeAssistantSettings::default().discovery_prefix,
            "homeassistant"
        );
        let (settings, errors) = read(&[
            ("enabled", ValueKind::Boolean(true)),
            ("discovery_prefix", ValueKind::String("ha/disco".into())),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            settings,
            Some(HomeAssistantSettings {
                enabled: true,
                discovery_prefix: "ha/disco".into()
            })
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_reported_by_key() {
        let (_, errors) = read(&[
            ("enabled", ValueKind::String("yes".into())),
            (
                "discovery_prefix",
                ValueKind::String("homeassistant/#".into()),
            ),
            ("discovery_prefx", ValueKind::String("x".into())),
        ]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.contains("homeassistant.enabled") && e.contains("true or false")));
        assert!(errors
            .iter()
            .any(|e| e.contains("homeassistant.discovery_prefix") && e.contains("wildcard")));
        assert!(errors
            .iter()
            .any(|e| e.contains("homeassistant.discovery_prefx")
                && e.contains("did you mean `discovery_prefix`")));
        for bad in ["", "$SYS", "/ha", "ha/", "a//b", "+"] {
            assert!(check_discovery_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_discovery_prefix("homeassistant").is_ok());
    }
}
