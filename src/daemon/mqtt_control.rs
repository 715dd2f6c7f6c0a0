//! MQTT commands into the daemon: the publisher hands every message on the
//! command topics to a bounded queue (its callback never blocks the MQTT
//! thread); the `control-mqtt` thread parses each ([`control::mqtt`]),
//! hands requests to the coordinator one at a time, in arrival order, and
//! publishes the answer on `{prefix}/{node}/response`. A refused command is
//! answered and logged; nothing here can stop the daemon.
//!
//! [`control::mqtt`]: crate::control::mqtt

use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Weak};

use crate::control::mqtt::{self, CommandSettings, Parsed};
use crate::control::Controller;
use crate::publish::{Publisher, Topics};

/// Commands waiting for the coordinator. A full queue refuses (and logs)
/// what does not fit: a sender publishing faster than changes apply.
pub const COMMAND_QUEUE: usize = 1024;

/// Subscribes `publisher` to the command topics and starts the thread that
/// answers them. The thread ends when the publisher (and with it the
/// queue's sender) is gone.
pub(super) fn start(
    publisher: &Arc<Publisher>,
    settings: CommandSettings,
    control: super::ControlHandle,
) -> Result<(), std::io::Error> {
    let topics = publisher.topics().clone();
    let weak = Arc::downgrade(publisher);
    let (tx, rx) = mpsc::sync_channel::<(String, Vec<u8>)>(COMMAND_QUEUE);
    std::thread::Builder::new()
        .name("control-mqtt".into())
        .spawn({
            let weak = weak.clone();
            let topics = topics.clone();
            move || {
                for (topic, payload) in rx {
                    answer(&weak, &topics, &settings, &control, &topic, &payload);
                }
            }
        })?;
    let filters = mqtt::subscriptions(&topics);
    publisher.set_command_inbox(
        filters.clone(),
        Box::new(move |topic, payload| match tx.try_send((topic, payload)) {
            Ok(()) => {}
            Err(TrySendError::Full((topic, _))) => {
                tracing::warn!(%topic, queue = COMMAND_QUEUE, "MQTT command refused: too many commands waiting; send them slower.");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }),
    );
    tracing::info!(subscriptions = ?filters, "Accepting MQTT commands.");
    Ok(())
}

fn answer(
    publisher: &Weak<Publisher>,
    topics: &Topics,
    settings: &CommandSettings,
    control: &super::ControlHandle,
    topic: &str,
    payload: &[u8],
) {
    let body = match mqtt::parse(settings, topics, topic, payload) {
        Parsed::NotACommand => {
            tracing::debug!(%topic, "Not a command topic; ignored.");
            return;
        }
        Parsed::Refused {
            status,
            reason,
            request_id,
        } => {
            tracing::warn!(%topic, status, request_id = ?request_id, %reason, "MQTT command refused.");
            mqtt::refusal(topic, request_id.as_ref(), status, &reason)
        }
        Parsed::Request {
            request,
            request_id,
        } => {
            let reply = control.control(request);
            mqtt::response(topic, request_id.as_ref(), &reply)
        }
    };
    let Some(publisher) = publisher.upgrade() else {
        return;
    };
    if let Err(e) = publisher.publish_response(topics.command_response(), body) {
        tracing::warn!(%topic, error = %e, "The answer to an MQTT command was not published.");
    }
}
