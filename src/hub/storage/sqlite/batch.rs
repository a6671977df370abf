//! Recording a batch of steps: each step's changes, folded by
//! [`RowChanges`], as prepared statements on the writer's connection.

use rusqlite::{Connection, params};

use super::schema::history_entry;
use crate::hub::storage::journal::Step;
use crate::hub::storage::rows::{NoticeWrite, OrderRowChange, RowChanges};

/// The statements that record changes, prepared on one connection.
pub(super) struct Writes<'c> {
    /// A new order, as its first step leaves it (see [`Writes::apply`]).
    pub(super) new_order: rusqlite::CachedStatement<'c>,
    /// A step short of delivery: sets no indexed column, so no index moves.
    pub(super) advance: rusqlite::CachedStatement<'c>,
    /// A step into a final state: also sets `closed_at`.
    pub(super) close: rusqlite::CachedStatement<'c>,
    pub(super) queue: rusqlite::CachedStatement<'c>,
    pub(super) unqueue: rusqlite::CachedStatement<'c>,
    pub(super) acknowledge: rusqlite::CachedStatement<'c>,
    pub(super) trim: rusqlite::CachedStatement<'c>,
    pub(super) count_closed: rusqlite::CachedStatement<'c>,
    /// Set when an acknowledgement made without a look-up found no notice
    /// (the caller reports its step as `not_queued`).
    pub(super) acknowledged_nothing: bool,
}

impl<'c> Writes<'c> {
    pub(super) fn prepare(conn: &'c Connection) -> rusqlite::Result<Writes<'c>> {
        Ok(Writes {
            new_order: conn.prepare_cached(
                "INSERT INTO orders (store, order_id, seq, customer, address, state, driver,
                                     told_in_transit, updated_at, version, history, closed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT DO NOTHING",
            )?,
            // Found by arrival number, the rowid: the order's row, on one of
            // the recent pages, without a search of the key index, whose
            // pages are as random as the order ids. The key is checked too.
            advance: conn.prepare_cached(
                "UPDATE orders SET state = ?3, driver = ?4, told_in_transit = ?5, updated_at = ?6,
                        version = ?10, history = history || ',' || ?8
                 WHERE seq = ?9 AND store = ?1 AND order_id = ?2 AND version = ?7",
            )?,
            close: conn.prepare_cached(
                "UPDATE orders SET state = ?3, driver = ?4, told_in_transit = ?5, updated_at = ?6,
                        version = ?10, closed_at = ?6, history = history || ',' || ?8
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
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            )?,
            acknowledged_nothing: false,
        })
    }

    /// Applies one step's changes; `false` if a condition failed (the
    /// caller undoes the step). An error is a real failure of the data dir.
    pub(super) fn apply(&mut self, step: &Step) -> rusqlite::Result<bool> {
        self.apply_run(std::slice::from_ref(step))
    }

    /// Applies a run of steps as one, folded ([`RowChanges::of`]): an order
    /// the run creates and moves on is one insert of the row it leaves.
    /// `false` if a condition failed (the caller undoes the run).
    pub(super) fn apply_run(&mut self, steps: &[Step]) -> rusqlite::Result<bool> {
        let rows = RowChanges::of(
            steps
                .iter()
                .flat_map(|step| step.changes.iter().map(|change| (step.seq, change))),
        );
        if rows.inconsistent {
            log::warn!(
                "not recording steps {}..={} as one: they change an order from another version than they left it",
                steps.first().map_or(0, |step| step.seq),
                steps.last().map_or(0, |step| step.seq),
            );
            return Ok(false);
        }
        for order in &rows.inserts {
            let inserted = self.new_order.execute(params![
                order.key.store.as_str(),
                order.key.order_id.as_str(),
                order.seq,
                order.new.as_ref().map(|(customer, _)| customer.as_str()),
                order.new.as_ref().map(|(_, address)| address.as_str()),
                order.state.name(),
                order.driver,
                order.told_in_transit,
                order.at,
                order.to_version,
                history_of(order),
                order.closed_at,
            ])?;
            if inserted == 0 {
                log::warn!("not recording {}: already recorded", order.key);
                return Ok(false);
            }
        }
        for order in &rows.updates {
            // Only a step that closes the order sets `closed_at`: the others
            // move no index.
            let update = match order.closed_at {
                Some(_) => &mut self.close,
                None => &mut self.advance,
            };
            let updated = update.execute(params![
                order.key.store.as_str(),
                order.key.order_id.as_str(),
                order.state.name(),
                order.driver,
                order.told_in_transit,
                order.at,
                order.from_version,
                history_of(order),
                order.seq,
                order.to_version,
            ])?;
            if updated == 0 {
                log::warn!(
                    "not recording {} {}: it is no longer at version {}",
                    order.key,
                    order.state,
                    order.from_version
                );
                return Ok(false);
            }
        }
        for (state, closed) in &rows.closed {
            self.count_closed.execute(params![state, closed])?;
        }
        // One by one, in the order the step made them: a notice queued and
        // trimmed, or removed and queued, in one step comes out as it did.
        for write in &rows.notice_order {
            match *write {
                NoticeWrite::Queued(index) => {
                    let notice = &rows.queued[index];
                    self.queue.execute(params![
                        notice.message_id,
                        notice.store,
                        notice.order_id,
                        notice.at,
                        notice.kind,
                    ])?;
                }
                NoticeWrite::Removed(index) => {
                    self.unqueue.execute(params![rows.removed[index]])?;
                }
                NoticeWrite::Acknowledged(index) => {
                    let acknowledgement = &rows.acknowledged[index];
                    let removed = self
                        .acknowledge
                        .execute(params![acknowledgement.store, acknowledgement.id])?;
                    if removed == 0 {
                        self.acknowledged_nothing = true;
                    }
                }
                NoticeWrite::Trimmed(index) => {
                    let (store, keep) = &rows.trimmed[index];
                    self.trim.execute(params![store, keep])?;
                }
            }
        }
        Ok(true)
    }
}

/// The entries a step adds to an order's history column.
pub(super) fn history_of(order: &OrderRowChange) -> String {
    let entries: Vec<String> = order
        .entered
        .iter()
        .map(|entry| history_entry(entry.state, entry.driver.as_deref(), &entry.at))
        .collect();
    entries.join(",")
}
