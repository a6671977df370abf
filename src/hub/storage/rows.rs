//! The rules both engines follow when they write changes down, in one place:
//! a run of [`Change`]s (one step on SQLite, a whole batch on PostgreSQL)
//! folded per order into the row it leaves, with every state it entered,
//! the final states it reached, and the notices it queued and removed. Each
//! engine turns a [`RowChanges`] into its own SQL; neither reads a `Change`.

use std::collections::{BTreeMap, HashMap};

use super::columns::{closes, driver_column};
use crate::hub::domain::{Change, OrderKey};
use crate::protocol::OrderState;

/// What a run of changes does to the tables.
#[derive(Debug, Default)]
pub struct RowChanges {
    /// Orders the run creates, as it leaves them, by key.
    pub inserts: Vec<OrderRowChange>,
    /// Orders the run changes that it did not create, as it leaves them, by
    /// key: each recorded only if its row is still at `from_version`.
    pub updates: Vec<OrderRowChange>,
    /// How many orders the run closed, by final state (see [`closes`]).
    pub closed: BTreeMap<&'static str, i64>,
    /// Notices queued, in order.
    pub queued: Vec<QueuedNotice>,
    /// Notices that left their queue, by message id.
    pub removed: Vec<String>,
    /// Notices acknowledged without a look-up first.
    pub acknowledged: Vec<Acknowledgement>,
    /// Queues cut to their newest notices: (store, how many kept).
    pub trimmed: Vec<(String, i64)>,
    /// Every notice write above, in the order of the changes (an engine that
    /// writes them one by one keeps it; one that writes each kind in one
    /// statement may not, and the PostgreSQL engine writes queued, trimmed,
    /// removed, acknowledged).
    pub notice_order: Vec<NoticeWrite>,
    /// A change was decided on another version of its order than the run
    /// had left it at: the run cannot be recorded as one (each of its steps
    /// must be tried alone).
    pub inconsistent: bool,
}

/// One order's row as a run of changes leaves it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRowChange {
    pub key: OrderKey,
    /// Its arrival number (where a table kept in arrival order finds it).
    pub seq: i64,
    /// For an order the run creates: its customer and address.
    pub new: Option<(String, String)>,
    /// The version the row must be at (0 for a new order).
    pub from_version: i64,
    /// Its version after the run: one more per state entered.
    pub to_version: i64,
    pub state: OrderState,
    /// Who holds it, as [`driver_column`] writes it.
    pub driver: Option<String>,
    pub told_in_transit: bool,
    /// When it last changed (RFC 3339).
    pub at: String,
    /// When it entered a final state, if the run closed it.
    pub closed_at: Option<String>,
    /// Every state the run entered, oldest first: its history's new entries.
    pub entered: Vec<HistoryEntry>,
}

/// Where a notice write is in [`RowChanges`]: its kind and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeWrite {
    Queued(usize),
    Removed(usize),
    Acknowledged(usize),
    Trimmed(usize),
}

/// One entry of an order's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub state: OrderState,
    pub driver: Option<String>,
    pub at: String,
}

/// A notice queued for a store.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedNotice {
    pub message_id: String,
    pub store: String,
    pub order_id: String,
    pub at: String,
    /// The event the store hears it as.
    pub kind: &'static str,
}

/// An acknowledgement recorded without a look-up: the notice leaves its
/// queue if it is there, and the step is reported if it was not.
#[derive(Debug, Clone, PartialEq)]
pub struct Acknowledgement {
    /// The step that made it.
    pub step: u64,
    pub store: String,
    /// A message id, or an order id (as older course code sends).
    pub id: String,
}

impl RowChanges {
    /// Folds `changes` (each with the number of the step that made it) in
    /// order.
    pub fn of<'a>(changes: impl IntoIterator<Item = (u64, &'a Change)>) -> RowChanges {
        let mut rows = RowChanges::default();
        // Where each order's row is: among the inserts (true) or updates.
        let mut folded: HashMap<OrderKey, (bool, usize)> = HashMap::new();
        for (step, change) in changes {
            match change {
                Change::NewOrder { order, seq, at } => {
                    let key = OrderKey::of(order);
                    let at = at.to_rfc3339();
                    folded.insert(key.clone(), (true, rows.inserts.len()));
                    rows.inserts.push(OrderRowChange {
                        key,
                        seq: *seq as i64,
                        new: Some((order.customer.to_string(), order.address.to_string())),
                        from_version: 0,
                        to_version: 1,
                        state: OrderState::Ready,
                        driver: None,
                        told_in_transit: false,
                        at: at.clone(),
                        closed_at: None,
                        entered: vec![HistoryEntry {
                            state: OrderState::Ready,
                            driver: None,
                            at,
                        }],
                    });
                }
                Change::Transition {
                    key,
                    seq,
                    version,
                    state,
                    driver,
                    told_in_transit,
                    at,
                } => {
                    let at = at.to_rfc3339();
                    let driver = driver.as_ref().map(driver_column);
                    let row = match folded.get(key) {
                        Some((true, index)) => &mut rows.inserts[*index],
                        Some((false, index)) => &mut rows.updates[*index],
                        None => {
                            folded.insert(key.clone(), (false, rows.updates.len()));
                            rows.updates.push(OrderRowChange {
                                key: key.clone(),
                                seq: *seq as i64,
                                new: None,
                                from_version: *version as i64,
                                to_version: *version as i64,
                                state: *state,
                                driver: None,
                                told_in_transit: false,
                                at: at.clone(),
                                closed_at: None,
                                entered: Vec::new(),
                            });
                            rows.updates.last_mut().expect("just pushed")
                        }
                    };
                    if row.to_version != *version as i64 {
                        rows.inconsistent = true;
                    }
                    row.to_version = *version as i64 + 1;
                    row.state = *state;
                    row.driver = driver.clone();
                    row.told_in_transit = *told_in_transit;
                    row.closed_at = closes(*state).then(|| at.clone());
                    row.at = at.clone();
                    row.entered.push(HistoryEntry {
                        state: *state,
                        driver,
                        at,
                    });
                    if closes(*state) {
                        *rows.closed.entry(state.name()).or_default() += 1;
                    }
                }
                Change::NoticeQueued {
                    message_id,
                    kind,
                    order,
                    at,
                } => {
                    rows.notice_order
                        .push(NoticeWrite::Queued(rows.queued.len()));
                    rows.queued.push(QueuedNotice {
                        message_id: message_id.to_string(),
                        store: order.store.to_string(),
                        order_id: order.order_id.to_string(),
                        at: at.to_rfc3339(),
                        kind: kind.name(),
                    });
                }
                Change::NoticeRemoved { message_id } => {
                    rows.notice_order
                        .push(NoticeWrite::Removed(rows.removed.len()));
                    rows.removed.push(message_id.to_string());
                }
                Change::NoticeAcknowledged { store, id } => {
                    rows.notice_order
                        .push(NoticeWrite::Acknowledged(rows.acknowledged.len()));
                    rows.acknowledged.push(Acknowledgement {
                        step,
                        store: store.to_string(),
                        id: id.clone(),
                    });
                }
                Change::NoticesTrimmed { store, keep } => {
                    rows.notice_order
                        .push(NoticeWrite::Trimmed(rows.trimmed.len()));
                    rows.trimmed.push((store.to_string(), *keep as i64));
                }
            }
        }
        // Every hub of a group locks the rows of its batch in one order (by
        // key), so two hubs writing the same orders wait for each other
        // instead of deadlocking.
        rows.inserts.sort_by(|a, b| a.key.cmp(&b.key));
        rows.updates.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Whether the run changes no order.
    pub fn changes_no_order(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::hub::domain::DriverKey;
    use crate::protocol::{DriverName, Event, MessageId, Order};

    fn order(id: &str) -> Order {
        serde_json::from_value(serde_json::json!({
            "store": "acme", "orderId": id, "customer": "Ann", "address": "1 Main St"
        }))
        .unwrap()
    }

    fn at(second: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, second).unwrap()
    }

    fn driver() -> DriverKey {
        DriverKey::Named(DriverName::new("dana").unwrap())
    }

    fn moved(id: &str, version: u64, state: OrderState, second: u32) -> Change {
        Change::Transition {
            key: OrderKey::of(&order(id)),
            seq: 7,
            version,
            state,
            driver: Some(driver()),
            told_in_transit: state != OrderState::Assigned,
            at: at(second),
        }
    }

    #[test]
    fn a_new_order_offered_in_its_first_step_is_one_insert_of_the_row_it_leaves() {
        let changes = [
            Change::NewOrder {
                order: order("o-1"),
                seq: 7,
                at: at(0),
            },
            moved("o-1", 1, OrderState::Assigned, 1),
        ];
        let rows = RowChanges::of(changes.iter().map(|change| (1, change)));
        assert!(rows.updates.is_empty() && !rows.inconsistent);
        let [insert] = rows.inserts.as_slice() else {
            panic!("one insert: {:?}", rows.inserts)
        };
        assert_eq!((insert.from_version, insert.to_version), (0, 2));
        assert_eq!(insert.state, OrderState::Assigned);
        assert_eq!(insert.driver.as_deref(), Some("n:dana"));
        assert_eq!(insert.new, Some(("Ann".into(), "1 Main St".into())));
        let entered: Vec<OrderState> = insert.entered.iter().map(|e| e.state).collect();
        assert_eq!(entered, [OrderState::Ready, OrderState::Assigned]);
        assert_eq!(insert.closed_at, None);
    }

    #[test]
    fn steps_on_a_recorded_order_are_one_update_from_the_first_version() {
        let changes = [
            moved("o-1", 2, OrderState::InTransit, 3),
            moved("o-1", 3, OrderState::Delivered, 4),
        ];
        let rows = RowChanges::of(changes.iter().map(|change| (1, change)));
        let [update] = rows.updates.as_slice() else {
            panic!("one update: {:?}", rows.updates)
        };
        assert_eq!((update.from_version, update.to_version), (2, 4));
        assert_eq!(update.state, OrderState::Delivered);
        assert_eq!(
            update.closed_at.as_deref(),
            Some(at(4).to_rfc3339().as_str())
        );
        assert_eq!(update.entered.len(), 2);
        assert_eq!(rows.closed.get("delivered"), Some(&1));
        assert!(!rows.inconsistent);
    }

    #[test]
    fn every_final_state_closes_the_row_and_is_counted_under_its_name() {
        for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
            let change = moved("o-1", 2, state, 5);
            let rows = RowChanges::of([(1, &change)]);
            assert!(rows.updates[0].closed_at.is_some(), "{state} closes");
            assert_eq!(
                rows.closed.get(state.name()),
                Some(&1),
                "{state} is counted"
            );
        }
        for state in OrderState::ALL
            .into_iter()
            .filter(|state| !state.is_final())
        {
            let change = moved("o-1", 2, state, 5);
            let rows = RowChanges::of([(1, &change)]);
            assert!(
                rows.updates[0].closed_at.is_none(),
                "{state} leaves it open"
            );
            assert!(rows.closed.is_empty());
        }
    }

    #[test]
    fn a_change_decided_on_another_version_makes_the_run_inconsistent() {
        let changes = [
            moved("o-1", 2, OrderState::InTransit, 3),
            moved("o-1", 2, OrderState::Delivered, 4),
        ];
        let rows = RowChanges::of(changes.iter().map(|change| (1, change)));
        assert!(rows.inconsistent);
    }

    #[test]
    fn notices_keep_their_order_kind_and_step() {
        let changes = [
            Change::NoticeQueued {
                message_id: MessageId::new("m-1").unwrap(),
                kind: Event::Delivered,
                order: order("o-1"),
                at: at(6),
            },
            Change::NoticeAcknowledged {
                store: order("o-1").store,
                id: "o-0".into(),
            },
        ];
        let rows = RowChanges::of(changes.iter().enumerate().map(|(i, c)| (i as u64, c)));
        assert_eq!(rows.queued[0].kind, "delivered");
        assert_eq!(rows.queued[0].order_id, "o-1");
        assert_eq!(rows.acknowledged[0].step, 1);
        assert_eq!(
            rows.notice_order,
            [NoticeWrite::Queued(0), NoticeWrite::Acknowledged(0)],
            "in the order of the changes"
        );
        assert!(rows.changes_no_order());
    }
}
