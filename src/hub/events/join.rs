//! `join`: a vendor asks to hear its store's news.

use serde::Deserialize;

use super::ClientEvent;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{EventContext, Reply};
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

    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply) {
        let Join(request) = *self;
        cx.log(Event::Join, &request);
        if let Some(socket) = cx.from().socket().cloned() {
            cx.join(&socket, request.store);
        }
        cx.accept(reply);
    }
}
