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
        let Some(socket) = from.socket() else {
            return out.push(Output::Accept(reply));
        };
        let (event, messages) = match request.event.unwrap_or(Event::Delivered) {
            Event::Delivered => match hub.mailbox.pending(&request.queue_id) {
                Ok(pending) => (
                    Event::Delivered,
                    pending
                        .into_iter()
                        .map(|(message_id, order)| {
                            Message::Notice(DeliveryNotice::new(order, message_id))
                        })
                        .collect(),
                ),
                Err(refusal) => return out.push(refused(reply, None, refusal)),
            },
            // A driver catching up: everything it holds, again.
            Event::Pickup => {
                let held = from
                    .peer()
                    .driver_key(&socket.id.to_string())
                    .map(|driver| hub.desk.held_by(&driver))
                    .unwrap_or_default();
                (
                    Event::Pickup,
                    held.into_iter().map(Message::Order).collect(),
                )
            }
            _ => (Event::Delivered, Vec::new()),
        };
        out.push(Output::Replay {
            socket: socket.clone(),
            event,
            messages,
            reply,
        });
    }
}
