//! Camera ingest: one GStreamer pipeline per camera, kept alive by a supervisor.
//!
//! The split follows gst-plugins-rs: [`CameraSettings`] is what the operator
//! configured and never changes; the running pipeline exists only inside the
//! camera's supervisor thread and is rebuilt from the settings after every
//! failure. The decisions of the supervisor — when a camera is stalled, when to
//! retry, when to give up — live in [`state`] as pure logic with an injected
//! clock, so they are tested without GStreamer; the supervisor is the thin I/O
//! shell around it.
//!
//! Frames leave the streaming thread through a bounded channel with `try_send`
//! (a full channel counts a drop, it never blocks the pipeline), at the
//! camera's analysis rate: frames nobody will look at are dropped right after
//! the decoder, before any colour conversion.
//!
//! Credentials are taken out of the URL when the settings are checked and are
//! handed to `rtspsrc` as properties, so they never reach a log line, an error,
//! an event or a status.

mod decoder;
#[cfg(feature = "gstreamer")]
mod frame;
#[cfg(feature = "gstreamer")]
mod pipeline;
pub mod settings;
pub mod state;
#[cfg(feature = "gstreamer")]
mod supervisor;

pub use decoder::{select_decoder, Codec, DecodeChain, DecoderChoice};
#[cfg(feature = "gstreamer")]
pub use frame::{ChromaPlane, Frame, FrameData};
pub use settings::{
    CameraSettings, CameraSource, Credentials, Login, MaxAttempts, PixelFormat, ResolvedCamera,
    Transport,
};
pub use state::{
    AnalysisRate, BackoffPolicy, CameraMachine, CameraState, Command, KeyframeSkip, Transition,
};
#[cfg(feature = "gstreamer")]
pub use supervisor::{
    spawn_camera, CameraCounters, CameraEvent, CameraHandle, CameraStatus, StatusReader,
};

/// Whether GStreamer on this machine has the element `name` (a decoder named
/// in a camera's `decoder`): `None` where it cannot tell — built without
/// GStreamer, or GStreamer does not initialise. `validate` refuses a
/// decoder this says is missing; a camera checks again before each build.
pub fn element_installed(name: &str) -> Option<bool> {
    #[cfg(feature = "gstreamer")]
    {
        gstreamer::init().ok()?;
        Some(gstreamer::ElementFactory::find(name).is_some())
    }
    #[cfg(not(feature = "gstreamer"))]
    {
        let _ = name;
        None
    }
}

/// Everything that can go wrong in ingest; every message names the camera.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting is outside what ingest can run with.
    #[error("camera {camera}: setting `{setting}` is invalid: {reason}")]
    InvalidSetting {
        camera: String,
        setting: &'static str,
        reason: String,
    },
    /// The URL's scheme or shape is not one ingest understands.
    #[error("camera {camera}: unsupported URL {url}: {reason} (allowed: rtsp://, file://, http://, https://, v4l2:///dev/videoN, test://?pattern=..&width=..&height=..&fps=.., csi://N)")]
    UnsupportedUrl {
        camera: String,
        /// Already redacted.
        url: String,
        reason: String,
    },
    /// The configured decoder element is not installed.
    #[error("camera {camera}: decoder element `{element}` is not installed (use decoder = \"auto\" or install the plugin that provides it)")]
    DecoderMissing { camera: String, element: String },
    /// No installed decoder handles the camera's codec.
    #[error("camera {camera}: no installed decoder for {codec} (tried {tried})")]
    NoDecoder {
        camera: String,
        codec: Codec,
        tried: String,
    },
    /// The configured decoder cannot decode the stream the camera sends.
    #[error("camera {camera}: decoder `{element}` cannot decode {codec}")]
    DecoderMismatch {
        camera: String,
        element: String,
        codec: Codec,
    },
    /// A GStreamer element the source needs is not installed.
    #[error("camera {camera}: GStreamer element `{element}` is not installed ({why})")]
    ElementMissing {
        camera: String,
        element: String,
        why: &'static str,
    },
    /// The stream's codec is not H.264, H.265 or MJPEG.
    #[error(
        "camera {camera}: unsupported stream encoding `{encoding}` (allowed: H264, H265, JPEG)"
    )]
    UnsupportedEncoding { camera: String, encoding: String },
    /// GStreamer refused to build or start the pipeline.
    #[error("camera {camera}: pipeline could not be built: {reason}")]
    Pipeline { camera: String, reason: String },
    /// GStreamer itself could not be initialised.
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    /// The supervisor thread could not be started.
    #[error("camera {camera}: supervisor thread could not be started: {source}")]
    Thread {
        camera: String,
        #[source]
        source: std::io::Error,
    },
}
