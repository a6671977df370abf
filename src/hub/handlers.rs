//! The hub's Socket.IO handlers: admit a socket, then route its CAPS events.
//!
//! Handlers are thin: they take a payload already typed by [`Checked`], log
//! it, route it and acknowledge. Every refusal is a warning on stderr and, if
//! the client asked for one, an error acknowledgement.

use socketioxide::extract::{AckSender, Event as EventName, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use super::HubState;
use super::checked::Checked;
use super::peer::Peer;
use crate::protocol::{
    Ack, DRIVERS_ROOM, ErrorCode, Event, Handshake, JoinRequest, Order, Refusal,
};

/// Connect middleware: checks the handshake and sets the socket up.
///
/// Handlers are registered here rather than in the connect handler because
/// socketioxide acknowledges the namespace CONNECT before the connect handler
/// runs: an event sent right after connecting would find no handler and be
/// dropped. Middleware runs before that acknowledgement.
pub async fn admit(
    socket: SocketRef,
    TryData(handshake): TryData<Handshake>,
) -> Result<(), Refusal> {
    let peer = handshake
        .map_err(|error| {
            Refusal::new(
                ErrorCode::InvalidHandshake,
                format!("invalid handshake auth: {error}"),
            )
        })
        .and_then(Peer::from_handshake)
        .inspect_err(|refusal| log::warn!("refused connection sid={}: {refusal}", socket.id))?;

    socket.on(Event::Join.name(), on_join);
    socket.on(Event::Pickup.name(), on_pickup);
    socket.on(
        Event::InTransit.name(),
        async |socket: SocketRef, order: Checked<Order>, ack: AckSender, hub: State<HubState>| {
            relay_to_store(Event::InTransit, socket, order, ack, hub).await;
        },
    );
    socket.on(
        Event::Delivered.name(),
        async |socket: SocketRef, order: Checked<Order>, ack: AckSender, hub: State<HubState>| {
            relay_to_store(Event::Delivered, socket, order, ack, hub).await;
        },
    );
    socket.on_fallback(on_unknown_event);
    socket.on_disconnect(on_disconnect);

    match &peer {
        Peer::Vendor { store } => socket.join(store.to_string()),
        Peer::Driver { .. } | Peer::Undeclared => socket.join(DRIVERS_ROOM),
    }
    socket.extensions.insert(peer);
    Ok(())
}

/// Connect handler: the socket is in; say so.
pub async fn on_connect(socket: SocketRef) {
    log::info!(
        "connected sid={} {} transport={:?}",
        socket.id,
        peer_of(&socket),
        socket.transport_type()
    );
}

async fn on_join(
    socket: SocketRef,
    Checked(request): Checked<JoinRequest>,
    ack: AckSender,
    State(hub): State<HubState>,
) {
    let request = match request {
        Ok(request) => request,
        Err(refusal) => return refuse(&socket, Event::Join, ack, refusal),
    };
    hub.log.record(Event::Join, &request);
    if peer_of(&socket) == Peer::Undeclared {
        // A lab client that joins a store is a vendor: stop sending it pickups.
        socket.leave(DRIVERS_ROOM);
        socket.extensions.insert(Peer::Vendor {
            store: request.store.clone(),
        });
    }
    log::info!("joined sid={} room={}", socket.id, request.store);
    socket.join(request.store.to_string());
    accept(ack);
}

async fn on_pickup(
    socket: SocketRef,
    Checked(order): Checked<Order>,
    ack: AckSender,
    State(hub): State<HubState>,
) {
    let order = match order {
        Ok(order) => order,
        Err(refusal) => return refuse(&socket, Event::Pickup, ack, refusal),
    };
    hub.log.record(Event::Pickup, &order);
    if let Err(error) = socket
        .to(DRIVERS_ROOM)
        .emit(Event::Pickup.name(), &order)
        .await
    {
        log::warn!("pickup broadcast failed order={}: {error}", order.order_id);
    }
    accept(ack);
}

/// `in-transit` and `delivered`: tell the order's store, and no one else.
async fn relay_to_store(
    event: Event,
    socket: SocketRef,
    Checked(order): Checked<Order>,
    ack: AckSender,
    State(hub): State<HubState>,
) {
    let order = match order {
        Ok(order) => order,
        Err(refusal) => return refuse(&socket, event, ack, refusal),
    };
    hub.log.record(event, &order);
    if let Err(error) = socket
        .within(order.store.to_string())
        .emit(event.name(), &order)
        .await
    {
        log::warn!("{event} relay failed order={}: {error}", order.order_id);
    }
    accept(ack);
}

async fn on_unknown_event(socket: SocketRef, EventName(name): EventName) {
    log::debug!("ignored unknown event sid={} event={name:?}", socket.id);
}

async fn on_disconnect(socket: SocketRef, reason: DisconnectReason) {
    log::info!(
        "disconnected sid={} {} reason={reason:?}",
        socket.id,
        peer_of(&socket)
    );
}

fn peer_of(socket: &SocketRef) -> Peer {
    socket.extensions.get::<Peer>().unwrap_or(Peer::Undeclared)
}

fn accept(ack: AckSender) {
    // The client may be gone already; its loss, nothing to undo here.
    let _ = ack.send(&Ack::accepted());
}

fn refuse(socket: &SocketRef, event: Event, ack: AckSender, refusal: Refusal) {
    log::warn!(
        "refused {event} sid={} {}: {refusal}",
        socket.id,
        peer_of(socket)
    );
    let _ = ack.send(&Ack::refused(refusal));
}
