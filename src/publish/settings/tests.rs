use super::*;

fn with_spool() -> MqttSettings {
    MqttSettings {
        spool: SpoolSettings {
            dir: "/tmp/spool".into(),
            max_messages: 10,
        },
        ..MqttSettings::default()
    }
}

#[test]
fn defaults_validate() {
    let config = MqttSettings::default().validate("edge-01").expect("valid");
    assert_eq!(
        config.broker,
        BrokerAddress {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false
        }
    );
    assert_eq!(config.client_id, "florence-edge-edge-01");
    assert_eq!(config.settings.keep_alive, Duration::from_secs(30));
    assert_eq!(config.qos, QualityOfService::AtLeastOnce);
    assert_eq!(config.topics.node_status(), "florence-edge/edge-01/status");
    assert_eq!(config.settings.spool.dir, PathBuf::from(DEFAULT_SPOOL_DIR));
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let settings = MqttSettings {
        url: "http://broker".into(),
        keep_alive: Duration::from_millis(500),
        qos: 3,
        topic_prefix: "a/+/b".into(),
        password: Some(PasswordSource::Inline(crate::settings::Secret::new(
            "hunter2",
        ))),
        queue_capacity: 0,
        max_inflight: 0,
        spool: SpoolSettings {
            dir: PathBuf::new(),
            max_messages: 0,
        },
        ..MqttSettings::default()
    };
    let problems = settings.validate("edge/01").expect_err("invalid");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "node.id",
        "mqtt.url",
        "mqtt.username",
        "mqtt.keep_alive",
        "mqtt.qos",
        "mqtt.topic_prefix",
        "mqtt.spool.dir",
        "mqtt.spool.max_messages",
        "mqtt.queue_capacity",
        "mqtt.max_inflight",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let all = join_problems(&problems);
    assert!(!all.contains("hunter2"), "password leaked: {all}");
    assert!(all.contains("allowed: 0, 1 or 2"), "{all}");
}

#[test]
fn broker_urls() {
    assert_eq!(
        parse_broker_url("mqtts://broker.lan").expect("ok"),
        BrokerAddress {
            host: "broker.lan".into(),
            port: 8883,
            tls: true
        }
    );
    assert_eq!(
        parse_broker_url("mqtt://[::1]:1884/").expect("ok"),
        BrokerAddress {
            host: "::1".into(),
            port: 1884,
            tls: false
        }
    );
    let err = parse_broker_url("mqtt://edge:s3cret@broker:1883").expect_err("userinfo");
    assert!(!err.contains("s3cret"));
    assert!(parse_broker_url("mqtt://broker:0").is_err());
    assert!(parse_broker_url("mqtt://broker:99999").is_err());
    assert!(parse_broker_url("mqtt://:1883").is_err());
    assert!(parse_broker_url("mqtt://broker/topic").is_err());
}

#[test]
fn password_file_is_read_and_trimmed_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pass");
    std::fs::write(&path, "s3cret\n").expect("write");
    let settings = MqttSettings {
        username: Some("edge".into()),
        password: Some(PasswordSource::File(path)),
        ..with_spool()
    };
    let config = settings.validate("edge-01").expect("valid");
    assert_eq!(
        config.password.as_ref().map(Password::expose),
        Some("s3cret")
    );
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(!format!("{settings:?}").contains("s3cret"));
}

#[test]
fn tls_files_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let settings = MqttSettings {
        url: "mqtts://127.0.0.1:8883".into(),
        tls: TlsSettings {
            ca_file: Some(not_pem),
            cert_file: Some(dir.path().join("missing.pem")),
            key_file: None,
        },
        ..with_spool()
    };
    let problems = settings.validate("edge-01").expect_err("invalid");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["mqtt.tls.key_file", "mqtt.tls.ca_file"],
        "{problems:?}"
    );

    let plain = MqttSettings {
        tls: TlsSettings {
            ca_file: Some("/x.pem".into()),
            ..TlsSettings::default()
        },
        ..with_spool()
    };
    let problems = plain.validate("edge-01").expect_err("tls files on mqtt://");
    assert_eq!(problems[0].key, "mqtt.tls");
}

#[test]
fn keep_alive_is_whole_seconds_and_never_below_one_unless_off() {
    for bad in [
        Duration::from_millis(500),
        Duration::from_millis(1500),
        Duration::from_secs(70_000),
    ] {
        let settings = MqttSettings {
            keep_alive: bad,
            ..with_spool()
        };
        let problems = settings.check("n");
        assert_eq!(problems[0].key, "mqtt.keep_alive", "{bad:?}");
    }
    for good in [
        Duration::ZERO,
        Duration::from_secs(90),
        Duration::from_secs(1),
    ] {
        let settings = MqttSettings {
            keep_alive: good,
            ..with_spool()
        };
        assert_eq!(
            settings.validate("n").expect("valid").settings.keep_alive,
            good
        );
    }
}
