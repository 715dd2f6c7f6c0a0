//! CPU cost of ingesting one 1080p H.264 camera, against a bare
//! `gst-launch-1.0 rtspsrc ! rtph264depay ! h264parse ! avdec_h264 ! fakesink`
//! of the same stream on the same machine.
//!
//! `cargo bench --bench ingest [-- --seconds N]`
//!
//! The stream is a 1080p30 H.264 file (4 Mbit/s, a keyframe every second, no
//! B-frames, like most IP cameras), generated once into the temp directory
//! and served over RTSP/TCP from a child process, so the server's CPU is not
//! counted. Each configuration runs for a warm-up of 3 s, then CPU time
//! (user + system, from /proc) is measured over N seconds (default 10).

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/rtsp.rs"]
mod rtsp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use florence_edge::ingest::{spawn_camera, CameraSettings, Frame, PixelFormat};
use gstreamer as gst;
use gstreamer::prelude::*;

const WARM_UP: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let file = args.get(i + 1).expect("--serve needs a file");
        serve(Path::new(file));
        return;
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(10);
    let window = Duration::from_secs(seconds);

    gst::init().expect("GStreamer initialises");
    let file = stream_file();
    let (mut server, url) = start_server(&file);
    let ticks = clock_ticks();
    println!(
        "stream: {} (1080p30 H.264, 4 Mbit/s, GOP 30, no B-frames)",
        file.display()
    );
    println!(
        "window: {seconds} s after {} s warm-up; CPU = (user+sys) / wall, 100% = one core",
        WARM_UP.as_secs()
    );
    println!(
        "{:<44} {:>8} {:>12} {:>12}",
        "configuration", "CPU %", "decoded/s", "frames out/s"
    );

    let bare = "rtspsrc location={url} protocols=tcp latency=200 ! rtph264depay ! h264parse ! avdec_h264 ! fakesink";
    let bare_cpu = gst_launch(&bare.replace("{url}", &url), window, ticks);
    println!(
        "{:<44} {:>8.1} {:>12} {:>12}",
        "gst-launch bare decode (all frames)", bare_cpu, "30", "-"
    );
    let key = "rtspsrc location={url} protocols=tcp latency=200 ! rtph264depay ! h264parse ! identity drop-buffer-flags=delta-unit ! avdec_h264 ! fakesink";
    let key_cpu = gst_launch(&key.replace("{url}", &url), window, ticks);
    println!(
        "{:<44} {:>8.1} {:>12} {:>12}",
        "gst-launch keyframes only", key_cpu, "1", "-"
    );

    for (label, fps, format, skipping) in [
        (
            "ingest RGB, analysis 30 fps",
            Some(30.0),
            PixelFormat::Rgb,
            true,
        ),
        (
            "ingest NV12, analysis 30 fps",
            Some(30.0),
            PixelFormat::Nv12,
            true,
        ),
        (
            "ingest RGB, analysis 5 fps",
            Some(5.0),
            PixelFormat::Rgb,
            true,
        ),
        (
            "ingest RGB, analysis 1 fps",
            Some(1.0),
            PixelFormat::Rgb,
            true,
        ),
        (
            "ingest RGB, analysis 1 fps, no keyframe skip",
            Some(1.0),
            PixelFormat::Rgb,
            false,
        ),
    ] {
        let (cpu, decoded, out) = ingest(&url, fps, format, skipping, window, ticks);
        println!(
            "{label:<44} {cpu:>8.1} {decoded:>12.1} {out:>12.1}   ({:+.0}% vs bare)",
            (cpu / bare_cpu - 1.0) * 100.0
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Generates (once) the 1080p test stream.
fn stream_file() -> PathBuf {
    let path = std::env::temp_dir().join("florence-edge-bench-1080p30-h264.mp4");
    if path.exists() {
        return path;
    }
    eprintln!("generating {} (once; takes a minute)...", path.display());
    let tmp = path.with_extension("partial.mp4");
    let launch = format!(
        "videotestsrc num-buffers=1200 pattern=smpte horizontal-speed=4 \
         ! video/x-raw,width=1920,height=1080,framerate=30/1 \
         ! timeoverlay font-desc=\"Sans 48\" \
         ! x264enc speed-preset=veryfast bitrate=4000 key-int-max=30 bframes=0 \
         ! h264parse ! mp4mux ! filesink location={}",
        tmp.display()
    );
    run_to_eos(&launch);
    std::fs::rename(&tmp, &path).expect("stream file in place");
    path
}

fn run_to_eos(launch: &str) {
    let pipeline = gst::parse::launch(launch).expect("pipeline parses");
    pipeline.set_state(gst::State::Playing).expect("plays");
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::NONE,
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("ends");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).expect("stops");
}

/// Child process: serves the file over RTSP, prints the port, runs until killed.
fn serve(file: &Path) {
    let server = rtsp::RtspTestServer::start_launch(
        &format!(
            "( filesrc location={} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            file.display()
        ),
        None,
    );
    println!("{}", server.port());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn start_server(file: &Path) -> (Child, String) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .arg("--serve")
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("port line");
    let port: u16 = line.trim().parse().expect("port");
    (child, format!("rtsp://127.0.0.1:{port}/stream"))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn measure(pid: &str, window: Duration, ticks: f64) -> f64 {
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - t0) as f64 / ticks;
    100.0 * used / start.elapsed().as_secs_f64()
}

fn gst_launch(launch: &str, window: Duration, ticks: f64) -> f64 {
    let args = shell_words(launch);
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 starts");
    std::thread::sleep(WARM_UP);
    let cpu = measure(&child.id().to_string(), window, ticks);
    let _ = child.kill();
    let _ = child.wait();
    cpu
}

fn shell_words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn ingest(
    url: &str,
    fps: Option<f64>,
    format: PixelFormat,
    keyframe_skipping: bool,
    window: Duration,
    ticks: f64,
) -> (f64, f64, f64) {
    let mut settings = CameraSettings::new("bench", url);
    settings.analysis_fps = fps;
    settings.output = format;
    settings.keyframe_skipping = keyframe_skipping;
    let (ftx, frx) = mpsc::sync_channel::<Frame>(4);
    let (etx, _erx) = mpsc::channel();
    // A consumer that looks at every frame, as the scheduler would.
    let done = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (done, bytes) = (done.clone(), bytes.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(f) = frx.recv_timeout(Duration::from_millis(100)) {
                    bytes.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let cam = spawn_camera(&settings, ftx, etx).expect("camera starts");
    std::thread::sleep(WARM_UP);
    let before = cam.status();
    let start = Instant::now();
    let cpu = measure("self", window, ticks);
    let after = cam.status();
    let secs = start.elapsed().as_secs_f64();
    cam.stop();
    done.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    (
        cpu,
        (after.frames_in - before.frames_in) as f64 / secs,
        (after.frames_out - before.frames_out) as f64 / secs,
    )
}
