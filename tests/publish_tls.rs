//! TLS (rustls) against mosquitto's TLS listener with certificates generated
//! by the test, and the failures an operator meets first: a wrong password and
//! a wrong CA. Both must give a clear error and back off, never crash or spin.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::time::{Duration, Instant};

use florence_edge::publish::settings::TlsSettings;
use florence_edge::publish::{MqttSettings, Publisher};
use florence_edge::settings::{PasswordSource, Secret};
use mosquitto::{
    BrokerOptions, BrokerTls, Mosquitto, Subscriber, SubscriberOptions, TestCertificates,
};

const USER: (&str, &str) = ("edge", "correct horse");

fn broker(certs: &TestCertificates) -> Mosquitto {
    Mosquitto::start(BrokerOptions {
        tls: Some(BrokerTls {
            ca_file: certs.ca.clone(),
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            require_client_certificate: true,
        }),
        users: vec![
            (USER.0.into(), USER.1.into()),
            ("recorder".into(), "r".into()),
        ],
        persistence: false,
    })
}

fn recorder(broker: &Mosquitto) -> Subscriber {
    Subscriber::start(
        broker.port(),
        "fe-test/#",
        SubscriberOptions {
            credentials: Some(("recorder".into(), "r".into())),
            ..SubscriberOptions::default()
        },
    )
}

fn tls_settings(
    url: &str,
    spool: &std::path::Path,
    certs: &TestCertificates,
    ca: &std::path::Path,
) -> MqttSettings {
    let password_file = spool.join("password");
    std::fs::write(&password_file, format!("{}\n", USER.1)).expect("password file");
    MqttSettings {
        username: Some(USER.0.into()),
        password: Some(PasswordSource::File(password_file)),
        tls: TlsSettings {
            ca_file: Some(ca.to_owned()),
            cert_file: Some(certs.client_cert.clone()),
            key_file: Some(certs.client_key.clone()),
        },
        ..mosquitto::test_settings(url, &spool.join("spool"))
    }
}

/// Waits `span`, then checks the publisher never connected, failed a bounded
/// number of times (backoff 200 ms → 1 s), and explains why.
fn assert_backs_off_with(
    publisher: &Publisher,
    span: Duration,
    expect_in_error: &[&str],
) -> String {
    let start = Instant::now();
    while start.elapsed() < span {
        assert!(!publisher.stats().is_connected());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = publisher.stats().snapshot();
    assert_eq!(stats.connects, 0);
    // 3 s with delays of at least 100, 200, 400, 500, 500 … ms: at most ~9 attempts.
    assert!((2..=10).contains(&stats.connection_failures), "{stats:?}");
    let error = stats.last_connection_error.expect("an error is recorded");
    for needle in expect_in_error {
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
    assert!(!error.contains(USER.1), "password leaked: {error}");
    error
}

#[test]
fn mqtts_with_client_certificate_and_password_file_delivers() {
    let certs = TestCertificates::generate();
    let broker = broker(&certs);
    let sub = recorder(&broker);
    let dir = tempfile::tempdir().expect("dir");
    let publisher = Publisher::start(
        &tls_settings(&broker.tls_url(), dir.path(), &certs, &certs.ca),
        "edge-tls",
    )
    .expect("start");
    publisher
        .try_publish_result(mosquitto::od_result("edge-tls", "cam", 0, 1))
        .expect("queued");
    let got = sub.wait_for(Duration::from_secs(10), "online and a result", |m| {
        m.iter()
            .any(|r| r.topic == "fe-test/edge-tls/status" && r.text() == "online")
            && m.iter().any(|r| r.topic == "fe-test/cam/od")
    });
    let result = got
        .iter()
        .find(|r| r.topic == "fe-test/cam/od")
        .expect("result")
        .json();
    assert_eq!(result["node"], "edge-tls");
    let report = publisher.shutdown(Duration::from_secs(5));
    assert!(report.offline_published, "{report:?}");
}

#[test]
fn a_wrong_ca_gives_a_clear_error_and_backoff() {
    let certs = TestCertificates::generate();
    let broker = broker(&certs);
    let dir = tempfile::tempdir().expect("dir");
    let publisher = Publisher::start(
        &tls_settings(&broker.tls_url(), dir.path(), &certs, &certs.other_ca),
        "edge-tls",
    )
    .expect("start");
    publisher
        .try_publish_result(mosquitto::od_result("edge-tls", "cam", 0, 1))
        .expect("queued");
    let error = assert_backs_off_with(
        &publisher,
        Duration::from_secs(3),
        &["TLS", "mqtt.tls.ca_file"],
    );
    eprintln!("wrong CA: {error}");
    // The result waits in the spool instead of being lost.
    assert_eq!(publisher.stats().snapshot().spool_messages, 1);
    let report = publisher.shutdown(Duration::from_secs(1));
    assert_eq!(report.left_in_spool, 1);
}

#[test]
fn a_wrong_password_gives_a_clear_error_and_backoff() {
    let certs = TestCertificates::generate();
    let broker = broker(&certs);
    let dir = tempfile::tempdir().expect("dir");
    let settings = MqttSettings {
        username: Some(USER.0.into()),
        password: Some(PasswordSource::Inline(Secret::new("wrong horse"))),
        ..mosquitto::test_settings(&broker.url(), &dir.path().join("spool"))
    };
    let publisher = Publisher::start(&settings, "edge-pw").expect("start");
    let error = assert_backs_off_with(
        &publisher,
        Duration::from_secs(3),
        &["refused the connection", "mqtt.username"],
    );
    assert!(!error.contains("wrong horse"), "{error}");
    eprintln!("wrong password: {error}");
    publisher.shutdown(Duration::from_secs(1));
}
