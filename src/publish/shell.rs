//! The I/O shell: the `fe-publish` thread that ties the queue, the spool and
//! the pure connection state to rumqttc.
//!
//! Why a thread with its own current-thread tokio runtime: rumqttc is async,
//! the rest of florence-edge is threads and channels, and the publisher must
//! never share a scheduler with the inference side (a slow broker must not
//! delay a frame). One thread is plenty for thousands of messages a second.
//!
//! Delivery bookkeeping. rumqttc's own retransmission is not used: every
//! connection is a clean session built from scratch (a fresh `EventLoop`), and
//! this shell knows what the broker has acknowledged. Every publish handed to
//! rumqttc is an [`InFlight`] entry; rumqttc reports `Outgoing::Publish(pkid)`
//! in the order requests were handed over, which names the packet id of the
//! oldest entry still without one; `PubAck`/`PubComp` (QoS 1/2) or the write
//! itself (QoS 0) completes it. When the connection drops:
//! * entries that came from the spool are still on disk; the spool rewinds;
//! * live results (sent straight from the queue) are appended to the spool.
//!
//! Live sending happens only when the spool has nothing unsent, so every live
//! entry is newer than every spool entry, and appending them keeps the order.
//! Results the broker got but did not acknowledge in time are sent again:
//! at least once, in order of first arrival.
//!
//! Commands. Once an inbox is set, every connection subscribes (QoS 1) to its
//! filters, and each message on them goes to the inbox as it arrives; the
//! answers (`Command::Response`) use the in-flight window like snapshots but
//! wait their turn in a short backlog instead of being dropped while
//! connected. Neither is spooled: an answer after an outage has no asker.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    NetworkOptions, Outgoing, Packet, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};

use super::connection::LinkState;
use super::settings::PublisherConfig;
use super::spool::{Spool, SpooledMessage};
use super::stats::{unix_ms, PublisherStats};
use super::{BoardKey, Command, ShutdownReport, StatusBoard};

mod commands;

/// Largest packet rumqttc may send: MQTT's own limit (snapshots are large).
const MAX_OUTGOING_PACKET: usize = 268_435_455;
/// Largest packet accepted from the broker: acknowledgements and the
/// command topics we subscribe to. Commands are refused by size in
/// `control::mqtt` (`control.max_command_bytes`, 64 KiB by default), where
/// the sender gets an answer; so a command must reach it even when too
/// large. A packet above this limit makes rumqttc drop the connection (it
/// reconnects, and the command is lost without an answer): brokers should
/// cap messages with `message_size_limit`.
const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
/// Command responses waiting for room in the in-flight window; beyond that
/// the oldest is dropped (and counted).
const RESPONSE_BACKLOG: usize = 64;
/// How often a continuing spool overflow or write failure is logged again.
const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where an in-flight publish came from, which decides what its completion
/// or loss means.
enum Origin {
    Spool(u64),
    Live(SpooledMessage),
    CameraStatus,
    Retained,
    NodeStatus { online: bool },
    Snapshot,
    Response,
}

struct InFlight {
    origin: Origin,
    /// Set when rumqttc reports the packet written.
    pkid: Option<u16>,
}

enum SessionEnd {
    Lost(String),
    Shutdown(ShutdownReport),
}

/// Aborts the event-loop task when a session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Shell {
    config: PublisherConfig,
    spool: Spool,
    commands: mpsc::Receiver<Command>,
    commands_closed: bool,
    shutdown: Option<oneshot::Receiver<Instant>>,
    board: Arc<StatusBoard>,
    stats: Arc<PublisherStats>,
    link: LinkState,
    inflight: VecDeque<InFlight>,
    window: usize,
    last_loss_log: Option<Instant>,
    offline_acknowledged: bool,
    /// Command responses accepted while connected, not yet handed over.
    responses: VecDeque<(String, Vec<u8>)>,
    /// The command filters this connection is subscribed to.
    subscribed: Vec<String>,
    /// The subscriptions have to be brought in line with the inbox.
    subscribe_due: bool,
}

impl Shell {
    pub(crate) fn new(
        config: PublisherConfig,
        spool: Spool,
        commands: mpsc::Receiver<Command>,
        shutdown: oneshot::Receiver<Instant>,
        board: Arc<StatusBoard>,
        stats: Arc<PublisherStats>,
    ) -> Shell {
        // Differs between nodes and between restarts of one node.
        let jitter =
            crate::backoff::Jitter::from_name(&format!("{}@{}", config.client_id, unix_ms()));
        let link = LinkState::new(config.settings.reconnect, jitter);
        let window = usize::from(config.settings.max_inflight);
        Shell {
            config,
            spool,
            commands,
            commands_closed: false,
            shutdown: Some(shutdown),
            board,
            stats,
            link,
            inflight: VecDeque::new(),
            window,
            last_loss_log: None,
            offline_acknowledged: false,
            responses: VecDeque::new(),
            subscribed: Vec::new(),
            subscribe_due: false,
        }
    }

    /// The thread's body.
    pub(crate) fn run(mut self) -> ShutdownReport {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "Cannot start the MQTT publisher's runtime; results will not be published.");
                return ShutdownReport::default();
            }
        };
        runtime.block_on(self.main())
    }

    async fn main(&mut self) -> ShutdownReport {
        loop {
            match self.session().await {
                SessionEnd::Shutdown(report) => return report,
                SessionEnd::Lost(reason) => {
                    self.connection_lost();
                    let retry = self.link.failed(Instant::now(), &reason);
                    self.stats.connection_failed(&reason);
                    let broker = format!("{}:{}", self.config.broker.host, self.config.broker.port);
                    if retry.takeover_suspected {
                        self.stats.takeover_suspected();
                        tracing::error!(
                            %broker,
                            client_id = %self.config.client_id,
                            "The broker accepted this connection and dropped it again, {} times in a row: \
                             another client is probably connected with the same client id (two daemons with one [node] id?). \
                             Give each node its own [node] id, or set mqtt.client_id.",
                            super::connection::TAKEOVER_STREAK
                        );
                    }
                    if retry.log {
                        tracing::warn!(
                            %broker,
                            attempt = retry.attempt,
                            retry_in_ms = retry.delay.as_millis() as u64,
                            spooled = self.spool.len(),
                            reason = %reason,
                            "{}",
                            if retry.was_connected {
                                "Lost the MQTT broker; results go to the spool until it is back."
                            } else {
                                "Cannot connect to the MQTT broker; retrying with backoff, results go to the spool."
                            }
                        );
                    } else {
                        tracing::debug!(%broker, attempt = retry.attempt, retry_in_ms = retry.delay.as_millis() as u64, "MQTT connection attempt failed again for the same reason.");
                    }
                    if self.wait_offline(retry.delay).await {
                        return self.finish_offline();
                    }
                }
            }
        }
    }

    fn mqtt_options(&self) -> MqttOptions {
        let config = &self.config;
        let mut options = MqttOptions::new(
            config.client_id.clone(),
            config.broker.host.clone(),
            config.broker.port,
        );
        // Validated: zero or whole seconds ≥ 1, so rumqttc's assert holds.
        options.set_keep_alive(config.settings.keep_alive);
        // A clean session: this shell, not the broker, remembers what is unsent.
        options.set_clean_session(true);
        options.set_inflight(config.settings.max_inflight.max(1));
        options.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        if let Some(username) = &config.settings.username {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            options.set_credentials(username.clone(), password);
        }
        options.set_last_will(LastWill::new(
            config.topics.node_status(),
            "offline",
            config.qos.to_rumqttc(),
            config.settings.retain.node_status,
        ));
        if let Some(tls) = &config.tls {
            // rumqttc builds its rustls configuration with the process-wide
            // crypto provider. Two are compiled in (aws-lc-rs through
            // tokio-rustls, ring through the Hub client's ureq, which names
            // its own), so rustls cannot pick one by itself: name it.
            // Installing twice is harmless (the first one stays).
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let transport = match &tls.ca_pem {
                Some(ca) => Transport::tls_with_config(TlsConfiguration::Simple {
                    ca: ca.clone(),
                    alpn: None,
                    client_auth: tls.client_auth.clone(),
                }),
                None => Transport::tls_with_default_config(),
            };
            options.set_transport(transport);
        }
        options
    }

    /// One connection, from the attempt to its loss (or to shutdown).
    async fn session(&mut self) -> SessionEnd {
        let (client, mut eventloop) = AsyncClient::new(self.mqtt_options(), self.window + 8);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(self.config.settings.connect_timeout.as_secs().max(1));
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (event_tx, mut events) = mpsc::unbounded_channel();
        let _driver = AbortOnDrop(tokio::spawn(drive(eventloop, event_tx)));

        loop {
            let connected = self.link.is_connected();
            let take_commands = !self.commands_closed
                && (!connected || self.spool.has_unsent() || self.inflight.len() < self.window);
            tokio::select! {
                biased;
                deadline = recv_shutdown(&mut self.shutdown) => {
                    let report = if connected {
                        self.shutdown_connected(&client, &mut events, deadline).await
                    } else {
                        self.finish_offline()
                    };
                    return SessionEnd::Shutdown(report);
                }
                event = events.recv() => {
                    let outcome = match event {
                        Some(Ok(event)) => self.on_event(event, &client),
                        Some(Err(e)) => Err(self.describe(&e)),
                        None => Err("the MQTT event loop stopped".to_owned()),
                    };
                    if let Err(reason) = outcome {
                        return SessionEnd::Lost(reason);
                    }
                }
                command = self.commands.recv(), if take_commands => match command {
                    Some(command) => {
                        if let Err(reason) = self.on_command(command, Some(&client)) {
                            return SessionEnd::Lost(reason);
                        }
                    }
                    None => self.commands_closed = true,
                },
                _ = self.board.notify.notified(), if connected => {}
            }
            if self.link.is_connected() {
                self.sync_subscriptions(&client);
                if let Err(reason) = self
                    .send_responses(&client)
                    .and_then(|()| self.send_statuses(&client))
                    .and_then(|()| self.fill_window(&client))
                {
                    return SessionEnd::Lost(reason);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, client: &AsyncClient) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                let failures = self.link.connected(Instant::now());
                self.stats.set_connected(true);
                tracing::info!(
                    broker = %format!("{}:{}", self.config.broker.host, self.config.broker.port),
                    client_id = %self.config.client_id,
                    tls = self.config.broker.tls,
                    failed_attempts = failures,
                    spooled = self.spool.len(),
                    "Connected to the MQTT broker."
                );
                self.hand(
                    client,
                    self.config.topics.node_status(),
                    self.config.settings.retain.node_status,
                    b"online".to_vec(),
                    Origin::NodeStatus { online: true },
                )?;
                // Statuses are retained latest values: send every camera's
                // again, the broker may have restarted without persistence.
                {
                    let mut latest = crate::sync::lock(&self.board.latest);
                    for status in latest.values_mut() {
                        status.unsent = true;
                    }
                }
                self.board.dirty.store(true, Ordering::Release);
                // A clean session: the broker forgot our subscriptions.
                self.subscribed.clear();
                self.subscribe_due = true;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(index) = self.inflight.iter().position(|f| f.pkid.is_none()) {
                    self.inflight[index].pkid = Some(pkid);
                    if self.config.qos.level() == 0 {
                        self.complete(index);
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) if self.config.qos.level() == 1 => {
                self.complete_pkid(ack.pkid)
            }
            Event::Incoming(Packet::PubComp(comp)) if self.config.qos.level() == 2 => {
                self.complete_pkid(comp.pkid)
            }
            Event::Incoming(Packet::Publish(publish)) => self.on_publish(publish),
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure)) =>
            {
                tracing::error!(
                    filters = %self.subscribed.join(", "),
                    "The MQTT broker refused a subscription to command topics; commands over MQTT will not arrive (does the broker's ACL let this client read them?)."
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn complete_pkid(&mut self, pkid: u16) {
        if let Some(index) = self.inflight.iter().position(|f| f.pkid == Some(pkid)) {
            self.complete(index);
        }
    }

    fn complete(&mut self, index: usize) {
        let Some(done) = self.inflight.remove(index) else {
            return;
        };
        match done.origin {
            Origin::Spool(id) => {
                self.spool.ack(id);
                self.stats.set_spool(&self.spool);
                self.stats.count_result_published();
            }
            Origin::Live(_) => self.stats.count_result_published(),
            Origin::CameraStatus => self.stats.count_status_published(),
            Origin::Retained => self.stats.count_retained_published(),
            Origin::NodeStatus { online } => {
                if !online {
                    self.offline_acknowledged = true;
                }
            }
            Origin::Snapshot => self.stats.count_snapshot_published(),
            Origin::Response => self.stats.count_response_published(),
        }
    }

    /// Hands one publish to rumqttc. Only fails when the event loop is gone,
    /// which ends the session.
    fn hand(
        &mut self,
        client: &AsyncClient,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
        origin: Origin,
    ) -> Result<(), String> {
        match client.try_publish(topic, self.config.qos.to_rumqttc(), retain, payload) {
            Ok(()) => {
                self.inflight.push_back(InFlight { origin, pkid: None });
                Ok(())
            }
            Err(e) => {
                self.stats.count_publish_error();
                if let Origin::Live(message) = origin {
                    self.spool_message(&message);
                }
                Err(format!("rumqttc refused a publish: {e}"))
            }
        }
    }

    fn on_command(&mut self, command: Command, client: Option<&AsyncClient>) -> Result<(), String> {
        match command {
            Command::Result(payload) => {
                let topic = match self.config.topics.result(&payload.camera, &payload.task) {
                    Ok(topic) => topic,
                    Err(e) => {
                        self.stats.count_publish_error();
                        tracing::warn!(error = %e, "Dropped a result with an invalid topic.");
                        return Ok(());
                    }
                };
                let json = match serde_json::to_vec(&payload) {
                    Ok(json) => json,
                    Err(e) => {
                        self.stats.count_publish_error();
                        tracing::warn!(camera = %payload.camera, task = %payload.task, sequence = payload.sequence, error = %e, "Dropped a result that cannot be written as JSON.");
                        return Ok(());
                    }
                };
                let message = SpooledMessage {
                    topic,
                    qos: self.config.qos,
                    retain: self.config.settings.retain.results,
                    payload: json,
                };
                match client {
                    Some(client)
                        if self.link.is_connected()
                            && !self.spool.has_unsent()
                            && self.inflight.len() < self.window =>
                    {
                        let (topic, payload) = (message.topic.clone(), message.payload.clone());
                        self.hand(
                            client,
                            topic,
                            message.retain,
                            payload,
                            Origin::Live(message),
                        )
                    }
                    _ => {
                        self.spool_message(&message);
                        Ok(())
                    }
                }
            }
            Command::Snapshot { topic, jpeg } => match client {
                Some(client) if self.link.is_connected() && self.inflight.len() < self.window => {
                    let retain = self.config.settings.retain.snapshots;
                    self.hand(client, topic, retain, jpeg, Origin::Snapshot)
                }
                _ => {
                    // A stale picture is not worth spooling.
                    self.stats.count_snapshot_skipped();
                    Ok(())
                }
            },
            Command::Response { topic, payload } => {
                if client.is_some() && self.link.is_connected() {
                    if self.responses.len() >= RESPONSE_BACKLOG {
                        self.responses.pop_front();
                        self.stats.count_response_dropped();
                    }
                    self.responses.push_back((topic, payload));
                } else {
                    // An answer is only worth something while the asker waits.
                    self.stats.count_response_dropped();
                }
                Ok(())
            }
        }
    }

    fn spool_message(&mut self, message: &SpooledMessage) {
        match self.spool.append(message, unix_ms()) {
            Ok(dropped) => {
                self.stats.count_spooled();
                if dropped > 0 {
                    self.stats.count_spool_overflow(dropped);
                    if self.loss_log_due() {
                        tracing::error!(
                            max_messages = self.config.settings.spool.max_messages,
                            dropped_total = self.stats.snapshot().spool_overflow_drops,
                            "The MQTT spool is full; the oldest spooled results are being dropped."
                        );
                    }
                }
            }
            Err(e) => {
                self.stats.count_spool_write_error();
                if self.loss_log_due() {
                    tracing::error!(error = %e, "Cannot write to the MQTT spool; results are being lost.");
                }
            }
        }
        self.stats.set_spool(&self.spool);
    }

    fn loss_log_due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last_loss_log
            .is_none_or(|last| now.saturating_duration_since(last) >= LOSS_LOG_INTERVAL);
        if due {
            self.last_loss_log = Some(now);
        }
        due
    }

    /// Hands spooled results to rumqttc, oldest first, while the window allows.
    fn fill_window(&mut self, client: &AsyncClient) -> Result<(), String> {
        while self.inflight.len() < self.window {
            match self.spool.next_unsent() {
                None => break,
                Some((id, Ok(message))) => {
                    self.hand(
                        client,
                        message.topic,
                        message.retain,
                        message.payload,
                        Origin::Spool(id),
                    )?;
                }
                Some((_, Err(e))) => {
                    self.stats.count_spool_corrupt();
                    self.stats.set_spool(&self.spool);
                    tracing::error!(error = %e, "Dropped an unreadable spool file.");
                }
            }
        }
        Ok(())
    }

    /// Sends the camera statuses and retained values that changed (or all,
    /// after a reconnect). A clear (an empty retained value) is sent once
    /// and then forgotten.
    fn send_statuses(&mut self, client: &AsyncClient) -> Result<(), String> {
        if !self.board.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let due: Vec<(bool, String, Vec<u8>)> = {
            let mut latest = crate::sync::lock(&self.board.latest);
            let room = self.window.saturating_sub(self.inflight.len());
            let mut due = Vec::new();
            let mut cleared = Vec::new();
            for (key, status) in latest.iter_mut() {
                if status.unsent {
                    if due.len() == room {
                        // No room now; look again after the next event.
                        self.board.dirty.store(true, Ordering::Release);
                        break;
                    }
                    status.unsent = false;
                    let camera = matches!(key, BoardKey::Camera(_));
                    if !camera && status.json.is_empty() {
                        cleared.push(key.clone());
                    }
                    due.push((camera, status.topic.clone(), status.json.clone()));
                }
            }
            for key in cleared {
                latest.remove(&key);
            }
            due
        };
        for (camera, topic, json) in due {
            let (retain, origin) = if camera {
                (
                    self.config.settings.retain.camera_status,
                    Origin::CameraStatus,
                )
            } else {
                (true, Origin::Retained)
            };
            self.hand(client, topic, retain, json, origin)?;
        }
        Ok(())
    }

    /// The connection is gone: unacknowledged live results go to the spool
    /// (after everything already there: they are newer), spooled ones become
    /// due again.
    fn connection_lost(&mut self) {
        self.stats.set_connected(false);
        for entry in std::mem::take(&mut self.inflight) {
            match entry.origin {
                Origin::Live(message) => self.spool_message(&message),
                Origin::Response => self.stats.count_response_dropped(),
                _ => {}
            }
        }
        for _ in self.responses.drain(..) {
            self.stats.count_response_dropped();
        }
        self.subscribed.clear();
        self.spool.rewind();
    }

    /// Waits out a backoff delay, spooling results meanwhile. True when
    /// shutdown was requested.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = recv_shutdown(&mut self.shutdown) => return true,
                _ = &mut sleep => return false,
                command = self.commands.recv(), if !self.commands_closed => match command {
                    Some(command) => {
                        // Without a client nothing is handed over; it cannot fail.
                        let _ = self.on_command(command, None);
                    }
                    None => self.commands_closed = true,
                },
            }
        }
    }

    /// Shutdown without a connection: everything queued goes to the spool.
    fn finish_offline(&mut self) -> ShutdownReport {
        self.connection_lost();
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            let _ = self.on_command(command, None);
        }
        let report = ShutdownReport {
            offline_published: false,
            left_in_spool: self.spool.len(),
            timed_out: false,
        };
        tracing::info!(left_in_spool = report.left_in_spool, "MQTT publisher stopped without a broker connection; spooled results go out on the next start.");
        report
    }

    /// Shutdown while connected: deliver what is queued until `deadline`,
    /// publish `offline`, disconnect, and spool whatever is left.
    async fn shutdown_connected(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
        deadline: Instant,
    ) -> ShutdownReport {
        self.commands.close();
        let mut timed_out = false;
        let mut lost = false;
        let mut offline_sent = false;
        // After the deadline, `offline` still gets a short grace to go out.
        let grace = deadline.max(Instant::now() + Duration::from_millis(300));
        loop {
            let mut drained = true;
            while self.spool.has_unsent() || self.inflight.len() < self.window {
                match self.commands.try_recv() {
                    Ok(command) => {
                        if self.on_command(command, Some(client)).is_err() {
                            lost = true;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !self.commands.is_empty() {
                drained = false;
            }
            if !lost
                && (self.send_responses(client).is_err()
                    || self.send_statuses(client).is_err()
                    || self.fill_window(client).is_err())
            {
                lost = true;
            }
            // Camera statuses (the `offline` of each, at a daemon's stop) go
            // out before the node's `offline`.
            let all_done = drained
                && self.responses.is_empty()
                && !self.spool.has_unsent()
                && self.inflight.is_empty()
                && !self.board.dirty.load(Ordering::Acquire);
            if !lost && !offline_sent && (all_done || Instant::now() >= deadline) {
                timed_out = !all_done;
                offline_sent = self
                    .hand(
                        client,
                        self.config.topics.node_status(),
                        self.config.settings.retain.node_status,
                        b"offline".to_vec(),
                        Origin::NodeStatus { online: false },
                    )
                    .is_ok();
                lost = !offline_sent;
            }
            if lost || self.offline_acknowledged {
                break;
            }
            let until = if offline_sent { grace } else { deadline };
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {
                    if offline_sent {
                        break;
                    }
                }
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        if self.on_event(event, client).is_err() {
                            lost = true;
                        }
                    }
                    _ => lost = true,
                },
            }
        }
        if !lost {
            let _ = client.try_disconnect();
            let wait = tokio::time::sleep(Duration::from_millis(200));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    event = events.recv() => match event {
                        Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
        }
        // Whatever the broker has not acknowledged is kept for the next run.
        let offline_published = self.offline_acknowledged;
        let report = self.finish_offline();
        let report = ShutdownReport {
            offline_published,
            timed_out: timed_out || report.left_in_spool > 0,
            ..report
        };
        tracing::info!(
            offline_published = report.offline_published,
            left_in_spool = report.left_in_spool,
            "MQTT publisher stopped."
        );
        report
    }

    /// An operator-readable sentence for a connection error.
    fn describe(&self, error: &ConnectionError) -> String {
        let broker = format!("{}:{}", self.config.broker.host, self.config.broker.port);
        match error {
            ConnectionError::ConnectionRefused(code) => {
                let why = match code {
                    ConnectReturnCode::BadUserNamePassword => {
                        "bad user name or password (check mqtt.username and mqtt.password_file)"
                    }
                    ConnectReturnCode::NotAuthorized => {
                        "not authorized (check mqtt.username and mqtt.password_file)"
                    }
                    ConnectReturnCode::BadClientId => "client id rejected (check mqtt.client_id)",
                    ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
                    ConnectReturnCode::ServiceUnavailable => "service unavailable",
                    ConnectReturnCode::Success => "success code with a refusal",
                };
                format!("the broker at {broker} refused the connection: {why}")
            }
            ConnectionError::Tls(e) => {
                let text = e.to_string();
                let hint = if text.contains("UnknownIssuer") || text.contains("certificate") {
                    " (is mqtt.tls.ca_file the CA that signed the broker's certificate, and does the certificate name this host?)"
                } else {
                    ""
                };
                format!("TLS with {broker} failed: {text}{hint}")
            }
            ConnectionError::Io(e) => {
                let text = e.to_string();
                let hint = if text.contains("certificate") || text.contains("UnknownIssuer") {
                    " (is mqtt.tls.ca_file the CA that signed the broker's certificate, and does the certificate name this host?)"
                } else {
                    ""
                };
                format!("connection to {broker} failed: {text}{hint}")
            }
            ConnectionError::NetworkTimeout => format!(
                "no answer from {broker} within {}s (mqtt.connect_timeout)",
                self.config.settings.connect_timeout.as_secs()
            ),
            other => format!("connection to {broker} failed: {other}"),
        }
    }
}

/// Waits for the shutdown deadline; pending forever once it has been taken.
async fn recv_shutdown(shutdown: &mut Option<oneshot::Receiver<Instant>>) -> Instant {
    match shutdown.as_mut() {
        Some(rx) => {
            // A dropped sender (the handle vanished) means stop soon.
            let deadline = rx
                .await
                .unwrap_or_else(|_| Instant::now() + Duration::from_secs(2));
            *shutdown = None;
            deadline
        }
        None => std::future::pending().await,
    }
}

/// Polls rumqttc's event loop and forwards what it says, in order. Running it
/// as its own task means `poll` is never cancelled half-way (a TLS handshake
/// interrupted by every new result would never finish).
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).is_err() || failed {
            return;
        }
    }
}
