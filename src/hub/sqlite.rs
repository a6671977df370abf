//! The hub's durable store: one SQLite database (WAL mode) in the data dir.
//!
//! Opening refuses, with a clear message and without writing anything, a
//! data dir that another hub holds, a file that is not a caps database, a
//! corrupt database, or one written by a newer caps (a schema this build
//! does not know). Schema changes are numbered migrations, applied in order.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, DropBehavior, OpenFlags, OptionalExtension, params};

use super::columns::{
    OrderRow, closes, driver_column, driver_from_column, notice_kind, order_from, parse_state,
};
use super::domain::{
    Change, DriverKey, OrderKey, OrderQuery, OrderState, Snapshot, StoredNotice, StoredOrder,
    Transition, payload_digest,
};
use super::journal::{Backend, Records, Settled, Step};
use crate::api::OrderCounts;
use crate::protocol::{MessageId, OrderId, StoreId};

/// The database file inside the data dir.
pub const DATABASE_FILE: &str = "caps.db";
/// The lock file that keeps a second hub out of the same data dir.
const LOCK_FILE: &str = "caps.lock";
/// Marks our databases (`PRAGMA application_id`): "CAPS".
const APPLICATION_ID: i32 = 0x4341_5053;

/// Numbered schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
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

/// When a commit counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// After it reached the disk (fsync): survives a power cut.
    #[default]
    Full,
    /// After it reached the operating system: survives the hub being killed,
    /// not a power cut (SQLite WAL with `synchronous=NORMAL`).
    Normal,
}

impl SyncMode {
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

/// The SQLite backend of one data dir.
pub struct SqliteBackend {
    conn: Connection,
    /// The database file, for readers.
    path: PathBuf,
    /// Held for the backend's lifetime: the OS lock on the data dir.
    _lock: File,
}

impl SqliteBackend {
    /// Opens (creating if need be) the database in `dir`.
    pub fn open(dir: &Path, sync: SyncMode) -> anyhow::Result<SqliteBackend> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!("data dir {} is in use by another hub", dir.display());
        }

        let path = dir.join(DATABASE_FILE);
        check_header(&path)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .with_context(|| format!("cannot open {}", path.display()))?;
        let refuse = |what: String| {
            anyhow::anyhow!(
                "refusing data dir {}: {what}; nothing was changed",
                dir.display()
            )
        };
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|error| {
                refuse(format!(
                    "{} is not a readable database ({error})",
                    path.display()
                ))
            })?;
        let application_id: i32 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
        if version > 0 && application_id != APPLICATION_ID {
            return Err(refuse(format!("{} is not a caps database", path.display())));
        }
        // Another program's database that never set a schema version: it has
        // tables, and they are not ours.
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(|error| refuse(format!("{} is not readable ({error})", path.display())))?;
        if version == 0 && tables > 0 {
            return Err(refuse(format!("{} is not a caps database", path.display())));
        }
        if version > SCHEMA_VERSION {
            return Err(refuse(format!(
                "it was written by a newer caps (schema version {version}; this build knows up to {SCHEMA_VERSION})"
            )));
        }
        // The integrity check reads the whole file (about 1 s per GB here):
        // worth it after a crash, not after a clean stop.
        if version > 0 && !closed_cleanly(&conn, version) {
            let began = std::time::Instant::now();
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |row| row.get(0))
                .map_err(|error| refuse(format!("{} is corrupt ({error})", path.display())))?;
            if check != "ok" {
                return Err(refuse(format!("{} is corrupt ({check})", path.display())));
            }
            log::info!(
                "data dir {} was not closed cleanly: integrity checked in {:?}",
                dir.display(),
                began.elapsed()
            );
        }

        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        // Statement journals (savepoints) and sorts stay in memory.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let mut backend = SqliteBackend {
            conn,
            path: path.clone(),
            _lock: lock,
        };
        backend.migrate(version)?;
        // The schema's CHECK on `state` (an `IN` list) made SQLite build a
        // temporary table for every insert and update of an order, about a
        // microsecond each. This connection writes only `OrderState`'s names;
        // the CHECK still holds for any other program writing the file.
        backend
            .conn
            .pragma_update(None, "ignore_check_constraints", true)?;
        // Until `close` says otherwise, the data dir is in use: a crash
        // leaves this flag down, and the next start checks integrity.
        set_clean_stop(&backend.conn, false)?;
        Ok(backend)
    }

    fn migrate(&mut self, from: i64) -> anyhow::Result<()> {
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = index as i64 + 1;
            // Some rewrite every order (about 16 s per million here).
            log::info!("migrating the data dir's schema to version {version}");
            let tx = self.conn.transaction()?;
            tx.execute_batch(migration)
                .with_context(|| format!("applying schema migration {version}"))?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            log::info!("data dir schema migrated to version {version}");
        }
        Ok(())
    }
}

/// An existing, non-empty database file must start with SQLite's header;
/// anything else is refused before SQLite can touch it.
fn check_header(path: &PathBuf) -> anyhow::Result<()> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut header = Vec::with_capacity(16);
    file.by_ref()
        .take(16)
        .read_to_end(&mut header)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !header.is_empty() && header != b"SQLite format 3\0" {
        bail!(
            "refusing {}: it is not a caps database (not SQLite, or corrupt); nothing was changed",
            path.display()
        );
    }
    Ok(())
}

impl Backend for SqliteBackend {
    fn load(&mut self) -> anyhow::Result<Snapshot> {
        let mut orders = Vec::new();
        let mut open = self.conn.prepare(&format!(
            "SELECT {ORDER_COLUMNS}, history FROM orders WHERE closed_at IS NULL ORDER BY seq"
        ))?;
        for row in open.query_map([], read_order_with_history)? {
            orders.push(row??);
        }
        let delivered_total = closed_count(&self.conn, OrderState::Delivered)?;

        let next_seq: i64 =
            self.conn
                .query_row("SELECT coalesce(max(seq), -1) + 1 FROM orders", [], |row| {
                    row.get(0)
                })?;

        let mut queue_counts = Vec::new();
        let mut counted = self
            .conn
            .prepare("SELECT store, count(*) FROM notices GROUP BY store ORDER BY store")?;
        for row in counted.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })? {
            let (store, count) = row?;
            queue_counts.push((
                StoreId::new(store).map_err(anyhow::Error::msg)?,
                count as u64,
            ));
        }
        Ok(Snapshot {
            orders,
            delivered_total: delivered_total as u64,
            next_seq: next_seq as u64,
            seq_stride: 1,
            queue_counts,
        })
    }

    fn close(&mut self) -> anyhow::Result<()> {
        set_clean_stop(&self.conn, true)
    }

    fn compact(&mut self, delivered_before: DateTime<Utc>, limit: usize) -> anyhow::Result<usize> {
        let tx = self.conn.transaction()?;
        let old: Vec<(String, String, String, String)> = {
            let mut select = tx.prepare_cached(
                "SELECT store, order_id, customer, address FROM orders
                 WHERE closed_at IS NOT NULL AND digest IS NULL AND closed_at < ?1
                 ORDER BY closed_at LIMIT ?2",
            )?;
            select
                .query_map(
                    params![delivered_before.to_rfc3339(), limit as i64],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )?
                .collect::<rusqlite::Result<_>>()?
        };
        {
            // The history goes with the personal data.
            let mut redact = tx.prepare_cached(
                "UPDATE orders SET customer = '', address = '', digest = ?3, history = ''
                 WHERE store = ?1 AND order_id = ?2",
            )?;
            for (store, order_id, customer, address) in &old {
                let digest = payload_digest(customer, address);
                redact.execute(params![store, order_id, digest])?;
            }
        }
        tx.commit().context("compacting the data dir")?;
        Ok(old.len())
    }

    fn records(&self) -> anyhow::Result<Box<dyn Records>> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open {} to read", self.path.display()))?;
        Ok(Box::new(SqliteRecords {
            conn: Mutex::new(conn),
        }))
    }

    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled> {
        // The fast path, and the only one with a single hub: every condition
        // holds, so the batch is one plain transaction. Savepoints make
        // SQLite keep a statement journal of every page a step touches,
        // which doubled the cost of a commit.
        {
            let tx = self.conn.transaction()?;
            let held = {
                // Prepared once for the batch, not once per step.
                let mut writes = Writes::prepare(&tx)?;
                let mut held = Some(Vec::new());
                for step in steps {
                    if !writes.apply(&step.changes)? {
                        held = None;
                        break;
                    }
                    if std::mem::take(&mut writes.acknowledged_nothing)
                        && let Some(not_queued) = held.as_mut()
                    {
                        not_queued.push(step.seq);
                    }
                }
                held
            };
            if let Some(not_queued) = held {
                tx.commit().context("committing to the data dir")?;
                return Ok(Settled {
                    refused: Vec::new(),
                    not_queued,
                });
            }
            // Dropping the transaction rolls it back.
        }
        // A condition failed: again, each step in a savepoint, so that one
        // refused step is left out whole and the others commit.
        let mut tx = self.conn.transaction()?;
        let mut refused = Vec::new();
        let mut not_queued = Vec::new();
        for step in steps {
            let mut savepoint = tx.savepoint()?;
            let mut writes = Writes::prepare(&savepoint)?;
            let applied = writes.apply(&step.changes)?;
            let acknowledged_nothing = writes.acknowledged_nothing;
            drop(writes);
            if applied {
                if acknowledged_nothing {
                    not_queued.push(step.seq);
                }
                savepoint.commit()?;
            } else {
                savepoint.set_drop_behavior(DropBehavior::Rollback);
                savepoint.finish()?;
                refused.push(step.seq);
            }
        }
        tx.commit().context("committing to the data dir")?;
        Ok(Settled {
            refused,
            not_queued,
        })
    }
}

/// The statements that record changes, prepared on one connection.
struct Writes<'c> {
    /// A new order, as its first step leaves it (see [`Writes::apply`]).
    new_order: rusqlite::CachedStatement<'c>,
    /// A step short of delivery: sets no indexed column, so no index moves.
    advance: rusqlite::CachedStatement<'c>,
    /// A step into a final state: also sets `closed_at`.
    close: rusqlite::CachedStatement<'c>,
    queue: rusqlite::CachedStatement<'c>,
    unqueue: rusqlite::CachedStatement<'c>,
    acknowledge: rusqlite::CachedStatement<'c>,
    trim: rusqlite::CachedStatement<'c>,
    count_closed: rusqlite::CachedStatement<'c>,
    /// Set when an acknowledgement made without a look-up found no notice
    /// (the caller reports its step as `not_queued`).
    acknowledged_nothing: bool,
}

impl<'c> Writes<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Writes<'c>> {
        Ok(Writes {
            new_order: conn.prepare_cached(
                "INSERT INTO orders (store, order_id, seq, customer, address, state, driver,
                                     told_in_transit, updated_at, version, history)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT DO NOTHING",
            )?,
            // Found by arrival number, the rowid: the order's row, on one of
            // the recent pages, without a search of the key index, whose
            // pages are as random as the order ids. The key is checked too.
            advance: conn.prepare_cached(
                "UPDATE orders SET state = ?3, driver = ?4, told_in_transit = ?5, updated_at = ?6,
                        version = version + 1,
                        history = history || ',' || ?8
                 WHERE seq = ?9 AND store = ?1 AND order_id = ?2 AND version = ?7",
            )?,
            close: conn.prepare_cached(
                "UPDATE orders SET state = ?3, driver = ?4, told_in_transit = ?5, updated_at = ?6,
                        version = version + 1, closed_at = ?6,
                        history = history || ',' || ?8
                 WHERE seq = ?9 AND store = ?1 AND order_id = ?2 AND version = ?7",
            )?,
            queue: conn.prepare_cached(
                "INSERT INTO notices (message_id, store, order_id, queued_at, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            unqueue: conn.prepare_cached("DELETE FROM notices WHERE message_id = ?1")?,
            acknowledge: conn.prepare_cached(
                "DELETE FROM notices WHERE store = ?1 AND (message_id = ?2 OR order_id = ?2)",
            )?,
            trim: conn.prepare_cached(
                "DELETE FROM notices WHERE store = ?1 AND rowid NOT IN (
                     SELECT rowid FROM notices WHERE store = ?1 ORDER BY rowid DESC LIMIT ?2)",
            )?,
            count_closed: conn.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, 1)
                 ON CONFLICT (name) DO UPDATE SET value = value + 1",
            )?,
            acknowledged_nothing: false,
        })
    }

    /// Applies one step's changes; `false` if a condition failed (the
    /// caller undoes the step). An error is a real failure of the data dir.
    fn apply(&mut self, changes: &[Change]) -> rusqlite::Result<bool> {
        let Writes {
            new_order,
            advance,
            close,
            queue,
            unqueue,
            acknowledge,
            trim,
            count_closed,
            acknowledged_nothing,
        } = self;
        let mut changes = changes.iter().peekable();
        while let Some(change) = changes.next() {
            match change {
                Change::NewOrder { order, seq, at } => {
                    let at = at.to_rfc3339();
                    let arrived = history_entry(OrderState::Ready, None, &at);
                    // A new order is mostly offered in the step it arrives in:
                    // one insert of the order as that step leaves it, rather
                    // than an insert and an update of the same row.
                    let moved_on = changes.next_if(|next| {
                        matches!(next, Change::Transition { key, seq: moved, version: 1, state, .. }
                            if moved == seq && !closes(*state)
                                && key.store == order.store && key.order_id == order.order_id)
                    });
                    let (state, driver, told_in_transit, updated_at, version, history) =
                        match moved_on {
                            Some(Change::Transition {
                                state,
                                driver,
                                told_in_transit,
                                at: moved_at,
                                ..
                            }) => {
                                let (moved_at, driver, moved) =
                                    step_columns(*state, driver.as_ref(), moved_at);
                                let history = format!("{arrived},{moved}");
                                (*state, driver, *told_in_transit, moved_at, 2, history)
                            }
                            _ => (OrderState::Ready, None, false, at, 1, arrived),
                        };
                    let inserted = new_order.execute(params![
                        order.store.as_str(),
                        order.order_id.as_str(),
                        *seq as i64,
                        order.customer.as_str(),
                        order.address.as_str(),
                        state.name(),
                        driver,
                        told_in_transit,
                        updated_at,
                        version,
                        history,
                    ])?;
                    if inserted == 0 {
                        log::warn!(
                            "not recording store={} order={}: already recorded",
                            order.store,
                            order.order_id
                        );
                        return Ok(false);
                    }
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
                    let closes = closes(*state);
                    let update = if closes { &mut *close } else { &mut *advance };
                    let (at, driver, entry) = step_columns(*state, driver.as_ref(), at);
                    let updated = update.execute(params![
                        key.store.as_str(),
                        key.order_id.as_str(),
                        state.name(),
                        driver,
                        told_in_transit,
                        at,
                        *version as i64,
                        entry,
                        *seq as i64,
                    ])?;
                    if updated == 0 {
                        log::warn!(
                            "not recording {key} {state}: it is no longer at version {version}"
                        );
                        return Ok(false);
                    }
                    if closes {
                        count_closed.execute([state.name()])?;
                    }
                }
                Change::NoticeQueued {
                    message_id,
                    kind,
                    order,
                    at,
                } => {
                    queue.execute(params![
                        message_id.as_str(),
                        order.store.as_str(),
                        order.order_id.as_str(),
                        at.to_rfc3339(),
                        kind.name(),
                    ])?;
                }
                Change::NoticeRemoved { message_id } => {
                    unqueue.execute(params![message_id.as_str()])?;
                }
                Change::NoticeAcknowledged { store, id } => {
                    if acknowledge.execute(params![store.as_str(), id])? == 0 {
                        *acknowledged_nothing = true;
                    }
                }
                Change::NoticesTrimmed { store, keep } => {
                    trim.execute(params![store.as_str(), *keep as i64])?;
                }
            }
        }
        Ok(true)
    }
}

/// Whether the last hub on this database (at schema `version`) recorded a
/// clean stop.
fn closed_cleanly(conn: &Connection, version: i64) -> bool {
    version >= 6
        && conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'clean-stop'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|value| value == 1)
}

fn set_clean_stop(conn: &Connection, clean: bool) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('clean-stop', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [clean as i64],
    )
    .context("marking the data dir in use")?;
    Ok(())
}

/// The columns [`read_order`] reads, in its order.
const ORDER_COLUMNS: &str = "store, order_id, seq, customer, address, state, driver, \
     told_in_transit, updated_at, version, digest";

/// A step's time and driver as the orders table keeps them, and its entry
/// in the order's history column.
/// How many orders entered the final state `state`, ever.
fn closed_count(conn: &Connection, state: OrderState) -> rusqlite::Result<u64> {
    let count: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            [state.name()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(count.unwrap_or(0) as u64)
}

fn step_columns(
    state: OrderState,
    driver: Option<&DriverKey>,
    at: &DateTime<Utc>,
) -> (String, Option<String>, String) {
    let at = at.to_rfc3339();
    let driver = driver.map(driver_column);
    let entry = history_entry(state, driver.as_deref(), &at);
    (at, driver, entry)
}

/// One entry of an order's history column: `["state","driver",at]` (the
/// driver `null` when there is none). Appending it as text costs SQLite
/// nothing but the copy; its JSON functions cost a tenth of the writer.
fn history_entry(state: OrderState, driver: Option<&str>, at: &str) -> String {
    serde_json::to_string(&(state.name(), driver, at)).expect("strings always serialise")
}

/// An order's history as its row keeps it (entries of [`history_entry`],
/// comma-separated), oldest first. Entries this build cannot read (a state
/// or time it does not know) are left out; a column that is not such a list
/// at all is an error.
fn parse_history(column: &str) -> serde_json::Result<Vec<Transition>> {
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

/// Committed orders, read on a connection of their own (WAL lets readers
/// run beside the writer).
struct SqliteRecords {
    conn: Mutex<Connection>,
}

impl SqliteRecords {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Records for SqliteRecords {
    fn order(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        let conn = self.conn();
        let mut select = conn.prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS}, history FROM orders WHERE store = ?1 AND order_id = ?2"
        ))?;
        let found = select
            .query_row(
                params![key.store.as_str(), key.order_id.as_str()],
                read_order_with_history,
            )
            .optional()?;
        found.transpose()
    }

    fn stores_of(&self, order_id: &OrderId) -> anyhow::Result<Vec<StoreId>> {
        let conn = self.conn();
        let mut select =
            conn.prepare_cached("SELECT store FROM orders WHERE order_id = ?1 ORDER BY store")?;
        let stores = select
            .query_map([order_id.as_str()], |row| row.get::<_, String>(0))?
            .map(|store| StoreId::new(store?).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<StoreId>>>()?;
        Ok(stores)
    }

    fn page(&self, query: &OrderQuery) -> anyhow::Result<Vec<StoredOrder>> {
        let conn = self.conn();
        let mut select = conn.prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders
             WHERE seq > ?1 AND (?2 IS NULL OR store = ?2) AND (?3 IS NULL OR state = ?3)
             ORDER BY seq LIMIT ?4"
        ))?;
        let after = query.after.map_or(-1, |after| after as i64);
        let rows = select.query_map(
            params![
                after,
                query.store.as_ref().map(StoreId::as_str),
                query.state.map(OrderState::name),
                query.limit as i64
            ],
            read_order,
        )?;
        let mut orders = Vec::new();
        for row in rows {
            orders.push(row??);
        }
        Ok(orders)
    }

    fn notices(
        &self,
        store: &StoreId,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredNotice>> {
        let conn = self.conn();
        let mut select = conn.prepare_cached(
            "SELECT n.rowid, n.message_id, o.store, o.order_id, o.customer, o.address, n.kind
             FROM notices n INDEXED BY notices_by_store
             JOIN orders o ON o.store = n.store AND o.order_id = n.order_id
             WHERE n.store = ?1 AND n.rowid > ?2 ORDER BY n.rowid LIMIT ?3",
        )?;
        let after = after.map_or(0, |after| after as i64);
        let rows = select.query_map(params![store.as_str(), after, limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut notices = Vec::new();
        for row in rows {
            let (place, message_id, store, order_id, customer, address, kind) = row?;
            notices.push(StoredNotice {
                place: place as u64,
                message_id: MessageId::new(message_id).map_err(anyhow::Error::msg)?,
                kind: notice_kind(&kind)?,
                order: order_from(store, order_id, customer, address)?,
            });
        }
        Ok(notices)
    }

    fn notice_id(&self, store: &StoreId, id: &str) -> anyhow::Result<Option<MessageId>> {
        let conn = self.conn();
        let mut select = conn.prepare_cached(
            "SELECT message_id FROM notices WHERE message_id = ?2 AND store = ?1
             UNION ALL
             SELECT message_id FROM notices WHERE store = ?1 AND order_id = ?2
             LIMIT 1",
        )?;
        let found: Option<String> = select
            .query_row(params![store.as_str(), id], |row| row.get(0))
            .optional()?;
        found
            .map(|id| MessageId::new(id).map_err(anyhow::Error::msg))
            .transpose()
    }

    fn open_orders(&self, limit: usize) -> anyhow::Result<Vec<StoredOrder>> {
        let conn = self.conn();
        let mut select = conn.prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE closed_at IS NULL ORDER BY seq LIMIT ?1"
        ))?;
        let mut orders = Vec::new();
        for row in select.query_map([limit as i64], read_order)? {
            orders.push(row??);
        }
        Ok(orders)
    }

    fn counts(&self) -> anyhow::Result<OrderCounts> {
        let conn = self.conn();
        // Open orders through their partial index; final ones from their counters.
        let mut open = conn.prepare_cached(
            "SELECT state, count(*) FROM orders WHERE closed_at IS NULL GROUP BY state",
        )?;
        let mut counts = OrderCounts::default();
        let rows = open.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (state, count) = row?;
            let count = count as u64;
            if let Some(state) = parse_state(&state).filter(|state| state.is_open()) {
                counts.set(state, count);
            }
        }
        for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
            counts.set(state, closed_count(&conn, state)?);
        }
        Ok(counts)
    }

    fn queues(&self) -> anyhow::Result<Vec<(StoreId, u64)>> {
        let conn = self.conn();
        let mut select = conn
            .prepare_cached("SELECT store, count(*) FROM notices GROUP BY store ORDER BY store")?;
        let rows = select.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut queues = Vec::new();
        for row in rows {
            let (store, count) = row?;
            queues.push((
                StoreId::new(store).map_err(anyhow::Error::msg)?,
                count as u64,
            ));
        }
        Ok(queues)
    }
}

fn read_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<anyhow::Result<StoredOrder>> {
    let since: String = row.get(8)?;
    let columns = OrderRow {
        store: row.get(0)?,
        order_id: row.get(1)?,
        seq: row.get(2)?,
        customer: row.get(3)?,
        address: row.get(4)?,
        state: row.get(5)?,
        driver: row.get(6)?,
        told_in_transit: row.get(7)?,
        since: DateTime::parse_from_rfc3339(&since)
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now()),
        version: row.get(9)?,
        digest: row.get(10)?,
    };
    Ok(columns.into_stored())
}

/// [`read_order`] with the history column after the others. An unreadable
/// history is logged and left empty: the order itself is still the truth.
fn read_order_with_history(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<anyhow::Result<StoredOrder>> {
    let history: String = row.get(11)?;
    Ok(read_order(row)?.map(|mut order| {
        match parse_history(&history) {
            Ok(history) => order.history = history,
            Err(error) => log::warn!(
                "the history of {} in the data dir is unreadable ({error}); shown without it",
                OrderKey::of(&order.order)
            ),
        }
        order
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::domain::DriverKey;
    use crate::protocol::{DriverName, Event, Order};

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
}
