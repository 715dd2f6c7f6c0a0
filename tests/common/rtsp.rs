//! A real RTSP server on 127.0.0.1 for ingest tests (gstreamer-rtsp-server).
//!
//! The port is chosen by the kernel at start; the server can be stopped
//! (listening socket closed, clients dropped), restarted on the same port, and
//! made to stall (the session stays up but no video leaves the payloader).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_rtsp_server::prelude::*;

/// What the served stream is encoded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    H264,
    H265,
    Jpeg,
}

/// The stream a test server serves at `/stream`.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub encoding: Encoding,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `Some((user, password))` demands HTTP basic auth.
    pub auth: Option<(String, String)>,
}

impl StreamSpec {
    pub fn new(encoding: Encoding) -> Self {
        StreamSpec {
            encoding,
            width: 320,
            height: 240,
            fps: 15,
            auth: None,
        }
    }

    fn launch(&self) -> String {
        let encoder = match self.encoding {
            // One keyframe a second so a reconnecting client decodes quickly.
            Encoding::H264 => format!(
                "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={} ! rtph264pay name=pay0 pt=96 config-interval=-1",
                self.fps
            ),
            Encoding::H265 => format!(
                "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={} ! rtph265pay name=pay0 pt=96 config-interval=-1",
                self.fps
            ),
            // rtpjpegpay only carries 4:2:0 JPEG.
            Encoding::Jpeg => {
                "video/x-raw,format=I420 ! jpegenc quality=60 ! rtpjpegpay name=pay0 pt=26".to_string()
            }
        };
        format!(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={},height={},framerate={}/1 ! videoconvert ! {} )",
            self.width, self.height, self.fps, encoder
        )
    }
}

pub struct RtspTestServer {
    server: rtsp_server::RTSPServer,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
    source: Mutex<Option<glib::SourceId>>,
    stalled: Arc<AtomicBool>,
    port: u16,
}

impl RtspTestServer {
    /// Starts serving `spec` at `rtsp://127.0.0.1:<port>/stream`.
    pub fn start(spec: StreamSpec) -> Self {
        Self::start_launch(&spec.launch(), spec.auth.clone())
    }

    /// Serves an arbitrary rtsp-server launch line (`( ... name=pay0 ... )`).
    pub fn start_launch(launch: &str, auth: Option<(String, String)>) -> Self {
        gst::init().expect("GStreamer initialises");
        let server = rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(false);
        let stalled = Arc::new(AtomicBool::new(false));
        let stall_flag = stalled.clone();
        factory.connect_media_configure(move |_, media| {
            let element = media.element();
            let Some(bin) = element.downcast_ref::<gst::Bin>() else {
                return;
            };
            let Some(pay) = bin.by_name("pay0") else {
                return;
            };
            let Some(pad) = pay.static_pad("src") else {
                return;
            };
            let flag = stall_flag.clone();
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |_, _| {
                    if flag.load(Ordering::SeqCst) {
                        // Consumed here (`Drop` triggers a CRITICAL on 1.22).
                        gst::PadProbeReturn::Handled
                    } else {
                        gst::PadProbeReturn::Ok
                    }
                },
            );
        });
        if let Some((user, password)) = &auth {
            let auth = rtsp_server::RTSPAuth::new();
            let token = rtsp_server::RTSPToken::builder()
                .field(rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
                .build();
            let basic = rtsp_server::RTSPAuth::make_basic(user, password);
            auth.add_basic(basic.as_str(), &token);
            server.set_auth(Some(&auth));
            let role = gst::Structure::builder("user")
                .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build();
            factory.add_role_from_structure(&role);
        }
        server
            .mount_points()
            .expect("server has mount points")
            .add_factory("/stream", factory);

        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let source = server.attach(Some(&context)).expect("RTSP server attaches");
        let port = u16::try_from(server.bound_port()).expect("bound port");
        let ml = main_loop.clone();
        let ctx = context.clone();
        let thread = std::thread::Builder::new()
            .name("rtsp-test-srv".into())
            .spawn(move || {
                ctx.with_thread_default(|| ml.run())
                    .expect("main context acquired");
            })
            .expect("server thread starts");
        RtspTestServer {
            server,
            context,
            main_loop,
            thread: Some(thread),
            source: Mutex::new(Some(source)),
            stalled,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The stream's URL, optionally with userinfo.
    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/stream", self.port)
    }

    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!("rtsp://{user}:{password}@127.0.0.1:{}/stream", self.port)
    }

    /// Closes the listening socket and drops every client, as a camera that
    /// loses power would.
    pub fn stop(&self) {
        let id = self
            .source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // The source lives in our own context, not the default one.
        if let Some(source) = id.and_then(|id| self.context.find_source_by_id(&id)) {
            source.destroy();
        }
        self.server
            .client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        let mut source = self.source.lock().expect("lock");
        if source.is_none() {
            self.server.set_service(&self.port.to_string());
            *source = Some(
                self.server
                    .attach(Some(&self.context))
                    .expect("RTSP server re-attaches on its port"),
            );
        }
    }

    /// While stalled, sessions stay open but carry no video.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }
}

impl Drop for RtspTestServer {
    fn drop(&mut self) {
        self.stop();
        self.main_loop.quit();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
