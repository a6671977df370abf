//! The events clients send, one module each: how it is decoded, who may send
//! it, and what applying it does. Adding an event touches the protocol
//! ([`crate::protocol::Event`]), a module here with its line in [`LISTENED`],
//! and the desk method it calls.

mod delivered;
mod get_all;
mod in_transit;
mod join;
mod pickup;
mod received;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketioxide::adapter::LocalAdapter;
use socketioxide::handler::Value;
use socketioxide::socket::Socket;

pub use pickup::Pickup;

use super::decode::decode;
use super::peer::Peer;
pub use super::sequencer::ClientEvent;
use crate::protocol::{Event, Queue, QueueRequest, Refusal};

/// Decodes one payload off the wire into its event, at most `max_bytes` long.
pub type Decoder = fn(
    &Arc<Socket<LocalAdapter>>,
    &mut Value,
    &Option<i64>,
    usize,
) -> Result<Box<dyn ClientEvent>, Refusal>;

/// Every event the hub listens for, with its decoder.
pub const LISTENED: [(Event, Decoder); 6] = [
    (Event::Join, decoder::<join::Join>),
    (Event::Pickup, decoder::<pickup::Pickup>),
    (Event::InTransit, decoder::<in_transit::InTransit>),
    (Event::Delivered, decoder::<delivered::Delivered>),
    (Event::GetAll, decoder::<get_all::GetAll>),
    (Event::Received, decoder::<received::Received>),
];

fn decoder<T: ClientEvent + DeserializeOwned>(
    socket: &Arc<Socket<LocalAdapter>>,
    value: &mut Value,
    ack_id: &Option<i64>,
    max_bytes: usize,
) -> Result<Box<dyn ClientEvent>, Refusal> {
    decode::<T>(socket, value, ack_id, max_bytes)
        .map(|event| Box::new(event) as Box<dyn ClientEvent>)
}

/// Who may read or acknowledge a Phase 3 queue: a driver its packages, a
/// vendor its own store's notices.
fn may_use_queue(request: &QueueRequest, peer: &Peer) -> Result<(), Refusal> {
    match request.queue() {
        Queue::DriverPackages => peer.may_carry(),
        Queue::StoreNotices => peer.may_act_for(&request.queue_id),
    }
}
