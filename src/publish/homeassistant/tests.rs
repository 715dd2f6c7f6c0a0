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
    assert!(od["json_attributes_template"]
        .as_str()
        .is_some_and(|t| t.contains("namespace(counts={})") && t.contains("'counts': ns.counts")));
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
    assert!(present["value_template"]
        .as_str()
        .is_some_and(|t| t.starts_with("{{ 'ON' if (") && t.contains("| length > 0 else 'OFF'")));
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
    let literal = "'it\\u0027s a \\u0022dog\\u0022 \\u0025\\u007d \\u007b\\u007b x \\u007d\\u007d'";
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
