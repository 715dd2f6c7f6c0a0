//! The control routes (`/api/config`, `/api/cameras/{id}…`, `/api/overrides`):
//! what request each maps to, and the refusals before a source call.

use super::*;

/// Sends `method path` with a JSON body (`Content-Type: application/json`,
/// `Content-Length` set; no body when `body` is empty) and the token, if
/// any.
fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let content_type = (!body.is_empty()).then_some("application/json");
    call_typed(addr, method, path, token, content_type, body)
}

fn call_typed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> Answer {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let content_type = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    send(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}{content_type}{length}\r\n{body}")
            .as_bytes(),
    )
}

#[test]
fn control_routes_map_to_control_requests() {
    let source = FakeSource::new();
    let server = start(Some(TOKEN), &source);
    let addr = server.local_addr();
    let t = Some(TOKEN);
    let camera = json!({"id": "front door", "url": "rtsp://cam/1", "tasks": []});
    let tasks = json!([{"task": "<OD>", "every": "2s"}]);
    let patch = json!({"enabled": false, "text": null});
    let cases = [
        ("GET", "/api/config", "", ControlRequest::Config),
        (
            "GET",
            "/api/cameras/front-door?verbose=1",
            "",
            ControlRequest::GetCamera {
                camera: "front-door".into(),
            },
        ),
        (
            "PUT",
            "/api/cameras/front%20door",
            &camera.to_string(),
            ControlRequest::PutCamera {
                camera: "front door".into(),
                body: camera.clone(),
            },
        ),
        (
            "DELETE",
            "/api/cameras/caf%C3%A9",
            "",
            ControlRequest::DeleteCamera {
                camera: "café".into(),
            },
        ),
        (
            "PUT",
            "/api/cameras/garage/tasks",
            &tasks.to_string(),
            ControlRequest::PutTasks {
                camera: "garage".into(),
                body: tasks.clone(),
            },
        ),
        (
            "PATCH",
            "/api/cameras/garage/tasks/0",
            &patch.to_string(),
            ControlRequest::PatchTask {
                camera: "garage".into(),
                task: "0".into(),
                body: patch.clone(),
            },
        ),
        (
            "PATCH",
            "/api/cameras/a%2Bb%25/tasks/open_vocabulary_detection_2",
            "{}",
            ControlRequest::PatchTask {
                camera: "a+b%".into(),
                task: "open_vocabulary_detection_2".into(),
                body: json!({}),
            },
        ),
        (
            "DELETE",
            "/api/overrides",
            "",
            ControlRequest::ClearOverrides,
        ),
    ];
    for (method, path, body, expected) in cases {
        let answer = call(addr, method, path, t, body);
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
        assert_eq!(answer.header("Content-Type"), Some("application/json"));
        assert_eq!(answer.json(), json!({"applied": true}), "{method} {path}");
        assert_eq!(source.take_controls(), [expected], "{method} {path}");
    }
    // HEAD reads like GET, without the body; a body sent with DELETE is
    // ignored.
    let head = send(
        addr,
        format!("HEAD /api/cameras/x HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
    );
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(
        source.take_controls(),
        [ControlRequest::GetCamera { camera: "x".into() }]
    );
    let answer = call(addr, "DELETE", "/api/overrides", t, "not json at all");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(source.take_controls(), [ControlRequest::ClearOverrides]);
    // The camera list stays the source's cameras(), not a control request.
    let list = get(addr, "/api/cameras", t);
    assert_eq!(
        list.json(),
        json!([{"id": "front-door", "state": "streaming"}])
    );
    assert!(source.take_controls().is_empty());
}

#[test]
fn bad_path_segments_are_refused_naming_the_segment() {
    let source = FakeSource::new();
    let server = start(None, &source);
    let addr = server.local_addr();
    let cases = [
        (
            "GET",
            "/api/cameras/a%2Fb",
            "",
            "the camera id in the path \"a/b\" contains '/'",
        ),
        (
            "GET",
            "/api/cameras/",
            "",
            "the camera id in the path is empty",
        ),
        (
            "PUT",
            "/api/cameras//tasks",
            "[]",
            "the camera id in the path is empty",
        ),
        (
            "PATCH",
            "/api/cameras/x/tasks/",
            "{}",
            "the task in the path is empty",
        ),
        (
            "PATCH",
            "/api/cameras/x/tasks/a%2f",
            "{}",
            "the task in the path \"a/\" contains '/'",
        ),
        (
            "DELETE",
            "/api/cameras/%FF",
            "",
            "the camera id in the path \"%FF\" is not UTF-8 once percent-decoded",
        ),
    ];
    for (method, path, body, message) in cases {
        let answer = call(addr, method, path, None, body);
        assert_eq!(answer.status, 400, "{method} {path}: {}", answer.body);
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.starts_with(message) && error.contains("without '/'"),
            "{method} {path}: {error}"
        );
    }
    // More segments than a route has, or another word than tasks: 404.
    for path in [
        "/api/cameras/x/tasks/0/more",
        "/api/cameras/x/task",
        "/api/cameras/x/",
    ] {
        let answer = call(addr, "GET", path, None, "");
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.json()["paths"], json!(PATHS));
    }
    assert!(source.take_controls().is_empty());
}

#[test]
fn control_routes_need_the_token_for_reads_and_writes() {
    let source = FakeSource::new();
    let limits = HttpLimits {
        body_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    };
    let server =
        HttpServer::start_with_limits(localhost(), Some(TOKEN.into()), source.clone(), limits)
            .expect("server starts");
    let addr = server.local_addr();
    let wrong = format!("{TOKEN}x");
    let routes = [
        ("GET", "/api/config", ""),
        ("GET", "/api/cameras/x", ""),
        ("HEAD", "/api/cameras/x", ""),
        ("PUT", "/api/cameras/x", "{}"),
        ("DELETE", "/api/cameras/x", ""),
        ("PUT", "/api/cameras/x/tasks", "[]"),
        ("PATCH", "/api/cameras/x/tasks/0", "{}"),
        ("DELETE", "/api/overrides", ""),
    ];
    for (method, path, body) in routes {
        for token in [None, Some(wrong.as_str()), Some("")] {
            let answer = call(addr, method, path, token, body);
            assert_eq!(answer.status, 401, "{method} {path} {token:?}");
            assert_eq!(
                answer.header("WWW-Authenticate"),
                Some("Bearer realm=\"florence-edge\"")
            );
        }
        assert_eq!(call(addr, method, path, Some(TOKEN), body).status, 200);
    }
    assert_eq!(source.take_controls().len(), routes.len());

    // The token is checked from the head, before the body is read: a
    // client announcing a body it never sends is answered 401 at once, not
    // 408 after the body timeout.
    let started = Instant::now();
    let answer = send(
        addr,
        b"PUT /api/cameras/x HTTP/1.1\r\nContent-Type: application/json\r\n\
          Content-Length: 100000\r\n\r\n{",
    );
    assert_eq!(answer.status, 401);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(source.take_controls().is_empty());
}

#[test]
fn a_method_a_path_does_not_take_gets_405_with_its_allow_list() {
    let source = FakeSource::new();
    let server = start(Some(TOKEN), &source);
    let addr = server.local_addr();
    let cases = [
        ("/api/config", "PUT", "GET, HEAD"),
        ("/api/cameras", "DELETE", "GET, HEAD"),
        ("/api/cameras/x", "PATCH", "GET, HEAD, PUT, DELETE"),
        ("/api/cameras/x", "POST", "GET, HEAD, PUT, DELETE"),
        ("/api/cameras/x/tasks", "GET", "PUT"),
        ("/api/cameras/x/tasks/0", "PUT", "PATCH"),
        ("/api/overrides", "GET", "DELETE"),
        ("/healthz", "DELETE", "GET, HEAD"),
    ];
    for (path, method, allow) in cases {
        // Without the token: 405 comes first (it reveals nothing).
        let answer = call(addr, method, path, None, "{}");
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.header("Allow"), Some(allow), "{method} {path}");
        let listed: Vec<String> = allow.split(", ").map(String::from).collect();
        assert_eq!(answer.json()["allow"], json!(listed), "{method} {path}");
        assert_eq!(
            answer.json()["error"],
            format!("method {method} is not allowed on {path}")
        );
    }
    assert!(source.take_controls().is_empty());
}

#[test]
fn control_bodies_over_the_limit_get_413() {
    let source = FakeSource::new();
    let limits = HttpLimits {
        max_body_bytes: 1024,
        ..HttpLimits::default()
    };
    let server = HttpServer::start_with_limits(localhost(), None, source.clone(), limits)
        .expect("server starts");
    let addr = server.local_addr();
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(2000));
    let expected = json!({
        "error": "the request body is larger than 1024 bytes (the endpoint's max_body_bytes)",
        "max_body_bytes": 1024,
    });
    // Declared by Content-Length: refused without reading.
    let answer = call(addr, "PUT", "/api/cameras/x", None, &big);
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json(), expected);
    // Chunked, its length unknown until read: refused once over the limit.
    let chunks: String = big
        .as_bytes()
        .chunks(500)
        .map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
        .collect();
    let answer = send(
        addr,
        format!(
            "PATCH /api/cameras/x/tasks/0 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json(), expected);
    // At the limit exactly, it is taken.
    let fits = format!("{{\"name\": \"{}\"}}", "a".repeat(1024 - 12));
    assert_eq!(fits.len(), 1024);
    let answer = call(addr, "PUT", "/api/cameras/x", None, &fits);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(source.take_controls().len(), 1);
}

#[test]
fn a_control_body_that_does_not_arrive_in_time_gets_408() {
    let source = FakeSource::new();
    let limits = HttpLimits {
        body_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = HttpServer::start_with_limits(localhost(), None, source.clone(), limits)
        .expect("server starts");
    let answer = send(
        server.local_addr(),
        b"PUT /api/cameras/x HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"url\":",
    );
    assert_eq!(answer.status, 408);
    assert_eq!(
        answer.json()["error"],
        "request body not received within 300ms"
    );
    assert!(source.take_controls().is_empty());
}

#[test]
fn control_bodies_must_be_json() {
    let source = FakeSource::new();
    let server = start(None, &source);
    let addr = server.local_addr();
    let error_of = |answer: &Answer| {
        answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Content-Type: JSON with parameters, any case, or none; not another.
    for content_type in [
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        None,
    ] {
        let answer = call_typed(addr, "PUT", "/api/cameras/x", None, content_type, "{}");
        assert_eq!(answer.status, 200, "{content_type:?}: {}", answer.body);
    }
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let answer = call_typed(
            addr,
            "PUT",
            "/api/cameras/x",
            None,
            Some(content_type),
            "{}",
        );
        assert_eq!(answer.status, 415, "{content_type}");
        assert_eq!(
            error_of(&answer),
            format!("Content-Type \"{content_type}\" is not supported (allowed: application/json)")
        );
    }
    assert_eq!(source.take_controls().len(), 3);

    // Invalid JSON: serde_json's message, with line and column.
    let answer = call(addr, "PUT", "/api/cameras/x", None, "{\"url\": }");
    assert_eq!(answer.status, 400);
    assert_eq!(
        error_of(&answer),
        "the request body is not valid JSON: expected value at line 1 column 9"
    );
    let answer = call(
        addr,
        "PATCH",
        "/api/cameras/x/tasks/od",
        None,
        "{\n\"every\": 2s}",
    );
    assert_eq!(answer.status, 400);
    assert!(
        error_of(&answer).ends_with("at line 2 column 11"),
        "{}",
        error_of(&answer)
    );

    // The wrong kind of JSON, or none.
    let cases = [
        (
            "PUT",
            "/api/cameras/x",
            "[]",
            "PUT /api/cameras/{id} takes a JSON object (a camera table), not an array",
        ),
        (
            "PUT",
            "/api/cameras/x/tasks",
            "{\"task\": \"<OD>\"}",
            "PUT /api/cameras/{id}/tasks takes a JSON array (the camera's task tables), not an object",
        ),
        (
            "PATCH",
            "/api/cameras/x/tasks/0",
            "\"off\"",
            "PATCH /api/cameras/{id}/tasks/{task} takes a JSON object (keys of the task), not a string",
        ),
        (
            "PUT",
            "/api/cameras/x",
            "",
            "the request body is empty; PUT /api/cameras/{id} takes a JSON object (a camera table)",
        ),
        (
            "PATCH",
            "/api/cameras/x/tasks/0",
            " \r\n",
            "the request body is empty; PATCH /api/cameras/{id}/tasks/{task} takes a JSON object \
             (keys of the task)",
        ),
    ];
    for (method, path, body, message) in cases {
        let answer = call(addr, method, path, None, body);
        assert_eq!(answer.status, 400, "{method} {path} {body:?}");
        assert_eq!(error_of(&answer), message);
    }
    assert!(source.take_controls().is_empty());
}

#[test]
fn the_sources_reply_is_the_answer() {
    let source = FakeSource::new();
    let server = start(None, &source);
    let addr = server.local_addr();
    let refused = ControlReply::problems(vec![Problem {
        key: "tasks[0].every".into(),
        reason: "must be at least 100ms".into(),
    }]);
    *source.control_reply.lock().expect("reply") = refused.clone();
    let answer = call(
        addr,
        "PATCH",
        "/api/cameras/x/tasks/0",
        None,
        "{\"every\": \"1ms\"}",
    );
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json(), refused.body);

    *source.control_reply.lock().expect("reply") =
        ControlReply::error(404, "no camera \"nope\" (cameras: front-door)");
    let answer = call(addr, "GET", "/api/cameras/nope", None, "");
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.json(),
        json!({"error": "no camera \"nope\" (cameras: front-door)"})
    );

    // A status HTTP cannot carry is a bug in the source: 500.
    *source.control_reply.lock().expect("reply") = ControlReply {
        status: 42,
        body: json!({}),
    };
    let answer = call(addr, "GET", "/api/config", None, "");
    assert_eq!(answer.status, 500);
    assert_eq!(source.take_controls().len(), 3);
}

/// A source that leaves `control` to the trait's default.
struct WithoutControl;

impl HttpSource for WithoutControl {
    fn metrics(&self) -> String {
        String::new()
    }
    fn health(&self) -> Health {
        Health::ok("up")
    }
    fn readiness(&self) -> Health {
        Health::ok("ready")
    }
    fn cameras(&self) -> serde_json::Value {
        json!([])
    }
}

#[test]
fn a_source_without_control_answers_404() {
    let server =
        HttpServer::start(localhost(), None, Arc::new(WithoutControl)).expect("server starts");
    let addr = server.local_addr();
    for (method, path, body) in [
        ("GET", "/api/config", ""),
        ("PUT", "/api/cameras/x", "{}"),
        ("DELETE", "/api/overrides", ""),
    ] {
        let answer = call(addr, method, path, None, body);
        assert_eq!(answer.status, 404, "{method} {path}");
        assert_eq!(answer.json(), json!({"error": NO_CONTROL}));
    }
    assert_eq!(get(addr, "/api/cameras", None).status, 200);
}

#[test]
fn body_limits_are_validated() {
    let source: Arc<dyn HttpSource> = FakeSource::new();
    let limits = HttpLimits {
        max_body_bytes: 1023,
        ..HttpLimits::default()
    };
    let error = HttpServer::start_with_limits(localhost(), None, source.clone(), limits)
        .expect_err("limits refused");
    assert_eq!(
        error.to_string(),
        "invalid HTTP server limits: max_body_bytes = 1023 (allowed: 1024 or more)"
    );
    let limits = HttpLimits {
        body_timeout: Duration::ZERO,
        ..HttpLimits::default()
    };
    let error = HttpServer::start_with_limits(localhost(), None, source, limits)
        .expect_err("limits refused");
    assert!(error.to_string().contains("zero timeout"), "{error}");
    assert_eq!(HttpLimits::default().max_body_bytes, 1024 * 1024);
}
