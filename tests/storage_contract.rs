//! One contract, both storage engines. The hub relies on its storage for a
//! few promises (a change is recorded only on the conditions it was decided
//! on, a step is all or nothing, what was recorded reads back the same, a
//! store's queue keeps its notices in order until they are acknowledged, a
//! compacted order is still recognised); each test here states one and runs
//! it against SQLite (a data dir) always, and against PostgreSQL (a group's
//! database, a private cluster) where it is installed.

mod common;

use std::time::Duration;

use caps::hub::domain::{Change, DriverKey, OrderKey, StoredOrder};
use caps::hub::storage::journal::{Backend, Records, Step};
use caps::hub::storage::postgres::{Pg, PgBackend};
use caps::hub::storage::sqlite::{SqliteBackend, SyncMode};
use caps::protocol::{
    Address, Customer, DriverName, Event, MessageId, Order, OrderId, OrderState, StoreId,
};
use chrono::{DateTime, Utc};
use common::postgres::PgCluster;

/// Where a test's records live.
enum Engine {
    Sqlite(tempfile::TempDir),
    Postgres(PgCluster),
}

impl Engine {
    fn name(&self) -> &'static str {
        match self {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The store's backend, as a hub opens it (again, after a stop).
    fn open(&self) -> Box<dyn Backend> {
        match self {
            Engine::Sqlite(dir) => {
                Box::new(SqliteBackend::open(dir.path(), SyncMode::Normal).unwrap())
            }
            Engine::Postgres(cluster) => {
                let pg = Pg::connect(&cluster.url(), "contract", Duration::from_secs(1)).unwrap();
                Box::new(PgBackend::new(pg))
            }
        }
    }
}

/// Runs `contract` on a fresh store of each engine present.
fn on_each_engine(contract: impl Fn(&Engine)) {
    let engines = [
        Some(Engine::Sqlite(tempfile::tempdir().unwrap())),
        PgCluster::start().map(Engine::Postgres),
    ];
    for engine in engines.into_iter().flatten() {
        eprintln!("on {}", engine.name());
        contract(&engine);
    }
}

fn store() -> StoreId {
    StoreId::new("acme").unwrap()
}

fn order(id: &str) -> Order {
    Order {
        store: store(),
        order_id: OrderId::new(id).unwrap(),
        customer: Customer::new("Jamal Braun").unwrap(),
        address: Address::new("Schmittfurt, LA").unwrap(),
    }
}

fn key(id: &str) -> OrderKey {
    OrderKey::of(&order(id))
}

fn bob() -> DriverKey {
    DriverKey::Named(DriverName::new("bob").unwrap())
}

fn new_order(id: &str, seq: u64) -> Change {
    Change::NewOrder {
        order: order(id),
        seq,
        at: Utc::now(),
    }
}

/// `id` (arrival `seq`) moves from `version` to `state`, with bob.
fn moved(id: &str, seq: u64, version: u64, state: OrderState) -> Change {
    moved_at(id, seq, version, state, Utc::now())
}

fn moved_at(id: &str, seq: u64, version: u64, state: OrderState, at: DateTime<Utc>) -> Change {
    Change::Transition {
        key: key(id),
        seq,
        version,
        state,
        driver: (state != OrderState::Ready).then(bob),
        told_in_transit: state != OrderState::Assigned,
        at,
    }
}

/// `id` placed as arrival `seq` and carried through to delivered.
fn delivered_order(id: &str, seq: u64, at: DateTime<Utc>) -> Vec<Change> {
    vec![
        Change::NewOrder {
            order: order(id),
            seq,
            at,
        },
        moved_at(id, seq, 1, OrderState::Assigned, at),
        moved_at(id, seq, 2, OrderState::InTransit, at),
        moved_at(id, seq, 3, OrderState::Delivered, at),
    ]
}

fn steps(changes: Vec<Vec<Change>>) -> Vec<Step> {
    changes
        .into_iter()
        .enumerate()
        .map(|(index, changes)| Step {
            seq: index as u64 + 1,
            changes,
        })
        .collect()
}

fn read(records: &dyn Records, id: &str) -> StoredOrder {
    records
        .order(&key(id))
        .unwrap()
        .unwrap_or_else(|| panic!("{id} is recorded"))
}

/// The message ids queued for the store, oldest first.
fn queued(records: &dyn Records) -> Vec<String> {
    records
        .notices(&store(), None, 100)
        .unwrap()
        .into_iter()
        .map(|notice| notice.message_id.to_string())
        .collect()
}

#[test]
fn a_step_whose_condition_fails_is_refused_whole_and_the_others_commit() {
    on_each_engine(|engine| {
        let mut backend = engine.open();
        let placed = backend
            .commit(&steps(vec![vec![new_order("o1", 0)]]))
            .unwrap();
        assert!(placed.refused.is_empty(), "{}", engine.name());
        let settled = backend
            .commit(&[
                // Its first change holds, its second was decided on a stale version.
                Step {
                    seq: 2,
                    changes: vec![
                        moved("o1", 0, 1, OrderState::Assigned),
                        moved("o1", 0, 7, OrderState::InTransit),
                    ],
                },
                Step {
                    seq: 3,
                    changes: vec![new_order("o2", 1)],
                },
                // The same order again, and a new one under a used arrival number.
                Step {
                    seq: 4,
                    changes: vec![new_order("o1", 2)],
                },
                Step {
                    seq: 5,
                    changes: vec![new_order("o3", 1)],
                },
                Step {
                    seq: 6,
                    changes: vec![moved("o2", 1, 1, OrderState::Assigned)],
                },
            ])
            .unwrap();
        assert_eq!(settled.refused, [2, 4, 5], "{}", engine.name());
        let records = backend.records().unwrap();
        let o1 = read(records.as_ref(), "o1");
        assert_eq!(
            (o1.state, o1.version, o1.history.len()),
            (OrderState::Ready, 1, 1),
            "{}: the refused step left no trace",
            engine.name()
        );
        let o2 = read(records.as_ref(), "o2");
        assert_eq!((o2.state, o2.version), (OrderState::Assigned, 2));
        assert_eq!(o2.driver, Some(bob()));
        assert!(records.order(&key("o3")).unwrap().is_none());
    });
}

#[test]
fn what_was_recorded_reads_back_the_same_after_a_stop() {
    on_each_engine(|engine| {
        let at = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        {
            let mut backend = engine.open();
            backend.load().unwrap();
            let settled = backend
                .commit(&steps(vec![
                    delivered_order("done", 0, at),
                    vec![
                        new_order("open", 1),
                        moved_at("open", 1, 1, OrderState::Assigned, at),
                        moved_at("open", 1, 2, OrderState::InTransit, at),
                    ],
                    vec![new_order("waiting", 2)],
                ]))
                .unwrap();
            assert!(settled.refused.is_empty(), "{}", engine.name());
            backend.close().unwrap();
        }
        let mut backend = engine.open();
        let snapshot = backend.load().unwrap();
        let open: Vec<(&str, OrderState)> = snapshot
            .orders
            .iter()
            .map(|order| (order.order.order_id.as_str(), order.state))
            .collect();
        assert_eq!(
            open,
            [
                ("open", OrderState::InTransit),
                ("waiting", OrderState::Ready)
            ],
            "{}: open orders, by arrival",
            engine.name()
        );
        let carried = &snapshot.orders[0];
        assert_eq!(carried.driver, Some(bob()));
        assert_eq!(carried.version, 3);
        assert!(carried.told_in_transit);
        let states: Vec<OrderState> = carried.history.iter().map(|step| step.state).collect();
        assert_eq!(
            states,
            [
                OrderState::Ready,
                OrderState::Assigned,
                OrderState::InTransit
            ],
            "{}",
            engine.name()
        );
        assert_eq!(
            snapshot.closed.get(OrderState::Delivered),
            1,
            "{}",
            engine.name()
        );
        assert!(
            snapshot.next_seq > 2,
            "{}: past every arrival",
            engine.name()
        );

        let records = backend.records().unwrap();
        let done = read(records.as_ref(), "done");
        assert_eq!((done.state, done.version), (OrderState::Delivered, 4));
        assert_eq!(done.history.len(), 4);
        assert!(
            done.history.iter().all(|step| step.at == at),
            "{}",
            engine.name()
        );
        assert!(done.is_same(&order("done")));
        let counts = records.counts().unwrap();
        let counted: Vec<(OrderState, u64)> = counts.iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            counted,
            [
                (OrderState::Ready, 1),
                (OrderState::InTransit, 1),
                (OrderState::Delivered, 1)
            ],
            "{}: counts by state",
            engine.name()
        );
        assert_eq!(
            records.stores_of(&OrderId::new("done").unwrap()).unwrap(),
            [store()]
        );
    });
}

#[test]
fn a_queue_keeps_its_notices_in_order_until_each_is_acknowledged() {
    on_each_engine(|engine| {
        let mut backend = engine.open();
        let mut changes = Vec::new();
        for (seq, id) in ["n1", "n2", "n3", "n4"].into_iter().enumerate() {
            changes.push(delivered_order(id, seq as u64, Utc::now()));
            // A queue holds notices of more than one kind.
            let kind = if id == "n3" {
                Event::InTransit
            } else {
                Event::Delivered
            };
            changes.push(vec![Change::NoticeQueued {
                message_id: MessageId::new(format!("m-{id}")).unwrap(),
                kind,
                order: order(id),
                at: Utc::now(),
            }]);
        }
        assert!(backend.commit(&steps(changes)).unwrap().refused.is_empty());
        let records = backend.records().unwrap();
        let first = records.notices(&store(), None, 3).unwrap();
        let ids: Vec<&str> = first.iter().map(|n| n.message_id.as_str()).collect();
        assert_eq!(ids, ["m-n1", "m-n2", "m-n3"], "{}: a page", engine.name());
        let kinds: Vec<Event> = first.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            [Event::Delivered, Event::Delivered, Event::InTransit],
            "{}: each notice keeps its kind",
            engine.name()
        );
        let rest = records.notices(&store(), Some(first[2].place), 3).unwrap();
        let ids: Vec<&str> = rest.iter().map(|n| n.message_id.as_str()).collect();
        assert_eq!(ids, ["m-n4"], "{}: the next page", engine.name());
        assert_eq!(rest[0].order, order("n4"));
        assert_eq!(records.queues().unwrap(), [(store(), 4)]);
        // Acknowledged by message id or (as older course code does) by
        // order id, after a look-up or without one.
        assert_eq!(
            records.notice_id(&store(), "n2").unwrap(),
            Some(MessageId::new("m-n2").unwrap()),
            "{}",
            engine.name()
        );
        let settled = backend
            .commit(&[
                Step {
                    seq: 100,
                    changes: vec![Change::NoticeRemoved {
                        message_id: MessageId::new("m-n1").unwrap(),
                    }],
                },
                Step {
                    seq: 101,
                    changes: vec![Change::NoticeAcknowledged {
                        store: store(),
                        id: "n3".into(),
                    }],
                },
                Step {
                    seq: 102,
                    changes: vec![Change::NoticeAcknowledged {
                        store: store(),
                        id: "never-queued".into(),
                    }],
                },
            ])
            .unwrap();
        assert!(settled.refused.is_empty());
        assert_eq!(
            settled.not_queued,
            [102],
            "{}: an acknowledgement of nothing queued is reported",
            engine.name()
        );
        assert_eq!(
            queued(records.as_ref()),
            ["m-n2", "m-n4"],
            "{}",
            engine.name()
        );
        // Over its limit, a queue keeps its newest.
        backend
            .commit(&[Step {
                seq: 103,
                changes: vec![Change::NoticesTrimmed {
                    store: store(),
                    keep: 1,
                }],
            }])
            .unwrap();
        assert_eq!(queued(records.as_ref()), ["m-n4"], "{}", engine.name());
    });
}

#[test]
fn a_compacted_order_is_still_recognised_and_open_ones_are_left_whole() {
    on_each_engine(|engine| {
        let mut backend = engine.open();
        let long_ago = Utc::now() - chrono::Duration::days(40);
        backend
            .commit(&steps(vec![
                delivered_order("old", 0, long_ago),
                delivered_order("recent", 1, Utc::now()),
                vec![new_order("open", 2)],
            ]))
            .unwrap();
        let compacted = backend
            .compact(Utc::now() - chrono::Duration::days(30), 100)
            .unwrap();
        assert_eq!(compacted, 1, "{}", engine.name());
        let records = backend.records().unwrap();
        let old = read(records.as_ref(), "old");
        assert_eq!(old.state, OrderState::Delivered);
        assert!(old.is_same(&order("old")), "{}", engine.name());
        let mut other = order("old");
        other.customer = Customer::new("Someone Else").unwrap();
        assert!(!old.is_same(&other), "{}", engine.name());
        assert_eq!(read(records.as_ref(), "recent").history.len(), 4);
        assert_eq!(read(records.as_ref(), "open").state, OrderState::Ready);
        assert_eq!(
            backend
                .compact(Utc::now() - chrono::Duration::days(30), 100)
                .unwrap(),
            0,
            "{}: once",
            engine.name()
        );
    });
}
