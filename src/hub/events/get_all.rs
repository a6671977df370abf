//! `getAll` (Phase 3): replay what the sender has not acknowledged: a store's
//! queued delivery notices, or a driver's packages. The queue is not read
//! here: the replay reads it a page at a time beside the sequencer (see
//! `sequencer::replay`), one replay per socket.

use serde::Deserialize;

use super::{ClientEvent, may_use_queue, refused};
use crate::hub::peer::Peer;
use crate::hub::sequencer::{Message, Origin, Output, Replay, Replaying, Reply, Sequencer};
use crate::protocol::{ErrorCode, Event, QueueRequest, Refusal};

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
        let Some(turn) = Replaying::begin(socket) else {
            let refusal = Refusal::new(
                ErrorCode::Busy,
                "a replay to this connection is under way; wait for its answer",
            );
            return out.push(refused(reply, None, refusal));
        };
        let (event, replay) = match request.event.unwrap_or(Event::Delivered) {
            // Read a page at a time as it is sent, off the sequencer.
            Event::Delivered => (Event::Delivered, Replay::Queue(request.queue_id)),
            // A driver catching up: everything it holds (a few), again.
            Event::Pickup => {
                let held = from
                    .peer()
                    .driver_key(&socket.id.to_string())
                    .map(|driver| hub.desk.held_by(&driver))
                    .unwrap_or_default();
                (
                    Event::Pickup,
                    Replay::Messages(held.into_iter().map(Message::Order).collect()),
                )
            }
            _ => (Event::Delivered, Replay::Messages(Vec::new())),
        };
        out.push(Output::Replay {
            socket: socket.clone(),
            event,
            replay,
            reply,
            turn,
        });
    }
}
