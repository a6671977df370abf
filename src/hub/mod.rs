//! The CAPS hub: a Socket.IO server on axum that dispatches each package to
//! one driver and tells each store about its own packages.
//!
//! Layers, from the network in (`docs/ARCHITECTURE.md` has the picture and
//! names every file):
//! - `door`, in front of everything: the names and pages allowed, connections
//!   counted from the first byte, API rates; `guard`: Socket.IO's own limits;
//! - the edges: `handlers` (Socket.IO: admit a socket, type each event with
//!   `decode`) and `http` (the dashboard, the API, `/metrics`);
//! - `events`: one module per client event, with its permission rule and
//!   what applying it does, through the sequencer's `EventContext`;
//! - `sequencer`: the one task that applies every command in arrival order
//!   (its books: the desk, the mailbox, who is where), its outbox, which
//!   holds replies and messages until their commit, and `presence`, who is
//!   online, published for readers;
//! - [`desk`] (the pure desk) and `mailbox` (the Phase 3 queues), which
//!   describe every change as a [`domain::Change`];
//! - [`storage`]: the journal (the batched-commit writer) and the seam
//!   [`storage::journal::Backend`] with its read side
//!   [`storage::journal::Records`]; the engines behind it,
//!   [`storage::sqlite`] and [`storage::postgres`], which write changes down
//!   by the same rules ([`storage::rows`], [`storage::columns`]); and the
//!   reading room (`storage::readers`), the API's reads of committed state
//!   on low-priority threads beside the sequencer;
//! - [`group`], beside the sequencer for a hub of a group on PostgreSQL:
//!   ownership, take-overs, the bridge between hubs' sockets. It drives the
//!   sequencer; the sequencer knows it only as a `GroupLink`.
//!
//! All of them speak the vocabulary of [`domain`], which depends on none of them.
//!
//! ## Event flow
//!
//! One row per client event: where it enters, what the sequencer runs, the
//! desk (or mailbox) method it calls, what it yields, and who hears of it.
//! Every output waits in the outbox until the event's changes are committed.
//!
//! | event | enters at | applied by | calls | yields | who hears |
//! |---|---|---|---|---|---|
//! | `join` | `handlers::Inlet` | `events/join.rs` | `Books::join` | `Accept` | the sender (ack) |
//! | `pickup` | `handlers::Inlet`, `http::place_order` | `events/pickup.rs` | `Desk::pickup` | `Accept`, `Offer` | the sender; one driver (`pickup`); viewers |
//! | `in-transit` | `handlers::Inlet` | `events/in_transit.rs` | `Desk::in_transit` | `Accept`, `ToStore` | the sender; the store's room, once; viewers |
//! | `delivered` | `handlers::Inlet` | `events/delivered.rs` | `Desk::delivered`, `Mailbox::enqueue` | `Accept`, `ToStore`, `Offer` | the sender; the store's room (a queued notice); viewers |
//! | `getAll` | `handlers::Inlet` | `events/get_all.rs` | `Desk::held_by` | `Replay` (a store's queue is read by `sequencer/replay.rs` a page at a time, beside the sequencer) | the sender, again |
//! | `received` | `handlers::Inlet` | `events/received.rs` | `Mailbox::acknowledge` | `Accept` | the sender (ack) |
//!
//! [`Hub::serve`] takes its listener and its shutdown signal as arguments, so
//! tests run the real hub in-process on port 0 and stop it when they like;
//! [`Hub::start`] gives the routes without a listener, for tests that call
//! them directly.

mod decode;
pub mod desk;
pub mod domain;
mod door;
mod event_log;
mod events;
pub mod group;
mod guard;
mod handlers;
mod http;
mod mailbox;
mod metrics;
mod peer;
mod sequencer;
pub mod storage;

// Two pieces of how the hub runs its stack, exported for anyone who serves
// socketioxide on axum the same way (the bench's floor servers do): the
// request-head fix that keeps an idle connection's memory small, and the
// rule for how long a batched commit waits for company.
pub use door::detach_from_read_buffer;
pub use storage::journal::worth_waiting;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use tokio::net::TcpListener;

pub use desk::DeskConfig;
pub use event_log::EventLog;
pub use guard::Limits;
pub use peer::{Admission, Peer};

use self::domain::Snapshot;
use self::door::{CountingListener, Door, DoorConfig};
use self::group::{Group, GroupConfig};
use self::guard::Guard;
use self::metrics::Metrics;
use self::sequencer::{
    GroupLink, PresenceBoard, QueueSource, Reloader, Retention, SequencerHandle, SequencerSetup,
};
use self::storage::journal::{Backend, Journal, Pace, Records};
use self::storage::postgres::{Pg, PgBackend};
use self::storage::readers::Readers;
use self::storage::sqlite::logged::LoggedSqlite;
use self::storage::sqlite::{SqliteBackend, SyncMode};
use crate::protocol::{NAMESPACE, OrderState};

/// The longest a stopping hub waits for what it took to be committed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunables of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Who may connect as whom.
    pub admission: Admission,
    /// What one client may cost the hub.
    pub limits: Limits,
    /// How packages are handed out.
    pub dispatch: DeskConfig,
    /// Where the hub keeps its state.
    pub storage: Storage,
    /// Most delivery notices queued per store.
    pub queue_limit: usize,
    /// When a commit to the data dir counts as done.
    pub sync: SyncMode,
    /// Delivered orders older than this are compacted (history and personal
    /// data removed, a digest kept); `None` keeps everything.
    pub retain: Option<Duration>,
    /// How often compaction looks for orders past `retain`.
    pub compact_every: Duration,
    /// Under load, how long a commit waits for more changes to carry.
    pub commit_delay: Duration,
    /// Whether a data dir's commits go to its commit log first, and its
    /// tables after (see [`storage::sqlite::logged`]); else each commit is a
    /// transaction on the tables.
    pub commit_log: bool,
    /// How long the tables' writer gathers logged commits (see
    /// [`storage::sqlite::logged`]).
    pub tables_gather: Duration,
    /// How long a replay (`getAll`) may take.
    pub replay_deadline: Duration,
}

/// Where a hub keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory only: a restart forgets everything.
    Ephemeral,
    /// An SQLite database in this directory.
    DataDir(PathBuf),
    /// A PostgreSQL database shared by a group of hubs.
    Database {
        /// Its URL (`postgres://user:password@host:port/name`).
        url: String,
        /// This hub's id in the group: stable across its restarts.
        hub_id: String,
        /// Timing of the group's chores.
        group: GroupConfig,
    },
}

impl HubConfig {
    /// The default commit delay: at 2,000 orders a second it halves the
    /// hub's CPU per order and adds about 1.3 ms to the median latency;
    /// below some hundreds of commits a second it is never taken.
    pub const COMMIT_DELAY: Duration = Duration::from_micros(500);
    /// With the commit log, the longest a step waits for the sequencer's
    /// turn to end before its commit (see [`Pace::TurnEnd`]).
    pub const TURN_WAIT: Duration = Duration::from_millis(1);

    /// A hub that keeps everything in memory (demos, tests).
    pub fn ephemeral() -> Self {
        HubConfig {
            admission: Admission::Open,
            limits: Limits::default(),
            dispatch: DeskConfig::default(),
            storage: Storage::Ephemeral,
            queue_limit: 10_000,
            sync: SyncMode::Full,
            retain: None,
            compact_every: Duration::from_secs(60),
            commit_delay: Self::COMMIT_DELAY,
            commit_log: true,
            tables_gather: storage::sqlite::logged::GATHER,
            replay_deadline: sequencer::DEFAULT_REPLAY_DEADLINE,
        }
    }

    /// A durable hub keeping its state in `dir`.
    pub fn durable(dir: impl Into<PathBuf>) -> Self {
        let mut config = HubConfig {
            storage: Storage::DataDir(dir.into()),
            ..HubConfig::ephemeral()
        };
        config.dispatch.keep_delivered = DeskConfig::DURABLE_CACHE;
        config
    }
}

/// The data dir used when none is given: `$XDG_DATA_HOME/caps`, else
/// `~/.local/share/caps`, else `./caps-data`.
pub fn default_data_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty());
    if let Some(dir) = xdg {
        return PathBuf::from(dir).join("caps");
    }
    match std::env::var_os("HOME").filter(|dir| !dir.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/caps"),
        None => PathBuf::from("caps-data"),
    }
}

/// A hub with its state loaded, ready to serve.
pub struct Hub {
    config: HubConfig,
    snapshot: Snapshot,
    journal: Option<(
        Journal,
        tokio::sync::mpsc::UnboundedReceiver<storage::journal::Committed>,
    )>,
    /// Readers of committed orders, when the hub has a data dir.
    records: Option<RecordReaders>,
    /// The group's database, when the hub is one of a group.
    group: Option<(Pg, GroupConfig)>,
}

/// Readers of committed orders: one for the sequencer, and one for each
/// thread that answers the API's reads.
struct RecordReaders {
    sequencer: Box<dyn Records>,
    mailbox: Box<dyn Records>,
    api: Vec<Box<dyn Records>>,
    /// For replays (`getAll`), at the hub's own priority.
    replays: Box<dyn Records>,
    /// For orders read back after a refused commit, at the hub's priority.
    reloads: Box<dyn Records>,
}

impl Hub {
    /// Opens the hub's storage and reads its state back. A data dir that is
    /// in use, unreadable, corrupt or from a newer caps is refused here.
    pub fn open(config: HubConfig) -> anyhow::Result<Hub> {
        match &config.storage {
            Storage::Ephemeral => Ok(Hub {
                config,
                snapshot: Snapshot::default(),
                journal: None,
                records: None,
                group: None,
            }),
            Storage::DataDir(dir) => {
                let mut tables = SqliteBackend::open(dir, config.sync)?;
                let backend: Box<dyn Backend> = if config.commit_log {
                    Box::new(LoggedSqlite::open(
                        dir,
                        tables,
                        config.sync,
                        config.tables_gather,
                    )?)
                } else {
                    // A log left by a run with it holds what was acknowledged.
                    storage::sqlite::logged::replay(dir, &mut tables)?;
                    Box::new(tables)
                };
                let described = format!("data dir {}", dir.display());
                Hub::with_backend(config, backend, &described)
            }
            Storage::Database { url, hub_id, group } => {
                let group = *group;
                let pg = Pg::connect(url, hub_id, group.beat_every)?;
                let backend = PgBackend::new(pg.clone());
                let mut hub = Hub::with_backend(config, Box::new(backend), "database")?;
                hub.group = Some((pg, group));
                Ok(hub)
            }
        }
    }

    /// A durable hub on `backend` (`described` names it in messages), with
    /// its state read back from it.
    pub fn with_backend(
        config: HubConfig,
        mut backend: Box<dyn Backend>,
        described: &str,
    ) -> anyhow::Result<Hub> {
        let snapshot = backend
            .load()
            .with_context(|| format!("reading the {described}"))?;
        let api_records = (0..storage::readers::THREADS)
            .map(|_| backend.records())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let records = RecordReaders {
            sequencer: backend.sequencer_records()?,
            mailbox: backend.sequencer_records()?,
            api: api_records,
            replays: backend.records()?,
            reloads: backend.records()?,
        };
        log::info!(
            "{described}: {} open orders, {} delivered, {} queued notices",
            snapshot.orders.iter().filter(|o| o.state.is_open()).count(),
            snapshot.closed.get(OrderState::Delivered),
            snapshot
                .queue_counts
                .iter()
                .map(|(_, queued)| queued)
                .sum::<u64>()
        );
        let pace = match (&config.storage, config.commit_log) {
            // A commit is a sync of a small file: commit each turn's steps.
            (Storage::DataDir(_), true) => Pace::TurnEnd {
                most: config.commit_delay,
            },
            _ => Pace::Delay(config.commit_delay),
        };
        let journal = Journal::start(backend, pace);
        Ok(Hub {
            config,
            snapshot,
            journal: Some(journal),
            records: Some(records),
            group: None,
        })
    }

    /// Starts the hub's sequencer and builds its routes (HTTP and
    /// Socket.IO), without listening anywhere yet.
    pub fn start(self, log: EventLog) -> anyhow::Result<RunningHub> {
        let Hub {
            config,
            snapshot,
            journal,
            records,
            group,
        } = self;
        let (sequencer_records, mailbox_records, api_records, replay_records, reload_records) =
            match records {
                Some(records) => (
                    Some(records.sequencer),
                    Some(records.mailbox),
                    Some(records.api),
                    Some(records.replays),
                    Some(records.reloads),
                ),
                None => (None, None, None, None, None),
            };
        let metrics = Arc::new(Metrics::labelled(
            log.dropped_lines(),
            group.as_ref().map(|(pg, _)| pg.hub_id()),
        ));
        let (sequencer, inbox) = self::sequencer::channel(Arc::clone(&metrics));
        let group = group.map(|(pg, timing)| {
            let (link, published) = group::link(pg.hub_id(), Arc::clone(&metrics));
            let handle = Group::new(
                pg,
                sequencer.clone(),
                Arc::clone(&link),
                Arc::clone(&metrics),
            );
            (handle, timing, link, published)
        });
        let cors = cors_layer(&config.limits.cors_origins)?;
        let door = Door::new(
            DoorConfig {
                public_hosts: config.limits.public_hosts.clone(),
                origins: config.limits.cors_origins.clone(),
                // A client on long-polling holds two (a poll and a send).
                max_connections: config.limits.max_connections.saturating_mul(2),
                max_connections_per_address: config.limits.max_connections_per_address,
                requests_per_second: config.limits.requests_per_second,
            },
            Arc::clone(&metrics),
        );
        let max_message = config.limits.max_message_bytes;
        let max_event = config.limits.max_event_bytes;
        let guard = Guard::new(config.limits);
        let (layer, io) = SocketIo::builder()
            .max_payload(max_message)
            .ws_max_message_size(max_message as usize)
            .ws_max_frame_size(max_message as usize)
            // Most messages are a few hundred bytes: a small read buffer per
            // connection keeps thousands of idle drivers cheap.
            .ws_read_buffer_size(1024)
            // Offers to a slow driver queue here rather than fail.
            .max_buffer_size(1024)
            // socket.io's own heartbeat (25 s, 20 s): socketioxide pings
            // every new connection at once, and with 10 s every client
            // answered 2.5 times as many pings; a SIGKILLed client is seen
            // gone at once anyway (its TCP connection closes).
            .ping_interval(Duration::from_secs(25))
            .ping_timeout(Duration::from_secs(20))
            .with_state(HubState {
                sequencer: sequencer.clone(),
                admission: config.admission.clone(),
                guard: guard.clone(),
                metrics: Arc::clone(&metrics),
                group: group.as_ref().map(|(group, ..)| group.clone()),
            })
            .build_layer();
        io.ns(NAMESPACE, handlers::on_connect.with(handlers::admit));
        let (presence, presence_view) = PresenceBoard::new();
        let readers = api_records.map(Readers::start);
        let queues = match replay_records {
            Some(records) => {
                QueueSource::Records(Readers::start_urgent(vec![records], "caps-replayer"))
            }
            None => QueueSource::Memory(sequencer.downgrade()),
        };
        let setup = SequencerSetup {
            dispatch: config.dispatch,
            queue_limit: config.queue_limit,
            snapshot,
            journal,
            records: sequencer_records,
            mailbox_records,
            retention: config.retain.map(|keep| Retention {
                keep,
                every: config.compact_every,
            }),
            guard,
            metrics: Arc::clone(&metrics),
            presence,
            group: group
                .as_ref()
                .map(|(_, _, link, _)| Arc::clone(link) as Arc<dyn GroupLink>),
            queues,
            replay_deadline: config.replay_deadline,
            reloader: reload_records.map(|records| {
                let readers = Readers::start_urgent(vec![records], "caps-reloader");
                Reloader::new(readers, sequencer.downgrade())
            }),
        };
        let task = tokio::spawn(self::sequencer::run(inbox, io.clone(), log, setup));
        let (others, others_view) = match group {
            Some(_) => {
                let (sender, view) = tokio::sync::watch::channel(Default::default());
                (Some(sender), Some(view))
            }
            None => (None, None),
        };
        let chores = group
            .zip(others)
            .map(|((group, timing, _, published), others)| {
                let board = group::Board {
                    here: presence_view.clone(),
                    others,
                };
                group.start(timing, io.clone(), published, board)
            });
        let router = http::routes(http::HttpState {
            sequencer: sequencer.clone(),
            readers,
            presence: presence_view,
            others: others_view,
            metrics,
            admission: config.admission,
            door: door.clone(),
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_event))
        .layer(layer)
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            door.clone(),
            door::screen,
        ));
        Ok(RunningHub {
            router,
            door,
            io,
            sequencer,
            task,
            chores,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then drains (events
    /// taken are committed and answered; later ones are refused `busy`),
    /// closes every Socket.IO connection (clients see a server disconnect)
    /// and returns. Fails if the data dir cannot be written: the hub stops
    /// rather than confirm what it cannot record.
    pub async fn serve(
        self,
        listener: TcpListener,
        log: EventLog,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.start(log)?.serve(listener, shutdown).await
    }
}

/// A hub whose sequencer runs: its routes can be served, or called directly.
pub struct RunningHub {
    router: axum::Router,
    door: Door,
    io: SocketIo,
    sequencer: SequencerHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// A group hub's chores, which end only when the hub must stop.
    chores: Option<tokio::task::JoinHandle<anyhow::Error>>,
}

impl RunningHub {
    /// The hub's routes: the dashboard, the API, and Socket.IO.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Waits until the sequencer stops, which it does only on failure (the
    /// data dir cannot be written) or once every handle is gone.
    pub async fn stopped(self) -> anyhow::Result<()> {
        sequencer_outcome(self.task.await)
    }

    /// Serves on `listener` until `shutdown` completes or the sequencer fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let RunningHub {
            router,
            door,
            io,
            sequencer,
            mut task,
            chores,
        } = self;
        let listener = CountingListener::new(listener, door);
        let closer = io.clone();
        let service = router.into_make_service_with_connect_info::<door::Remote>();
        let server = axum::serve(listener, service).with_graceful_shutdown(async move {
            shutdown.await;
            // Everything taken is committed and answered before anyone is cut off.
            log::info!("shutting down: draining");
            if tokio::time::timeout(DRAIN_TIMEOUT, sequencer.drain())
                .await
                .is_err()
            {
                log::warn!("not drained within {DRAIN_TIMEOUT:?}; stopping anyway");
            }
            log::info!("shutting down: closing all connections");
            closer.close().await;
        });
        tokio::select! {
            served = server => {
                // Stopping the sequencer drops its journal, which waits for
                // the writer to commit what it holds and close the data dir.
                task.abort();
                let _ = task.await;
                served.context("serving")
            }
            stopped = &mut task => {
                io.close().await;
                sequencer_outcome(stopped)
            }
            failed = group_failure(chores) => {
                log::error!("{failed:#}");
                io.close().await;
                // Stopped before the runtime is torn down: a sequencer
                // still running then panics on its vanished timers.
                task.abort();
                let _ = task.await;
                Err(failed)
            }
        }
    }
}

/// State shared by every Socket.IO handler.
#[derive(Clone)]
pub(crate) struct HubState {
    sequencer: SequencerHandle,
    admission: Admission,
    guard: Guard,
    metrics: Arc<Metrics>,
    /// In a group of hubs: claims of a connecting driver's packages.
    group: Option<Group>,
}

/// Resolves when a group hub's chores end (it must stop); never for a
/// hub on its own.
async fn group_failure(chores: Option<tokio::task::JoinHandle<anyhow::Error>>) -> anyhow::Error {
    match chores {
        Some(chores) => chores
            .await
            .unwrap_or_else(|panic| anyhow::anyhow!("the group's chores failed: {panic}")),
        None => std::future::pending().await,
    }
}

fn sequencer_outcome(
    stopped: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match stopped {
        Ok(outcome) => outcome,
        Err(panic) => Err(anyhow::anyhow!("the hub's sequencer failed: {panic}")),
    }
}

/// Lets the listed origins' pages use the HTTP API and Socket.IO's
/// long-polling; with none listed, only the hub's own pages may.
fn cors_layer(origins: &[String]) -> anyhow::Result<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin)
                    .with_context(|| format!("bad --cors-origin {origin:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]))
}

/// Connections the kernel completes and holds for the hub before it
/// accepts them (clamped to `net.core.somaxconn`, 4,096 by default).
/// tokio's `TcpListener::bind` asks for 128: a burst of 500 clients
/// connecting at once overflowed it, and every SYN dropped was sent again
/// a second later (half of them waited 1.1 s).
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on the first of `host`'s addresses that can be bound, with
/// room for bursts of connections ([`LISTEN_BACKLOG`]).
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As tokio's bind does: a restarted hub gets its port back at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(address) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{host} has no address"),
        )
    }))
}

/// The URL clients use to reach a hub listening on `addr`.
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
