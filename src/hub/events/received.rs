//! `received` (Phase 3): a store acknowledges one delivery notice, which
//! leaves its queue.

use serde::Deserialize;

use super::{ClientEvent, may_use_queue};
use crate::hub::peer::Peer;
use crate::hub::sequencer::{EventContext, Reply};
use crate::protocol::{ErrorCode, Event, Queue, QueueRequest, Refusal};

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

    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply) {
        let Received(request) = *self;
        cx.log(Event::Received, &request);
        match (request.queue(), request.message_id) {
            (Queue::StoreNotices, Some(message_id)) => {
                match cx.mailbox().acknowledge(&request.queue_id, &message_id) {
                    Ok(change) => {
                        cx.mailbox_changed(change);
                        cx.accept(reply);
                    }
                    Err(refusal) => cx.refuse(reply, None, refusal),
                }
            }
            (Queue::StoreNotices, None) => {
                let refusal = Refusal::new(ErrorCode::InvalidPayload, "received needs a messageId");
                cx.refuse(reply, None, refusal);
            }
            // Pickups are acknowledged by taking them up (in-transit).
            (Queue::DriverPackages, _) => cx.accept(reply),
        }
    }
}
