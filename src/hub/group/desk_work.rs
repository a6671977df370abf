//! What the group asks of this hub's desk, in turn with events (through
//! [`SequencerHandle::on_desk`]): take orders over, say how much room its
//! drivers have, list and forget waiting orders.

use crate::hub::desk::Adoption;
use crate::hub::domain::{OrderKey, OrderState, StoredOrder};
use crate::hub::sequencer::SequencerHandle;

/// Hands the desk orders this hub has taken over in the database.
pub async fn adopt(sequencer: &SequencerHandle, orders: Vec<StoredOrder>, adoption: Adoption) {
    if orders.is_empty() {
        return;
    }
    sequencer
        .on_desk(move |desk, now| {
            log::info!("took over {} orders", orders.len());
            ((), desk.adopt(orders, adoption, now))
        })
        .await;
}

/// Room among the online drivers, and orders waiting; `None` if the
/// sequencer has stopped.
pub async fn spare(sequencer: &SequencerHandle) -> Option<(usize, usize)> {
    sequencer
        .on_desk(|desk, _| (desk.spare_capacity(), Vec::new()))
        .await
}

/// The orders waiting here for a driver, oldest first, at most `limit`.
pub async fn waiting(sequencer: &SequencerHandle, limit: usize) -> Option<Vec<OrderKey>> {
    sequencer
        .on_desk(move |desk, _| (desk.waiting(limit), Vec::new()))
        .await
}

/// Drops orders another hub of the group has taken.
pub async fn forget(sequencer: &SequencerHandle, orders: Vec<OrderKey>) {
    if orders.is_empty() {
        return;
    }
    sequencer
        .on_desk(move |desk, now| {
            for key in orders {
                // Only a waiting one: an order this hub has taken back since
                // (a driver's claim) is offered or carried.
                if desk.state_of(&key) == Some(OrderState::Ready) {
                    desk.reload(&key, None, now);
                }
            }
            ((), Vec::new())
        })
        .await;
}
