//! `getAll` (Phase 3): replay what the sender has not acknowledged: a store's
//! queued delivery notices, or a driver's packages.

use serde::Deserialize;

use super::{ClientEvent, may_use_queue, refused};
use crate::hub::peer::Peer;
use crate::hub::sequencer::{Message, Origin, Output, Reply, Sequencer};
use crate::protocol::{DeliveryNotice, Event, QueueRequest, Refusal};

/// `getAll`: send everything still queued for the sender.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct GetAll(QueueRequest);

impl ClientEvent for GetAll {
    fn event(&self) -> Event {
        Event::GetAll
    }

    fn permit(&self, peer: &Peer) -> Result<(), Refusal> {
        may_use_queue(&self.0, peer)
    }

    fn apply(
        self: Box<Self>,
        hub: &mut Sequencer,
        from: &Origin,
        reply: Reply,
        out: &mut Vec<Output>,
    ) {
        let GetAll(request) = *self;
        hub.log.record(Event::GetAll, &request);
        if let Some(socket) = from.socket() {
            match request.event.unwrap_or(Event::Delivered) {
                Event::Delivered => match hub.mailbox.pending(&request.queue_id) {
                    Ok(pending) => {
                        for (message_id, order) in pending {
                            out.push(Output::ToSocket {
                                socket: socket.clone(),
                                event: Event::Delivered,
                                message: Message::Notice(DeliveryNotice::new(order, message_id)),
                            });
                        }
                    }
                    Err(refusal) => return out.push(refused(reply, None, refusal)),
                },
                Event::Pickup => {
                    // A driver catching up: everything it holds, again.
                    if let Some(driver) = from.peer().driver_key(&socket.id.to_string()) {
                        for order in hub.desk.held_by(&driver) {
                            out.push(Output::ToSocket {
                                socket: socket.clone(),
                                event: Event::Pickup,
                                message: Message::Order(order),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(Output::Accept(reply));
    }
}
