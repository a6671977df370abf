//! The hub's durable store: one SQLite database (WAL mode) in the data dir.
//!
//! Opening refuses, with a clear message and without writing anything, a
//! data dir that another hub holds, a file that is not a caps database, a
//! corrupt database, or one written by a newer caps (a schema this build
//! does not know). Schema changes are numbered migrations, applied in order.

mod batch;
pub mod logged;
mod records;
mod schema;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, DropBehavior, OpenFlags, OptionalExtension, params};

use super::journal::{Backend, Records, Settled, Step};
use crate::api::OrderCounts;
use crate::hub::domain::{OrderState, Snapshot, payload_digest};
use crate::protocol::StoreId;
use batch::Writes;
use records::{ORDER_COLUMNS, SqliteRecords, closed_count, read_order_with_history};
pub use schema::SCHEMA_VERSION;
use schema::{MIGRATIONS, closed_cleanly, set_clean_stop};

/// The database file inside the data dir.
pub const DATABASE_FILE: &str = "caps.db";
/// The lock file that keeps a second hub out of the same data dir.
const LOCK_FILE: &str = "caps.lock";
/// Marks our databases (`PRAGMA application_id`): "CAPS".
const APPLICATION_ID: i32 = 0x4341_5053;

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
        let mut closed = OrderCounts::default();
        for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
            closed.set(state, closed_count(&self.conn, state)?);
        }

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
            closed,
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
        Ok(Box::new(open_records(&self.path)?))
    }

    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled> {
        self.commit_marked(steps, None)
    }
}

/// A reader of the tables in the database file at `path`.
fn open_records(path: &Path) -> anyhow::Result<SqliteRecords> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} to read", path.display()))?;
    Ok(SqliteRecords {
        conn: Mutex::new(conn),
    })
}

/// How far the tables hold the commit log (see [`logged`]): every step of
/// earlier generations, and of `generation` up to `applied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogMark {
    /// The hub's start whose log the tables last took steps from.
    pub generation: u64,
    /// Its last step in them.
    pub applied: u64,
}

impl SqliteBackend {
    /// How far the tables hold the commit log.
    pub fn log_mark(&self) -> anyhow::Result<LogMark> {
        let read = |name: &str| -> anyhow::Result<u64> {
            let value: Option<i64> = self
                .conn
                .query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
                    row.get(0)
                })
                .optional()?;
            Ok(value.unwrap_or(0) as u64)
        };
        Ok(LogMark {
            generation: read("log-generation")?,
            applied: read("log-applied")?,
        })
    }

    /// [`Backend::commit`], also recording `mark` (when given) in the same
    /// transaction: the tables then hold the commit log up to it. Steps from
    /// the commit log are first tried folded into one run: an order placed,
    /// offered and picked up within it is one insert.
    pub fn commit_marked(
        &mut self,
        steps: &[Step],
        mark: Option<LogMark>,
    ) -> anyhow::Result<Settled> {
        let write_mark = |tx: &Connection| -> rusqlite::Result<()> {
            let Some(mark) = mark else { return Ok(()) };
            let mut upsert = tx.prepare_cached(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?;
            upsert.execute(params!["log-generation", mark.generation as i64])?;
            upsert.execute(params!["log-applied", mark.applied as i64])?;
            Ok(())
        };
        if mark.is_some() {
            let tx = self.conn.transaction()?;
            let applied = {
                let mut writes = Writes::prepare(&tx)?;
                writes.apply_run(steps)? && !writes.acknowledged_nothing
            };
            if applied {
                write_mark(&tx)?;
                tx.commit().context("committing to the data dir")?;
                return Ok(Settled::default());
            }
            // Dropping the transaction rolls it back; step by step below.
        }
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
                    if !writes.apply(step)? {
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
                write_mark(&tx)?;
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
            let applied = writes.apply(step)?;
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
        write_mark(&tx)?;
        tx.commit().context("committing to the data dir")?;
        Ok(Settled {
            refused,
            not_queued,
        })
    }
}

#[cfg(test)]
mod tests;
