//! The shell's side of runtime control: the command subscriptions (kept
//! in step with the inbox's filters across reconnects), incoming commands
//! handed to the inbox, and the answers sent back.

use std::sync::atomic::Ordering;

use rumqttc::{AsyncClient, QoS, SubscribeFilter};

use super::{Origin, Shell};

impl Shell {
    /// A message on a topic we subscribed to: a command goes to the inbox.
    pub(super) fn on_publish(&self, publish: rumqttc::Publish) {
        let inbox = crate::sync::lock(&self.board.inbox).clone();
        match inbox {
            Some(inbox) if inbox.wants(&publish.topic) => {
                if publish.retain {
                    // Sent because we subscribed, so it is a stored command
                    // that every reconnect would apply again.
                    tracing::warn!(
                        topic = %publish.topic,
                        "Ignored a retained MQTT command; publish commands without the retain flag (and clear this one with an empty retained message)."
                    );
                    return;
                }
                self.stats.count_command_received();
                (inbox.deliver)(publish.topic, publish.payload.to_vec());
            }
            _ => {
                // Not a topic we asked for; a broker that sends it is
                // misbehaving. Say so and ignore the payload.
                tracing::warn!(topic = %publish.topic, bytes = publish.payload.len(), "Ignored a message on a topic florence-edge never subscribed to.");
            }
        }
    }

    /// Subscribes to the inbox's filters (and unsubscribes from filters it
    /// no longer has) when they changed or the connection is new. A request
    /// rumqttc cannot take now is tried again after the next event.
    pub(super) fn sync_subscriptions(&mut self, client: &AsyncClient) {
        if self.board.inbox_changed.swap(false, Ordering::AcqRel) {
            self.subscribe_due = true;
        }
        if !self.subscribe_due {
            return;
        }
        let wanted: Vec<String> = crate::sync::lock(&self.board.inbox)
            .as_ref()
            .map(|inbox| inbox.filters.clone())
            .unwrap_or_default();
        while let Some(index) = self.subscribed.iter().position(|f| !wanted.contains(f)) {
            if let Err(e) = client.try_unsubscribe(self.subscribed[index].clone()) {
                tracing::debug!(error = %e, "Could not hand an unsubscribe to rumqttc yet; trying again.");
                return;
            }
            self.subscribed.remove(index);
        }
        let new: Vec<String> = wanted
            .iter()
            .filter(|f| !self.subscribed.contains(f))
            .cloned()
            .collect();
        if !new.is_empty() {
            let request = new
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
            if let Err(e) = client.try_subscribe_many(request) {
                tracing::debug!(error = %e, "Could not hand a subscribe to rumqttc yet; trying again.");
                return;
            }
            tracing::info!(filters = %new.join(", "), "Subscribed to MQTT command topics.");
            self.subscribed.extend(new);
        }
        self.subscribe_due = false;
    }

    /// Hands queued command responses to rumqttc while the window allows.
    pub(super) fn send_responses(&mut self, client: &AsyncClient) -> Result<(), String> {
        while self.inflight.len() < self.window {
            let Some((topic, payload)) = self.responses.pop_front() else {
                break;
            };
            self.hand(client, topic, false, payload, Origin::Response)?;
        }
        Ok(())
    }
}
