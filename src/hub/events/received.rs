//! `received` (Phase 3): a store acknowledges one delivery notice, which
//! leaves its queue.

use serde::Deserialize;

use super::{ClientEvent, may_use_queue, refused};
use crate::hub::peer::Peer;
use crate::hub::sequencer::{Origin, Output, Reply, Sequencer};
use crate::protocol::{ErrorCode, Event, QueueRequest, Refusal};

/// `received`: remove one notice from the sender's queue.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Received(QueueRequest);

impl ClientEvent for Received {
    fn event(&self) -> Event {
        Event::Received
    }

    fn permit(&self, peer: &Peer) -> Result<(), Refusal> {
        may_use_queue(&self.0, peer)
    }

    fn apply(
        self: Box<Self>,
        hub: &mut Sequencer,
        _from: &Origin,
        reply: Reply,
        out: &mut Vec<Output>,
    ) {
        let Received(request) = *self;
        hub.log.record(Event::Received, &request);
        match (
            request.event.unwrap_or(Event::Delivered),
            request.message_id,
        ) {
            (Event::Delivered, Some(message_id)) => {
                match hub.mailbox.acknowledge(&request.queue_id, &message_id) {
                    Ok(change) => {
                        hub.record_mailbox_change(change);
                        out.push(Output::Accept(reply));
                    }
                    Err(refusal) => out.push(refused(reply, None, refusal)),
                }
            }
            (Event::Delivered, None) => {
                let refusal = Refusal::new(ErrorCode::InvalidPayload, "received needs a messageId");
                out.push(refused(reply, None, refusal));
            }
            // Pickups are acknowledged by taking them up (in-transit).
            _ => out.push(Output::Accept(reply)),
        }
    }
}
