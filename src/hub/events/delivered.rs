//! `delivered`: a driver has delivered a package; its store is told, and the
//! notice waits in the store's queue until the store says `received` (the
//! desk says so: its verdict is a notice, not news told once).

use serde::Deserialize;
use tokio::time::Instant;

use super::ClientEvent;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{Origin, Output, Reply, Sequencer};
use crate::protocol::{Event, Order, Refusal};

/// `delivered`: the sender has handed this package over.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Delivered(Order);

impl ClientEvent for Delivered {
    fn event(&self) -> Event {
        Event::Delivered
    }

    fn order(&self) -> Option<&Order> {
        Some(&self.0)
    }

    fn permit(&self, peer: &Peer) -> Result<(), Refusal> {
        peer.may_carry()
    }

    fn apply(
        self: Box<Self>,
        hub: &mut Sequencer,
        from: &Origin,
        reply: Reply,
        out: &mut Vec<Output>,
    ) {
        let Delivered(order) = *self;
        hub.driver_report(
            Event::Delivered,
            order,
            (from, reply),
            out,
            |desk, driver, key| desk.delivered(driver, key, Instant::now()),
        );
    }
}
