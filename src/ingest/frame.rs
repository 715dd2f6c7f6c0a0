//! Decoded frames as the rest of the daemon sees them.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use super::settings::PixelFormat;

/// Where the UV plane of an NV12 frame sits inside [`Frame::data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChromaPlane {
    pub offset: usize,
    pub stride: usize,
}

/// The bytes of a decoded frame: the GStreamer buffer itself, mapped for
/// reading, so handing a frame over copies nothing — or bytes of our own,
/// for a frame changed after decoding (privacy masks filled in).
pub struct FrameData(Data);

enum Data {
    Mapped(gstreamer::MappedBuffer<gstreamer::buffer::Readable>),
    Owned(Vec<u8>),
}

impl FrameData {
    pub(crate) fn new(mapped: gstreamer::MappedBuffer<gstreamer::buffer::Readable>) -> Self {
        FrameData(Data::Mapped(mapped))
    }

    /// Bytes laid out as the frame's format, stride and chroma plane say.
    pub fn owned(bytes: Vec<u8>) -> Self {
        FrameData(Data::Owned(bytes))
    }
}

impl Deref for FrameData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Data::Mapped(m) => m.as_slice(),
            Data::Owned(v) => v,
        }
    }
}

impl fmt::Debug for FrameData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameData({} bytes)", self.len())
    }
}

/// One decoded frame of one camera.
#[derive(Debug)]
pub struct Frame {
    pub camera: Arc<str>,
    /// Per camera, counts handed-over frames from 0 and never restarts, even
    /// across reconnects, so a gap means frames were dropped.
    pub seq: u64,
    /// Stream time of the frame (restarts when the pipeline is rebuilt).
    pub pts: Option<Duration>,
    /// Wall clock at capture, as far as the pipeline clock can tell.
    pub captured_at: SystemTime,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Bytes per row of the first (RGB or Y) plane.
    pub stride: usize,
    /// The UV plane, for NV12.
    pub chroma: Option<ChromaPlane>,
    pub data: FrameData,
}
