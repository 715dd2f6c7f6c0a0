//! What the operator configured for a camera, and the checked form of it.
//!
//! [`CameraSettings`] is the one definition of a camera's stream settings,
//! read from its `[[cameras]]` table by [`CameraSettings::from_section`];
//! [`CameraSettings::check`] (run by `validate` and by every start) checks
//! it before any pipeline exists, and splits credentials out of the URL so
//! that nothing downstream ever holds a URL with a password in it. Nothing
//! here needs GStreamer.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde::Serialize;
use url::Url;

use super::decoder::DecoderChoice;
use super::state::{BackoffPolicy, SupervisionPolicy};
use super::IngestError;
use crate::settings::{
    boolean, duration_at_least, non_empty_string, one_of, password, redact_url, string, uint_in,
    Errors, Fields, PasswordSource, Problem, Secret,
};

/// Pixel layout of frames handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Packed 8-bit RGB, what the CPU preprocessing reads.
    #[default]
    Rgb,
    /// Y plane then interleaved UV at half resolution, what GPU decoders emit
    /// and the CUDA preprocessing kernel reads without a conversion.
    Nv12,
}

impl PixelFormat {
    #[cfg(feature = "gstreamer")]
    pub(crate) fn gst_format(self) -> &'static str {
        match self {
            PixelFormat::Rgb => "RGB",
            PixelFormat::Nv12 => "NV12",
        }
    }
}

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
    #[cfg(feature = "gstreamer")]
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

/// User name and password of a camera as configured, kept apart from its
/// URL; the password may be a file read when the camera starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// `None`: a user name alone.
    pub password: Option<PasswordSource>,
}

impl Credentials {
    /// A user name with an inline password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: Some(PasswordSource::Inline(Secret::new(password))),
        }
    }
}

/// The user name and password a running camera logs in with.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; the password must not (Secret
        // prints ***).
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// `latency` when unset: rtspsrc's jitter buffer.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(200);
pub const MAX_LATENCY: Duration = Duration::from_secs(60);
/// `watchdog` when unset: rtspsrc alone notices a dead camera only after
/// ~25 s.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(5);
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Shortest `watchdog` and `startup_timeout`.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// `reconnect` when unset (its bounds are in [`crate::backoff`]).
pub const DEFAULT_RECONNECT: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(30));
/// Highest analysis rate a camera's tasks may ask for (the shortest
/// `every`, 1 ms).
pub const MAX_ANALYSIS_FPS: f64 = 1000.0;

/// URL shapes, for messages.
pub const URL_ALLOWED: &str = "rtsp://, rtsps://, file://, http(s)://, v4l2:///dev/videoN, test://?pattern=..&width=..&height=..&fps=.., csi://N";

/// One camera as configured. Never changes while the camera runs.
#[derive(Clone, PartialEq)]
pub struct CameraSettings {
    /// Camera id, used in topics, logs and frames.
    pub id: String,
    /// Source URL; may carry `user:password@`, which is moved into credentials.
    pub url: String,
    pub transport: Transport,
    /// rtspsrc jitter-buffer latency.
    pub latency: Duration,
    pub decoder: DecoderChoice,
    /// Credentials given separately from the URL (not both).
    pub credentials: Option<Credentials>,
    pub output: PixelFormat,
    /// Frames per second the camera's tasks need; `None` hands over every frame.
    pub analysis_fps: Option<f64>,
    /// Time without a decoded frame after which a streaming camera is stalled.
    pub watchdog: Duration,
    /// Time a new pipeline gets to deliver its first frame.
    pub startup_timeout: Duration,
    pub backoff: BackoffPolicy,
    pub max_attempts: MaxAttempts,
    /// Decode only keyframes when the analysis rate is below the keyframe rate.
    pub keyframe_skipping: bool,
    /// `loop`, for `file://` cameras only: at the end of the file, start it
    /// again (`true`) or go to `ended` (`false`, the default).
    pub looping: bool,
}

impl fmt::Debug for CameraSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; a password in the URL must not.
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
            .field("looping", &self.looping)
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
            latency: DEFAULT_LATENCY,
            decoder: DecoderChoice::Auto,
            credentials: None,
            output: PixelFormat::Rgb,
            analysis_fps: None,
            watchdog: DEFAULT_WATCHDOG,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            backoff: DEFAULT_RECONNECT,
            max_attempts: MaxAttempts::Unlimited,
            keyframe_skipping: true,
            looping: false,
        }
    }

    /// Reads the stream keys of a `[[cameras]]` table (`f`, at key path
    /// `path`): `url`, `username`, `password`/`password_file`, `transport`,
    /// `latency_ms`, `decoder`, `watchdog`, `startup_timeout`,
    /// `keyframe_skipping`, `loop`, `reconnect`. Types are checked here, values by
    /// [`CameraSettings::check`], which the caller runs once the camera's
    /// analysis rate is known. `None` when a key is unusable (reported).
    pub(crate) fn from_section(
        f: &mut Fields,
        id: &str,
        errors: &mut Errors,
    ) -> Option<CameraSettings> {
        let d = CameraSettings::new(id, "");
        let url = f.required("url", URL_ALLOWED, errors, string);
        let username = f.opt("username", errors, non_empty_string);
        let password = password(f, errors);
        if password.is_some() && username.is_none() {
            errors.report(
                f.origin(),
                &f.key_path("username"),
                Problem::new(
                    "missing, but a password is set",
                    "a user name with the password",
                ),
            );
        }
        let transport = f.or("transport", d.transport, errors, |v| {
            one_of(v, &["tcp", "udp", "auto"]).map(|s| match s {
                "udp" => Transport::Udp,
                "auto" => Transport::Auto,
                _ => Transport::Tcp,
            })
        });
        let latency_ms = f.or("latency_ms", d.latency.as_millis() as u64, errors, |v| {
            uint_in(v, 0, MAX_LATENCY.as_millis() as u64)
        });
        let decoder = f.or("decoder", DecoderChoice::Auto, errors, |v| {
            string(v).map(|name| match name.as_str() {
                "auto" => DecoderChoice::Auto,
                _ => DecoderChoice::Element(name),
            })
        });
        let watchdog = f.or("watchdog", d.watchdog, errors, |v| {
            duration_at_least(v, MIN_TIMEOUT)
        });
        let startup_timeout = f.or("startup_timeout", d.startup_timeout, errors, |v| {
            duration_at_least(v, MIN_TIMEOUT)
        });
        let keyframe_skipping = f.or("keyframe_skipping", d.keyframe_skipping, errors, boolean);
        let looping = f.or("loop", d.looping, errors, boolean);
        let reconnect = f.table("reconnect", errors).map(|mut r| {
            let backoff = BackoffPolicy::read(&mut r, d.backoff, errors);
            let max_attempts = r.or("max_attempts", 0, errors, |v| {
                uint_in(v, 0, u64::from(u32::MAX))
            });
            r.finish(errors);
            let max_attempts = match u32::try_from(max_attempts).unwrap_or(u32::MAX) {
                0 => MaxAttempts::Unlimited,
                n => MaxAttempts::Limit(n),
            };
            (backoff, max_attempts)
        });
        let (backoff, max_attempts) = reconnect?;
        Some(CameraSettings {
            url: url?,
            transport,
            latency: Duration::from_millis(latency_ms),
            decoder,
            credentials: username.map(|username| Credentials { username, password }),
            watchdog,
            startup_timeout,
            backoff,
            max_attempts,
            keyframe_skipping,
            looping,
            ..d
        })
    }

    /// Checks every setting and parses the URL, reading no file. Runs in
    /// `validate` and before any pipeline exists, so a bad setting is a
    /// configuration error, not a reconnect loop. The error's `setting` is
    /// the key of the `[[cameras]]` table it is about.
    pub fn check(&self) -> Result<ResolvedCamera, IngestError> {
        self.resolve_inner(false)
    }

    /// [`CameraSettings::check`], then reads the password file, if any: what
    /// a camera runs with.
    pub fn resolve(&self) -> Result<ResolvedCamera, IngestError> {
        self.resolve_inner(true)
    }

    fn resolve_inner(&self, read_password: bool) -> Result<ResolvedCamera, IngestError> {
        let invalid = |setting: &'static str, reason: String| IngestError::InvalidSetting {
            camera: self.id.clone(),
            setting,
            reason,
        };
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty".into()));
        }
        if let Some(fps) = self.analysis_fps {
            if !(fps.is_finite() && fps > 0.0 && fps <= MAX_ANALYSIS_FPS) {
                return Err(invalid(
                    "tasks",
                    format!(
                        "the shortest `every` asks for {fps} frames per second; allowed: at most {MAX_ANALYSIS_FPS} (every >= 1ms)"
                    ),
                ));
            }
        }
        if self.watchdog < MIN_TIMEOUT {
            return Err(invalid(
                "watchdog",
                format!("{:?} is too short; allowed: at least 100ms", self.watchdog),
            ));
        }
        if self.startup_timeout < MIN_TIMEOUT {
            return Err(invalid(
                "startup_timeout",
                format!(
                    "{:?} is too short; allowed: at least 100ms",
                    self.startup_timeout
                ),
            ));
        }
        if self.latency > MAX_LATENCY {
            return Err(invalid(
                "latency_ms",
                format!("{:?} is too long; allowed: at most 60s", self.latency),
            ));
        }
        self.backoff
            .check()
            .map_err(|(setting, reason)| invalid(setting, reason))?;
        if let MaxAttempts::Limit(0) = self.max_attempts {
            return Err(invalid(
                "reconnect.max_attempts",
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
                    format!("`{name}` is not an element name; allowed: \"auto\" or a GStreamer element name such as \"nvv4l2decoder\""),
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
        if url_credentials.is_some() && self.credentials.is_some() {
            return Err(invalid(
                "username",
                "set both here and in the URL; allowed: credentials in the URL or in username/password, not both".into(),
            ));
        }
        let credentials = match (&self.credentials, url_credentials) {
            (Some(c), _) => {
                let password = match &c.password {
                    None => Secret::new(""),
                    Some(p) if read_password => p.read().map_err(|e| {
                        invalid("password_file", format!("cannot read the password: {e}"))
                    })?,
                    Some(_) => Secret::new(""),
                };
                Some(Login {
                    username: c.username.clone(),
                    password,
                })
            }
            (None, from_url) => from_url,
        };
        if self.looping && !source.is_file() {
            return Err(invalid(
                "loop",
                "only a file:// camera can loop; allowed: loop = true with a file:// url, or leave it out".into(),
            ));
        }
        if credentials.is_some() && !matches!(source, CameraSource::Rtsp { .. }) {
            return Err(invalid(
                "username",
                "credentials on a camera whose URL takes none; allowed: credentials only with rtsp://, rtsps:// cameras".into(),
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
    pub credentials: Option<Login>,
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

/// The query keys a `test://` URL takes.
const TEST_KEYS: &[&str] = &["pattern", "width", "height", "fps"];
/// The query keys a `csi://` URL takes.
const CSI_KEYS: &[&str] = &["width", "height", "fps"];

impl CameraSource {
    /// A `file://` source: it has an end, plays at its own pace and may
    /// loop (an `http(s)://` one is treated as a live stream).
    pub fn is_file(&self) -> bool {
        matches!(self, CameraSource::Uri { uri } if uri.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("file://")))
    }

    /// Parses a URL without credentials (the `url` crate, as for redaction);
    /// the error says what is wrong with it and what is allowed.
    pub fn parse(text: &str) -> Result<CameraSource, String> {
        let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        let host = url.host_str().unwrap_or_default();
        match url.scheme() {
            "rtsp" | "rtsps" | "rtspt" | "http" | "https" if host.is_empty() => {
                Err("no host".into())
            }
            "rtsp" | "rtsps" | "rtspt" => Ok(CameraSource::Rtsp {
                location: text.to_string(),
            }),
            "http" | "https" => Ok(CameraSource::Uri {
                uri: text.to_string(),
            }),
            "file" => {
                if url.path().is_empty() || url.path() == "/" {
                    return Err("no path".into());
                }
                Ok(CameraSource::Uri {
                    uri: text.to_string(),
                })
            }
            "v4l2" => {
                if !host.is_empty() || !url.path().starts_with("/dev/") {
                    return Err(
                        "the device must be an absolute /dev path, as in v4l2:///dev/video0".into(),
                    );
                }
                Ok(CameraSource::V4l2 {
                    device: PathBuf::from(url.path()),
                })
            }
            "test" => {
                if !host.is_empty() || !matches!(url.path(), "" | "/") {
                    return Err(format!(
                        "a test:// URL has no host or path, only a query, as in test://?pattern=ball; got `{host}{}`",
                        url.path()
                    ));
                }
                let query = Query::parse(&url, TEST_KEYS)?;
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
                let id = format!("{host}{}", url.path());
                let id = id.trim_end_matches('/');
                let sensor_id = if id.is_empty() {
                    0
                } else {
                    id.parse::<u32>().map_err(|_| {
                        format!("sensor id `{id}` is not a number; allowed: csi://N, as in csi://0")
                    })?
                };
                let query = Query::parse(&url, CSI_KEYS)?;
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

/// The query of a `test://` or `csi://` URL, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    /// Refuses keys outside `allowed`: a typo must not fall back to a
    /// default silently.
    fn parse(url: &Url, allowed: &[&str]) -> Result<Query, String> {
        let mut pairs = Vec::new();
        for (k, v) in url.query_pairs() {
            if !allowed.contains(&k.as_ref()) {
                return Err(format!(
                    "unknown query key `{k}`; allowed: {}",
                    allowed.join(", ")
                ));
            }
            pairs.push((k.into_owned(), v.into_owned()));
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

/// Splits `scheme://user:pass@host/...` into the URL without userinfo and the
/// percent-decoded login. Text that is not a URL is returned as it is, for
/// [`CameraSource::parse`] to refuse.
pub(crate) fn split_credentials(text: &str) -> (String, Option<Login>) {
    let Ok(mut url) = Url::parse(text) else {
        return (text.to_string(), None);
    };
    if url.username().is_empty() && url.password().is_none() {
        return (text.to_string(), None);
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let login = Login {
        username: decode(url.username()),
        password: Secret::new(decode(url.password().unwrap_or_default())),
    };
    // Both succeed on any URL that has a host, which one with userinfo has.
    let stripped = url.set_username("").and_then(|()| url.set_password(None));
    if stripped.is_err() {
        return (text.to_string(), None);
    }
    (url.to_string(), Some(login))
}

/// Removes secrets from text that came from GStreamer (error messages and
/// debug strings can quote URLs or properties).
#[cfg(feature = "gstreamer")]
pub(crate) fn scrub(text: &str, login: Option<&Login>) -> String {
    let password = login.map_or("", |l| l.password.expose());
    crate::settings::redact_text(text, &[password])
}

#[cfg(test)]
mod tests;
