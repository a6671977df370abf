//! How an order is written down in a database: the columns both storage
//! backends ([`super::sqlite`], [`super::postgres`]) share, and the
//! conversions between them and the hub's vocabulary.

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::hub::domain::{DriverKey, OrderState, StoredOrder};
use crate::protocol::{Address, Customer, DriverName, Event, Order, OrderId, StoreId};

/// What a compacted order shows for its customer and address.
pub const REMOVED: &str = "(removed)";

/// An order's row as read, before it is checked.
pub struct OrderRow {
    pub store: String,
    pub order_id: String,
    pub seq: i64,
    pub customer: String,
    pub address: String,
    pub state: String,
    pub driver: Option<String>,
    pub told_in_transit: bool,
    pub since: DateTime<Utc>,
    pub version: i64,
    pub digest: Option<String>,
}

impl OrderRow {
    /// The order as the hub knows it (without its history); an error for a
    /// row no caps wrote.
    pub fn into_stored(self) -> anyhow::Result<StoredOrder> {
        let OrderRow {
            store,
            order_id,
            seq,
            customer,
            address,
            state,
            driver,
            told_in_transit,
            since,
            version,
            digest,
        } = self;
        let state =
            parse_state(&state).with_context(|| format!("unknown order state {state:?}"))?;
        let order = match &digest {
            // A compacted order: its customer and address are gone.
            Some(_) => order_from(store, order_id, REMOVED.into(), REMOVED.into())?,
            None => order_from(store, order_id, customer, address)?,
        };
        Ok(StoredOrder {
            order,
            digest,
            seq: seq as u64,
            state,
            driver: driver.as_deref().and_then(driver_from_column),
            told_in_transit,
            version: version as u64,
            since,
            history: Vec::new(),
        })
    }
}

/// The state written as `name`.
pub fn parse_state(name: &str) -> Option<OrderState> {
    OrderState::parse(name)
}

/// A notice's kind as recorded: the name of the event the store hears it as.
pub fn notice_kind(name: &str) -> anyhow::Result<Event> {
    Event::from_name(name).ok_or_else(|| anyhow::anyhow!("a notice of an unknown kind: {name:?}"))
}

/// Whether a step into `state` closes the order: both engines then set its
/// `closed_at` (to the step's time) and count it under the state's name, so
/// that "open" is `closed_at IS NULL` everywhere and a new final state
/// changes no SQL.
pub fn closes(state: OrderState) -> bool {
    state.is_final()
}

/// How a driver is written down: `n:<name>` or `a:<socket id>`.
pub fn driver_column(driver: &DriverKey) -> String {
    match driver {
        DriverKey::Named(name) => format!("n:{name}"),
        DriverKey::Anonymous(sid) => format!("a:{sid}"),
    }
}

/// The driver written as `column`, if it is one.
pub fn driver_from_column(column: &str) -> Option<DriverKey> {
    if let Some(name) = column.strip_prefix("n:") {
        DriverName::new(name).ok().map(DriverKey::Named)
    } else {
        column
            .strip_prefix("a:")
            .map(|sid| DriverKey::Anonymous(sid.to_owned()))
    }
}

/// An order from its columns, checked as the protocol checks one.
pub fn order_from(
    store: String,
    order_id: String,
    customer: String,
    address: String,
) -> anyhow::Result<Order> {
    Ok(Order {
        store: StoreId::new(store).map_err(anyhow::Error::msg)?,
        order_id: OrderId::new(order_id).map_err(anyhow::Error::msg)?,
        customer: Customer::new(customer).map_err(anyhow::Error::msg)?,
        address: Address::new(address).map_err(anyhow::Error::msg)?,
    })
}
