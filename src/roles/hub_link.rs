//! The one door through which our vendor and driver talk to a hub.
//!
//! [`HubLink`] wraps rust_socketio 0.6 and hides its known defects:
//! - `connect()` returns before the namespace is joined, so the link waits for
//!   the namespace `open` before it reports the first connection;
//! - a first connect that fails is not retried by the crate, so the link
//!   retries it until a deadline, then fails with a one-line reason;
//! - its client-side acknowledgements can kill its background task when
//!   several are in flight (random ids below 1,000, timed-out ones never
//!   removed), so our guarantees rest on idempotent re-sends instead; the
//!   link asks for one only where an answer is needed to finish, one at a
//!   time ([`HubLink::request`]);
//! - callbacks run one after another in its poll task, so they only decode and
//!   forward into a channel that the role's own loop reads.
//!
//! - it never comes back on its own after the hub drops it from the
//!   namespace (a DISCONNECT packet: the hub shed a flooder, a token expired,
//!   an operator): only the end of the transport starts its reconnect loop,
//!   and the transport stays up. So on such a drop (`close`, the one case in
//!   which rust_socketio fires it) the link builds a new client, with backoff,
//!   and takes no notice of the old one any more.
//!
//! Every (re)connection is reported as [`Inbound::Connected`]; the role then
//! re-announces its state (re-join, re-send) and calls [`HubLink::flush`] to
//! send what could not be sent while the hub was away. A hub that refuses us
//! at a reconnect (a token no longer valid) is reported as
//! [`Inbound::ConnectRefused`], and the roles stop with the reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder, ReconnectSettings};
use rust_socketio::{Payload, TransportType};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout_at};

use crate::protocol::{Ack, Event, Handshake, MessageId, NAMESPACE, Order, RefusalNotice};

/// Events per second the link sends at most, in bursts of as many: three
/// quarters of the hub's default `--rate-limit` (200 a second, bursts of
/// 400), so that a backlog sent at once (a restarted vendor re-sending
/// everything not yet delivered) never trips the hub's flood guard. A hub
/// with a lower limit says so by refusing (`rate_limited`), and the link
/// halves its rate.
pub const SEND_RATE: u32 = 150;

/// How long to wait before sending again what the hub refused for its load
/// (`busy`, `rate_limited`): about a second, spread so that clients refused
/// together do not come back together.
pub fn retry_delay() -> Duration {
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as u64;
    Duration::from_millis(500 + jitter)
}

/// The most events kept for sending while the hub is away; beyond this the
/// oldest are dropped (their senders re-announce them on reconnect anyway).
const OUTBOX_LIMIT: usize = 10_000;

/// How to reach a hub.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The hub's base URL, e.g. `http://127.0.0.1:3000` (the namespace is
    /// added); with several (the hubs of one group), the link moves to the
    /// next whenever it cannot reach or loses the one it is on.
    pub hubs: Vec<String>,
    /// Who we are, sent in the handshake `auth`.
    pub handshake: Handshake,
    /// How long the first connection may take, retries included.
    pub connect_timeout: Duration,
    /// The order events this client wants to hear (`refused` is always heard).
    pub listen: Vec<Event>,
    /// Where the handshake's token comes from, if not from `handshake`.
    pub token: Option<TokenSource>,
}

/// Where a client's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// This token, for the life of the client.
    Given(String),
    /// The token in this file, read again at every (re)connection, so that
    /// whoever renews it renews the client's identity.
    File(std::path::PathBuf),
}

impl LinkConfig {
    /// The hub to try at attempt `n`: each in turn.
    fn hub(&self, n: u64) -> &str {
        match self.hubs.len() {
            0 => "",
            len => &self.hubs[(n % len as u64) as usize],
        }
    }

    /// The hubs, for messages.
    pub fn hubs_named(&self) -> String {
        self.hubs.join(",")
    }
}

impl TokenSource {
    /// The token to present now.
    fn current(&self) -> Option<String> {
        match self {
            TokenSource::Given(token) => Some(token.clone()),
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(token) => Some(token.trim().to_owned()),
                Err(error) => {
                    log::warn!("cannot read the token file {}: {error}", path.display());
                    None
                }
            },
        }
    }
}

/// What the link reports to the role's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The namespace is open: first connection, or back after an outage.
    Connected,
    /// The connection to the hub failed; the link is reconnecting.
    ConnectionLost(String),
    /// The hub refused the connection (`connect_error`).
    ConnectRefused(String),
    /// The hub refused one of our events.
    EventRefused(RefusalNotice),
    /// An order event from the hub, with the id to acknowledge it by when it
    /// is a queued notice (`delivered`).
    Order(Event, Order, Option<MessageId>),
}

/// A connection to a hub's `/caps` namespace that survives hub restarts.
pub struct HubLink {
    shared: Arc<Shared>,
    up: bool,
    outbox: VecDeque<(Event, serde_json::Value)>,
    /// Paces what is sent: at most `rate` events a second.
    pace: governor::DefaultDirectRateLimiter,
    rate: u32,
    /// When the rate was last halved: refusals of one burst halve it once.
    slowed_at: Option<Instant>,
}

/// What the link and its clients' callbacks share.
struct Shared {
    config: LinkConfig,
    /// Where everything the hub says goes, whichever client heard it.
    events: mpsc::UnboundedSender<Inbound>,
    /// The client in use; replaced when the hub drops us.
    slot: Mutex<Slot>,
    /// Which build of the client is in use: callbacks of older ones are ignored.
    generation: AtomicU64,
}

/// The client in use, and whether its namespace opened before it was
/// installed here (its `open` is then reported on installing it, so that the
/// role never hears "connected" while the link has no client to send with).
#[derive(Default)]
struct Slot {
    client: Option<Client>,
    opened_early: bool,
}

impl Shared {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn client(&self) -> Option<Client> {
        self.slot().client.clone()
    }

    /// Makes `client` (build `generation`) the one in use.
    fn install(&self, generation: u64, client: Client) {
        let mut slot = self.slot();
        slot.client = Some(client);
        if std::mem::take(&mut slot.opened_early) {
            self.forward(generation, Inbound::Connected);
        }
    }

    /// The namespace of build `generation` opened.
    fn opened(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.client.is_some() {
            self.forward(generation, Inbound::Connected);
        } else {
            slot.opened_early = true;
        }
    }

    /// Whether the token file now holds another token than `presented`.
    fn token_renewed(&self, presented: Option<&String>) -> bool {
        matches!(self.config.token, Some(TokenSource::File(_)))
            && self
                .config
                .token
                .as_ref()
                .and_then(TokenSource::current)
                .as_ref()
                != presented
    }

    fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    /// Forwards what a callback of client `generation` heard, if that client
    /// is still the one in use.
    fn forward(&self, generation: u64, inbound: Inbound) {
        if self.is_current(generation) {
            let _ = self.events.send(inbound);
        }
    }
}

impl HubLink {
    /// Connects, retrying until `config.connect_timeout`, and waits for the
    /// namespace to open. The receiver yields everything the hub says after
    /// that, starting with nothing: the first `Connected` is consumed here.
    pub async fn connect(
        config: &LinkConfig,
    ) -> anyhow::Result<(HubLink, mpsc::UnboundedReceiver<Inbound>)> {
        let deadline = Instant::now() + config.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let mut attempt_number = 0;
        loop {
            let (events, mut inbound) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared {
                config: config.clone(),
                events,
                slot: Mutex::new(Slot::default()),
                generation: AtomicU64::new(0),
            });
            let hub = config.hub(attempt_number);
            attempt_number += 1;
            let attempt = timeout_at(deadline, builder(&shared, 0, hub).connect()).await;
            let error = match attempt {
                Err(_elapsed) => anyhow!("timed out"),
                Ok(Err(error)) => anyhow!(error),
                Ok(Ok(client)) => {
                    shared.install(0, client);
                    let opened = wait_for_open(&mut inbound, deadline).await;
                    if let Err(error) = opened {
                        let client = shared.slot().client.take();
                        if let Some(client) = client {
                            let _ = client.disconnect().await;
                        }
                        return Err(error).with_context(|| format!("cannot join {hub}{NAMESPACE}"));
                    }
                    let link = HubLink {
                        shared,
                        up: true,
                        outbox: VecDeque::new(),
                        pace: pace_at(SEND_RATE),
                        rate: SEND_RATE,
                        slowed_at: None,
                    };
                    return Ok((link, inbound));
                }
            };
            if Instant::now() + delay >= deadline {
                bail!(
                    "cannot reach hub at {} within {}: {error}",
                    config.hubs_named(),
                    humantime::format_duration(config.connect_timeout)
                );
            }
            log::debug!("hub {hub} not reachable yet ({error}); retrying in {delay:?}");
            sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The hub refused an event as over our rate (`rate_limited`): its limit
    /// is lower than its default, so send half as fast from now on (at most
    /// once a second: the refusals of one burst say the same thing).
    pub fn slow_down(&mut self) {
        let recently = self
            .slowed_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if self.rate > 1 && !recently {
            self.slowed_at = Some(Instant::now());
            self.rate /= 2;
            self.pace = pace_at(self.rate);
            log::info!(
                "the hub limits our rate: sending at most {} events a second",
                self.rate
            );
        }
    }

    /// Updates the link's view of the connection from what the role's loop
    /// just received; call it for every [`Inbound`].
    pub fn observe(&mut self, inbound: &Inbound) {
        match inbound {
            Inbound::Connected => self.up = true,
            Inbound::ConnectionLost(_) => self.up = false,
            Inbound::ConnectRefused(_) | Inbound::EventRefused(_) | Inbound::Order(..) => {}
        }
    }

    /// Whether the namespace is open as far as the link knows.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Sends an event now if the hub is there, else keeps it for [`flush`](Self::flush).
    pub async fn send(&mut self, event: Event, payload: &impl Serialize) {
        let Some(payload) = encode(event, payload) else {
            return;
        };
        if !self.up || !self.emit(event, payload.clone()).await {
            self.keep(event, payload);
        }
    }

    /// Sends an event now if the hub is there, else drops it; for callers
    /// that re-announce their state on every reconnect anyway. True if sent.
    pub async fn try_send(&mut self, event: Event, payload: &impl Serialize) -> bool {
        match encode(event, payload) {
            Some(payload) if self.up => self.emit(event, payload).await,
            _ => false,
        }
    }

    /// Sends an event and waits up to `limit` for the hub's answer; `None`
    /// if the hub is away or did not answer in time. One at a time: see the
    /// module's notes on rust_socketio's acknowledgements.
    pub async fn request(
        &mut self,
        event: Event,
        payload: &impl Serialize,
        limit: Duration,
    ) -> Option<Ack> {
        let payload = encode(event, payload)?;
        if !self.up {
            return None;
        }
        self.pace.until_ready().await;
        let client = self.shared.client()?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        // The callback must be `FnMut + Sync`; it answers once.
        let answer = Arc::new(Mutex::new(Some(answer)));
        let callback = move |payload: Payload, _: Client| {
            if let Some(answer) = answer.lock().ok().and_then(|mut slot| slot.take()) {
                let _ = answer.send(payload);
            }
            async {}.boxed()
        };
        if let Err(error) = client
            .emit_with_ack(event.name(), payload, limit, callback)
            .await
        {
            log::warn!("sending {event} failed; waiting for the hub: {error}");
            self.up = false;
            return None;
        }
        let payload = tokio::time::timeout(limit, answered).await.ok()?.ok()?;
        // rust_socketio hands an acknowledgement's arguments over as one
        // array; the hub answers with one argument.
        let answer = match first_value(&payload)? {
            serde_json::Value::Array(mut arguments) if !arguments.is_empty() => {
                arguments.swap_remove(0)
            }
            answer => answer,
        };
        serde_json::from_value(answer)
            .inspect_err(|error| log::warn!("the hub's answer to {event} does not parse: {error}"))
            .ok()
    }

    /// Sends, in order, what was kept while the hub was away.
    pub async fn flush(&mut self) {
        while self.up {
            let Some((event, payload)) = self.outbox.pop_front() else {
                return;
            };
            if !self.emit(event, payload.clone()).await {
                self.outbox.push_front((event, payload));
            }
        }
    }

    /// Says goodbye to the hub.
    pub async fn close(self) {
        // No more rebuilds: a client built from here on is not ours.
        self.shared.generation.store(u64::MAX, Ordering::Release);
        let client = self.shared.slot().client.take();
        if let Some(client) = client
            && let Err(error) = client.disconnect().await
        {
            log::debug!("disconnect: {error}");
        }
    }

    /// Emits; on failure marks the link down (until the next `open`).
    async fn emit(&mut self, event: Event, payload: serde_json::Value) -> bool {
        self.pace.until_ready().await;
        let Some(client) = self.shared.client() else {
            self.up = false;
            return false;
        };
        match client.emit(event.name(), payload).await {
            Ok(()) => true,
            Err(error) => {
                log::warn!("sending {event} failed; waiting for the hub: {error}");
                self.up = false;
                false
            }
        }
    }

    fn keep(&mut self, event: Event, payload: serde_json::Value) {
        if self.outbox.len() >= OUTBOX_LIMIT {
            self.outbox.pop_front();
            log::warn!("outbox full: dropped the oldest unsent event");
        }
        self.outbox.push_back((event, payload));
    }
}

fn pace_at(rate: u32) -> governor::DefaultDirectRateLimiter {
    let rate = std::num::NonZeroU32::new(rate).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::direct(governor::Quota::per_second(rate))
}

fn encode(event: Event, payload: &impl Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(payload)
        .inspect_err(|error| log::error!("cannot encode {event}: {error}"))
        .ok()
}

async fn wait_for_open(
    inbound: &mut mpsc::UnboundedReceiver<Inbound>,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        match timeout_at(deadline, inbound.recv()).await {
            Err(_elapsed) => bail!("the namespace did not open in time"),
            Ok(None) => bail!("the connection closed"),
            Ok(Some(Inbound::Connected)) => return Ok(()),
            Ok(Some(Inbound::ConnectRefused(reason))) => bail!("the hub refused us: {reason}"),
            Ok(Some(_)) => {}
        }
    }
}

/// A rust_socketio builder for build `generation` of the link's client,
/// whose callbacks forward into the link's channel while it is in use.
fn builder(shared: &Arc<Shared>, generation: u64, hub: &str) -> ClientBuilder {
    let config = &shared.config;
    let (handshake, presented) = handshake_now(config);
    let mut builder = ClientBuilder::new(hub)
        .namespace(NAMESPACE)
        // A WebSocket from the start: one connection per client, and no
        // session a load balancer must keep on one hub of a group (a polling
        // handshake upgraded later needs sticky sessions).
        .transport_type(TransportType::Websocket)
        .auth(handshake)
        .reconnect(true)
        // A drop from the namespace is handled by rebuilding (see above).
        .reconnect_on_disconnect(false)
        .reconnect_delay(100, 2_000);
    // rust_socketio reconnects by itself when the transport ends; each
    // attempt goes to the next hub of the list (the same one when there is
    // only one) with the token as it is now.
    let reconnecting = Arc::clone(shared);
    let mut attempts = 0;
    builder = builder.on_reconnect(move || {
        attempts += 1;
        let config = &reconnecting.config;
        let mut settings = ReconnectSettings::new();
        settings.address(config.hub(generation + attempts));
        settings.auth(handshake_now(config).0);
        async move { settings }.boxed()
    });

    let opened = Arc::clone(shared);
    builder = builder.on("open", move |_, _| {
        opened.opened(generation);
        async {}.boxed()
    });
    let dropped = Arc::clone(shared);
    builder = builder.on("close", move |_, _| {
        // Fired only when the hub drops us from the namespace.
        if dropped.is_current(generation) {
            dropped.forward(
                generation,
                Inbound::ConnectionLost("the hub dropped the connection; reconnecting".into()),
            );
            tokio::spawn(rebuild(Arc::clone(&dropped), generation));
        }
        async {}.boxed()
    });
    let failed = Arc::clone(shared);
    builder = builder.on("error", move |payload, _| {
        let text = payload_text(&payload);
        let inbound = match text.strip_prefix("Received an ConnectError frame: ") {
            // rust_socketio reconnects with the token this client was built
            // with; when the token file holds a newer one, build anew.
            Some(reason) if failed.token_renewed(presented.as_ref()) => {
                tokio::spawn(rebuild(Arc::clone(&failed), generation));
                Inbound::ConnectionLost(format!(
                    "{}; reconnecting with the renewed token",
                    connect_error_message(reason)
                ))
            }
            Some(reason) => Inbound::ConnectRefused(connect_error_message(reason)),
            None => Inbound::ConnectionLost(text),
        };
        failed.forward(generation, inbound);
        async {}.boxed()
    });
    for &event in &config.listen {
        let orders = Arc::clone(shared);
        builder = builder.on(event.name(), move |payload, _| {
            match decode_inbound(event, &payload) {
                Some(inbound) => orders.forward(generation, inbound),
                None => log::warn!("ignored a malformed {event} from the hub"),
            }
            async {}.boxed()
        });
    }
    let goodbye = Arc::clone(shared);
    builder = builder.on(Event::Goodbye.name(), move |payload, _| {
        // The hub says why it is about to drop us (its `close` follows).
        let why = first_value(&payload)
            .and_then(|value| serde_json::from_value::<crate::protocol::Refusal>(value).ok())
            .map_or_else(|| payload_text(&payload), |refusal| refusal.to_string());
        goodbye.forward(
            generation,
            Inbound::ConnectionLost(format!("the hub is closing our connection: {why}")),
        );
        async {}.boxed()
    });
    let refusals = Arc::clone(shared);
    builder.on(Event::Refused.name(), move |payload, _| {
        match decode_inbound(Event::Refused, &payload) {
            Some(inbound) => refusals.forward(generation, inbound),
            None => log::warn!("ignored a malformed refusal from the hub"),
        }
        async {}.boxed()
    })
}

/// The handshake to present now (the token file is read again), and the
/// token in it.
fn handshake_now(config: &LinkConfig) -> (serde_json::Value, Option<String>) {
    let mut handshake = config.handshake.clone();
    if let Some(token) = config.token.as_ref().and_then(TokenSource::current) {
        handshake.token = Some(token);
    }
    let presented = handshake.token.clone();
    (
        serde_json::to_value(&handshake).unwrap_or_default(),
        presented,
    )
}

/// Replaces client `dropped` (which the hub dropped from the namespace) with
/// a new one, on the next hub of the list, trying with backoff until one connects; its `open` tells the role it
/// is back.
async fn rebuild(shared: Arc<Shared>, dropped: u64) {
    let next = dropped + 1;
    if shared
        .generation
        .compare_exchange(dropped, next, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return; // already rebuilt, or the link is closed
    }
    let old = {
        let mut slot = shared.slot();
        slot.opened_early = false;
        slot.client.take()
    };
    if let Some(old) = old {
        // Marks the old client's disconnect as ours, so that it does not
        // reconnect by itself when its transport ends; the error it returns
        // (the namespace is already closed) does not matter.
        let _ = old.disconnect().await;
    }
    let mut delay = Duration::from_millis(100);
    // The hub after the one we were on, then each in turn.
    let mut attempt = next;
    loop {
        if !shared.is_current(next) {
            return;
        }
        let hub = shared.config.hub(attempt);
        attempt += 1;
        match builder(&shared, next, hub).connect().await {
            Ok(client) => {
                if shared.is_current(next) {
                    shared.install(next, client);
                } else {
                    let _ = client.disconnect().await;
                }
                return;
            }
            Err(error) => {
                log::debug!("hub not reachable yet ({error}); retrying in {delay:?}");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// An order, with the Phase 3 envelope's id when there is one.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderMessage {
    #[serde(flatten)]
    order: Order,
    message_id: Option<MessageId>,
}

/// A hub event's payload, typed; `None` if it does not parse.
fn decode_inbound(event: Event, payload: &Payload) -> Option<Inbound> {
    let value = first_value(payload)?;
    if event == Event::Refused {
        serde_json::from_value(value)
            .ok()
            .map(Inbound::EventRefused)
    } else {
        let message: OrderMessage = serde_json::from_value(value).ok()?;
        Some(Inbound::Order(event, message.order, message.message_id))
    }
}

fn first_value(payload: &Payload) -> Option<serde_json::Value> {
    match payload {
        Payload::Text(values) => values.first().cloned(),
        #[allow(deprecated)]
        Payload::String(text) => serde_json::from_str(text).ok(),
        Payload::Binary(_) => None,
    }
}

fn payload_text(payload: &Payload) -> String {
    match first_value(payload) {
        Some(serde_json::Value::String(text)) => text,
        Some(other) => other.to_string(),
        None => "unknown error".into(),
    }
}

/// socket.io sends `connect_error` data as `{"message": "…"}`.
fn connect_error_message(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|value| {
            value
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| raw.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_messages_are_unwrapped() {
        assert_eq!(
            connect_error_message(r#"{"message":"invalid_handshake: bad"}"#),
            "invalid_handshake: bad"
        );
        assert_eq!(connect_error_message(r#""plain""#), "plain");
    }
}
