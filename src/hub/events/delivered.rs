//! `delivered`: a driver has delivered a package; its store is told, and the
//! notice waits in the store's queue until the store says `received`.

use serde::Deserialize;
use tokio::time::Instant;

use super::{ClientEvent, refused};
use crate::hub::desk::Effect;
use crate::hub::domain::OrderKey;
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
        let driver = hub.reporting_driver(from, out);
        let key = OrderKey::of(&order);
        match hub.desk.delivered(&driver, &key, Instant::now()) {
            Ok(effects) => {
                hub.log.record(Event::Delivered, &order);
                out.push(Output::Accept(reply));
                for effect in effects {
                    match effect {
                        // Every delivery is queued for its store until `received`.
                        Effect::Notify {
                            event: Event::Delivered,
                            order,
                        } => {
                            let notice = hub.queue_delivery_notice(order);
                            out.push(notice);
                        }
                        other => hub.add_effects(vec![other], out),
                    }
                }
            }
            Err(refusal) => {
                let refusal = hub.report_refused(&driver, &key, refusal);
                out.push(refused(reply, Some(order), refusal));
            }
        }
    }
}
