//! The group's SQL: who owns which open order (taking over silent hubs,
//! taking orders that wait elsewhere, claiming a moving driver's packages,
//! checking what others took) and the group's board of who is online where.
//! Every move of ownership is one conditional update that bumps the order's
//! version, so a hub's stale copy of a moved order is refused when it writes.

use std::time::Duration;

use sqlx::{Postgres, Transaction};

use crate::hub::domain::{DriverKey, OrderKey, StoredOrder};
use crate::hub::storage::columns::driver_column;
use crate::hub::storage::postgres::{Pg, column, read_orders};
use crate::protocol::{DriverName, OrderId, StoreId};

/// Takes over the open orders of every hub silent for `dead_after`; each
/// dead hub is taken over by exactly one hub. Returns the orders taken.
pub async fn take_over_dead_hubs(
    pg: &Pg,
    dead_after: Duration,
) -> anyhow::Result<Vec<(String, Vec<StoredOrder>)>> {
    let dead: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM hubs WHERE id <> $1 AND beat_at < now() - make_interval(secs => $2)",
    )
    .bind(pg.hub_id())
    .bind(dead_after.as_secs_f64())
    .fetch_all(pg.pool())
    .await?;
    let mut taken = Vec::new();
    for hub in dead {
        let mut tx = pg.pool().begin().await?;
        let gone = sqlx::query(
            "DELETE FROM hubs WHERE id = $1 AND beat_at < now() - make_interval(secs => $2)",
        )
        .bind(&hub)
        .bind(dead_after.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        if gone.rows_affected() == 0 {
            continue; // another hub was first, or it came back
        }
        sqlx::query("DELETE FROM hub_presence WHERE hub = $1")
            .bind(&hub)
            .execute(&mut *tx)
            .await?;
        let orders = take(
            pg,
            &mut tx,
            "UPDATE orders SET hub = $1, hub_since = now(), version = version + 1
                 WHERE hub = $2 AND closed_at IS NULL
                 RETURNING store, order_id",
            &hub,
        )
        .await?;
        tx.commit().await?;
        taken.push((hub, orders));
    }
    Ok(taken)
}

/// Takes up to `limit` orders that have waited `ready` at other hubs for
/// `waited` (their hubs have no driver free), oldest first.
pub async fn take_waiting(
    pg: &Pg,
    limit: usize,
    waited: Duration,
) -> anyhow::Result<Vec<StoredOrder>> {
    let mut tx = pg.pool().begin().await?;
    let keys: Vec<(String, String)> = sqlx::query_as(
        "WITH waiting AS (
            SELECT store, order_id FROM orders
            WHERE closed_at IS NULL AND driver IS NULL AND hub IS DISTINCT FROM $1
              AND updated_at < now() - make_interval(secs => $2)
              AND hub_since < now() - make_interval(secs => $2)
            ORDER BY seq LIMIT $3
            FOR UPDATE SKIP LOCKED)
         UPDATE orders o SET hub = $1, hub_since = now(), version = o.version + 1
         FROM waiting w WHERE o.store = w.store AND o.order_id = w.order_id
         RETURNING o.store, o.order_id",
    )
    .bind(pg.hub_id())
    .bind(waited.as_secs_f64())
    .bind(limit as i64)
    .fetch_all(&mut *tx)
    .await?;
    let orders = read_orders(&mut *tx, &keys, None).await?;
    tx.commit().await?;
    Ok(orders)
}

/// Takes the packages `driver` holds at other hubs: it has just
/// connected here.
pub async fn claim_driver(pg: &Pg, driver: &DriverName) -> anyhow::Result<Vec<StoredOrder>> {
    let _place = pg.claim_place().await?;
    let mut tx = pg.pool().begin().await?;
    let orders = take(
        pg,
        &mut tx,
        "UPDATE orders SET hub = $1, hub_since = now(), version = version + 1
             WHERE driver = $2 AND closed_at IS NULL
               AND hub IS DISTINCT FROM $1
             RETURNING store, order_id",
        &driver_column(&DriverKey::Named(driver.clone())),
    )
    .await?;
    tx.commit().await?;
    Ok(orders)
}

/// Runs an ownership update (`$1` this hub, `$2` the argument) and reads
/// back the orders it moved.
async fn take(
    pg: &Pg,
    tx: &mut Transaction<'static, Postgres>,
    update: &'static str,
    argument: &str,
) -> anyhow::Result<Vec<StoredOrder>> {
    let keys: Vec<(String, String)> = sqlx::query_as(update)
        .bind(pg.hub_id())
        .bind(argument)
        .fetch_all(&mut **tx)
        .await?;
    read_orders(&mut **tx, &keys, None).await
}

/// Those of `orders` this hub no longer owns (another hub took them).
pub async fn owned_elsewhere(pg: &Pg, orders: &[OrderKey]) -> anyhow::Result<Vec<OrderKey>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT k.s, k.o FROM unnest($1::TEXT[], $2::TEXT[]) AS k(s, o)
         JOIN orders ON orders.store = k.s AND orders.order_id = k.o
         WHERE orders.hub IS DISTINCT FROM $3",
    )
    .bind(column(orders, |key| key.store.to_string()))
    .bind(column(orders, |key| key.order_id.to_string()))
    .bind(pg.hub_id())
    .fetch_all(pg.pool())
    .await?;
    rows.into_iter()
        .map(|(store, order_id)| {
            Ok(OrderKey {
                store: StoreId::new(store).map_err(anyhow::Error::msg)?,
                order_id: OrderId::new(order_id).map_err(anyhow::Error::msg)?,
            })
        })
        .collect()
}

/// Records who is online at this hub (JSON), for the group's board.
pub async fn record_presence(pg: &Pg, presence: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO hub_presence (hub, presence) VALUES ($1, $2)
         ON CONFLICT (hub) DO UPDATE SET presence = excluded.presence",
    )
    .bind(pg.hub_id())
    .bind(presence)
    .execute(pg.pool())
    .await?;
    Ok(())
}

/// Who is online at the other live hubs (JSON, one per hub).
pub async fn others_presence(pg: &Pg, dead_after: Duration) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT p.presence FROM hub_presence p JOIN hubs h ON h.id = p.hub
         WHERE p.hub <> $1 AND h.beat_at >= now() - make_interval(secs => $2)",
    )
    .bind(pg.hub_id())
    .bind(dead_after.as_secs_f64())
    .fetch_all(pg.pool())
    .await?)
}
