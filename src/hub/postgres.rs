//! The shared store of a group of hubs: one PostgreSQL database.
//!
//! Every hub of a group points at the same database. An open order belongs
//! to one hub at a time (`orders.hub`): the hub whose desk dispatches it.
//! Every change a hub records is conditional on the order's version *and* on
//! the hub still owning it, so a hub that holds a stale copy (the order was
//! taken over while it was away, or handed to a driver elsewhere) can never
//! change it: its change is refused, and it reads the record back.
//! Ownership moves only by conditional updates that bump the version
//! ([`Pg::take_over_dead_hubs`], [`Pg::take_waiting`], [`Pg::claim_driver`]).
//!
//! Arrival numbers are unique across the group without a round trip per
//! order: each hub has a slot (0..[`SLOTS`]) and numbers its orders
//! `n * SLOTS + slot`.
//!
//! sqlx is asynchronous and the storage seam ([`Backend`], [`Records`]) is
//! not: every call runs on this module's own small runtime, and the caller
//! (the journal's writer thread, a reader thread, the sequencer) waits for
//! it, as it waits for SQLite.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::watch;

use super::columns::{
    OrderRow, closes, driver_column, driver_from_column, notice_kind, order_from, parse_state,
};
use super::domain::{
    Change, DriverKey, OrderKey, OrderQuery, OrderState, Snapshot, StoredNotice, StoredOrder,
    Transition, payload_digest,
};
use super::journal::{Backend, Records, Settled, Step};
use crate::api::OrderCounts;
use crate::protocol::{DriverName, MessageId, OrderId, StoreId};

/// Hubs in one group at most; also the step between a hub's arrival numbers.
pub const SLOTS: u64 = 256;

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
const SCHEMA_LOCK: i64 = 0x4341_5053_0001;

/// Connections of a hub's pool: the writer, the readers, the group's chores.
const POOL_SIZE: u32 = 6;

/// Drivers' claims under way at once: they come with connections (a
/// thousand drivers reconnecting after a restart), and must leave the
/// writer and a reader their connections.
const CLAIMS_AT_ONCE: usize = POOL_SIZE as usize - 2;

/// How long a statement waits for a connection before it fails (and the
/// caller refuses `busy`, or the writer tries again).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the writer keeps trying one batch while the database is away
/// before the hub gives up and stops (a supervisor restarts it).
const OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// The database's runtime. Dropped without waiting for its tasks: the last
/// handle may go on any thread, an async one included (where tokio refuses
/// to block on a runtime's shutdown).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("the runtime lives until dropped")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// One hub's way into the group's database; clone it freely.
#[derive(Clone)]
pub struct Pg {
    runtime: Arc<Runtime>,
    pool: PgPool,
    /// This hub's id and slot.
    hub: Arc<str>,
    slot: u64,
    url: Arc<str>,
    /// Whether the database answered lately: while it does not, reads fail
    /// at once (`busy` to the client) instead of each waiting out a timeout
    /// on the sequencer's thread. Set again by the group's heartbeat.
    reachable: Arc<AtomicBool>,
    /// What the heartbeat last found.
    liveness: watch::Receiver<Liveness>,
    /// Set when the hub leaves the group: the heartbeat stops beating.
    leaving: Arc<AtomicBool>,
    /// Places for drivers' claims (see [`CLAIMS_AT_ONCE`]).
    claims: Arc<tokio::sync::Semaphore>,
    /// Holds the advisory lock that keeps a second process off this hub id.
    _id_lock: Arc<tokio::sync::Mutex<PgConnection>>,
}

impl Pg {
    /// Connects to `url` as hub `hub_id`: migrates the schema (safely when
    /// several hubs start at once), refuses a hub id already running,
    /// registers the hub with its slot, and beats every `beat_every` from
    /// then on (a hub still reading its orders back is alive too).
    pub fn connect(url: &str, hub_id: &str, beat_every: Duration) -> anyhow::Result<Pg> {
        let runtime = Runtime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("caps-postgres")
                .enable_all()
                .build()
                .context("starting the database runtime")?,
        ));
        let options: PgConnectOptions = url
            .parse()
            .with_context(|| format!("bad --database URL {}", redact(url)))?;
        let hub: Arc<str> = hub_id.into();
        let opened = {
            let hub = Arc::clone(&hub);
            let options = options.clone();
            wait_on(runtime.get(), async move {
                let pool = PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options.clone())
                    .await
                    .context("connecting to the database")?;
                migrate(&pool).await?;
                let mut id_lock = PgConnection::connect_with(&options).await?;
                let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                    .bind(format!("caps-hub:{hub}"))
                    .fetch_one(&mut id_lock)
                    .await?;
                if !free {
                    bail!(
                        "hub id {hub} is in use by another running hub; give each hub its own --hub-id"
                    );
                }
                let slot = register(&pool, &hub).await?;
                anyhow::Ok((pool, id_lock, slot))
            })
        };
        let (pool, id_lock, slot) = opened?;
        log::info!(
            "hub {hub} joined the group on {} (slot {slot})",
            redact(url)
        );
        let reachable = Arc::new(AtomicBool::new(true));
        let leaving = Arc::new(AtomicBool::new(false));
        let (alive, liveness) = watch::channel(Liveness::Alive {
            since: Instant::now(),
        });
        // The heartbeat has a connection of its own: on the shared pool, a
        // hub whose pool is saturated (3 s to acquire) would miss beats and
        // be taken over and stopped by the group while alive.
        let heart_pool = {
            let _entered = runtime.get().enter();
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options)
        };
        runtime.get().spawn(heartbeat(
            Heart {
                pool: heart_pool,
                hub: Arc::clone(&hub),
                reachable: Arc::clone(&reachable),
                leaving: Arc::clone(&leaving),
            },
            beat_every,
            alive,
        ));
        Ok(Pg {
            runtime: Arc::new(runtime),
            pool,
            hub,
            slot,
            url: url.into(),
            reachable,
            liveness,
            leaving,
            claims: Arc::new(tokio::sync::Semaphore::new(CLAIMS_AT_ONCE)),
            _id_lock: Arc::new(tokio::sync::Mutex::new(id_lock)),
        })
    }

    /// This hub's id.
    pub fn hub_id(&self) -> &str {
        &self.hub
    }

    /// The database URL (for a listener of its own).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool (for the group's chores, which run on [`Self::spawn`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `task` on the database runtime.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.get().spawn(task)
    }

    /// Runs `work` on the database runtime and waits for it, from any thread.
    fn wait<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        wait_on(self.runtime.get(), work)
    }

    /// Resolves once the group has taken this hub's orders over: it owns
    /// nothing any more and must stop.
    pub async fn taken_over(&self) {
        let mut liveness = self.liveness.clone();
        if liveness
            .wait_for(|now| *now == Liveness::TakenOver)
            .await
            .is_err()
        {
            // The heartbeat ended without that: the hub is leaving.
            std::future::pending::<()>().await;
        }
    }

    /// How long the database has answered every heartbeat without a break;
    /// `None` while it does not.
    pub fn reachable_for(&self) -> Option<Duration> {
        match *self.liveness.borrow() {
            Liveness::Alive { since } => Some(since.elapsed()),
            Liveness::Unreachable | Liveness::TakenOver => None,
        }
    }

    /// Whether the database answered the last heartbeat (or statement).
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Notes that a statement failed; a fault of the connection marks the
    /// database unreachable until the next heartbeat gets through.
    fn failed(&self, error: &sqlx::Error) {
        if !matches!(error, sqlx::Error::Database(_) | sqlx::Error::RowNotFound) {
            self.reachable.store(false, Ordering::Relaxed);
        }
    }

    /// Takes over the open orders of every hub silent for `dead_after`; each
    /// dead hub is taken over by exactly one hub. Returns the orders taken.
    pub async fn take_over_dead_hubs(
        &self,
        dead_after: Duration,
    ) -> anyhow::Result<Vec<(String, Vec<StoredOrder>)>> {
        let dead: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM hubs WHERE id <> $1 AND beat_at < now() - make_interval(secs => $2)",
        )
        .bind(&*self.hub)
        .bind(dead_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Vec::new();
        for hub in dead {
            let mut tx = self.pool.begin().await?;
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
            let orders = self
                .take(
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
        &self,
        limit: usize,
        waited: Duration,
    ) -> anyhow::Result<Vec<StoredOrder>> {
        let mut tx = self.pool.begin().await?;
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
        .bind(&*self.hub)
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
    pub async fn claim_driver(&self, driver: &DriverName) -> anyhow::Result<Vec<StoredOrder>> {
        let _place = self.claims.acquire().await?;
        let mut tx = self.pool.begin().await?;
        let orders = self
            .take(
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
        &self,
        tx: &mut Transaction<'static, Postgres>,
        update: &'static str,
        argument: &str,
    ) -> anyhow::Result<Vec<StoredOrder>> {
        let keys: Vec<(String, String)> = sqlx::query_as(update)
            .bind(&*self.hub)
            .bind(argument)
            .fetch_all(&mut **tx)
            .await?;
        read_orders(&mut **tx, &keys, None).await
    }

    /// Those of `orders` this hub no longer owns (another hub took them).
    pub async fn owned_elsewhere(&self, orders: &[OrderKey]) -> anyhow::Result<Vec<OrderKey>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT k.s, k.o FROM unnest($1::TEXT[], $2::TEXT[]) AS k(s, o)
             JOIN orders ON orders.store = k.s AND orders.order_id = k.o
             WHERE orders.hub IS DISTINCT FROM $3",
        )
        .bind(column(orders, |key| key.store.to_string()))
        .bind(column(orders, |key| key.order_id.to_string()))
        .bind(&*self.hub)
        .fetch_all(&self.pool)
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
    pub async fn record_presence(&self, presence: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO hub_presence (hub, presence) VALUES ($1, $2)
             ON CONFLICT (hub) DO UPDATE SET presence = excluded.presence",
        )
        .bind(&*self.hub)
        .bind(presence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who is online at the other live hubs (JSON, one per hub).
    pub async fn others_presence(&self, dead_after: Duration) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT p.presence FROM hub_presence p JOIN hubs h ON h.id = p.hub
             WHERE p.hub <> $1 AND h.beat_at >= now() - make_interval(secs => $2)",
        )
        .bind(&*self.hub)
        .bind(dead_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Delivery notices queued since `since` for `store`, oldest first: at
    /// most `limit` of them, after place `after` (from the start with `None`).
    pub async fn notices_since(
        &self,
        store: &StoreId,
        since: DateTime<Utc>,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredNotice>> {
        let page = Page { after, limit };
        notices_of(&self.pool, store, Some(since), page).await
    }
}

/// Runs `work` on `runtime` and waits for it: from a plain thread, or from a
/// worker of the hub's own runtime (which then lets its other tasks move to
/// another worker while this one waits).
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    let (done, outcome) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = done.send(work.await);
    });
    let receive = move || outcome.recv().expect("the database runtime stopped");
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(receive)
        }
        _ => receive(),
    }
}

/// The database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
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

/// What a hub's heartbeat last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// The database has answered every beat since `since`.
    Alive { since: Instant },
    /// The database did not answer the last beat.
    Unreachable,
    /// The group took this hub's orders over.
    TakenOver,
}

/// What the heartbeat needs of a [`Pg`]: not the handle itself, which
/// would keep the database runtime it runs on alive for ever.
struct Heart {
    pool: PgPool,
    hub: Arc<str>,
    reachable: Arc<AtomicBool>,
    leaving: Arc<AtomicBool>,
}

/// Records every `beat_every` that the hub is alive, until it leaves the
/// group or finds it was taken over; `alive` says what it last found.
///
/// The heartbeat runs on its own, from registration on: nothing a busy hub
/// does (reading its orders back, waiting on its sequencer) may hold it up
/// and make the group take a live hub for dead.
async fn heartbeat(heart: Heart, beat_every: Duration, alive: watch::Sender<Liveness>) {
    let mut ticker = tokio::time::interval(beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        ticker.tick().await;
        if heart.leaving.load(Ordering::Relaxed) {
            return;
        }
        // Never over a hub that left ('epoch'): its orders are being taken.
        let beat = sqlx::query(
            "UPDATE hubs SET beat_at = clock_timestamp() WHERE id = $1 AND beat_at > 'epoch'",
        )
        .bind(&*heart.hub)
        .execute(&heart.pool)
        .await;
        heart.reachable.store(beat.is_ok(), Ordering::Relaxed);
        match beat {
            Ok(done) if done.rows_affected() == 1 => {
                if let Some(since) = unreachable_since.take() {
                    log::info!(
                        "the database is reachable again (after {:?})",
                        since.elapsed()
                    );
                    alive.send_replace(Liveness::Alive {
                        since: Instant::now(),
                    });
                }
            }
            Ok(_) if heart.leaving.load(Ordering::Relaxed) => return,
            Ok(_) => {
                alive.send_replace(Liveness::TakenOver);
                return;
            }
            Err(error) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                log::warn!(
                    "cannot reach the database for {:?}: {error:#}",
                    since.elapsed()
                );
                alive.send_replace(Liveness::Unreachable);
            }
        }
    }
}

/// Registers hub `hub` (again, if it restarts) and returns its slot.
async fn register(pool: &PgPool, hub: &str) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    let slot: Option<i32> = sqlx::query_scalar(
        "INSERT INTO hubs (id, slot, started_at, beat_at)
         SELECT $1, min(s), clock_timestamp(), clock_timestamp()
         FROM generate_series(0, $2 - 1) s
         WHERE s NOT IN (SELECT slot FROM hubs)
         ON CONFLICT (id) DO UPDATE SET started_at = clock_timestamp(),
                                        beat_at = clock_timestamp()
         RETURNING slot",
    )
    .bind(hub)
    .bind(SLOTS as i32)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    match slot {
        Some(slot) => Ok(slot as u64),
        None => bail!("the group has {SLOTS} hubs already"),
    }
}

/// The columns [`read_order`] reads, in its order.
const ORDER_COLUMNS: &str = "store, order_id, seq, customer, address, state, driver, \
     told_in_transit, (extract(epoch FROM updated_at) * 1000000)::BIGINT, version, digest";
/// How many columns [`ORDER_COLUMNS`] names.
const ORDER_COLUMN_COUNT: usize = 11;

fn read_order(row: &PgRow) -> anyhow::Result<StoredOrder> {
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
const HISTORY_COLUMNS: &str = "h.states, h.drivers, h.ats";
/// The lateral join that gives [`HISTORY_COLUMNS`] for the orders `o`.
const HISTORY_JOIN: &str = "LEFT JOIN LATERAL (
         SELECT array_agg(t.state ORDER BY t.id) AS states,
                array_agg(t.driver ORDER BY t.id) AS drivers,
                array_agg((extract(epoch FROM t.at) * 1000000)::BIGINT ORDER BY t.id) AS ats
         FROM transitions t WHERE t.store = o.store AND t.order_id = o.order_id) h ON TRUE";

/// [`read_order`] with the history of [`HISTORY_COLUMNS`] after the order's
/// columns.
fn read_whole_order(row: &PgRow) -> anyhow::Result<StoredOrder> {
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
async fn read_orders<'c>(
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
fn key_columns(key: &OrderKey) -> (String, String) {
    (key.store.to_string(), key.order_id.to_string())
}

/// A page of a store's queue: the notices after place `after` (from the
/// start with `None`), at most `limit`.
#[derive(Debug, Clone, Copy)]
struct Page {
    after: Option<u64>,
    limit: usize,
}

async fn notices_of(
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

/// The journal's backend on the group's database.
pub struct PgBackend {
    pg: Pg,
}

impl PgBackend {
    /// The backend of hub `pg`.
    pub fn new(pg: Pg) -> Self {
        PgBackend { pg }
    }
}

/// Whether a failed commit may be tried again: the database was away or
/// faulted, rather than refusing the statements. Trying a batch again is
/// safe: its changes are conditional, so one that did commit before the
/// answer was lost is refused the second time, not doubled.
fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            // Integrity (23) and syntax or access (42) errors will not pass
            // by waiting.
            !error
                .code()
                .is_some_and(|code| code.starts_with("23") || code.starts_with("42"))
        }
        _ => true,
    }
}

impl Backend for PgBackend {
    fn load(&mut self) -> anyhow::Result<Snapshot> {
        let pg = self.pg.clone();
        self.pg.wait(async move {
            let pool = &pg.pool;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS}, {HISTORY_COLUMNS} FROM orders o {HISTORY_JOIN}
                 WHERE o.hub = $1 AND o.closed_at IS NULL ORDER BY o.seq"
            )))
            .bind(&*pg.hub)
            .fetch_all(pool)
            .await?;
            let orders = rows
                .iter()
                .map(read_whole_order)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let delivered_total = closed_count(pool, OrderState::Delivered).await?;
            let highest: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM orders")
                .fetch_one(pool)
                .await?;
            let round = highest.map_or(0, |seq| seq as u64 / SLOTS + 1);
            let queue_counts: Vec<(String, i64)> =
                sqlx::query_as("SELECT store, count(*) FROM notices GROUP BY store ORDER BY store")
                    .fetch_all(pool)
                    .await?;
            Ok(Snapshot {
                orders,
                delivered_total: delivered_total as u64,
                next_seq: round * SLOTS + pg.slot,
                seq_stride: SLOTS,
                queue_counts: queue_counts
                    .into_iter()
                    .map(|(store, count)| {
                        Ok((
                            StoreId::new(store).map_err(anyhow::Error::msg)?,
                            count as u64,
                        ))
                    })
                    .collect::<anyhow::Result<_>>()?,
            })
        })
    }

    fn records(&self) -> anyhow::Result<Box<dyn Records>> {
        Ok(Box::new(PgRecords {
            pg: self.pg.clone(),
        }))
    }

    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled> {
        let began = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let pg = self.pg.clone();
            let batch = steps.to_vec();
            match self.pg.wait(async move { commit_batch(&pg, &batch).await }) {
                Ok(refused) => return Ok(refused),
                Err(error) if transient(&error) && began.elapsed() < OUTAGE_LIMIT => {
                    self.pg.failed(&error);
                    log::warn!("cannot commit to the database ({error}); trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error).context("committing to the database"));
                }
            }
        }
    }

    fn close(&mut self) -> anyhow::Result<()> {
        // Let the group take this hub's open orders over at once, rather
        // than after it is found silent; the heartbeat stops first, and a
        // beat already on its way finds the hub gone.
        self.pg.leaving.store(true, Ordering::Relaxed);
        let pg = self.pg.clone();
        self.pg.wait(async move {
            sqlx::query("UPDATE hubs SET beat_at = 'epoch' WHERE id = $1")
                .bind(&*pg.hub)
                .execute(&pg.pool)
                .await
                .context("leaving the group")?;
            anyhow::Ok(())
        })
    }

    fn compact(&mut self, delivered_before: DateTime<Utc>, limit: usize) -> anyhow::Result<usize> {
        let pg = self.pg.clone();
        self.pg.wait(async move {
            let mut tx = pg.pool.begin().await?;
            let old: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT store, order_id, customer, address FROM orders
                 WHERE closed_at IS NOT NULL AND digest IS NULL AND closed_at < $1::TIMESTAMPTZ
                 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(delivered_before.to_rfc3339())
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
            for (store, order_id, customer, address) in &old {
                sqlx::query(
                    "UPDATE orders SET customer = '', address = '', digest = $3
                     WHERE store = $1 AND order_id = $2",
                )
                .bind(store)
                .bind(order_id)
                .bind(payload_digest(customer, address))
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM transitions WHERE store = $1 AND order_id = $2")
                    .bind(store)
                    .bind(order_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await.context("compacting the database")?;
            Ok(old.len())
        })
    }
}

/// Commits `steps` in one transaction: first all together; if a condition
/// fails, again with each step in a savepoint, leaving refused ones out.
async fn commit_batch(pg: &Pg, steps: &[Step]) -> Result<Settled, sqlx::Error> {
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

/// A batch's changes folded into a few set-based statements: each order's
/// transitions in the batch become one update from the version the first
/// was decided on to the last one's state (or one insert, for an order new
/// in the batch), and the history, notices and deliveries go in one
/// statement each. Round trips per batch instead of per change; the fast
/// path for a batch whose every condition holds (else each step is applied
/// alone, in its savepoint).
#[derive(Default)]
struct Batch {
    /// Orders new in the batch, as they stand at its end.
    inserts: Vec<FoldedOrder>,
    /// Orders changed in the batch that it did not create.
    updates: Vec<FoldedOrder>,
    /// Every state entered, in order: store, order, state, driver, at.
    history: Vec<(String, String, &'static str, Option<String>, String)>,
    /// Orders closed in the batch, by final state.
    closed: std::collections::BTreeMap<&'static str, i64>,
    /// Notices queued: message id, store, order, at, kind.
    queued: Vec<(String, String, String, String, &'static str)>,
    removed: Vec<String>,
    /// Notices acknowledged unchecked: the step, the store, the message's
    /// (or its order's) id.
    acknowledged: Vec<(u64, String, String)>,
    trimmed: Vec<(String, i64)>,
}

/// One order's state at the end of a batch.
struct FoldedOrder {
    key: OrderKey,
    /// For a new order: its payload and arrival number.
    new: Option<(String, String, i64)>,
    /// The version the batch's first change expects (an update's condition).
    from_version: i64,
    /// The version after the batch.
    to_version: i64,
    state: &'static str,
    driver: Option<String>,
    told_in_transit: bool,
    at: String,
    /// When it entered a final state, if it did.
    closed_at: Option<String>,
}

impl Batch {
    fn of(steps: &[Step]) -> Batch {
        let mut batch = Batch::default();
        let mut folded: std::collections::HashMap<OrderKey, (bool, usize)> = Default::default();
        let changes = steps
            .iter()
            .flat_map(|step| step.changes.iter().map(|change| (step.seq, change)));
        for (step, change) in changes {
            match change {
                Change::NewOrder { order, seq, at } => {
                    let key = OrderKey::of(order);
                    let at = at.to_rfc3339();
                    batch.history.push((
                        key.store.to_string(),
                        key.order_id.to_string(),
                        OrderState::Ready.name(),
                        None,
                        at.clone(),
                    ));
                    folded.insert(key.clone(), (true, batch.inserts.len()));
                    batch.inserts.push(FoldedOrder {
                        key,
                        new: Some((
                            order.customer.to_string(),
                            order.address.to_string(),
                            *seq as i64,
                        )),
                        from_version: 0,
                        to_version: 1,
                        state: OrderState::Ready.name(),
                        driver: None,
                        told_in_transit: false,
                        at,
                        closed_at: None,
                    });
                }
                Change::Transition {
                    key,
                    version,
                    state,
                    driver,
                    told_in_transit,
                    at,
                    ..
                } => {
                    let at = at.to_rfc3339();
                    let driver = driver.as_ref().map(driver_column);
                    batch.history.push((
                        key.store.to_string(),
                        key.order_id.to_string(),
                        state.name(),
                        driver.clone(),
                        at.clone(),
                    ));
                    if closes(*state) {
                        *batch.closed.entry(state.name()).or_default() += 1;
                    }
                    let entry = match folded.get(key) {
                        Some((true, index)) => &mut batch.inserts[*index],
                        Some((false, index)) => &mut batch.updates[*index],
                        None => {
                            folded.insert(key.clone(), (false, batch.updates.len()));
                            batch.updates.push(FoldedOrder {
                                key: key.clone(),
                                new: None,
                                from_version: *version as i64,
                                to_version: *version as i64,
                                state: state.name(),
                                driver: None,
                                told_in_transit: false,
                                at: at.clone(),
                                closed_at: None,
                            });
                            batch.updates.last_mut().expect("just pushed")
                        }
                    };
                    // A change decided on another version than the batch
                    // leaves: not the fast path's to judge.
                    if entry.to_version != *version as i64 {
                        entry.to_version = -1;
                    } else {
                        entry.to_version += 1;
                    }
                    entry.state = state.name();
                    entry.driver = driver;
                    entry.told_in_transit = *told_in_transit;
                    entry.closed_at = closes(*state).then(|| at.clone());
                    entry.at = at;
                }
                Change::NoticeQueued {
                    message_id,
                    kind,
                    order,
                    at,
                } => batch.queued.push((
                    message_id.to_string(),
                    order.store.to_string(),
                    order.order_id.to_string(),
                    at.to_rfc3339(),
                    kind.name(),
                )),
                Change::NoticeRemoved { message_id } => batch.removed.push(message_id.to_string()),
                Change::NoticeAcknowledged { store, id } => {
                    batch
                        .acknowledged
                        .push((step, store.to_string(), id.clone()))
                }
                Change::NoticesTrimmed { store, keep } => {
                    batch.trimmed.push((store.to_string(), *keep as i64))
                }
            }
        }
        // Every hub locks the rows of its batch in one order (by key), so
        // two hubs writing the same orders (a shop re-sending its open
        // orders to the hub it moved to, a take-over) wait for each other
        // instead of deadlocking, which costs a second and a retry.
        batch.inserts.sort_by(|a, b| a.key.cmp(&b.key));
        batch.updates.sort_by(|a, b| a.key.cmp(&b.key));
        batch
    }

    /// Applies the batch as hub `hub`; `None` if a condition failed, else
    /// the steps whose acknowledgement found no notice.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        hub: &str,
    ) -> Result<Option<Vec<u64>>, sqlx::Error> {
        if self
            .inserts
            .iter()
            .chain(&self.updates)
            .any(|order| order.to_version < 0)
        {
            return Ok(None);
        }
        if !self.inserts.is_empty() {
            let rows = &self.inserts;
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
            .bind(column(rows, |r| r.key.store.to_string()))
            .bind(column(rows, |r| r.key.order_id.to_string()))
            .bind(column(rows, |r| r.new.as_ref().map_or(0, |n| n.2)))
            .bind(column(rows, |r| {
                r.new.as_ref().map(|n| n.0.clone()).unwrap_or_default()
            }))
            .bind(column(rows, |r| {
                r.new.as_ref().map(|n| n.1.clone()).unwrap_or_default()
            }))
            .bind(column(rows, |r| r.state))
            .bind(column(rows, |r| r.driver.clone()))
            .bind(column(rows, |r| r.told_in_transit))
            .bind(column(rows, |r| r.at.clone()))
            .bind(column(rows, |r| r.to_version))
            .bind(hub)
            .bind(column(rows, |r| r.closed_at.clone()))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != rows.len() as u64 {
                return Ok(None);
            }
        }
        if !self.updates.is_empty() {
            let rows = &self.updates;
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
            .bind(column(rows, |r| r.key.store.to_string()))
            .bind(column(rows, |r| r.key.order_id.to_string()))
            .bind(column(rows, |r| r.state))
            .bind(column(rows, |r| r.driver.clone()))
            .bind(column(rows, |r| r.told_in_transit))
            .bind(column(rows, |r| r.at.clone()))
            .bind(column(rows, |r| r.from_version))
            .bind(column(rows, |r| r.to_version))
            .bind(hub)
            .bind(column(rows, |r| r.closed_at.clone()))
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != rows.len() as u64 {
                return Ok(None);
            }
        }
        if !self.history.is_empty() {
            let rows = &self.history;
            sqlx::query(
                "INSERT INTO transitions (store, order_id, state, driver, at)
                 SELECT s, o, st, d, at::TIMESTAMPTZ
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
                      WITH ORDINALITY AS h(s, o, st, d, at, n)
                 ORDER BY n",
            )
            .bind(column(rows, |r| r.0.clone()))
            .bind(column(rows, |r| r.1.clone()))
            .bind(column(rows, |r| r.2))
            .bind(column(rows, |r| r.3.clone()))
            .bind(column(rows, |r| r.4.clone()))
            .execute(&mut *tx)
            .await?;
        }
        for (state, closed) in &self.closed {
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
        if !self.queued.is_empty() {
            let rows = &self.queued;
            sqlx::query(
                "INSERT INTO notices (message_id, store, order_id, queued_at, kind)
                 SELECT m, s, o, at::TIMESTAMPTZ, k
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
                      WITH ORDINALITY AS q(m, s, o, at, k, n)
                 ORDER BY n
                 ON CONFLICT DO NOTHING",
            )
            .bind(column(rows, |r| r.0.clone()))
            .bind(column(rows, |r| r.1.clone()))
            .bind(column(rows, |r| r.2.clone()))
            .bind(column(rows, |r| r.3.clone()))
            .bind(column(rows, |r| r.4))
            .execute(&mut *tx)
            .await?;
        }
        for (store, keep) in &self.trimmed {
            sqlx::query(
                "DELETE FROM notices WHERE store = $1 AND id NOT IN (
                     SELECT id FROM notices WHERE store = $1 ORDER BY id DESC LIMIT $2)",
            )
            .bind(store)
            .bind(*keep)
            .execute(&mut *tx)
            .await?;
        }
        if !self.removed.is_empty() {
            sqlx::query("DELETE FROM notices WHERE message_id = ANY($1::TEXT[])")
                .bind(&self.removed)
                .execute(&mut *tx)
                .await?;
        }
        let mut not_queued = Vec::new();
        if !self.acknowledged.is_empty() {
            let rows = &self.acknowledged;
            // What each acknowledgement removed tells whether its notice
            // was queued, without a read before it.
            let removed: std::collections::HashSet<(String, String)> = sqlx::query_as(
                "DELETE FROM notices USING unnest($1::TEXT[], $2::TEXT[]) AS a(s, i)
                 WHERE notices.store = a.s AND (notices.message_id = a.i OR notices.order_id = a.i)
                 RETURNING a.s, a.i",
            )
            .bind(column(rows, |r| r.1.clone()))
            .bind(column(rows, |r| r.2.clone()))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            not_queued.extend(
                rows.iter()
                    .filter(|(_, store, id)| !removed.contains(&(store.clone(), id.clone())))
                    .map(|(step, ..)| *step),
            );
        }
        Ok(Some(not_queued))
    }
}

/// One column of `rows`, to bind as an array.
fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

/// Reads of the group's committed orders.
struct PgRecords {
    pg: Pg,
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
async fn order_of(pg: &Pg, key: &OrderKey, held: bool) -> anyhow::Result<Option<StoredOrder>> {
    let held_by = held.then_some(&*pg.hub);
    let mut orders = read_orders(&pg.pool, &[key_columns(key)], held_by).await?;
    Ok(orders.pop())
}

/// How many orders entered the final state `state`, at every hub, ever.
async fn closed_count(pool: &PgPool, state: OrderState) -> anyhow::Result<u64> {
    let closed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(closed), 0)::BIGINT FROM closed_counts WHERE state = $1",
    )
    .bind(state.name())
    .fetch_one(pool)
    .await?;
    Ok(closed as u64)
}
