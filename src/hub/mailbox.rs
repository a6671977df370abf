//! The Phase 3 queues: delivery notices each store has not acknowledged yet.
//!
//! A notice stays queued until the store's vendor says `received`; `getAll`
//! replays what is still there. Vendors that never acknowledge (the lab's
//! Phase 2 clients) would make a queue grow without end, so each store keeps
//! at most `limit` notices and drops the oldest beyond that.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;

use super::domain::{Change, StoredNotice};
use crate::protocol::{ErrorCode, MessageId, Order, Refusal, StoreId};

/// The notices of every store.
pub struct Mailbox {
    limit: usize,
    queues: HashMap<StoreId, BTreeMap<u64, (MessageId, Order)>>,
    /// Where each message sits: its store and its place in that queue.
    index: HashMap<MessageId, (StoreId, u64)>,
    next: u64,
}

impl Mailbox {
    /// An empty mailbox keeping at most `limit` notices per store.
    pub fn new(limit: usize) -> Self {
        Mailbox {
            limit: limit.max(1),
            queues: HashMap::new(),
            index: HashMap::new(),
            next: 0,
        }
    }

    /// Puts back notices read from the store, oldest first.
    pub fn restore(&mut self, notices: Vec<StoredNotice>) {
        for notice in notices {
            self.insert(notice.message_id, notice.order);
        }
    }

    /// Queues the notice of `order`'s delivery; returns its id and the changes
    /// to record (its queuing, and any notice dropped over the limit).
    pub fn enqueue(&mut self, order: Order) -> (MessageId, Vec<Change>) {
        let message_id =
            MessageId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid message id");
        let store = order.store.clone();
        let mut changes = vec![Change::NoticeQueued {
            message_id: message_id.clone(),
            order: order.clone(),
            at: Utc::now(),
        }];
        self.insert(message_id.clone(), order);
        let queue = self.queues.get_mut(&store).expect("just inserted");
        while queue.len() > self.limit {
            let (_, (dropped, order)) = queue.pop_first().expect("queue is over its limit");
            log::warn!(
                "store={store} queue over {} notices: dropped the oldest (order={})",
                self.limit,
                order.order_id
            );
            self.index.remove(&dropped);
            changes.push(Change::NoticeRemoved {
                message_id: dropped,
            });
        }
        (message_id, changes)
    }

    /// Removes the notice `message_id` (or, as older course code sends, the
    /// notice of the order with that id) from `store`'s queue.
    pub fn acknowledge(
        &mut self,
        store: &StoreId,
        message_id: &MessageId,
    ) -> Result<Change, Refusal> {
        let place = match self.index.get(message_id) {
            Some((owner, place)) if owner == store => Some(*place),
            _ => self.queues.get(store).and_then(|queue| {
                queue
                    .iter()
                    .find(|(_, (_, order))| order.order_id.as_str() == message_id.as_str())
                    .map(|(place, _)| *place)
            }),
        };
        let removed = place
            .and_then(|place| {
                self.queues
                    .get_mut(store)
                    .and_then(|queue| queue.remove(&place))
            })
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::UnknownMessage,
                    format!("no message {message_id} in the queue of store {store}"),
                )
            })?;
        self.index.remove(&removed.0);
        Ok(Change::NoticeRemoved {
            message_id: removed.0,
        })
    }

    /// The queued notice of `order`'s delivery, if it is still queued.
    pub fn find(&self, order: &Order) -> Option<MessageId> {
        self.queues.get(&order.store).and_then(|queue| {
            queue
                .values()
                .find(|(_, queued)| queued.order_id == order.order_id)
                .map(|(message_id, _)| message_id.clone())
        })
    }

    /// Every notice queued for `store`, oldest first.
    pub fn pending(&self, store: &StoreId) -> Vec<(MessageId, Order)> {
        self.queues
            .get(store)
            .map(|queue| queue.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every store with notices waiting, and how many, by store.
    pub fn queue_lengths(&self) -> Vec<(StoreId, u64)> {
        let mut lengths: Vec<(StoreId, u64)> = self
            .queues
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(store, queue)| (store.clone(), queue.len() as u64))
            .collect();
        lengths.sort();
        lengths
    }

    fn insert(&mut self, message_id: MessageId, order: Order) {
        let place = self.next;
        self.next += 1;
        self.index
            .insert(message_id.clone(), (order.store.clone(), place));
        self.queues
            .entry(order.store.clone())
            .or_default()
            .insert(place, (message_id, order));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Address, Customer, OrderId};

    fn order(store: &str, id: &str) -> Order {
        Order {
            store: StoreId::new(store).unwrap(),
            order_id: OrderId::new(id).unwrap(),
            customer: Customer::new("Jamal Braun").unwrap(),
            address: Address::new("Schmittfurt, LA").unwrap(),
        }
    }

    #[test]
    fn notices_wait_until_acknowledged_by_their_own_store() {
        let mut mailbox = Mailbox::new(10);
        let acme = StoreId::new("acme").unwrap();
        let globex = StoreId::new("globex").unwrap();
        let (first, _) = mailbox.enqueue(order("acme", "o1"));
        mailbox.enqueue(order("acme", "o2"));
        mailbox.enqueue(order("globex", "g1"));
        let ids = |pending: Vec<(MessageId, Order)>| -> Vec<String> {
            pending
                .into_iter()
                .map(|(_, o)| o.order_id.to_string())
                .collect()
        };
        assert_eq!(ids(mailbox.pending(&acme)), ["o1", "o2"]);

        let refused = mailbox.acknowledge(&globex, &first).unwrap_err();
        assert_eq!(
            refused.code,
            ErrorCode::UnknownMessage,
            "not globex's message"
        );
        mailbox.acknowledge(&acme, &first).unwrap();
        assert_eq!(ids(mailbox.pending(&acme)), ["o2"]);
        // The course's older clients acknowledge with the orderId.
        mailbox
            .acknowledge(&acme, &MessageId::new("o2").unwrap())
            .unwrap();
        assert!(mailbox.pending(&acme).is_empty());
        assert_eq!(
            mailbox.acknowledge(&acme, &first).unwrap_err().code,
            ErrorCode::UnknownMessage
        );
        assert_eq!(ids(mailbox.pending(&globex)), ["g1"]);
    }

    #[test]
    fn a_queue_over_its_limit_drops_the_oldest() {
        let mut mailbox = Mailbox::new(2);
        let acme = StoreId::new("acme").unwrap();
        mailbox.enqueue(order("acme", "o1"));
        mailbox.enqueue(order("acme", "o2"));
        let (_, changes) = mailbox.enqueue(order("acme", "o3"));
        assert_eq!(changes.len(), 2, "queued one, dropped one");
        let left: Vec<String> = mailbox
            .pending(&acme)
            .into_iter()
            .map(|(_, o)| o.order_id.to_string())
            .collect();
        assert_eq!(left, ["o2", "o3"]);
    }
}
