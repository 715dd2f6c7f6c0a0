//! `florence-edge validate --print`: the configuration in effect, as TOML
//! that could be written back to the file — every default filled in, every
//! credential shown as `***` and every URL through the one redaction.

use toml::{Table, Value};

use super::{CameraConfig, Config, DecoderLayout, PasswordSource, Strategy};
use crate::ingest::{DecoderChoice, MaxAttempts, Transport};
use crate::settings::{redact_url, REDACTED};

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn duration(d: std::time::Duration) -> Value {
    text(humantime::format_duration(d).to_string())
}

fn path(p: &std::path::Path) -> Value {
    text(p.display().to_string())
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn password(t: &mut Table, p: &Option<PasswordSource>) {
    match p {
        None => {}
        Some(PasswordSource::Inline(_)) => {
            t.insert("password".into(), text(REDACTED));
        }
        Some(PasswordSource::File(file)) => {
            t.insert("password_file".into(), path(file));
        }
    }
}

impl Config {
    /// The effective configuration as TOML text.
    pub fn effective_toml(&self) -> String {
        let root = self.effective_table();
        // Serializing a table built of strings, numbers and tables only
        // cannot fail; an error would still be shown rather than hidden.
        toml::to_string_pretty(&root).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The effective configuration as JSON in the file's shape
    /// (`GET /api/config`), credentials redacted as in [`Config::effective_toml`].
    pub fn effective_json(&self) -> serde_json::Value {
        serde_json::to_value(self.effective_table()).unwrap_or(serde_json::Value::Null)
    }

    /// One camera's effective table as JSON (`GET /api/cameras/{id}`).
    pub fn camera_json(&self, id: &str) -> Option<serde_json::Value> {
        let camera = self.cameras.iter().find(|c| c.id == id)?;
        serde_json::to_value(camera_table(camera)).ok()
    }

    fn effective_table(&self) -> Table {
        let mut root = Table::new();
        let mut node = Table::new();
        node.insert("id".into(), text(&self.node.id));
        root.insert("node".into(), Value::Table(node));
        root.insert("model".into(), Value::Table(self.model_table()));
        root.insert("mqtt".into(), Value::Table(self.mqtt_table()));
        let mut http = Table::new();
        http.insert("enabled".into(), Value::Boolean(self.http.listen.is_some()));
        if let Some(listen) = self.http.listen {
            http.insert("listen".into(), text(listen.to_string()));
        }
        if let Some(file) = &self.http.bearer_token_file {
            http.insert("bearer_token_file".into(), path(file));
        }
        root.insert("http".into(), Value::Table(http));
        let mut control = Table::new();
        control.insert("http".into(), Value::Boolean(self.control.http));
        control.insert("overrides_file".into(), path(&self.control.overrides_file));
        control.insert("mqtt".into(), Value::Boolean(self.control.mqtt.enabled));
        control.insert(
            "mqtt_allow".into(),
            Value::Array(self.control.mqtt.allow.iter().map(text).collect()),
        );
        control.insert(
            "max_command_bytes".into(),
            int(self.control.mqtt.max_payload_bytes),
        );
        root.insert("control".into(), Value::Table(control));
        let mut ha = Table::new();
        ha.insert("enabled".into(), Value::Boolean(self.homeassistant.enabled));
        ha.insert(
            "discovery_prefix".into(),
            text(&self.homeassistant.discovery_prefix),
        );
        root.insert("homeassistant".into(), Value::Table(ha));
        root.insert(
            "cameras".into(),
            Value::Array(
                self.cameras
                    .iter()
                    .map(|c| Value::Table(camera_table(c)))
                    .collect(),
            ),
        );
        root
    }

    fn model_table(&self) -> Table {
        let m = &self.model;
        let mut t = Table::new();
        match &m.hub {
            None => {
                t.insert("dir".into(), path(&m.dir));
            }
            Some(hub) => {
                t.insert("id".into(), text(&hub.model.repo));
                t.insert("revision".into(), text(&hub.model.revision));
                t.insert("cache_dir".into(), path(&hub.cache_dir));
                t.insert("download".into(), Value::Boolean(hub.download));
            }
        }
        t.insert("backend".into(), text(m.backend.to_string()));
        if let Some(p) = &m.precision {
            t.insert("precision".into(), text(p.name()));
        }
        let decoder = match m.decoder {
            DecoderLayout::Split => "split",
            DecoderLayout::Merged => "merged",
        };
        t.insert("decoder".into(), text(decoder));
        if let Some(dir) = &m.engines_dir {
            t.insert("engines_dir".into(), path(dir));
        }
        t.insert(
            "build_engines_at_start".into(),
            Value::Boolean(m.build_engines_at_start),
        );
        t.insert("max_batch".into(), int(m.max_batch));
        t.insert("max_wait_ms".into(), int(m.max_wait.as_millis()));
        t.insert("threads".into(), int(m.threads));
        t.insert("batch_timeout".into(), duration(m.batch_timeout));
        if let Some(lib) = &m.ort_library {
            t.insert("ort_library".into(), path(lib));
        }
        if let Some(mb) = m.gpu_memory_limit_mb {
            t.insert("gpu_memory_limit_mb".into(), int(mb));
        }
        let mut d = Table::new();
        match m.decoding.strategy {
            Strategy::Greedy => {
                d.insert("strategy".into(), text("greedy"));
            }
            Strategy::Beam { num_beams } => {
                d.insert("strategy".into(), text("beam"));
                d.insert("num_beams".into(), int(num_beams));
            }
        }
        d.insert("max_new_tokens".into(), int(m.decoding.max_new_tokens));
        t.insert("decoding".into(), Value::Table(d));
        t
    }

    fn mqtt_table(&self) -> Table {
        let m = &self.mqtt;
        // The section's own serialization (durations as written), with the
        // URL redacted and the password shown as where it comes from.
        let mut t = match Value::try_from(m) {
            Ok(Value::Table(t)) => t,
            Ok(_) | Err(_) => Table::new(),
        };
        t.insert("url".into(), text(redact_url(&m.url)));
        t.insert("client_id".into(), text(m.client_id_for(&self.node.id)));
        password(&mut t, &m.password);
        t
    }
}

fn camera_table(c: &CameraConfig) -> Table {
    let s = &c.stream;
    let mut t = Table::new();
    t.insert("id".into(), text(&c.id));
    t.insert("enabled".into(), Value::Boolean(c.enabled));
    t.insert("url".into(), text(redact_url(&s.url)));
    if let Some(credentials) = &s.credentials {
        t.insert("username".into(), text(&credentials.username));
        password(&mut t, &credentials.password);
    }
    let transport = match s.transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
        Transport::Auto => "auto",
    };
    t.insert("transport".into(), text(transport));
    t.insert("latency_ms".into(), int(s.latency.as_millis()));
    let decoder = match &s.decoder {
        DecoderChoice::Auto => "auto".to_string(),
        DecoderChoice::Element(e) => e.clone(),
    };
    t.insert("decoder".into(), text(decoder));
    t.insert("watchdog".into(), duration(s.watchdog));
    t.insert("startup_timeout".into(), duration(s.startup_timeout));
    t.insert(
        "keyframe_skipping".into(),
        Value::Boolean(s.keyframe_skipping),
    );
    t.insert("loop".into(), Value::Boolean(s.looping));
    let mut r = match Value::try_from(s.backoff) {
        Ok(Value::Table(r)) => r,
        _ => Table::new(),
    };
    let attempts = match s.max_attempts {
        MaxAttempts::Unlimited => 0,
        MaxAttempts::Limit(n) => n,
    };
    r.insert("max_attempts".into(), int(attempts));
    t.insert("reconnect".into(), Value::Table(r));
    let polygons = |list: &[crate::scene::zone::Polygon]| {
        Value::Array(
            list.iter()
                .map(|p| {
                    Value::Array(
                        p.points()
                            .iter()
                            .map(|[x, y]| Value::Array(vec![Value::Float(*x), Value::Float(*y)]))
                            .collect(),
                    )
                })
                .collect(),
        )
    };
    if !c.privacy_masks.is_empty() {
        t.insert("privacy_masks".into(), polygons(&c.privacy_masks));
    }
    let m = &c.motion;
    let mut mt = Table::new();
    mt.insert("threshold".into(), int(m.threshold));
    mt.insert("min_area".into(), Value::Float(m.min_area));
    mt.insert("background_alpha".into(), Value::Float(m.background_alpha));
    mt.insert("masks".into(), polygons(&m.masks));
    t.insert("motion".into(), Value::Table(mt));
    let tasks = c
        .tasks
        .iter()
        .map(|task| {
            let mut tt = Table::new();
            tt.insert("task".into(), text(task.task.token()));
            if let Some(input) = task.argument.text() {
                tt.insert("text".into(), text(input));
            }
            if let super::TaskArgument::Region(r) = &task.argument {
                tt.insert(
                    "region".into(),
                    Value::Array(vec![int(r.x1), int(r.y1), int(r.x2), int(r.y2)]),
                );
            }
            tt.insert("every".into(), duration(task.every));
            if !task.enabled {
                tt.insert("enabled".into(), Value::Boolean(false));
            }
            if let crate::schedule::When::Changed { max_interval } = task.when {
                tt.insert("when".into(), text("changed"));
                tt.insert("max_interval".into(), duration(max_interval));
            }
            Value::Table(tt)
        })
        .collect();
    t.insert("tasks".into(), Value::Array(tasks));
    t
}
