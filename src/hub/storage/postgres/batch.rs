//! Recording a batch of steps: the batch folded by [`RowChanges`] into a few
//! set-based statements, each condition checked; on a failed condition, each
//! step again alone, in its savepoint.

use sqlx::{Connection, PgConnection};

use super::Pg;
use crate::hub::domain::OrderKey;
use crate::hub::storage::journal::{Settled, Step};
use crate::hub::storage::rows::{HistoryEntry, RowChanges};

/// Commits `steps` in one transaction: first all together; if a condition
/// fails, again with each step in a savepoint, leaving refused ones out.
pub(super) async fn commit_batch(pg: &Pg, steps: &[Step]) -> Result<Settled, sqlx::Error> {
    {
        let mut tx = pg.pool.begin().await?;
        if let Some(not_queued) = Batch::of(steps).apply(&mut tx, &pg.hub).await? {
            tx.commit().await?;
            return Ok(Settled {
                refused: Vec::new(),
                not_queued,
            });
        }
        tx.rollback().await?;
    }
    let mut tx = pg.pool.begin().await?;
    let mut settled = Settled::default();
    for step in steps {
        let mut savepoint = tx.begin().await?;
        match Batch::of(std::slice::from_ref(step))
            .apply(&mut savepoint, &pg.hub)
            .await?
        {
            Some(not_queued) => {
                savepoint.commit().await?;
                settled.not_queued.extend(not_queued);
            }
            None => {
                savepoint.rollback().await?;
                settled.refused.push(step.seq);
            }
        }
    }
    tx.commit().await?;
    Ok(settled)
}

/// A batch's changes as a few set-based statements: the batch folded by
/// [`RowChanges`] (each order's transitions one update from the version the
/// first was decided on, or one insert for an order new in the batch), and
/// the history, notices and closings in one statement each. Round trips per
/// batch instead of per change; the fast path for a batch whose every
/// condition holds (else each step is applied alone, in its savepoint).
pub(super) struct Batch(RowChanges);

impl Batch {
    fn of(steps: &[Step]) -> Batch {
        Batch(RowChanges::of(steps.iter().flat_map(|step| {
            step.changes.iter().map(|change| (step.seq, change))
        })))
    }

    /// Applies the batch as hub `hub`; `None` if a condition failed, else
    /// the steps whose acknowledgement found no notice.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        hub: &str,
    ) -> Result<Option<Vec<u64>>, sqlx::Error> {
        let rows = &self.0;
        if rows.inconsistent {
            return Ok(None);
        }
        if !rows.inserts.is_empty() {
            let inserts = &rows.inserts;
            let inserted = sqlx::query(
                "INSERT INTO orders (store, order_id, seq, customer, address, state, driver,
                                     told_in_transit, updated_at, version, closed_at, hub)
                 SELECT s, o, q, c, a, st, d, t, at::TIMESTAMPTZ, v, ca::TIMESTAMPTZ, $11
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[],
                             $6::TEXT[], $7::TEXT[], $8::BOOLEAN[], $9::TEXT[], $10::BIGINT[],
                             $12::TEXT[])
                      AS n(s, o, q, c, a, st, d, t, at, v, ca)
                 -- Fenced by the hub's registration: a hub taken over (its
                 -- row deleted) records no new order under an id nobody
                 -- answers for. The key-share lock makes a take-over wait
                 -- for this insert, so it sees and takes the new orders.
                 WHERE EXISTS (SELECT 1 FROM hubs WHERE id = $11 FOR KEY SHARE)
                 ON CONFLICT DO NOTHING",
            )
            .bind(column(inserts, |r| r.key.store.to_string()))
            .bind(column(inserts, |r| r.key.order_id.to_string()))
            .bind(column(inserts, |r| r.seq))
            .bind(column(inserts, |r| {
                r.new.as_ref().map(|n| n.0.clone()).unwrap_or_default()
            }))
            .bind(column(inserts, |r| {
                r.new.as_ref().map(|n| n.1.clone()).unwrap_or_default()
            }))
            .bind(column(inserts, |r| r.state.name()))
            .bind(column(inserts, |r| r.driver.clone()))
            .bind(column(inserts, |r| r.told_in_transit))
            .bind(column(inserts, |r| r.at.clone()))
            .bind(column(inserts, |r| r.to_version))
            .bind(hub)
            .bind(column(inserts, |r| r.closed_at.clone()))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != inserts.len() as u64 {
                return Ok(None);
            }
        }
        if !rows.updates.is_empty() {
            let updates = &rows.updates;
            let updated = sqlx::query(
                "UPDATE orders SET state = u.st, driver = u.d, told_in_transit = u.t,
                        updated_at = u.at::TIMESTAMPTZ, version = u.tv,
                        closed_at = u.ca::TIMESTAMPTZ
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[],
                             $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $10::TEXT[])
                      AS u(s, o, st, d, t, at, fv, tv, ca)
                 WHERE orders.store = u.s AND orders.order_id = u.o
                   AND orders.version = u.fv AND orders.hub = $9",
            )
            .bind(column(updates, |r| r.key.store.to_string()))
            .bind(column(updates, |r| r.key.order_id.to_string()))
            .bind(column(updates, |r| r.state.name()))
            .bind(column(updates, |r| r.driver.clone()))
            .bind(column(updates, |r| r.told_in_transit))
            .bind(column(updates, |r| r.at.clone()))
            .bind(column(updates, |r| r.from_version))
            .bind(column(updates, |r| r.to_version))
            .bind(hub)
            .bind(column(updates, |r| r.closed_at.clone()))
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != updates.len() as u64 {
                return Ok(None);
            }
        }
        // Every state each order entered, its entries in order.
        let history: Vec<(&OrderKey, &HistoryEntry)> = rows
            .inserts
            .iter()
            .chain(&rows.updates)
            .flat_map(|order| order.entered.iter().map(move |entry| (&order.key, entry)))
            .collect();
        if !history.is_empty() {
            sqlx::query(
                "INSERT INTO transitions (store, order_id, state, driver, at)
                 SELECT s, o, st, d, at::TIMESTAMPTZ
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
                      WITH ORDINALITY AS h(s, o, st, d, at, n)
                 ORDER BY n",
            )
            .bind(column(&history, |(key, _)| key.store.to_string()))
            .bind(column(&history, |(key, _)| key.order_id.to_string()))
            .bind(column(&history, |(_, entry)| entry.state.name()))
            .bind(column(&history, |(_, entry)| entry.driver.clone()))
            .bind(column(&history, |(_, entry)| entry.at.clone()))
            .execute(&mut *tx)
            .await?;
        }
        for (state, closed) in &rows.closed {
            sqlx::query(
                "INSERT INTO closed_counts (hub, state, closed) VALUES ($1, $2, $3)
                 ON CONFLICT (hub, state) DO UPDATE
                 SET closed = closed_counts.closed + excluded.closed",
            )
            .bind(hub)
            .bind(state)
            .bind(closed)
            .execute(&mut *tx)
            .await?;
        }
        if !rows.queued.is_empty() {
            let queued = &rows.queued;
            sqlx::query(
                "INSERT INTO notices (message_id, store, order_id, queued_at, kind)
                 SELECT m, s, o, at::TIMESTAMPTZ, k
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
                      WITH ORDINALITY AS q(m, s, o, at, k, n)
                 ORDER BY n
                 ON CONFLICT DO NOTHING",
            )
            .bind(column(queued, |r| r.message_id.clone()))
            .bind(column(queued, |r| r.store.clone()))
            .bind(column(queued, |r| r.order_id.clone()))
            .bind(column(queued, |r| r.at.clone()))
            .bind(column(queued, |r| r.kind))
            .execute(&mut *tx)
            .await?;
        }
        for (store, keep) in &rows.trimmed {
            sqlx::query(
                "DELETE FROM notices WHERE store = $1 AND id NOT IN (
                     SELECT id FROM notices WHERE store = $1 ORDER BY id DESC LIMIT $2)",
            )
            .bind(store)
            .bind(*keep)
            .execute(&mut *tx)
            .await?;
        }
        if !rows.removed.is_empty() {
            sqlx::query("DELETE FROM notices WHERE message_id = ANY($1::TEXT[])")
                .bind(&rows.removed)
                .execute(&mut *tx)
                .await?;
        }
        let mut not_queued = Vec::new();
        if !rows.acknowledged.is_empty() {
            let acknowledged = &rows.acknowledged;
            // What each acknowledgement removed tells whether its notice
            // was queued, without a read before it.
            let removed: std::collections::HashSet<(String, String)> = sqlx::query_as(
                "DELETE FROM notices USING unnest($1::TEXT[], $2::TEXT[]) AS a(s, i)
                 WHERE notices.store = a.s AND (notices.message_id = a.i OR notices.order_id = a.i)
                 RETURNING a.s, a.i",
            )
            .bind(column(acknowledged, |r| r.store.clone()))
            .bind(column(acknowledged, |r| r.id.clone()))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            not_queued.extend(
                acknowledged
                    .iter()
                    .filter(|r| !removed.contains(&(r.store.clone(), r.id.clone())))
                    .map(|r| r.step),
            );
        }
        Ok(Some(not_queued))
    }
}

/// One column of `rows`, to bind as an array.
pub(in crate::hub) fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}
