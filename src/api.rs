//! The hub's HTTP API payloads, shared by the hub (which serves them) and
//! `caps status` (which reads them).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::protocol::{OrderId, OrderState, StoreId};

/// Path of the status endpoint.
pub const STATUS_PATH: &str = "/api/status";
/// Path of the orders collection (`GET` to list, `POST` to place one).
pub const ORDERS_PATH: &str = "/api/orders";
/// `POST /api/drivers/{name}/reclaim`: hand a driver's packages back.
pub fn reclaim_path(name: &str) -> String {
    format!("/api/drivers/{name}/reclaim")
}

/// The answer of `POST /api/drivers/{name}/reclaim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaimed {
    /// The driver.
    pub driver: String,
    /// How many of its packages went back to `ready`.
    pub reclaimed: u64,
}

/// The most orders one page of `GET /api/orders` returns.
pub const MAX_PAGE: usize = 500;

/// `GET /api/status`: the hub's dispatch board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// How many orders are in each state.
    pub orders: OrderCounts,
    /// Orders not yet delivered, oldest first (at most [`Status::OPEN_ORDERS_SHOWN`]).
    pub open_orders: Vec<OrderSummary>,
    /// Drivers the hub knows: online ones, and offline ones still holding packages.
    pub drivers: Vec<DriverStatus>,
    /// Stores with at least one vendor connected.
    pub stores: Vec<StoreStatus>,
    /// Stores with delivery notices their vendors have not acknowledged.
    pub queues: Vec<QueueStatus>,
}

impl Status {
    /// The most open orders listed.
    pub const OPEN_ORDERS_SHOWN: usize = 1000;
}

/// Orders per state: open ones as they are now, final ones since the
/// records began. On the wire, an object with every state's name (see
/// [`crate::lifecycle`]); a state a client does not know is left out when
/// read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderCounts([u64; OrderState::COUNT]);

impl OrderCounts {
    /// How many orders are in `state`.
    pub fn get(&self, state: OrderState) -> u64 {
        self.0[state as usize]
    }

    /// Sets how many orders are in `state`.
    pub fn set(&mut self, state: OrderState, count: u64) {
        self.0[state as usize] = count;
    }

    /// Counts one more order in `state`.
    pub fn add_one(&mut self, state: OrderState) {
        self.0[state as usize] += 1;
    }

    /// Every state with its count, in lifecycle order.
    pub fn iter(&self) -> impl Iterator<Item = (OrderState, u64)> + '_ {
        OrderState::ALL
            .into_iter()
            .map(|state| (state, self.get(state)))
    }
}

impl Serialize for OrderCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(OrderState::COUNT))?;
        for (state, count) in self.iter() {
            map.serialize_entry(state.name(), &count)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for OrderCounts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let named = std::collections::BTreeMap::<String, u64>::deserialize(deserializer)?;
        let mut counts = OrderCounts::default();
        for (name, count) in named {
            if let Some(state) = OrderState::parse(&name) {
                counts.set(state, count);
            }
        }
        Ok(counts)
    }
}

/// One open order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    /// Its store.
    pub store: StoreId,
    /// Its id.
    pub order_id: OrderId,
    /// Where it is.
    pub state: OrderState,
    /// Who has it, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// When it entered this state.
    pub since: DateTime<Utc>,
}

/// One driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverStatus {
    /// Its name (`anonymous-<socket id>` for clients that declared none).
    pub name: String,
    /// Whether it is connected now.
    pub online: bool,
    /// Open packages it holds: offered plus in transit.
    pub load: u32,
    /// The most it may hold; none means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// The highest load it ever had.
    pub peak_load: u32,
    /// Packages it delivered.
    pub delivered: u64,
}

/// One store with vendors online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The store.
    pub store: StoreId,
    /// How many vendor connections it has.
    pub vendors: u32,
}

/// One store's queue of unacknowledged delivery notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// The store.
    pub store: StoreId,
    /// How many notices wait for its `received`.
    pub queued: u64,
}

/// `GET /api/orders/{orderId}`: one order and its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order's store.
    pub store: StoreId,
    /// Its id.
    pub order_id: OrderId,
    /// Who it is for.
    pub customer: String,
    /// Where it goes.
    pub address: String,
    /// Where it is now.
    pub state: OrderState,
    /// Who holds it, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Every state it entered, oldest first.
    pub history: Vec<TransitionView>,
}

/// One step of an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionView {
    /// The state entered.
    pub state: OrderState,
    /// The driver holding it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// `GET /api/orders?store=&state=&after=&limit=`: a page of orders, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    /// The orders on this page.
    pub orders: Vec<OrderSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// The body of `POST /api/orders`: an order; `orderId` is made up if absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    /// The store placing it.
    pub store: StoreId,
    /// Its id; a UUID is made if absent.
    #[serde(default, alias = "orderID")]
    pub order_id: Option<OrderId>,
    /// Who it is for.
    pub customer: crate::protocol::Customer,
    /// Where it goes.
    pub address: crate::protocol::Address,
}
