//! The operators' HTTP endpoint: Prometheus metrics, health and readiness
//! probes, a JSON view of the cameras, and runtime control of the daemon
//! (`crate::control`).
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | 200, `text/plain; version=0.0.4; charset=utf-8` |
//! | `GET /healthz` | 200 when the daemon is alive, else 503; JSON |
//! | `GET /readyz` | 200 when it is ready to do its work, else 503; JSON |
//! | `GET /api/cameras` | 200, JSON: every camera and its state |
//! | `GET /api/config` | the effective configuration ([`ControlRequest::Config`]) |
//! | `GET /api/cameras/{id}` | one camera's settings ([`ControlRequest::GetCamera`]) |
//! | `PUT /api/cameras/{id}` | body: a camera table (object); add or replace ([`ControlRequest::PutCamera`]) |
//! | `DELETE /api/cameras/{id}` | remove the camera ([`ControlRequest::DeleteCamera`]) |
//! | `PUT /api/cameras/{id}/tasks` | body: the task list (array) ([`ControlRequest::PutTasks`]) |
//! | `PATCH /api/cameras/{id}/tasks/{task}` | body: keys of one task (object); `{task}` is its index or name ([`ControlRequest::PatchTask`]) |
//! | `DELETE /api/overrides` | drop every runtime change ([`ControlRequest::ClearOverrides`]) |
//!
//! `HEAD` is answered like `GET` without the body. Other paths get 404 with
//! the list of paths ([`PATHS`]), a method a path does not take 405 with an
//! `Allow` header listing the ones it takes; query strings are ignored. A
//! panic in the daemon's [`HttpSource`] is caught and answered with 500: the
//! endpoint keeps serving.
//!
//! **Control routes.** The control rows go to [`HttpSource::control`]; its
//! [`ControlReply`] is the answer: `status` as the HTTP status, `body` as the
//! JSON body (200 applied or read, 404 no such camera or task, 422 refused
//! with every problem, …). Bodies are JSON in the shape of the TOML file.
//! `{id}` and `{task}` are percent-decoded (`front%20door` is `front door`);
//! one that is empty, contains `/` or is not UTF-8 once decoded is answered
//! 400 naming the segment. A `PUT` or `PATCH` body:
//!
//! - may carry `Content-Type: application/json` (with parameters such as
//!   `charset`) or none; another type is answered 415;
//! - must fit in [`HttpLimits::max_body_bytes`] (default 1 MiB; 413
//!   otherwise) and arrive within [`HttpLimits::body_timeout`] (default 10 s;
//!   408 otherwise);
//! - must not be empty, must be valid JSON (400 with the parser's message,
//!   line and column) and of the kind the route takes (400 otherwise).
//!
//! Bodies sent with other requests are read briefly and ignored. A request
//! waiting for its body counts against the workers' queue (see below), like
//! one waiting for a worker. A source without runtime control keeps the
//! default [`HttpSource::control`], which answers 404.
//!
//! **Authentication.** With a bearer token configured, `/metrics` and every
//! `/api/…` route — the reads and the control writes alike — need
//! `Authorization: Bearer <token>` (compared in constant time) and answer 401
//! with `WWW-Authenticate: Bearer` otherwise, because they name cameras and
//! show or change their state. The token is checked from the request head,
//! before any body is read. Without a token configured the control routes
//! are open to whoever reaches the address: configure one (or listen on
//! loopback only) on any network you do not trust. `/healthz` and `/readyz`
//! stay open, as probes from systemd, Kubernetes or a load balancer carry no
//! credentials; without a valid token they answer only the status
//! (`{"status":"ok"}`), and the detail — which may name cameras — only to a
//! caller with the token.
//!
//! **hyper on a runtime of its own.** [`HttpServer::start`] binds the socket
//! and starts one thread, `http`, that runs a current-thread tokio runtime.
//! Accepting, reading requests and writing answers are asynchronous there, so
//! an idle or slow client costs a task and a socket, not a thread, and delays
//! no one else — the probes least of all. hyper speaks HTTP/1.1, one request
//! per connection (answers carry `Connection: close`: scrapers and probes make
//! one request per interval). [`HttpSource`] calls are synchronous and run on
//! the runtime's blocking pool (threads `http-worker`), never on the reactor.
//!
//! **Request heads are guarded before hyper sees them.** Each connection's
//! request head must arrive within [`HttpLimits::head_timeout`] (408 otherwise)
//! and fit in [`HttpLimits::max_head_bytes`] (431 otherwise); it is checked
//! with `httparse`, the parser hyper itself uses (400 when malformed, 505 for
//! another HTTP version). Those answers carry a JSON body like every other.
//! hyper's own limits cannot do this: its `header_read_timeout` closes the
//! connection without an answer, its head buffer cannot be smaller than 8 KiB,
//! and it answers 400 with an empty body to a foreign version. hyper then
//! reads the head again from what the guard read, and serves the request. The
//! client must take the answer within [`HttpLimits::write_timeout`].
//!
//! **Bounded concurrency.** At most [`HttpLimits::workers`] source calls run
//! at once and [`HttpLimits::queue`] more wait for one. A request beyond that
//! is answered 503 (`Retry-After: 1`) at once; so, while that lasts, is every
//! connection that has not sent its whole request head yet (a new one before
//! it sends anything), and so is a new connection while
//! [`HttpLimits::max_connections`] are open (idle ones included). Answers that
//! need no source call (400 for a bad path segment, 401, 404, 405, 415) are
//! never refused.
//!
//! **Stopping.** [`HttpServer::stop`] (and drop) closes the listening socket at
//! once, closes the connections still waiting for their request head, lets
//! answers in progress finish for up to [`STOP_GRACE`] and cuts off the rest,
//! then joins the thread. A source callback still running after that is left
//! to end on its blocking thread (logged at WARN), so a stop is bounded by
//! about [`STOP_GRACE`] even when a callback hangs.
//!
//! **Layout.** This file holds the public API; `guard` reads and checks
//! request heads before hyper and writes the refusals, `routes` maps requests
//! to answers and runs the source calls, and `server` runs the thread, the
//! accept loop, the connection and worker accounting, and the stop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::control::{ControlReply, ControlRequest};
use server::{run, Shared};

mod guard;
mod routes;
mod server;
#[cfg(test)]
mod tests;

/// Content type of the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// Every path the endpoint serves (listed in 404 answers); `{id}` stands for
/// a camera id, `{task}` for a task's index or name.
pub const PATHS: [&str; 9] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/api/config",
    "/api/cameras",
    "/api/cameras/{id}",
    "/api/cameras/{id}/tasks",
    "/api/cameras/{id}/tasks/{task}",
    "/api/overrides",
];

/// The answer of [`HttpSource::control`]'s default implementation.
pub const NO_CONTROL: &str = "runtime control is not available on this endpoint";

/// How long a stop lets answers in progress finish.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Longest bearer token accepted (a token file with a whole key pasted in is
/// a mistake worth reporting).
const MAX_TOKEN_LEN: usize = 4096;

/// Before closing a connection whose client may still be sending (a body, an
/// oversized head), read for this long and this much: closing with unread
/// data makes the kernel send a reset, and the client could lose the answer.
const LINGER: Duration = Duration::from_millis(500);
const MAX_DRAIN: usize = 64 * 1024;

const BUSY: &str = "the HTTP endpoint is busy; retry later";

/// The state of one probe, as the daemon reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// 200 when true, 503 when false.
    pub ok: bool,
    /// Why: shown as `detail` in the JSON answer (to authorized callers when
    /// a token is configured). Any JSON: a sentence or an object per camera.
    pub detail: serde_json::Value,
}

impl Health {
    pub fn ok(detail: impl Into<serde_json::Value>) -> Self {
        Health {
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn failing(detail: impl Into<serde_json::Value>) -> Self {
        Health {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the endpoint shows, provided by the daemon. Called for every request
/// that needs it, on one of the endpoint's blocking worker threads (at most
/// [`HttpLimits::workers`] at once), so each call should read a snapshot and
/// return quickly; a panic is answered 500.
pub trait HttpSource: Send + Sync + 'static {
    /// The whole Prometheus exposition (`super::metrics::encode`).
    fn metrics(&self) -> String;
    /// Liveness: is the daemon's main loop running?
    fn health(&self) -> Health;
    /// Readiness: model loaded, publisher up — can it do its work now?
    fn readiness(&self) -> Health;
    /// The cameras and their state, for `/api/cameras`.
    fn cameras(&self) -> serde_json::Value;
    /// Runtime control: reads and changes the configuration (the `/api/…`
    /// control routes; see the module docs). Blocks until the change is
    /// applied or refused, on a worker thread like the other calls. The
    /// reply's status must be 200 to 599 (another is answered 500). The
    /// default answers 404 ([`NO_CONTROL`]): a source that does not support
    /// runtime control needs nothing more.
    fn control(&self, request: ControlRequest) -> ControlReply {
        let _ = request;
        ControlReply::error(404, NO_CONTROL)
    }
}

/// Bounds on the server's resources; [`HttpLimits::default`] suits a metrics
/// endpoint scraped by a few clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// [`HttpSource`] calls running at once, each on a blocking thread
    /// (1 to 16).
    pub workers: usize,
    /// Requests waiting for a worker; more are answered 503.
    pub queue: usize,
    /// Open connections, idle ones included (1 to 65536); more are answered
    /// 503.
    pub max_connections: usize,
    /// Largest request line plus headers, in bytes (at least 256).
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub head_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
    /// Largest `PUT`/`PATCH` body of a control route, in bytes (at least
    /// 1024); larger is answered 413.
    pub max_body_bytes: usize,
    /// Time a client has to send the whole body of a control route, counted
    /// once the request head is in; later is answered 408.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            workers: 3,
            queue: 32,
            max_connections: 256,
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpLimits {
    fn problem(&self) -> Option<String> {
        if !(1..=16).contains(&self.workers) {
            return Some(format!("workers = {} (allowed: 1 to 16)", self.workers));
        }
        if self.queue == 0 {
            return Some("queue = 0 (allowed: 1 or more)".into());
        }
        if !(1..=65536).contains(&self.max_connections) {
            return Some(format!(
                "max_connections = {} (allowed: 1 to 65536)",
                self.max_connections
            ));
        }
        if self.max_head_bytes < 256 {
            return Some(format!(
                "max_head_bytes = {} (allowed: 256 or more)",
                self.max_head_bytes
            ));
        }
        if self.max_body_bytes < 1024 {
            return Some(format!(
                "max_body_bytes = {} (allowed: 1024 or more)",
                self.max_body_bytes
            ));
        }
        if self.head_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.body_timeout.is_zero()
        {
            return Some("a zero timeout (allowed: more than 0)".into());
        }
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "the HTTP bearer token {problem} (allowed: 1 to {MAX_TOKEN_LEN} visible ASCII \
         characters, no spaces or line breaks — check the token file for a trailing newline)"
    )]
    InvalidToken { problem: &'static str },
    #[error("invalid HTTP server limits: {0}")]
    InvalidLimits(String),
    #[error("cannot start the HTTP {thread} thread: {source}")]
    Spawn { thread: String, source: io::Error },
}

/// A running HTTP endpoint. Stops on [`HttpServer::stop`] or drop.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    /// `true` asks the server thread to stop (as does dropping it).
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `listen` (port 0 picks a free port, see [`HttpServer::local_addr`])
    /// and starts serving with [`HttpLimits::default`].
    pub fn start(
        listen: SocketAddr,
        bearer_token: Option<String>,
        source: Arc<dyn HttpSource>,
    ) -> Result<HttpServer, HttpError> {
        Self::start_with_limits(listen, bearer_token, source, HttpLimits::default())
    }

    pub fn start_with_limits(
        listen: SocketAddr,
        bearer_token: Option<String>,
        source: Arc<dyn HttpSource>,
        limits: HttpLimits,
    ) -> Result<HttpServer, HttpError> {
        if let Some(problem) = limits.problem() {
            return Err(HttpError::InvalidLimits(problem));
        }
        if let Some(token) = &bearer_token {
            check_token(token)?;
        }
        let bind = |source| HttpError::Bind {
            addr: listen,
            source,
        };
        // Bound here, so that a bind error is returned by start.
        let listener = std::net::TcpListener::bind(listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(limits.workers)
            .thread_name("http-worker")
            .build()
            .map_err(|source| HttpError::Spawn {
                thread: "runtime".into(),
                source,
            })?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind)?
        };
        let shared = Arc::new(Shared {
            source,
            token: bearer_token.map(String::into_bytes),
            workers: Arc::new(Semaphore::new(limits.workers)),
            admitted: watch::Sender::new(0),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        });
        let auth = shared.token.is_some();
        let (stop, stopped) = watch::channel(false);
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || run(runtime, listener, shared, stopped))
            .map_err(|source| HttpError::Spawn {
                thread: "http".into(),
                source,
            })?;
        tracing::info!(addr = %local_addr, auth, "HTTP endpoint listening.");
        Ok(HttpServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the listening socket, lets answers in progress finish (for up
    /// to [`STOP_GRACE`]) and joins the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.send_replace(true);
        let Some(thread) = self.thread.take() else {
            return; // already stopped (stop() then drop)
        };
        if thread.join().is_err() {
            tracing::error!("HTTP thread ended with a panic.");
        }
        tracing::debug!(addr = %self.local_addr, "HTTP endpoint stopped.");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_token(token: &str) -> Result<(), HttpError> {
    let problem = if token.is_empty() {
        "is empty"
    } else if token.len() > MAX_TOKEN_LEN {
        "is too long"
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "contains a space, control or non-ASCII character"
    } else {
        return Ok(());
    };
    Err(HttpError::InvalidToken { problem })
}
