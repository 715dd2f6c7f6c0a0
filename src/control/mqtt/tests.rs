use super::*;
use serde_json::json;

fn topics() -> Topics {
    Topics::new("site/fe", "edge-01").unwrap()
}

fn settings() -> CommandSettings {
    CommandSettings::default()
}

fn parse_str(topic: &str, payload: &str) -> Parsed {
    parse(&settings(), &topics(), topic, payload.as_bytes())
}

fn request(topic: &str, payload: &str) -> (ControlRequest, Option<Value>) {
    match parse_str(topic, payload) {
        Parsed::Request {
            request,
            request_id,
        } => (request, request_id),
        other => panic!("{topic} {payload:?}: expected a request, got {other:?}"),
    }
}

fn refused(topic: &str, payload: &str) -> (u16, String, Option<Value>) {
    match parse_str(topic, payload) {
        Parsed::Refused {
            status,
            reason,
            request_id,
        } => {
            assert!(reason.contains(topic), "reason names the topic: {reason}");
            (status, reason, request_id)
        }
        other => panic!("{topic} {payload:?}: expected a refusal, got {other:?}"),
    }
}

fn patch(body: Value) -> ControlRequest {
    ControlRequest::PatchTask {
        camera: "front-door".into(),
        task: "od".into(),
        body,
    }
}

#[test]
fn subscriptions_cover_node_and_task_commands() {
    assert_eq!(
        subscriptions(&topics()),
        [
            "site/fe/edge-01/set/#",
            "site/fe/+/+/set",
            "site/fe/+/+/set/+"
        ]
    );
}

#[test]
fn node_commands_become_requests_with_request_ids() {
    let (r, id) = request(
        "site/fe/edge-01/set/cameras/front-door",
        r#"{"url": "rtsp://cam/1", "request_id": "abc"}"#,
    );
    assert_eq!(
        r,
        ControlRequest::PutCamera {
            camera: "front-door".into(),
            body: json!({"url": "rtsp://cam/1"})
        }
    );
    assert_eq!(id, Some(json!("abc")));

    let (r, id) = request("site/fe/edge-01/set/cameras/front-door/delete", "");
    assert_eq!(
        r,
        ControlRequest::DeleteCamera {
            camera: "front-door".into()
        }
    );
    assert_eq!(id, None);
    let (_, id) = request(
        "site/fe/edge-01/set/cameras/front-door/delete",
        r#"{"request_id": 7}"#,
    );
    assert_eq!(id, Some(json!(7)));

    let (r, id) = request(
        "site/fe/edge-01/set/cameras/front-door/tasks",
        r#"[{"task": "<OD>", "every": "2s"}]"#,
    );
    assert_eq!(
        r,
        ControlRequest::PutTasks {
            camera: "front-door".into(),
            body: json!([{"task": "<OD>", "every": "2s"}])
        }
    );
    assert_eq!(id, None);
    let (r, id) = request(
        "site/fe/edge-01/set/cameras/front-door/tasks",
        r#"{"tasks": [], "request_id": "t1"}"#,
    );
    assert_eq!(
        r,
        ControlRequest::PutTasks {
            camera: "front-door".into(),
            body: json!([])
        }
    );
    assert_eq!(id, Some(json!("t1")));

    assert_eq!(
        request("site/fe/edge-01/set/overrides/clear", "  \n").0,
        ControlRequest::ClearOverrides
    );
    let (r, id) = request("site/fe/edge-01/set/config/get", r#"{"request_id":"c"}"#);
    assert_eq!((r, id), (ControlRequest::Config, Some(json!("c"))));
}

#[test]
fn task_commands_take_json_objects_and_plain_values() {
    let (r, id) = request(
        "site/fe/front-door/od/set",
        r#"{"enabled":false,"text":"a person with a ladder","every":"5s","request_id":42}"#,
    );
    assert_eq!(
        r,
        patch(json!({"enabled": false, "text": "a person with a ladder", "every": "5s"}))
    );
    assert_eq!(id, Some(json!(42)));
    for (payload, enabled) in [
        ("ON", true),
        ("off", false),
        ("true", true),
        ("FALSE", false),
    ] {
        assert_eq!(
            request("site/fe/front-door/od/set", payload),
            (patch(json!({ "enabled": enabled })), None),
            "{payload}"
        );
    }
    for (payload, enabled) in [
        ("ON", true),
        ("Off", false),
        ("true", true),
        ("false", false),
        ("1", true),
        ("0\n", false),
        ("\"on\"", true),
    ] {
        assert_eq!(
            request("site/fe/front-door/od/set/enabled", payload).0,
            patch(json!({ "enabled": enabled })),
            "{payload}"
        );
    }
    assert_eq!(
        request("site/fe/front-door/od/set/text", "a person with a ladder\n").0,
        patch(json!({"text": "a person with a ladder"}))
    );
    assert_eq!(
        request("site/fe/front-door/od/set/text", r#""  quoted ""#).0,
        patch(json!({"text": "  quoted "}))
    );
    assert_eq!(
        request("site/fe/front-door/od/set/every", "5s").0,
        patch(json!({"every": "5s"}))
    );
    // A task by index is passed through; the controller resolves it.
    assert!(matches!(
        request("site/fe/front-door/0/set/every", "1m").0,
        ControlRequest::PatchTask { task, .. } if task == "0"
    ));
}

#[test]
fn malformed_payloads_are_refused_with_reasons() {
    let (status, reason, _) = refused("site/fe/edge-01/set/cameras/front-door", "{not json");
    assert_eq!(status, 400);
    assert!(
        reason.contains("not valid JSON") && reason.contains("line 1"),
        "{reason}"
    );
    let (_, reason, _) = refused("site/fe/edge-01/set/cameras/front-door", "[1]");
    assert!(reason.contains("found an array"), "{reason}");
    let (_, reason, _) = refused("site/fe/edge-01/set/cameras/front-door/tasks", "{}");
    assert!(reason.contains("no tasks"), "{reason}");
    let (_, reason, _) = refused("site/fe/edge-01/set/cameras/front-door/tasks", "\"x\"");
    assert!(reason.contains("found a string"), "{reason}");
    let (_, reason, id) = refused(
        "site/fe/edge-01/set/cameras/front-door/delete",
        r#"{"request_id": "d", "force": true}"#,
    );
    assert!(reason.contains("\"force\""), "{reason}");
    assert_eq!(id, Some(json!("d")));
    let (_, reason, id) = refused("site/fe/edge-01/set/config/get", r#"{"request_id": [1]}"#);
    assert!(reason.contains("request_id is an array"), "{reason}");
    assert_eq!(id, Some(json!([1])));
    let (_, reason, _) = refused("site/fe/edge-01/set/config/get", r#"{"request_id": 1.5}"#);
    assert!(reason.contains("request_id is a number"), "{reason}");

    let bad_utf8 = parse(
        &settings(),
        &topics(),
        "site/fe/front-door/od/set/text",
        &[0xff, 0xfe],
    );
    assert!(
        matches!(&bad_utf8, Parsed::Refused { status: 400, reason, .. } if reason.contains("not UTF-8")),
        "{bad_utf8:?}"
    );
    let (_, reason, _) = refused("site/fe/front-door/od/set", "maybe");
    assert!(
        reason.contains("neither JSON") && reason.contains("ON/OFF"),
        "{reason}"
    );
    let (_, reason, _) = refused("site/fe/front-door/od/set", "5");
    assert!(reason.contains("found a number"), "{reason}");
    let (_, reason, id) = refused("site/fe/front-door/od/set", r#"{"request_id": "x"}"#);
    assert!(reason.contains("no task keys"), "{reason}");
    assert_eq!(id, Some(json!("x")));
    let (_, reason, _) = refused("site/fe/front-door/od/set", "");
    assert!(reason.contains("empty"), "{reason}");
    let (_, reason, _) = refused("site/fe/front-door/od/set/enabled", "yes please");
    assert!(reason.contains("ON, OFF, true, false, 1, 0"), "{reason}");
    let (_, reason, _) = refused("site/fe/front-door/od/set/every", " ");
    assert!(reason.contains("duration"), "{reason}");
}

#[test]
fn unknown_paths_list_the_allowed_ones() {
    for topic in [
        "site/fe/edge-01/set",
        "site/fe/edge-01/set/cameras",
        "site/fe/edge-01/set/cameras/a/b/c",
        "site/fe/edge-01/set/reboot",
    ] {
        let (status, reason, _) = refused(topic, "");
        assert_eq!(status, 404, "{topic}");
        assert!(
            reason.contains("cameras/{id}/delete") && reason.contains("config/get"),
            "{reason}"
        );
    }
    let (status, reason, _) = refused("site/fe/front-door/od/set/region", "[1,2,3,4]");
    assert_eq!(status, 404);
    assert!(
        reason.contains("set/enabled") && reason.contains("set/every"),
        "{reason}"
    );
}

#[test]
fn bad_ids_in_topics_are_refused() {
    let (status, reason, _) = refused("site/fe/edge-01/od/set", "ON");
    assert_eq!(status, 400);
    assert!(reason.contains("is the node id"), "{reason}");
    let (_, reason, _) = refused("site/fe/edge-01/od/set/enabled", "ON");
    assert!(reason.contains("is the node id"), "{reason}");
    let (_, reason, _) = refused("site/fe/edge-01/set/cameras//tasks", "[]");
    assert!(reason.contains("empty"), "{reason}");
    let (_, reason, _) = refused("site/fe/edge-01/set/cameras/edge-01", "{}");
    assert!(reason.contains("node id"), "{reason}");
    let (_, reason, _) = refused("site/fe/status/od/set", "ON");
    assert!(reason.contains("reserved"), "{reason}");
}

#[test]
fn other_topics_are_not_commands() {
    for topic in [
        "site/fe/edge-01/response",
        "site/fe/edge-01/status",
        "site/fe/front-door/od",
        "site/fe/front-door/od/state",
        "site/fe/front-door/set",
        "other/edge-01/set/config/get",
        "site/fed/edge-01/set/config/get",
        "site/fe",
    ] {
        assert_eq!(parse_str(topic, ""), Parsed::NotACommand, "{topic}");
    }
    // Another node's commands are task-shaped only if they look like it.
    assert_eq!(
        parse_str("site/fe/edge-02/set/config/get", ""),
        Parsed::NotACommand
    );
}

#[test]
fn size_is_checked_before_anything_is_parsed() {
    // 1 MB of bytes that are not even UTF-8: refused by size alone.
    let payload = vec![0xffu8; 1_000_000];
    let parsed = parse(
        &settings(),
        &topics(),
        "site/fe/edge-01/set/cameras/front-door",
        &payload,
    );
    match parsed {
        Parsed::Refused {
            status,
            reason,
            request_id,
        } => {
            assert_eq!((status, request_id), (413, None));
            assert!(
                reason.contains("1000000 bytes") && reason.contains("at most 65536"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let exact = CommandSettings {
        max_payload_bytes: 2,
        ..settings()
    };
    assert!(matches!(
        parse(&exact, &topics(), "site/fe/front-door/od/set", b"ON"),
        Parsed::Request { .. }
    ));
    assert!(matches!(
        parse(&exact, &topics(), "site/fe/front-door/od/set", b"OFF"),
        Parsed::Refused { status: 413, .. }
    ));
}

#[test]
fn the_allow_list_and_the_switch_decide_what_is_taken() {
    let only = CommandSettings {
        allow: vec!["{node}/set/config/get".into(), "+/+/set/enabled".into()],
        ..settings()
    };
    let t = topics();
    assert!(matches!(
        parse(&only, &t, "site/fe/edge-01/set/config/get", b""),
        Parsed::Request { .. }
    ));
    assert!(matches!(
        parse(&only, &t, "site/fe/front-door/od/set/enabled", b"ON"),
        Parsed::Request { .. }
    ));
    match parse(&only, &t, "site/fe/front-door/od/set/text", b"x") {
        Parsed::Refused { status, reason, .. } => {
            assert_eq!(status, 403);
            assert!(
                reason.contains("not allowed by control.mqtt_allow")
                    && reason.contains("+/+/set/enabled"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let none = CommandSettings {
        allow: vec![],
        ..settings()
    };
    assert!(matches!(
        parse(&none, &t, "site/fe/edge-01/set/config/get", b""),
        Parsed::Refused { status: 403, .. }
    ));
    let off = CommandSettings {
        enabled: false,
        ..settings()
    };
    match parse(&off, &t, "site/fe/edge-01/set/config/get", b"") {
        Parsed::Refused { status, reason, .. } => {
            assert_eq!(status, 403);
            assert!(reason.contains("control.mqtt = false"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn filters_are_checked() {
    for ok in [
        "#",
        "{node}/set/#",
        "+/+/set/enabled",
        "{node}/set/cameras/+",
    ] {
        assert_eq!(check_filter(ok), Ok(()), "{ok}");
    }
    for (bad, why) in [
        ("", "empty"),
        ("/a", "empty level"),
        ("a//b", "empty level"),
        ("a/", "empty level"),
        ("a/#/b", "last"),
        ("a#", "whole level"),
        ("a/b+", "whole level"),
        ("{camera}/set", "only {node}"),
    ] {
        let err = check_filter(bad).expect_err(bad);
        assert!(err.contains(why), "{bad}: {err}");
    }
}

fn section(text: &str) -> (Option<CommandSettings>, Vec<String>) {
    use ::config::{FileFormat, Source};
    let mut root = ::config::Value::new(None, ::config::ValueKind::Table(Default::default()));
    ::config::File::from_str(text, FileFormat::Toml)
        .collect_to(&mut root)
        .unwrap();
    let mut errors = Errors::new("test.toml", "FLORENCE_EDGE");
    let mut fields = Fields::of(root, "", &mut errors).unwrap();
    let control = fields.table("control", &mut errors).unwrap();
    let settings = CommandSettings::from_section(control, &mut errors);
    (
        settings,
        errors.list.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn the_control_section_is_read_with_every_problem() {
    assert_eq!(section(""), (Some(CommandSettings::default()), vec![]));
    let (settings, errors) = section(
        "[control]\nmqtt = false\nmqtt_allow = [\"{node}/set/#\"]\nmax_command_bytes = 2048\n",
    );
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(
        settings,
        Some(CommandSettings {
            enabled: false,
            allow: vec!["{node}/set/#".into()],
            max_payload_bytes: 2048,
        })
    );
    let (_, errors) = section(
            "[control]\nmqtt = 1\nmqtt_allow = [\"a/#/b\", 3]\nmax_command_bytes = 100\nmqtt_alow = []\n",
        );
    let all = errors.join("\n");
    for needle in [
        "control.mqtt: expected a boolean",
        "control.mqtt_allow[0]: \"a/#/b\" is not a topic filter",
        "control.mqtt_allow[1]: expected a string",
        "control.max_command_bytes: 100 is out of range",
        "control.mqtt_alow: unknown key; did you mean `mqtt_allow`?",
    ] {
        assert!(all.contains(needle), "{needle} missing in:\n{all}");
    }
    let (settings, errors) = section("[control]\nmqtt_allow = \"#\"\n");
    assert_eq!(settings, None);
    assert!(errors[0].contains("expected an array"), "{errors:?}");
}

#[test]
fn responses_carry_the_envelope_and_the_reply_fields() {
    let reply = ControlReply::ok(json!({"revision": 3, "status": "ignored"}));
    let out: Value =
        serde_json::from_slice(&response("fe/n/set/config/get", Some(&json!("r1")), &reply))
            .unwrap();
    assert_eq!(
        out,
        json!({"request_id": "r1", "topic": "fe/n/set/config/get", "status": 200, "ok": true, "revision": 3})
    );
    let problems = ControlReply::problems(vec![super::super::Problem {
        key: "tasks[0].every".into(),
        reason: "too short".into(),
    }]);
    let out: Value = serde_json::from_slice(&response("t", None, &problems)).unwrap();
    assert_eq!(out["request_id"], Value::Null);
    assert_eq!(
        (out["status"].clone(), out["ok"].clone()),
        (json!(422), json!(false))
    );
    assert_eq!(out["problems"][0]["key"], "tasks[0].every");
    let out: Value =
        serde_json::from_slice(&response("t", None, &ControlReply::ok(json!([1, 2])))).unwrap();
    assert_eq!(out["body"], json!([1, 2]));
    let out: Value =
        serde_json::from_slice(&refusal("t", Some(&json!(5)), 413, "too big")).unwrap();
    assert_eq!(
        out,
        json!({"request_id": 5, "topic": "t", "status": 413, "ok": false, "error": "too big"})
    );
}
