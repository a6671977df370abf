//! The hub's Socket.IO handlers: admit a socket, then hand each of its events,
//! typed, to the sequencer in the order they arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ConnectInfo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::{DisconnectReason, Socket};

use super::HubState;
use super::domain::rooms;
use super::door::Remote;
use super::events::{Decoder, LISTENED};
use super::guard::{Budget, Spend};
use super::metrics::Metrics;
use super::peer::Peer;
use super::sequencer::{Origin, RefusalWarnings, Replaying, Reply, SequencerHandle, peer_of};
use crate::protocol::{ErrorCode, Event, Handshake, Refusal};

/// Connect middleware: checks who the client is and whether there is room
/// for it, then sets the socket up.
///
/// Handlers are registered here rather than in the connect handler because
/// socketioxide acknowledges the namespace CONNECT before the connect handler
/// runs: an event sent right after connecting would find no handler and be
/// dropped. Middleware runs before that acknowledgement.
pub async fn admit(
    socket: SocketRef,
    TryData(handshake): TryData<Handshake>,
    State(hub): State<HubState>,
) -> Result<(), Refusal> {
    let now = chrono::Utc::now().timestamp();
    let (peer, expires) = handshake
        .map_err(|error| {
            Refusal::new(
                ErrorCode::InvalidHandshake,
                format!("invalid handshake auth: {error}"),
            )
        })
        .and_then(|handshake| Peer::admit_until(handshake, &hub.admission, now))
        .inspect_err(|refusal| log::warn!("refused connection sid={}: {refusal}", socket.id))?;
    let budget = hub.guard.admit().inspect_err(|refusal| {
        log::warn!("refused connection sid={} {peer}: {refusal}", socket.id)
    })?;
    // In a group, a driver's packages follow it here before it can report
    // on them (no event is read before this middleware returns).
    if let (Some(group), Peer::Driver { name, .. }) = (&hub.group, &peer) {
        group.claim_driver(name).await;
    }

    for (event, decoder) in LISTENED {
        socket.on(
            event.name(),
            Inlet {
                event,
                decoder,
                sequencer: hub.sequencer.clone(),
                max_event_bytes: hub.guard.limits().max_event_bytes,
                metrics: Arc::clone(&hub.metrics),
            },
        );
    }
    socket.on_fallback(
        async |socket: SocketRef, name: socketioxide::extract::Event| {
            log::debug!("ignored unknown event sid={} event={:?}", socket.id, name.0);
        },
    );
    socket.on_disconnect(on_disconnect);

    match &peer {
        Peer::Vendor { store } => socket.join(rooms::store(store)),
        Peer::Viewer | Peer::Operator => socket.join(rooms::VIEWERS),
        Peer::Driver { .. } | Peer::Undeclared => {}
    }
    socket.extensions.insert(peer);
    socket.extensions.insert(budget);
    socket.extensions.insert(RefusalWarnings::default());
    socket.extensions.insert(Closing::default());
    socket.extensions.insert(Replaying::default());
    if let Some(expires) = expires {
        let expiry = tokio::spawn(end_at_expiry(socket.clone(), expires - now));
        socket.extensions.insert(Expiry(expiry.abort_handle()));
    }
    Ok(())
}

/// The task that ends a socket when its token expires; aborted when the
/// socket leaves first.
#[derive(Clone)]
struct Expiry(tokio::task::AbortHandle);

/// Disconnects `socket` in `seconds`, when its token expires: an identity
/// is good for as long as its token, not for as long as its connection.
async fn end_at_expiry(socket: SocketRef, seconds: i64) {
    let seconds = u64::try_from(seconds).unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    log::info!(
        "disconnecting sid={} {}: its token expired",
        socket.id,
        peer_of(&socket)
    );
    say_goodbye(
        socket,
        Refusal::new(
            ErrorCode::Unauthorized,
            "the token expired; connect again with a new one",
        ),
    );
}

/// Set on a socket the hub has decided to close: its events are dropped
/// unread from then on, at no cost and with no log line.
#[derive(Clone, Default)]
struct Closing(Arc<AtomicBool>);

impl Closing {
    fn of(socket: &SocketRef) -> bool {
        socket
            .extensions
            .get::<Closing>()
            .is_some_and(|closing| closing.0.load(Ordering::Relaxed))
    }
}

/// Tells the client why, if its buffer has room, then closes its
/// connection. A client that does not read has no room for the Socket.IO
/// disconnect packet either: its TCP connection is cut instead (for a
/// long-polling client, the connection it opened the session on; its
/// session then ends at the next missed heartbeat).
fn say_goodbye(socket: SocketRef, why: Refusal) {
    if let Some(closing) = socket.extensions.get::<Closing>()
        && closing.0.swap(true, Ordering::Relaxed)
    {
        return;
    }
    if let Err(error) = socket.emit(Event::Goodbye.name(), &why) {
        log::debug!("cannot say goodbye to sid={}: {error}", socket.id);
    }
    let remote = socket
        .req_parts()
        .extensions
        .get::<ConnectInfo<Remote>>()
        .map(|info| info.0.hangup.clone());
    if socket.clone().disconnect().is_err()
        && let Some(hangup) = remote
    {
        hangup.cut();
    }
}

/// Connect handler: the socket is in; tell the sequencer.
pub async fn on_connect(socket: SocketRef, State(hub): State<HubState>) {
    log::info!(
        "connected sid={} {} transport={:?}",
        socket.id,
        peer_of(&socket),
        socket.transport_type()
    );
    hub.sequencer.connected(socket);
}

async fn on_disconnect(socket: SocketRef, reason: DisconnectReason, State(hub): State<HubState>) {
    if let Some(Expiry(expiry)) = socket.extensions.get::<Expiry>() {
        expiry.abort();
    }
    log::info!(
        "disconnected sid={} {} reason={reason:?}",
        socket.id,
        peer_of(&socket)
    );
    hub.guard.release();
    hub.sequencer.disconnected(socket);
}

/// The handler of one CAPS event. Unlike a closure handler (which
/// socketioxide spawns as a task of its own), it runs as the message is read,
/// so events reach the sequencer in the order the client sent them.
#[derive(Clone)]
struct Inlet {
    event: Event,
    decoder: Decoder,
    sequencer: SequencerHandle,
    max_event_bytes: usize,
    metrics: Arc<Metrics>,
}

/// Marks [`Inlet`]'s `MessageHandler` implementation.
struct InletCall;

impl MessageHandler<LocalAdapter, InletCall> for Inlet {
    fn call(&self, raw: Arc<Socket<LocalAdapter>>, mut value: Value, ack_id: Option<i64>) {
        let socket = SocketRef::from(raw.clone());
        if Closing::of(&socket) {
            return;
        }
        let Ok(ack) = AckSender::from_message_parts(&raw, &mut value, &ack_id);
        let reply = Reply::socket(
            socket.clone(),
            self.event,
            ack,
            ack_id.is_some(),
            Arc::clone(&self.metrics),
        );
        match socket
            .extensions
            .get::<Budget>()
            .map(|budget| budget.spend())
        {
            Some(Spend::Allowed) | None => {}
            Some(Spend::Refused) => {
                // Name the order in the refusal when the payload has one, so
                // that the client knows what to send again.
                let decoded = (self.decoder)(&raw, &mut value, &ack_id, self.max_event_bytes);
                let order = decoded.as_ref().ok().and_then(|event| event.order());
                let refusal = Refusal::new(ErrorCode::RateLimited, "too many events; slow down");
                return reply.refuse(order, refusal);
            }
            Some(Spend::Flooding) => {
                log::warn!(
                    "disconnecting sid={} {}: it keeps sending over its rate limit",
                    socket.id,
                    peer_of(&socket)
                );
                let why = Refusal::new(
                    ErrorCode::RateLimited,
                    "too many events over the rate limit; connect again and slow down",
                );
                say_goodbye(socket, why);
                return;
            }
        }
        match (self.decoder)(&raw, &mut value, &ack_id, self.max_event_bytes) {
            Ok(event) => self.sequencer.submit(Origin::Socket(socket), event, reply),
            Err(refusal) => reply.refuse(None, refusal),
        }
    }
}
