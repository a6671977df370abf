//! The sequencer: the one task that owns the dispatch desk, the stores'
//! notice queues and who is online, and applies every command in the order
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
//! journal and its outputs wait in the [`Outbox`] until they are committed:
//! nobody hears of a change the hub could still forget.

mod books;
mod context;
mod group_link;
mod handle;
mod message;
mod outbox;
mod presence;
mod reload;
mod replay;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval};

use books::Books;
pub use context::EventContext;
pub use group_link::GroupLink;
use handle::Command;
pub use handle::{
    Origin, RefusalWarnings, Reply, SequencerHandle, SequencerInbox, channel, peer_of,
};
pub use message::Message;
pub use outbox::Output;
use outbox::{Outbox, Refused};
pub use presence::{Connections, GroupPresence, Presence, PresenceBoard, PresenceView};
pub use reload::Reloader;
pub use replay::{DEFAULT_DEADLINE as DEFAULT_REPLAY_DEADLINE, QueueSource, Replay, Replaying};

use super::desk::{Desk, DeskConfig};
use super::domain::{Change, OrderKey, Snapshot, StoredOrder};
use super::event_log::EventLog;
use super::guard::Guard;
use super::mailbox::Mailbox;
use super::metrics::Metrics;
use super::peer::Peer;
use super::storage::journal::{Commit, Committed, Journal, Progress, Records};
use crate::api::{OrderView, QueueStatus, Status, StoreStatus};
use crate::protocol::{ErrorCode, Event, NAMESPACE, Order, OrderId, Refusal, StoreId};

/// How often offers are checked for expiry.
const TICK: Duration = Duration::from_millis(100);
/// Publishing who is online costs a pass over the drivers: with up to this
/// many it is published after every step, so readers see it exact...
const PRESENCE_EAGER_DRIVERS: usize = 256;
/// ...with more, at most this often while events flow, and at every tick...
const PRESENCE_EVERY: Duration = Duration::from_millis(20);
/// ...and never more than this share of the sequencer's time: a snapshot of
/// 19,000 drivers took milliseconds, and published every 20 ms it was half
/// of the hub's work while they connected.
const PRESENCE_SHARE: u32 = 20;
/// How often (in ticks) drivers' sockets are checked for liveness.
const LIVENESS_EVERY: u32 = 10;

/// Where the sequencer's state comes from and goes to.
pub struct SequencerSetup {
    /// How packages are handed out.
    pub dispatch: DeskConfig,
    /// Most notices kept per store.
    pub queue_limit: usize,
    /// The state to resume from (empty for a new or ephemeral hub).
    pub snapshot: Snapshot,
    /// The journal and its commit reports; `None` keeps everything in memory.
    pub journal: Option<(Journal, mpsc::UnboundedReceiver<Committed>)>,
    /// Committed orders, for those no longer in memory.
    pub records: Option<Box<dyn Records>>,
    /// Where the mailbox reads the stores' queued notices; `None` keeps them
    /// in memory.
    pub mailbox_records: Option<Box<dyn Records>>,
    /// How long delivered orders are kept whole, if not forever.
    pub retention: Option<Retention>,
    /// The connection accounting, recounted now and then.
    pub guard: Guard,
    /// Where counts and latencies go.
    pub metrics: Arc<Metrics>,
    /// Where who is online is published for readers.
    pub presence: PresenceBoard,
    /// In a group of hubs, the group's side (the bridge to the others'
    /// sockets among it).
    pub group: Option<Arc<dyn GroupLink>>,
    /// Where replays (`getAll`) read a store's queue.
    pub queues: QueueSource,
    /// How long a replay may take.
    pub replay_deadline: Duration,
    /// Where the orders of refused steps are read back (with a journal).
    pub reloader: Option<Reloader>,
}

/// Compaction of old delivered orders.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Orders delivered longer ago than this are compacted.
    pub keep: Duration,
    /// How often to look for them.
    pub every: Duration,
}

/// Runs the sequencer until every handle is gone; fails if the journal fails
/// (the hub must then stop rather than confirm what it cannot record).
pub async fn run(
    inbox: SequencerInbox,
    io: SocketIo,
    log: EventLog,
    setup: SequencerSetup,
) -> anyhow::Result<()> {
    let SequencerInbox { mut commands } = inbox;
    let (journal, mut committed) = match setup.journal {
        Some((journal, committed)) => (Some(journal), Some(committed)),
        None => (None, None),
    };
    let mailbox = match setup.mailbox_records {
        Some(records) => {
            Mailbox::in_data_dir(setup.queue_limit, records, setup.snapshot.queue_counts)
        }
        None => Mailbox::new(setup.queue_limit),
    };
    let mut hub = Sequencer {
        books: Books {
            desk: Desk::restore(
                setup.dispatch,
                setup.snapshot.orders,
                &setup.snapshot.closed,
                (setup.snapshot.next_seq, setup.snapshot.seq_stride),
                Instant::now(),
            ),
            mailbox,
            mailbox_changes: Vec::new(),
            log,
            metrics: setup.metrics,
            vendors: HashMap::new(),
            records: setup.records,
            group: setup.group.clone(),
        },
        io: io.clone(),
        journal,
        reloader: setup.reloader,
        reloading: HashSet::new(),
        reload_batches: 0,
        awaiting_reload: HashMap::new(),
        outbox: Outbox::new(io, setup.group, setup.queues, setup.replay_deadline),
        guard: setup.guard,
        viewers: HashSet::new(),
        draining: None,
        presence: setup.presence,
        presence_published: Instant::now(),
        presence_every: PRESENCE_EVERY,
    };
    if hub.journal.is_some() {
        hub.books.desk.follow_tables();
    }
    // The restore itself may have changed things (void offers).
    let restored = hub.settle(Vec::new());
    hub.carry_out(restored).await;

    let mut compacted_at: Option<Instant> = None;
    let mut ticker = interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        if let Some(journal) = hub.journal.as_mut() {
            journal.between_commands(commands.is_empty());
        }
        if hub.outbox.is_empty()
            && hub.awaiting_reload.is_empty()
            && let Some(waiting) = hub.draining.as_mut()
        {
            for drained in waiting.drain(..) {
                let _ = drained.send(());
            }
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return Ok(()) };
                let outputs = hub.apply(command);
                let ready = hub.settle(outputs);
                hub.carry_out(ready).await;
                hub.maybe_publish_presence();
            }
            report = next_commit(&mut committed) => {
                let report = report.map_err(|error| anyhow::anyhow!("the data dir cannot be written: {error}"))?;
                let commit = match report {
                    Progress::Committed(commit) => commit,
                    Progress::InTables { up_to, spent } => {
                        hub.books.in_tables(up_to);
                        drop(spent);
                        continue;
                    }
                };
                hub.count_acknowledgements(&commit);
                if commit.in_tables {
                    hub.books.in_tables(commit.up_to);
                }
                let (ready, refused) = hub.outbox.committed(&commit);
                hub.carry_out(ready).await;
                let answers = hub.reload(refused);
                let answers = hub.settle(answers);
                hub.carry_out(answers).await;
                hub.maybe_publish_presence();
            }
            _ = ticker.tick() => {
                ticks = ticks.wrapping_add(1);
                let mut outputs = Vec::new();
                if ticks.is_multiple_of(LIVENESS_EVERY) {
                    hub.drop_dead_drivers(&mut outputs);
                }
                if let (Some(retention), Some(journal)) = (setup.retention, &hub.journal)
                    && compacted_at.is_none_or(|at| at.elapsed() >= retention.every)
                {
                    compacted_at = Some(Instant::now());
                    let keep = chrono::Duration::from_std(retention.keep).unwrap_or(chrono::Duration::MAX);
                    journal.compact(Utc::now() - keep);
                }
                let effects = hub.books.desk.tick(Instant::now());
                hub.books.add_effects(effects, &mut outputs);
                let ready = hub.settle(outputs);
                hub.carry_out(ready).await;
                hub.maybe_publish_presence();
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

/// One client event, typed, as the sequencer applies it. Each event's
/// implementation is in [`crate::hub::events`].
pub trait ClientEvent: Send + 'static {
    /// Its name on the wire.
    fn event(&self) -> Event;

    /// The order it carries, if any (for refusals that name it).
    fn order(&self) -> Option<&Order> {
        None
    }

    /// Whether `peer` may send it.
    fn permit(&self, peer: &Peer) -> Result<(), Refusal>;

    /// Applies it: changes the books and says what to send, including the
    /// answer through `reply`.
    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply);
}

/// The state the sequencer owns: the books events work on, and the
/// machinery around them (the journal, the outbox, read-backs, viewers).
pub struct Sequencer {
    /// What events read and change.
    books: Books,
    io: SocketIo,
    journal: Option<Journal>,
    /// Reads back the orders of refused steps beside the sequencer.
    reloader: Option<Reloader>,
    /// Orders being read back: events on them are refused until then.
    reloading: HashSet<OrderKey>,
    /// Reads back started (numbering them).
    reload_batches: u64,
    /// The refused steps' answers, by the read back they wait for.
    awaiting_reload: HashMap<u64, Vec<Output>>,
    outbox: Outbox,
    /// The connection count to correct.
    guard: Guard,
    /// Viewer sockets, which hear every order's changes.
    viewers: HashSet<Sid>,
    /// Set once the hub is stopping: who waits for the outbox to empty.
    draining: Option<Vec<oneshot::Sender<()>>>,
    /// Where who is online is published, and when it last was.
    presence: PresenceBoard,
    presence_published: Instant,
    /// How long after a publication the next may be (see [`PRESENCE_SHARE`]).
    presence_every: Duration,
}

impl Sequencer {
    fn apply(&mut self, command: Command) -> Vec<Output> {
        let mut outputs = Vec::new();
        match command {
            Command::Connected(socket) => match peer_of(&socket) {
                Peer::Vendor { store } => self.books.add_vendor(&socket, store),
                Peer::Viewer | Peer::Operator => {
                    if socket.connected() {
                        self.viewers.insert(socket.id);
                    }
                }
                Peer::Driver { .. } | Peer::Undeclared => {
                    self.books.ensure_driver_online(&socket, &mut outputs)
                }
            },
            Command::Disconnected(socket) => {
                self.books.vendors.remove(&socket.id);
                self.viewers.remove(&socket.id);
                if let Some(key) = peer_of(&socket).driver_key(&socket.id.to_string()) {
                    let effects = self
                        .books
                        .desk
                        .driver_offline(&key, &socket, Instant::now());
                    self.books.add_effects(effects, &mut outputs);
                }
            }
            Command::Event(_, event, reply) if self.draining.is_some() => {
                let refusal = Refusal::new(ErrorCode::Busy, "the hub is stopping; try again");
                outputs.push(Output::Refuse {
                    reply,
                    order: event.order().cloned(),
                    refusal,
                });
            }
            Command::Event(origin, event, reply) => {
                self.books.metrics.event(event.event().name());
                match event
                    .permit(&origin.peer())
                    .and_then(|()| self.not_reloading(event.order()))
                {
                    Ok(()) => {
                        let mut cx = EventContext::new(&mut self.books, &origin, &mut outputs);
                        event.apply(&mut cx, reply);
                    }
                    Err(refusal) => outputs.push(Output::Refuse {
                        reply,
                        order: event.order().cloned(),
                        refusal,
                    }),
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Order(order_id, store, reply) => {
                let _ = reply.send(self.order(&order_id, store.as_ref()));
            }
            Command::Orders(query, reply) => {
                let page = self.books.desk.page(
                    query.store.as_ref(),
                    query.state,
                    query.after,
                    query.limit,
                );
                let _ = reply.send(page);
            }
            Command::Reclaim(driver, reply) => {
                let (count, effects) = self.books.desk.reclaim(&driver, Instant::now());
                self.books.add_effects(effects, &mut outputs);
                outputs.push(Output::Answer(reply, count));
            }
            Command::Drain(reply) => {
                log::info!("draining: committing and answering what was taken");
                self.draining.get_or_insert_with(Vec::new).push(reply);
            }
            Command::Metrics(reply) => {
                let _ = reply.send((self.books.desk.counts(), self.connections()));
            }
            Command::OnDesk(work) => {
                let effects = work(&mut self.books.desk, Instant::now());
                self.books.add_effects(effects, &mut outputs);
            }
            Command::Reloaded(batch, keys, read) => {
                self.reloaded(keys, read);
                outputs.extend(self.awaiting_reload.remove(&batch).unwrap_or_default());
            }
            Command::Notices(store, after, limit, reply) => {
                let _ = reply.send(self.books.mailbox.page(&store, after, limit));
            }
        }
        outputs
    }

    /// Takes the notices that `commit` found and removed for
    /// acknowledgements made without a look-up (in a group of hubs) off
    /// their stores' counts.
    fn count_acknowledgements(&mut self, commit: &Commit) {
        if !self.books.records_are_remote() {
            return;
        }
        let removed = commit.spent.iter().filter(|step| {
            !commit.refused.contains(&step.seq) && !commit.not_queued.contains(&step.seq)
        });
        for change in removed.flat_map(|step| &step.changes) {
            if let Change::NoticeAcknowledged { store, .. } = change {
                self.books.mailbox.acknowledged(store);
            }
        }
    }

    /// Reads back the orders of steps the data dir refused: its record is
    /// the truth, and the desk takes it as it is. All of one commit's are
    /// read together, beside the sequencer where a reader is set up; the
    /// refused steps' answers go out once they are back (returned here if
    /// that is now), so that a sender's retry finds the desk true.
    fn reload(&mut self, refused: Refused) -> Vec<Output> {
        let Refused { orders, outputs } = refused;
        let keys: Vec<OrderKey> = orders
            .into_iter()
            .filter(|key| self.reloading.insert(key.clone()))
            .collect();
        if keys.is_empty() {
            return outputs;
        }
        match (&self.reloader, &self.books.records) {
            (Some(reloader), _) => {
                self.reload_batches += 1;
                reloader.start(self.reload_batches, keys);
                self.awaiting_reload.insert(self.reload_batches, outputs);
                Vec::new()
            }
            (None, Some(records)) => {
                let read = records
                    .held_all(&keys)
                    .map_err(|error| format!("{error:#}"));
                self.reloaded(keys, read);
                outputs
            }
            (None, None) => {
                self.reloaded(keys, Ok(Vec::new()));
                outputs
            }
        }
    }

    /// Takes the records read back for `keys`.
    fn reloaded(&mut self, keys: Vec<OrderKey>, read: handle::Reloaded) {
        for key in &keys {
            self.reloading.remove(key);
        }
        let mut records: HashMap<OrderKey, StoredOrder> = match read {
            Ok(records) => records
                .into_iter()
                .map(|record| (OrderKey::of(&record.order), record))
                .collect(),
            Err(error) => {
                log::error!(
                    "cannot read {} orders back from the data dir ({error}); they may differ \
                     from it until a restart",
                    keys.len()
                );
                return;
            }
        };
        let now = Instant::now();
        for key in keys {
            log::warn!("{key} changed elsewhere; taking the data dir's record");
            let record = records.remove(&key);
            if record.is_none() && self.books.records_are_remote() {
                self.books.found_elsewhere(&key);
            }
            self.books.desk.reload(&key, record, now);
        }
    }

    /// Refuses an event on an order being read back: what the desk holds of
    /// it is stale until then.
    fn not_reloading(&self, order: Option<&Order>) -> Result<(), Refusal> {
        // Mostly nothing is being read back: no key is built for the look-up.
        let Some(order) = order.filter(|_| !self.reloading.is_empty()) else {
            return Ok(());
        };
        let key = OrderKey::of(order);
        if !self.reloading.contains(&key) {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::Busy,
            format!("{key} changed meanwhile and is being read back; try again"),
        ))
    }

    /// Hands this step's changes to the journal and its outputs to the
    /// outbox; returns the outputs that may go out now.
    fn settle(&mut self, mut outputs: Vec<Output>) -> Vec<Output> {
        let mut changes = self.books.desk.take_changes();
        changes.append(&mut self.books.mailbox_changes);
        // In a group, viewers on other hubs hear of it through the bridge,
        // whether or not this hub has viewers of its own.
        if !self.viewers.is_empty() || self.outbox.publishes() {
            outputs.extend(changes.iter().filter_map(Output::activity));
        }
        let commit = match &mut self.journal {
            Some(journal) if !changes.is_empty() => {
                let orders = changes.iter().filter_map(Change::order_key).collect();
                let seq = journal.append(changes);
                self.books.sealed(seq);
                Some((seq, orders))
            }
            _ => None,
        };
        self.outbox.after(commit, outputs)
    }

    /// Sends outputs; drivers found dead on the way are taken off the desk,
    /// and what that causes is settled and sent in turn.
    async fn carry_out(&mut self, outputs: Vec<Output>) {
        let mut outputs = outputs;
        loop {
            self.outbox.send(outputs).await;
            let gone = self.outbox.take_gone();
            if gone.is_empty() {
                return;
            }
            let mut more = Vec::new();
            for (driver, socket) in gone {
                let effects = self
                    .books
                    .desk
                    .driver_offline(&driver, &socket, Instant::now());
                self.books.add_effects(effects, &mut more);
            }
            outputs = self.settle(more);
        }
    }

    /// A socket can die without its disconnect ever being applied (during
    /// connect middleware); find such drivers and take them off the desk.
    fn drop_dead_drivers(&mut self, outputs: &mut Vec<Output>) {
        let now = Instant::now();
        for (key, socket) in self.books.desk.online_drivers() {
            if !socket.connected() {
                log::info!("driver={key} sid={} is gone", socket.id);
                let effects = self.books.desk.driver_offline(&key, &socket, now);
                self.books.add_effects(effects, outputs);
            }
        }
        let namespace = self.io.of(NAMESPACE);
        self.books.vendors.retain(|sid, _| {
            namespace
                .as_ref()
                .is_some_and(|ns| ns.get_socket(*sid).is_some())
        });
        if let Some(ns) = namespace {
            self.guard.recount(ns.sockets().len());
        }
    }

    /// One order by id; an id that several stores use needs its store.
    fn order(&self, order_id: &OrderId, store: Option<&StoreId>) -> Result<OrderView, Refusal> {
        let keys: Vec<OrderKey> = self
            .books
            .desk
            .find(order_id)
            .into_iter()
            .filter(|key| store.is_none_or(|store| &key.store == store))
            .collect();
        match keys.as_slice() {
            [key] => self
                .books
                .desk
                .view(key)
                .ok_or_else(|| unknown_order(order_id)),
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

    fn maybe_publish_presence(&mut self) {
        if self.books.desk.driver_count() <= PRESENCE_EAGER_DRIVERS
            || self.presence_published.elapsed() >= self.presence_every
        {
            self.publish_presence();
        }
    }

    fn publish_presence(&mut self) {
        let started = Instant::now();
        self.presence.publish(Presence {
            drivers: self.books.desk.drivers(),
            stores: self.stores_online(),
            connections: self.connections(),
        });
        self.presence_published = Instant::now();
        self.presence_every = PRESENCE_EVERY.max(started.elapsed() * PRESENCE_SHARE);
    }

    /// Connections by role.
    fn connections(&self) -> Connections {
        [
            ("vendor", self.books.vendors.len()),
            ("driver", self.books.desk.online_driver_count()),
            ("viewer", self.viewers.len()),
        ]
    }

    /// Stores with vendors connected, and how many each.
    fn stores_online(&self) -> Vec<StoreStatus> {
        let mut stores: HashMap<&StoreId, u32> = HashMap::new();
        for store in self.books.vendors.values().flatten() {
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
        stores
    }

    /// The board of an ephemeral hub, from memory.
    fn status(&self) -> Status {
        Status {
            orders: self.books.desk.counts(),
            open_orders: self.books.desk.open_orders(Status::OPEN_ORDERS_SHOWN),
            drivers: self.books.desk.drivers(),
            stores: self.stores_online(),
            queues: self
                .books
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
