//! The runtime overlay: camera tables changed over HTTP or MQTT, kept in the
//! state directory (`[control] overrides_file`) and laid over the TOML file
//! at every start and reload. The file itself is never rewritten.
//!
//! The overlay holds whole camera tables in the file's shape (JSON here),
//! by camera id: a table replaces the file's camera of that id (or adds
//! one), a `null` removes it. Laying it over the file happens on the raw
//! tree, before the one compile `validate` and `run` share, so a camera
//! from the overlay is checked exactly as one written in the file.
//!
//! It also carries the configuration **revision**: a number that goes up by
//! one with every change applied (a command, a reload that changed
//! something, a start whose file differs from the last run's), so that
//! results name the settings they were produced under.
//!
//! Written atomically (a temporary file, fsync, rename), so a crash leaves
//! the old overlay or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{task_names, ControlReply, ControlRequest, Problem};
use crate::schedule::TaskSchedule;

/// The overlay file's format version.
pub const OVERLAY_VERSION: u32 = 1;

/// Why the overlay file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read the overrides file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the overrides file {path} is not a florence-edge overlay ({reason}); move it away, or fix it")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write the overrides file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One camera's entry: its whole table, or `None` (removed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraOverride {
    pub id: String,
    pub camera: Option<Map<String, Value>>,
}

/// The overlay and the revision, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overlay {
    pub version: u32,
    /// The configuration revision in effect when this was written.
    pub revision: u64,
    /// SHA-256 of the effective configuration text of that revision
    /// ([`digest`]): a start that finds another digest raises the revision.
    #[serde(default)]
    pub digest: String,
    /// In the order they were first changed.
    #[serde(default)]
    pub cameras: Vec<CameraOverride>,
}

impl Overlay {
    /// Reads `path`; a missing file is an empty overlay at revision 0.
    pub fn load(path: &Path) -> Result<Overlay, OverlayError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Overlay {
                    version: OVERLAY_VERSION,
                    ..Overlay::default()
                })
            }
            Err(source) => {
                return Err(OverlayError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let overlay: Overlay = serde_json::from_str(&text).map_err(|e| OverlayError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if overlay.version != OVERLAY_VERSION {
            return Err(OverlayError::Parse {
                path: path.to_path_buf(),
                reason: format!(
                    "version {} (this florence-edge reads version {OVERLAY_VERSION})",
                    overlay.version
                ),
            });
        }
        Ok(overlay)
    }

    /// Writes the overlay atomically, creating the directory if needed.
    pub fn save(&self, path: &Path) -> Result<(), OverlayError> {
        let err = |source| OverlayError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        {
            // Owner only: camera tables may hold credentials, as the TOML
            // file in /etc does.
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(&json).map_err(err)?;
            f.write_all(b"\n").map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Whether it changes anything.
    pub fn is_empty(&self) -> bool {
        self.cameras.is_empty()
    }

    /// Lays the overlay over the file's tree: replaces, adds or removes
    /// `[[cameras]]` tables by id. A camera table in the file without a
    /// string `id` is left alone (the compile reports it).
    pub fn apply(&self, root: &mut toml::Table) -> Result<(), Problem> {
        if self.cameras.is_empty() {
            return Ok(());
        }
        let cameras = root
            .entry("cameras")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(list) = cameras else {
            // The compile reports the wrong type of `cameras`.
            return Ok(());
        };
        for entry in &self.cameras {
            let position = list
                .iter()
                .position(|c| camera_id(c) == Some(entry.id.as_str()));
            match (&entry.camera, position) {
                (Some(table), at) => {
                    let value =
                        json_to_toml(&Value::Object(table.clone()), "camera").map_err(|p| {
                            Problem {
                                key: format!("overrides.cameras.{}.{}", entry.id, p.key),
                                reason: p.reason,
                            }
                        })?;
                    match at {
                        Some(i) => list[i] = value,
                        None => list.push(value),
                    }
                }
                (None, Some(i)) => {
                    list.remove(i);
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// The overlay after `request`, given the effective tree before it
    /// (file + this overlay) and the camera's compiled tasks (for task
    /// names). Refuses what cannot be turned into camera tables: an unknown
    /// camera or task (404), a body of the wrong shape (422).
    pub fn with_change(
        &self,
        request: &ControlRequest,
        effective: &toml::Table,
        tasks: Option<&[TaskSchedule]>,
    ) -> Result<Overlay, ControlReply> {
        let mut next = self.clone();
        let current = |id: &str| -> Option<Map<String, Value>> {
            let list = effective.get("cameras")?.as_array()?;
            let table = list.iter().find(|c| camera_id(c) == Some(id))?;
            match serde_json::to_value(table) {
                Ok(Value::Object(map)) => Some(map),
                _ => None,
            }
        };
        let unknown_camera = |id: &str| {
            ControlReply::error(
                404,
                format!("no camera {id:?} in the configuration; add it with PUT"),
            )
        };
        match request {
            ControlRequest::Config | ControlRequest::GetCamera { .. } => {}
            ControlRequest::ClearOverrides => next.cameras.clear(),
            ControlRequest::PutCamera { camera, body } => {
                let Value::Object(map) = body else {
                    return Err(shape("the camera", "an object (a [[cameras]] table)"));
                };
                let mut map = map.clone();
                match map.get("id") {
                    None => {
                        map.insert("id".into(), Value::String(camera.clone()));
                    }
                    Some(Value::String(id)) if id == camera => {}
                    Some(other) => {
                        return Err(ControlReply::problems(vec![Problem {
                            key: "id".into(),
                            reason: format!(
                                "is {other}, but the request is for camera {camera:?}; allowed: the same id, or none"
                            ),
                        }]))
                    }
                }
                next.set(camera, Some(map));
            }
            ControlRequest::DeleteCamera { camera } => {
                if current(camera).is_none() {
                    return Err(unknown_camera(camera));
                }
                next.set(camera, None);
            }
            ControlRequest::PutTasks { camera, body } => {
                let Some(mut map) = current(camera) else {
                    return Err(unknown_camera(camera));
                };
                if !body.is_array() {
                    return Err(shape("the tasks", "an array of task tables"));
                }
                map.insert("tasks".into(), body.clone());
                next.set(camera, Some(map));
            }
            ControlRequest::PatchTask { camera, task, body } => {
                let Some(mut map) = current(camera) else {
                    return Err(unknown_camera(camera));
                };
                let Value::Object(patch) = body else {
                    return Err(shape("the task change", "an object of task keys"));
                };
                let names = tasks.map(task_names).unwrap_or_default();
                let index = task
                    .parse::<usize>()
                    .ok()
                    .or_else(|| names.iter().position(|n| n == task));
                let list = map.get_mut("tasks").and_then(Value::as_array_mut);
                let Some(slot) = list.and_then(|l| index.and_then(|i| l.get_mut(i))) else {
                    return Err(ControlReply::error(
                        404,
                        format!(
                            "camera {camera:?} has no task {task:?}; allowed: an index from 0, or one of {}",
                            if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
                        ),
                    ));
                };
                let Value::Object(fields) = slot else {
                    return Err(shape("the task in the configuration", "a table"));
                };
                for (key, value) in patch {
                    if value.is_null() {
                        fields.remove(key);
                    } else {
                        fields.insert(key.clone(), value.clone());
                    }
                }
                next.set(camera, Some(map));
            }
        }
        Ok(next)
    }

    /// Drops removals of cameras the file does not have (a camera added at
    /// run time and removed again leaves nothing behind).
    pub fn prune(&mut self, file: &toml::Table) {
        let in_file = |id: &str| {
            file.get("cameras")
                .and_then(toml::Value::as_array)
                .is_some_and(|list| list.iter().any(|c| camera_id(c) == Some(id)))
        };
        self.cameras
            .retain(|c| c.camera.is_some() || in_file(&c.id));
    }

    fn set(&mut self, id: &str, camera: Option<Map<String, Value>>) {
        match self.cameras.iter_mut().find(|c| c.id == id) {
            Some(entry) => entry.camera = camera,
            None => self.cameras.push(CameraOverride {
                id: id.to_string(),
                camera,
            }),
        }
    }
}

fn shape(what: &str, allowed: &str) -> ControlReply {
    ControlReply::error(400, format!("{what} must be {allowed}"))
}

fn camera_id(value: &toml::Value) -> Option<&str> {
    match value.get("id") {
        Some(toml::Value::String(id)) => Some(id.as_str()),
        _ => None,
    }
}

/// JSON → TOML for bodies in the file's shape. `null` has no TOML form and
/// is refused (a `PATCH` removes a key with `null` before this).
pub fn json_to_toml(value: &Value, key: &str) -> Result<toml::Value, Problem> {
    Ok(match value {
        Value::Null => {
            return Err(Problem {
                key: key.to_string(),
                reason: "is null; allowed: a string, number, boolean, array or table (leave the key out instead)".into(),
            })
        }
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if n.is_f64() => toml::Value::Float(f),
            _ => {
                return Err(Problem {
                    key: key.to_string(),
                    reason: format!("{n} is out of range; allowed: a 64-bit signed integer"),
                })
            }
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| json_to_toml(v, &format!("{key}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut table = toml::Table::new();
            for (k, v) in map {
                table.insert(k.clone(), json_to_toml(v, &format!("{key}.{k}"))?);
            }
            toml::Value::Table(table)
        }
    })
}

/// SHA-256 (hex) of the effective configuration text: the file with the
/// overlay laid over it, and the `FLORENCE_EDGE__…` environment, sorted.
pub fn digest(effective_text: &str, env: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(effective_text.as_bytes());
    let mut env: Vec<_> = env.iter().collect();
    env.sort();
    for (k, v) in env {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file() -> toml::Table {
        toml::from_str(
            r#"
[node]
id = "n"
[[cameras]]
id = "a"
url = "test://ball"
tasks = [{ task = "<OD>", every = "1s" }, { task = "<CAPTION>", every = "5s" }]
[[cameras]]
id = "b"
url = "test://smpte"
tasks = [{ task = "<OD>", every = "1s" }]
"#,
        )
        .unwrap()
    }

    fn ids(root: &toml::Table) -> Vec<String> {
        root["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn put_delete_and_patch_become_camera_tables_over_the_file() {
        let empty = Overlay::default();
        let put = ControlRequest::PutCamera {
            camera: "c".into(),
            body: json!({"url": "test://snow", "tasks": [{"task": "<OCR>", "every": "2s"}]}),
        };
        let o = empty.with_change(&put, &file(), None).unwrap();
        let o = o
            .with_change(
                &ControlRequest::DeleteCamera { camera: "b".into() },
                &file(),
                None,
            )
            .unwrap();
        let mut root = file();
        o.apply(&mut root).unwrap();
        assert_eq!(ids(&root), ["a", "c"]);
        // Added at run time and removed again: nothing left of it; a file
        // camera's removal stays.
        let mut gone = o
            .with_change(
                &ControlRequest::DeleteCamera { camera: "c".into() },
                &root,
                None,
            )
            .unwrap();
        gone.prune(&file());
        assert_eq!(
            gone.cameras,
            [CameraOverride {
                id: "b".into(),
                camera: None
            }]
        );
        assert_eq!(root["cameras"][1]["id"].as_str(), Some("c"), "id filled in");

        let patch = ControlRequest::PatchTask {
            camera: "a".into(),
            task: "1".into(),
            body: json!({"enabled": false, "every": "10s"}),
        };
        let o = o.with_change(&patch, &root, None).unwrap();
        let mut root = file();
        o.apply(&mut root).unwrap();
        let task = &root["cameras"][0]["tasks"][1];
        assert_eq!(task["enabled"].as_bool(), Some(false));
        assert_eq!(task["every"].as_str(), Some("10s"));
        assert_eq!(task["task"].as_str(), Some("<CAPTION>"), "other keys kept");

        let cleared = o
            .with_change(&ControlRequest::ClearOverrides, &root, None)
            .unwrap();
        let mut root = file();
        cleared.apply(&mut root).unwrap();
        assert_eq!(root, file());
    }

    #[test]
    fn unknown_cameras_tasks_and_mismatched_ids_are_refused() {
        let o = Overlay::default();
        let r = o
            .with_change(
                &ControlRequest::DeleteCamera {
                    camera: "zz".into(),
                },
                &file(),
                None,
            )
            .unwrap_err();
        assert_eq!(r.status, 404);
        let r = o
            .with_change(
                &ControlRequest::PatchTask {
                    camera: "a".into(),
                    task: "7".into(),
                    body: json!({"enabled": false}),
                },
                &file(),
                None,
            )
            .unwrap_err();
        assert_eq!(r.status, 404);
        assert!(r.body["error"].as_str().unwrap().contains("no task \"7\""));
        let r = o
            .with_change(
                &ControlRequest::PutCamera {
                    camera: "a".into(),
                    body: json!({"id": "b", "url": "test://ball"}),
                },
                &file(),
                None,
            )
            .unwrap_err();
        assert_eq!(r.status, 422);
        assert_eq!(r.body["problems"][0]["key"], "id");
        let r = o
            .with_change(
                &ControlRequest::PutTasks {
                    camera: "a".into(),
                    body: json!({"task": "<OD>"}),
                },
                &file(),
                None,
            )
            .unwrap_err();
        assert_eq!(r.status, 400);
    }

    #[test]
    fn saved_overlays_read_back_and_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/overrides.json");
        let missing = Overlay::load(&path).unwrap();
        assert!(missing.is_empty() && missing.revision == 0);
        let mut o = Overlay {
            version: OVERLAY_VERSION,
            revision: 7,
            digest: digest("x", &[]),
            cameras: Vec::new(),
        };
        o.set("a", None);
        o.save(&path).unwrap();
        assert_eq!(Overlay::load(&path).unwrap(), o);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner only: it may hold credentials");
        std::fs::write(&path, "{not json").unwrap();
        let e = Overlay::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("overrides.json") && e.contains("not a florence-edge overlay"),
            "{e}"
        );
    }

    #[test]
    fn nulls_and_huge_numbers_have_no_toml_form() {
        let e = json_to_toml(&json!({"tasks": [{"every": null}]}), "camera").unwrap_err();
        assert_eq!(e.key, "camera.tasks[0].every");
        assert!(json_to_toml(&json!(u64::MAX), "n").is_err());
        assert_eq!(
            json_to_toml(&json!(1.5), "n").unwrap(),
            toml::Value::Float(1.5)
        );
    }

    #[test]
    fn the_digest_changes_with_the_text_and_the_environment() {
        let a = digest("x", &[]);
        assert_eq!(a, digest("x", &[]));
        assert_ne!(a, digest("y", &[]));
        assert_ne!(
            a,
            digest("x", &[("FLORENCE_EDGE__A__B".into(), "1".into())])
        );
    }
}
