//! Ingest against broken inputs: resolution changes, truncated files,
//! garbage instead of a stream, a decoder that cannot decode, and one broken
//! camera next to a healthy one.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/ingest_events.rs"]
mod ingest_events;
#[path = "common/rtsp.rs"]
mod rtsp;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use florence_edge::ingest::{
    spawn_camera, BackoffPolicy, CameraEvent, CameraSettings, CameraState, DecoderChoice, Frame,
    MaxAttempts, PixelFormat,
};
use gstreamer as gst;
use gstreamer::prelude::*;
use ingest_events::{states, wait_for_state};
use rtsp::{Encoding, RtspTestServer, StreamSpec};

const BOUND: Duration = Duration::from_secs(20);

fn camera(id: &str, url: String) -> CameraSettings {
    let mut s = CameraSettings::new(id, url);
    s.watchdog = Duration::from_millis(1500);
    s.startup_timeout = Duration::from_secs(4);
    s.backoff = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
        multiplier: 2.0,
        jitter: 0.0,
    };
    s
}

fn channels() -> (
    mpsc::SyncSender<Frame>,
    mpsc::Receiver<Frame>,
    mpsc::Sender<CameraEvent>,
    mpsc::Receiver<CameraEvent>,
) {
    let (ftx, frx) = mpsc::sync_channel(128);
    let (etx, erx) = mpsc::channel();
    (ftx, frx, etx, erx)
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fe-ingest-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `launch` (which ends in `filesink location={path}`) to EOS.
fn encode(launch: &str, path: &Path) {
    gst::init().expect("GStreamer initialises");
    let launch = launch.replace("{path}", &path.display().to_string());
    let pipeline = gst::parse::launch(&launch).expect("fixture pipeline parses");
    pipeline
        .set_state(gst::State::Playing)
        .expect("fixture plays");
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("fixture finishes");
    assert!(
        matches!(msg.view(), gst::MessageView::Eos(_)),
        "fixture failed: {msg:?}"
    );
    pipeline.set_state(gst::State::Null).expect("fixture stops");
}

fn h264_bytestream(path: &Path, width: u32, height: u32, frames: u32) {
    encode(
        &format!(
            "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width={width},height={height},framerate=15/1 \
             ! x264enc speed-preset=ultrafast key-int-max=5 ! video/x-h264,stream-format=byte-stream \
             ! filesink location={{path}}"
        ),
        path,
    );
}

/// Deterministic bytes that are no known format.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[test]
fn a_resolution_change_mid_stream_yields_frames_of_both_sizes() {
    let dir = scratch_dir("reschange");
    let (a, b, both) = (
        dir.join("a.h264"),
        dir.join("b.h264"),
        dir.join("both.h264"),
    );
    h264_bytestream(&a, 320, 240, 20);
    h264_bytestream(&b, 160, 120, 20);
    let mut bytes = std::fs::read(&a).expect("a");
    bytes.extend(std::fs::read(&b).expect("b"));
    std::fs::write(&both, bytes).expect("both");

    let (ftx, frx, etx, erx) = channels();
    let cam =
        spawn_camera(&camera("cam-reschange", file_url(&both)), ftx, etx).expect("camera starts");
    let deadline = Instant::now() + BOUND;
    let mut sizes: Vec<(u32, u32)> = Vec::new();
    while Instant::now() < deadline && !sizes.contains(&(160, 120)) {
        if let Ok(f) = frx.recv_timeout(Duration::from_millis(200)) {
            assert!(f.data.len() >= f.stride * (f.height as usize - 1) + f.width as usize * 3);
            if sizes.last() != Some(&(f.width, f.height)) {
                sizes.push((f.width, f.height));
            }
        }
    }
    assert_eq!(sizes.first(), Some(&(320, 240)), "sizes seen: {sizes:?}");
    assert!(sizes.contains(&(160, 120)), "sizes seen: {sizes:?}");
    // The change itself is not a failure: the first event is streaming.
    let first = erx.recv_timeout(Duration::from_secs(1)).expect("an event");
    assert_eq!(
        (first.from, first.to),
        (CameraState::Starting, CameraState::Streaming)
    );
    assert_eq!(cam.status().decode_errors, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_truncated_file_is_a_clear_error_then_failed() {
    let dir = scratch_dir("truncated");
    let full = dir.join("full.mp4");
    encode(
        "videotestsrc num-buffers=45 ! video/x-raw,width=320,height=240,framerate=15/1 \
         ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux ! filesink location={path}",
        &full,
    );
    let bytes = std::fs::read(&full).expect("mp4");
    let cut = dir.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("cut");

    let (ftx, _frx, etx, erx) = channels();
    let mut settings = camera("cam-truncated", file_url(&cut));
    settings.max_attempts = MaxAttempts::Limit(2);
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    let (failed, before) = wait_for_state(&erx, "cam-truncated", CameraState::Failed, BOUND)
        .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    assert_eq!(states(&before).len(), 1, "{:?}", states(&before));
    let error = failed.reason.unwrap_or_default();
    assert!(error.starts_with("camera cam-truncated: "), "{error}");
    // Usually qtdemux says the file is incomplete; when its pull-mode scan
    // races uridecodebin's typefinding it waits for data instead, and the
    // startup timeout says so.
    assert!(
        error.contains("qtdemux") || error.contains("no frame within"),
        "the error names the element or the timeout: {error}"
    );
    assert_eq!(cam.status().frames_out, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_of_garbage_is_a_clear_error_then_failed() {
    let dir = scratch_dir("garbage");
    let path = dir.join("camera.mp4");
    std::fs::write(&path, garbage(256 * 1024)).expect("garbage");
    let (ftx, _frx, etx, erx) = channels();
    let mut settings = camera("cam-garbage-file", file_url(&path));
    settings.max_attempts = MaxAttempts::Limit(2);
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    let (failed, _) = wait_for_state(&erx, "cam-garbage-file", CameraState::Failed, BOUND)
        .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    let error = failed.reason.unwrap_or_default();
    assert!(error.starts_with("camera cam-garbage-file: "), "{error}");
    assert_eq!(cam.status().frames_in, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn garbage_instead_of_rtsp_is_a_clear_error_then_failed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(&garbage(4096));
        }
    });
    let (ftx, _frx, etx, erx) = channels();
    let mut settings = camera(
        "cam-garbage-rtsp",
        format!("rtsp://127.0.0.1:{port}/stream"),
    );
    settings.max_attempts = MaxAttempts::Limit(2);
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    let (failed, before) = wait_for_state(&erx, "cam-garbage-rtsp", CameraState::Failed, BOUND)
        .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    assert_eq!(before.len(), 1, "{:?}", states(&before));
    let error = failed.reason.unwrap_or_default();
    assert!(
        error.starts_with("camera cam-garbage-rtsp: source: "),
        "{error}"
    );
    assert_eq!(cam.status().frames_in, 0);
}

#[test]
fn a_decoder_that_cannot_decode_the_stream_is_named_in_the_error() {
    let server = RtspTestServer::start(StreamSpec::new(Encoding::H264));
    let (ftx, _frx, etx, erx) = channels();
    let mut settings = camera("cam-wrong-decoder", server.url());
    settings.decoder = DecoderChoice::Element("avdec_h265".into());
    settings.max_attempts = MaxAttempts::Limit(1);
    let _cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    let (failed, _) = wait_for_state(&erx, "cam-wrong-decoder", CameraState::Failed, BOUND)
        .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    let error = failed.reason.unwrap_or_default();
    assert!(
        error.contains("decoder `avdec_h265` cannot decode H.264"),
        "{error}"
    );
}

/// A camera whose decoder or source element is not installed starts (the
/// daemon beside it runs on) and fails by its policy with the element named.
#[test]
fn a_missing_explicit_decoder_or_source_element_fails_that_camera_alone() {
    let (ftx, _frx, etx, erx) = channels();
    let mut settings = camera("cam-nodec", "rtsp://127.0.0.1:9/stream".into());
    settings.decoder = DecoderChoice::Element("nosuchdec264".into());
    settings.max_attempts = MaxAttempts::Limit(2);
    let cam = spawn_camera(&settings, ftx.clone(), etx.clone()).expect("the camera starts");
    let (retrying, _) = wait_for_state(&erx, "cam-nodec", CameraState::Reconnecting, BOUND)
        .unwrap_or_else(|seen| panic!("never reconnecting: {:?}", states(&seen)));
    let error = retrying.reason.unwrap_or_default();
    assert!(
        error.contains("cam-nodec")
            && error.contains("decoder element `nosuchdec264` is not installed"),
        "{error}"
    );
    let (failed, _) = wait_for_state(&erx, "cam-nodec", CameraState::Failed, BOUND)
        .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    assert_eq!(failed.attempt, 2, "retried by its policy, then gave up");
    let status = cam.status();
    assert_eq!(status.state, CameraState::Failed);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("nosuchdec264")),
        "{:?}",
        status.last_error
    );
    cam.stop();

    gst::init().expect("GStreamer initialises");
    let has_argus = gst::ElementFactory::find("nvarguscamerasrc").is_some();
    let mut csi = camera("cam-csi", "csi://0".into());
    csi.max_attempts = MaxAttempts::Limit(1);
    let cam = spawn_camera(&csi, ftx, etx).expect("the camera starts");
    if !has_argus {
        let (failed, _) = wait_for_state(&erx, "cam-csi", CameraState::Failed, BOUND)
            .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
        let error = failed.reason.unwrap_or_default();
        assert!(
            error.contains("`nvarguscamerasrc` is not installed"),
            "{error}"
        );
    }
    cam.stop();
}

#[test]
fn test_source_delivers_nv12_with_a_chroma_plane() {
    let (ftx, frx, etx, erx) = channels();
    let mut settings = camera(
        "cam-nv12",
        "test://?pattern=smpte&width=160&height=120&fps=10".into(),
    );
    settings.output = PixelFormat::Nv12;
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    wait_for_state(&erx, "cam-nv12", CameraState::Streaming, BOUND)
        .unwrap_or_else(|seen| panic!("never streaming: {:?}", states(&seen)));
    let frame = frx.recv_timeout(Duration::from_secs(5)).expect("a frame");
    assert_eq!(
        (frame.width, frame.height, frame.format),
        (160, 120, PixelFormat::Nv12)
    );
    let chroma = frame.chroma.expect("NV12 has a UV plane");
    assert!(frame.stride >= 160 && chroma.stride >= 160);
    assert!(chroma.offset >= frame.stride * 120, "{chroma:?}");
    assert!(frame.data.len() >= chroma.offset + chroma.stride * 60);
    assert_eq!(cam.status().decoder.as_deref(), Some("videotestsrc (raw)"));
}

#[test]
fn a_decode_error_in_one_camera_does_not_touch_another() {
    let dir = scratch_dir("isolation");
    let clean = dir.join("clean.avi");
    encode(
        "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,framerate=15/1,format=I420 \
         ! jpegenc ! avimux ! filesink location={path}",
        &clean,
    );
    // Every frame's baseline start-of-frame marker (FF C0, length 17, 8 bit)
    // becomes a lossless one (FF C3), which the JPEG decoder rejects: a real
    // decode error on every frame, in a perfectly valid container.
    let mut bytes = std::fs::read(&clean).expect("avi");
    let mut smashed = 0;
    for i in 0..bytes.len().saturating_sub(5) {
        if bytes[i..i + 5] == [0xFF, 0xC0, 0x00, 0x11, 0x08] {
            bytes[i + 1] = 0xC3;
            smashed += 1;
        }
    }
    assert_eq!(smashed, 30, "one SOF0 marker per frame");
    let broken = dir.join("broken.avi");
    std::fs::write(&broken, bytes).expect("broken");

    let (ftx, _frx_a, etx, erx) = channels();
    let bad = spawn_camera(&camera("cam-broken", file_url(&broken)), ftx, etx.clone())
        .expect("broken camera starts");
    let (ftx_b, frx_b, _, _) = channels();
    let good = spawn_camera(
        &camera("cam-healthy", "test://?width=160&height=120&fps=10".into()),
        ftx_b,
        etx,
    )
    .expect("healthy camera starts");

    std::thread::sleep(Duration::from_secs(5));
    let bad_status = bad.status();
    let good_status = good.status();
    bad.stop();
    assert!(
        bad_status.decode_errors > 0,
        "the broken camera had no decode errors: {bad_status:?}"
    );
    assert_eq!(good_status.state, CameraState::Streaming);
    assert_eq!(good_status.reconnects, 0);
    assert_eq!(good_status.decode_errors, 0);
    assert_eq!(good_status.last_error, None);
    let healthy_frames = frx_b.try_iter().count();
    assert!(
        healthy_frames >= 20,
        "healthy camera handed over {healthy_frames} frames in 5 s at 10 fps"
    );
    let healthy_events: Vec<_> = erx
        .try_iter()
        .filter(|e| e.camera == "cam-healthy")
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        healthy_events,
        vec![(CameraState::Starting, CameraState::Streaming)]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_http_source_streams_through_uridecodebin() {
    let dir = scratch_dir("http");
    let file = dir.join("clip.mp4");
    encode(
        "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=15/1 \
         ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux faststart=true ! filesink location={path}",
        &file,
    );
    let body = std::fs::read(&file).expect("clip");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    let (ftx, frx, etx, erx) = channels();
    let cam = spawn_camera(
        &camera("cam-http", format!("http://127.0.0.1:{port}/clip.mp4")),
        ftx,
        etx,
    )
    .expect("camera starts");
    wait_for_state(&erx, "cam-http", CameraState::Streaming, BOUND)
        .unwrap_or_else(|seen| panic!("never streaming: {:?}", states(&seen)));
    let frame = frx.recv_timeout(Duration::from_secs(5)).expect("a frame");
    assert_eq!((frame.width, frame.height), (160, 120));
    let decoder = cam.status().decoder.unwrap_or_default();
    assert!(decoder.starts_with("decodebin: "), "{decoder}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An MP4 of `seconds` at 10 fps, 160×120, made here.
fn mp4_clip(path: &Path, seconds: u32) {
    encode(
        &format!(
            "videotestsrc num-buffers={} pattern=ball ! video/x-raw,width=160,height=120,framerate=10/1 \
             ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! mp4mux ! filesink location={{path}}",
            seconds * 10
        ),
        path,
    );
}

/// issue 13 item 4: a file plays at its own pace (it was decoded as fast as
/// the machine could, the watchdog fired and only its first second was ever
/// analysed), and without `loop` it ends as `ended`, not in a restart.
#[test]
fn a_file_plays_at_its_own_pace_and_then_is_ended() {
    let dir = scratch_dir("pace");
    let clip = dir.join("clip.mp4");
    mp4_clip(&clip, 3);
    let (ftx, frx, etx, erx) = channels();
    let mut settings = camera("cam-file", file_url(&clip));
    // Shorter than the clip: a file decoded at once and then silent would
    // trip it; one that plays at its own pace never does.
    settings.watchdog = Duration::from_millis(1500);
    let started = Instant::now();
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    let (ended, before) = wait_for_state(&erx, "cam-file", CameraState::Ended, BOUND)
        .unwrap_or_else(|seen| panic!("never ended: {:?}", states(&seen)));
    let played_for = started.elapsed();
    assert_eq!(
        states(&before),
        [(CameraState::Starting, CameraState::Streaming, None)],
        "no stall or restart on the way"
    );
    assert!(ended.reason.unwrap_or_default().contains("end of file"));
    let pts: Vec<Duration> = frx.try_iter().filter_map(|f| f.pts).collect();
    assert!(
        pts.len() >= 25,
        "every frame of the 3 s clip: {}",
        pts.len()
    );
    assert!(
        pts.last().copied().unwrap_or_default() >= Duration::from_millis(2800),
        "the whole clip, not its first second: {pts:?}"
    );
    // Paced: 3 s of video take about 3 s (the clock cannot run fast).
    assert!(
        played_for >= Duration::from_millis(2500),
        "a 3 s clip played in {played_for:?}"
    );
    // Ended means no retry: nothing happens after the watchdog period.
    std::thread::sleep(Duration::from_millis(1800));
    let status = cam.status();
    assert_eq!((status.state, status.reconnects), (CameraState::Ended, 0));
    assert!(erx.try_recv().is_err(), "no transition after ended");
    let _ = std::fs::remove_dir_all(dir);
}

/// `loop = true`: the file starts over at its end, in the same pipeline
/// (no reconnect), and frames keep coming at the file's pace.
#[test]
fn a_looping_file_starts_over_without_a_reconnect() {
    let dir = scratch_dir("loop");
    let clip = dir.join("clip.mp4");
    mp4_clip(&clip, 1);
    let (ftx, frx, etx, erx) = channels();
    let mut settings = camera("cam-loop", file_url(&clip));
    settings.looping = true;
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    wait_for_state(&erx, "cam-loop", CameraState::Streaming, BOUND)
        .unwrap_or_else(|seen| panic!("never streaming: {:?}", states(&seen)));
    let deadline = Instant::now() + BOUND;
    let mut restarts = 0;
    let mut last = None;
    while restarts < 2 && Instant::now() < deadline {
        if let Ok(f) = frx.recv_timeout(Duration::from_millis(200)) {
            if let (Some(prev), Some(pts)) = (last, f.pts) {
                if pts < prev {
                    restarts += 1;
                }
            }
            last = f.pts.or(last);
        }
    }
    assert_eq!(restarts, 2, "the 1 s clip started over twice");
    let status = cam.status();
    assert_eq!(
        (status.state, status.reconnects),
        (CameraState::Streaming, 0)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `loop` is for files: on any other source it is a setting error.
#[test]
fn loop_on_a_live_source_is_refused() {
    let mut settings = camera("cam-live-loop", "test://".into());
    settings.looping = true;
    let error = settings.check().expect_err("loop on test://").to_string();
    assert!(
        error.contains("`loop`") && error.contains("only a file:// camera can loop"),
        "{error}"
    );
}
