//! The hub's Socket.IO handlers: admit a socket, then hand each of its events,
//! typed, to the core in the order they arrive.

use std::sync::Arc;

use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::{DisconnectReason, Socket};

use super::HubState;
use super::core::{ClientEvent, CoreHandle, Reply, peer_of};
use super::decode::decode;
use super::guard::{Budget, Spend};
use super::metrics::Metrics;
use super::peer::Peer;
use crate::protocol::{ErrorCode, Event, Handshake, Refusal, VIEWERS_ROOM};

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
    let peer = handshake
        .map_err(|error| {
            Refusal::new(
                ErrorCode::InvalidHandshake,
                format!("invalid handshake auth: {error}"),
            )
        })
        .and_then(|handshake| Peer::admit(handshake, &hub.admission, now))
        .inspect_err(|refusal| log::warn!("refused connection sid={}: {refusal}", socket.id))?;
    let budget = hub.guard.admit(&socket).inspect_err(|refusal| {
        log::warn!("refused connection sid={} {peer}: {refusal}", socket.id)
    })?;

    for event in Event::FROM_CLIENTS {
        socket.on(
            event.name(),
            Inlet {
                event,
                core: hub.core.clone(),
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
        Peer::Vendor { store } => socket.join(store.to_string()),
        Peer::Viewer => socket.join(VIEWERS_ROOM),
        Peer::Driver { .. } | Peer::Undeclared => {}
    }
    socket.extensions.insert(peer);
    socket.extensions.insert(budget);
    Ok(())
}

/// Connect handler: the socket is in; tell the core.
pub async fn on_connect(socket: SocketRef, State(hub): State<HubState>) {
    log::info!(
        "connected sid={} {} transport={:?}",
        socket.id,
        peer_of(&socket),
        socket.transport_type()
    );
    hub.core.connected(socket);
}

async fn on_disconnect(socket: SocketRef, reason: DisconnectReason, State(hub): State<HubState>) {
    log::info!(
        "disconnected sid={} {} reason={reason:?}",
        socket.id,
        peer_of(&socket)
    );
    hub.guard.release();
    hub.core.disconnected(socket);
}

/// The handler of one CAPS event. Unlike a closure handler (which
/// socketioxide spawns as a task of its own), it runs as the message is read,
/// so events reach the core in the order the client sent them.
#[derive(Clone)]
struct Inlet {
    event: Event,
    core: CoreHandle,
    max_event_bytes: usize,
    metrics: Arc<Metrics>,
}

/// Marks [`Inlet`]'s `MessageHandler` implementation.
struct InletCall;

impl MessageHandler<LocalAdapter, InletCall> for Inlet {
    fn call(&self, raw: Arc<Socket<LocalAdapter>>, mut value: Value, ack_id: Option<i64>) {
        let Ok(ack) = AckSender::from_message_parts(&raw, &mut value, &ack_id);
        let reply = Reply::new(ack, ack_id.is_some(), Arc::clone(&self.metrics));
        let socket = SocketRef::from(raw.clone());
        match socket
            .extensions
            .get::<Budget>()
            .map(|budget| budget.spend())
        {
            Some(Spend::Allowed) | None => {}
            Some(Spend::Refused) => {
                let refusal = Refusal::new(ErrorCode::RateLimited, "too many events; slow down");
                return reply.refuse(&socket, self.event, None, refusal);
            }
            Some(Spend::Flooding) => {
                log::warn!(
                    "disconnecting sid={} {}: it keeps sending over its rate limit",
                    socket.id,
                    peer_of(&socket)
                );
                let _ = socket.clone().disconnect();
                return;
            }
        }
        let limit = self.max_event_bytes;
        let raw = &raw;
        let parsed = match self.event {
            Event::Join => decode(raw, &mut value, &ack_id, limit).map(ClientEvent::Join),
            Event::Pickup => decode(raw, &mut value, &ack_id, limit).map(ClientEvent::Pickup),
            Event::InTransit => decode(raw, &mut value, &ack_id, limit).map(ClientEvent::InTransit),
            Event::Delivered => decode(raw, &mut value, &ack_id, limit).map(ClientEvent::Delivered),
            Event::GetAll => decode(raw, &mut value, &ack_id, limit).map(ClientEvent::GetAll),
            Event::Received => decode(raw, &mut value, &ack_id, limit).map(ClientEvent::Received),
            // Sent by the hub only; FROM_CLIENTS does not register them.
            Event::Refused | Event::Activity => return,
        };
        match parsed {
            Ok(event) => self.core.submit_event(socket, event, reply),
            Err(refusal) => reply.refuse(&socket, self.event, None, refusal),
        }
    }
}
