//! The shared database's schema: its numbered migrations, applied once by
//! whichever hub comes first (under an advisory lock).

use anyhow::{Context, bail};
use sqlx::PgPool;

/// Numbered schema migrations; `caps_schema.version` is the number applied.
/// Public for the tests that build a database as an older caps left it.
pub const MIGRATIONS: &[&str] = &[
    // 1: orders (with the hub that owns each open one), their history, the
    // stores' notice queues, deliveries counted per hub, and the hubs.
    "CREATE TABLE orders (
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        seq BIGINT NOT NULL UNIQUE,
        customer TEXT NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('ready', 'assigned', 'in-transit', 'delivered')),
        driver TEXT,
        told_in_transit BOOLEAN NOT NULL DEFAULT false,
        updated_at TIMESTAMPTZ NOT NULL,
        version BIGINT NOT NULL DEFAULT 1,
        digest TEXT,
        hub TEXT,
        hub_since TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (store, order_id)
    );
    CREATE INDEX orders_by_id ON orders (order_id);
    CREATE INDEX open_orders ON orders (seq) WHERE state <> 'delivered';
    CREATE INDEX open_orders_of_hub ON orders (hub, seq) WHERE state <> 'delivered';
    CREATE INDEX held_by_driver ON orders (driver) WHERE state IN ('assigned', 'in-transit');
    CREATE INDEX compactable ON orders (updated_at) WHERE state = 'delivered' AND digest IS NULL;
    CREATE TABLE transitions (
        id BIGSERIAL PRIMARY KEY,
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        state TEXT NOT NULL,
        driver TEXT,
        at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX transitions_by_order ON transitions (store, order_id);
    CREATE TABLE notices (
        id BIGSERIAL PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        store TEXT NOT NULL,
        order_id TEXT NOT NULL,
        queued_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX notices_by_store ON notices (store, id);
    CREATE INDEX notices_by_order ON notices (store, order_id);
    CREATE TABLE deliveries (hub TEXT PRIMARY KEY, delivered BIGINT NOT NULL);
    CREATE TABLE hubs (
        id TEXT PRIMARY KEY,
        slot INTEGER NOT NULL UNIQUE,
        started_at TIMESTAMPTZ NOT NULL,
        beat_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE hub_presence (hub TEXT PRIMARY KEY, presence TEXT NOT NULL);",
    // 2: one storage rule for every final state, the same as a data dir's:
    // `closed_at` is set when an order enters a final state, so "open" is
    // `closed_at IS NULL` and "held by a driver" is an open order with one,
    // whatever the states; which states exist is the code's table
    // (`src/lifecycle.rs`), not a CHECK. Final states are counted per hub
    // and state in `closed_counts` (was `deliveries`). A notice has a kind
    // (the event the store hears it as), so a store's queue can hold more
    // than deliveries.
    "ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_state_check;
    ALTER TABLE orders ADD COLUMN closed_at TIMESTAMPTZ;
    UPDATE orders SET closed_at = updated_at WHERE state = 'delivered';
    DROP INDEX open_orders;
    CREATE INDEX open_orders ON orders (seq) WHERE closed_at IS NULL;
    DROP INDEX open_orders_of_hub;
    CREATE INDEX open_orders_of_hub ON orders (hub, seq) WHERE closed_at IS NULL;
    DROP INDEX held_by_driver;
    CREATE INDEX held_by_driver ON orders (driver) WHERE closed_at IS NULL AND driver IS NOT NULL;
    DROP INDEX compactable;
    CREATE INDEX compactable ON orders (closed_at) WHERE closed_at IS NOT NULL AND digest IS NULL;
    CREATE TABLE closed_counts (
        hub TEXT NOT NULL,
        state TEXT NOT NULL,
        closed BIGINT NOT NULL,
        PRIMARY KEY (hub, state)
    );
    INSERT INTO closed_counts (hub, state, closed) SELECT hub, 'delivered', delivered FROM deliveries;
    DROP TABLE deliveries;
    ALTER TABLE notices ADD COLUMN kind TEXT NOT NULL DEFAULT 'delivered';",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Serialises schema migrations and slot choice between hubs starting at once.
pub(super) const SCHEMA_LOCK: i64 = 0x4341_5053_0001;

pub(super) async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS caps_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM caps_schema")
        .fetch_one(&mut *tx)
        .await?;
    let version = version.unwrap_or(0);
    if version > SCHEMA_VERSION {
        bail!(
            "refusing the database: it was written by a newer caps (schema version {version}; this build knows up to {SCHEMA_VERSION}); nothing was changed"
        );
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let number = index as i64 + 1;
        sqlx::raw_sql(*migration)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("applying schema migration {number}"))?;
        sqlx::query("DELETE FROM caps_schema")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO caps_schema (version) VALUES ($1)")
            .bind(number)
            .execute(&mut *tx)
            .await?;
        log::info!("database schema migrated to version {number}");
    }
    tx.commit().await?;
    Ok(())
}
