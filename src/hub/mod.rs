//! The CAPS hub: a Socket.IO server on axum that dispatches each package to
//! one driver and tells each store about its own packages.
//!
//! [`serve`] takes its listener and its shutdown signal as arguments, so tests
//! run the real hub in-process on port 0 and stop it when they like.

mod core;
mod decode;
pub mod dispatch;
mod event_log;
mod guard;
mod handlers;
mod http;
pub mod journal;
mod mailbox;
mod metrics;
mod peer;
pub mod sqlite;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use std::sync::Arc;

use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use tokio::net::TcpListener;

pub use dispatch::DispatchConfig;
pub use event_log::EventLog;
pub use guard::Limits;
pub use peer::{Admission, Peer};

use self::core::{CoreHandle, CoreSetup};
use self::guard::Guard;
use self::journal::{Journal, Snapshot, Store};
use self::metrics::Metrics;
use self::sqlite::SqliteStore;
use crate::protocol::NAMESPACE;

/// Tunables of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Who may connect as whom.
    pub admission: Admission,
    /// What one client may cost the hub.
    pub limits: Limits,
    /// How packages are handed out.
    pub dispatch: DispatchConfig,
    /// Where the hub keeps its state.
    pub storage: Storage,
    /// Most delivery notices queued per store.
    pub queue_limit: usize,
    /// When a commit to the data dir counts as done.
    pub sync: sqlite::Sync,
}

/// Where a hub keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory only: a restart forgets everything.
    Ephemeral,
    /// An SQLite database in this directory.
    DataDir(PathBuf),
}

impl HubConfig {
    /// A hub that keeps everything in memory (demos, tests).
    pub fn ephemeral() -> Self {
        HubConfig {
            admission: Admission::Open,
            limits: Limits::default(),
            dispatch: DispatchConfig::default(),
            storage: Storage::Ephemeral,
            queue_limit: 10_000,
            sync: sqlite::Sync::Full,
        }
    }

    /// A durable hub keeping its state in `dir`.
    pub fn durable(dir: impl Into<PathBuf>) -> Self {
        HubConfig {
            storage: Storage::DataDir(dir.into()),
            ..HubConfig::ephemeral()
        }
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
        tokio::sync::mpsc::UnboundedReceiver<journal::Committed>,
    )>,
}

impl Hub {
    /// Opens the hub's storage and reads its state back. A data dir that is
    /// in use, unreadable, corrupt or from a newer caps is refused here.
    pub fn open(config: HubConfig) -> anyhow::Result<Hub> {
        let (snapshot, journal) = match &config.storage {
            Storage::Ephemeral => (Snapshot::default(), None),
            Storage::DataDir(dir) => {
                let mut store = SqliteStore::open(dir, config.sync)?;
                let snapshot = store
                    .load(config.dispatch.keep_delivered)
                    .with_context(|| format!("reading the data dir {}", dir.display()))?;
                log::info!(
                    "data dir {}: {} open orders, {} delivered, {} queued notices",
                    dir.display(),
                    snapshot
                        .orders
                        .iter()
                        .filter(|o| o.state != crate::api::OrderState::Delivered)
                        .count(),
                    snapshot.delivered_total,
                    snapshot.notices.len()
                );
                let store: Box<dyn Store> = Box::new(store);
                (snapshot, Some(Journal::start(store)))
            }
        };
        Ok(Hub {
            config,
            snapshot,
            journal,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then closes every
    /// Socket.IO connection (clients see a server disconnect) and returns.
    /// Fails if the data dir cannot be written: the hub stops rather than
    /// confirm what it cannot record.
    pub async fn serve(
        self,
        listener: TcpListener,
        log: EventLog,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        serve_hub(self, listener, log, shutdown).await
    }
}

/// State shared by every Socket.IO handler.
#[derive(Clone)]
pub(crate) struct HubState {
    core: CoreHandle,
    admission: Admission,
    guard: Guard,
    metrics: Arc<Metrics>,
}

async fn serve_hub(
    hub: Hub,
    listener: TcpListener,
    log: EventLog,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Hub {
        config,
        snapshot,
        journal,
    } = hub;
    let (core, inbox) = self::core::channel();
    let cors = cors_layer(&config.limits.cors_origins)?;
    let max_message = config.limits.max_message_bytes;
    let max_event = config.limits.max_event_bytes;
    let guard = Guard::new(config.limits);
    let metrics = Arc::new(Metrics::new());
    let (layer, io) = SocketIo::builder()
        .max_payload(max_message)
        .ws_max_message_size(max_message as usize)
        .ws_max_frame_size(max_message as usize)
        // Most messages are a few hundred bytes: a small read buffer per
        // connection keeps thousands of idle drivers cheap.
        .ws_read_buffer_size(1024)
        // Offers to a slow driver queue here rather than fail.
        .max_buffer_size(1024)
        .ping_interval(Duration::from_secs(10))
        .ping_timeout(Duration::from_secs(10))
        .with_state(HubState {
            core: core.clone(),
            admission: config.admission.clone(),
            guard: guard.clone(),
            metrics: Arc::clone(&metrics),
        })
        .build_layer();
    io.ns(NAMESPACE, handlers::on_connect.with(handlers::admit));
    let setup = CoreSetup {
        dispatch: config.dispatch,
        queue_limit: config.queue_limit,
        snapshot,
        journal,
        guard,
        metrics,
    };
    let mut core_task = tokio::spawn(self::core::run(inbox, io.clone(), log, setup));

    let router = http::routes(http::HttpState {
        core,
        admission: config.admission,
    })
    .layer(axum::extract::DefaultBodyLimit::max(max_event))
    .layer(layer)
    .layer(cors);
    // Small messages must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {error}");
        }
    });
    let closer = io.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        log::info!("shutting down: closing all connections");
        closer.close().await;
    });
    tokio::select! {
        served = server => {
            core_task.abort();
            served.context("serving")
        }
        stopped = &mut core_task => {
            io.close().await;
            match stopped {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(panic) => Err(anyhow::anyhow!("the hub core failed: {panic}")),
            }
        }
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

/// The URL clients use to reach a hub listening on `addr`.
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
