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
