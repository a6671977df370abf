//! `in-transit`: a driver has picked a package up.

use serde::Deserialize;

use super::ClientEvent;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{EventContext, Reply};
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

    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply) {
        let InTransit(order) = *self;
        cx.driver_report(Event::InTransit, order, reply, |desk, driver, key, _| {
            desk.in_transit(driver, key)
        });
    }
}
