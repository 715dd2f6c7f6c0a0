//! Ingest against a real RTSP server on 127.0.0.1 (ports chosen at run time).

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/ingest_events.rs"]
mod ingest_events;
#[path = "common/rtsp.rs"]
mod rtsp;

use std::io::Write;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use florence_edge::ingest::{
    spawn_camera, BackoffPolicy, CameraEvent, CameraSettings, CameraState, Credentials, Frame,
    MaxAttempts, PixelFormat, Transport,
};
use ingest_events::{collect_frames, drain, states, wait_for_state};
use rtsp::{Encoding, RtspTestServer, StreamSpec};

const WATCHDOG: Duration = Duration::from_millis(1500);
/// "Within the watchdog time", with room for a loaded 2-core CI box.
const WATCHDOG_BOUND: Duration = Duration::from_millis(1500 + 3000);
const START_BOUND: Duration = Duration::from_secs(20);

/// Everything the daemon would log (all tests of this binary), down to DEBUG.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn camera(id: &str, url: String) -> CameraSettings {
    let mut s = CameraSettings::new(id, url);
    s.watchdog = WATCHDOG;
    s.startup_timeout = Duration::from_secs(6);
    s.backoff = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(800),
        multiplier: 2.0,
        jitter: 0.0,
    };
    s
}

type Channels = (
    mpsc::SyncSender<Frame>,
    mpsc::Receiver<Frame>,
    mpsc::Sender<CameraEvent>,
    mpsc::Receiver<CameraEvent>,
);

fn channels() -> Channels {
    let (ftx, frx) = mpsc::sync_channel(64);
    let (etx, erx) = mpsc::channel();
    (ftx, frx, etx, erx)
}

/// Streams from a server and checks size, format, order and analysis rate.
fn frames_arrive(encoding: Encoding, transport: Transport, depay: &str) {
    let server = RtspTestServer::start(StreamSpec::new(encoding));
    let id = format!("cam-{encoding:?}-{transport:?}").to_lowercase();
    let mut settings = camera(&id, server.url());
    settings.transport = transport;
    settings.analysis_fps = Some(5.0);
    let (ftx, frx, etx, erx) = channels();
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");

    let (event, before) = wait_for_state(&erx, &id, CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("never streaming; events: {:?}", states(&seen)));
    assert_eq!(
        event.from,
        CameraState::Starting,
        "before: {:?}",
        states(&before)
    );
    drain(&frx);
    let frames = collect_frames(&frx, Duration::from_secs(5), Duration::from_secs(3));
    assert!(
        frames.len() >= 6,
        "only {} frames in 3 s at 5 fps",
        frames.len()
    );
    for f in &frames {
        assert_eq!((f.width, f.height), (320, 240));
        assert_eq!(f.format, PixelFormat::Rgb);
        assert_eq!(&*f.camera, id.as_str());
        assert!(f.stride >= 320 * 3, "stride {}", f.stride);
        assert!(
            f.data.len() >= f.stride * 239 + 320 * 3,
            "{} bytes",
            f.data.len()
        );
    }
    // Sequence numbers increase; presentation times are 1/5 s apart on
    // average (the server sends 15 fps: every third frame is kept).
    assert!(frames.windows(2).all(|w| w[1].seq > w[0].seq));
    let pts: Vec<Duration> = frames.iter().filter_map(|f| f.pts).collect();
    assert_eq!(pts.len(), frames.len(), "every frame has a timestamp");
    let span = pts[pts.len() - 1].saturating_sub(pts[0]);
    let mean = span.as_secs_f64() / (pts.len() - 1) as f64;
    assert!(
        (0.15..0.27).contains(&mean),
        "mean frame interval {mean:.3} s at 5 fps"
    );

    let status = cam.status();
    assert_eq!(status.state, CameraState::Streaming);
    assert!(
        status.decoder.as_deref().unwrap_or("").contains(depay),
        "decoder chain {:?}",
        status.decoder
    );
    // Frames above the analysis rate were dropped before conversion.
    assert!(
        status.frames_in >= 2 * status.frames_out,
        "in {} out {}",
        status.frames_in,
        status.frames_out
    );
    assert_eq!(status.reconnects, 0);
    cam.stop();
}

#[test]
fn h264_over_tcp_arrives_at_the_analysis_rate() {
    frames_arrive(Encoding::H264, Transport::Tcp, "rtph264depay");
}

#[test]
fn h264_over_udp_arrives_at_the_analysis_rate() {
    frames_arrive(Encoding::H264, Transport::Udp, "rtph264depay");
}

#[test]
fn h265_over_tcp_arrives_at_the_analysis_rate() {
    frames_arrive(Encoding::H265, Transport::Tcp, "rtph265depay");
}

#[test]
fn h265_over_udp_arrives_at_the_analysis_rate() {
    frames_arrive(Encoding::H265, Transport::Udp, "rtph265depay");
}

#[test]
fn h264_over_auto_transport_arrives_at_the_analysis_rate() {
    frames_arrive(Encoding::H264, Transport::Auto, "rtph264depay");
}

#[test]
fn mjpeg_over_tcp_arrives_at_the_analysis_rate() {
    frames_arrive(Encoding::Jpeg, Transport::Tcp, "rtpjpegdepay");
}

#[test]
fn a_stopped_server_means_reconnecting_and_its_return_means_streaming() {
    let server = RtspTestServer::start(StreamSpec::new(Encoding::H264));
    let id = "cam-restart";
    let (ftx, frx, etx, erx) = channels();
    let cam = spawn_camera(&camera(id, server.url()), ftx, etx).expect("camera starts");
    wait_for_state(&erx, id, CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("never streaming; events: {:?}", states(&seen)));

    server.stop();
    let (event, _) = wait_for_state(&erx, id, CameraState::Reconnecting, WATCHDOG_BOUND)
        .unwrap_or_else(|seen| {
            panic!(
                "no reconnecting within the watchdog; events: {:?}",
                states(&seen)
            )
        });
    assert!(matches!(
        event.from,
        CameraState::Streaming | CameraState::Stalled
    ));
    assert!(event.reason.as_deref().unwrap_or("").contains(id));

    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let (_, between) = wait_for_state(&erx, id, CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("never streaming again; events: {:?}", states(&seen)));
    assert!(
        between.iter().all(|e| e.to == CameraState::Reconnecting),
        "{:?}",
        states(&between)
    );
    drain(&frx);
    let frames = collect_frames(&frx, Duration::from_secs(5), Duration::from_millis(500));
    assert!(!frames.is_empty(), "no frames after the server came back");
    let status = cam.status();
    assert!(status.reconnects >= 1, "reconnects {}", status.reconnects);
    assert_eq!(status.state, CameraState::Streaming);
    assert_eq!(status.attempt, 0);
}

#[test]
fn a_server_that_stops_sending_is_stalled_then_recovered() {
    let server = RtspTestServer::start(StreamSpec::new(Encoding::H264));
    let id = "cam-stall";
    let (ftx, frx, etx, erx) = channels();
    let cam = spawn_camera(&camera(id, server.url()), ftx, etx).expect("camera starts");
    wait_for_state(&erx, id, CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("never streaming; events: {:?}", states(&seen)));

    server.set_stalled(true);
    let (stalled, before) = wait_for_state(&erx, id, CameraState::Stalled, WATCHDOG_BOUND)
        .unwrap_or_else(|seen| panic!("no stall within the watchdog; events: {:?}", states(&seen)));
    assert!(
        before.is_empty(),
        "events before the stall: {:?}",
        states(&before)
    );
    assert_eq!(stalled.from, CameraState::Streaming);
    assert!(stalled.reason.as_deref().unwrap_or("").contains("watchdog"));
    let (reconnecting, _) =
        wait_for_state(&erx, id, CameraState::Reconnecting, Duration::from_secs(2)).unwrap_or_else(
            |seen| panic!("stall did not lead to a reconnect: {:?}", states(&seen)),
        );
    assert_eq!(reconnecting.from, CameraState::Stalled);
    assert_eq!(reconnecting.retry_in_ms, Some(200));

    server.set_stalled(false);
    wait_for_state(&erx, id, CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("never recovered; events: {:?}", states(&seen)));
    drain(&frx);
    let frames = collect_frames(&frx, Duration::from_secs(5), Duration::from_millis(300));
    assert!(!frames.is_empty(), "no frames after recovery");
    assert!(cam.status().reconnects >= 1);
}

#[test]
fn wrong_credentials_back_off_then_fail_without_showing_the_password() {
    let spec = StreamSpec {
        auth: Some(("viewer".into(), "right-pw-0451".into())),
        ..StreamSpec::new(Encoding::H264)
    };
    let server = RtspTestServer::start(spec);
    let logs = captured_logs();

    // The right password, given apart from the URL, streams.
    let (ftx, _frx, etx, erx) = channels();
    let mut good = camera("cam-auth-ok", server.url());
    good.credentials = Some(Credentials::new("viewer", "right-pw-0451"));
    let ok = spawn_camera(&good, ftx, etx).expect("camera starts");
    wait_for_state(&erx, "cam-auth-ok", CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("right password did not stream: {:?}", states(&seen)));
    ok.stop();

    // A wrong password in the URL: three attempts, backoff 200 then 400 ms, failed.
    let (ftx, _frx, etx, erx) = channels();
    let mut bad = camera(
        "cam-auth-bad",
        server.url_with_credentials("viewer", "wrong-pw-9931"),
    );
    bad.max_attempts = MaxAttempts::Limit(3);
    let cam = spawn_camera(&bad, ftx, etx).expect("camera starts");
    let (failed, before) = wait_for_state(&erx, "cam-auth-bad", CameraState::Failed, START_BOUND)
        .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    let retries: Vec<_> = before
        .iter()
        .map(|e| (e.to, e.attempt, e.retry_in_ms))
        .collect();
    assert_eq!(
        retries,
        vec![
            (CameraState::Reconnecting, 1, Some(200)),
            (CameraState::Reconnecting, 2, Some(400)),
        ]
    );
    assert_eq!(failed.attempt, 3);
    let error = failed.reason.clone().unwrap_or_default();
    assert!(error.contains("cam-auth-bad"), "{error}");
    assert!(error.to_lowercase().contains("unauthori"), "{error}");
    let everything = format!(
        "{}{}{:?}",
        serde_json::to_string(&failed).expect("json"),
        serde_json::to_string(&before).expect("json"),
        cam.status()
    );
    assert!(
        !everything.contains("wrong-pw-9931"),
        "password leaked: {everything}"
    );
    assert!(
        !everything.contains("right-pw-0451"),
        "password leaked: {everything}"
    );
    assert!(
        everything.contains("rtsp://viewer:***@127.0.0.1"),
        "redacted URL in status (the user stays, the password goes): {everything}"
    );
    let logs = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(
        logs.contains("cam-auth-bad") && logs.contains("Camera failed"),
        "the logs were captured: {logs}"
    );
    assert!(
        !logs.contains("wrong-pw-9931"),
        "password in the logs: {logs}"
    );
    assert!(
        !logs.contains("right-pw-0451"),
        "password in the logs: {logs}"
    );
}

#[test]
fn an_unreachable_camera_backs_off_then_fails_naming_the_camera() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let (ftx, _frx, etx, erx) = channels();
    let mut settings = camera(
        "cam-unreachable",
        format!("rtsp://admin:hunter2-xyz@127.0.0.1:{port}/stream"),
    );
    settings.max_attempts = MaxAttempts::Limit(4);
    settings.backoff.initial = Duration::from_millis(100);
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    let (failed, before) =
        wait_for_state(&erx, "cam-unreachable", CameraState::Failed, START_BOUND)
            .unwrap_or_else(|seen| panic!("never failed: {:?}", states(&seen)));
    let delays: Vec<_> = before.iter().map(|e| e.retry_in_ms).collect();
    assert_eq!(delays, vec![Some(100), Some(200), Some(400)]);
    let status = cam.status();
    assert_eq!(status.state, CameraState::Failed);
    assert_eq!(status.reconnects, 3);
    assert_eq!(status.frames_in, 0);
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("camera cam-unreachable: "), "{error}");
    assert!(!serde_json::to_string(&failed)
        .expect("json")
        .contains("hunter2-xyz"));
    assert!(!error.contains("hunter2-xyz"));
}

#[test]
fn at_one_fps_only_keyframes_are_decoded() {
    // The server sends 15 fps with a keyframe every second.
    let server = RtspTestServer::start(StreamSpec::new(Encoding::H264));
    let id = "cam-keyframes";
    let mut settings = camera(id, server.url());
    settings.analysis_fps = Some(1.0);
    settings.watchdog = Duration::from_secs(3);
    let (ftx, frx, etx, erx) = channels();
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    wait_for_state(&erx, id, CameraState::Streaming, START_BOUND)
        .unwrap_or_else(|seen| panic!("never streaming; events: {:?}", states(&seen)));
    // Two keyframes reveal the GOP; from then on deltas are skipped.
    std::thread::sleep(Duration::from_millis(2500));
    drain(&frx);
    let before = cam.status();
    let frames = collect_frames(&frx, Duration::from_secs(3), Duration::from_secs(4));
    let after = cam.status();
    let decoded = after.frames_in - before.frames_in;
    assert!(
        decoded <= 8,
        "{decoded} frames decoded in ~4 s at 1 fps (15 fps stream)"
    );
    assert!(frames.len() >= 3, "only {} frames in 4 s", frames.len());
    assert!(frames.iter().all(|f| (f.width, f.height) == (320, 240)));
    let pts: Vec<Duration> = frames.iter().filter_map(|f| f.pts).collect();
    let mean = pts[pts.len() - 1].saturating_sub(pts[0]).as_secs_f64() / (pts.len() - 1) as f64;
    assert!(
        (0.8..1.25).contains(&mean),
        "mean interval {mean:.3} s at 1 fps"
    );
    assert_eq!(after.state, CameraState::Streaming);
    assert_eq!(after.reconnects, 0);
}
