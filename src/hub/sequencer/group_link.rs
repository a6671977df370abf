//! What the sequencer needs of a group of hubs, as a port the group fills in
//! (`crate::hub::group`): the sequencer never names the group, so the group
//! may drive the sequencer without an import circle.

use crate::hub::domain::OrderKey;
use crate::protocol::{DriverName, Event, StoreId};

/// The sequencer's side of a group of hubs.
pub trait GroupLink: Send + Sync {
    /// Publishes what this hub told `store`'s room (or, with no store, its
    /// viewers), for the other hubs to repeat to theirs.
    fn publish(&self, store: Option<&StoreId>, event: Event, message: serde_json::Value);

    /// This hub's insert of `key` was refused: another hub records it, and a
    /// pickup of it must be looked up before it is taken.
    fn found_elsewhere(&self, key: OrderKey);

    /// Whether `key` was found recorded at another hub.
    fn is_elsewhere(&self, key: &OrderKey) -> bool;

    /// `driver`, connected here, reported on a package another hub records
    /// (it took the package while this hub restarted, say): the group moves
    /// the driver's packages here.
    fn claim_later(&self, driver: DriverName);
}
