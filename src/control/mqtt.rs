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
mod tests {
    use super::*;
    use serde_json::json;

    fn topics() -> Topics {
        Topics::new("site/fe", "edge-01").unwrap()
    }

    fn settings() -> CommandSettings {
        CommandSettings::default()
    }

    fn parse_str(topic: &str, payload: &str) -> Parsed {
        parse(&settings(), &topics(), topic, payload.as_bytes())
    }

    fn request(topic: &str, payload: &str) -> (ControlRequest, Option<Value>) {
        match parse_str(topic, payload) {
            Parsed::Request {
                request,
                request_id,
            } => (request, request_id),
            other => panic!("{topic} {payload:?}: expected a request, got {other:?}"),
        }
    }

    fn refused(topic: &str, payload: &str) -> (u16, String, Option<Value>) {
        match parse_str(topic, payload) {
            Parsed::Refused {
                status,
                reason,
                request_id,
            } => {
                assert!(reason.contains(topic), "reason names the topic: {reason}");
                (status, reason, request_id)
            }
            other => panic!("{topic} {payload:?}: expected a refusal, got {other:?}"),
        }
    }

    fn patch(body: Value) -> ControlRequest {
        ControlRequest::PatchTask {
            camera: "front-door".into(),
            task: "od".into(),
            body,
        }
    }

    #[test]
    fn subscriptions_cover_node_and_task_commands() {
        assert_eq!(
            subscriptions(&topics()),
            [
                "site/fe/edge-01/set/#",
                "site/fe/+/+/set",
                "site/fe/+/+/set/+"
            ]
        );
    }

    #[test]
    fn node_commands_become_requests_with_request_ids() {
        let (r, id) = request(
            "site/fe/edge-01/set/cameras/front-door",
            r#"{"url": "rtsp://cam/1", "request_id": "abc"}"#,
        );
        assert_eq!(
            r,
            ControlRequest::PutCamera {
                camera: "front-door".into(),
                body: json!({"url": "rtsp://cam/1"})
            }
        );
        assert_eq!(id, Some(json!("abc")));

        let (r, id) = request("site/fe/edge-01/set/cameras/front-door/delete", "");
        assert_eq!(
            r,
            ControlRequest::DeleteCamera {
                camera: "front-door".into()
            }
        );
        assert_eq!(id, None);
        let (_, id) = request(
            "site/fe/edge-01/set/cameras/front-door/delete",
            r#"{"request_id": 7}"#,
        );
        assert_eq!(id, Some(json!(7)));

        let (r, id) = request(
            "site/fe/edge-01/set/cameras/front-door/tasks",
            r#"[{"task": "<OD>", "every": "2s"}]"#,
        );
        assert_eq!(
            r,
            ControlRequest::PutTasks {
                camera: "front-door".into(),
                body: json!([{"task": "<OD>", "every": "2s"}])
            }
        );
        assert_eq!(id, None);
        let (r, id) = request(
            "site/fe/edge-01/set/cameras/front-door/tasks",
            r#"{"tasks": [], "request_id": "t1"}"#,
        );
        assert_eq!(
            r,
            ControlRequest::PutTasks {
                camera: "front-door".into(),
                body: json!([])
            }
        );
        assert_eq!(id, Some(json!("t1")));

        assert_eq!(
            request("site/fe/edge-01/set/overrides/clear", "  \n").0,
            ControlRequest::ClearOverrides
        );
        let (r, id) = request("site/fe/edge-01/set/config/get", r#"{"request_id":"c"}"#);
        assert_eq!((r, id), (ControlRequest::Config, Some(json!("c"))));
    }

    #[test]
    fn task_commands_take_json_objects_and_plain_values() {
        let (r, id) = request(
            "site/fe/front-door/od/set",
            r#"{"enabled":false,"text":"a person with a ladder","every":"5s","request_id":42}"#,
        );
        assert_eq!(
            r,
            patch(json!({"enabled": false, "text": "a person with a ladder", "every": "5s"}))
        );
        assert_eq!(id, Some(json!(42)));
        for (payload, enabled) in [
            ("ON", true),
            ("off", false),
            ("true", true),
            ("FALSE", false),
        ] {
            assert_eq!(
                request("site/fe/front-door/od/set", payload),
                (patch(json!({ "enabled": enabled })), None),
                "{payload}"
            );
        }
        for (payload, enabled) in [
            ("ON", true),
            ("Off", false),
            ("true", true),
            ("false", false),
            ("1", true),
            ("0\n", false),
            ("\"on\"", true),
        ] {
            assert_eq!(
                request("site/fe/front-door/od/set/enabled", payload).0,
                patch(json!({ "enabled": enabled })),
                "{payload}"
            );
        }
        assert_eq!(
            request("site/fe/front-door/od/set/text", "a person with a ladder\n").0,
            patch(json!({"text": "a person with a ladder"}))
        );
        assert_eq!(
            request("site/fe/front-door/od/set/text", r#""  quoted ""#).0,
            patch(json!({"text": "  quoted "}))
        );
        assert_eq!(
            request("site/fe/front-door/od/set/every", "5s").0,
            patch(json!({"every": "5s"}))
        );
        // A task by index is passed through; the controller resolves it.
        assert!(matches!(
            request("site/fe/front-door/0/set/every", "1m").0,
            ControlRequest::PatchTask { task, .. } if task == "0"
        ));
    }

    #[test]
    fn malformed_payloads_are_refused_with_reasons() {
        let (status, reason, _) = refused("site/fe/edge-01/set/cameras/front-door", "{not json");
        assert_eq!(status, 400);
        assert!(
            reason.contains("not valid JSON") && reason.contains("line 1"),
            "{reason}"
        );
        let (_, reason, _) = refused("site/fe/edge-01/set/cameras/front-door", "[1]");
        assert!(reason.contains("found an array"), "{reason}");
        let (_, reason, _) = refused("site/fe/edge-01/set/cameras/front-door/tasks", "{}");
        assert!(reason.contains("no tasks"), "{reason}");
        let (_, reason, _) = refused("site/fe/edge-01/set/cameras/front-door/tasks", "\"x\"");
        assert!(reason.contains("found a string"), "{reason}");
        let (_, reason, id) = refused(
            "site/fe/edge-01/set/cameras/front-door/delete",
            r#"{"request_id": "d", "force": true}"#,
        );
        assert!(reason.contains("\"force\""), "{reason}");
        assert_eq!(id, Some(json!("d")));
        let (_, reason, id) = refused("site/fe/edge-01/set/config/get", r#"{"request_id": [1]}"#);
        assert!(reason.contains("request_id is an array"), "{reason}");
        assert_eq!(id, Some(json!([1])));
        let (_, reason, _) = refused("site/fe/edge-01/set/config/get", r#"{"request_id": 1.5}"#);
        assert!(reason.contains("request_id is a number"), "{reason}");

        let bad_utf8 = parse(
            &settings(),
            &topics(),
            "site/fe/front-door/od/set/text",
            &[0xff, 0xfe],
        );
        assert!(
            matches!(&bad_utf8, Parsed::Refused { status: 400, reason, .. } if reason.contains("not UTF-8")),
            "{bad_utf8:?}"
        );
        let (_, reason, _) = refused("site/fe/front-door/od/set", "maybe");
        assert!(
            reason.contains("neither JSON") && reason.contains("ON/OFF"),
            "{reason}"
        );
        let (_, reason, _) = refused("site/fe/front-door/od/set", "5");
        assert!(reason.contains("found a number"), "{reason}");
        let (_, reason, id) = refused("site/fe/front-door/od/set", r#"{"request_id": "x"}"#);
        assert!(reason.contains("no task keys"), "{reason}");
        assert_eq!(id, Some(json!("x")));
        let (_, reason, _) = refused("site/fe/front-door/od/set", "");
        assert!(reason.contains("empty"), "{reason}");
        let (_, reason, _) = refused("site/fe/front-door/od/set/enabled", "yes please");
        assert!(reason.contains("ON, OFF, true, false, 1, 0"), "{reason}");
        let (_, reason, _) = refused("site/fe/front-door/od/set/every", " ");
        assert!(reason.contains("duration"), "{reason}");
    }

    #[test]
    fn unknown_paths_list_the_allowed_ones() {
        for topic in [
            "site/fe/edge-01/set",
            "site/fe/edge-01/set/cameras",
            "site/fe/edge-01/set/cameras/a/b/c",
            "site/fe/edge-01/set/reboot",
        ] {
            let (status, reason, _) = refused(topic, "");
            assert_eq!(status, 404, "{topic}");
            assert!(
                reason.contains("cameras/{id}/delete") && reason.contains("config/get"),
                "{reason}"
            );
        }
        let (status, reason, _) = refused("site/fe/front-door/od/set/region", "[1,2,3,4]");
        assert_eq!(status, 404);
        assert!(
            reason.contains("set/enabled") && reason.contains("set/every"),
            "{reason}"
        );
    }

    #[test]
    fn bad_ids_in_topics_are_refused() {
        let (status, reason, _) = refused("site/fe/edge-01/od/set", "ON");
        assert_eq!(status, 400);
        assert!(reason.contains("is the node id"), "{reason}");
        let (_, reason, _) = refused("site/fe/edge-01/od/set/enabled", "ON");
        assert!(reason.contains("is the node id"), "{reason}");
        let (_, reason, _) = refused("site/fe/edge-01/set/cameras//tasks", "[]");
        assert!(reason.contains("empty"), "{reason}");
        let (_, reason, _) = refused("site/fe/edge-01/set/cameras/edge-01", "{}");
        assert!(reason.contains("node id"), "{reason}");
        let (_, reason, _) = refused("site/fe/status/od/set", "ON");
        assert!(reason.contains("reserved"), "{reason}");
    }

    #[test]
    fn other_topics_are_not_commands() {
        for topic in [
            "site/fe/edge-01/response",
            "site/fe/edge-01/status",
            "site/fe/front-door/od",
            "site/fe/front-door/od/state",
            "site/fe/front-door/set",
            "other/edge-01/set/config/get",
            "site/fed/edge-01/set/config/get",
            "site/fe",
        ] {
            assert_eq!(parse_str(topic, ""), Parsed::NotACommand, "{topic}");
        }
        // Another node's commands are task-shaped only if they look like it.
        assert_eq!(
            parse_str("site/fe/edge-02/set/config/get", ""),
            Parsed::NotACommand
        );
    }

    #[test]
    fn size_is_checked_before_anything_is_parsed() {
        // 1 MB of bytes that are not even UTF-8: refused by size alone.
        let payload = vec![0xffu8; 1_000_000];
        let parsed = parse(
            &settings(),
            &topics(),
            "site/fe/edge-01/set/cameras/front-door",
            &payload,
        );
        match parsed {
            Parsed::Refused {
                status,
                reason,
                request_id,
            } => {
                assert_eq!((status, request_id), (413, None));
                assert!(
                    reason.contains("1000000 bytes") && reason.contains("at most 65536"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let exact = CommandSettings {
            max_payload_bytes: 2,
            ..settings()
        };
        assert!(matches!(
            parse(&exact, &topics(), "site/fe/front-door/od/set", b"ON"),
            Parsed::Request { .. }
        ));
        assert!(matches!(
            parse(&exact, &topics(), "site/fe/front-door/od/set", b"OFF"),
            Parsed::Refused { status: 413, .. }
        ));
    }

    #[test]
    fn the_allow_list_and_the_switch_decide_what_is_taken() {
        let only = CommandSettings {
            allow: vec!["{node}/set/config/get".into(), "+/+/set/enabled".into()],
            ..settings()
        };
        let t = topics();
        assert!(matches!(
            parse(&only, &t, "site/fe/edge-01/set/config/get", b""),
            Parsed::Request { .. }
        ));
        assert!(matches!(
            parse(&only, &t, "site/fe/front-door/od/set/enabled", b"ON"),
            Parsed::Request { .. }
        ));
        match parse(&only, &t, "site/fe/front-door/od/set/text", b"x") {
            Parsed::Refused { status, reason, .. } => {
                assert_eq!(status, 403);
                assert!(
                    reason.contains("not allowed by control.mqtt_allow")
                        && reason.contains("+/+/set/enabled"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let none = CommandSettings {
            allow: vec![],
            ..settings()
        };
        assert!(matches!(
            parse(&none, &t, "site/fe/edge-01/set/config/get", b""),
            Parsed::Refused { status: 403, .. }
        ));
        let off = CommandSettings {
            enabled: false,
            ..settings()
        };
        match parse(&off, &t, "site/fe/edge-01/set/config/get", b"") {
            Parsed::Refused { status, reason, .. } => {
                assert_eq!(status, 403);
                assert!(reason.contains("control.mqtt = false"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filters_are_checked() {
        for ok in [
            "#",
            "{node}/set/#",
            "+/+/set/enabled",
            "{node}/set/cameras/+",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/a", "empty level"),
            ("a//b", "empty level"),
            ("a/", "empty level"),
            ("a/#/b", "last"),
            ("a#", "whole level"),
            ("a/b+", "whole level"),
            ("{camera}/set", "only {node}"),
        ] {
            let err = check_filter(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    fn section(text: &str) -> (Option<CommandSettings>, Vec<String>) {
        use ::config::{FileFormat, Source};
        let mut root = ::config::Value::new(None, ::config::ValueKind::Table(Default::default()));
        ::config::File::from_str(text, FileFormat::Toml)
            .collect_to(&mut root)
            .unwrap();
        let mut errors = Errors::new("test.toml", "FLORENCE_EDGE");
        let mut fields = Fields::of(root, "", &mut errors).unwrap();
        let control = fields.table("control", &mut errors).unwrap();
        let settings = CommandSettings::from_section(control, &mut errors);
        (
            settings,
            errors.list.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn the_control_section_is_read_with_every_problem() {
        assert_eq!(section(""), (Some(CommandSettings::default()), vec![]));
        let (settings, errors) = section(
            "[control]\nmqtt = false\nmqtt_allow = [\"{node}/set/#\"]\nmax_command_bytes = 2048\n",
        );
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(
            settings,
            Some(CommandSettings {
                enabled: false,
                allow: vec!["{node}/set/#".into()],
                max_payload_bytes: 2048,
            })
        );
        let (_, errors) = section(
            "[control]\nmqtt = 1\nmqtt_allow = [\"a/#/b\", 3]\nmax_command_bytes = 100\nmqtt_alow = []\n",
        );
        let all = errors.join("\n");
        for needle in [
            "control.mqtt: expected a boolean",
            "control.mqtt_allow[0]: \"a/#/b\" is not a topic filter",
            "control.mqtt_allow[1]: expected a string",
            "control.max_command_bytes: 100 is out of range",
            "control.mqtt_alow: unknown key; did you mean `mqtt_allow`?",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        let (settings, errors) = section("[control]\nmqtt_allow = \"#\"\n");
        assert_eq!(settings, None);
        assert!(errors[0].contains("expected an array"), "{errors:?}");
    }

    #[test]
    fn responses_carry_the_envelope_and_the_reply_fields() {
        let reply = ControlReply::ok(json!({"revision": 3, "status": "ignored"}));
        let out: Value =
            serde_json::from_slice(&response("fe/n/set/config/get", Some(&json!("r1")), &reply))
                .unwrap();
        assert_eq!(
            out,
            json!({"request_id": "r1", "topic": "fe/n/set/config/get", "status": 200, "ok": true, "revision": 3})
        );
        let problems = ControlReply::problems(vec![super::super::Problem {
            key: "tasks[0].every".into(),
            reason: "too short".into(),
        }]);
        let out: Value = serde_json::from_slice(&response("t", None, &problems)).unwrap();
        assert_eq!(out["request_id"], Value::Null);
        assert_eq!(
            (out["status"].clone(), out["ok"].clone()),
            (json!(422), json!(false))
        );
        assert_eq!(out["problems"][0]["key"], "tasks[0].every");
        let out: Value =
            serde_json::from_slice(&response("t", None, &ControlReply::ok(json!([1, 2])))).unwrap();
        assert_eq!(out["body"], json!([1, 2]));
        let out: Value =
            serde_json::from_slice(&refusal("t", Some(&json!(5)), 413, "too big")).unwrap();
        assert_eq!(
            out,
            json!({"request_id": 5, "topic": "t", "status": 413, "ok": false, "error": "too big"})
        );
    }
}
