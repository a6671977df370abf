//! The way into the sequencer: the commands it takes, the handle that queues
//! them, where an event came from, and how its sender is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socketioxide::extract::{AckSender, SocketRef};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::super::desk::{Desk, Effect};
use super::super::domain::{DriverKey, OrderKey, OrderQuery, StoredNotice, StoredOrder};
use super::super::metrics::Metrics;
use super::super::peer::Peer;
use super::ClientEvent;
use super::presence::Connections;
use crate::api::{OrderCounts, OrderPage, OrderView, Status};
use crate::protocol::{Ack, ErrorCode, Event, Order, OrderId, Refusal, RefusalNotice, StoreId};

/// The hub's one memory budget: events taken and not yet answered. Each is
/// in the sequencer's inbox, or applied with its outputs waiting in the
/// outbox and its changes in the journal. Beyond this many, events are
/// refused `busy` at once (clients send them again).
pub const MAX_PENDING_EVENTS: usize = 20_000;

/// Where an event came from.
#[derive(Clone)]
pub enum Origin {
    /// A Socket.IO client.
    Socket(SocketRef),
    /// A caller of the HTTP API, with its identity.
    Http(Peer),
}

impl Origin {
    /// Who sent it, as far as the hub knows now.
    pub fn peer(&self) -> Peer {
        match self {
            Origin::Socket(socket) => peer_of(socket),
            Origin::Http(peer) => peer.clone(),
        }
    }

    /// The sender's socket, if it has one to answer on.
    pub fn socket(&self) -> Option<&SocketRef> {
        match self {
            Origin::Socket(socket) => Some(socket),
            Origin::Http(_) => None,
        }
    }

    /// The key under which the desk knows the sender as a driver. Anyone who
    /// is not a driver gets a key that holds no package.
    pub fn driver_key(&self) -> DriverKey {
        match self {
            Origin::Socket(socket) => {
                let sid = socket.id.to_string();
                peer_of(socket)
                    .driver_key(&sid)
                    .unwrap_or(DriverKey::Anonymous(sid))
            }
            Origin::Http(_) => DriverKey::Anonymous("http".into()),
        }
    }
}

/// Who the socket is, as far as the hub knows now.
pub fn peer_of(socket: &SocketRef) -> Peer {
    socket.extensions.get::<Peer>().unwrap_or(Peer::Undeclared)
}

/// How to answer the sender of one event.
pub struct Reply {
    to: ReplyTo,
    /// The event answered.
    event: Event,
    /// The order it carried: a refusal decided after the event was applied
    /// (its commit refused) still names it, so the client can send it again.
    order: Option<Order>,
    metrics: Arc<Metrics>,
    /// The event's place in the memory budget, given back when the reply
    /// is sent or dropped.
    pending: Option<Pending>,
}

/// One event's share of [`MAX_PENDING_EVENTS`].
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum ReplyTo {
    /// A socket: an ack if it asked for one, else a `refused` event on refusal.
    Socket {
        socket: SocketRef,
        ack: AckSender,
        wants_ack: bool,
    },
    /// An HTTP request waiting for the outcome.
    Http {
        peer: Peer,
        answer: oneshot::Sender<Result<(), Refusal>>,
    },
}

impl Reply {
    /// A reply to `socket` through `ack`; `wants_ack` says whether the
    /// client asked for one.
    pub fn socket(
        socket: SocketRef,
        event: Event,
        ack: AckSender,
        wants_ack: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reply {
            to: ReplyTo::Socket {
                socket,
                ack,
                wants_ack,
            },
            event,
            order: None,
            metrics,
            pending: None,
        }
    }

    /// A reply to an HTTP caller, through `answer`.
    pub fn http(
        peer: Peer,
        event: Event,
        answer: oneshot::Sender<Result<(), Refusal>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reply {
            to: ReplyTo::Http { peer, answer },
            event,
            order: None,
            metrics,
            pending: None,
        }
    }

    /// Gives the event's place in the memory budget back before it is
    /// answered: a replay is charged to its socket instead.
    pub fn release_pending(&mut self) {
        self.pending = None;
    }

    /// `getAll` was answered with `sent` messages.
    pub fn replayed(self, sent: u64) {
        match self.to {
            ReplyTo::Socket { ack, .. } => {
                let _ = ack.send(&Ack::replayed(sent));
            }
            ReplyTo::Http { answer, .. } => {
                let _ = answer.send(Ok(()));
            }
        }
    }

    /// The event was accepted.
    pub fn accept(self) {
        // The sender may be gone already; nothing to undo.
        match self.to {
            ReplyTo::Socket { ack, .. } => {
                let _ = ack.send(&Ack::accepted());
            }
            ReplyTo::Http { answer, .. } => {
                let _ = answer.send(Ok(()));
            }
        }
    }

    /// Refuses: a warning, and an error ack, a `refused` event for a client
    /// that asked for no ack (rust_socketio cannot), or the HTTP error.
    pub fn refuse(self, order: Option<&Order>, refusal: Refusal) {
        self.metrics.refusal(refusal.code.as_str());
        let order = order.or(self.order.as_ref());
        let event = self.event;
        match self.to {
            ReplyTo::Socket {
                socket,
                ack,
                wants_ack,
            } => {
                // One line a second per connection: a client that keeps
                // being refused must not flood the log (the counts are all
                // in /metrics).
                let warnings = socket.extensions.get::<RefusalWarnings>();
                if let Some(unshown) = warnings.map_or(Some(0), |warnings| warnings.due()) {
                    let more = match unshown {
                        0 => String::new(),
                        n => format!(" ({n} more refused since the last line)"),
                    };
                    log::warn!(
                        "refused {event} sid={} {}: {refusal}{more}",
                        socket.id,
                        peer_of(&socket)
                    );
                }
                if wants_ack {
                    let _ = ack.send(&Ack::refused(refusal));
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
            ReplyTo::Http { peer, answer } => {
                log::warn!("refused {event} over HTTP {peer}: {refusal}");
                let _ = answer.send(Err(refusal));
            }
        }
    }
}

/// The warnings about one connection's refused events: at most one line a
/// second, the others counted into the next line.
#[derive(Clone, Default)]
pub struct RefusalWarnings(Arc<std::sync::Mutex<(Option<std::time::Instant>, u64)>>);

impl RefusalWarnings {
    /// How many refusals since the last line went unshown, if a line is
    /// due now; `None` to stay quiet.
    fn due(&self) -> Option<u64> {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, unshown) = &mut *state;
        match last {
            Some(at) if at.elapsed() < std::time::Duration::from_secs(1) => {
                *unshown += 1;
                None
            }
            _ => {
                *last = Some(std::time::Instant::now());
                Some(std::mem::take(unshown))
            }
        }
    }
}

/// What reading orders back gave (see [`super::reload`]): the records found
/// (an order missing is not held here), or why they could not be read.
pub type Reloaded = Result<Vec<StoredOrder>, String>;

/// Work a caller has the sequencer do on the desk (see [`Command::OnDesk`]).
pub(in crate::hub) type DeskWork =
    Box<dyn FnOnce(&mut Desk<SocketRef>, Instant) -> Vec<Effect<SocketRef>> + Send>;

pub(in crate::hub) enum Command {
    Connected(SocketRef),
    Disconnected(SocketRef),
    Event(Origin, Box<dyn ClientEvent>, Reply),
    Status(oneshot::Sender<Status>),
    Order(
        OrderId,
        Option<StoreId>,
        oneshot::Sender<Result<OrderView, Refusal>>,
    ),
    Orders(OrderQuery, oneshot::Sender<OrderPage>),
    Metrics(oneshot::Sender<(OrderCounts, Connections)>),
    /// Stop taking events; answer once everything taken is committed and sent.
    Drain(oneshot::Sender<()>),
    /// Hand a driver's packages back to `ready`; answer (once recorded)
    /// with how many.
    Reclaim(DriverKey, oneshot::Sender<u64>),
    /// Work on the desk in turn with events, from a caller the sequencer
    /// does not know (a group of hubs's chores); what the desk says it means
    /// is carried out as for an event.
    OnDesk(DeskWork),
    /// Orders read back after the records refused their steps (see
    /// [`super::reload`]).
    /// (Their batch, its orders, what was read.)
    Reloaded(u64, Vec<OrderKey>, Reloaded),
    /// A page of a store's queue held in memory (an ephemeral hub's).
    Notices(
        StoreId,
        Option<u64>,
        usize,
        oneshot::Sender<Result<Vec<StoredNotice>, Refusal>>,
    ),
}

/// The way in to the sequencer; clone it freely.
#[derive(Clone)]
pub struct SequencerHandle {
    commands: mpsc::UnboundedSender<Command>,
    pending_events: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// The sequencer's receiving end, until [`super::run`] takes it.
pub struct SequencerInbox {
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
}

/// A connected pair: handles for the edges, and the inbox for [`super::run`].
pub fn channel(metrics: Arc<Metrics>) -> (SequencerHandle, SequencerInbox) {
    let (commands, inbox) = mpsc::unbounded_channel();
    (
        SequencerHandle {
            commands,
            pending_events: Arc::new(AtomicUsize::new(0)),
            metrics,
        },
        SequencerInbox { commands: inbox },
    )
}

impl SequencerHandle {
    /// Queues a client's event; when the sequencer is overloaded the event
    /// is refused at once as `busy`.
    pub fn submit(&self, origin: Origin, event: Box<dyn ClientEvent>, mut reply: Reply) {
        if self.pending_events.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_EVENTS {
            self.pending_events.fetch_sub(1, Ordering::Relaxed);
            let refusal = Refusal::new(ErrorCode::Busy, "the hub is overloaded; try again");
            return reply.refuse(event.order(), refusal);
        }
        reply.pending = Some(Pending(Arc::clone(&self.pending_events)));
        reply.order = event.order().cloned();
        self.send(Command::Event(origin, event, reply));
    }

    /// Events taken and not yet answered.
    pub fn pending_events(&self) -> usize {
        self.pending_events.load(Ordering::Relaxed)
    }

    /// A socket has joined the namespace.
    pub fn connected(&self, socket: SocketRef) {
        self.send(Command::Connected(socket));
    }

    /// A socket has left.
    pub fn disconnected(&self, socket: SocketRef) {
        self.send(Command::Disconnected(socket));
    }

    /// The dispatch board, or `None` if the sequencer has stopped.
    pub async fn status(&self) -> Option<Status> {
        self.ask(Command::Status).await
    }

    /// One order and its history (`store` picks among stores reusing the id).
    pub async fn order(
        &self,
        order_id: OrderId,
        store: Option<StoreId>,
    ) -> Option<Result<OrderView, Refusal>> {
        self.ask(|reply| Command::Order(order_id, store, reply))
            .await
    }

    /// A page of orders.
    pub async fn orders(&self, query: OrderQuery) -> Option<OrderPage> {
        self.ask(|reply| Command::Orders(query, reply)).await
    }

    /// Orders per state and connections by role, from memory.
    pub async fn gauges(&self) -> Option<(OrderCounts, Connections)> {
        self.ask(Command::Metrics).await
    }

    /// Stops taking events (they are refused `busy`) and resolves once every
    /// event taken before is committed and answered; at once if the
    /// sequencer has stopped.
    pub async fn drain(&self) {
        self.ask(Command::Drain).await;
    }

    /// Hands `driver`'s packages back to `ready`; how many, once recorded,
    /// or `None` if the sequencer has stopped.
    pub async fn reclaim(&self, driver: DriverKey) -> Option<u64> {
        self.ask(|reply| Command::Reclaim(driver, reply)).await
    }

    /// Runs `work` on the desk in turn with events; its answer, or `None`
    /// if the sequencer has stopped. The effects it returns are carried out
    /// as an event's are.
    pub async fn on_desk<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Desk<SocketRef>, Instant) -> (T, Vec<Effect<SocketRef>>) + Send + 'static,
    ) -> Option<T> {
        self.ask(|answer: oneshot::Sender<T>| {
            Command::OnDesk(Box::new(move |desk, now| {
                let (value, effects) = work(desk, now);
                let _ = answer.send(value);
                effects
            }))
        })
        .await
    }

    /// An event sent over HTTP by `peer`; answers once it is recorded, or
    /// `None` if the sequencer has stopped.
    pub async fn submit_http(
        &self,
        peer: Peer,
        event: Box<dyn ClientEvent>,
    ) -> Option<Result<(), Refusal>> {
        let (answer, outcome) = oneshot::channel();
        let reply = Reply::http(
            peer.clone(),
            event.event(),
            answer,
            Arc::clone(&self.metrics),
        );
        self.submit(Origin::Http(peer), event, reply);
        outcome.await.ok()
    }

    /// A handle that does not keep the sequencer running (it stops once
    /// every handle but weak ones is gone).
    pub fn downgrade(&self) -> WeakSequencerHandle {
        WeakSequencerHandle(self.commands.downgrade())
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply));
        answer.await.ok()
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            log::debug!("the hub's sequencer has stopped; command dropped");
        }
    }
}

/// A handle held by what the sequencer itself starts (replays), so that it
/// does not keep the sequencer from stopping.
#[derive(Clone)]
pub struct WeakSequencerHandle(mpsc::WeakUnboundedSender<Command>);

impl WeakSequencerHandle {
    /// At most `limit` of `store`'s queued notices after place `after`, from
    /// memory; `None` if the sequencer has stopped.
    pub async fn notices(
        &self,
        store: StoreId,
        after: Option<u64>,
        limit: usize,
    ) -> Option<Result<Vec<StoredNotice>, Refusal>> {
        let commands = self.0.upgrade()?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Notices(store, after, limit, reply))
            .ok()?;
        drop(commands);
        answer.await.ok()
    }

    /// Hands orders read back to the sequencer (dropped if it has stopped).
    pub fn reloaded(&self, batch: u64, keys: Vec<OrderKey>, read: Reloaded) {
        if let Some(commands) = self.0.upgrade() {
            let _ = commands.send(Command::Reloaded(batch, keys, read));
        }
    }
}
