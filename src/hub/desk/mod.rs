//! The dispatch desk: each order's state, which driver holds it, and who gets
//! the next package.
//!
//! Pure and synchronous: it never touches a socket. Every change returns the
//! [`Effect`]s for the sequencer to carry out. `S` is how the sequencer reaches a
//! driver (a socket); tests use plain numbers.
//!
//! The lifecycle is [`crate::lifecycle`]'s table: every change of state goes
//! through its [`next`]. An offer not taken up within the offer timeout, or
//! whose driver goes offline, returns to `ready`. Policy: the oldest ready order
//! goes to the online driver with spare capacity and the lowest load; ties go
//! to the driver that was given a package least recently (round robin).

mod views;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::domain::{Change, DriverKey, OrderKey, OrderState, StoredOrder, Transition};
use crate::api::OrderCounts;
use crate::lifecycle::{Holder, Misstep, Next, Report, next};
use crate::protocol::{ErrorCode, Event, Order, OrderId, Refusal};

/// Tunables of the desk.
#[derive(Debug, Clone)]
pub struct DeskConfig {
    /// How long a driver has to report `in-transit` for an offered package.
    pub offer_timeout: Duration,
    /// Packages held by a named driver offline this long go back to `ready`;
    /// `None` keeps them with the driver however long it is away.
    pub reclaim_after: Option<Duration>,
    /// How many delivered orders the desk keeps in memory. With a data dir
    /// this is only a cache (older ones are read back from it); an ephemeral
    /// hub recognises a repeated order only within it.
    pub keep_delivered: usize,
}

impl Default for DeskConfig {
    fn default() -> Self {
        DeskConfig {
            offer_timeout: Duration::from_secs(30),
            reclaim_after: Some(DeskConfig::RECLAIM_AFTER),
            keep_delivered: DeskConfig::EPHEMERAL_MEMORY,
        }
    }
}

impl DeskConfig {
    /// Delivered orders an ephemeral hub remembers: its bound on memory,
    /// and on how long a repeated order is recognised.
    pub const EPHEMERAL_MEMORY: usize = 100_000;
    /// Delivered orders a durable hub keeps in memory besides its data dir.
    pub const DURABLE_CACHE: usize = 10_000;
    /// How long a named driver may be away before its packages go to others:
    /// long enough to ride out a restart, a battery swap or a dead zone; short
    /// enough that a shop's package is not stranded for the day.
    pub const RECLAIM_AFTER: Duration = Duration::from_secs(15 * 60);
}

/// Something the sequencer must do for the desk.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<S> {
    /// Send `pickup` with this order to this driver: a new offer, or a
    /// package it holds handed back after it reconnected.
    Offer {
        /// The driver.
        driver: DriverKey,
        /// Its socket.
        socket: S,
        /// The package.
        order: Order,
    },
    /// Tell the order's store (its room) of `event`, once, now.
    Notify {
        /// What happened (`in-transit`).
        event: Event,
        /// The order.
        order: Order,
    },
    /// Tell the order's store with a notice of `kind` that waits in the
    /// store's queue until the store says `received` (Phase 3).
    Notice {
        /// What happened (`delivered`).
        kind: Event,
        /// The order.
        order: Order,
    },
}

/// Why orders are taken over (see [`Desk::adopt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// A (re)start, or a hub that stopped: nobody has the offers any more.
    Restart,
    /// Their driver is connecting here: its offers stand.
    DriverMoved,
}

/// How a pickup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickupOutcome {
    /// A new order, now queued or offered.
    Accepted,
    /// The same order again: nothing changed; it is in this state.
    Repeated(OrderState),
}

struct OrderEntry {
    order: Order,
    /// Arrival number: the ready queue is ordered by it, oldest first.
    seq: u64,
    state: OrderState,
    driver: Option<DriverKey>,
    /// Which offer is current, so a stale offer deadline is recognised.
    offer: u64,
    /// The current offer's place among the deadlines, while it is offered.
    offer_deadline: Option<(Instant, u64)>,
    /// A driver that let its offer expire; others are preferred next time.
    passed_over: Option<DriverKey>,
    /// Whether the store was told it is in transit: a store hears it once,
    /// even if the package is re-dispatched after its first driver vanished.
    store_told_in_transit: bool,
    /// How many changes of state are recorded for it: the version the next
    /// change expects to find in the data dir.
    version: u64,
    history: Vec<Transition>,
}

impl OrderEntry {
    /// The entry of a recorded order.
    fn from_stored(stored: StoredOrder) -> Self {
        OrderEntry {
            history: if stored.history.is_empty() {
                vec![Transition {
                    state: stored.state,
                    driver: stored.driver.clone(),
                    at: stored.since,
                }]
            } else {
                stored.history
            },
            order: stored.order,
            seq: stored.seq,
            state: stored.state,
            driver: stored.driver,
            offer: 0,
            offer_deadline: None,
            passed_over: None,
            store_told_in_transit: stored.told_in_transit,
            version: stored.version,
        }
    }

    /// Hands the order back to the desk (its offer or its package
    /// withdrawn), recording the change in `changes`.
    fn withdraw(&mut self, key: &OrderKey, changes: &mut Vec<Change>) {
        match next(self.state, Report::Withdraw) {
            Next::Enter(state) => changes.push(self.enter(key, state, None)),
            other => log::error!("{key} cannot be withdrawn from {}: {other:?}", self.state),
        }
    }

    /// Moves the order to `state`, held by `driver`; returns the change to record.
    fn enter(&mut self, key: &OrderKey, state: OrderState, driver: Option<DriverKey>) -> Change {
        let at = Utc::now();
        self.state = state;
        self.driver = driver.clone();
        self.history.push(Transition {
            state,
            driver: driver.clone(),
            at,
        });
        let version = self.version;
        self.version += 1;
        Change::Transition {
            key: key.clone(),
            seq: self.seq,
            version,
            state,
            driver,
            told_in_transit: self.store_told_in_transit,
            at,
        }
    }
}

struct DriverEntry<S> {
    socket: Option<S>,
    capacity: Option<u32>,
    offered: HashSet<OrderKey>,
    carrying: HashSet<OrderKey>,
    /// When it was last given a package, as a counter: ties go to the lowest.
    last_assigned: u64,
    peak_load: u32,
    delivered: u64,
    offline_since: Option<Instant>,
}

impl<S> DriverEntry<S> {
    fn new() -> Self {
        DriverEntry {
            socket: None,
            capacity: None,
            offered: HashSet::new(),
            carrying: HashSet::new(),
            last_assigned: 0,
            peak_load: 0,
            delivered: 0,
            offline_since: None,
        }
    }

    fn load(&self) -> u32 {
        (self.offered.len() + self.carrying.len()) as u32
    }

    fn has_room(&self) -> bool {
        self.socket.is_some() && self.capacity.is_none_or(|capacity| self.load() < capacity)
    }
}

/// The desk itself.
pub struct Desk<S> {
    config: DeskConfig,
    orders: HashMap<OrderKey, OrderEntry>,
    ready: BTreeMap<u64, OrderKey>,
    drivers: HashMap<DriverKey, DriverEntry<S>>,
    /// Offer deadlines in the order they were made (all share one timeout).
    /// Only offers still standing are here: one taken up or withdrawn
    /// leaves at once, so this holds open offers, not all recent ones.
    offer_deadlines: BTreeMap<(Instant, u64), OrderKey>,
    /// Delivered orders, oldest first, to forget beyond `keep_delivered`,
    /// each with the number of journal entries sealed before it closed.
    delivered_order: VecDeque<(OrderKey, u64)>,
    /// Journal entries sealed so far (see [`Desk::sealed`]).
    sealed: u64,
    /// Entries sealed and not yet in the tables: their numbers, each with
    /// the count of entries sealed once it was.
    awaiting_tables: VecDeque<(u64, u64)>,
    /// Orders closed before this many entries were sealed are in the tables
    /// (all of them, unless the desk follows a journal's tables).
    in_tables_before: u64,
    /// Orders that entered each final state, ever (by state, as
    /// [`OrderState`]'s variants are numbered).
    closed: [u64; OrderState::COUNT],
    next_seq: u64,
    /// The step between arrival numbers (see [`super::domain::Snapshot::seq_stride`]).
    seq_stride: u64,
    next_offer: u64,
    assignments: u64,
    /// Changes not yet taken by the sequencer for the journal.
    changes: Vec<Change>,
}

impl<S: Clone + PartialEq> Desk<S> {
    /// An empty desk.
    pub fn new(config: DeskConfig) -> Self {
        Desk {
            config,
            orders: HashMap::new(),
            ready: BTreeMap::new(),
            drivers: HashMap::new(),
            offer_deadlines: BTreeMap::new(),
            delivered_order: VecDeque::new(),
            sealed: 0,
            awaiting_tables: VecDeque::new(),
            in_tables_before: u64::MAX,
            closed: [0; OrderState::COUNT],
            next_seq: 0,
            seq_stride: 1,
            next_offer: 0,
            assignments: 0,
            changes: Vec::new(),
        }
    }

    /// A desk resuming from recorded orders (see [`super::domain::Snapshot`]),
    /// handing out arrival numbers from `next_seq` in steps of `seq_stride`.
    /// Offers do not survive a restart: assigned orders are ready again.
    /// Packages in transit stay with their named driver, offline until it
    /// reconnects; an anonymous driver cannot come back, so its packages are
    /// ready again.
    pub fn restore(
        config: DeskConfig,
        snapshot_orders: Vec<StoredOrder>,
        closed: &OrderCounts,
        (next_seq, seq_stride): (u64, u64),
        now: Instant,
    ) -> Self {
        let mut desk = Desk::new(config);
        for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
            desk.closed[state as usize] = closed.get(state);
        }
        desk.next_seq = next_seq;
        desk.seq_stride = seq_stride.max(1);
        desk.adopt(snapshot_orders, Adoption::Restart, now);
        desk
    }

    /// Takes over recorded orders: those of a hub that stopped (as a restart
    /// does, see [`Self::restore`]), or a driver's that is connecting here
    /// (its offers stand, with a new deadline). Returns the offers this
    /// makes possible.
    pub fn adopt(
        &mut self,
        orders: Vec<StoredOrder>,
        adoption: Adoption,
        now: Instant,
    ) -> Vec<Effect<S>> {
        for stored in orders {
            let key = OrderKey::of(&stored.order);
            if stored.seq >= self.next_seq {
                // The next number past it, still one of ours.
                let steps = (stored.seq - self.next_seq) / self.seq_stride + 1;
                self.next_seq += steps * self.seq_stride;
            }
            self.reload(&key, None, now);
            let mut entry = OrderEntry::from_stored(stored);
            // A named driver comes back for what it carries; an offer stands
            // only if its driver moves here; an anonymous driver never
            // comes back.
            let returns = match (entry.state.holder(), &entry.driver) {
                (Holder::Carrying, Some(DriverKey::Named(_))) => false,
                (Holder::Offered, Some(DriverKey::Named(_))) => adoption == Adoption::Restart,
                (Holder::Offered | Holder::Carrying, _) => true,
                (Holder::Nobody, _) => false,
            };
            if returns {
                entry.withdraw(&key, &mut self.changes);
            }
            self.place(key, entry, now);
        }
        self.dispatch(now)
    }

    /// The orders waiting for a driver, oldest first, at most `limit`.
    pub fn waiting(&self, limit: usize) -> Vec<OrderKey> {
        self.ready.values().take(limit).cloned().collect()
    }

    /// How many more packages the online drivers could take, and how many
    /// orders wait for one: with more room than waiting orders, this desk
    /// can take orders that wait elsewhere.
    pub fn spare_capacity(&self) -> (usize, usize) {
        let room = self
            .drivers
            .values()
            .filter(|entry| entry.socket.is_some())
            .map(|entry| match entry.capacity {
                Some(capacity) => capacity.saturating_sub(entry.load()) as usize,
                None => usize::MAX,
            })
            .fold(0usize, usize::saturating_add);
        (room, self.ready.len())
    }

    /// Replaces what the desk holds of `key` with its record (`None`: not
    /// recorded at all), after the data dir refused a change the desk had
    /// made: the record is the truth. No change is made for the journal.
    pub fn reload(&mut self, key: &OrderKey, stored: Option<StoredOrder>, now: Instant) {
        // Only where the entry says it is: a walk over every driver and the
        // delivered cache per order made a take-over of N orders O(N·drivers).
        if let Some(entry) = self.orders.remove(key) {
            self.ready.remove(&entry.seq);
            if let Some(deadline) = entry.offer_deadline {
                self.offer_deadlines.remove(&deadline);
            }
            if let Some(holder) = entry
                .driver
                .as_ref()
                .and_then(|driver| self.drivers.get_mut(driver))
            {
                holder.offered.remove(key);
                holder.carrying.remove(key);
            }
            if entry.state.is_final() {
                self.delivered_order
                    .retain(|(delivered, _)| delivered != key);
            }
        }
        if let Some(stored) = stored {
            self.place(key.clone(), OrderEntry::from_stored(stored), now);
        }
    }

    /// Puts a recorded order where its state says: the ready queue, its
    /// driver's hands (offline until it connects), or the delivered cache.
    /// An offer stands with a deadline from now: whatever happened to it
    /// before (a refused commit may have dropped the message), it is never
    /// held for ever.
    fn place(&mut self, key: OrderKey, mut entry: OrderEntry, now: Instant) {
        if entry.state.holder() == Holder::Offered && entry.driver.is_some() {
            entry.offer = self.next_offer;
            self.next_offer += 1;
            let deadline = (now + self.config.offer_timeout, entry.offer);
            entry.offer_deadline = Some(deadline);
            self.offer_deadlines.insert(deadline, key.clone());
        }
        match (entry.state.holder(), &entry.driver) {
            _ if entry.state.is_final() => self.remember_delivered(&key),
            (Holder::Nobody, _) | (_, None) => {
                self.ready.insert(entry.seq, key.clone());
            }
            (held, Some(driver)) => {
                let holder = self.drivers.entry(driver.clone()).or_insert_with(|| {
                    let mut holder = DriverEntry::new();
                    holder.offline_since = Some(now);
                    holder
                });
                if held == Holder::Offered {
                    holder.offered.insert(key.clone());
                } else {
                    holder.carrying.insert(key.clone());
                }
            }
        }
        self.orders.insert(key, entry);
    }

    /// Keeps `key` among the delivered orders held whole, forgetting the
    /// oldest beyond `keep_delivered` (a delivered order read back from the
    /// records counts too).
    fn remember_delivered(&mut self, key: &OrderKey) {
        self.delivered_order.push_back((key.clone(), self.sealed));
        self.forget_delivered();
    }

    /// Forgets the oldest delivered orders beyond `keep_delivered`, but never
    /// one whose close is not in the tables yet: until then a read of the
    /// records would not find it closed, so the desk is its only memory.
    fn forget_delivered(&mut self) {
        while self.delivered_order.len() > self.config.keep_delivered.max(1)
            && self
                .delivered_order
                .front()
                .is_some_and(|(_, sealed)| *sealed < self.in_tables_before)
        {
            if let Some((oldest, _)) = self.delivered_order.pop_front() {
                self.orders.remove(&oldest);
            }
        }
    }

    /// The desk's changes go to a journal whose tables say what is recorded
    /// (see [`Desk::in_tables`]): a delivered order is kept until they hold
    /// its close.
    pub fn follow_tables(&mut self) {
        self.in_tables_before = self.sealed;
    }

    /// The changes taken last went to the journal as entry `seq`.
    pub fn sealed(&mut self, seq: u64) {
        self.sealed += 1;
        self.awaiting_tables.push_back((seq, self.sealed));
    }

    /// The tables hold every journal entry up to `seq`.
    pub fn in_tables(&mut self, seq: u64) {
        while let Some(&(sealed_seq, sealed)) = self.awaiting_tables.front()
            && sealed_seq <= seq
        {
            self.in_tables_before = sealed;
            self.awaiting_tables.pop_front();
        }
        self.forget_delivered();
    }

    /// The changes made since the last call, for the journal.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// A driver is connected on `socket`. Packages it holds are handed back to
    /// it (it may have restarted and forgotten them), then waiting orders are
    /// offered.
    pub fn driver_online(
        &mut self,
        key: DriverKey,
        socket: S,
        capacity: Option<u32>,
        now: Instant,
    ) -> Vec<Effect<S>> {
        let entry = self
            .drivers
            .entry(key.clone())
            .or_insert_with(DriverEntry::new);
        if entry.socket.as_ref() == Some(&socket) {
            return Vec::new();
        }
        entry.socket = Some(socket.clone());
        entry.capacity = capacity;
        entry.offline_since = None;
        let mut held: Vec<&OrderKey> = entry.carrying.iter().chain(&entry.offered).collect();
        held.sort_by_key(|order| self.orders.get(order).map(|o| o.seq));
        let mut effects: Vec<Effect<S>> = held
            .into_iter()
            .filter_map(|order| self.orders.get(order))
            .map(|order| Effect::Offer {
                driver: key.clone(),
                socket: socket.clone(),
                order: order.order.clone(),
            })
            .collect();
        effects.extend(self.dispatch(now));
        effects
    }

    /// The driver's connection on `socket` is gone (a stale socket of a driver
    /// that already reconnected is ignored). Its offers go to others; an
    /// anonymous driver's packages in transit do too.
    pub fn driver_offline(&mut self, key: &DriverKey, socket: &S, now: Instant) -> Vec<Effect<S>> {
        let Some(entry) = self.drivers.get_mut(key) else {
            return Vec::new();
        };
        if entry.socket.as_ref() != Some(socket) {
            return Vec::new();
        }
        entry.socket = None;
        entry.offline_since = Some(now);
        let mut returned: Vec<OrderKey> = entry.offered.drain().collect();
        if matches!(key, DriverKey::Anonymous(_)) {
            returned.extend(entry.carrying.drain());
        }
        // Memory holds drivers online or holding packages, not every driver
        // ever seen.
        if entry.carrying.is_empty() {
            self.drivers.remove(key);
        }
        for order in returned {
            self.make_ready(&order, None);
        }
        self.dispatch(now)
    }

    /// A vendor's pickup. A new order is queued and offered; the same order
    /// again changes nothing; the same id with another payload is refused.
    pub fn pickup(
        &mut self,
        order: Order,
        now: Instant,
    ) -> Result<(PickupOutcome, Vec<Effect<S>>), Refusal> {
        let key = OrderKey::of(&order);
        if let Some(existing) = self.orders.get(&key) {
            if existing.order != order {
                return Err(Refusal::new(
                    ErrorCode::OrderConflict,
                    format!("{key} already exists with a different payload"),
                ));
            }
            return Ok((PickupOutcome::Repeated(existing.state), Vec::new()));
        }
        let seq = self.next_seq;
        self.next_seq += self.seq_stride;
        let at = Utc::now();
        self.changes.push(Change::NewOrder {
            order: order.clone(),
            seq,
            at,
        });
        self.orders.insert(
            key.clone(),
            OrderEntry {
                order,
                seq,
                state: OrderState::Ready,
                driver: None,
                offer: 0,
                offer_deadline: None,
                passed_over: None,
                store_told_in_transit: false,
                version: 1,
                history: vec![Transition {
                    state: OrderState::Ready,
                    driver: None,
                    at,
                }],
            },
        );
        self.ready.insert(seq, key);
        Ok((PickupOutcome::Accepted, self.dispatch(now)))
    }

    /// `driver` reports `order` picked up.
    pub fn in_transit(
        &mut self,
        driver: &DriverKey,
        key: &OrderKey,
    ) -> Result<Vec<Effect<S>>, Refusal> {
        // A repeat (the driver re-announcing after a reconnect) changes nothing.
        let Some((entry, state)) = reported(&mut self.orders, driver, key, Report::PickUp)? else {
            return Ok(Vec::new());
        };
        let first_time = !std::mem::replace(&mut entry.store_told_in_transit, true);
        if let Some(deadline) = entry.offer_deadline.take() {
            self.offer_deadlines.remove(&deadline);
        }
        let change = entry.enter(key, state, Some(driver.clone()));
        self.changes.push(change);
        let order = entry.order.clone();
        if let Some(holder) = self.drivers.get_mut(driver) {
            holder.offered.remove(key);
            holder.carrying.insert(key.clone());
        }
        Ok(if first_time {
            vec![Effect::Notify {
                event: Event::InTransit,
                order,
            }]
        } else {
            Vec::new()
        })
    }

    /// `driver` reports `order` delivered.
    pub fn delivered(
        &mut self,
        driver: &DriverKey,
        key: &OrderKey,
        now: Instant,
    ) -> Result<Vec<Effect<S>>, Refusal> {
        let closed = self.close_by(driver, key, Report::Deliver, Event::Delivered, now)?;
        if closed.is_some()
            && let Some(holder) = self.drivers.get_mut(driver)
        {
            holder.delivered += 1;
        }
        Ok(closed.unwrap_or_default())
    }

    /// `driver` ends `key` by `report` (a delivery, or any report that
    /// leads to a final state): the order closes, its store gets a notice of
    /// `kind`, and the driver has room for another package. `None` for a
    /// repeat, which changes nothing.
    fn close_by(
        &mut self,
        driver: &DriverKey,
        key: &OrderKey,
        report: Report,
        kind: Event,
        now: Instant,
    ) -> Result<Option<Vec<Effect<S>>>, Refusal> {
        let Some((entry, state)) = reported(&mut self.orders, driver, key, report)? else {
            return Ok(None);
        };
        debug_assert!(state.is_final(), "{report:?} closes an order");
        if let Some(deadline) = entry.offer_deadline.take() {
            self.offer_deadlines.remove(&deadline);
        }
        let change = entry.enter(key, state, Some(driver.clone()));
        self.changes.push(change);
        let order = entry.order.clone();
        if let Some(holder) = self.drivers.get_mut(driver) {
            holder.carrying.remove(key);
            holder.offered.remove(key);
        }
        self.closed[state as usize] += 1;
        self.remember_delivered(key);
        let mut effects = vec![Effect::Notice { kind, order }];
        effects.extend(self.dispatch(now));
        Ok(Some(effects))
    }

    /// Time has passed: expired offers go back to `ready` (other drivers
    /// preferred), packages of drivers away too long are reclaimed, and
    /// waiting orders are offered.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect<S>> {
        while let Some(first) = self.offer_deadlines.first_entry() {
            if first.key().0 > now {
                break;
            }
            let ((_, offer), key) = first.remove_entry();
            let Some(entry) = self.orders.get_mut(&key) else {
                continue;
            };
            entry.offer_deadline = None;
            if entry.state.holder() != Holder::Offered || entry.offer != offer {
                continue;
            }
            let Some(driver) = entry.driver.clone() else {
                continue;
            };
            log::warn!("offer expired {key} driver={driver}; offering it to another driver");
            if let Some(holder) = self.drivers.get_mut(&driver) {
                holder.offered.remove(&key);
            }
            self.make_ready(&key, Some(driver));
        }
        if let Some(reclaim_after) = self.config.reclaim_after {
            let mut reclaimed = Vec::new();
            for (driver, entry) in &mut self.drivers {
                let away_too_long = entry
                    .offline_since
                    .is_some_and(|since| now.duration_since(since) >= reclaim_after);
                if away_too_long && !entry.carrying.is_empty() {
                    log::warn!(
                        "driver={driver} offline too long; re-dispatching {} packages",
                        entry.carrying.len()
                    );
                    reclaimed.extend(entry.carrying.drain());
                }
            }
            if !reclaimed.is_empty() {
                for key in reclaimed {
                    self.make_ready(&key, None);
                }
                self.drivers
                    .retain(|_, entry| entry.socket.is_some() || entry.load() > 0);
            }
        }
        self.dispatch(now)
    }

    /// An operator hands `driver`'s packages (offered and in transit) back
    /// to `ready` now, for others; returns how many, and the new offers.
    /// The driver itself is told nothing: its later reports are refused
    /// `not_assigned`, and it drops the packages.
    pub fn reclaim(&mut self, driver: &DriverKey, now: Instant) -> (u64, Vec<Effect<S>>) {
        let Some(entry) = self.drivers.get_mut(driver) else {
            return (0, Vec::new());
        };
        let mut held: Vec<OrderKey> = entry.offered.drain().collect();
        held.extend(entry.carrying.drain());
        if !held.is_empty() {
            log::warn!(
                "driver={driver}: {} packages handed back by an operator",
                held.len()
            );
        }
        for key in &held {
            self.make_ready(key, Some(driver.clone()));
        }
        if self
            .drivers
            .get(driver)
            .is_some_and(|entry| entry.socket.is_none())
        {
            self.drivers.remove(driver);
        }
        (held.len() as u64, self.dispatch(now))
    }

    /// The packages `driver` holds (offered or in transit), oldest first.
    pub fn held_by(&self, driver: &DriverKey) -> Vec<Order> {
        let Some(entry) = self.drivers.get(driver) else {
            return Vec::new();
        };
        let mut held: Vec<&OrderEntry> = entry
            .carrying
            .iter()
            .chain(&entry.offered)
            .filter_map(|key| self.orders.get(key))
            .collect();
        held.sort_by_key(|order| order.seq);
        held.into_iter().map(|order| order.order.clone()).collect()
    }

    /// How many drivers the desk knows (online, or offline holding packages).
    pub fn driver_count(&self) -> usize {
        self.drivers.len()
    }

    /// How many drivers are believed online.
    pub fn online_driver_count(&self) -> usize {
        self.drivers
            .values()
            .filter(|entry| entry.socket.is_some())
            .count()
    }

    /// Drivers believed online, with their sockets (for liveness checks).
    pub fn online_drivers(&self) -> Vec<(DriverKey, S)> {
        self.drivers
            .iter()
            .filter_map(|(key, entry)| entry.socket.clone().map(|socket| (key.clone(), socket)))
            .collect()
    }

    /// The order's current state, if it is known.
    pub fn state_of(&self, key: &OrderKey) -> Option<OrderState> {
        self.orders.get(key).map(|entry| entry.state)
    }

    /// The order's history, if it is known.
    pub fn history_of(&self, key: &OrderKey) -> Option<&[Transition]> {
        self.orders.get(key).map(|entry| entry.history.as_slice())
    }

    /// The keys of every order known with this id, in any store.
    pub fn find(&self, order_id: &OrderId) -> Vec<OrderKey> {
        let mut keys: Vec<OrderKey> = self
            .orders
            .keys()
            .filter(|key| &key.order_id == order_id)
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// When the order was placed (the first step the desk knows of).
    pub fn placed_at(&self, key: &OrderKey) -> Option<DateTime<Utc>> {
        self.orders
            .get(key)
            .and_then(|entry| entry.history.first())
            .map(|step| step.at)
    }

    /// Offers ready orders, oldest first, while some driver has room.
    fn dispatch(&mut self, now: Instant) -> Vec<Effect<S>> {
        let mut effects = Vec::new();
        while let Some((_, key)) = self.ready.first_key_value() {
            let passed_over = self
                .orders
                .get(key)
                .and_then(|entry| entry.passed_over.clone());
            let Some(driver) = self.choose_driver(passed_over.as_ref()) else {
                break;
            };
            let (_, key) = self.ready.pop_first().expect("first exists");
            let offer = self.next_offer;
            self.next_offer += 1;
            self.assignments += 1;
            let holder = self.drivers.get_mut(&driver).expect("chosen driver exists");
            holder.offered.insert(key.clone());
            holder.last_assigned = self.assignments;
            holder.peak_load = holder.peak_load.max(holder.load());
            let socket = holder.socket.clone().expect("chosen driver is online");
            let entry = self.orders.get_mut(&key).expect("ready order exists");
            let Next::Enter(offered) = next(entry.state, Report::Offer) else {
                unreachable!("{key} is {} in the ready queue", entry.state);
            };
            entry.offer = offer;
            let deadline = (now + self.config.offer_timeout, offer);
            entry.offer_deadline = Some(deadline);
            let change = entry.enter(&key, offered, Some(driver.clone()));
            self.changes.push(change);
            self.offer_deadlines.insert(deadline, key);
            effects.push(Effect::Offer {
                driver,
                socket,
                order: entry.order.clone(),
            });
        }
        effects
    }

    /// The online driver with room and the lowest load; ties to the one given
    /// a package least recently; `passed_over` only if no one else has room.
    fn choose_driver(&self, passed_over: Option<&DriverKey>) -> Option<DriverKey> {
        self.drivers
            .iter()
            .filter(|(_, entry)| entry.has_room())
            .min_by_key(|(key, entry)| {
                (Some(*key) == passed_over, entry.load(), entry.last_assigned)
            })
            .map(|(key, _)| key.clone())
    }

    fn make_ready(&mut self, key: &OrderKey, passed_over: Option<DriverKey>) {
        if let Some(entry) = self.orders.get_mut(key) {
            if let Some(deadline) = entry.offer_deadline.take() {
                self.offer_deadlines.remove(&deadline);
            }
            entry.passed_over = passed_over;
            entry.withdraw(key, &mut self.changes);
            self.ready.insert(entry.seq, key.clone());
        }
    }
}

fn unknown(key: &OrderKey) -> Refusal {
    Refusal::new(ErrorCode::UnknownOrder, format!("no such order: {key}"))
}

/// Where `driver`'s `report` on `key` takes the order: its entry and the
/// state it enters, `None` for a repeat, or the refusal (an order the desk
/// does not know, or one the driver does not hold as the report needs).
fn reported<'a>(
    orders: &'a mut HashMap<OrderKey, OrderEntry>,
    driver: &DriverKey,
    key: &OrderKey,
    report: Report,
) -> Result<Option<(&'a mut OrderEntry, OrderState)>, Refusal> {
    let entry = orders.get_mut(key).ok_or_else(|| unknown(key))?;
    if entry.driver.as_ref() != Some(driver) {
        return Err(not_yours(key, entry));
    }
    match next(entry.state, report) {
        Next::Enter(state) => Ok(Some((entry, state))),
        Next::Unchanged => Ok(None),
        Next::Refused(misstep) => Err(misstep_refusal(misstep, key, entry)),
    }
}

/// The refusal of a report that does not apply to `entry`.
fn misstep_refusal(misstep: Misstep, key: &OrderKey, entry: &OrderEntry) -> Refusal {
    match misstep {
        Misstep::NotHeld => not_yours(key, entry),
        Misstep::TooEarly => Refusal::new(
            ErrorCode::OutOfOrder,
            format!(
                "{key} is {}: report each step in turn (in-transit before delivered)",
                entry.state
            ),
        ),
    }
}

fn not_yours(key: &OrderKey, entry: &OrderEntry) -> Refusal {
    let holder = match &entry.driver {
        Some(driver) => format!("it is {} with {driver}", entry.state),
        None => format!("it is {}", entry.state),
    };
    Refusal::new(
        ErrorCode::NotAssigned,
        format!("{key} is not assigned to you: {holder}"),
    )
}

#[cfg(test)]
mod tests;
