//! Routing and answers: which request gets which answer, the bearer-token
//! check, and the [`HttpSource`] calls, run on the blocking workers with a
//! panic answered 500.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use serde_json::json;

use super::server::{Admitted, Shared};
use super::{HttpSource, BUSY, JSON_CONTENT_TYPE, LINGER, MAX_DRAIN, METRICS_CONTENT_TYPE, PATHS};

type Answer = Response<Full<Bytes>>;

/// The source call a route needs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Call {
    Health,
    Readiness,
    Metrics,
    Cameras,
}

/// Where a request goes: an answer at once, or a source call (and whether the
/// caller showed the token).
#[derive(Debug)]
enum Route {
    Answer(Answer),
    Call { call: Call, authorized: bool },
}

/// hyper's service: one request, one answer.
pub(super) async fn respond(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
) -> Result<Answer, Infallible> {
    let (parts, body) = request.into_parts();
    let route = route(
        &parts.method,
        &parts.uri,
        &parts.headers,
        shared.token.as_deref(),
    );
    // Counted at once, before the body is drained.
    let admitted = match route {
        Route::Call { .. } => Admitted::new(&shared),
        Route::Answer(_) => None,
    };
    if !body.is_end_stream() {
        drain(body).await;
    }
    let answer = match (route, admitted) {
        (Route::Answer(answer), _) => answer,
        (Route::Call { call, authorized }, Some(admitted)) => {
            answer_call(&shared, call, authorized, admitted).await
        }
        (Route::Call { .. }, None) => {
            tracing::warn!(%peer, "HTTP workers busy and queue full; answered 503.");
            busy()
        }
    };
    tracing::debug!(
        %peer,
        method = %parts.method,
        path = %parts.uri.path(),
        status = answer.status().as_u16(),
        "HTTP request answered."
    );
    Ok(answer)
}

/// Reads (and discards) a request body, briefly: see [`LINGER`].
async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(LINGER, Limited::new(body, MAX_DRAIN).collect()).await;
}

fn route(method: &Method, uri: &Uri, headers: &HeaderMap, token: Option<&[u8]>) -> Route {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let (given, second) = (authorization.next(), authorization.next());
    if second.is_some() {
        return Route::Answer(json_answer(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad request: two Authorization headers"}),
        ));
    }
    if method != Method::GET && method != Method::HEAD {
        let mut answer = json_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({
                "error": format!("method {method} is not allowed"),
                "allow": ["GET", "HEAD"],
            }),
        );
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Route::Answer(answer);
    }
    let authorized = match token {
        None => true,
        Some(token) => given
            .and_then(|value| bearer_token(value.as_bytes()))
            .is_some_and(|given| constant_time_eq(token, given)),
    };
    let call = match uri.path() {
        "/healthz" => Call::Health,
        "/readyz" => Call::Readiness,
        "/metrics" | "/api/cameras" if !authorized => {
            let mut answer = json_answer(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "this path needs an Authorization: Bearer token"}),
            );
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"florence-edge\""),
            );
            return Route::Answer(answer);
        }
        "/metrics" => Call::Metrics,
        "/api/cameras" => Call::Cameras,
        path => {
            return Route::Answer(json_answer(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no such path: {path}"), "paths": PATHS}),
            ))
        }
    };
    Route::Call { call, authorized }
}

/// Runs the source call on a worker and builds the answer.
async fn answer_call(shared: &Shared, call: Call, authorized: bool, admitted: Admitted) -> Answer {
    match call {
        Call::Health | Call::Readiness => {
            let health = call_source(shared, call, admitted, move |source| {
                if call == Call::Health {
                    source.health()
                } else {
                    source.readiness()
                }
            })
            .await;
            let Some(health) = health else {
                return internal_error();
            };
            let status = if health.ok { "ok" } else { "unavailable" };
            let body = if authorized {
                json!({"status": status, "detail": health.detail})
            } else {
                json!({"status": status})
            };
            let code = if health.ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_answer(code, &body)
        }
        Call::Metrics => match call_source(shared, call, admitted, |s| s.metrics()).await {
            Some(text) => answer(StatusCode::OK, METRICS_CONTENT_TYPE, text.into_bytes()),
            None => internal_error(),
        },
        Call::Cameras => match call_source(shared, call, admitted, |s| s.cameras()).await {
            Some(cameras) => json_answer(StatusCode::OK, &cameras),
            None => internal_error(),
        },
    }
}

/// Runs a source callback on a blocking worker once one is free; a panic
/// becomes `None` (logged at ERROR). The worker permit and the admission go
/// with the callback, so they are held for as long as it runs, even if the
/// request is dropped.
async fn call_source<T: Send + 'static>(
    shared: &Shared,
    which: Call,
    admitted: Admitted,
    call: impl FnOnce(&dyn HttpSource) -> T + Send + 'static,
) -> Option<T> {
    // The semaphore is never closed.
    let worker = shared.workers.clone().acquire_owned().await.ok()?;
    let source = shared.source.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _permits = (admitted, worker);
        panic::catch_unwind(AssertUnwindSafe(|| call(source.as_ref())))
    });
    let payload = match task.await {
        Ok(Ok(value)) => return Some(value),
        Ok(Err(payload)) => payload,
        Err(error) => {
            tracing::error!(?which, %error, "HTTP source call did not finish; answered 500.");
            return None;
        }
    };
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!(
        ?which,
        panic = %message,
        "HTTP source panicked; answered 500 (a bug in florence-edge)."
    );
    None
}

/// The token of an `Authorization: Bearer <token>` value (scheme names are
/// case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&value[..space], value[space + 1..].trim_ascii());
    scheme.eq_ignore_ascii_case(b"bearer").then_some(token)
}

/// Compares without an early exit, so the time taken does not reveal how
/// many leading bytes of a guess were right; it depends only on the length of
/// the expected token.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = expected.len() ^ given.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(e ^ given.get(i).copied().unwrap_or(0));
    }
    std::hint::black_box(diff) == 0
}

pub(super) fn json_body(value: &serde_json::Value) -> Vec<u8> {
    // A `Value` always serializes (its map keys are strings).
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    body
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Answer {
    answer(status, JSON_CONTENT_TYPE, json_body(value))
}

/// An answer; hyper adds `Content-Length` (also to `HEAD`, whose body it
/// leaves out) and `Date`.
fn answer(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

fn busy() -> Answer {
    let mut answer = json_answer(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": BUSY}));
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

fn internal_error() -> Answer {
    json_answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"error": "internal error; see the florence-edge log"}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_parsing_details() {
        // The route, from what hyper parsed: query and fragment ignored, the
        // Authorization scheme case-insensitive, two of them refused.
        let route_of = |uri: &str, authorization: &[&str]| {
            let mut request = Request::builder().method(Method::GET).uri(uri);
            for value in authorization {
                request = request.header(header::AUTHORIZATION, *value);
            }
            let request = request.body(()).expect("valid request");
            route(
                request.method(),
                request.uri(),
                request.headers(),
                Some(&b"abc"[..]),
            )
        };
        let metrics = route_of("/metrics?x=1#frag", &["Bearer abc"]);
        assert!(
            matches!(
                metrics,
                Route::Call {
                    call: Call::Metrics,
                    authorized: true
                }
            ),
            "{metrics:?}"
        );
        let probe = route_of("http://example/healthz", &["bearer  abc "]);
        assert!(
            matches!(
                probe,
                Route::Call {
                    call: Call::Health,
                    authorized: true
                }
            ),
            "{probe:?}"
        );
        let two = route_of("/metrics", &["Bearer abc", "Bearer abc"]);
        assert!(
            matches!(&two, Route::Answer(a) if a.status() == StatusCode::BAD_REQUEST),
            "{two:?}"
        );
        assert_eq!(bearer_token(b"Bearer  tok "), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"Bearertok"), None);
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
        // A guess that extends the token by a multiple of 256 bytes must not
        // pass (a length folded into a byte would).
        let long = vec![b'a'; 256 + 3];
        assert!(!constant_time_eq(b"aaa", &long));
    }
}
