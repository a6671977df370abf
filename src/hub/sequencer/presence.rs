//! Who is online (drivers with their loads, stores with vendors, connection
//! counts), as the sequencer last published it, so that readers (the status
//! page, `/metrics`) never wait on the task that applies events.

use tokio::sync::watch;

use crate::api::{DriverStatus, StoreStatus};

/// The online side of the board.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Every driver online, and every driver offline that holds packages.
    pub drivers: Vec<DriverStatus>,
    /// Stores with vendors connected.
    pub stores: Vec<StoreStatus>,
    /// Connections by role.
    pub connections: Connections,
}

/// Connections by role: vendors, drivers, viewers.
pub type Connections = [(&'static str, usize); 3];

/// A reader's view of [`Presence`]; clone it freely.
pub type PresenceView = watch::Receiver<Presence>;

impl Presence {
    /// This hub's drivers and stores with those of the other hubs of its
    /// group: a driver seen on two hubs (it just moved) counts once, online
    /// if it is online anywhere; vendors are counted per store over all hubs.
    pub fn with_others(&self, others: &GroupPresence) -> (Vec<DriverStatus>, Vec<StoreStatus>) {
        let mut drivers: std::collections::BTreeMap<&str, &DriverStatus> = Default::default();
        for driver in self.drivers.iter().chain(&others.drivers) {
            let kept = drivers.entry(&driver.name).or_insert(driver);
            if driver.online && !kept.online {
                *kept = driver;
            }
        }
        let mut stores: std::collections::BTreeMap<&crate::protocol::StoreId, u32> =
            Default::default();
        for store in self.stores.iter().chain(&others.stores) {
            *stores.entry(&store.store).or_default() += store.vendors;
        }
        (
            drivers.into_values().cloned().collect(),
            stores
                .into_iter()
                .map(|(store, vendors)| StoreStatus {
                    store: store.clone(),
                    vendors,
                })
                .collect(),
        )
    }
}

/// Who is online at the other hubs of a group, as they last recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupPresence {
    /// Their drivers.
    pub drivers: Vec<DriverStatus>,
    /// Their stores with vendors.
    pub stores: Vec<StoreStatus>,
}

/// Where the sequencer publishes [`Presence`].
pub struct PresenceBoard {
    sender: watch::Sender<Presence>,
}

impl PresenceBoard {
    /// A board and its first reader.
    pub fn new() -> (PresenceBoard, PresenceView) {
        let (sender, view) = watch::channel(Presence::default());
        (PresenceBoard { sender }, view)
    }

    /// Publishes `presence` if it differs from what readers see.
    pub fn publish(&self, presence: Presence) {
        self.sender.send_if_modified(|shown| {
            let changed = *shown != presence;
            if changed {
                *shown = presence;
            }
            changed
        });
    }
}
