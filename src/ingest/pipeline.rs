//! Building one camera's GStreamer pipeline.
//!
//! ```text
//! source ─▶ [depay ! parse ! decoder (! nvvidconv)] ─▶ queue ! videoconvert ! capsfilter ! appsink
//!                                           gate ┘
//! ```
//! The gate is a buffer probe right after decoding: it counts decoded frames
//! (the watchdog's heartbeat) and drops frames above the analysis rate, so
//! only frames that will be analysed are converted and handed over. The
//! leaky one-frame queue puts colour conversion on its own thread: a slow
//! conversion drops (and counts) frames instead of slowing the decoder down
//! until the jitter buffer throws packets away.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::decoder::{select_decoder, Codec, DecoderChoice};
use super::frame::{ChromaPlane, Frame, FrameData, PixelFormat};
use super::settings::{CameraSource, ResolvedCamera, Transport};
use super::state::{AnalysisRate, KeyframeSkip};
use super::supervisor::CameraCounters;
use super::IngestError;

/// Everything a pipeline build needs; the counters, sequence and frame
/// channel are shared by all builds of one camera.
#[derive(Clone)]
pub(crate) struct PipelineContext {
    pub camera: Arc<ResolvedCamera>,
    pub camera_id: Arc<str>,
    pub transport: Transport,
    pub latency: Duration,
    pub decoder: DecoderChoice,
    pub output: PixelFormat,
    pub analysis_fps: Option<f64>,
    pub keyframe_skipping: bool,
    pub watchdog: Duration,
    pub counters: Arc<CameraCounters>,
    pub frames: SyncSender<Frame>,
    /// Next frame sequence number; survives rebuilds.
    pub seq: Arc<AtomicU64>,
    /// The decode chain in use, for status and logs.
    pub chain: Arc<Mutex<Option<String>>>,
}

/// A built pipeline; dropping it stops it (state NULL joins streaming threads).
pub(crate) struct LivePipeline {
    pub pipeline: gst::Pipeline,
    pub bus: gst::Bus,
}

impl Drop for LivePipeline {
    fn drop(&mut self) {
        // Nothing useful can be done if NULL fails; the element posted why.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

pub(crate) fn installed(element: &str) -> bool {
    gst::ElementFactory::find(element).is_some()
}

/// Elements the camera's source needs, checked before each build so that a
/// missing plugin is named as the camera's error (`last_error`) rather than
/// as a parse failure deep in GStreamer; the camera retries by its policy
/// and every other camera runs on.
pub(crate) fn preflight(ctx: &PipelineContext) -> Result<(), IngestError> {
    let camera = ctx.camera.id.clone();
    let need = |element: &str, why: &'static str| -> Result<(), IngestError> {
        if installed(element) {
            Ok(())
        } else {
            Err(IngestError::ElementMissing {
                camera: camera.clone(),
                element: element.to_string(),
                why,
            })
        }
    };
    need(
        "videoconvert",
        "converts decoded frames to the output format",
    )?;
    need("appsink", "hands frames to the daemon")?;
    match &ctx.camera.source {
        CameraSource::Rtsp { .. } => need("rtspsrc", "reads rtsp:// cameras")?,
        CameraSource::Uri { .. } => need("uridecodebin", "reads file:// and http(s):// sources")?,
        CameraSource::V4l2 { .. } => {
            need("v4l2src", "reads v4l2:// devices")?;
            need("decodebin", "decodes what a v4l2 device sends")?;
        }
        CameraSource::Test { .. } => need("videotestsrc", "generates test:// frames")?,
        CameraSource::Csi { .. } => {
            need("nvarguscamerasrc", "reads csi:// cameras on a Jetson")?;
            need("nvvidconv", "copies CSI frames out of NVMM memory")?;
        }
    }
    if let DecoderChoice::Element(name) = &ctx.decoder {
        if !installed(name) {
            return Err(IngestError::DecoderMissing {
                camera,
                element: name.clone(),
            });
        }
    }
    Ok(())
}

fn make(
    ctx: &PipelineContext,
    factory: &str,
    name: Option<&str>,
) -> Result<gst::Element, IngestError> {
    let mut builder = gst::ElementFactory::make(factory);
    if let Some(name) = name {
        builder = builder.name(name);
    }
    builder.build().map_err(|_| IngestError::ElementMissing {
        camera: ctx.camera.id.clone(),
        element: factory.to_string(),
        why: "installed, but could not be created",
    })
}

fn pipeline_error(ctx: &PipelineContext, reason: impl std::fmt::Display) -> IngestError {
    IngestError::Pipeline {
        camera: ctx.camera.id.clone(),
        reason: reason.to_string(),
    }
}

/// Builds the pipeline (not yet playing).
pub(crate) fn build(ctx: &Arc<PipelineContext>) -> Result<LivePipeline, IngestError> {
    let pipeline = gst::Pipeline::new();
    let tail = build_tail(ctx, &pipeline)?;
    let gate = Arc::new(Gate {
        counters: ctx.counters.clone(),
        rate: Mutex::new(AnalysisRate::new(ctx.analysis_fps)),
    });

    match &ctx.camera.source {
        CameraSource::Rtsp { location } => {
            let src = make(ctx, "rtspsrc", Some("source"))?;
            src.set_property("location", location);
            src.set_property(
                "latency",
                u32::try_from(ctx.latency.as_millis()).unwrap_or(u32::MAX),
            );
            src.set_property_from_str("protocols", ctx.transport.rtspsrc_protocols());
            src.set_property("drop-on-latency", true);
            // Our watchdog decides about dead cameras, but a TCP connect to a
            // black hole must not hang a rebuild for rtspsrc's default 20 s.
            src.set_property("tcp-timeout", 5_000_000u64);
            if let Some(c) = &ctx.camera.credentials {
                src.set_property("user-id", &c.username);
                src.set_property("user-pw", c.password.expose());
            }
            pipeline.add(&src).map_err(|e| pipeline_error(ctx, e))?;
            let weak = pipeline.downgrade();
            let ctx2 = ctx.clone();
            let linked = Arc::new(AtomicBool::new(false));
            src.connect_pad_added(move |src, pad| {
                let Some(pipeline) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = link_rtp_pad(&ctx2, &pipeline, pad, &tail, &gate, &linked) {
                    gst::element_error!(src, gst::StreamError::CodecNotFound, ("{}", e));
                }
            });
        }
        CameraSource::Uri { uri } => {
            let src = make(ctx, "uridecodebin", Some("source"))?;
            src.set_property("uri", uri);
            pipeline.add(&src).map_err(|e| pipeline_error(ctx, e))?;
            gate.install(&entry_pad(ctx, &tail)?);
            connect_raw_pads(ctx, &pipeline, &src, &tail);
        }
        CameraSource::V4l2 { device } => {
            let src = make(ctx, "v4l2src", Some("source"))?;
            src.set_property("device", device.to_string_lossy().as_ref());
            let decode = make(ctx, "decodebin", Some("decode"))?;
            pipeline
                .add_many([&src, &decode])
                .map_err(|e| pipeline_error(ctx, e))?;
            src.link(&decode).map_err(|e| pipeline_error(ctx, e))?;
            gate.install(&entry_pad(ctx, &tail)?);
            connect_raw_pads(ctx, &pipeline, &decode, &tail);
        }
        CameraSource::Test {
            pattern,
            width,
            height,
            fps,
        } => {
            let src = make(ctx, "videotestsrc", Some("source"))?;
            src.set_property("is-live", true);
            // `pattern` was checked against videotestsrc's nicks in resolve().
            src.set_property_from_str("pattern", pattern);
            let caps = gst::Caps::builder("video/x-raw")
                .field("width", i32::try_from(*width).unwrap_or(i32::MAX))
                .field("height", i32::try_from(*height).unwrap_or(i32::MAX))
                .field(
                    "framerate",
                    gst::Fraction::new(i32::try_from(*fps).unwrap_or(30), 1),
                )
                .build();
            let filter = make(ctx, "capsfilter", None)?;
            filter.set_property("caps", &caps);
            pipeline
                .add_many([&src, &filter])
                .map_err(|e| pipeline_error(ctx, e))?;
            gst::Element::link_many([&src, &filter, &tail[0]])
                .map_err(|e| pipeline_error(ctx, e))?;
            gate.install(&entry_pad(ctx, &tail)?);
            set_chain(ctx, "videotestsrc (raw)");
        }
        CameraSource::Csi {
            sensor_id,
            width,
            height,
            fps,
        } => {
            let src = make(ctx, "nvarguscamerasrc", Some("source"))?;
            src.set_property_from_str("sensor-id", &sensor_id.to_string());
            let caps = gst::Caps::builder("video/x-raw")
                .features(["memory:NVMM"])
                .field("width", i32::try_from(*width).unwrap_or(i32::MAX))
                .field("height", i32::try_from(*height).unwrap_or(i32::MAX))
                .field(
                    "framerate",
                    gst::Fraction::new(i32::try_from(*fps).unwrap_or(30), 1),
                )
                .build();
            let filter = make(ctx, "capsfilter", None)?;
            filter.set_property("caps", &caps);
            let conv = make(ctx, "nvvidconv", None)?;
            pipeline
                .add_many([&src, &filter, &conv])
                .map_err(|e| pipeline_error(ctx, e))?;
            gst::Element::link_many([&src, &filter, &conv, &tail[0]])
                .map_err(|e| pipeline_error(ctx, e))?;
            if let Some(pad) = conv.static_pad("sink") {
                gate.install(&pad);
            }
            set_chain(ctx, "nvarguscamerasrc ! nvvidconv");
        }
    }

    let bus = pipeline
        .bus()
        .ok_or_else(|| pipeline_error(ctx, "pipeline has no bus"))?;
    Ok(LivePipeline { pipeline, bus })
}

fn set_chain(ctx: &PipelineContext, chain: &str) {
    *ctx.chain.lock().unwrap_or_else(PoisonError::into_inner) = Some(chain.to_string());
}

fn entry_pad(ctx: &PipelineContext, tail: &[gst::Element]) -> Result<gst::Pad, IngestError> {
    tail[0]
        .static_pad("sink")
        .ok_or_else(|| pipeline_error(ctx, "the hand-off queue has no sink pad"))
}

/// `queue ! videoconvert ! capsfilter(format) ! appsink`, added to the pipeline.
fn build_tail(
    ctx: &Arc<PipelineContext>,
    pipeline: &gst::Pipeline,
) -> Result<Vec<gst::Element>, IngestError> {
    let queue = make(ctx, "queue", Some("handoff"))?;
    queue.set_property("max-size-buffers", 1u32);
    queue.set_property("max-size-bytes", 0u32);
    queue.set_property("max-size-time", 0u64);
    // A file plays at its own pace: the appsink syncs to the clock and the
    // queue in front of it must pass that wait back to the decoder. Leaky,
    // it dropped instead, and a 30 s file was decoded in 2 s (issue 13
    // item 4). Live sources keep the leaky queue: the newest frame wins.
    let paced = ctx.camera.source.is_file();
    if !paced {
        queue.set_property_from_str("leaky", "downstream");
    }
    queue.set_property("silent", false);
    let counters = ctx.counters.clone();
    queue.connect("overrun", false, move |_| {
        counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        None
    });
    let convert = make(ctx, "videoconvert", Some("convert"))?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", ctx.output.gst_format())
        .build();
    // A file (and an http(s) clip) plays at its own pace like a camera
    // would; live sources hand frames over as soon as they are decoded.
    let sync = matches!(ctx.camera.source, CameraSource::Uri { .. });
    let sink = gst_app::AppSink::builder()
        .name("frames")
        .caps(&caps)
        .max_buffers(1)
        .drop(true)
        .sync(sync)
        .build();
    let ctx2 = ctx.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| hand_over(&ctx2, sink))
            .build(),
    );
    let sink: gst::Element = sink.upcast();
    pipeline
        .add_many([&queue, &convert, &sink])
        .map_err(|e| pipeline_error(ctx, e))?;
    gst::Element::link_many([&queue, &convert, &sink]).map_err(|e| pipeline_error(ctx, e))?;
    Ok(vec![queue, convert, sink])
}

/// The appsink callback, on the streaming thread: never blocks.
fn hand_over(
    ctx: &PipelineContext,
    sink: &gst_app::AppSink,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
    let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps()) else {
        return Ok(gst::FlowSuccess::Ok);
    };
    let info = match gst_video::VideoInfo::from_caps(caps) {
        Ok(info) => info,
        Err(_) => {
            gst::element_error!(
                sink,
                gst::StreamError::Format,
                ("appsink got caps that are not raw video: {}", caps)
            );
            return Err(gst::FlowError::Error);
        }
    };
    let pts = buffer.pts();
    let captured_at = capture_time(sink, &sample, pts);
    let meta = buffer
        .meta::<gst_video::VideoMeta>()
        .map(|m| (m.offset().to_vec(), m.stride().to_vec()));
    let (offsets, strides): (Vec<usize>, Vec<i32>) = match meta {
        Some((o, s)) => (o, s),
        None => (info.offset().to_vec(), info.stride().to_vec()),
    };
    let stride = strides
        .first()
        .map(|s| usize::try_from(*s).unwrap_or(0))
        .unwrap_or(0);
    let chroma = match ctx.output {
        PixelFormat::Rgb => None,
        PixelFormat::Nv12 => match (offsets.get(1), strides.get(1)) {
            (Some(o), Some(s)) => Some(ChromaPlane {
                offset: *o,
                stride: usize::try_from(*s).unwrap_or(0),
            }),
            _ => None,
        },
    };
    let Ok(mapped) = buffer.into_mapped_buffer_readable() else {
        gst::element_error!(
            sink,
            gst::StreamError::Failed,
            ("decoded frame could not be mapped for reading")
        );
        return Err(gst::FlowError::Error);
    };
    let frame = Frame {
        camera: ctx.camera_id.clone(),
        seq: ctx.seq.fetch_add(1, Ordering::Relaxed),
        pts: pts.map(|p| Duration::from_nanos(p.nseconds())),
        captured_at,
        width: info.width(),
        height: info.height(),
        format: ctx.output,
        stride,
        chroma,
        data: FrameData::new(mapped),
    };
    match ctx.frames.try_send(frame) {
        Ok(()) => {
            ctx.counters.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            ctx.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(gst::FlowSuccess::Ok)
}

/// Wall clock of capture: live sources stamp buffers with the running time of
/// capture, so the frame is as old as the pipeline clock has run past it.
fn capture_time(
    sink: &gst_app::AppSink,
    sample: &gst::Sample,
    pts: Option<gst::ClockTime>,
) -> SystemTime {
    let now = SystemTime::now();
    let (Some(clock), Some(base), Some(pts)) = (sink.clock(), sink.base_time(), pts) else {
        return now;
    };
    let running = sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
        .and_then(|s| s.to_running_time(pts));
    let clock_now = clock.time();
    let Some(running) = running else {
        return now;
    };
    let age = clock_now.saturating_sub(base.saturating_add(running));
    now.checked_sub(Duration::from_nanos(age.nseconds()))
        .unwrap_or(now)
}

/// Counts decoded frames and drops those above the analysis rate.
struct Gate {
    counters: Arc<CameraCounters>,
    rate: Mutex<AnalysisRate>,
}

impl Gate {
    fn install(self: &Arc<Self>, pad: &gst::Pad) {
        let gate = self.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(buffer) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            gate.counters.frames_in.fetch_add(1, Ordering::Relaxed);
            let pts = buffer.pts().map(|p| Duration::from_nanos(p.nseconds()));
            let admit = gate
                .rate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(pts);
            if admit {
                gst::PadProbeReturn::Ok
            } else {
                // `Handled` consumes the buffer here; `Drop` makes GStreamer 1.22
                // unref an already-released pointer on sink pads (a CRITICAL).
                gst::PadProbeReturn::Handled
            }
        });
    }
}

/// Drops delta frames in front of the decoder while keyframes alone cover
/// the analysis rate.
fn install_keyframe_skip(pad: &gst::Pad, skip: KeyframeSkip) {
    let skip = Mutex::new(skip);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let pts = buffer.pts().map(|p| Duration::from_nanos(p.nseconds()));
        let admit = skip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(pts, keyframe);
        if admit {
            gst::PadProbeReturn::Ok
        } else {
            // `Handled` consumes the buffer here; `Drop` makes GStreamer 1.22
            // unref an already-released pointer on sink pads (a CRITICAL).
            gst::PadProbeReturn::Handled
        }
    });
}

/// Links rtspsrc's video pad through depay/parse/decode to the tail; other
/// streams (audio, metadata) go to a fakesink so they cannot stall rtspsrc.
fn link_rtp_pad(
    ctx: &Arc<PipelineContext>,
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    tail: &[gst::Element],
    gate: &Arc<Gate>,
    linked: &AtomicBool,
) -> Result<(), IngestError> {
    let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
    let structure = caps
        .as_ref()
        .and_then(|c| c.structure(0).map(|s| s.to_owned()));
    let media = structure
        .as_ref()
        .and_then(|s| s.get::<String>("media").ok())
        .unwrap_or_default();
    if media != "video" || linked.load(Ordering::SeqCst) {
        return discard(ctx, pipeline, pad);
    }
    let encoding = structure
        .as_ref()
        .and_then(|s| s.get::<String>("encoding-name").ok())
        .unwrap_or_default();
    let codec =
        Codec::from_rtp_encoding(&encoding).ok_or_else(|| IngestError::UnsupportedEncoding {
            camera: ctx.camera.id.clone(),
            encoding: encoding.clone(),
        })?;
    let chain = select_decoder(&ctx.camera.id, codec, &ctx.decoder, installed)?;
    if let Some(factory) = gst::ElementFactory::find(&chain.decoder) {
        let caps = gst::Caps::new_empty_simple(codec.caps_name());
        if !factory.can_sink_any_caps(&caps) {
            return Err(IngestError::DecoderMismatch {
                camera: ctx.camera.id.clone(),
                element: chain.decoder.clone(),
                codec,
            });
        }
    }
    let mut elements = vec![make(ctx, codec.depayloader(), None)?];
    if let Some(parser) = codec.parser() {
        elements.push(make(ctx, parser, None)?);
    }
    let decoder = make(ctx, &chain.decoder, Some("decoder"))?;
    elements.push(decoder.clone());
    if let Some(conv) = &chain.converter {
        elements.push(make(ctx, conv, None)?);
    }
    pipeline
        .add_many(&elements)
        .map_err(|e| pipeline_error(ctx, e))?;
    let mut all = elements.clone();
    all.push(tail[0].clone());
    gst::Element::link_many(&all).map_err(|e| pipeline_error(ctx, e))?;
    if let Some(src) = decoder.static_pad("src") {
        gate.install(&src);
    }
    if ctx.keyframe_skipping {
        if let Some(sink) = decoder.static_pad("sink") {
            install_keyframe_skip(&sink, KeyframeSkip::new(ctx.analysis_fps, ctx.watchdog));
        }
    }
    for e in &elements {
        e.sync_state_with_parent()
            .map_err(|e| pipeline_error(ctx, e))?;
    }
    let sink = elements[0]
        .static_pad("sink")
        .ok_or_else(|| pipeline_error(ctx, "depayloader has no sink pad"))?;
    pad.link(&sink)
        .map_err(|e| pipeline_error(ctx, format!("linking the {codec} stream: {e:?}")))?;
    linked.store(true, Ordering::SeqCst);
    let description = format!(
        "{} ! {}{}",
        codec.depayloader(),
        codec
            .parser()
            .map(|p| format!("{p} ! "))
            .unwrap_or_default(),
        chain
    );
    tracing::info!(camera = %ctx.camera.id, codec = %codec, chain = %description, "Camera decoding chain chosen.");
    set_chain(ctx, &description);
    Ok(())
}

fn discard(
    ctx: &PipelineContext,
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
) -> Result<(), IngestError> {
    let sink = make(ctx, "fakesink", None)?;
    sink.set_property("sync", false);
    sink.set_property("async", false);
    pipeline.add(&sink).map_err(|e| pipeline_error(ctx, e))?;
    sink.sync_state_with_parent()
        .map_err(|e| pipeline_error(ctx, e))?;
    let sink_pad = sink
        .static_pad("sink")
        .ok_or_else(|| pipeline_error(ctx, "fakesink has no sink pad"))?;
    pad.link(&sink_pad)
        .map_err(|e| pipeline_error(ctx, format!("discarding a stream: {e:?}")))?;
    Ok(())
}

/// For decodebin-style sources: the first raw video pad goes to the tail.
fn connect_raw_pads(
    ctx: &Arc<PipelineContext>,
    pipeline: &gst::Pipeline,
    src: &gst::Element,
    tail: &[gst::Element],
) {
    let weak = pipeline.downgrade();
    let entry = tail[0].clone();
    let ctx2 = ctx.clone();
    src.connect_pad_added(move |src, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let is_video = pad
            .current_caps()
            .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/x-raw")))
            .unwrap_or(false);
        let result = match entry.static_pad("sink") {
            Some(sink) if is_video && !sink.is_linked() => pad
                .link(&sink)
                .map(|_| ())
                .map_err(|e| pipeline_error(&ctx2, format!("linking decoded video: {e:?}"))),
            _ => discard(&ctx2, &pipeline, pad),
        };
        if let Err(e) = result {
            gst::element_error!(src, gst::StreamError::Failed, ("{}", e));
        }
    });
    // decodebin picks the decoder by rank; record which one it picked.
    let ctx3 = ctx.clone();
    pipeline.connect_deep_element_added(move |_, _, element| {
        let Some(factory) = element.factory() else { return };
        let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or_default();
        if klass.contains("Decoder") && klass.contains("Video") {
            let name = factory.name();
            tracing::info!(camera = %ctx3.camera.id, decoder = %name, "Camera decoder chosen by decodebin.");
            set_chain(&ctx3, &format!("decodebin: {name}"));
        }
    });
}
