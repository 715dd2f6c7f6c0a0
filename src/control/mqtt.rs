//! MQTT command topics → [`ControlRequest`]s, and their answers. Pure: no
//! I/O here; the publisher hands incoming messages over
//! (`publish::Publisher::set_command_inbox`) and publishes the answers
//! (`publish::Publisher::publish_response`).
//!
//! Topics, under the configured prefix (which may have several levels; node
//! and camera ids are one level each):
//!
//! | topic | payload | request |
//! |---|---|---|
//! | `{prefix}/{node}/set/cameras/{id}` | JSON object (a `[[cameras]]` table) | [`ControlRequest::PutCamera`] |
//! | `{prefix}/{node}/set/cameras/{id}/delete` | empty, or `{"request_id": …}` | [`ControlRequest::DeleteCamera`] |
//! | `{prefix}/{node}/set/cameras/{id}/tasks` | JSON array of tasks, or `{"tasks": […], "request_id": …}` | [`ControlRequest::PutTasks`] |
//! | `{prefix}/{node}/set/overrides/clear` | empty, or `{"request_id": …}` | [`ControlRequest::ClearOverrides`] |
//! | `{prefix}/{node}/set/config/get` | empty, or `{"request_id": …}` | [`ControlRequest::Config`] |
//! | `{prefix}/{camera}/{task}/set` | JSON object of task keys, or `ON`/`OFF`/`true`/`false` | [`ControlRequest::PatchTask`] |
//! | `{prefix}/{camera}/{task}/set/enabled` | `ON`/`OFF`/`true`/`false`/`1`/`0` | `PatchTask {"enabled": …}` |
//! | `{prefix}/{camera}/{task}/set/text` | plain text (or a JSON string) | `PatchTask {"text": …}` |
//! | `{prefix}/{camera}/{task}/set/every` | a duration such as `5s` | `PatchTask {"every": …}` |
//!
//! `{task}` is the task's control name (`control::task_names`: `od`,
//! `open_vocabulary_detection_2`) or its index in the camera's list.
//!
//! Every command is answered on [`Topics::command_response`]
//! (`{prefix}/{node}/response`) with a JSON object: `request_id` (or
//! `null`), `topic` (the command topic), `status` (the HTTP status the same
//! request gets from `/api`), `ok`, and the fields of the reply body
//! (`error`, `problems`, `revision`, …).
//!
//! Correlation: the publisher speaks MQTT 3.1.1 (rumqttc's v4 client), which
//! has no MQTT 5 response topic or correlation data. The correlation id is the
//! `request_id` field (a string or an integer) of a JSON object payload: it is
//! taken out of the body and echoed in the response. Plain payloads (`ON`,
//! `5s`) carry none; their response has `"request_id": null` and the
//! `topic` to tell them apart.
//!
//! The `[control]` section decides whether MQTT commands are accepted
//! (`mqtt`), which command topics are (`mqtt_allow`, MQTT topic filters
//! relative to the prefix) and how large a payload may be
//! (`max_command_bytes`, checked before anything is parsed).

use serde_json::{Map, Value};

use super::{ControlReply, ControlRequest};
use crate::publish::topic::{check_camera_id, check_level};
use crate::publish::Topics;
use crate::settings::{boolean, string, uint_in, Errors, Fields, Problem};

/// `control.max_command_bytes` when unset.
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Bounds of `control.max_command_bytes`.
pub const MAX_COMMAND_BYTES: (usize, usize) = (1024, 1024 * 1024);

/// What `mqtt_allow` means when unset: every command topic.
pub const ALLOW_ALL: &str = "#";

/// The placeholder in an `mqtt_allow` filter that stands for the node id.
const NODE_PLACEHOLDER: &str = "{node}";

/// Node command paths below `{prefix}/{node}/set/`, for error messages.
const NODE_COMMANDS: &str = "cameras/{id} (a JSON camera table), cameras/{id}/delete, \
     cameras/{id}/tasks (a JSON array of task tables), overrides/clear, config/get";

/// Task command topics below `{prefix}/{camera}/{task}/`, for error messages.
const TASK_COMMANDS: &str = "set (a JSON object of task keys, or ON/OFF), \
     set/enabled (ON/OFF/true/false/1/0), set/text (plain text), set/every (a duration such as 5s)";

/// How MQTT commands are taken: the `[control]` section's MQTT keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSettings {
    /// `control.mqtt`: subscribe to command topics and act on them.
    pub enabled: bool,
    /// `control.mqtt_allow`: MQTT topic filters relative to the prefix
    /// (`{node}/set/config/get`, `+/+/set/enabled`); `{node}` stands for the
    /// node id. A command on a topic none of them matches is refused.
    pub allow: Vec<String>,
    /// `control.max_command_bytes`: larger payloads are refused unread.
    pub max_payload_bytes: usize,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            enabled: true,
            allow: vec![ALLOW_ALL.to_owned()],
            max_payload_bytes: DEFAULT_MAX_COMMAND_BYTES,
        }
    }
}

impl CommandSettings {
    /// Reads the `[control]` section: `mqtt` (boolean), `mqtt_allow` (an
    /// array of topic filters, each checked with [`check_filter`]) and
    /// `max_command_bytes` (1024 to 1048576). Every problem goes to `errors`
    /// (an invalid value leaves its default here, and the configuration as a
    /// whole is refused); `None` when `mqtt_allow` is not an array at all.
    pub(crate) fn from_section(mut f: Fields, errors: &mut Errors) -> Option<CommandSettings> {
        let d = CommandSettings::default();
        let enabled = f.or("mqtt", d.enabled, errors, boolean);
        let allow_given = f.has("mqtt_allow");
        let allow = match f.array("mqtt_allow", errors) {
            Some(items) => {
                let mut allow = Vec::with_capacity(items.len());
                for (path, value) in items {
                    match string(&value).and_then(|s| {
                        check_filter(&s).map_err(|reason| {
                            Problem::new(
                                format!("{s:?} is not a topic filter: {reason}"),
                                FILTER_ALLOWED,
                            )
                        })?;
                        Ok(s)
                    }) {
                        Ok(filter) => allow.push(filter),
                        Err(problem) => errors.report(value.origin(), &path, problem),
                    }
                }
                Some(allow)
            }
            // Not an array: reported by `array`.
            None if allow_given => None,
            None => Some(d.allow),
        };
        let max_payload_bytes = f.or("max_command_bytes", d.max_payload_bytes, errors, |value| {
            let (min, max) = MAX_COMMAND_BYTES;
            let n = uint_in(value, min as u64, max as u64)?;
            usize::try_from(n)
                .map_err(|_| Problem::new(format!("{n} is out of range"), "at most 1048576"))
        });
        f.finish(errors);
        Some(CommandSettings {
            enabled,
            allow: allow?,
            max_payload_bytes,
        })
    }
}

const FILTER_ALLOWED: &str = "an MQTT topic filter relative to the topic prefix, such as \
     \"{node}/set/config/get\", \"+/+/set/enabled\" or \"#\" ('+' and '#' as whole levels, \
     '#' last, no empty levels; {node} stands for the node id)";

/// Checks one `mqtt_allow` filter: no empty levels, `+` and `#` only as
/// whole levels, `#` only last, no placeholder but `{node}`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("it is empty".into());
    }
    if filter.chars().any(char::is_control) {
        return Err("it contains a control character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.is_empty() {
            return Err("it has an empty level (a leading, trailing or doubled '/')".into());
        }
        if level.contains('#') && *level != "#" {
            return Err(format!("level {level:?}: '#' must be a whole level"));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err("'#' must be the last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("level {level:?}: '+' must be a whole level"));
        }
        let rest = level.replace(NODE_PLACEHOLDER, "");
        if rest.contains(['{', '}']) {
            return Err(format!(
                "level {level:?}: only {NODE_PLACEHOLDER} is replaced (by the node id)"
            ));
        }
    }
    Ok(())
}

/// The topic filters the publisher subscribes to for commands:
/// `{prefix}/{node}/set/#`, `{prefix}/+/+/set` and `{prefix}/+/+/set/+`.
pub fn subscriptions(topics: &Topics) -> Vec<String> {
    let prefix = topics.prefix();
    vec![
        format!("{}/#", topics.node_command()),
        format!("{prefix}/+/+/set"),
        format!("{prefix}/+/+/set/+"),
    ]
}

/// What one incoming message is.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A command to hand to the controller; answer with [`response`].
    Request {
        request: ControlRequest,
        request_id: Option<Value>,
    },
    /// A command that is refused as it stands; answer with [`refusal`].
    /// `status` is the HTTP status of the refusal: 400 (malformed), 403 (not
    /// allowed), 404 (no such command), 413 (too large).
    Refused {
        status: u16,
        reason: String,
        request_id: Option<Value>,
    },
    /// Not a command topic (our own response topic, say): no answer.
    NotACommand,
}

/// A refusal before it knows its request id.
struct Refusal {
    status: u16,
    reason: String,
}

fn refuse(status: u16, topic: &str, what: impl std::fmt::Display) -> Refusal {
    Refusal {
        status,
        reason: format!("command topic {topic}: {what}"),
    }
}

/// The shape of a command topic, levels relative to the prefix.
enum Shape<'a> {
    /// `{node}/set/…`: the levels after `set`.
    Node(Vec<&'a str>),
    /// `{camera}/{task}/set/…`: the levels after `set`.
    Task {
        camera: &'a str,
        task: &'a str,
        rest: Vec<&'a str>,
    },
}

fn shape<'a>(topics: &Topics, topic: &'a str) -> Option<(&'a str, Shape<'a>)> {
    let relative = topic
        .strip_prefix(topics.prefix())
        .and_then(|t| t.strip_prefix('/'))?;
    let levels: Vec<&str> = relative.split('/').collect();
    match levels.as_slice() {
        [node, "set", rest @ ..] if *node == topics.node() => {
            Some((relative, Shape::Node(rest.to_vec())))
        }
        [camera, task, "set", rest @ ..] => Some((
            relative,
            Shape::Task {
                camera,
                task,
                rest: rest.to_vec(),
            },
        )),
        _ => None,
    }
}

/// Makes a request out of one incoming message on `topic`. The size is
/// checked first, then `control.mqtt` and `control.mqtt_allow`, and only then
/// is the payload read.
pub fn parse(settings: &CommandSettings, topics: &Topics, topic: &str, payload: &[u8]) -> Parsed {
    let Some((relative, shape)) = shape(topics, topic) else {
        return Parsed::NotACommand;
    };
    let refused = |r: Refusal, request_id: Option<Value>| Parsed::Refused {
        status: r.status,
        reason: r.reason,
        request_id,
    };
    if payload.len() > settings.max_payload_bytes {
        return refused(
            refuse(
                413,
                topic,
                format!(
                    "the payload is {} bytes; control.max_command_bytes allows at most {}",
                    payload.len(),
                    settings.max_payload_bytes
                ),
            ),
            None,
        );
    }
    if !settings.enabled {
        return refused(
            refuse(
                403,
                topic,
                "MQTT commands are turned off (control.mqtt = false); use the HTTP API or set control.mqtt = true",
            ),
            None,
        );
    }
    let node = topics.node();
    let allowed = settings
        .allow
        .iter()
        .any(|filter| rumqttc::matches(relative, &filter.replace(NODE_PLACEHOLDER, node)));
    if !allowed {
        return refused(
            refuse(
                403,
                topic,
                format!(
                    "not allowed by control.mqtt_allow (filters relative to {:?}: {})",
                    topics.prefix(),
                    if settings.allow.is_empty() {
                        "none, so no command topic is allowed".to_owned()
                    } else {
                        settings.allow.join(", ")
                    }
                ),
            ),
            None,
        );
    }
    let outcome = match shape {
        Shape::Node(rest) => node_command(topics, topic, &rest, payload),
        Shape::Task { camera, task, rest } => {
            task_command(topics, topic, camera, task, &rest, payload)
        }
    };
    match outcome {
        Ok((request, request_id)) => Parsed::Request {
            request,
            request_id,
        },
        Err((r, request_id)) => refused(r, request_id),
    }
}

type Outcome = Result<(ControlRequest, Option<Value>), (Refusal, Option<Value>)>;

fn node_command(topics: &Topics, topic: &str, rest: &[&str], payload: &[u8]) -> Outcome {
    let camera_id = |id: &str| -> Result<String, (Refusal, Option<Value>)> {
        check_camera_id(id, topics.node())
            .map(|()| id.to_owned())
            .map_err(|e| (refuse(400, topic, e), None))
    };
    match rest {
        ["cameras", id] => {
            let camera = camera_id(id)?;
            let (body, request_id) = json_object(topic, payload, "a JSON object (a camera table)")?;
            Ok((ControlRequest::PutCamera { camera, body }, request_id))
        }
        ["cameras", id, "delete"] => {
            let camera = camera_id(id)?;
            let request_id = no_body(topic, payload)?;
            Ok((ControlRequest::DeleteCamera { camera }, request_id))
        }
        ["cameras", id, "tasks"] => {
            let camera = camera_id(id)?;
            let (body, request_id) = task_list(topic, payload)?;
            Ok((ControlRequest::PutTasks { camera, body }, request_id))
        }
        ["overrides", "clear"] => Ok((ControlRequest::ClearOverrides, no_body(topic, payload)?)),
        ["config", "get"] => Ok((ControlRequest::Config, no_body(topic, payload)?)),
        _ => Err((
            refuse(
                404,
                topic,
                format!(
                    "no such node command; allowed below {}/: {NODE_COMMANDS}",
                    topics.node_command()
                ),
            ),
            None,
        )),
    }
}

fn task_command(
    topics: &Topics,
    topic: &str,
    camera: &str,
    task: &str,
    rest: &[&str],
    payload: &[u8],
) -> Outcome {
    if camera == topics.node() {
        return Err((
            refuse(
                400,
                topic,
                format!(
                    "{camera:?} is the node id, not a camera; node commands go below {}/ ({NODE_COMMANDS}), \
                     task commands below {}/{{camera}}/{{task}}/ ({TASK_COMMANDS})",
                    topics.node_command(),
                    topics.prefix()
                ),
            ),
            None,
        ));
    }
    check_camera_id(camera, topics.node()).map_err(|e| (refuse(400, topic, e), None))?;
    check_level("task name", task).map_err(|e| (refuse(400, topic, e), None))?;
    let patch = |body: Value, request_id: Option<Value>| {
        Ok((
            ControlRequest::PatchTask {
                camera: camera.to_owned(),
                task: task.to_owned(),
                body,
            },
            request_id,
        ))
    };
    let one_key = |key: &str, value: Value| {
        let mut body = Map::new();
        body.insert(key.to_owned(), value);
        Value::Object(body)
    };
    match rest {
        [] => {
            let text = utf8(topic, payload).map_err(|r| (r, None))?;
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err((
                    refuse(
                        400,
                        topic,
                        "the payload is empty; allowed: a JSON object of task keys \
                         (enabled, every, text, region, …) or ON/OFF/true/false",
                    ),
                    None,
                ));
            }
            if let Some(enabled) = on_off(trimmed, false) {
                return patch(one_key("enabled", Value::Bool(enabled)), None);
            }
            let value: Value = serde_json::from_str(trimmed).map_err(|e| {
                (
                    refuse(
                        400,
                        topic,
                        format!(
                            "the payload is neither JSON ({e}) nor ON/OFF; allowed: a JSON object of \
                             task keys such as {{\"enabled\": false, \"text\": \"a person\", \"every\": \"5s\"}}, or ON/OFF/true/false"
                        ),
                    ),
                    None,
                )
            })?;
            let Value::Object(mut body) = value else {
                return Err((
                    refuse(
                        400,
                        topic,
                        format!(
                            "expected a JSON object of task keys or ON/OFF/true/false, found {}",
                            crate::control::json_kind(&value)
                        ),
                    ),
                    None,
                ));
            };
            let request_id = take_request_id(topic, &mut body)?;
            if body.is_empty() {
                return Err((
                    refuse(
                        400,
                        topic,
                        "the object has no task keys; allowed: keys of one task (enabled, every, text, region, …)",
                    ),
                    request_id,
                ));
            }
            patch(Value::Object(body), request_id)
        }
        ["enabled"] => {
            let text = utf8(topic, payload).map_err(|r| (r, None))?;
            let value = plain(text);
            match on_off(&value, true) {
                Some(enabled) => patch(one_key("enabled", Value::Bool(enabled)), None),
                None => Err((
                    refuse(
                        400,
                        topic,
                        format!(
                            "{:?} is not a switch value; allowed: ON, OFF, true, false, 1, 0",
                            short(&value)
                        ),
                    ),
                    None,
                )),
            }
        }
        ["text"] => {
            let text = utf8(topic, payload).map_err(|r| (r, None))?;
            patch(one_key("text", Value::String(plain(text))), None)
        }
        ["every"] => {
            let text = utf8(topic, payload).map_err(|r| (r, None))?;
            let every = plain(text);
            if every.is_empty() {
                return Err((
                    refuse(
                        400,
                        topic,
                        "the payload is empty; allowed: a duration such as 500ms, 5s, 1m 30s",
                    ),
                    None,
                ));
            }
            // Checked where every other `every` is: by the configuration compile.
            patch(one_key("every", Value::String(every)), None)
        }
        _ => Err((
            refuse(
                404,
                topic,
                format!(
                    "no such task command; allowed below {}/{camera}/{task}/: {TASK_COMMANDS}",
                    topics.prefix()
                ),
            ),
            None,
        )),
    }
}

fn utf8<'a>(topic: &str, payload: &'a [u8]) -> Result<&'a str, Refusal> {
    std::str::from_utf8(payload)
        .map_err(|e| refuse(400, topic, format!("the payload is not UTF-8 text: {e}")))
}

/// A plain value: the string of a JSON string, else the text trimmed.
fn plain(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.starts_with('"') {
        if let Ok(Value::String(s)) = serde_json::from_str::<Value>(trimmed) {
            return s;
        }
    }
    trimmed.to_owned()
}

/// ON/OFF/true/false (and 1/0 when `digits`), any case.
fn on_off(value: &str, digits: bool) -> Option<bool> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("on") || v.eq_ignore_ascii_case("true") || (digits && v == "1") {
        Some(true)
    } else if v.eq_ignore_ascii_case("off")
        || v.eq_ignore_ascii_case("false")
        || (digits && v == "0")
    {
        Some(false)
    } else {
        None
    }
}

/// The start of a value, for an error message.
fn short(value: &str) -> String {
    const MAX: usize = 40;
    if value.chars().count() > MAX {
        format!("{}…", value.chars().take(MAX).collect::<String>())
    } else {
        value.to_owned()
    }
}

fn parse_json(topic: &str, payload: &[u8], allowed: &str) -> Result<Value, Refusal> {
    let text = utf8(topic, payload)?;
    serde_json::from_str(text).map_err(|e| {
        refuse(
            400,
            topic,
            format!("the payload is not valid JSON ({e}); allowed: {allowed}"),
        )
    })
}

/// Takes `request_id` out of a JSON object: a string or an integer.
fn take_request_id(
    topic: &str,
    body: &mut Map<String, Value>,
) -> Result<Option<Value>, (Refusal, Option<Value>)> {
    match body.remove("request_id") {
        None => Ok(None),
        Some(id @ Value::String(_)) => Ok(Some(id)),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(Value::Number(n))),
        // Echoed as given, so the sender can still tell which request failed.
        Some(other) => Err((
            refuse(
                400,
                topic,
                format!(
                    "request_id is {}; allowed: a string or an integer",
                    crate::control::json_kind(&other)
                ),
            ),
            Some(other),
        )),
    }
}

fn json_object(
    topic: &str,
    payload: &[u8],
    allowed: &str,
) -> Result<(Value, Option<Value>), (Refusal, Option<Value>)> {
    let value = parse_json(topic, payload, allowed).map_err(|r| (r, None))?;
    let Value::Object(mut body) = value else {
        return Err((
            refuse(
                400,
                topic,
                format!(
                    "expected {allowed}, found {}",
                    crate::control::json_kind(&value)
                ),
            ),
            None,
        ));
    };
    let request_id = take_request_id(topic, &mut body)?;
    Ok((Value::Object(body), request_id))
}

/// A task list: a JSON array, or `{"tasks": […], "request_id": …}` (an array
/// has no room for a request id).
fn task_list(
    topic: &str,
    payload: &[u8],
) -> Result<(Value, Option<Value>), (Refusal, Option<Value>)> {
    const ALLOWED: &str =
        "a JSON array of task tables, or an object {\"tasks\": [...], \"request_id\": ...}";
    let value = parse_json(topic, payload, ALLOWED).map_err(|r| (r, None))?;
    match value {
        Value::Array(_) => Ok((value, None)),
        Value::Object(mut body) => {
            let request_id = take_request_id(topic, &mut body)?;
            let tasks = body.remove("tasks");
            if let Some(key) = body.keys().next() {
                return Err((
                    refuse(
                        400,
                        topic,
                        format!("unknown key {key:?} beside the task list; allowed: {ALLOWED}"),
                    ),
                    request_id,
                ));
            }
            match tasks {
                Some(tasks @ Value::Array(_)) => Ok((tasks, request_id)),
                Some(other) => Err((
                    refuse(
                        400,
                        topic,
                        format!(
                            "tasks is {}; allowed: {ALLOWED}",
                            crate::control::json_kind(&other)
                        ),
                    ),
                    request_id,
                )),
                None => Err((
                    refuse(
                        400,
                        topic,
                        format!("the object has no tasks; allowed: {ALLOWED}"),
                    ),
                    request_id,
                )),
            }
        }
        other => Err((
            refuse(
                400,
                topic,
                format!(
                    "expected {ALLOWED}, found {}",
                    crate::control::json_kind(&other)
                ),
            ),
            None,
        )),
    }
}

/// A command without a body: an empty payload, or an object with only
/// `request_id`.
fn no_body(topic: &str, payload: &[u8]) -> Result<Option<Value>, (Refusal, Option<Value>)> {
    const ALLOWED: &str = "an empty payload, or {\"request_id\": ...}";
    let text = utf8(topic, payload).map_err(|r| (r, None))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let (body, request_id) = json_object(topic, payload, ALLOWED)?;
    match body.as_object().and_then(|b| b.keys().next()) {
        Some(key) => Err((
            refuse(
                400,
                topic,
                format!("this command takes no body, found key {key:?}; allowed: {ALLOWED}"),
            ),
            request_id,
        )),
        None => Ok(request_id),
    }
}

/// The answer to a command, for [`Topics::command_response`]: the reply
/// body's fields with `request_id`, `topic`, `status` and `ok` (these four
/// replace body fields of the same name). A body that is not an object goes
/// under `body`.
pub fn response(topic: &str, request_id: Option<&Value>, reply: &ControlReply) -> Vec<u8> {
    let mut out = Map::new();
    match &reply.body {
        Value::Object(fields) => {
            for (key, value) in fields {
                out.insert(key.clone(), value.clone());
            }
        }
        Value::Null => {}
        other => {
            out.insert("body".into(), other.clone());
        }
    }
    out.insert(
        "request_id".into(),
        request_id.cloned().unwrap_or(Value::Null),
    );
    out.insert("topic".into(), Value::String(topic.to_owned()));
    out.insert("status".into(), Value::from(reply.status));
    out.insert("ok".into(), Value::Bool(reply.is_ok()));
    Value::Object(out).to_string().into_bytes()
}

/// The answer to a [`Parsed::Refused`] command: `{"error": reason}` with its
/// status.
pub fn refusal(topic: &str, request_id: Option<&Value>, status: u16, reason: &str) -> Vec<u8> {
    response(topic, request_id, &ControlReply::error(status, reason))
}

#[cfg(test)]
mod tests;
