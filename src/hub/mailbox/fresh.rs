//! Notices queued by journal entries the tables do not hold yet (they follow
//! the commit log a moment later, see `storage::sqlite::logged`). The
//! records do not list them until then, so an acknowledgement of one is
//! answered from here. Found by message id in one look-up, by order id
//! within the store's own; each store's in order, to trim and to let go.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::protocol::{MessageId, OrderId, StoreId};

/// The fresh notices of every store.
#[derive(Default)]
pub(super) struct Fresh {
    /// Each store's, oldest first, with the number of the journal entry that
    /// queued it (0 while its step is being applied).
    by_store: HashMap<StoreId, VecDeque<(u64, MessageId)>>,
    /// The store and order of each.
    about: HashMap<MessageId, (StoreId, OrderId)>,
    /// Stores with notices of the step being applied.
    unsealed: Vec<StoreId>,
    /// Stores whose queue was trimmed by an entry not in the tables yet,
    /// with that entry's number (0 likewise).
    trims: VecDeque<(u64, StoreId)>,
}

impl Fresh {
    /// A notice of `store`'s about `order_id` was queued by the step being
    /// applied.
    pub(super) fn queued(&mut self, message_id: MessageId, store: &StoreId, order_id: OrderId) {
        self.by_store
            .entry(store.clone())
            .or_default()
            .push_back((0, message_id.clone()));
        self.about.insert(message_id, (store.clone(), order_id));
        self.unsealed.push(store.clone());
    }

    /// `store`'s fresh notice `message_id`, unless it is being removed.
    pub(super) fn by_message(
        &self,
        store: &StoreId,
        message_id: &MessageId,
        removing: &HashSet<MessageId>,
    ) -> Option<MessageId> {
        self.about
            .get(message_id)
            .filter(|(owner, _)| owner == store && !removing.contains(message_id))
            .map(|_| message_id.clone())
    }

    /// `store`'s oldest fresh notice about order `order_id`, unless being
    /// removed.
    pub(super) fn by_order(
        &self,
        store: &StoreId,
        order_id: &str,
        removing: &HashSet<MessageId>,
    ) -> Option<MessageId> {
        self.by_store
            .get(store)?
            .iter()
            .find_map(|(_, message_id)| {
                let (_, about) = self.about.get(message_id)?;
                (about.as_str() == order_id && !removing.contains(message_id))
                    .then(|| message_id.clone())
            })
    }

    /// `store`'s queue was trimmed to its newest `keep` by the step being
    /// applied: its fresh notices beyond that went too.
    pub(super) fn trimmed(&mut self, store: &StoreId, keep: u64) {
        if let Some(queue) = self.by_store.get_mut(store) {
            while queue.len() as u64 > keep {
                if let Some((_, gone)) = queue.pop_front() {
                    self.about.remove(&gone);
                }
            }
        }
        self.trims.push_back((0, store.clone()));
    }

    /// Whether a trim of `store`'s queue is on its way to the tables.
    pub(super) fn trimming(&self, store: &StoreId) -> bool {
        self.trims.iter().any(|(_, trimmed)| trimmed == store)
    }

    /// The step being applied went to the journal as entry `seq`.
    pub(super) fn sealed(&mut self, seq: u64) {
        for store in self.unsealed.drain(..) {
            let Some(queue) = self.by_store.get_mut(&store) else {
                continue;
            };
            for (step, _) in queue.iter_mut().rev().take_while(|(step, _)| *step == 0) {
                *step = seq;
            }
        }
        for (step, _) in self
            .trims
            .iter_mut()
            .rev()
            .take_while(|(step, _)| *step == 0)
        {
            *step = seq;
        }
    }

    /// The tables hold every journal entry up to `seq`: its notices are
    /// theirs to answer for now.
    pub(super) fn in_tables(&mut self, seq: u64) {
        let in_tables = |step: u64| step != 0 && step <= seq;
        let about = &mut self.about;
        self.by_store.retain(|_, queue| {
            while let Some((_, gone)) = queue.front().filter(|(step, _)| in_tables(*step)) {
                about.remove(gone);
                queue.pop_front();
            }
            !queue.is_empty()
        });
        while self.trims.front().is_some_and(|(step, _)| in_tables(*step)) {
            self.trims.pop_front();
        }
    }

    /// How many notices are fresh.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.about.len()
    }
}
