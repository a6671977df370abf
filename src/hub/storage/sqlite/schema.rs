//! The data dir's schema: its numbered migrations, the clean-stop mark, and
//! the text an order's history column holds.

use anyhow::Context;
use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::hub::domain::{OrderState, Transition};
use crate::hub::storage::columns::{driver_from_column, parse_state};

/// Numbered schema migrations; `PRAGMA user_version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: orders, their history, and the stores' notice queues.
    "CREATE TABLE orders (
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        seq INTEGER NOT NULL UNIQUE,
        customer TEXT NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('ready', 'assigned', 'in-transit', 'delivered')),
        driver TEXT,
        told_in_transit INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (store, order_id)
    ) WITHOUT ROWID;
    CREATE INDEX orders_by_state ON orders (state, seq);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        state TEXT NOT NULL,
        driver TEXT,
        at TEXT NOT NULL
    );
    CREATE INDEX transitions_by_order ON transitions (store, order_id);
    CREATE TABLE notices (
        message_id TEXT PRIMARY KEY,
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        queued_at TEXT NOT NULL
    );",
    // 2: no secondary indexes. Every state change rewrote an index entry; the
    // hub reads these tables only at start, with full scans.
    "DROP INDEX orders_by_state;
    DROP INDEX transitions_by_order;",
    // 3: the data dir is the authority for every order ever recorded, read
    // while the hub runs: an order by its id, its history, the open orders
    // at start (a partial index: only open orders are in it), and the count
    // of deliveries kept as they happen rather than counted at start.
    "CREATE INDEX orders_by_id ON orders (order_id);
    CREATE INDEX open_orders ON orders (seq) WHERE state <> 'delivered';
    CREATE INDEX transitions_by_order ON transitions (store, order_id);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters (name, value)
        SELECT 'delivered', count(*) FROM orders WHERE state = 'delivered';",
    // 4: every change is conditional on the version it was decided on.
    "ALTER TABLE orders ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    UPDATE orders SET version = (
        SELECT count(*) FROM transitions t
        WHERE t.store = orders.store AND t.order_id = orders.order_id
    );",
    // 5: compaction (--retain): an old delivered order keeps only a digest of
    // its payload; the index finds the orders still to compact.
    "ALTER TABLE orders ADD COLUMN digest TEXT;
    CREATE INDEX compactable ON orders (updated_at) WHERE state = 'delivered' AND digest IS NULL;",
    // 6: whether the last hub on this data dir stopped cleanly.
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;",
    // 7: queued notices are read from here, not held in memory: a store's
    // queue, or one notice by its order.
    "CREATE INDEX notices_by_order ON notices (store, order_id);",
    // 8: the writer's CPU cut by about 40%. An order's row lies where its arrival
    // number puts it (the rowid), so the rows of the orders in flight share
    // a few pages at the end of the table instead of one random page each;
    // one index finds an order by its id (and its store). Its history lives
    // in the row (JSON arrays [state, driver, at], comma-separated, appended
    // as text by the update each step makes anyway; see `history_entry`):
    // a history table cost a row and a random index entry per step.
    // `delivered_at`, set once, is what the partial indexes test, so that a
    // step short of delivery moves no index. `transitions` stays, as a view,
    // for people reading the data dir.
    "CREATE TABLE orders_by_arrival (
        seq INTEGER PRIMARY KEY,
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        customer TEXT NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('ready', 'assigned', 'in-transit', 'delivered')),
        driver TEXT,
        told_in_transit INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        digest TEXT,
        delivered_at TEXT,
        history TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO orders_by_arrival (seq, store, order_id, customer, address, state, driver,
                                   told_in_transit, updated_at, version, digest, delivered_at,
                                   history)
    SELECT o.seq, o.store, o.order_id, o.customer, o.address, o.state, o.driver,
           o.told_in_transit, o.updated_at, o.version, o.digest,
           CASE WHEN o.state = 'delivered' THEN o.updated_at END,
           coalesce((SELECT group_concat(json_array(t.state, t.driver, t.at), ',' ORDER BY t.id)
                     FROM transitions t
                     WHERE t.store = o.store AND t.order_id = o.order_id), '')
    FROM orders o ORDER BY o.seq;
    DROP TABLE transitions;
    DROP TABLE orders;
    ALTER TABLE orders_by_arrival RENAME TO orders;
    CREATE UNIQUE INDEX orders_by_id ON orders (order_id, store);
    CREATE INDEX open_orders ON orders (seq) WHERE delivered_at IS NULL;
    CREATE INDEX compactable ON orders (delivered_at)
        WHERE delivered_at IS NOT NULL AND digest IS NULL;
    CREATE VIEW transitions AS
        SELECT o.store, o.order_id, h.key AS step, h.value ->> 0 AS state,
               h.value ->> 1 AS driver, h.value ->> 2 AS at
        FROM orders o, json_each('[' || o.history || ']') h;",
    // 9: a store's queue is replayed a page at a time, oldest first: an
    // index on the store alone keeps its entries in arrival (rowid) order,
    // so a page is a range, not a sort of the whole queue.
    "CREATE INDEX notices_by_store ON notices (store);",
    // 10: one storage rule for every final state, the same as the group's
    // database: `closed_at` (was `delivered_at`) is set when an order
    // enters a final state, so "open" is `closed_at IS NULL` whatever the
    // states; which states exist is the code's table (`src/lifecycle.rs`),
    // no longer a CHECK that a new state would have to rebuild the table
    // for. Final states are counted in `counters` under their names. A
    // notice has a kind (the event the store hears it as), so a store's
    // queue can hold more than deliveries.
    "CREATE TABLE orders_v10 (
        seq INTEGER PRIMARY KEY,
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        customer TEXT NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL,
        driver TEXT,
        told_in_transit INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        digest TEXT,
        closed_at TEXT,
        history TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO orders_v10 (seq, store, order_id, customer, address, state, driver,
                            told_in_transit, updated_at, version, digest, closed_at, history)
    SELECT seq, store, order_id, customer, address, state, driver,
           told_in_transit, updated_at, version, digest, delivered_at, history
    FROM orders ORDER BY seq;
    DROP VIEW transitions;
    DROP TABLE orders;
    ALTER TABLE orders_v10 RENAME TO orders;
    CREATE UNIQUE INDEX orders_by_id ON orders (order_id, store);
    CREATE INDEX open_orders ON orders (seq) WHERE closed_at IS NULL;
    CREATE INDEX compactable ON orders (closed_at)
        WHERE closed_at IS NOT NULL AND digest IS NULL;
    CREATE VIEW transitions AS
        SELECT o.store, o.order_id, h.key AS step, h.value ->> 0 AS state,
               h.value ->> 1 AS driver, h.value ->> 2 AS at
        FROM orders o, json_each('[' || o.history || ']') h;
    ALTER TABLE notices ADD COLUMN kind TEXT NOT NULL DEFAULT 'delivered';",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Whether the last hub on this database (at schema `version`) recorded a
/// clean stop.
pub(super) fn closed_cleanly(conn: &Connection, version: i64) -> bool {
    version >= 6
        && conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'clean-stop'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|value| value == 1)
}

pub(super) fn set_clean_stop(conn: &Connection, clean: bool) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('clean-stop', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [clean as i64],
    )
    .context("marking the data dir in use")?;
    Ok(())
}

/// One entry of an order's history column: `["state","driver",at]` (the
/// driver `null` when there is none). Appending it as text costs SQLite
/// nothing but the copy; its JSON functions cost a tenth of the writer.
pub(super) fn history_entry(state: OrderState, driver: Option<&str>, at: &str) -> String {
    serde_json::to_string(&(state.name(), driver, at)).expect("strings always serialise")
}

/// An order's history as its row keeps it (entries of [`history_entry`],
/// comma-separated), oldest first. Entries this build cannot read (a state
/// or time it does not know) are left out; a column that is not such a list
/// at all is an error.
pub(super) fn parse_history(column: &str) -> serde_json::Result<Vec<Transition>> {
    let entries: Vec<(String, Option<String>, String)> =
        serde_json::from_str(&format!("[{column}]"))?;
    Ok(entries
        .into_iter()
        .filter_map(|(state, driver, at)| {
            Some(Transition {
                state: parse_state(&state)?,
                driver: driver.as_deref().and_then(driver_from_column),
                at: DateTime::parse_from_rfc3339(&at).ok()?.with_timezone(&Utc),
            })
        })
        .collect())
}
