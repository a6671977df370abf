//! What the hub says to a store or a socket about an order: the order
//! itself, or a queued notice in its envelope. A leaf, shared by the outbox
//! and replays.

use serde::Serialize;

use crate::protocol::{DeliveryNotice, Order};

/// A message to a store or a socket.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Message {
    /// The order itself (`pickup`, `in-transit`, and Phase 2's `delivered`).
    Order(Order),
    /// A queued delivery notice, with its Phase 3 envelope.
    Notice(DeliveryNotice),
}
