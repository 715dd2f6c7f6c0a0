//! From a configured camera to the settings the ingest stage runs.

use crate::config::{self, CameraConfig};
use crate::ingest::{self, CameraSettings, Credentials, MaxAttempts, PixelFormat};

/// The ingest settings for a configured camera: frames at the rate its
/// most frequent task needs, RGB for the CPU preprocessing.
pub fn camera_settings(camera: &CameraConfig) -> Result<CameraSettings, String> {
    let s = &camera.stream;
    let mut out = CameraSettings::new(camera.id.clone(), s.url.clone());
    out.transport = match s.transport {
        config::Transport::Tcp => ingest::Transport::Tcp,
        config::Transport::Udp => ingest::Transport::Udp,
        config::Transport::Auto => ingest::Transport::Auto,
    };
    out.latency = s.latency;
    out.decoder = match &s.decoder {
        config::DecoderChoice::Auto => ingest::DecoderChoice::Auto,
        config::DecoderChoice::Element(e) => ingest::DecoderChoice::Element(e.clone()),
    };
    out.credentials = match &s.credentials {
        None => None,
        Some(c) => {
            let password = match &c.password {
                None => String::new(),
                Some(p) => p
                    .read()
                    .map_err(|e| format!("camera {}: reading its password: {e}", camera.id))?
                    .expose()
                    .to_string(),
            };
            Some(Credentials {
                username: c.username.clone(),
                password,
            })
        }
    };
    out.output = PixelFormat::Rgb;
    out.analysis_fps = camera.analysis_fps();
    out.watchdog = s.watchdog;
    out.startup_timeout = s.startup_timeout;
    out.backoff = ingest::BackoffPolicy {
        initial: s.reconnect.initial,
        max: s.reconnect.max,
        multiplier: s.reconnect.multiplier,
        jitter: s.reconnect.jitter,
    };
    out.max_attempts = match s.reconnect.max_attempts {
        None => MaxAttempts::Unlimited,
        Some(n) => MaxAttempts::Limit(n),
    };
    out.keyframe_skipping = s.keyframe_skipping;
    Ok(out)
}

/// The camera's tasks as operators read them, e.g. `<OD> every 500ms`.
pub fn task_summaries(camera: &CameraConfig) -> Vec<String> {
    camera
        .tasks
        .iter()
        .map(|t| {
            let mut s = t.task.token().to_string();
            if let Some(text) = t.argument.text() {
                s.push_str(&format!(" {text:?}"));
            }
            s.push_str(&format!(" every {}", humantime::format_duration(t.every)));
            s
        })
        .collect()
}
