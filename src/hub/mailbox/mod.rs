//! The Phase 3 queues: delivery notices each store has not acknowledged yet.
//!
//! A notice stays queued until the store's vendor says `received`; `getAll`
//! replays what is still there. Vendors that never acknowledge (the lab's
//! Phase 2 clients) would make a queue grow without end, so each store keeps
//! at most `limit` notices and drops the oldest beyond that.
//!
//! With a data dir the notices live there, not in memory: the mailbox keeps
//! how many each store has (to know when to trim), the notices of journal
//! entries not yet in the tables, and reads the rest from the records. An
//! ephemeral hub keeps them in memory.

mod fresh;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::Utc;

use super::domain::{Change, StoredNotice};
use super::storage::journal::Records;
use crate::protocol::{ErrorCode, Event, MessageId, Order, Refusal, StoreId};
use fresh::Fresh;

/// The notices of every store.
pub struct Mailbox {
    limit: usize,
    kept: Kept,
}

enum Kept {
    Memory(MemoryQueues),
    DataDir {
        records: Box<dyn Records>,
        /// Notices queued per store, committed or on their way.
        counts: HashMap<StoreId, u64>,
        /// Notices whose removal is on its way to the data dir.
        removing: Removing,
        /// Notices whose queuing is on its way to the data dir.
        fresh: Box<Fresh>,
    },
}

/// Notices acknowledged whose removal is not committed yet. The data dir
/// still lists them until then, so a second acknowledgement of one is
/// refused from here, as it would be once the first is committed (else
/// both pass and the store's count drops twice for one notice).
#[derive(Default)]
struct Removing {
    ids: HashSet<MessageId>,
    /// Removals of the step being applied, not yet handed to the journal.
    this_step: Vec<MessageId>,
    /// Removals by the journal number of their step, oldest first.
    by_step: VecDeque<(u64, MessageId)>,
}

impl Mailbox {
    /// An empty mailbox in memory keeping at most `limit` notices per store.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Mailbox {
            limit,
            kept: Kept::Memory(MemoryQueues::new(limit)),
        }
    }

    /// A mailbox whose notices are in the data dir `records` reads, with
    /// `counts` queued per store.
    pub fn in_data_dir(
        limit: usize,
        records: Box<dyn Records>,
        counts: Vec<(StoreId, u64)>,
    ) -> Self {
        Mailbox {
            limit: limit.max(1),
            kept: Kept::DataDir {
                records,
                counts: counts.into_iter().collect(),
                removing: Removing::default(),
                fresh: Box::default(),
            },
        }
    }

    /// Queues the notice of `order`'s delivery; returns its id and the changes
    /// to record (its queuing, and any notices dropped over the limit).
    pub fn enqueue(&mut self, kind: Event, order: Order) -> (MessageId, Vec<Change>) {
        match &mut self.kept {
            Kept::Memory(queues) => queues.enqueue(kind, order),
            Kept::DataDir { counts, fresh, .. } => {
                let message_id = new_message_id();
                let store = order.store.clone();
                fresh.queued(message_id.clone(), &store, order.order_id.clone());
                let mut changes = vec![Change::NoticeQueued {
                    message_id: message_id.clone(),
                    kind,
                    order,
                    at: Utc::now(),
                }];
                let queued = counts.entry(store.clone()).or_default();
                *queued += 1;
                if *queued > self.limit as u64 {
                    log::warn!(
                        "store={store} queue over {} notices: dropped the oldest",
                        self.limit
                    );
                    *queued = self.limit as u64;
                    fresh.trimmed(&store, self.limit as u64);
                    changes.push(Change::NoticesTrimmed {
                        store,
                        keep: self.limit as u64,
                    });
                }
                (message_id, changes)
            }
        }
    }

    /// Removes the notice `message_id` (or, as older course code sends, the
    /// notice of the order with that id) from `store`'s queue.
    pub fn acknowledge(
        &mut self,
        store: &StoreId,
        message_id: &MessageId,
    ) -> Result<Change, Refusal> {
        match &mut self.kept {
            Kept::Memory(queues) => queues.acknowledge(store, message_id),
            // Recorded without a look-up (a round trip per delivery); the
            // commit tells whether the notice was queued, and the count
            // follows it then (see `Mailbox::acknowledged`).
            Kept::DataDir { records, .. } if records.is_remote() => {
                Ok(Change::NoticeAcknowledged {
                    store: store.clone(),
                    id: message_id.to_string(),
                })
            }
            Kept::DataDir {
                records,
                counts,
                removing,
                fresh,
            } => {
                let id = message_id.as_str();
                // A notice just delivered is most often acknowledged by its
                // message id while still fresh: no read. By an order's id,
                // the oldest notice goes first, and the tables hold older.
                let found = match fresh.by_message(store, message_id, &removing.ids) {
                    Some(found) => found,
                    None => {
                        let listed = records
                            .notice_ids(store, id)
                            .map_err(unreadable)?
                            .into_iter()
                            .find(|found| !removing.ids.contains(found));
                        // A trim on its way to the tables may have dropped
                        // a notice they still list: acknowledging it would
                        // count it twice.
                        if listed.is_some() && fresh.trimming(store) {
                            return Err(Refusal::new(
                                ErrorCode::Busy,
                                "this store's queue is being trimmed; try again",
                            ));
                        }
                        listed
                            .or_else(|| fresh.by_order(store, id, &removing.ids))
                            .ok_or_else(|| not_queued(store, id))?
                    }
                };
                if let Some(queued) = counts.get_mut(store) {
                    *queued = queued.saturating_sub(1);
                }
                removing.ids.insert(found.clone());
                removing.this_step.push(found.clone());
                Ok(Change::NoticeRemoved { message_id: found })
            }
        }
    }

    /// The step just applied went to the journal as entry `seq`.
    pub fn sealed(&mut self, seq: u64) {
        if let Kept::DataDir {
            removing, fresh, ..
        } = &mut self.kept
        {
            let Removing {
                this_step, by_step, ..
            } = removing;
            by_step.extend(this_step.drain(..).map(|id| (seq, id)));
            fresh.sealed(seq);
        }
    }

    /// The tables hold every journal entry up to `seq` (or refused it): its
    /// queuings and removals are what the records say now.
    pub fn in_tables(&mut self, seq: u64) {
        if let Kept::DataDir {
            removing, fresh, ..
        } = &mut self.kept
        {
            while let Some((_, id)) = removing.by_step.front().filter(|(step, _)| *step <= seq) {
                removing.ids.remove(id);
                removing.by_step.pop_front();
            }
            fresh.in_tables(seq);
        }
    }

    /// A notice of `store`'s, acknowledged without a look-up, was found and
    /// removed by the commit: one fewer queued.
    pub fn acknowledged(&mut self, store: &StoreId) {
        if let Kept::DataDir { counts, .. } = &mut self.kept
            && let Some(queued) = counts.get_mut(store)
        {
            *queued = queued.saturating_sub(1);
        }
    }

    /// The queued notice of `order`'s delivery, if it is still queued.
    pub fn find(&self, order: &Order) -> Option<MessageId> {
        match &self.kept {
            Kept::Memory(queues) => queues.find(order),
            Kept::DataDir {
                records,
                removing,
                fresh,
                ..
            } => {
                let id = order.order_id.as_str();
                let listed = records
                    .notice_ids(&order.store, id)
                    .inspect_err(|error| log::error!("cannot read a queued notice: {error:#}"))
                    .unwrap_or_default();
                listed
                    .into_iter()
                    .find(|found| !removing.ids.contains(found))
                    .or_else(|| fresh.by_order(&order.store, id, &removing.ids))
            }
        }
    }

    /// At most `limit` notices queued for `store` after place `after` (from
    /// the start with `None`), oldest first.
    pub fn page(
        &self,
        store: &StoreId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredNotice>, Refusal> {
        match &self.kept {
            Kept::Memory(queues) => Ok(queues.page(store, after, limit)),
            Kept::DataDir { records, .. } => {
                records.notices(store, after, limit).map_err(unreadable)
            }
        }
    }

    /// Every store with notices waiting, and how many, by store.
    pub fn queue_lengths(&self) -> Vec<(StoreId, u64)> {
        match &self.kept {
            Kept::Memory(queues) => queues.queue_lengths(),
            Kept::DataDir { counts, .. } => {
                let mut lengths: Vec<(StoreId, u64)> = counts
                    .iter()
                    .filter(|(_, queued)| **queued > 0)
                    .map(|(store, queued)| (store.clone(), *queued))
                    .collect();
                lengths.sort();
                lengths
            }
        }
    }
}

fn new_message_id() -> MessageId {
    MessageId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid message id")
}

/// The refusal of an acknowledgement of `message_id` (or an order's id),
/// which is not in `store`'s queue.
pub(in crate::hub) fn not_queued(store: &StoreId, message_id: &str) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownMessage,
        format!("no message {message_id} in the queue of store {store}"),
    )
}

fn unreadable(error: anyhow::Error) -> Refusal {
    log::error!("cannot read the queued notices: {error:#}");
    Refusal::new(
        ErrorCode::Busy,
        "the hub cannot read its records; try again",
    )
}

/// Every store's notices, in memory (an ephemeral hub).
struct MemoryQueues {
    limit: usize,
    queues: HashMap<StoreId, BTreeMap<u64, (MessageId, Order, Event)>>,
    /// Where each message sits: its store and its place in that queue.
    index: HashMap<MessageId, (StoreId, u64)>,
    next: u64,
}

impl MemoryQueues {
    fn new(limit: usize) -> Self {
        MemoryQueues {
            limit: limit.max(1),
            queues: HashMap::new(),
            index: HashMap::new(),
            next: 0,
        }
    }

    /// Queues the notice of `order`'s delivery; returns its id and the changes
    /// to record (its queuing, and any notice dropped over the limit).
    fn enqueue(&mut self, kind: Event, order: Order) -> (MessageId, Vec<Change>) {
        let message_id = new_message_id();
        let store = order.store.clone();
        let mut changes = vec![Change::NoticeQueued {
            message_id: message_id.clone(),
            kind,
            order: order.clone(),
            at: Utc::now(),
        }];
        self.insert(message_id.clone(), order, kind);
        let queue = self.queues.get_mut(&store).expect("just inserted");
        while queue.len() > self.limit {
            let (_, (dropped, order, _)) = queue.pop_first().expect("queue is over its limit");
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
    fn acknowledge(&mut self, store: &StoreId, message_id: &MessageId) -> Result<Change, Refusal> {
        let place = match self.index.get(message_id) {
            Some((owner, place)) if owner == store => Some(*place),
            _ => self.queues.get(store).and_then(|queue| {
                queue
                    .iter()
                    .find(|(_, (_, order, _))| order.order_id.as_str() == message_id.as_str())
                    .map(|(place, _)| *place)
            }),
        };
        let removed = place
            .and_then(|place| {
                self.queues
                    .get_mut(store)
                    .and_then(|queue| queue.remove(&place))
            })
            .ok_or_else(|| not_queued(store, message_id.as_str()))?;
        self.index.remove(&removed.0);
        Ok(Change::NoticeRemoved {
            message_id: removed.0,
        })
    }

    /// The queued notice of `order`'s delivery, if it is still queued.
    fn find(&self, order: &Order) -> Option<MessageId> {
        self.queues.get(&order.store).and_then(|queue| {
            queue
                .values()
                .find(|(_, queued, _)| queued.order_id == order.order_id)
                .map(|(message_id, _, _)| message_id.clone())
        })
    }

    /// At most `limit` notices queued for `store` after place `after`,
    /// oldest first.
    fn page(&self, store: &StoreId, after: Option<u64>, limit: usize) -> Vec<StoredNotice> {
        let Some(queue) = self.queues.get(store) else {
            return Vec::new();
        };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        queue
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(place, (message_id, order, kind))| StoredNotice {
                place: *place,
                message_id: message_id.clone(),
                kind: *kind,
                order: order.clone(),
            })
            .collect()
    }

    /// Every store with notices waiting, and how many, by store.
    fn queue_lengths(&self) -> Vec<(StoreId, u64)> {
        let mut lengths: Vec<(StoreId, u64)> = self
            .queues
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(store, queue)| (store.clone(), queue.len() as u64))
            .collect();
        lengths.sort();
        lengths
    }

    fn insert(&mut self, message_id: MessageId, order: Order, kind: Event) {
        let place = self.next;
        self.next += 1;
        self.index
            .insert(message_id.clone(), (order.store.clone(), place));
        self.queues
            .entry(order.store.clone())
            .or_default()
            .insert(place, (message_id, order, kind));
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
        let (first, _) = mailbox.enqueue(Event::Delivered, order("acme", "o1"));
        mailbox.enqueue(Event::Delivered, order("acme", "o2"));
        mailbox.enqueue(Event::Delivered, order("globex", "g1"));
        let ids = |pending: Vec<StoredNotice>| -> Vec<String> {
            pending
                .into_iter()
                .map(|notice| notice.order.order_id.to_string())
                .collect()
        };
        assert_eq!(ids(mailbox.page(&acme, None, 10).unwrap()), ["o1", "o2"]);
        let first_page = mailbox.page(&acme, None, 1).unwrap();
        assert_eq!(ids(first_page.clone()), ["o1"]);
        assert_eq!(
            ids(mailbox.page(&acme, Some(first_page[0].place), 10).unwrap()),
            ["o2"],
            "the next page starts after the last place seen"
        );

        let refused = mailbox.acknowledge(&globex, &first).unwrap_err();
        assert_eq!(
            refused.code,
            ErrorCode::UnknownMessage,
            "not globex's message"
        );
        mailbox.acknowledge(&acme, &first).unwrap();
        assert_eq!(ids(mailbox.page(&acme, None, 10).unwrap()), ["o2"]);
        // The course's older clients acknowledge with the orderId.
        mailbox
            .acknowledge(&acme, &MessageId::new("o2").unwrap())
            .unwrap();
        assert!(mailbox.page(&acme, None, 10).unwrap().is_empty());
        assert_eq!(
            mailbox.acknowledge(&acme, &first).unwrap_err().code,
            ErrorCode::UnknownMessage
        );
        assert_eq!(ids(mailbox.page(&globex, None, 10).unwrap()), ["g1"]);
    }

    #[test]
    fn a_queue_over_its_limit_drops_the_oldest() {
        let mut mailbox = Mailbox::new(2);
        let acme = StoreId::new("acme").unwrap();
        mailbox.enqueue(Event::Delivered, order("acme", "o1"));
        mailbox.enqueue(Event::Delivered, order("acme", "o2"));
        let (_, changes) = mailbox.enqueue(Event::Delivered, order("acme", "o3"));
        assert_eq!(changes.len(), 2, "queued one, dropped one");
        let left: Vec<String> = mailbox
            .page(&acme, None, 10)
            .unwrap()
            .into_iter()
            .map(|notice| notice.order.order_id.to_string())
            .collect();
        assert_eq!(left, ["o2", "o3"]);
    }

    #[test]
    fn with_a_data_dir_notices_are_read_from_it_and_trimmed_there() {
        use crate::hub::storage::journal::{Backend, Step};
        use crate::hub::storage::sqlite::{SqliteBackend, SyncMode};

        let dir = tempfile::tempdir().unwrap();
        let mut backend = SqliteBackend::open(dir.path(), SyncMode::Normal).unwrap();
        let mut mailbox = Mailbox::in_data_dir(2, backend.records().unwrap(), Vec::new());
        let acme = StoreId::new("acme").unwrap();
        let mut seq = 0;
        let mut deliver = |mailbox: &mut Mailbox, id: &str| {
            let placed = order("acme", id);
            let (message_id, mut changes) = mailbox.enqueue(Event::Delivered, placed.clone());
            changes.insert(
                0,
                Change::NewOrder {
                    order: placed,
                    seq,
                    at: Utc::now(),
                },
            );
            seq += 1;
            let step = Step { seq, changes };
            assert!(backend.commit(&[step]).unwrap().refused.is_empty());
            // Committed to the tables themselves: in them at once.
            mailbox.sealed(seq);
            mailbox.in_tables(seq);
            message_id
        };
        let first = deliver(&mut mailbox, "o1");
        deliver(&mut mailbox, "o2");
        deliver(&mut mailbox, "o3");
        let ids = |pending: Vec<StoredNotice>| -> Vec<String> {
            pending
                .into_iter()
                .map(|notice| notice.order.order_id.to_string())
                .collect()
        };
        assert_eq!(
            ids(mailbox.page(&acme, None, 10).unwrap()),
            ["o2", "o3"],
            "the oldest was dropped"
        );
        assert_eq!(mailbox.queue_lengths(), [(acme.clone(), 2)]);
        assert_eq!(
            mailbox.acknowledge(&acme, &first).unwrap_err().code,
            ErrorCode::UnknownMessage
        );
        // Acknowledged by the order's id, as older course code does.
        let change = mailbox
            .acknowledge(&acme, &MessageId::new("o2").unwrap())
            .unwrap();
        assert!(matches!(change, Change::NoticeRemoved { .. }));
        // Not committed yet: the data dir still lists it, and a second
        // acknowledgement must not pass (nor count twice).
        mailbox.sealed(seq + 1);
        assert_eq!(
            mailbox
                .acknowledge(&acme, &MessageId::new("o2").unwrap())
                .unwrap_err()
                .code,
            ErrorCode::UnknownMessage,
            "a removal on its way is not acknowledged twice"
        );
        assert_eq!(mailbox.queue_lengths(), [(acme.clone(), 1)]);
        backend
            .commit(&[Step {
                seq: seq + 1,
                changes: vec![change],
            }])
            .unwrap();
        mailbox.in_tables(seq + 1);
        assert_eq!(ids(mailbox.page(&acme, None, 10).unwrap()), ["o3"]);
        assert!(mailbox.find(&order("acme", "o3")).is_some());
        assert!(mailbox.find(&order("acme", "o1")).is_none());
    }

    #[test]
    fn a_notice_not_yet_in_the_tables_is_acknowledged_from_memory_once() {
        use crate::hub::storage::journal::Backend;
        use crate::hub::storage::sqlite::{SqliteBackend, SyncMode};

        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path(), SyncMode::Normal).unwrap();
        let mut mailbox = Mailbox::in_data_dir(10, backend.records().unwrap(), Vec::new());
        let (acme, globex) = (
            StoreId::new("acme").unwrap(),
            StoreId::new("globex").unwrap(),
        );
        // Committed (the commit log has them) but not in the tables yet.
        let (first, _) = mailbox.enqueue(Event::Delivered, order("acme", "o1"));
        mailbox.sealed(1);
        mailbox.enqueue(Event::InTransit, order("acme", "o2"));
        mailbox.sealed(2);
        assert_eq!(
            mailbox.acknowledge(&globex, &first).unwrap_err().code,
            ErrorCode::UnknownMessage,
            "never another store's"
        );
        let removed = mailbox.acknowledge(&acme, &first).unwrap();
        assert_eq!(
            removed,
            Change::NoticeRemoved {
                message_id: first.clone()
            }
        );
        assert_eq!(
            mailbox.acknowledge(&acme, &first).unwrap_err().code,
            ErrorCode::UnknownMessage,
            "once"
        );
        mailbox.sealed(3);
        // By the order's id, as older course code does.
        let by_order = mailbox
            .acknowledge(&acme, &MessageId::new("o2").unwrap())
            .unwrap();
        assert!(matches!(by_order, Change::NoticeRemoved { .. }));
        assert_eq!(mailbox.queue_lengths(), []);
        mailbox.sealed(4);
        // Once the tables hold the steps, memory keeps nothing of them: the
        // records are asked (and, these steps never having been written to
        // this data dir, know nothing of them).
        mailbox.in_tables(4);
        mailbox.enqueue(Event::Delivered, order("acme", "o3"));
        mailbox.sealed(5);
        assert!(mailbox.find(&order("acme", "o3")).is_some());
        let Kept::DataDir {
            fresh, removing, ..
        } = &mailbox.kept
        else {
            unreachable!("a data dir's mailbox")
        };
        assert_eq!(fresh.len(), 1, "only o3's is fresh");
        assert!(removing.ids.is_empty());
    }

    #[test]
    fn both_notices_of_an_order_are_acknowledged_by_its_id_before_the_first_removal_is_in_the_tables()
     {
        use crate::hub::storage::journal::{Backend, Step};
        use crate::hub::storage::sqlite::{SqliteBackend, SyncMode};

        let dir = tempfile::tempdir().unwrap();
        let mut backend = SqliteBackend::open(dir.path(), SyncMode::Normal).unwrap();
        let queued = |kind, id: &str| Change::NoticeQueued {
            message_id: MessageId::new(id).unwrap(),
            kind,
            order: order("acme", "o1"),
            at: Utc::now(),
        };
        let step = Step {
            seq: 1,
            changes: vec![
                queued(Event::InTransit, "m-transit"),
                queued(Event::Delivered, "m-delivered"),
            ],
        };
        assert!(backend.commit(&[step]).unwrap().refused.is_empty());
        let acme = StoreId::new("acme").unwrap();
        let mut mailbox =
            Mailbox::in_data_dir(10, backend.records().unwrap(), vec![(acme.clone(), 2)]);
        let by_order = MessageId::new("o1").unwrap();
        let first = mailbox.acknowledge(&acme, &by_order).unwrap();
        mailbox.sealed(2);
        let second = mailbox.acknowledge(&acme, &by_order).unwrap();
        mailbox.sealed(3);
        assert_ne!(first, second, "one notice each");
        assert_eq!(
            mailbox.acknowledge(&acme, &by_order).unwrap_err().code,
            ErrorCode::UnknownMessage
        );
        assert_eq!(mailbox.queue_lengths(), []);
    }
}
