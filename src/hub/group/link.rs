//! The group's side of the sequencer ([`GroupLink`]): the bridge's outgoing
//! end, and what the sequencer found out about packages other hubs record,
//! which the group's chores act on.

use std::collections::HashSet;
use std::sync::Mutex;

use super::bridge::Bridge;
use crate::hub::domain::OrderKey;
use crate::hub::sequencer::GroupLink;
use crate::protocol::{DriverName, Event, StoreId};

/// Orders known to be recorded at other hubs, and drivers to claim,
/// remembered at most (each set is cleared when full).
const KEPT: usize = 10_000;

/// What the sequencer tells the group, and publishes through it.
pub struct Link {
    bridge: Bridge,
    /// Orders another hub records, found when this hub's insert of one was
    /// refused: a pickup of one is looked up before it is taken.
    elsewhere: Mutex<HashSet<OrderKey>>,
    /// Drivers here that reported on packages another hub records: the
    /// group moves their packages here at its next beat.
    to_claim: Mutex<HashSet<DriverName>>,
}

impl Link {
    /// The link publishing through `bridge`.
    pub fn new(bridge: Bridge) -> Self {
        Link {
            bridge,
            elsewhere: Mutex::default(),
            to_claim: Mutex::default(),
        }
    }

    /// The drivers whose packages should be moved here, taken.
    pub fn take_drivers_to_claim(&self) -> Vec<DriverName> {
        lock(&self.to_claim).drain().collect()
    }
}

impl GroupLink for Link {
    fn publish(&self, store: Option<&StoreId>, event: Event, message: serde_json::Value) {
        self.bridge.publish(store, event, message);
    }

    fn found_elsewhere(&self, key: OrderKey) {
        insert_bounded(&mut lock(&self.elsewhere), key);
    }

    fn is_elsewhere(&self, key: &OrderKey) -> bool {
        lock(&self.elsewhere).contains(key)
    }

    fn claim_later(&self, driver: DriverName) {
        insert_bounded(&mut lock(&self.to_claim), driver);
    }
}

/// A set's lock; a panic elsewhere while it was held leaves a set that is
/// still whole.
fn lock<T>(set: &Mutex<HashSet<T>>) -> std::sync::MutexGuard<'_, HashSet<T>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn insert_bounded<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, item: T) {
    if set.len() >= KEPT {
        set.clear();
    }
    set.insert(item);
}
