//! The data dir's own tests: opening, migrations, commits and reads.

use super::schema::{history_entry, parse_history};
use super::*;
use crate::hub::domain::{Change, DriverKey, OrderKey};
use crate::hub::storage::columns::order_from;
use crate::protocol::{DriverName, Event, MessageId, Order};

fn order(id: &str) -> Order {
    order_from(
        "acme".into(),
        id.into(),
        "Jamal Braun".into(),
        "Schmittfurt, LA".into(),
    )
    .unwrap()
}

fn step(seq: u64, changes: Vec<Change>) -> Step {
    Step { seq, changes }
}

fn new_order(id: &str, seq: u64) -> Change {
    Change::NewOrder {
        order: order(id),
        seq,
        at: Utc::now(),
    }
}

fn assign(id: &str, seq: u64, version: u64) -> Change {
    assign_at(id, seq, version, Utc::now())
}

fn assign_at(id: &str, seq: u64, version: u64, at: DateTime<Utc>) -> Change {
    Change::Transition {
        key: OrderKey::of(&order(id)),
        seq,
        version,
        state: OrderState::Assigned,
        driver: Some(DriverKey::Named(DriverName::new("bob").unwrap())),
        told_in_transit: false,
        at,
    }
}

#[test]
fn a_step_whose_condition_fails_is_refused_whole_and_the_others_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = SqliteBackend::open(dir.path(), SyncMode::Full).unwrap();
    assert!(
        backend
            .commit(&[step(1, vec![new_order("o1", 0)])])
            .unwrap()
            .refused
            .is_empty()
    );
    let refused = backend
        .commit(&[
            // Its first change holds, its second was decided on a stale version.
            step(2, vec![assign("o1", 0, 1), assign("o1", 0, 7)]),
            step(3, vec![new_order("o2", 1)]),
            // The same order again, and a new one under a used arrival number.
            step(4, vec![new_order("o1", 2)]),
            step(5, vec![new_order("o3", 1)]),
            step(6, vec![assign("o2", 1, 1)]),
            // o2's key at o1's arrival number: no such row.
            step(7, vec![assign("o2", 0, 2)]),
        ])
        .unwrap()
        .refused;
    assert_eq!(refused, [2, 4, 5, 7]);
    let records = backend.records().unwrap();
    let o1 = records.order(&OrderKey::of(&order("o1"))).unwrap().unwrap();
    assert_eq!(
        (o1.state, o1.version),
        (OrderState::Ready, 1),
        "step 2 left no trace"
    );
    assert_eq!(o1.history.len(), 1);
    let o2 = records.order(&OrderKey::of(&order("o2"))).unwrap().unwrap();
    assert_eq!((o2.state, o2.version), (OrderState::Assigned, 2));
    assert!(
        records
            .order(&OrderKey::of(&order("o3")))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_new_order_offered_in_its_own_step_is_recorded_as_two_statements_would_record_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = SqliteBackend::open(dir.path(), SyncMode::Normal).unwrap();
    let at = |minute: u32| {
        DateTime::parse_from_rfc3339(&format!("2026-01-01T00:{minute:02}:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    };
    let arrive = |id: &str, seq: u64| Change::NewOrder {
        order: order(id),
        seq,
        at: at(1),
    };
    let offer = |id: &str, seq: u64, version: u64| assign_at(id, seq, version, at(2));
    // Offered in the step it arrived in: one insert, one row written.
    let before = backend.conn.total_changes();
    let refused = backend
        .commit(&[step(
            1,
            vec![arrive("together", 0), offer("together", 0, 1)],
        )])
        .unwrap()
        .refused;
    assert!(refused.is_empty());
    assert_eq!(backend.conn.total_changes() - before, 1, "one statement");
    let refused = backend
        .commit(&[
            // Offered a step later: an insert, then an update.
            step(2, vec![arrive("apart", 1)]),
            step(3, vec![offer("apart", 1, 1)]),
            // A repeat of a recorded order is refused, offer and all.
            step(4, vec![arrive("together", 2), offer("together", 2, 1)]),
            // An offer decided on a stale version is not folded in: the
            // step is refused whole, its new order too.
            step(5, vec![arrive("stale", 3), offer("stale", 3, 4)]),
        ])
        .unwrap()
        .refused;
    assert_eq!(refused, [4, 5]);
    let row = |id: &str| -> Vec<String> {
        backend
            .conn
            .query_row(
                "SELECT state, driver, told_in_transit, updated_at, version,
                        closed_at, history, customer, address
                 FROM orders WHERE order_id = ?1",
                [id],
                |row| {
                    (0..9)
                        .map(|column| {
                            row.get::<_, rusqlite::types::Value>(column)
                                .map(|value| format!("{value:?}"))
                        })
                        .collect()
                },
            )
            .unwrap()
    };
    assert_eq!(row("together"), row("apart"));
    assert_eq!(row("together")[4], "Integer(2)", "version");
    let records = backend.records().unwrap();
    assert!(
        records
            .order(&OrderKey::of(&order("stale")))
            .unwrap()
            .is_none()
    );
    let together = records
        .order(&OrderKey::of(&order("together")))
        .unwrap()
        .unwrap();
    let states: Vec<OrderState> = together.history.iter().map(|t| t.state).collect();
    assert_eq!(states, [OrderState::Ready, OrderState::Assigned]);
    assert_eq!(together.seq, 0, "the first arrival's number");
}

#[test]
fn recording_a_step_builds_no_temporary_table() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(dir.path(), SyncMode::Normal).unwrap();
    let writes = Writes::prepare(&backend.conn).unwrap();
    let statements = [
        ("new order", writes.new_order.expanded_sql()),
        ("advance", writes.advance.expanded_sql()),
        ("close", writes.close.expanded_sql()),
        ("queue", writes.queue.expanded_sql()),
        ("unqueue", writes.unqueue.expanded_sql()),
        ("count", writes.count_closed.expanded_sql()),
    ];
    drop(writes);
    for (name, sql) in statements {
        let sql = sql.unwrap();
        let mut explain = backend.conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let opcodes: Vec<String> = explain
            .query_map([], |row| row.get(1))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !opcodes.iter().any(|op| op == "OpenEphemeral"),
            "{name} builds a temporary table: {opcodes:?}"
        );
    }
}

#[test]
fn changes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let driver = DriverKey::Named(DriverName::new("bob").unwrap());
    {
        let mut backend = SqliteBackend::open(dir.path(), SyncMode::Full).unwrap();
        let refused = backend
            .commit(&[step(
                1,
                vec![
                    new_order("o1", 0),
                    new_order("o2", 1),
                    Change::Transition {
                        key: OrderKey::of(&order("o1")),
                        seq: 0,
                        version: 1,
                        state: OrderState::InTransit,
                        driver: Some(driver.clone()),
                        told_in_transit: true,
                        at: now,
                    },
                    Change::NoticeQueued {
                        message_id: MessageId::new("m1").unwrap(),
                        kind: Event::Delivered,
                        order: order("o2"),
                        at: now,
                    },
                ],
            )])
            .unwrap()
            .refused;
        assert!(refused.is_empty());
    }
    let mut backend = SqliteBackend::open(dir.path(), SyncMode::Full).unwrap();
    let snapshot = backend.load().unwrap();
    assert_eq!(snapshot.orders.len(), 2);
    assert_eq!(snapshot.orders[0].state, OrderState::InTransit);
    assert_eq!(snapshot.orders[0].driver, Some(driver));
    assert!(snapshot.orders[0].told_in_transit);
    let steps: Vec<OrderState> = snapshot.orders[0].history.iter().map(|t| t.state).collect();
    assert_eq!(
        steps,
        [OrderState::Ready, OrderState::InTransit],
        "the history comes back too"
    );
    assert_eq!(snapshot.orders[1].state, OrderState::Ready);
    assert_eq!(
        snapshot.next_seq, 2,
        "new orders are numbered after every recorded one"
    );
    assert_eq!(snapshot.queue_counts, [(StoreId::new("acme").unwrap(), 1)]);
    let notices = backend
        .records()
        .unwrap()
        .notices(&StoreId::new("acme").unwrap(), None, 10)
        .unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].order, order("o2"));
}

#[test]
fn a_data_dir_from_before_histories_moved_into_their_orders_keeps_every_history() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir as schema 7 left it: histories in their own table.
    {
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        for (index, migration) in MIGRATIONS[..7].iter().enumerate() {
            conn.execute_batch(migration).unwrap();
            conn.pragma_update(None, "user_version", index as i64 + 1)
                .unwrap();
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO orders (store, order_id, seq, customer, address, state, driver,
                                 updated_at, version) VALUES
               ('acme', 'done', 0, 'Ann', 'Here', 'delivered', 'n:bob',
                '2026-01-01T00:03:00+00:00', 4),
               ('acme', 'open', 1, 'Bea', 'There', 'assigned', 'n:bob',
                '2026-01-01T00:05:00+00:00', 2);
             INSERT INTO transitions (store, order_id, state, driver, at) VALUES
               ('acme', 'done', 'ready', NULL, '2026-01-01T00:00:00+00:00'),
               ('acme', 'open', 'ready', NULL, '2026-01-01T00:04:00+00:00'),
               ('acme', 'done', 'assigned', 'n:bob', '2026-01-01T00:01:00+00:00'),
               ('acme', 'done', 'in-transit', 'n:bob', '2026-01-01T00:02:00+00:00'),
               ('acme', 'open', 'assigned', 'n:bob', '2026-01-01T00:05:00+00:00'),
               ('acme', 'done', 'delivered', 'n:bob', '2026-01-01T00:03:00+00:00');
             UPDATE counters SET value = 1 WHERE name = 'delivered';",
        )
        .unwrap();
    }

    let mut backend = SqliteBackend::open(dir.path(), SyncMode::Full).unwrap();
    let snapshot = backend.load().unwrap();
    assert_eq!(snapshot.orders.len(), 1, "the delivered order is not open");
    let open: Vec<OrderState> = snapshot.orders[0].history.iter().map(|t| t.state).collect();
    assert_eq!(open, [OrderState::Ready, OrderState::Assigned]);
    let records = backend.records().unwrap();
    let done = records
        .order(&OrderKey::of(&order("done")))
        .unwrap()
        .unwrap();
    let steps: Vec<(OrderState, Option<DriverKey>)> = done
        .history
        .iter()
        .map(|t| (t.state, t.driver.clone()))
        .collect();
    let bob = Some(DriverKey::Named(DriverName::new("bob").unwrap()));
    assert_eq!(
        steps,
        [
            (OrderState::Ready, None),
            (OrderState::Assigned, bob.clone()),
            (OrderState::InTransit, bob.clone()),
            (OrderState::Delivered, bob.clone()),
        ],
        "every step, in order, with its driver"
    );
    assert_eq!(
        done.history[0].at,
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap()
    );
    let counts = records.counts().unwrap();
    assert_eq!(
        (
            counts.get(OrderState::Assigned),
            counts.get(OrderState::Delivered)
        ),
        (1, 1)
    );

    // A step after the migration lands after the old ones.
    let refused = backend
        .commit(&[step(
            1,
            vec![Change::Transition {
                key: OrderKey::of(&order("open")),
                seq: 1,
                version: 2,
                state: OrderState::Delivered,
                driver: bob,
                told_in_transit: true,
                at: Utc::now(),
            }],
        )])
        .unwrap()
        .refused;
    assert!(refused.is_empty());
    let open = records
        .order(&OrderKey::of(&order("open")))
        .unwrap()
        .unwrap();
    assert_eq!(open.history.len(), 3);
    assert_eq!(records.open_orders(10).unwrap().len(), 0);

    // The migrated delivery is compacted by the time it was delivered,
    // and its history goes with its personal data.
    let compacted = backend
        .compact(
            DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            10,
        )
        .unwrap();
    assert_eq!(compacted, 1, "only the old delivery");
    let done = records
        .order(&OrderKey::of(&order("done")))
        .unwrap()
        .unwrap();
    assert!(done.history.is_empty());
    assert!(done.digest.is_some());

    // People reading the data dir still find a `transitions` table.
    let per_state: Vec<(String, String, i64)> = backend
        .conn
        .prepare(
            "SELECT order_id, state, count(*) FROM transitions
             GROUP BY order_id, state ORDER BY order_id, min(at)",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let open_steps: Vec<&str> = per_state.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(open_steps, ["ready", "assigned", "delivered"]);
}

#[test]
fn a_history_column_reads_back_what_was_appended_and_refuses_garbage() {
    let at = "2026-01-01T00:00:00+00:00";
    let column = [
        history_entry(OrderState::Ready, None, at),
        history_entry(OrderState::Assigned, Some("n:o\"brien"), at),
        r#"["lost-in-space",null,"2026-01-01T00:00:00+00:00"]"#.to_owned(),
    ]
    .join(",");
    let steps: Vec<(OrderState, Option<DriverKey>)> = parse_history(&column)
        .unwrap()
        .into_iter()
        .map(|t| (t.state, t.driver))
        .collect();
    assert_eq!(
        steps,
        [
            (OrderState::Ready, None),
            (
                OrderState::Assigned,
                Some(DriverKey::Named(DriverName::new("o\"brien").unwrap()))
            ),
        ],
        "a quote survives; a state this build does not know is left out"
    );
    assert!(parse_history("").unwrap().is_empty(), "a compacted order");
    assert!(parse_history("not json").is_err());
}

#[test]
fn another_programs_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATABASE_FILE);
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let error = SqliteBackend::open(dir.path(), SyncMode::Full)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not a caps database"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "not a byte changed");
    assert!(
        !dir.path().join("caps.db-wal").exists(),
        "not switched to WAL"
    );
}

#[test]
fn a_second_hub_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteBackend::open(dir.path(), SyncMode::Full).unwrap();
    let error = SqliteBackend::open(dir.path(), SyncMode::Full)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("in use by another hub"), "{error}");
}

#[test]
fn a_newer_schema_or_a_foreign_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteBackend::open(dir.path(), SyncMode::Full).unwrap());
    let path = dir.path().join(DATABASE_FILE);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let error = SqliteBackend::open(dir.path(), SyncMode::Full)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("written by a newer caps"), "{error}");

    std::fs::write(&path, b"this is not a database at all, just some text").unwrap();
    let error = SqliteBackend::open(dir.path(), SyncMode::Full)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not a caps database"), "{error}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a database at all, just some text"
    );
}
