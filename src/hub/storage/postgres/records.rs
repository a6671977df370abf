//! Reading committed orders and notices back from the shared database: an
//! order with its history in one query, pages, counts and queues.

use std::future::Future;

use anyhow::bail;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::Pg;
use super::batch::column;
use crate::api::OrderCounts;
use crate::hub::domain::{OrderKey, OrderQuery, OrderState, StoredNotice, StoredOrder, Transition};
use crate::hub::storage::columns::{
    OrderRow, driver_from_column, notice_kind, order_from, parse_state,
};
use crate::hub::storage::journal::Records;
use crate::protocol::{MessageId, OrderId, StoreId};

/// The columns [`read_order`] reads, in its order.
pub(super) const ORDER_COLUMNS: &str = "store, order_id, seq, customer, address, state, driver, \
     told_in_transit, (extract(epoch FROM updated_at) * 1000000)::BIGINT, version, digest";

/// How many columns [`ORDER_COLUMNS`] names.
pub(super) const ORDER_COLUMN_COUNT: usize = 11;

pub(super) fn read_order(row: &PgRow) -> anyhow::Result<StoredOrder> {
    let since: i64 = row.try_get(8)?;
    OrderRow {
        store: row.try_get(0)?,
        order_id: row.try_get(1)?,
        seq: row.try_get(2)?,
        customer: row.try_get(3)?,
        address: row.try_get(4)?,
        state: row.try_get(5)?,
        driver: row.try_get(6)?,
        told_in_transit: row.try_get(7)?,
        since: DateTime::from_timestamp_micros(since).unwrap_or_else(Utc::now),
        version: row.try_get(9)?,
        digest: row.try_get(10)?,
    }
    .into_stored()
}

/// An order's history as three arrays (states, drivers, times in µs), oldest
/// first, from [`HISTORY_JOIN`]: with it, one query reads orders whole
/// instead of one more query per order.
pub(super) const HISTORY_COLUMNS: &str = "h.states, h.drivers, h.ats";

/// The lateral join that gives [`HISTORY_COLUMNS`] for the orders `o`.
pub(super) const HISTORY_JOIN: &str = "LEFT JOIN LATERAL (
         SELECT array_agg(t.state ORDER BY t.id) AS states,
                array_agg(t.driver ORDER BY t.id) AS drivers,
                array_agg((extract(epoch FROM t.at) * 1000000)::BIGINT ORDER BY t.id) AS ats
         FROM transitions t WHERE t.store = o.store AND t.order_id = o.order_id) h ON TRUE";

/// [`read_order`] with the history of [`HISTORY_COLUMNS`] after the order's
/// columns.
pub(super) fn read_whole_order(row: &PgRow) -> anyhow::Result<StoredOrder> {
    let mut order = read_order(row)?;
    let first = ORDER_COLUMN_COUNT;
    let states: Option<Vec<String>> = row.try_get(first)?;
    let drivers: Option<Vec<Option<String>>> = row.try_get(first + 1)?;
    let times: Option<Vec<i64>> = row.try_get(first + 2)?;
    let steps = states
        .unwrap_or_default()
        .into_iter()
        .zip(drivers.unwrap_or_default())
        .zip(times.unwrap_or_default());
    order.history = steps
        .filter_map(|((state, driver), at)| {
            Some(Transition {
                state: parse_state(&state)?,
                driver: driver.as_deref().and_then(driver_from_column),
                at: DateTime::from_timestamp_micros(at).unwrap_or_else(Utc::now),
            })
        })
        .collect();
    Ok(order)
}

/// The orders `keys` (store, order id) with their histories, by arrival, in
/// one query; with `held_by`, only those closed or owned by that hub.
pub(in crate::hub) async fn read_orders<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    keys: &[(String, String)],
    held_by: Option<&str>,
) -> anyhow::Result<Vec<StoredOrder>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS}, {HISTORY_COLUMNS}
         FROM unnest($1::TEXT[], $2::TEXT[]) AS k(key_store, key_order)
         JOIN orders o ON o.store = k.key_store AND o.order_id = k.key_order
         {HISTORY_JOIN}
         WHERE $3::TEXT IS NULL OR o.closed_at IS NOT NULL OR o.hub = $3
         ORDER BY o.seq"
    )))
    .bind(column(keys, |(store, _)| store.clone()))
    .bind(column(keys, |(_, order_id)| order_id.clone()))
    .bind(held_by)
    .fetch_all(conn)
    .await?;
    rows.iter().map(read_whole_order).collect()
}

/// The columns of `key` as [`read_orders`] takes them.
pub(super) fn key_columns(key: &OrderKey) -> (String, String) {
    (key.store.to_string(), key.order_id.to_string())
}

/// A page of a store's queue: the notices after place `after` (from the
/// start with `None`), at most `limit`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Page {
    pub(super) after: Option<u64>,
    pub(super) limit: usize,
}

pub(super) async fn notices_of(
    pool: &PgPool,
    store: &StoreId,
    since: Option<DateTime<Utc>>,
    page: Page,
) -> anyhow::Result<Vec<StoredNotice>> {
    let rows = sqlx::query(
        "SELECT n.id, n.message_id, o.store, o.order_id, o.customer, o.address, n.kind
         FROM notices n JOIN orders o ON o.store = n.store AND o.order_id = n.order_id
         WHERE n.store = $1 AND ($2::TEXT IS NULL OR n.queued_at >= $2::TIMESTAMPTZ)
           AND n.id > $3
         ORDER BY n.id LIMIT $4",
    )
    .bind(store.as_str())
    .bind(since.map(|since| since.to_rfc3339()))
    .bind(page.after.map_or(0, |after| after as i64))
    .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredNotice {
                place: row.try_get::<i64, _>(0)? as u64,
                message_id: MessageId::new(row.try_get::<String, _>(1)?)
                    .map_err(anyhow::Error::msg)?,
                kind: notice_kind(&row.try_get::<String, _>(6)?)?,
                order: order_from(
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                )?,
            })
        })
        .collect()
}

/// Reads of the group's committed orders.
pub(super) struct PgRecords {
    pub(super) pg: Pg,
}

impl PgRecords {
    /// Runs `read` with the pool and waits for it.
    fn read<T: Send + 'static, F>(&self, read: impl FnOnce(Pg) -> F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        if !self.pg.is_reachable() {
            bail!("the database is unreachable");
        }
        let outcome = self.pg.wait(read(self.pg.clone()));
        if let Err(error) = &outcome
            && let Some(error) = error.downcast_ref::<sqlx::Error>()
        {
            self.pg.failed(error);
        }
        outcome
    }
}

impl Records for PgRecords {
    fn is_remote(&self) -> bool {
        true
    }

    fn order(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        let key = key.clone();
        self.read(|pg| async move { order_of(&pg, &key, false).await })
    }

    fn held(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        let key = key.clone();
        self.read(|pg| async move { order_of(&pg, &key, true).await })
    }

    fn held_all(&self, keys: &[OrderKey]) -> anyhow::Result<Vec<StoredOrder>> {
        let keys: Vec<_> = keys.iter().map(key_columns).collect();
        self.read(|pg| async move { read_orders(&pg.pool, &keys, Some(&pg.hub)).await })
    }

    fn stores_of(&self, order_id: &OrderId) -> anyhow::Result<Vec<StoreId>> {
        let order_id = order_id.clone();
        self.read(|pg| async move {
            let stores: Vec<String> =
                sqlx::query_scalar("SELECT store FROM orders WHERE order_id = $1 ORDER BY store")
                    .bind(order_id.as_str())
                    .fetch_all(&pg.pool)
                    .await?;
            stores
                .into_iter()
                .map(|store| StoreId::new(store).map_err(anyhow::Error::msg))
                .collect()
        })
    }

    fn page(&self, query: &OrderQuery) -> anyhow::Result<Vec<StoredOrder>> {
        let query = query.clone();
        self.read(|pg| async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders
                 WHERE seq > $1 AND ($2::TEXT IS NULL OR store = $2)
                   AND ($3::TEXT IS NULL OR state = $3)
                 ORDER BY seq LIMIT $4"
            )))
            .bind(query.after.map_or(-1, |after| after as i64))
            .bind(query.store.as_ref().map(StoreId::as_str))
            .bind(query.state.map(OrderState::name))
            .bind(query.limit as i64)
            .fetch_all(&pg.pool)
            .await?;
            rows.iter().map(read_order).collect()
        })
    }

    fn notices(
        &self,
        store: &StoreId,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredNotice>> {
        let store = store.clone();
        let page = Page { after, limit };
        self.read(move |pg| async move { notices_of(&pg.pool, &store, None, page).await })
    }

    fn notice_id(&self, store: &StoreId, id: &str) -> anyhow::Result<Option<MessageId>> {
        let (store, id) = (store.clone(), id.to_owned());
        self.read(|pg| async move {
            let found: Option<String> = sqlx::query_scalar(
                "(SELECT message_id FROM notices WHERE message_id = $2 AND store = $1)
                 UNION ALL
                 (SELECT message_id FROM notices WHERE store = $1 AND order_id = $2)
                 LIMIT 1",
            )
            .bind(store.as_str())
            .bind(&id)
            .fetch_optional(&pg.pool)
            .await?;
            found
                .map(|id| MessageId::new(id).map_err(anyhow::Error::msg))
                .transpose()
        })
    }

    fn open_orders(&self, limit: usize) -> anyhow::Result<Vec<StoredOrder>> {
        self.read(|pg| async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE closed_at IS NULL ORDER BY seq LIMIT $1"
            )))
            .bind(limit as i64)
            .fetch_all(&pg.pool)
            .await?;
            rows.iter().map(read_order).collect()
        })
    }

    fn counts(&self) -> anyhow::Result<OrderCounts> {
        self.read(|pg| async move {
            let open: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, count(*) FROM orders WHERE closed_at IS NULL GROUP BY state",
            )
            .fetch_all(&pg.pool)
            .await?;
            let mut counts = OrderCounts::default();
            for (state, count) in open {
                let count = count as u64;
                if let Some(state) = parse_state(&state).filter(|state| state.is_open()) {
                    counts.set(state, count);
                }
            }
            for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
                counts.set(state, closed_count(&pg.pool, state).await?);
            }
            Ok(counts)
        })
    }

    fn queues(&self) -> anyhow::Result<Vec<(StoreId, u64)>> {
        self.read(|pg| async move {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT store, count(*) FROM notices GROUP BY store ORDER BY store")
                    .fetch_all(&pg.pool)
                    .await?;
            rows.into_iter()
                .map(|(store, count)| {
                    Ok((
                        StoreId::new(store).map_err(anyhow::Error::msg)?,
                        count as u64,
                    ))
                })
                .collect()
        })
    }
}

/// One order with its history; with `held`, only if this hub may act on it
/// (it owns the order, or the order is closed and so nobody's).
pub(super) async fn order_of(
    pg: &Pg,
    key: &OrderKey,
    held: bool,
) -> anyhow::Result<Option<StoredOrder>> {
    let held_by = held.then_some(&*pg.hub);
    let mut orders = read_orders(&pg.pool, &[key_columns(key)], held_by).await?;
    Ok(orders.pop())
}

/// How many orders entered the final state `state`, at every hub, ever.
pub(super) async fn closed_count(pool: &PgPool, state: OrderState) -> anyhow::Result<u64> {
    let closed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(closed), 0)::BIGINT FROM closed_counts WHERE state = $1",
    )
    .bind(state.name())
    .fetch_one(pool)
    .await?;
    Ok(closed as u64)
}
