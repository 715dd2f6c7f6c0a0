//! The publisher's control side against a real mosquitto on 127.0.0.1:
//! commands published by another client reach the command inbox (a 1 MB one
//! too, without dropping the connection, so `control::mqtt` can refuse it by
//! size and answer), retained commands are ignored, responses reach a
//! subscriber, and retained values reach late subscribers and survive a
//! broker restart that lost them.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use florence_edge::control::mqtt::{self, CommandSettings, Parsed};
use florence_edge::control::{ControlReply, ControlRequest};
use florence_edge::publish::Publisher;
use mosquitto::{BrokerOptions, Mosquitto, Subscriber, SubscriberOptions};

const WAIT: Duration = Duration::from_secs(5);

type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Sets an inbox on `publisher` that records what arrives.
fn collect_commands(publisher: &Publisher) -> Inbox {
    let inbox: Inbox = Arc::default();
    let sink = inbox.clone();
    publisher.set_command_inbox(
        mqtt::subscriptions(publisher.topics()),
        Box::new(move |topic, payload| sink.lock().unwrap().push((topic, payload))),
    );
    inbox
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A second client that publishes commands (up to 16 MiB).
struct Commander {
    client: rumqttc::Client,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Commander {
    fn start(port: u16) -> Commander {
        let mut options = rumqttc::MqttOptions::new(
            format!("test-commander-{}", mosquitto::free_port()),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(1 << 16, 1 << 24);
        let (client, mut connection) = rumqttc::Client::new(options, 16);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Err(_)) = connection.recv_timeout(Duration::from_millis(50)) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        Commander {
            client,
            stop,
            thread: Some(thread),
        }
    }

    fn send(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
            .expect("queue a publish");
    }
}

impl Drop for Commander {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `topic` until the inbox holds a message on it: the subscription
/// is in place once one arrives.
fn wait_subscribed(commander: &Commander, inbox: &Inbox, topic: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        commander.send(topic, "", false);
        let seen = Instant::now() + Duration::from_millis(200);
        while Instant::now() < seen {
            if inbox.lock().unwrap().iter().any(|(t, _)| t == topic) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            Instant::now() < deadline,
            "the publisher never subscribed to {topic}"
        );
    }
}

fn start_publisher(broker: &Mosquitto, spool: &tempfile::TempDir) -> Publisher {
    Publisher::start(
        &mosquitto::test_settings(&broker.url(), spool.path()),
        "edge-01",
    )
    .expect("start the publisher")
}

#[test]
fn commands_reach_the_inbox_and_responses_reach_subscribers() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let commander = Commander::start(broker.port());
    // A retained command, stored before the publisher subscribes: the broker
    // hands it over on subscription, and it must be ignored.
    commander.send("fe-test/stale/od/set", "OFF", true);
    Subscriber::start(
        broker.port(),
        "fe-test/stale/#",
        SubscriberOptions::default(),
    )
    .wait_for(WAIT, "the retained command stored", |m| !m.is_empty());
    let responses = Subscriber::start(
        broker.port(),
        "fe-test/edge-01/response",
        SubscriberOptions::default(),
    );
    let spool = tempfile::tempdir().expect("spool dir");
    let publisher = start_publisher(&broker, &spool);
    let inbox = collect_commands(&publisher);
    let probe = "fe-test/edge-01/set/config/get";
    wait_subscribed(&commander, &inbox, probe);
    let commands = || -> Vec<(String, Vec<u8>)> {
        inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t != probe)
            .cloned()
            .collect()
    };

    let big = vec![b'x'; 1_000_000];
    let sent: Vec<(&str, Vec<u8>)> = vec![
        (
            "fe-test/edge-01/set/cameras/front-door",
            br#"{"url": "rtsp://192.0.2.10/stream1", "request_id": "r1"}"#.to_vec(),
        ),
        ("fe-test/front-door/od/set", b"OFF".to_vec()),
        (
            "fe-test/front-door/open_vocabulary_detection/set/text",
            b"a person with a ladder".to_vec(),
        ),
        ("fe-test/edge-01/set/cameras/big", big.clone()),
        // Not a command topic: never subscribed, never delivered.
        ("fe-test/front-door/od/state", b"{}".to_vec()),
        ("fe-test/edge-01/set/overrides/clear", b"".to_vec()),
    ];
    for (topic, payload) in &sent {
        commander.send(topic, payload.clone(), false);
    }
    let expected: Vec<(String, Vec<u8>)> = sent
        .iter()
        .filter(|(t, _)| !t.ends_with("/state"))
        .map(|(t, p)| (t.to_string(), p.clone()))
        .collect();
    wait_until("every command in the inbox", || {
        commands().len() >= expected.len()
    });
    // Nothing but the commands, in order, byte for byte.
    std::thread::sleep(Duration::from_millis(100));
    let got = commands();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.0, e.0);
        assert!(
            g.1 == e.1,
            "{}: {} bytes, sent {}",
            g.0,
            g.1.len(),
            e.1.len()
        );
    }
    assert!(
        !inbox
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _)| t == "fe-test/stale/od/set"),
        "a retained command reached the inbox"
    );

    // What the daemon does with them: parse, and answer.
    let settings = CommandSettings::default();
    let topics = publisher.topics().clone();
    let parsed: Vec<Parsed> = got
        .iter()
        .map(|(t, p)| mqtt::parse(&settings, &topics, t, p))
        .collect();
    assert_eq!(
        parsed[0],
        Parsed::Request {
            request: ControlRequest::PutCamera {
                camera: "front-door".into(),
                body: serde_json::json!({"url": "rtsp://192.0.2.10/stream1"}),
            },
            request_id: Some(serde_json::json!("r1")),
        }
    );
    assert!(
        matches!(&parsed[3], Parsed::Refused { status: 413, .. }),
        "{:?}",
        parsed[3]
    );
    for (command, parsed) in got.iter().zip(&parsed) {
        let payload = match parsed {
            Parsed::Request { request_id, .. } => mqtt::response(
                &command.0,
                request_id.as_ref(),
                &ControlReply::ok(serde_json::json!({"revision": 2})),
            ),
            Parsed::Refused {
                status,
                reason,
                request_id,
            } => mqtt::refusal(&command.0, request_id.as_ref(), *status, reason),
            Parsed::NotACommand => panic!("{} is a command", command.0),
        };
        assert!(publisher
            .publish_response(topics.command_response(), payload)
            .expect("response"));
    }
    let answers = responses.wait_for(WAIT, "an answer to every command", |m| {
        m.len() >= expected.len()
    });
    let first = answers[0].json();
    assert_eq!(
        (
            first["request_id"].clone(),
            first["topic"].clone(),
            first["status"].clone(),
            first["ok"].clone(),
            first["revision"].clone()
        ),
        (
            serde_json::json!("r1"),
            serde_json::json!("fe-test/edge-01/set/cameras/front-door"),
            serde_json::json!(200),
            serde_json::json!(true),
            serde_json::json!(2)
        )
    );
    let refusal = answers[3].json();
    assert_eq!(refusal["status"], 413);
    assert!(refusal["error"]
        .as_str()
        .expect("error")
        .contains("control.max_command_bytes"));
    assert!(answers.iter().all(|a| !a.retain));
    wait_until("responses acknowledged", || {
        publisher.stats().snapshot().responses_published == expected.len() as u64
    });

    let stats = publisher.stats().snapshot();
    assert_eq!(stats.commands_received, inbox.lock().unwrap().len() as u64);
    // The 1 MB command did not cost the connection.
    assert_eq!(
        (stats.connects, stats.connection_failures),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.responses_dropped, 0);

    publisher.shutdown(Duration::from_secs(2));
}

#[test]
fn retained_values_reach_late_subscribers_and_survive_a_broker_restart() {
    let mut broker = Mosquitto::start(BrokerOptions::default());
    let spool = tempfile::tempdir().expect("spool dir");
    let publisher = start_publisher(&broker, &spool);
    let inbox = collect_commands(&publisher);
    let state = "fe-test/front-door/od/state";
    let gone = "fe-test/front-door/caption/state";
    // The newest value per topic wins, also before the broker is reached.
    publisher
        .publish_retained(state.into(), br#"{"enabled": true}"#.to_vec())
        .expect("retained");
    publisher
        .publish_retained(state.into(), br#"{"enabled": false}"#.to_vec())
        .expect("retained");
    publisher
        .publish_retained(gone.into(), b"{}".to_vec())
        .expect("retained");
    let late = Subscriber::start(
        broker.port(),
        "fe-test/front-door/#",
        SubscriberOptions::default(),
    );
    late.wait_for(WAIT, "both retained values", |m| {
        m.iter().any(|r| r.topic == gone)
            && m.iter()
                .any(|r| r.topic == state && r.json()["enabled"] == false)
    });
    drop(late);
    // A clear: sent once, then forgotten.
    let before = publisher.stats().snapshot().retained_published;
    publisher
        .publish_retained(gone.into(), Vec::new())
        .expect("clear");
    wait_until("the clear acknowledged", || {
        publisher.stats().snapshot().retained_published == before + 1
    });
    let late = Subscriber::start(
        broker.port(),
        "fe-test/front-door/#",
        SubscriberOptions::default(),
    );
    late.wait_for(WAIT, "the retained state", |m| {
        m.iter().any(|r| r.topic == state)
    });
    std::thread::sleep(Duration::from_millis(200));
    let got: Vec<_> = late.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].retain);
    assert_eq!(got[0].json(), serde_json::json!({"enabled": false}));
    drop(late);
    assert!(publisher
        .publish_retained("fe-test/+/x".into(), b"1".to_vec())
        .is_err());

    // Without persistence the restarted broker has lost every retained
    // message; the publisher sends its values again, and subscribes again.
    broker.stop();
    wait_until("the publisher to notice the outage", || {
        !publisher.stats().is_connected()
    });
    assert!(!publisher
        .publish_response("fe-test/edge-01/response".into(), b"{}".to_vec())
        .expect("response"));
    assert_eq!(publisher.stats().snapshot().responses_dropped, 1);
    broker.restart();
    wait_until("the reconnect", || {
        publisher.stats().snapshot().connects == 2
    });
    let after = Subscriber::start(
        broker.port(),
        "fe-test/front-door/#",
        SubscriberOptions::default(),
    );
    after.wait_for(WAIT, "the retained state again", |m| {
        m.iter().any(|r| r.topic == state && r.retain)
    });
    std::thread::sleep(Duration::from_millis(200));
    let got = after.messages();
    assert_eq!(got.len(), 1, "the clear is not sent again: {got:?}");
    assert_eq!(got[0].json(), serde_json::json!({"enabled": false}));

    let commander = Commander::start(broker.port());
    wait_subscribed(&commander, &inbox, "fe-test/front-door/od/set/enabled");
    publisher.shutdown(Duration::from_secs(2));
}
