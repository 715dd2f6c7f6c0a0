//! What the operator configured for a camera, and the checked form of it.
//!
//! [`CameraSettings`] mirrors the `[[cameras]]` table; [`CameraSettings::resolve`]
//! checks it once, before any pipeline exists, and splits credentials out of
//! the URL so that nothing downstream ever holds a URL with a password in it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::decoder::DecoderChoice;
use super::frame::PixelFormat;
use super::state::{BackoffPolicy, SupervisionPolicy};
use super::IngestError;

/// RTSP lower transport. `Auto` lets rtspsrc try UDP first and fall back to TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
    Auto,
}

impl Transport {
    /// The value of rtspsrc's `protocols` flags property.
    pub(crate) fn rtspsrc_protocols(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Auto => "udp+tcp",
        }
    }
}

/// How many consecutive failed attempts a camera gets before it is `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaxAttempts {
    /// Keep retrying forever (a camera that is off for the night comes back).
    #[default]
    Unlimited,
    /// Give up after this many consecutive failed attempts.
    Limit(u32),
}

/// User name and password for a camera, kept apart from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; the password must not.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// One camera as configured. Never changes while the camera runs.
#[derive(Clone)]
pub struct CameraSettings {
    /// Camera id, used in topics, logs and frames.
    pub id: String,
    /// Source URL; may carry `user:password@`, which is moved into credentials.
    pub url: String,
    pub transport: Transport,
    /// rtspsrc jitter-buffer latency.
    pub latency: Duration,
    pub decoder: DecoderChoice,
    /// Credentials given separately from the URL; they win over URL userinfo.
    pub credentials: Option<Credentials>,
    pub output: PixelFormat,
    /// Frames per second the camera's tasks need; `None` hands over every frame.
    pub analysis_fps: Option<f64>,
    /// Time without a decoded frame after which a streaming camera is stalled.
    pub watchdog: Duration,
    /// Time a new pipeline gets to produce its first frame.
    pub startup_timeout: Duration,
    pub backoff: BackoffPolicy,
    pub max_attempts: MaxAttempts,
    /// Decode only keyframes when they alone cover the analysis rate (see
    /// [`KeyframeSkip`](super::state::KeyframeSkip)); RTSP sources only.
    pub keyframe_skipping: bool,
}

impl fmt::Debug for CameraSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CameraSettings")
            .field("id", &self.id)
            .field("url", &redact_url(&self.url))
            .field("transport", &self.transport)
            .field("latency", &self.latency)
            .field("decoder", &self.decoder)
            .field("credentials", &self.credentials)
            .field("output", &self.output)
            .field("analysis_fps", &self.analysis_fps)
            .field("watchdog", &self.watchdog)
            .field("startup_timeout", &self.startup_timeout)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("keyframe_skipping", &self.keyframe_skipping)
            .finish()
    }
}

impl CameraSettings {
    /// Settings with the defaults a user of DeepStream or Frigate expects:
    /// TCP, 200 ms latency, automatic decoder, RGB, every frame, a 5 s
    /// watchdog (rtspsrc alone notices a dead camera only after ~25 s), and
    /// retries from 1 s to 30 s forever, keyframe-only decoding when it
    /// loses nothing.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        CameraSettings {
            id: id.into(),
            url: url.into(),
            transport: Transport::Tcp,
            latency: Duration::from_millis(200),
            decoder: DecoderChoice::Auto,
            credentials: None,
            output: PixelFormat::Rgb,
            analysis_fps: None,
            watchdog: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(15),
            backoff: BackoffPolicy::default(),
            max_attempts: MaxAttempts::Unlimited,
            keyframe_skipping: true,
        }
    }

    /// Checks every setting and parses the URL. Runs before any pipeline exists
    /// so a bad setting is an error at start, not a reconnect loop.
    pub fn resolve(&self) -> Result<ResolvedCamera, IngestError> {
        let invalid = |setting: &'static str, reason: String| IngestError::InvalidSetting {
            camera: self.id.clone(),
            setting,
            reason,
        };
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty".into()));
        }
        if let Some(fps) = self.analysis_fps {
            if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
                return Err(invalid(
                    "analysis_fps",
                    format!("{fps} is not a rate; allowed: 0 < fps <= 1000"),
                ));
            }
        }
        if self.watchdog < Duration::from_millis(100) {
            return Err(invalid(
                "watchdog",
                format!("{:?} is too short; allowed: at least 100ms", self.watchdog),
            ));
        }
        if self.startup_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "startup_timeout",
                format!(
                    "{:?} is too short; allowed: at least 100ms",
                    self.startup_timeout
                ),
            ));
        }
        if self.latency > Duration::from_secs(60) {
            return Err(invalid(
                "latency",
                format!("{:?} is too long; allowed: at most 60s", self.latency),
            ));
        }
        self.backoff
            .check()
            .map_err(|reason| invalid("backoff", reason))?;
        if let MaxAttempts::Limit(0) = self.max_attempts {
            return Err(invalid(
                "max_attempts",
                "0 would never start the camera; allowed: at least 1, or unlimited".into(),
            ));
        }
        if let DecoderChoice::Element(name) = &self.decoder {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    "decoder",
                    format!("`{name}` is not an element name; allowed: auto or a GStreamer element name"),
                ));
            }
        }

        let (url, url_credentials) = split_credentials(&self.url);
        let redacted = redact_url(&self.url);
        let source = CameraSource::parse(&url).map_err(|reason| IngestError::UnsupportedUrl {
            camera: self.id.clone(),
            url: redacted.clone(),
            reason,
        })?;
        let credentials = self.credentials.clone().or(url_credentials);
        if credentials.is_some() && !matches!(source, CameraSource::Rtsp { .. }) {
            return Err(invalid(
                "credentials",
                "only rtsp:// cameras take credentials".into(),
            ));
        }
        Ok(ResolvedCamera {
            id: self.id.clone(),
            source,
            credentials,
            redacted_url: redacted,
            policy: SupervisionPolicy {
                watchdog: self.watchdog,
                startup_timeout: self.startup_timeout,
                backoff: self.backoff,
                max_attempts: self.max_attempts,
            },
        })
    }
}

/// A camera whose settings passed [`CameraSettings::resolve`].
#[derive(Clone, Debug)]
pub struct ResolvedCamera {
    pub id: String,
    pub source: CameraSource,
    pub credentials: Option<Credentials>,
    /// The URL as it may be shown to people.
    pub redacted_url: String,
    pub policy: SupervisionPolicy,
}

/// Where frames come from. URLs in here never carry credentials.
#[derive(Clone, Debug, PartialEq)]
pub enum CameraSource {
    /// `rtsp://` or `rtsps://`, credentials stripped.
    Rtsp { location: String },
    /// `file://`, `http://`, `https://` through uridecodebin.
    Uri { uri: String },
    /// `v4l2:///dev/videoN`.
    V4l2 { device: PathBuf },
    /// `test://?pattern=ball&width=..&height=..&fps=..` through videotestsrc.
    Test {
        pattern: String,
        width: u32,
        height: u32,
        fps: u32,
    },
    /// `csi://N` through nvarguscamerasrc (Jetson).
    Csi {
        sensor_id: u32,
        width: u32,
        height: u32,
        fps: u32,
    },
}

/// videotestsrc patterns (GStreamer 1.20+ nicks) accepted in `test://` URLs.
const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
];

impl CameraSource {
    /// Parses a URL without credentials; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<CameraSource, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("no scheme".into());
        };
        match scheme.to_ascii_lowercase().as_str() {
            "rtsp" | "rtsps" | "rtspt" => {
                if authority(rest).is_empty() {
                    return Err("no host".into());
                }
                Ok(CameraSource::Rtsp {
                    location: url.to_string(),
                })
            }
            "file" => {
                if rest.is_empty() || rest == "/" {
                    return Err("no path".into());
                }
                Ok(CameraSource::Uri {
                    uri: url.to_string(),
                })
            }
            "http" | "https" => {
                if authority(rest).is_empty() {
                    return Err("no host".into());
                }
                Ok(CameraSource::Uri {
                    uri: url.to_string(),
                })
            }
            "v4l2" => {
                let path = rest.split(['?', '#']).next().unwrap_or_default();
                if !path.starts_with("/dev/") {
                    return Err(
                        "the device must be an absolute /dev path, as in v4l2:///dev/video0".into(),
                    );
                }
                Ok(CameraSource::V4l2 {
                    device: PathBuf::from(path),
                })
            }
            "test" => {
                let query = Query::parse(rest)?;
                let pattern = query.get("pattern").unwrap_or("ball").to_string();
                if !TEST_PATTERNS.contains(&pattern.as_str()) {
                    return Err(format!(
                        "unknown pattern `{pattern}`; allowed: {}",
                        TEST_PATTERNS.join(", ")
                    ));
                }
                Ok(CameraSource::Test {
                    pattern,
                    width: query.number("width", 320, 16, 7680)?,
                    height: query.number("height", 240, 16, 4320)?,
                    fps: query.number("fps", 15, 1, 240)?,
                })
            }
            "csi" => {
                let (id, query) = match rest.split_once('?') {
                    Some((id, q)) => (id, Query::parse(&format!("?{q}"))?),
                    None => (rest, Query::default()),
                };
                let sensor_id = if id.is_empty() {
                    0
                } else {
                    id.trim_end_matches('/')
                        .parse::<u32>()
                        .map_err(|_| format!("sensor id `{id}` is not a number"))?
                };
                Ok(CameraSource::Csi {
                    sensor_id,
                    width: query.number("width", 1920, 16, 7680)?,
                    height: query.number("height", 1080, 16, 4320)?,
                    fps: query.number("fps", 30, 1, 240)?,
                })
            }
            other => Err(format!("scheme `{other}` is not supported")),
        }
    }
}

/// The `?a=b&c=d` part of a `test://` or `csi://` URL.
#[derive(Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(rest: &str) -> Result<Query, String> {
        let query = match rest.split_once('?') {
            Some((_, q)) => q,
            None => return Ok(Query::default()),
        };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("query part `{pair}` is not key=value"))?;
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str, default: u32, min: u32, max: u32) -> Result<u32, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!("{key}={v}; allowed: {min}..={max}")),
            },
        }
    }
}

/// The `user:pass@host:port` part after `scheme://`.
fn authority(rest: &str) -> &str {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// Splits `scheme://user:pass@host/...` into the URL without userinfo and the
/// percent-decoded credentials.
pub(crate) fn split_credentials(url: &str) -> (String, Option<Credentials>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let auth = authority(rest);
    let Some(at) = auth.rfind('@') else {
        return (url.to_string(), None);
    };
    let userinfo = &auth[..at];
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let stripped = format!("{scheme}://{}", &rest[at + 1..]);
    (
        stripped,
        Some(Credentials {
            username: percent_decode(user),
            password: percent_decode(pass),
        }),
    )
}

/// The URL as it may appear in logs, errors and status: userinfo replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth = authority(rest);
    match auth.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes secrets from text that came from GStreamer (error messages and
/// debug strings can quote URLs or properties).
pub(crate) fn scrub(text: &str, credentials: Option<&Credentials>) -> String {
    let mut out = redact_inline_urls(text);
    if let Some(c) = credentials {
        if !c.password.is_empty() {
            out = out.replace(&c.password, "***");
        }
    }
    out
}

/// Redacts every `scheme://user:pass@` inside free text.
fn redact_inline_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | ')' | '>')
            })
            .unwrap_or(tail.len());
        let auth = &tail[..end];
        match auth.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&auth[at + 1..]);
            }
            None => out.push_str(auth),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_are_decoded() {
        let (url, creds) = split_credentials("rtsp://admin:p%40ss:w@10.0.0.2:554/stream1?x=1");
        assert_eq!(url, "rtsp://10.0.0.2:554/stream1?x=1");
        let creds = creds.expect("credentials");
        assert_eq!(creds.username, "admin");
        assert_eq!(creds.password, "p@ss:w");
    }

    #[test]
    fn redaction_hides_userinfo_everywhere() {
        assert_eq!(redact_url("rtsp://u:secret@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redact_url("rtsp://cam/x"), "rtsp://cam/x");
        let text = "could not open rtsp://u:secret@cam:554/a (rtsp://cam/b)";
        let scrubbed = scrub(text, None);
        assert_eq!(
            scrubbed,
            "could not open rtsp://***@cam:554/a (rtsp://cam/b)"
        );
        let creds = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert_eq!(scrub("pw=hunter2!", Some(&creds)), "pw=***!");
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn settings_debug_never_shows_the_password() {
        let s = CameraSettings::new("door", "rtsp://u:hunter2@cam/x");
        assert!(!format!("{s:?}").contains("hunter2"));
        let r = s.resolve().expect("valid");
        assert!(!format!("{r:?}").contains("hunter2"));
        assert_eq!(
            r.source,
            CameraSource::Rtsp {
                location: "rtsp://cam/x".into()
            }
        );
        assert_eq!(r.credentials.map(|c| c.password), Some("hunter2".into()));
    }

    #[test]
    fn separate_credentials_win_over_url_userinfo() {
        let mut s = CameraSettings::new("door", "rtsp://a:b@cam/x");
        s.credentials = Some(Credentials {
            username: "c".into(),
            password: "d".into(),
        });
        let r = s.resolve().expect("valid");
        assert_eq!(r.credentials.map(|c| c.username), Some("c".into()));
    }

    #[test]
    fn urls_of_every_source_parse() {
        assert_eq!(
            CameraSource::parse("test://?pattern=snow&width=64&height=48&fps=5"),
            Ok(CameraSource::Test {
                pattern: "snow".into(),
                width: 64,
                height: 48,
                fps: 5
            })
        );
        assert_eq!(
            CameraSource::parse("v4l2:///dev/video2"),
            Ok(CameraSource::V4l2 {
                device: PathBuf::from("/dev/video2")
            })
        );
        assert_eq!(
            CameraSource::parse("csi://1?width=1280&height=720"),
            Ok(CameraSource::Csi {
                sensor_id: 1,
                width: 1280,
                height: 720,
                fps: 30
            })
        );
        assert!(matches!(
            CameraSource::parse("file:///tmp/a.mp4"),
            Ok(CameraSource::Uri { .. })
        ));
        assert!(CameraSource::parse("ftp://x/y").is_err());
        assert!(CameraSource::parse("test://?pattern=nope").is_err());
        assert!(CameraSource::parse("test://?width=0").is_err());
        assert!(CameraSource::parse("v4l2://video0").is_err());
        assert!(CameraSource::parse("rtsp:///x").is_err());
    }

    #[test]
    fn bad_settings_are_errors_that_name_the_camera_and_the_setting() {
        let mut s = CameraSettings::new("yard", "test://");
        s.analysis_fps = Some(0.0);
        let e = s.resolve().expect_err("fps 0");
        let text = e.to_string();
        assert!(
            text.contains("yard") && text.contains("analysis_fps"),
            "{text}"
        );

        let mut s = CameraSettings::new("yard", "test://");
        s.max_attempts = MaxAttempts::Limit(0);
        assert!(s.resolve().is_err());

        let s = CameraSettings::new("yard", "gopher://u:hunter2@x/");
        let text = s.resolve().expect_err("scheme").to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("yard"), "{text}");

        let mut s = CameraSettings::new("yard", "test://");
        s.credentials = Some(Credentials {
            username: "a".into(),
            password: "b".into(),
        });
        assert!(s.resolve().is_err());
    }
}
