//! `join`: a vendor asks to hear its store's news.

use serde::Deserialize;

use super::ClientEvent;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{Origin, Output, Reply, Sequencer};
use crate::protocol::{Event, JoinRequest, Refusal};

/// `join`: put the sender in its store's room.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Join(JoinRequest);

impl ClientEvent for Join {
    fn event(&self) -> Event {
        Event::Join
    }

    fn permit(&self, peer: &Peer) -> Result<(), Refusal> {
        peer.may_act_for(&self.0.store)
    }

    fn apply(
        self: Box<Self>,
        hub: &mut Sequencer,
        from: &Origin,
        reply: Reply,
        out: &mut Vec<Output>,
    ) {
        let Join(request) = *self;
        hub.log.record(Event::Join, &request);
        if let Some(socket) = from.socket() {
            hub.join(socket, request.store, out);
        }
        out.push(Output::Accept(reply));
    }
}
