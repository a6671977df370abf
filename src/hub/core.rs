//! The hub's core: one task that owns the dispatch desk, the stores' notice
//! queues and the vendors' presence, and applies every command in the order
//! it arrived.
//!
//! socketioxide runs each event handler as its own task, so two events read
//! together from one socket can run in either order (a driver's `in-transit`
//! after its `delivered`). The hub therefore queues every event here at the
//! moment it is read, and this single task applies them one by one: per
//! socket, events take effect in the order they were sent.
//!
//! Applying an event changes memory at once and yields [`Output`]s (replies,
//! offers, notices). When the hub is durable, the event's changes go to the
//! journal and its outputs wait until they are committed: nobody hears of a
//! change the hub could still forget.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::socket::Sid;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval};

use super::dispatch::{Dispatch, DispatchConfig, DriverKey, Effect, OrderKey, PickupOutcome};
use super::event_log::EventLog;
use super::guard::Guard;
use super::journal::{Change, Committed, Journal, Snapshot};
use super::mailbox::Mailbox;
use super::peer::Peer;
use chrono::Utc;

use super::metrics::Metrics;
use crate::api::{OrderPage, OrderState, OrderView, QueueStatus, Status, StoreStatus};
use crate::protocol::{
    Ack, Activity, DeliveryNotice, ErrorCode, Event, JoinRequest, NAMESPACE, Order, OrderId,
    QueueRequest, Refusal, RefusalNotice, StoreId, VIEWERS_ROOM,
};

/// Events waiting for the core beyond this many are refused as `busy`.
const MAX_QUEUED_EVENTS: usize = 65_536;
/// How often offers are checked for expiry.
const TICK: Duration = Duration::from_millis(100);
/// How often (in ticks) drivers' sockets are checked for liveness.
const LIVENESS_EVERY: u32 = 10;

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
    fn event(&self) -> Event {
        match self {
            ClientEvent::Join(_) => Event::Join,
            ClientEvent::Pickup(_) => Event::Pickup,
            ClientEvent::InTransit(_) => Event::InTransit,
            ClientEvent::Delivered(_) => Event::Delivered,
            ClientEvent::GetAll(_) => Event::GetAll,
            ClientEvent::Received(_) => Event::Received,
        }
    }

    fn order(&self) -> Option<&Order> {
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

    fn accept(self) {
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

enum Command {
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
    commands: mpsc::UnboundedReceiver<Command>,
    queued_events: Arc<AtomicUsize>,
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

/// Where the core's state comes from and goes to.
pub struct CoreSetup {
    /// How packages are handed out.
    pub dispatch: DispatchConfig,
    /// Most notices kept per store.
    pub queue_limit: usize,
    /// The state to resume from (empty for a new or ephemeral hub).
    pub snapshot: Snapshot,
    /// The journal and its commit reports; `None` keeps everything in memory.
    pub journal: Option<(Journal, mpsc::UnboundedReceiver<Committed>)>,
    /// The connection accounting, recounted now and then.
    pub guard: Guard,
    /// Where counts and latencies go.
    pub metrics: Arc<Metrics>,
}

/// Runs the core until every handle is gone; fails if the journal fails (the
/// hub must then stop rather than confirm what it cannot record).
pub async fn run(
    inbox: CoreInbox,
    io: SocketIo,
    log: EventLog,
    setup: CoreSetup,
) -> anyhow::Result<()> {
    let CoreInbox {
        mut commands,
        queued_events,
    } = inbox;
    let (journal, mut committed) = match setup.journal {
        Some((journal, committed)) => (Some(journal), Some(committed)),
        None => (None, None),
    };
    let mut mailbox = Mailbox::new(setup.queue_limit);
    mailbox.restore(setup.snapshot.notices);
    let mut core = Core {
        desk: Dispatch::restore(
            setup.dispatch,
            setup.snapshot.orders,
            setup.snapshot.delivered_total,
            Instant::now(),
        ),
        mailbox,
        mailbox_changes: Vec::new(),
        io,
        log,
        vendors: HashMap::new(),
        journal,
        waiting: VecDeque::new(),
        gone: Vec::new(),
        guard: setup.guard,
        metrics: setup.metrics,
        viewers: HashSet::new(),
    };
    // The restore itself may have changed things (void offers).
    let restored = core.settle(Vec::new());
    core.deliver(restored).await;

    let mut ticker = interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return Ok(()) };
                if matches!(command, Command::Event(..)) {
                    queued_events.fetch_sub(1, Ordering::Relaxed);
                }
                let outputs = core.apply(command);
                let ready = core.settle(outputs);
                core.deliver(ready).await;
            }
            report = next_commit(&mut committed) => {
                let committed_seq = report.map_err(|error| anyhow::anyhow!("the data dir cannot be written: {error}"))?;
                while core.waiting.front().is_some_and(|(seq, _)| *seq <= committed_seq) {
                    let (_, outputs) = core.waiting.pop_front().expect("front exists");
                    core.deliver(outputs).await;
                }
            }
            _ = ticker.tick() => {
                ticks = ticks.wrapping_add(1);
                let mut outputs = Vec::new();
                if ticks.is_multiple_of(LIVENESS_EVERY) {
                    core.drop_dead_drivers(&mut outputs);
                }
                let effects = core.desk.tick(Instant::now());
                core.add_effects(effects, &mut outputs);
                let ready = core.settle(outputs);
                core.deliver(ready).await;
            }
        }
    }
}

async fn next_commit(committed: &mut Option<mpsc::UnboundedReceiver<Committed>>) -> Committed {
    match committed {
        Some(reports) => reports
            .recv()
            .await
            .unwrap_or_else(|| Err("the journal writer stopped".into())),
        None => std::future::pending().await,
    }
}

/// A message to a store or a socket.
#[derive(Serialize)]
#[serde(untagged)]
enum Message {
    Order(Order),
    Notice(DeliveryNotice),
}

/// Something to do once the changes that caused it are recorded.
enum Output {
    Accept(Reply),
    Refuse {
        reply: Reply,
        socket: SocketRef,
        event: Event,
        order: Option<Order>,
        refusal: Refusal,
    },
    Offer {
        driver: DriverKey,
        socket: SocketRef,
        order: Order,
    },
    ToStore {
        event: Event,
        store: StoreId,
        message: Message,
    },
    ToSocket {
        socket: SocketRef,
        event: Event,
        message: Message,
    },
    ToViewers(Activity),
    Http(oneshot::Sender<Result<(), Refusal>>, Result<(), Refusal>),
}

struct Core {
    desk: Dispatch<SocketRef>,
    mailbox: Mailbox,
    /// Mailbox changes not yet handed to the journal.
    mailbox_changes: Vec<Change>,
    io: SocketIo,
    log: EventLog,
    /// The stores each vendor socket speaks for.
    vendors: HashMap<Sid, HashSet<StoreId>>,
    journal: Option<Journal>,
    /// Outputs waiting for their journal entry to commit, in order.
    waiting: VecDeque<(u64, Vec<Output>)>,
    /// Drivers whose socket turned out dead when offered a package.
    gone: Vec<(DriverKey, SocketRef)>,
    /// The connection count to correct.
    guard: Guard,
    metrics: Arc<Metrics>,
    /// Viewer sockets, which hear every order's changes.
    viewers: HashSet<Sid>,
}

impl Core {
    fn apply(&mut self, command: Command) -> Vec<Output> {
        let mut outputs = Vec::new();
        match command {
            Command::Connected(socket) => match peer_of(&socket) {
                Peer::Vendor { store } => self.add_vendor(&socket, store),
                Peer::Viewer => {
                    if socket.connected() {
                        self.viewers.insert(socket.id);
                    }
                }
                Peer::Driver { .. } | Peer::Undeclared => {
                    self.ensure_driver_online(&socket, &mut outputs)
                }
            },
            Command::Disconnected(socket) => {
                self.vendors.remove(&socket.id);
                self.viewers.remove(&socket.id);
                if let Some(key) = peer_of(&socket).driver_key(&socket.id.to_string()) {
                    let effects = self.desk.driver_offline(&key, &socket, Instant::now());
                    self.add_effects(effects, &mut outputs);
                }
            }
            Command::Event(socket, event, reply) => {
                self.apply_event(socket, event, reply, &mut outputs)
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Order(order_id, store, reply) => {
                let _ = reply.send(self.order(&order_id, store.as_ref()));
            }
            Command::Orders(query, reply) => {
                let page =
                    self.desk
                        .page(query.store.as_ref(), query.state, query.after, query.limit);
                let _ = reply.send(page);
            }
            Command::Metrics(reply) => {
                let connections = [
                    ("vendor", self.vendors.len()),
                    ("driver", self.desk.online_drivers().len()),
                    ("viewer", self.viewers.len()),
                ];
                let _ = reply.send(self.metrics.render(&self.desk.counts(), connections));
            }
            Command::HttpPickup(peer, order, reply) => {
                let result = peer
                    .may_act_for(&order.store)
                    .and_then(|()| self.desk.pickup(order.clone(), Instant::now()));
                match result {
                    Ok((_, effects)) => {
                        self.log.record(Event::Pickup, &order);
                        self.metrics.event(Event::Pickup.name());
                        self.add_effects(effects, &mut outputs);
                        outputs.push(Output::Http(reply, Ok(())));
                    }
                    Err(refusal) => {
                        log::warn!("refused pickup over HTTP {peer}: {refusal}");
                        self.metrics.refusal(refusal.code.as_str());
                        outputs.push(Output::Http(reply, Err(refusal)));
                    }
                }
            }
        }
        outputs
    }

    /// One order by id; an id that several stores use needs its store.
    fn order(&self, order_id: &OrderId, store: Option<&StoreId>) -> Result<OrderView, Refusal> {
        let keys: Vec<OrderKey> = self
            .desk
            .find(order_id)
            .into_iter()
            .filter(|key| store.is_none_or(|store| &key.store == store))
            .collect();
        match keys.as_slice() {
            [key] => self.desk.view(key).ok_or_else(|| unknown_order(order_id)),
            [] => Err(unknown_order(order_id)),
            several => Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!(
                    "order {order_id} exists in stores {}: add ?store=",
                    several
                        .iter()
                        .map(|key| key.store.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    fn apply_event(
        &mut self,
        socket: SocketRef,
        event: ClientEvent,
        reply: Reply,
        outputs: &mut Vec<Output>,
    ) {
        let now = Instant::now();
        let name = event.event();
        self.metrics.event(name.name());
        let refuse = |reply: Reply, socket: SocketRef, order: Option<Order>, refusal: Refusal| {
            Output::Refuse {
                reply,
                socket,
                event: name,
                order,
                refusal,
            }
        };
        let peer = peer_of(&socket);
        let permitted = match &event {
            ClientEvent::Join(request) => peer.may_act_for(&request.store),
            ClientEvent::Pickup(order) => peer.may_act_for(&order.store),
            ClientEvent::InTransit(_) | ClientEvent::Delivered(_) => peer.may_carry(),
            ClientEvent::GetAll(request) | ClientEvent::Received(request) => {
                match request.event.unwrap_or(Event::Delivered) {
                    Event::Pickup => peer.may_carry(),
                    _ => peer.may_act_for(&request.queue_id),
                }
            }
        };
        if let Err(refusal) = permitted {
            let order = event.order().cloned();
            outputs.push(refuse(reply, socket, order, refusal));
            return;
        }
        match event {
            ClientEvent::Join(request) => {
                self.log.record(Event::Join, &request);
                self.join(&socket, request.store, outputs);
                outputs.push(Output::Accept(reply));
            }
            ClientEvent::Pickup(order) => match self.desk.pickup(order.clone(), now) {
                Ok((outcome, effects)) => {
                    self.log.record(Event::Pickup, &order);
                    if outcome == PickupOutcome::Repeated(OrderState::Delivered) {
                        // The vendor missed the news; tell it again.
                        let message = match self.mailbox.find(&order) {
                            Some(message_id) => {
                                Message::Notice(DeliveryNotice::new(order, message_id))
                            }
                            None => Message::Order(order),
                        };
                        outputs.push(Output::ToSocket {
                            socket: socket.clone(),
                            event: Event::Delivered,
                            message,
                        });
                    }
                    outputs.push(Output::Accept(reply));
                    self.add_effects(effects, outputs);
                }
                Err(refusal) => outputs.push(refuse(reply, socket, Some(order), refusal)),
            },
            ClientEvent::InTransit(order) | ClientEvent::Delivered(order) => {
                self.ensure_driver_online(&socket, outputs);
                // A vendor is nobody's driver: any key that holds no package will do.
                let driver = peer_of(&socket)
                    .driver_key(&socket.id.to_string())
                    .unwrap_or_else(|| DriverKey::Anonymous(socket.id.to_string()));
                let key = OrderKey::of(&order);
                let result = if name == Event::InTransit {
                    self.desk.in_transit(&driver, &key)
                } else {
                    self.desk.delivered(&driver, &key, now)
                };
                match result {
                    Ok(effects) => {
                        self.log.record(name, &order);
                        outputs.push(Output::Accept(reply));
                        self.add_effects(effects, outputs);
                    }
                    Err(refusal) => outputs.push(refuse(reply, socket, Some(order), refusal)),
                }
            }
            ClientEvent::GetAll(request) => {
                self.log.record(Event::GetAll, &request);
                match request.event.unwrap_or(Event::Delivered) {
                    Event::Delivered => {
                        for (message_id, order) in self.mailbox.pending(&request.queue_id) {
                            outputs.push(Output::ToSocket {
                                socket: socket.clone(),
                                event: Event::Delivered,
                                message: Message::Notice(DeliveryNotice::new(order, message_id)),
                            });
                        }
                    }
                    Event::Pickup => {
                        // A driver catching up: everything it holds, again.
                        if let Some(driver) = peer_of(&socket).driver_key(&socket.id.to_string()) {
                            for order in self.desk.held_by(&driver) {
                                outputs.push(Output::ToSocket {
                                    socket: socket.clone(),
                                    event: Event::Pickup,
                                    message: Message::Order(order),
                                });
                            }
                        }
                    }
                    _ => {}
                }
                outputs.push(Output::Accept(reply));
            }
            ClientEvent::Received(request) => {
                self.log.record(Event::Received, &request);
                match (
                    request.event.unwrap_or(Event::Delivered),
                    request.message_id,
                ) {
                    (Event::Delivered, Some(message_id)) => {
                        match self.mailbox.acknowledge(&request.queue_id, &message_id) {
                            Ok(change) => {
                                self.mailbox_changes.push(change);
                                outputs.push(Output::Accept(reply));
                            }
                            Err(refusal) => outputs.push(refuse(reply, socket, None, refusal)),
                        }
                    }
                    (Event::Delivered, None) => {
                        let refusal =
                            Refusal::new(ErrorCode::InvalidPayload, "received needs a messageId");
                        outputs.push(refuse(reply, socket, None, refusal));
                    }
                    // Pickups are acknowledged by taking them up (in-transit).
                    _ => outputs.push(Output::Accept(reply)),
                }
            }
        }
    }

    /// Puts the socket in the store's room. A socket that had declared
    /// nothing is a lab vendor: it leaves the drivers and its offers go to
    /// others.
    fn join(&mut self, socket: &SocketRef, store: StoreId, outputs: &mut Vec<Output>) {
        socket.join(store.to_string());
        log::info!("joined sid={} room={store}", socket.id);
        if peer_of(socket) == Peer::Undeclared {
            socket.extensions.insert(Peer::Vendor {
                store: store.clone(),
            });
            let key = DriverKey::Anonymous(socket.id.to_string());
            let effects = self.desk.driver_offline(&key, socket, Instant::now());
            self.add_effects(effects, outputs);
        }
        if !matches!(peer_of(socket), Peer::Driver { .. }) {
            self.add_vendor(socket, store);
        }
    }

    fn add_vendor(&mut self, socket: &SocketRef, store: StoreId) {
        if socket.connected() {
            self.vendors.entry(socket.id).or_default().insert(store);
        }
    }

    /// Makes sure the desk knows this driver socket (its connect may not have
    /// been applied yet when its first event arrives).
    fn ensure_driver_online(&mut self, socket: &SocketRef, outputs: &mut Vec<Output>) {
        let peer = peer_of(socket);
        let Some(key) = peer.driver_key(&socket.id.to_string()) else {
            return;
        };
        if !socket.connected() {
            return;
        }
        let effects = self
            .desk
            .driver_online(key, socket.clone(), peer.capacity(), Instant::now());
        self.add_effects(effects, outputs);
    }

    /// A socket can die without its disconnect ever being applied (during
    /// connect middleware); find such drivers and take them off the desk.
    fn drop_dead_drivers(&mut self, outputs: &mut Vec<Output>) {
        let now = Instant::now();
        for (key, socket) in self.desk.online_drivers() {
            if !socket.connected() {
                log::info!("driver={key} sid={} is gone", socket.id);
                let effects = self.desk.driver_offline(&key, &socket, now);
                self.add_effects(effects, outputs);
            }
        }
        let namespace = self.io.of(NAMESPACE);
        self.vendors.retain(|sid, _| {
            namespace
                .as_ref()
                .is_some_and(|ns| ns.get_socket(*sid).is_some())
        });
        if let Some(ns) = namespace {
            self.guard.recount(ns.sockets().len());
        }
    }

    /// Turns the desk's effects into outputs; a delivery is queued in its
    /// store's mailbox first.
    fn add_effects(&mut self, effects: Vec<Effect<SocketRef>>, outputs: &mut Vec<Output>) {
        for effect in effects {
            outputs.push(match effect {
                Effect::Offer {
                    driver,
                    socket,
                    order,
                } => Output::Offer {
                    driver,
                    socket,
                    order,
                },
                Effect::Notify {
                    event: Event::Delivered,
                    order,
                } => {
                    if let Some(placed) = self.desk.placed_at(&OrderKey::of(&order)) {
                        let latency = Utc::now().signed_duration_since(placed);
                        self.metrics
                            .delivered_after(latency.num_microseconds().unwrap_or(0) as f64 / 1e6);
                    }
                    let (message_id, changes) = self.mailbox.enqueue(order.clone());
                    self.mailbox_changes.extend(changes);
                    Output::ToStore {
                        event: Event::Delivered,
                        store: order.store.clone(),
                        message: Message::Notice(DeliveryNotice::new(order, message_id)),
                    }
                }
                Effect::Notify { event, order } => Output::ToStore {
                    event,
                    store: order.store.clone(),
                    message: Message::Order(order),
                },
            });
        }
    }

    /// Hands this step's changes to the journal. Returns the outputs that may
    /// go out now; the others wait for their commit (and anything behind
    /// outputs that wait, waits too, to keep the order).
    fn settle(&mut self, mut outputs: Vec<Output>) -> Vec<Output> {
        let mut changes = self.desk.take_changes();
        changes.append(&mut self.mailbox_changes);
        if !self.viewers.is_empty() {
            outputs.extend(
                changes
                    .iter()
                    .filter_map(activity_of)
                    .map(Output::ToViewers),
            );
        }
        let Some(journal) = &mut self.journal else {
            return outputs;
        };
        if !changes.is_empty() {
            let seq = journal.append(changes);
            self.waiting.push_back((seq, outputs));
            return Vec::new();
        }
        match self.waiting.back_mut() {
            Some((_, behind)) => {
                behind.extend(outputs);
                Vec::new()
            }
            None => outputs,
        }
    }

    /// Carries outputs out; drivers found dead on the way are taken off the
    /// desk, and what that causes is settled and carried out in turn.
    async fn deliver(&mut self, outputs: Vec<Output>) {
        let mut outputs = outputs;
        loop {
            self.execute(outputs).await;
            if self.gone.is_empty() {
                return;
            }
            let mut more = Vec::new();
            for (driver, socket) in std::mem::take(&mut self.gone) {
                let effects = self.desk.driver_offline(&driver, &socket, Instant::now());
                self.add_effects(effects, &mut more);
            }
            outputs = self.settle(more);
        }
    }

    async fn execute(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Accept(reply) => reply.accept(),
                Output::Refuse {
                    reply,
                    socket,
                    event,
                    order,
                    refusal,
                } => reply.refuse(&socket, event, order.as_ref(), refusal),
                Output::Offer {
                    driver,
                    socket,
                    order,
                } => {
                    log::debug!("offering order={} to driver={driver}", order.order_id);
                    if let Err(error) = socket.emit(Event::Pickup.name(), &order) {
                        log::warn!(
                            "cannot offer order={} to driver={driver}: {error}",
                            order.order_id
                        );
                        if !socket.connected() {
                            self.gone.push((driver, socket));
                        }
                    }
                }
                Output::ToStore {
                    event,
                    store,
                    message,
                } => {
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns.to(store.to_string()).emit(event.name(), &message).await
                    {
                        log::warn!("cannot tell store={store} of {event}: {error}");
                    }
                }
                Output::ToSocket {
                    socket,
                    event,
                    message,
                } => {
                    if let Err(error) = socket.emit(event.name(), &message) {
                        log::debug!("cannot send {event} to sid={}: {error}", socket.id);
                    }
                }
                Output::ToViewers(activity) => {
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns
                        .to(VIEWERS_ROOM)
                        .emit(Event::Activity.name(), &activity)
                        .await
                    {
                        log::debug!("cannot tell viewers: {error}");
                    }
                }
                Output::Http(reply, result) => {
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn status(&self) -> Status {
        let mut stores: HashMap<&StoreId, u32> = HashMap::new();
        for store in self.vendors.values().flatten() {
            *stores.entry(store).or_default() += 1;
        }
        let mut stores: Vec<StoreStatus> = stores
            .into_iter()
            .map(|(store, vendors)| StoreStatus {
                store: store.clone(),
                vendors,
            })
            .collect();
        stores.sort_by(|a, b| a.store.cmp(&b.store));
        Status {
            orders: self.desk.counts(),
            open_orders: self.desk.open_orders(Status::OPEN_ORDERS_SHOWN),
            drivers: self.desk.drivers(),
            stores,
            queues: self
                .mailbox
                .queue_lengths()
                .into_iter()
                .map(|(store, queued)| QueueStatus { store, queued })
                .collect(),
        }
    }
}

/// What viewers are told of a change, if it is an order's.
fn activity_of(change: &Change) -> Option<Activity> {
    let (store, order_id, state, driver, at) = match change {
        Change::NewOrder { order, at, .. } => {
            (&order.store, &order.order_id, OrderState::Ready, None, at)
        }
        Change::Transition {
            key,
            state,
            driver,
            at,
            ..
        } => (&key.store, &key.order_id, *state, driver.as_ref(), at),
        Change::NoticeQueued { .. } | Change::NoticeRemoved { .. } => return None,
    };
    Some(Activity {
        store: store.clone(),
        order_id: order_id.clone(),
        state: state.name().to_owned(),
        driver: driver.map(ToString::to_string),
        time: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

fn unknown_order(order_id: &OrderId) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownOrder,
        format!("no such order: {order_id}"),
    )
}

/// Who the socket is, as far as the hub knows now.
pub fn peer_of(socket: &SocketRef) -> Peer {
    socket.extensions.get::<Peer>().unwrap_or(Peer::Undeclared)
}
