//! `in-transit`: a driver has picked a package up.

use serde::Deserialize;

use super::{ClientEvent, refused};
use crate::hub::domain::OrderKey;
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
        let driver = hub.reporting_driver(from, out);
        let key = OrderKey::of(&order);
        match hub.desk.in_transit(&driver, &key) {
            Ok(effects) => {
                hub.log.record(Event::InTransit, &order);
                out.push(Output::Accept(reply));
                hub.add_effects(effects, out);
            }
            Err(refusal) => {
                let refusal = hub.report_refused(&driver, &key, refusal);
                out.push(refused(reply, Some(order), refusal));
            }
        }
    }
}
