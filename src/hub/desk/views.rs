//! The desk's read views, in the shapes of the HTTP API: one order, a page
//! of orders, the counts, and the drivers.

use chrono::Utc;

use super::{Desk, OrderEntry};
use crate::api::{DriverStatus, OrderCounts, OrderPage, OrderSummary, OrderView};
use crate::hub::domain::{OrderKey, OrderState, StoredOrder};
use crate::protocol::StoreId;

impl<S: Clone + PartialEq> Desk<S> {
    /// One order, its state and its history.
    pub fn view(&self, key: &OrderKey) -> Option<OrderView> {
        self.orders.get(key).map(|entry| record_of(entry).view())
    }

    /// A page of orders, oldest first, after arrival number `after`.
    pub fn page(
        &self,
        store: Option<&StoreId>,
        state: Option<OrderState>,
        after: Option<u64>,
        limit: usize,
    ) -> OrderPage {
        let limit = limit.max(1);
        let mut matching: Vec<&OrderEntry> = self
            .orders
            .values()
            .filter(|entry| store.is_none_or(|store| &entry.order.store == store))
            .filter(|entry| state.is_none_or(|state| entry.state == state))
            .filter(|entry| after.is_none_or(|after| entry.seq > after))
            .collect();
        matching.sort_by_key(|entry| entry.seq);
        let next = (matching.len() > limit).then(|| matching[limit - 1].seq);
        let orders = matching
            .into_iter()
            .take(limit)
            .map(|entry| record_of(entry).summary())
            .collect();
        OrderPage { orders, next }
    }

    /// Orders per state.
    pub fn counts(&self) -> OrderCounts {
        let mut counts = OrderCounts::default();
        for entry in self.orders.values().filter(|entry| entry.state.is_open()) {
            counts.add_one(entry.state);
        }
        for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
            counts.set(state, self.closed[state as usize]);
        }
        counts
    }

    /// Open orders, oldest first, at most `limit`.
    pub fn open_orders(&self, limit: usize) -> Vec<OrderSummary> {
        let mut open: Vec<&OrderEntry> = self
            .orders
            .values()
            .filter(|entry| entry.state.is_open())
            .collect();
        open.sort_by_key(|entry| entry.seq);
        open.into_iter()
            .take(limit)
            .map(|entry| record_of(entry).summary())
            .collect()
    }

    /// Every driver online, and every driver offline that still holds packages.
    pub fn drivers(&self) -> Vec<DriverStatus> {
        let mut drivers: Vec<DriverStatus> = self
            .drivers
            .iter()
            .filter(|(_, entry)| entry.socket.is_some() || entry.load() > 0)
            .map(|(key, entry)| DriverStatus {
                name: key.to_string(),
                online: entry.socket.is_some(),
                load: entry.load(),
                capacity: entry.capacity,
                peak_load: entry.peak_load,
                delivered: entry.delivered,
            })
            .collect();
        drivers.sort_by(|a, b| a.name.cmp(&b.name));
        drivers
    }
}

/// The entry as it would be recorded.
fn record_of(entry: &OrderEntry) -> StoredOrder {
    StoredOrder {
        order: entry.order.clone(),
        seq: entry.seq,
        state: entry.state,
        driver: entry.driver.clone(),
        told_in_transit: entry.store_told_in_transit,
        version: entry.version,
        digest: None,
        since: entry.history.last().map_or_else(Utc::now, |step| step.at),
        history: entry.history.clone(),
    }
}
