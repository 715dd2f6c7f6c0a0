//! Runtime control: change cameras, tasks and prompts while the daemon runs,
//! over HTTP (`/api/…`, `service::http`) and MQTT (`…/set` topics,
//! [`mqtt`]), and appear in Home Assistant (`publish::homeassistant`).
//!
//! Every change is a [`ControlRequest`]. The coordinator applies it the one
//! way a configuration is applied: the change is written into the
//! [`overlay`] (camera tables in the TOML file's shape, kept in the state
//! directory), the file plus the overlay is compiled and planned exactly as
//! `validate` and `run` do, and the result is applied like a SIGHUP reload.
//! A change that does not compile is refused as a whole with every problem
//! ([`ControlReply::problems`], HTTP 422); nothing of it is applied or
//! persisted. Each applied change raises the configuration revision that
//! result payloads carry.

pub mod mqtt;
pub mod overlay;

use serde::Serialize;
use serde_json::{json, Value};

use crate::schedule::TaskSchedule;

/// One control operation, whichever way it came in. Bodies are JSON in the
/// shape of the TOML file (a `[[cameras]]` table, a `tasks` array, keys of
/// one task).
#[derive(Clone, Debug, PartialEq)]
pub enum ControlRequest {
    /// `GET /api/config`: the effective configuration, secrets redacted.
    Config,
    /// `GET /api/cameras/{camera}`: one camera's effective settings.
    GetCamera { camera: String },
    /// `PUT /api/cameras/{camera}`: add the camera, or replace it whole.
    /// `body` is a camera table; its `id`, if given, must be `camera`.
    PutCamera { camera: String, body: Value },
    /// `DELETE /api/cameras/{camera}`: remove it (also one from the file).
    DeleteCamera { camera: String },
    /// `PUT /api/cameras/{camera}/tasks`: replace the camera's task list;
    /// `body` is an array of task tables.
    PutTasks { camera: String, body: Value },
    /// `PATCH /api/cameras/{camera}/tasks/{task}`: change keys of one task
    /// (`enabled`, `every`, `text`, `region`, …); `task` is its index in the
    /// list (`0`) or its name ([`task_names`]). `body` is an object; a key
    /// set to `null` is removed from the task.
    PatchTask {
        camera: String,
        task: String,
        body: Value,
    },
    /// `DELETE /api/overrides`: drop every runtime change; back to the file.
    ClearOverrides,
}

impl ControlRequest {
    /// Whether the request changes the configuration (as opposed to reading
    /// it).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            ControlRequest::Config | ControlRequest::GetCamera { .. }
        )
    }

    /// The camera it is about, if any.
    pub fn camera(&self) -> Option<&str> {
        match self {
            ControlRequest::GetCamera { camera }
            | ControlRequest::PutCamera { camera, .. }
            | ControlRequest::DeleteCamera { camera }
            | ControlRequest::PutTasks { camera, .. }
            | ControlRequest::PatchTask { camera, .. } => Some(camera),
            ControlRequest::Config | ControlRequest::ClearOverrides => None,
        }
    }
}

/// One thing wrong with a change: the key (relative to the camera the
/// change is about when it is about one, e.g. `tasks[0].every`) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// The answer to a [`ControlRequest`]: an HTTP status and a JSON body. The
/// MQTT path publishes the same body with the status in it.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlReply {
    pub status: u16,
    pub body: Value,
}

impl ControlReply {
    /// 200 with `body`.
    pub fn ok(body: Value) -> ControlReply {
        ControlReply { status: 200, body }
    }

    /// 422: the change was refused as a whole, for these reasons.
    pub fn problems(problems: Vec<Problem>) -> ControlReply {
        ControlReply {
            status: 422,
            body: json!({
                "error": format!("the change was refused ({} problem(s)); nothing of it was applied", problems.len()),
                "problems": problems,
            }),
        }
    }

    /// A refusal with one message: 400 (malformed), 404 (no such camera or
    /// task), 409, 413 (too large), 500 (could not persist), 503 (daemon
    /// busy or stopping).
    pub fn error(status: u16, message: impl Into<String>) -> ControlReply {
        ControlReply {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The retained state of one task, on `{prefix}/{camera}/{task}/state`
/// (`publish::Topics::task_state`): its effective settings, so dashboards
/// (and Home Assistant's switch and text entities) show what runs, also
/// after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TaskState {
    pub schema_version: u32,
    pub node: String,
    pub camera: String,
    /// The task's control name ([`task_names`]): `od`,
    /// `open_vocabulary_detection_2`.
    pub name: String,
    /// The task token, `<OD>`.
    pub task: String,
    pub enabled: bool,
    /// The period as the file writes it: `500ms`, `2s`, `1m 30s`.
    pub every: String,
    /// The text prompt of a text-input task, else `null`.
    pub text: Option<String>,
    /// The region `[x1, y1, x2, y2]` of a region-input task, else `null`.
    pub region: Option<[u32; 4]>,
    /// The configuration revision these settings belong to (results carry
    /// it too).
    pub revision: u64,
}

/// Where control requests go: the running daemon. Called from HTTP worker
/// threads and the MQTT intake; blocks until the change is applied or
/// refused (bounded by the implementation).
pub trait Controller: Send + Sync {
    fn control(&self, request: ControlRequest) -> ControlReply;
}

/// The name of each task of a camera, as control topics, state topics and
/// Home Assistant entities use it: the task token in lower snake case
/// (`<OD>` → `od`), and for the second and later task with the same token
/// on one camera that name with `_2`, `_3`, … (`open_vocabulary_detection_2`).
pub fn task_names(tasks: &[TaskSchedule]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let base = snake(t.task.token());
        let repeat = tasks[..i].iter().filter(|o| o.task == t.task).count();
        names.push(if repeat == 0 {
            base
        } else {
            format!("{base}_{}", repeat + 1)
        });
    }
    names
}

/// `an array`, `a string`, … : a JSON value's kind, for messages about a
/// body of the wrong shape.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `<OCR_WITH_REGION>` → `ocr_with_region`.
pub fn snake(token: &str) -> String {
    token
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Task, TaskArgument};
    use std::time::Duration;

    fn t(task: Task, text: Option<&str>) -> TaskSchedule {
        TaskSchedule {
            task,
            argument: text.map_or(TaskArgument::None, |s| TaskArgument::Text(s.into())),
            every: Duration::from_secs(1),
            enabled: true,
            when: crate::schedule::When::Always,
        }
    }

    #[test]
    fn repeated_tokens_get_numbered_names() {
        let tasks = [
            t(Task::ObjectDetection, None),
            t(Task::OpenVocabularyDetection, Some("a person")),
            t(Task::Caption, None),
            t(Task::OpenVocabularyDetection, Some("a ladder")),
        ];
        assert_eq!(
            task_names(&tasks),
            [
                "od",
                "open_vocabulary_detection",
                "caption",
                "open_vocabulary_detection_2"
            ]
        );
    }
}
