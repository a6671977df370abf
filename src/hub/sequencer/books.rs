//! The books: what events read and change (the desk, the stores' mailboxes,
//! who speaks for which store, the event log) and the rules every event
//! shares over them: what the desk's effects mean, and how a group of hubs
//! answers for packages this hub does not hold.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::time::Instant;

use super::group_link::GroupLink;
use super::handle::peer_of;
use super::message::Message;
use super::outbox::Output;
use crate::hub::desk::{Desk, Effect};
use crate::hub::domain::{Change, DriverKey, OrderKey, StoredOrder};
use crate::hub::event_log::EventLog;
use crate::hub::mailbox::Mailbox;
use crate::hub::metrics::Metrics;
use crate::hub::peer::Peer;
use crate::hub::storage::journal::Records;
use crate::protocol::{DeliveryNotice, ErrorCode, Event, Order, Refusal, StoreId};

/// The state events work on, owned by the sequencer.
pub struct Books {
    /// Who holds which package, and who gets the next one.
    pub desk: Desk<SocketRef>,
    /// The stores' notices, kept until acknowledged.
    pub mailbox: Mailbox,
    /// Mailbox changes not yet handed to the journal.
    pub(super) mailbox_changes: Vec<Change>,
    /// The hub's stdout: one line per event applied.
    pub log: EventLog,
    pub(super) metrics: Arc<Metrics>,
    /// The stores each vendor socket speaks for.
    pub(super) vendors: HashMap<Sid, HashSet<StoreId>>,
    /// Committed orders: the authority for those the desk no longer holds.
    pub(super) records: Option<Box<dyn Records>>,
    /// In a group of hubs, the group's side. Remote records come with a
    /// group (`Hub::open` gives every hub on PostgreSQL one); without it,
    /// nothing would move a driver's packages here, so a report on a package
    /// this hub does not know is refused as unknown rather than "try again".
    pub(super) group: Option<Arc<dyn GroupLink>>,
}

impl Books {
    /// The step just applied went to the journal as entry `seq`.
    pub fn sealed(&mut self, seq: u64) {
        self.desk.sealed(seq);
        self.mailbox.sealed(seq);
    }

    /// The tables hold every journal entry up to `seq` (or refused it):
    /// what was kept in memory until then for the records' readers may go.
    pub fn in_tables(&mut self, seq: u64) {
        self.desk.in_tables(seq);
        self.mailbox.in_tables(seq);
    }

    /// Turns the desk's effects into outputs.
    pub fn add_effects(&mut self, effects: Vec<Effect<SocketRef>>, outputs: &mut Vec<Output>) {
        for effect in effects {
            let output = match effect {
                Effect::Offer {
                    driver,
                    socket,
                    order,
                } => Output::Offer {
                    driver,
                    socket,
                    order,
                },
                Effect::Notify { event, order } => Output::ToStore {
                    event,
                    store: order.store.clone(),
                    message: Message::Order(order),
                },
                Effect::Notice { kind, order } => self.queue_notice(kind, order),
            };
            outputs.push(output);
        }
    }

    /// Queues a notice of `kind` about `order` in its store's mailbox, where
    /// it stays until the store says `received`; returns the message that
    /// tells the store now.
    fn queue_notice(&mut self, kind: Event, order: Order) -> Output {
        if kind == Event::Delivered
            && let Some(placed) = self.desk.placed_at(&OrderKey::of(&order))
        {
            let latency = Utc::now().signed_duration_since(placed);
            self.metrics
                .delivered_after(latency.num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        let (message_id, changes) = self.mailbox.enqueue(kind, order.clone());
        self.mailbox_changes.extend(changes);
        Output::ToStore {
            event: kind,
            store: order.store.clone(),
            message: Message::Notice(DeliveryNotice::of_kind(kind, order, message_id)),
        }
    }

    /// The recorded order `key`, if the desk no longer holds it in memory
    /// but the data dir has it (delivered, however long ago).
    pub fn recorded(&self, key: &OrderKey) -> Result<Option<StoredOrder>, Refusal> {
        let Some(records) = &self.records else {
            return Ok(None);
        };
        records.order(key).map_err(|error| {
            log::error!("cannot read {key} from the data dir: {error:#}");
            Refusal::new(
                ErrorCode::Busy,
                "the hub cannot read its records; try again",
            )
        })
    }

    /// Whether the records are read across the network (see
    /// [`Records::is_remote`]).
    pub fn records_are_remote(&self) -> bool {
        self.records
            .as_ref()
            .is_some_and(|records| records.is_remote())
    }

    /// Whether a pickup of `key` must look the order up first: the records
    /// are local (cheap to read), or another hub was found to hold it.
    pub fn look_up_first(&self, key: &OrderKey) -> bool {
        !self.records_are_remote()
            || self
                .group
                .as_ref()
                .is_some_and(|group| group.is_elsewhere(key))
    }

    /// Notes that another hub records `key` (this hub's copy was refused and
    /// none was read back).
    pub(super) fn found_elsewhere(&self, key: &OrderKey) {
        if let Some(group) = &self.group {
            group.found_elsewhere(key.clone());
        }
    }

    /// The answer to `driver`'s report on `key` that the desk refused. In a
    /// group, a package the desk does not know may be recorded at another
    /// hub (it took the order while this one restarted): the driver is
    /// told to try again, which it does, once the group has moved its
    /// packages here; refused as unknown, it would drop the package.
    pub fn report_refused(&self, driver: &DriverKey, key: &OrderKey, refusal: Refusal) -> Refusal {
        let (DriverKey::Named(name), Some(group)) = (driver, &self.group) else {
            return refusal;
        };
        if refusal.code != ErrorCode::UnknownOrder || !self.records_are_remote() {
            return refusal;
        }
        group.claim_later(name.clone());
        Refusal::new(
            ErrorCode::Busy,
            format!(
                "{key} is recorded at another hub of the group; it is being moved here: try again"
            ),
        )
    }

    /// Puts the socket in the store's room. A socket that had declared
    /// nothing is a lab vendor: it leaves the drivers and its offers go to
    /// others.
    pub fn join(&mut self, socket: &SocketRef, store: StoreId, outputs: &mut Vec<Output>) {
        socket.join(crate::hub::domain::rooms::store(&store));
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

    pub(super) fn add_vendor(&mut self, socket: &SocketRef, store: StoreId) {
        if socket.connected() {
            self.vendors.entry(socket.id).or_default().insert(store);
        }
    }

    /// Makes sure the desk knows this driver socket (its connect may not have
    /// been applied yet when its first event arrives).
    pub fn ensure_driver_online(&mut self, socket: &SocketRef, outputs: &mut Vec<Output>) {
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

    /// Records a mailbox change made by an event.
    pub fn record_mailbox_change(&mut self, change: Change) {
        self.mailbox_changes.push(change);
    }
}
