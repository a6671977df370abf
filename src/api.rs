//! The hub's HTTP API payloads, shared by the hub (which serves them) and
//! `caps status` (which reads them).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::protocol::{OrderId, StoreId};

/// Path of the status endpoint.
pub const STATUS_PATH: &str = "/api/status";

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderState {
    /// Waiting for a driver.
    Ready,
    /// Offered to one driver, who has not picked it up yet.
    Assigned,
    /// Picked up by its driver.
    InTransit,
    /// Delivered; final.
    Delivered,
}

impl OrderState {
    /// Every state, in lifecycle order.
    pub const ALL: [OrderState; 4] = [
        OrderState::Ready,
        OrderState::Assigned,
        OrderState::InTransit,
        OrderState::Delivered,
    ];

    /// The state's name, as the API spells it.
    pub const fn name(self) -> &'static str {
        match self {
            OrderState::Ready => "ready",
            OrderState::Assigned => "assigned",
            OrderState::InTransit => "in-transit",
            OrderState::Delivered => "delivered",
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// Orders per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCounts {
    /// Waiting for a driver.
    pub ready: u64,
    /// Offered to a driver.
    pub assigned: u64,
    /// Picked up.
    #[serde(rename = "in-transit")]
    pub in_transit: u64,
    /// Delivered since the hub started.
    pub delivered: u64,
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
