//! The hub's vocabulary: the names of orders and drivers, the changes of
//! state the hub records, and what it reads back at start.
//!
//! Every other part of the hub (the dispatch desk, the mailboxes, the journal,
//! the storage backends, the peers) speaks in these types and depends on this
//! module rather than on each other. It depends on nothing in the hub (only
//! on the contracts: the protocol's types, and the API's views of an order).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::{OrderCounts, OrderSummary, OrderView, TransitionView};
pub use crate::protocol::OrderState;
use crate::protocol::{DriverName, Event, MessageId, Order, OrderId, StoreId};

/// Socket.IO rooms. A store's room and the hub's own rooms live in separate
/// name spaces (`store:` and `hub:`), so that no store id, whatever it is,
/// names a room of another audience.
pub mod rooms {
    use crate::protocol::StoreId;

    /// The room of every viewer and operator; `activity` is sent there.
    pub const VIEWERS: &str = "hub:viewers";

    /// The room of `store`'s vendors.
    pub fn store(store: &StoreId) -> String {
        format!("store:{store}")
    }
}

/// Orders are unique per store: two shops may both have an order "1".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderKey {
    /// The order's store.
    pub store: StoreId,
    /// Its id within the store.
    pub order_id: OrderId,
}

impl OrderKey {
    /// The key of `order`.
    pub fn of(order: &Order) -> Self {
        OrderKey {
            store: order.store.clone(),
            order_id: order.order_id.clone(),
        }
    }
}

impl fmt::Display for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store={} order={}", self.store, self.order_id)
    }
}

/// Who a driver is. A named driver keeps its packages across reconnections;
/// an anonymous one (a client that declared nothing) is known only by its
/// socket, so its packages go back to `ready` when it leaves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DriverKey {
    /// A driver that declared a name.
    Named(DriverName),
    /// A client that declared nothing, by socket id.
    Anonymous(String),
}

impl fmt::Display for DriverKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverKey::Named(name) => write!(f, "{name}"),
            DriverKey::Anonymous(sid) => write!(f, "anonymous-{sid}"),
        }
    }
}

/// One step in an order's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state entered.
    pub state: OrderState,
    /// The driver holding it then.
    pub driver: Option<DriverKey>,
    /// When.
    pub at: DateTime<Utc>,
}

/// One change of the hub's state, as the journal records it. Each is
/// conditional: a new order only if its key is new, a transition only from the
/// version it was decided on; the storage refuses one that does not hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A new order, in `ready`.
    NewOrder {
        /// The order.
        order: Order,
        /// Its arrival number.
        seq: u64,
        /// When it arrived.
        at: DateTime<Utc>,
    },
    /// An order moved to another state: recorded only if the order is still
    /// at `version` in the data dir (nobody else changed it meanwhile).
    Transition {
        /// Which order.
        key: OrderKey,
        /// Its arrival number, where a data dir kept in arrival order finds
        /// it without searching by key.
        seq: u64,
        /// How many changes of state were recorded for it before this one.
        version: u64,
        /// Its new state.
        state: OrderState,
        /// Who holds it now.
        driver: Option<DriverKey>,
        /// Whether its store has been told it is in transit.
        told_in_transit: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// A notice was queued for the order's store.
    NoticeQueued {
        /// Its id.
        message_id: MessageId,
        /// What it tells (`delivered`): the event the store hears it as.
        kind: Event,
        /// The order.
        order: Order,
        /// When.
        at: DateTime<Utc>,
    },
    /// A notice left its queue (acknowledged, or dropped over the limit).
    NoticeRemoved {
        /// Its id.
        message_id: MessageId,
    },
    /// A store acknowledged the notice whose message id, or whose order's
    /// id (as older course code sends), is `id`, without the hub looking it
    /// up first (a shared database, where a look-up is a round trip): it
    /// leaves the queue if it is there, and the commit reports the step if
    /// it was not (the sender is then refused `unknown_message`).
    NoticeAcknowledged {
        /// The store.
        store: StoreId,
        /// A message id, or an order id.
        id: String,
    },
    /// A store's queue was over its limit: all but its newest `keep`
    /// notices are dropped.
    NoticesTrimmed {
        /// The store.
        store: StoreId,
        /// How many of its newest notices stay.
        keep: u64,
    },
}

impl Change {
    /// The order this change is about, if it is an order's state.
    pub fn order_key(&self) -> Option<OrderKey> {
        match self {
            Change::NewOrder { order, .. } => Some(OrderKey::of(order)),
            Change::Transition { key, .. } => Some(key.clone()),
            Change::NoticeQueued { .. }
            | Change::NoticeRemoved { .. }
            | Change::NoticeAcknowledged { .. }
            | Change::NoticesTrimmed { .. } => None,
        }
    }
}

/// An order as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOrder {
    /// The order.
    pub order: Order,
    /// Its arrival number.
    pub seq: u64,
    /// Its state.
    pub state: OrderState,
    /// Who held it.
    pub driver: Option<DriverKey>,
    /// Whether its store was told it is in transit.
    pub told_in_transit: bool,
    /// How many changes of state are recorded for it (a new order has 1).
    pub version: u64,
    /// Set once the order was compacted: its customer and address are gone
    /// (the order shows placeholders) and this digest of them stays.
    pub digest: Option<String>,
    /// When it entered its state.
    pub since: DateTime<Utc>,
    /// Every state it entered, oldest first.
    pub history: Vec<Transition>,
}

impl StoredOrder {
    /// The order as `GET /api/orders/{id}` shows it.
    pub fn view(self) -> OrderView {
        OrderView {
            store: self.order.store,
            order_id: self.order.order_id,
            customer: self.order.customer.to_string(),
            address: self.order.address.to_string(),
            state: self.state,
            driver: self.driver.as_ref().map(ToString::to_string),
            history: self
                .history
                .into_iter()
                .map(|step| TransitionView {
                    state: step.state,
                    driver: step.driver.as_ref().map(ToString::to_string),
                    at: step.at,
                })
                .collect(),
        }
    }

    /// The order as one line of `GET /api/orders`.
    pub fn summary(&self) -> OrderSummary {
        OrderSummary {
            store: self.order.store.clone(),
            order_id: self.order.order_id.clone(),
            state: self.state,
            driver: self.driver.as_ref().map(ToString::to_string),
            since: self.since,
        }
    }

    /// Whether `order` is this same order again (same payload), even after
    /// it was compacted.
    pub fn is_same(&self, order: &Order) -> bool {
        match &self.digest {
            Some(digest) => {
                OrderKey::of(&self.order) == OrderKey::of(order)
                    && *digest == payload_digest(order.customer.as_str(), order.address.as_str())
            }
            None => self.order == *order,
        }
    }
}

/// The digest a compacted order keeps of its customer and address.
pub fn payload_digest(customer: &str, address: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(customer.as_bytes());
    hash.update([0]);
    hash.update(address.as_bytes());
    hash.finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A queued notice as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNotice {
    /// Its place in the queue: later notices have higher places.
    pub place: u64,
    /// Its id.
    pub message_id: MessageId,
    /// What it tells: the event the store hears it as.
    pub kind: Event,
    /// The order.
    pub order: Order,
}

/// Everything the hub needs to resume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Open orders, by arrival (delivered ones stay in the data dir).
    pub orders: Vec<StoredOrder>,
    /// How many orders ever entered each final state (the open states'
    /// counts are zero: the desk counts its open orders itself).
    pub closed: OrderCounts,
    /// The arrival number the next new order gets (one past every recorded one).
    pub next_seq: u64,
    /// The step between the arrival numbers this hub hands out (0 or 1: every
    /// number). Hubs sharing one database each take every `seq_stride`-th
    /// number, from their own offset, so numbers are unique across them.
    pub seq_stride: u64,
    /// How many notices each store has queued (they stay in the data dir).
    pub queue_counts: Vec<(StoreId, u64)>,
}

/// Which orders a listing wants, oldest first.
#[derive(Debug, Clone, Default)]
pub struct OrderQuery {
    /// Only this store's orders.
    pub store: Option<StoreId>,
    /// Only orders in this state.
    pub state: Option<OrderState>,
    /// Only orders after this arrival number.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}
