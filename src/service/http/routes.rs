//! Routing and answers: which request gets which answer, the bearer-token
//! check, the control routes' path segments and JSON bodies, and the
//! [`HttpSource`] calls, run on the blocking workers with a panic answered
//! 500.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use serde_json::{json, Value};

use super::server::{Admitted, Shared};
use super::{
    HttpLimits, HttpSource, BUSY, JSON_CONTENT_TYPE, LINGER, MAX_DRAIN, METRICS_CONTENT_TYPE, PATHS,
};
use crate::control::{ControlReply, ControlRequest};

type Answer = Response<Full<Bytes>>;

/// The source call a route needs.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Health,
    Readiness,
    Metrics,
    Cameras,
    /// A control request complete from the request head.
    Control(ControlRequest),
    /// A control request that needs its JSON body first.
    ControlBody(Pending),
}

impl Call {
    /// For the log.
    fn name(&self) -> &'static str {
        match self {
            Call::Health => "health",
            Call::Readiness => "readiness",
            Call::Metrics => "metrics",
            Call::Cameras => "cameras",
            Call::Control(_) | Call::ControlBody(_) => "control",
        }
    }
}

/// A control request waiting for its body.
#[derive(Clone, Debug, PartialEq)]
enum Pending {
    PutCamera { camera: String },
    PutTasks { camera: String },
    PatchTask { camera: String, task: String },
}

impl Pending {
    /// What the route's body must be, for the refusal.
    fn expects(&self) -> &'static str {
        match self {
            Pending::PutCamera { .. } => {
                "PUT /api/cameras/{id} takes a JSON object (a camera table)"
            }
            Pending::PutTasks { .. } => {
                "PUT /api/cameras/{id}/tasks takes a JSON array (the camera's task tables)"
            }
            Pending::PatchTask { .. } => {
                "PATCH /api/cameras/{id}/tasks/{task} takes a JSON object (keys of the task)"
            }
        }
    }

    /// Whether `body` is of the JSON kind the route takes.
    fn accepts(&self, body: &Value) -> bool {
        match self {
            Pending::PutCamera { .. } | Pending::PatchTask { .. } => body.is_object(),
            Pending::PutTasks { .. } => body.is_array(),
        }
    }

    fn with_body(self, body: Value) -> ControlRequest {
        match self {
            Pending::PutCamera { camera } => ControlRequest::PutCamera { camera, body },
            Pending::PutTasks { camera } => ControlRequest::PutTasks { camera, body },
            Pending::PatchTask { camera, task } => ControlRequest::PatchTask { camera, task, body },
        }
    }
}

/// A refusal decided without a source call: the status and the JSON body
/// (small, unlike an [`Answer`]).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: Value,
}

impl Refusal {
    fn new(status: StatusCode, error: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: json!({ "error": error.into() }),
        }
    }

    fn bad_request(error: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, error)
    }

    fn answer(self) -> Answer {
        json_answer(self.status, &self.body)
    }
}

/// Where a request goes: an answer at once, or a source call (and whether the
/// caller showed the token).
#[derive(Debug)]
enum Route {
    Answer(Answer),
    Call { call: Call, authorized: bool },
}

/// A path the endpoint serves, its segments still percent-encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target<'a> {
    Metrics,
    Health,
    Readiness,
    Config,
    Cameras,
    Camera(&'a str),
    Tasks(&'a str),
    Task(&'a str, &'a str),
    Overrides,
}

impl<'a> Target<'a> {
    fn of(path: &'a str) -> Option<Target<'a>> {
        let fixed = match path {
            "/metrics" => Target::Metrics,
            "/healthz" => Target::Health,
            "/readyz" => Target::Readiness,
            "/api/config" => Target::Config,
            "/api/cameras" => Target::Cameras,
            "/api/overrides" => Target::Overrides,
            _ => {
                let mut parts = path.strip_prefix("/api/cameras/")?.split('/');
                return match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(camera), None, _, _) => Some(Target::Camera(camera)),
                    (Some(camera), Some("tasks"), None, _) => Some(Target::Tasks(camera)),
                    (Some(camera), Some("tasks"), Some(task), None) => {
                        Some(Target::Task(camera, task))
                    }
                    _ => None,
                };
            }
        };
        Some(fixed)
    }

    /// The methods the path takes (`HEAD` wherever `GET`), in `Allow` order.
    fn methods(self) -> &'static [&'static str] {
        match self {
            Target::Metrics
            | Target::Health
            | Target::Readiness
            | Target::Config
            | Target::Cameras => &["GET", "HEAD"],
            Target::Camera(_) => &["GET", "HEAD", "PUT", "DELETE"],
            Target::Tasks(_) => &["PUT"],
            Target::Task(..) => &["PATCH"],
            Target::Overrides => &["DELETE"],
        }
    }
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
    // Counted at once, before the body is read or drained.
    let admitted = match route {
        Route::Call { .. } => Admitted::new(&shared),
        Route::Answer(_) => None,
    };
    let mut change = false;
    let answer = match (route, admitted) {
        (
            Route::Call {
                call: Call::ControlBody(pending),
                ..
            },
            Some(admitted),
        ) => match read_json(body, &shared.limits, &pending).await {
            Ok(value) => {
                change = true;
                answer_control(&shared, pending.with_body(value), admitted).await
            }
            Err(refusal) => refusal.answer(),
        },
        (route, admitted) => {
            if !body.is_end_stream() {
                drain(body).await;
            }
            match (route, admitted) {
                (Route::Answer(answer), _) => answer,
                (Route::Call { call, authorized }, Some(admitted)) => {
                    change = matches!(&call, Call::Control(request) if request.is_change());
                    answer_call(&shared, call, authorized, admitted).await
                }
                (Route::Call { .. }, None) => {
                    tracing::warn!(%peer, "HTTP workers busy and queue full; answered 503.");
                    busy()
                }
            }
        }
    };
    let status = answer.status().as_u16();
    if change {
        // Who changed what: the daemon logs what it applied, only this end
        // knows the peer.
        tracing::info!(
            %peer,
            method = %parts.method,
            path = %parts.uri.path(),
            status,
            "HTTP control change answered."
        );
    } else {
        tracing::debug!(
            %peer,
            method = %parts.method,
            path = %parts.uri.path(),
            status,
            "HTTP request answered."
        );
    }
    Ok(answer)
}

/// Reads (and discards) a request body, briefly: see [`LINGER`].
async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(LINGER, Limited::new(body, MAX_DRAIN).collect()).await;
}

/// Reads a control route's body within the size and time limits and parses
/// it as JSON of the kind the route takes; the refusal otherwise.
async fn read_json(
    mut body: Incoming,
    limits: &HttpLimits,
    pending: &Pending,
) -> Result<Value, Refusal> {
    let limit = limits.max_body_bytes;
    let too_large = || {
        let error = format!(
            "the request body is larger than {limit} bytes (the endpoint's max_body_bytes)"
        );
        Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: json!({"error": error, "max_body_bytes": limit}),
        }
    };
    // A declared length over the limit is refused without reading.
    if body.size_hint().lower() > u64::try_from(limit).unwrap_or(u64::MAX) {
        drain(body).await;
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(&mut body, limit).collect(),
    )
    .await;
    let bytes = match read {
        Err(_elapsed) => {
            let error = format!(
                "request body not received within {}",
                humantime::format_duration(limits.body_timeout)
            );
            return Err(Refusal::new(StatusCode::REQUEST_TIMEOUT, error));
        }
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            drain(body).await;
            return Err(too_large());
        }
        Ok(Err(error)) => {
            return Err(Refusal::bad_request(format!(
                "could not read the request body: {error}"
            )))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let expected = pending.expects();
    if bytes.trim_ascii().is_empty() {
        return Err(Refusal::bad_request(format!(
            "the request body is empty; {expected}"
        )));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|error| {
        Refusal::bad_request(format!("the request body is not valid JSON: {error}"))
    })?;
    if pending.accepts(&value) {
        Ok(value)
    } else {
        Err(Refusal::bad_request(format!(
            "{expected}, not {}",
            crate::control::json_kind(&value)
        )))
    }
}

fn route(method: &Method, uri: &Uri, headers: &HeaderMap, token: Option<&[u8]>) -> Route {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let (given, second) = (authorization.next(), authorization.next());
    if second.is_some() {
        return Route::Answer(
            Refusal::bad_request("bad request: two Authorization headers").answer(),
        );
    }
    let path = uri.path();
    let Some(target) = Target::of(path) else {
        return Route::Answer(json_answer(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no such path: {path}"), "paths": PATHS}),
        ));
    };
    let methods = target.methods();
    if !methods.contains(&method.as_str()) {
        let allow = methods.join(", ");
        let mut answer = json_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({
                "error": format!("method {method} is not allowed on {path}"),
                "allow": methods,
            }),
        );
        if let Ok(allow) = HeaderValue::from_str(&allow) {
            answer.headers_mut().insert(header::ALLOW, allow);
        }
        return Route::Answer(answer);
    }
    let authorized = match token {
        None => true,
        Some(token) => given
            .and_then(|value| bearer_token(value.as_bytes()))
            .is_some_and(|given| constant_time_eq(token, given)),
    };
    let open = matches!(target, Target::Health | Target::Readiness);
    if !open && !authorized {
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
    match control_call(target, method, headers) {
        Ok(call) => Route::Call { call, authorized },
        Err(refusal) => Route::Answer(refusal.answer()),
    }
}

/// The call for a path and a method it takes (checked by [`route`]); the
/// control routes' segments decoded and their `Content-Type` checked.
fn control_call(target: Target, method: &Method, headers: &HeaderMap) -> Result<Call, Refusal> {
    let request = match target {
        Target::Metrics => return Ok(Call::Metrics),
        Target::Health => return Ok(Call::Health),
        Target::Readiness => return Ok(Call::Readiness),
        Target::Cameras => return Ok(Call::Cameras),
        Target::Config => ControlRequest::Config,
        Target::Overrides => ControlRequest::ClearOverrides,
        Target::Camera(camera) => {
            let camera = segment(camera, "camera id")?;
            match *method {
                Method::PUT => {
                    json_content_type(headers)?;
                    return Ok(Call::ControlBody(Pending::PutCamera { camera }));
                }
                Method::DELETE => ControlRequest::DeleteCamera { camera },
                _ => ControlRequest::GetCamera { camera },
            }
        }
        Target::Tasks(camera) => {
            let camera = segment(camera, "camera id")?;
            json_content_type(headers)?;
            return Ok(Call::ControlBody(Pending::PutTasks { camera }));
        }
        Target::Task(camera, task) => {
            let camera = segment(camera, "camera id")?;
            let task = segment(task, "task")?;
            json_content_type(headers)?;
            return Ok(Call::ControlBody(Pending::PatchTask { camera, task }));
        }
    };
    Ok(Call::Control(request))
}

/// One path segment, percent-decoded: `what` names it in the refusal.
fn segment(raw: &str, what: &str) -> Result<String, Refusal> {
    let refuse = |problem: &str| {
        Refusal::bad_request(format!(
            "the {what} in the path {problem} (allowed: a non-empty UTF-8 name without '/', \
             percent-encoded where needed)"
        ))
    };
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| refuse(&format!("{raw:?} is not UTF-8 once percent-decoded")))?;
    if decoded.is_empty() {
        return Err(refuse("is empty"));
    }
    if decoded.contains('/') {
        return Err(refuse(&format!("{decoded:?} contains '/'")));
    }
    Ok(Cow::into_owned(decoded))
}

/// A control body's `Content-Type`, if given, must be JSON (parameters such
/// as `charset` allowed); 415 otherwise.
fn json_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    for value in headers.get_all(header::CONTENT_TYPE) {
        let given = String::from_utf8_lossy(value.as_bytes());
        let media_type = given.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {given:?} is not supported (allowed: {JSON_CONTENT_TYPE})"),
            ));
        }
    }
    Ok(())
}

/// Runs the source call on a worker and builds the answer.
async fn answer_call(shared: &Shared, call: Call, authorized: bool, admitted: Admitted) -> Answer {
    let which = call.name();
    match call {
        Call::Health | Call::Readiness => {
            let health_call = call == Call::Health;
            let health = call_source(shared, which, admitted, move |source| {
                if health_call {
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
        Call::Metrics => match call_source(shared, which, admitted, |s| s.metrics()).await {
            Some(text) => answer(StatusCode::OK, METRICS_CONTENT_TYPE, text.into_bytes()),
            None => internal_error(),
        },
        Call::Cameras => match call_source(shared, which, admitted, |s| s.cameras()).await {
            Some(cameras) => json_answer(StatusCode::OK, &cameras),
            None => internal_error(),
        },
        Call::Control(request) => answer_control(shared, request, admitted).await,
        // `respond` reads the body and calls `answer_control`; never here.
        Call::ControlBody(_) => internal_error(),
    }
}

/// Runs a control request on a worker; its reply is the answer.
async fn answer_control(shared: &Shared, request: ControlRequest, admitted: Admitted) -> Answer {
    let reply: Option<ControlReply> =
        call_source(shared, "control", admitted, move |s| s.control(request)).await;
    let Some(reply) = reply else {
        return internal_error();
    };
    match StatusCode::from_u16(reply.status) {
        Ok(status) if (200..=599).contains(&reply.status) => json_answer(status, &reply.body),
        _ => {
            tracing::error!(
                status = reply.status,
                "HTTP control reply has an invalid status; answered 500 (a bug in florence-edge)."
            );
            internal_error()
        }
    }
}

/// Runs a source callback on a blocking worker once one is free; a panic
/// becomes `None` (logged at ERROR). The worker permit and the admission go
/// with the callback, so they are held for as long as it runs, even if the
/// request is dropped.
async fn call_source<T: Send + 'static>(
    shared: &Shared,
    which: &'static str,
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
            tracing::error!(which, %error, "HTTP source call did not finish; answered 500.");
            return None;
        }
    };
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!(
        which,
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
