//! The shared store of a group of hubs: one PostgreSQL database.
//!
//! Every hub of a group points at the same database. An open order belongs
//! to one hub at a time (`orders.hub`): the hub whose desk dispatches it.
//! Every change a hub records is conditional on the order's version *and* on
//! the hub still owning it, so a hub that holds a stale copy (the order was
//! taken over while it was away, or handed to a driver elsewhere) can never
//! change it: its change is refused, and it reads the record back.
//! Ownership moves only by conditional updates that bump the version
//! (`crate::hub::group`'s ownership SQL: a take-over, a wait elsewhere, a claim).
//!
//! Arrival numbers are unique across the group without a round trip per
//! order: each hub has a slot (0..[`SLOTS`]) and numbers its orders
//! `n * SLOTS + slot`.
//!
//! sqlx is asynchronous and the storage seam ([`Backend`], [`Records`]) is
//! not: every call runs on this module's own small runtime, and the caller
//! (the journal's writer thread, a reader thread, the sequencer) waits for
//! it, as it waits for SQLite.

mod batch;
mod records;
mod schema;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use super::journal::{Backend, Records, Settled, Step};
use crate::api::OrderCounts;
use crate::hub::domain::{OrderState, Snapshot, StoredNotice, payload_digest};
use crate::protocol::StoreId;
pub(in crate::hub) use batch::column;
use batch::commit_batch;
pub(in crate::hub) use records::read_orders;
use records::{
    HISTORY_COLUMNS, HISTORY_JOIN, ORDER_COLUMNS, Page, PgRecords, closed_count, notices_of,
    read_whole_order,
};
pub use schema::{MIGRATIONS, SCHEMA_VERSION};
use schema::{SCHEMA_LOCK, migrate};

/// Hubs in one group at most; also the step between a hub's arrival numbers.
pub const SLOTS: u64 = 256;

/// Connections of a hub's pool: the writer, the readers, the group's chores.
const POOL_SIZE: u32 = 6;

/// Drivers' claims under way at once: they come with connections (a
/// thousand drivers reconnecting after a restart), and must leave the
/// writer and a reader their connections.
const CLAIMS_AT_ONCE: usize = POOL_SIZE as usize - 2;

/// How long a statement waits for a connection before it fails (and the
/// caller refuses `busy`, or the writer tries again).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a starting hub keeps trying to reach its database (not yet
/// up, or too busy to open a connection in time) before it gives up.
const START_PATIENCE: Duration = Duration::from_secs(60);

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
        let open = || {
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
        // A hub started beside its database, or while it is too busy to open
        // a connection in time, waits for it rather than exit at once.
        let started = Instant::now();
        let (pool, id_lock, slot) = loop {
            match open() {
                Err(error) if unreachable(&error) && started.elapsed() < START_PATIENCE => {
                    log::warn!(
                        "the database {} is not answering yet ({error:#}); trying again",
                        redact(url)
                    );
                    std::thread::sleep(Duration::from_secs(1));
                }
                opened => break opened?,
            }
        };
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

    /// A place among the drivers' claims under way (a few at once),
    /// held while one runs.
    pub async fn claim_place(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
        self.claims.acquire().await
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
/// Whether `error` says the database could not be reached (down, starting,
/// out of connections, or too slow to hand one out), rather than that it
/// refused this hub (a bad password, no such database, an id in use).
fn unreachable(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => true,
        // Connection exceptions (08), too many connections (53), and "the
        // database system is starting up" (57P03).
        Some(sqlx::Error::Database(error)) => error.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code == "57P03"
        }),
        _ => false,
    }
}

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
            let mut closed = OrderCounts::default();
            for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
                closed.set(state, closed_count(pool, state).await?);
            }
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
                closed,
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
