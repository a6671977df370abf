//! `in-transit`: a driver has picked a package up.

use serde::Deserialize;

use super::ClientEvent;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{Origin, Output, Reply, Sequencer};
use crate::protocol::{Event, Order, Refusal};

/// `in-transit`: the sender carries this package now.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct InTransit(Order);

impl ClientEvent for InTransit {
    fn event(&self) -> Event {
        Event::InTransit
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
        let InTransit(order) = *self;
        hub.driver_report(
            Event::InTransit,
            order,
            (from, reply),
            out,
            |desk, driver, key| desk.in_transit(driver, key),
        );
    }
}
