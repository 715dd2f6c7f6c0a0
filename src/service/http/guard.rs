//! The guard in front of hyper: reads each connection's request head within
//! [`HttpLimits::head_timeout`] and [`HttpLimits::max_head_bytes`], checks it
//! with `httparse`, and answers what hyper would not answer well (408, 431,
//! 400, 505, and 503 while the endpoint is saturated) itself, as raw bytes.
//! A head that passes is handed to hyper inside a [`Connection`], which
//! replays the bytes read and bounds the time the client has to take the
//! answer.

use std::future::Future;
use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::routes::json_body;
use super::{HttpLimits, BUSY, JSON_CONTENT_TYPE, LINGER, MAX_DRAIN};

/// Most header lines in a request head (hyper's own default).
const MAX_HEADERS: usize = 100;

pub(super) fn raw_busy() -> Vec<u8> {
    raw_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": BUSY}),
        "Retry-After: 1\r\n",
    )
}

/// Why a request head was not handed to hyper.
#[derive(Debug, PartialEq)]
pub(super) enum HeadError {
    /// Closed before sending anything; nothing to answer.
    Gone,
    TooLarge,
    TooManyHeaders,
    TimedOut,
    Malformed(&'static str),
    Version,
}

impl HeadError {
    pub(super) fn answer(&self, limits: &HttpLimits) -> Vec<u8> {
        let (status, message) = match self {
            HeadError::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request head larger than {} bytes", limits.max_head_bytes),
            ),
            HeadError::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} header lines"),
            ),
            HeadError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "request head not received in time".into(),
            ),
            HeadError::Version => (
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are supported".into(),
            ),
            HeadError::Malformed(what) => (StatusCode::BAD_REQUEST, format!("bad request: {what}")),
            HeadError::Gone => (StatusCode::BAD_REQUEST, "connection closed".into()),
        };
        raw_answer(status, &json!({ "error": message }), "")
    }
}

/// Reads until the request head is complete, within the size and time limits,
/// and checks it. Returns everything read (the head, perhaps more).
pub(super) async fn read_head(
    stream: &mut tokio::net::TcpStream,
    limits: &HttpLimits,
) -> Result<Vec<u8>, HeadError> {
    let deadline = tokio::time::Instant::now() + limits.head_timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if check_head(&buf, limits.max_head_bytes)? {
            return Ok(buf);
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Err(_elapsed) => return Err(HeadError::TimedOut),
            Ok(Ok(0)) if buf.is_empty() => return Err(HeadError::Gone),
            Ok(Ok(0)) => {
                return Err(HeadError::Malformed(
                    "connection closed inside the request head",
                ))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(_)) => return Err(HeadError::Gone),
        }
    }
}

/// Whether `buf` starts with a complete request head; an error when it
/// cannot be one (malformed, too large, another HTTP version).
fn check_head(buf: &[u8], max_head_bytes: usize) -> Result<bool, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > max_head_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(false),
        Ok(httparse::Status::Complete(len)) if len > max_head_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(_)) => {
            // Origin form (`/metrics`) or absolute form (`http://host/metrics`).
            let target = request.path.unwrap_or_default();
            if target.starts_with('/')
                || target.starts_with("http://")
                || target.starts_with("https://")
            {
                Ok(true)
            } else {
                Err(HeadError::Malformed("invalid request target"))
            }
        }
        Err(httparse::Error::Version) => Err(HeadError::Version),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Token) => Err(HeadError::Malformed("invalid method or target")),
        Err(httparse::Error::HeaderName) => Err(HeadError::Malformed("invalid header line")),
        Err(httparse::Error::HeaderValue) => Err(HeadError::Malformed("invalid header value")),
        Err(httparse::Error::NewLine | httparse::Error::Status) => {
            Err(HeadError::Malformed("invalid request line"))
        }
    }
}

/// Writes a refusal within the write timeout; then, as the client may still
/// be sending what was not read, lingers before closing.
pub(super) async fn refuse(mut stream: tokio::net::TcpStream, answer: &[u8], limits: &HttpLimits) {
    let written = tokio::time::timeout(limits.write_timeout, stream.write_all(answer)).await;
    if !matches!(written, Ok(Ok(()))) || stream.shutdown().await.is_err() {
        return;
    }
    let mut drained = 0;
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while drained < MAX_DRAIN {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A whole answer written without hyper: for connections refused before (or
/// instead of) reading a request, which hyper cannot answer.
fn raw_answer(status: StatusCode, body: &serde_json::Value, extra_headers: &str) -> Vec<u8> {
    let body = json_body(body);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {JSON_CONTENT_TYPE}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra_headers}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The connection hyper serves: the bytes the guard read come first, and the
/// answer must be taken within the write timeout (hyper has none of its own),
/// counted from the first write that has to wait for the client.
pub(super) struct Connection {
    stream: tokio::net::TcpStream,
    read: Vec<u8>,
    consumed: usize,
    write_timeout: Duration,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    /// Hands hyper `stream`, with the bytes the guard `read` from it first.
    pub(super) fn new(
        stream: tokio::net::TcpStream,
        read: Vec<u8>,
        write_timeout: Duration,
    ) -> Self {
        Connection {
            stream,
            read,
            consumed: 0,
            write_timeout,
            write_deadline: None,
        }
    }

    /// Called when a write would block (the first such call starts the
    /// clock): an error once the deadline has passed.
    fn poll_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                ErrorKind::TimedOut,
                "the client did not take the answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.read[this.consumed..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing_details() {
        // The guard: complete heads (CRLF, or LF from lenient clients),
        // partial ones, and its limits.
        let head = b"GET /metrics?x=1#frag HTTP/1.1\r\nHost: a\r\n\
              AUTHORIZATION:   Bearer abc  \r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check_head(head, 1024), Ok(true));
        assert_eq!(check_head(b"GET / HTTP/1.1\nA: b\n\n", 1024), Ok(true));
        assert_eq!(check_head(b"GET / HTTP/1.1\r\nA: b\r\n", 1024), Ok(false));
        assert_eq!(check_head(b"", 1024), Ok(false));
        assert_eq!(check_head(head, 64), Err(HeadError::TooLarge));
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\nA: b", 16),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            check_head(b"GET / HTTP/3.0\r\n\r\n", 1024),
            Err(HeadError::Version)
        );
        assert_eq!(
            check_head(b"OPTIONS * HTTP/1.1\r\n\r\n", 1024),
            Err(HeadError::Malformed("invalid request target"))
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            check_head(many.as_bytes(), 64 * 1024),
            Err(HeadError::TooManyHeaders)
        );
    }
}
