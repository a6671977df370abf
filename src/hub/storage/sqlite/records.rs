//! Reading committed orders and notices back, on connections of their own
//! (WAL lets readers run beside the writer).

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::schema::parse_history;
use crate::api::OrderCounts;
use crate::hub::domain::{OrderKey, OrderQuery, OrderState, StoredNotice, StoredOrder};
use crate::hub::storage::columns::{OrderRow, notice_kind, order_from, parse_state};
use crate::hub::storage::journal::Records;
use crate::protocol::{MessageId, OrderId, StoreId};

/// The columns [`read_order`] reads, in its order.
pub(super) const ORDER_COLUMNS: &str = "store, order_id, seq, customer, address, state, driver, \
     told_in_transit, updated_at, version, digest";

/// How many orders entered the final state `state`, ever.
pub(super) fn closed_count(conn: &Connection, state: OrderState) -> rusqlite::Result<u64> {
    let count: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            [state.name()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(count.unwrap_or(0) as u64)
}

/// Committed orders, read on a connection of their own (WAL lets readers
/// run beside the writer).
pub(super) struct SqliteRecords {
    pub(super) conn: Mutex<Connection>,
}

impl SqliteRecords {
    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
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
        Ok(self.notice_ids(store, id)?.into_iter().next())
    }

    fn notice_ids(&self, store: &StoreId, id: &str) -> anyhow::Result<Vec<MessageId>> {
        let conn = self.conn();
        let mut select = conn.prepare_cached(
            "SELECT message_id FROM notices WHERE message_id = ?2 AND store = ?1
             UNION ALL
             SELECT message_id FROM notices WHERE store = ?1 AND order_id = ?2
             LIMIT 4",
        )?;
        let found = select
            .query_map(params![store.as_str(), id], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        found
            .into_iter()
            .map(|id| MessageId::new(id).map_err(anyhow::Error::msg))
            .collect()
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

pub(super) fn read_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<anyhow::Result<StoredOrder>> {
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
pub(super) fn read_order_with_history(
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
