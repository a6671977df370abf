//! `getAll` (Phase 3): replay what the sender has not acknowledged: a store's
//! queued delivery notices, or a driver's packages. The queue is not read
//! here: the replay reads it a page at a time beside the sequencer (see
//! `sequencer::replay`), one replay per socket.

use serde::Deserialize;

use super::{ClientEvent, may_use_queue};
use crate::hub::peer::Peer;
use crate::hub::sequencer::{EventContext, Message, Output, Replay, Replaying, Reply};
use crate::protocol::{ErrorCode, Event, Queue, QueueRequest, Refusal};

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

    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply) {
        let GetAll(request) = *self;
        cx.log(Event::GetAll, &request);
        let Some(socket) = cx.from().socket().cloned() else {
            return cx.accept(reply);
        };
        let Some(turn) = Replaying::begin(&socket) else {
            let refusal = Refusal::new(
                ErrorCode::Busy,
                "a replay to this connection is under way; wait for its answer",
            );
            return cx.refuse(reply, None, refusal);
        };
        let (event, replay) = match request.queue() {
            // Read a page at a time as it is sent, off the sequencer; each
            // notice goes out as its kind.
            Queue::StoreNotices => (Event::Delivered, Replay::Queue(request.queue_id)),
            // A driver catching up: everything it holds (a few), again.
            Queue::DriverPackages => {
                let held = cx
                    .from()
                    .peer()
                    .driver_key(&socket.id.to_string())
                    .map(|driver| cx.desk().held_by(&driver))
                    .unwrap_or_default();
                (
                    Event::Pickup,
                    Replay::Messages(held.into_iter().map(Message::Order).collect()),
                )
            }
        };
        cx.send(Output::Replay {
            socket,
            event,
            replay,
            reply,
            turn,
        });
    }
}
