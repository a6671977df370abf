//! The hub's core: one task that owns the dispatch desk and the vendors'
//! presence, and applies every command in the order it arrived.
//!
//! socketioxide runs each event handler as its own task, so two events read
//! together from one socket can run in either order (a driver's `in-transit`
//! after its `delivered`). The hub therefore queues every event here at the
//! moment it is read, and this single task applies them one by one: per
//! socket, events take effect in the order they were sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::socket::Sid;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval};

use super::dispatch::{Dispatch, DispatchConfig, DriverKey, Effect, OrderKey, PickupOutcome};
use super::event_log::EventLog;
use super::peer::Peer;
use crate::api::{OrderState, Status, StoreStatus};
use crate::protocol::{
    Ack, ErrorCode, Event, JoinRequest, NAMESPACE, Order, Refusal, RefusalNotice, StoreId,
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
}

impl ClientEvent {
    fn event(&self) -> Event {
        match self {
            ClientEvent::Join(_) => Event::Join,
            ClientEvent::Pickup(_) => Event::Pickup,
            ClientEvent::InTransit(_) => Event::InTransit,
            ClientEvent::Delivered(_) => Event::Delivered,
        }
    }
}

/// How to answer the client that sent an event.
pub struct Reply {
    ack: AckSender,
    wants_ack: bool,
}

impl Reply {
    /// A reply through `ack`; `wants_ack` says whether the client asked for one.
    pub fn new(ack: AckSender, wants_ack: bool) -> Self {
        Reply { ack, wants_ack }
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
            let order = order_of(&event).cloned();
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

    fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            log::debug!("the hub core has stopped; command dropped");
        }
    }
}

/// Runs the core until every handle is gone.
pub async fn run(inbox: CoreInbox, io: SocketIo, log: EventLog, config: DispatchConfig) {
    let CoreInbox {
        mut commands,
        queued_events,
    } = inbox;
    let mut core = Core {
        desk: Dispatch::new(config),
        io,
        log,
        vendors: HashMap::new(),
    };
    let mut ticker = interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                if matches!(command, Command::Event(..)) {
                    queued_events.fetch_sub(1, Ordering::Relaxed);
                }
                core.apply(command).await;
            }
            _ = ticker.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(LIVENESS_EVERY) {
                    core.drop_dead_drivers().await;
                }
                let effects = core.desk.tick(Instant::now());
                core.perform(effects).await;
            }
        }
    }
}

struct Core {
    desk: Dispatch<SocketRef>,
    io: SocketIo,
    log: EventLog,
    /// The stores each vendor socket speaks for.
    vendors: HashMap<Sid, HashSet<StoreId>>,
}

impl Core {
    async fn apply(&mut self, command: Command) {
        match command {
            Command::Connected(socket) => match peer_of(&socket) {
                Peer::Vendor { store } => self.add_vendor(&socket, store),
                Peer::Driver { .. } | Peer::Undeclared => self.ensure_driver_online(&socket).await,
            },
            Command::Disconnected(socket) => {
                self.vendors.remove(&socket.id);
                if let Some(key) = peer_of(&socket).driver_key(&socket.id.to_string()) {
                    let effects = self.desk.driver_offline(&key, &socket, Instant::now());
                    self.perform(effects).await;
                }
            }
            Command::Event(socket, event, reply) => self.apply_event(socket, event, reply).await,
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    async fn apply_event(&mut self, socket: SocketRef, event: ClientEvent, reply: Reply) {
        let now = Instant::now();
        let name = event.event();
        match event {
            ClientEvent::Join(request) => {
                self.log.record(Event::Join, &request);
                self.join(&socket, request.store).await;
                reply.accept();
            }
            ClientEvent::Pickup(order) => match self.desk.pickup(order.clone(), now) {
                Ok((outcome, effects)) => {
                    self.log.record(Event::Pickup, &order);
                    if outcome == PickupOutcome::Repeated(OrderState::Delivered) {
                        // The vendor missed the news; tell it again.
                        let _ = socket.emit(Event::Delivered.name(), &order);
                    }
                    reply.accept();
                    self.perform(effects).await;
                }
                Err(refusal) => reply.refuse(&socket, name, Some(&order), refusal),
            },
            ClientEvent::InTransit(order) | ClientEvent::Delivered(order) => {
                self.ensure_driver_online(&socket).await;
                let peer = peer_of(&socket);
                // A vendor is nobody's driver: any key that holds no package will do.
                let driver = peer
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
                        reply.accept();
                        self.perform(effects).await;
                    }
                    Err(refusal) => reply.refuse(&socket, name, Some(&order), refusal),
                }
            }
        }
    }

    /// Puts the socket in the store's room. A socket that had declared
    /// nothing is a lab vendor: it leaves the drivers and its offers go to
    /// others.
    async fn join(&mut self, socket: &SocketRef, store: StoreId) {
        socket.join(store.to_string());
        log::info!("joined sid={} room={store}", socket.id);
        if peer_of(socket) == Peer::Undeclared {
            socket.extensions.insert(Peer::Vendor {
                store: store.clone(),
            });
            let key = DriverKey::Anonymous(socket.id.to_string());
            let effects = self.desk.driver_offline(&key, socket, Instant::now());
            self.perform(effects).await;
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
    async fn ensure_driver_online(&mut self, socket: &SocketRef) {
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
        self.perform(effects).await;
    }

    /// A socket can die without its disconnect ever being applied (during
    /// connect middleware); find such drivers and take them off the desk.
    async fn drop_dead_drivers(&mut self) {
        let now = Instant::now();
        for (key, socket) in self.desk.online_drivers() {
            if !socket.connected() {
                log::info!("driver={key} sid={} is gone", socket.id);
                let effects = self.desk.driver_offline(&key, &socket, now);
                self.perform(effects).await;
            }
        }
        self.vendors.retain(|sid, _| {
            self.io
                .of(NAMESPACE)
                .and_then(|ns| ns.get_socket(*sid))
                .is_some()
        });
    }

    async fn perform(&mut self, effects: Vec<Effect<SocketRef>>) {
        let mut pending: VecDeque<Effect<SocketRef>> = effects.into();
        while let Some(effect) = pending.pop_front() {
            match effect {
                Effect::Offer {
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
                            pending.extend(self.desk.driver_offline(
                                &driver,
                                &socket,
                                Instant::now(),
                            ));
                        }
                    }
                }
                Effect::Notify { event, order } => {
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns
                        .to(order.store.to_string())
                        .emit(event.name(), &order)
                        .await
                    {
                        log::warn!("cannot tell store={} of {event}: {error}", order.store);
                    }
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
        }
    }
}

fn order_of(event: &ClientEvent) -> Option<&Order> {
    match event {
        ClientEvent::Join(_) => None,
        ClientEvent::Pickup(order)
        | ClientEvent::InTransit(order)
        | ClientEvent::Delivered(order) => Some(order),
    }
}

/// Who the socket is, as far as the hub knows now.
pub fn peer_of(socket: &SocketRef) -> Peer {
    socket.extensions.get::<Peer>().unwrap_or(Peer::Undeclared)
}
