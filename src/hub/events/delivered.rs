//! `delivered`: a driver has delivered a package; its store is told, and the
//! notice waits in the store's queue until the store says `received` (the
//! desk says so: its verdict is a notice, not news told once).

use serde::Deserialize;

use super::ClientEvent;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{EventContext, Reply};
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

    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply) {
        let Delivered(order) = *self;
        cx.driver_report(Event::Delivered, order, reply, |desk, driver, key, now| {
            desk.delivered(driver, key, now)
        });
    }
}
