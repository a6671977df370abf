//! `pickup`: a vendor (or `POST /api/orders`) has a package ready.

use serde::Deserialize;
use socketioxide::extract::SocketRef;
use tokio::time::Instant;

use super::ClientEvent;

use crate::hub::desk::{Effect, PickupOutcome};
use crate::hub::domain::OrderKey;
use crate::hub::peer::Peer;
use crate::hub::sequencer::{EventContext, Message, Output, Reply};
use crate::protocol::{DeliveryNotice, ErrorCode, Event, Order, OrderState, Refusal};

/// `pickup`: a new order to dispatch, or the same order again.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Pickup(pub Order);

impl ClientEvent for Pickup {
    fn event(&self) -> Event {
        Event::Pickup
    }

    fn order(&self) -> Option<&Order> {
        Some(&self.0)
    }

    fn permit(&self, peer: &Peer) -> Result<(), Refusal> {
        peer.may_act_for(&self.0.store)
    }

    fn apply(self: Box<Self>, cx: &mut EventContext, reply: Reply) {
        let Pickup(order) = *self;
        let key = OrderKey::of(&order);
        // The desk holds open orders and recent deliveries; older ones are
        // in the data dir, and a re-sent order is the same order however old.
        let outcome = match cx.desk().state_of(&key) {
            // A finished order may be held compacted: its record knows
            // whether this is the same order.
            Some(state) if state.is_final() && cx.records_are_remote() => {
                as_recorded(cx, &key, &order).and_then(|taken| {
                    taken.ok_or_else(|| {
                        Refusal::new(ErrorCode::Busy, "the order changed meanwhile; try again")
                    })
                })
            }
            Some(_) => cx.desk().pickup(order.clone(), Instant::now()),
            // Across the network, a new order is not looked up first: its
            // insert is conditional, and a repeat is refused and read back.
            None if !cx.look_up_first(&key) => cx.desk().pickup(order.clone(), Instant::now()),
            None => match as_recorded(cx, &key, &order) {
                Ok(Some(taken)) => Ok(taken),
                Ok(None) => cx.desk().pickup(order.clone(), Instant::now()),
                Err(refusal) => Err(refusal),
            },
        };
        match outcome {
            Ok((outcome, effects)) => {
                cx.log(Event::Pickup, &order);
                if outcome == PickupOutcome::Repeated(OrderState::Delivered)
                    && let Some(socket) = cx.from().socket().cloned()
                {
                    // The vendor missed the news; tell it again.
                    let message = match cx.mailbox().find(&order) {
                        Some(message_id) => Message::Notice(DeliveryNotice::new(order, message_id)),
                        None => Message::Order(order),
                    };
                    cx.send(Output::ToSocket {
                        socket,
                        event: Event::Delivered,
                        message,
                    });
                }
                cx.accept(reply);
                cx.effects(effects);
            }
            Err(refusal) => cx.refuse(reply, Some(order), refusal),
        }
    }
}

/// How a pickup was taken, and the offers it made.
type Taken = (PickupOutcome, Vec<Effect<SocketRef>>);

/// A pickup of an order as its record says: the same order again, or a
/// conflict; `None` if it is not recorded.
fn as_recorded(cx: &EventContext, key: &OrderKey, order: &Order) -> Result<Option<Taken>, Refusal> {
    match cx.recorded(key)? {
        Some(recorded) if recorded.is_same(order) => {
            Ok(Some((PickupOutcome::Repeated(recorded.state), Vec::new())))
        }
        Some(_) => Err(Refusal::new(
            ErrorCode::OrderConflict,
            format!("{key} already exists with a different payload"),
        )),
        None => Ok(None),
    }
}
