//! The way into the core: the commands it takes, the handle that queues
//! them, and how a client's event is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socketioxide::extract::{AckSender, SocketRef};
use tokio::sync::{mpsc, oneshot};

use super::super::metrics::Metrics;
use super::super::peer::Peer;
use super::peer_of;
use crate::api::{OrderPage, OrderState, OrderView, Status};
use crate::protocol::{
    Ack, ErrorCode, Event, JoinRequest, Order, OrderId, QueueRequest, Refusal, RefusalNotice,
    StoreId,
};

/// Events waiting for the core beyond this many are refused as `busy`.
const MAX_QUEUED_EVENTS: usize = 65_536;

/// A client event, typed.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// `join`.
    Join(JoinRequest),
    /// `pickup`.
    Pickup(Order),
    /// `in-transit`.
    InTransit(Order),
    /// `delivered`.
    Delivered(Order),
    /// `getAll`.
    GetAll(QueueRequest),
    /// `received`.
    Received(QueueRequest),
}

impl ClientEvent {
    pub(super) fn event(&self) -> Event {
        match self {
            ClientEvent::Join(_) => Event::Join,
            ClientEvent::Pickup(_) => Event::Pickup,
            ClientEvent::InTransit(_) => Event::InTransit,
            ClientEvent::Delivered(_) => Event::Delivered,
            ClientEvent::GetAll(_) => Event::GetAll,
            ClientEvent::Received(_) => Event::Received,
        }
    }

    pub(super) fn order(&self) -> Option<&Order> {
        match self {
            ClientEvent::Pickup(order)
            | ClientEvent::InTransit(order)
            | ClientEvent::Delivered(order) => Some(order),
            ClientEvent::Join(_) | ClientEvent::GetAll(_) | ClientEvent::Received(_) => None,
        }
    }
}

/// How to answer the client that sent an event.
pub struct Reply {
    ack: AckSender,
    wants_ack: bool,
    metrics: Arc<Metrics>,
}

impl Reply {
    /// A reply through `ack`; `wants_ack` says whether the client asked for one.
    pub fn new(ack: AckSender, wants_ack: bool, metrics: Arc<Metrics>) -> Self {
        Reply {
            ack,
            wants_ack,
            metrics,
        }
    }

    pub(super) fn accept(self) {
        // The client may be gone already; nothing to undo.
        let _ = self.ack.send(&Ack::accepted());
    }

    /// Refuses: a warning, and an error ack, or a `refused` event for a
    /// client that asked for no ack (rust_socketio cannot).
    pub fn refuse(self, socket: &SocketRef, event: Event, order: Option<&Order>, refusal: Refusal) {
        log::warn!(
            "refused {event} sid={} {}: {refusal}",
            socket.id,
            peer_of(socket)
        );
        self.metrics.refusal(refusal.code.as_str());
        if self.wants_ack {
            let _ = self.ack.send(&Ack::refused(refusal));
        } else {
            let notice = RefusalNotice {
                event,
                store: order.map(|order| order.store.clone()),
                order_id: order.map(|order| order.order_id.clone()),
                error: refusal,
            };
            let _ = socket.emit(Event::Refused.name(), &notice);
        }
    }
}

pub(super) enum Command {
    Connected(SocketRef),
    Disconnected(SocketRef),
    Event(SocketRef, ClientEvent, Reply),
    Status(oneshot::Sender<Status>),
    Order(
        OrderId,
        Option<StoreId>,
        oneshot::Sender<Result<OrderView, Refusal>>,
    ),
    Orders(PageQuery, oneshot::Sender<OrderPage>),
    Metrics(oneshot::Sender<String>),
    HttpPickup(Peer, Order, oneshot::Sender<Result<(), Refusal>>),
}

/// What `GET /api/orders` asks for.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    /// Only this store's orders.
    pub store: Option<StoreId>,
    /// Only orders in this state.
    pub state: Option<OrderState>,
    /// Only orders after this cursor.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// The way in to the core; clone it freely.
#[derive(Clone)]
pub struct CoreHandle {
    commands: mpsc::UnboundedSender<Command>,
    queued_events: Arc<AtomicUsize>,
}

/// The core's receiving end, until [`run`] takes it.
pub struct CoreInbox {
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) queued_events: Arc<AtomicUsize>,
}

/// A connected pair: handles for the handlers, and the inbox for [`run`].
pub fn channel() -> (CoreHandle, CoreInbox) {
    let (commands, inbox) = mpsc::unbounded_channel();
    let queued_events = Arc::new(AtomicUsize::new(0));
    (
        CoreHandle {
            commands,
            queued_events: Arc::clone(&queued_events),
        },
        CoreInbox {
            commands: inbox,
            queued_events,
        },
    )
}

impl CoreHandle {
    /// Queues a client's event; when the core is overloaded the event is
    /// refused at once as `busy`.
    pub fn submit_event(&self, socket: SocketRef, event: ClientEvent, reply: Reply) {
        if self.queued_events.load(Ordering::Relaxed) >= MAX_QUEUED_EVENTS {
            let refusal = Refusal::new(ErrorCode::Busy, "the hub is overloaded; try again");
            let order = event.order().cloned();
            return reply.refuse(&socket, event.event(), order.as_ref(), refusal);
        }
        self.queued_events.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Event(socket, event, reply));
    }

    /// A socket has joined the namespace.
    pub fn connected(&self, socket: SocketRef) {
        self.send(Command::Connected(socket));
    }

    /// A socket has left.
    pub fn disconnected(&self, socket: SocketRef) {
        self.send(Command::Disconnected(socket));
    }

    /// The dispatch board, or `None` if the core has stopped.
    pub async fn status(&self) -> Option<Status> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Status(reply));
        answer.await.ok()
    }

    /// One order and its history (`store` picks among stores reusing the id).
    pub async fn order(
        &self,
        order_id: OrderId,
        store: Option<StoreId>,
    ) -> Option<Result<OrderView, Refusal>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Order(order_id, store, reply));
        answer.await.ok()
    }

    /// A page of orders.
    pub async fn orders(&self, query: PageQuery) -> Option<OrderPage> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Orders(query, reply));
        answer.await.ok()
    }

    /// The metrics, in Prometheus text format.
    pub async fn metrics(&self) -> Option<String> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Metrics(reply));
        answer.await.ok()
    }

    /// A pickup placed over HTTP by `peer`; answers once it is recorded.
    pub async fn http_pickup(&self, peer: Peer, order: Order) -> Option<Result<(), Refusal>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::HttpPickup(peer, order, reply));
        answer.await.ok()
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            log::debug!("the hub core has stopped; command dropped");
        }
    }
}
