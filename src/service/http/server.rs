//! The server thread and its connections: the accept loop, each
//! connection's way through the guard to hyper, the accounting that bounds
//! open connections and source calls (workers plus queue), and the bounded
//! wind-down at stop.

use std::io::{self, ErrorKind, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::guard::{raw_busy, read_head, refuse, Connection, HeadError};
use super::routes::respond;
use super::{HttpLimits, HttpSource, STOP_GRACE};

/// What the connections share.
pub(super) struct Shared {
    pub(super) source: Arc<dyn HttpSource>,
    pub(super) token: Option<Vec<u8>>,
    pub(super) limits: HttpLimits,
    /// One permit per source call running (`limits.workers`).
    pub(super) workers: Arc<Semaphore>,
    /// Requests running or waiting for a worker (see [`Admitted`]); at
    /// `limits.workers + limits.queue`, the endpoint is saturated.
    pub(super) admitted: watch::Sender<usize>,
    /// One permit per open connection (`limits.max_connections`).
    pub(super) connections: Arc<Semaphore>,
}

/// Resolves once a stop is asked for (or the server handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// The server thread: serves until stopped, then winds down within
/// [`STOP_GRACE`].
pub(super) fn run(
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    runtime.block_on(accept(listener, &shared, stop));
    // The listener is closed. Each connection task holds a connection
    // permit: all of them back means every answer in progress is done.
    let deadline = Instant::now() + STOP_GRACE;
    let all = u32::try_from(shared.limits.max_connections).unwrap_or(u32::MAX);
    let finished = runtime.block_on(async {
        tokio::time::timeout(STOP_GRACE, shared.connections.acquire_many(all))
            .await
            .is_ok()
    });
    if !finished {
        tracing::warn!(
            grace = ?STOP_GRACE,
            "HTTP answers still in progress at stop; their connections are closed."
        );
    }
    if shared.workers.available_permits() < shared.limits.workers {
        tracing::warn!(
            "An HTTP source callback is still running at stop; it is left to end on its own."
        );
    }
    // Drops every task left (closing its connection) and waits briefly for
    // the blocking threads; one still in a callback is left behind.
    runtime.shutdown_timeout(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10)),
    );
}

/// Accepts until stopped; the listener (and with it the port) is closed when
/// this returns.
async fn accept(
    listener: tokio::net::TcpListener,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match shared.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let task = connection(stream, peer, shared.clone(), stop.clone(), permit);
                    tokio::spawn(task);
                }
                Err(_) => {
                    tracing::warn!(%peer, "Too many HTTP connections open; answered 503.");
                    answer_busy(stream);
                }
            },
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "HTTP connection lost before it was accepted.");
            }
            Err(error) => {
                // E.g. out of file descriptors: back off, and log at most
                // every 10 s while it lasts.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(%error, "HTTP endpoint cannot accept connections.");
                    last_error_log = Some(Instant::now());
                }
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Errors of one connection, not of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
    )
}

/// 503 from the accept loop, without waiting on the client (it is answered
/// before it sent anything): the answer fits the fresh socket's buffer, and
/// only bytes that already arrived are read before closing (closing with
/// unread bytes would reset the connection under the answer).
fn answer_busy(stream: tokio::net::TcpStream) {
    let answer = raw_busy();
    if !matches!(stream.try_write(&answer), Ok(n) if n == answer.len()) {
        return;
    }
    // Non-blocking, and no longer registered with the runtime.
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = stream.shutdown(Shutdown::Write);
    let mut chunk = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.read(&mut chunk), Ok(n) if n > 0) {
            break;
        }
    }
}

/// One connection: its request head through the guard, then hyper.
async fn connection(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let mut admitted = shared.admitted.subscribe();
    let head = tokio::select! {
        biased;
        () = stopped(&mut stop) => return, // closed unanswered
        () = saturated(&mut admitted, &shared.limits) => {
            tracing::warn!(%peer, "HTTP workers busy and queue full; answered 503.");
            refuse(stream, &raw_busy(), &shared.limits).await;
            return;
        }
        head = read_head(&mut stream, &shared.limits) => head,
    };
    drop(admitted);
    let read = match head {
        Ok(read) => read,
        Err(HeadError::Gone) => return,
        Err(error) => {
            tracing::debug!(%peer, ?error, "HTTP request refused.");
            refuse(stream, &error.answer(&shared.limits), &shared.limits).await;
            return;
        }
    };
    let io = TokioIo::new(Connection::new(stream, read, shared.limits.write_timeout));
    let service = service_fn(move |request| respond(request, shared.clone(), peer));
    let served = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = stopped(&mut stop) => {
            // Finish the answer in progress, then close.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error.");
    }
}

/// Resolves once (or at once if) every worker is busy and the queue is full.
async fn saturated(admitted: &mut watch::Receiver<usize>, limits: &HttpLimits) {
    let capacity = limits.workers + limits.queue;
    if admitted.wait_for(|&n| n >= capacity).await.is_err() {
        // The server is being dropped: never.
        std::future::pending::<()>().await;
    }
}

/// A request counted against `workers + queue` until dropped, which happens
/// when its source call has ended (or the request was dropped before that).
pub(super) struct Admitted(Arc<Shared>);

impl Admitted {
    /// `None` when the endpoint is saturated.
    pub(super) fn new(shared: &Arc<Shared>) -> Option<Admitted> {
        let capacity = shared.limits.workers + shared.limits.queue;
        let mut admitted = false;
        shared.admitted.send_if_modified(|n| {
            admitted = *n < capacity;
            *n += usize::from(admitted);
            admitted
        });
        admitted.then(|| Admitted(shared.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.send_modify(|n| *n = n.saturating_sub(1));
    }
}
