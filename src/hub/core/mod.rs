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

mod handle;
mod output;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval};

use handle::Command;
pub use handle::{ClientEvent, CoreHandle, CoreInbox, PageQuery, Reply, channel};
use output::{Message, Output};

use super::dispatch::{Dispatch, DispatchConfig, DriverKey, OrderKey, PickupOutcome};
use super::event_log::EventLog;
use super::guard::Guard;
use super::journal::{Change, Committed, Journal, Snapshot};
use super::mailbox::Mailbox;
use super::metrics::Metrics;
use super::peer::Peer;
use crate::api::{OrderState, OrderView, QueueStatus, Status, StoreStatus};
use crate::protocol::{
    DeliveryNotice, ErrorCode, Event, NAMESPACE, Order, OrderId, Refusal, StoreId,
};

/// How often offers are checked for expiry.
const TICK: Duration = Duration::from_millis(100);
/// How often (in ticks) drivers' sockets are checked for liveness.
const LIVENESS_EVERY: u32 = 10;

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
