//! The CAPS hub: a Socket.IO server on axum that dispatches each package to
//! one driver and tells each store about its own packages.
//!
//! [`serve`] takes its listener and its shutdown signal as arguments, so tests
//! run the real hub in-process on port 0 and stop it when they like.

mod core;
mod decode;
pub mod dispatch;
mod event_log;
mod handlers;
mod peer;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use tokio::net::TcpListener;

pub use dispatch::DispatchConfig;
pub use event_log::EventLog;
pub use peer::Peer;

use self::core::CoreHandle;
use crate::api::STATUS_PATH;
use crate::protocol::NAMESPACE;

/// Tunables of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest engine.io message accepted, in bytes; a client that sends more
    /// is disconnected. Event payloads have a smaller limit of their own
    /// ([`crate::protocol::limits::EVENT_BYTES`]) that is answered with an error.
    pub max_message_bytes: u64,
    /// How packages are handed out.
    pub dispatch: DispatchConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_message_bytes: 1024 * 1024,
            dispatch: DispatchConfig::default(),
        }
    }
}

/// State shared by every Socket.IO handler.
#[derive(Clone)]
pub(crate) struct HubState {
    core: CoreHandle,
}

/// Serves the hub on `listener` until `shutdown` completes, then closes every
/// Socket.IO connection (clients see a server disconnect) and returns.
pub async fn serve(
    listener: TcpListener,
    config: HubConfig,
    log: EventLog,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (core, inbox) = self::core::channel();
    let (layer, io) = SocketIo::builder()
        .max_payload(config.max_message_bytes)
        .ws_max_message_size(config.max_message_bytes as usize)
        .ws_max_frame_size(config.max_message_bytes as usize)
        // Offers to a slow driver queue here rather than fail.
        .max_buffer_size(1024)
        .ping_interval(Duration::from_secs(10))
        .ping_timeout(Duration::from_secs(10))
        .with_state(HubState { core: core.clone() })
        .build_layer();
    io.ns(NAMESPACE, handlers::on_connect.with(handlers::admit));
    let core_task = tokio::spawn(self::core::run(inbox, io.clone(), log, config.dispatch));

    let router = Router::new()
        .route("/healthz", get(async || "ok\n"))
        .route(STATUS_PATH, get(status))
        .with_state(core)
        .layer(layer);
    // Small messages must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {error}");
        }
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            log::info!("shutting down: closing all connections");
            io.close().await;
        })
        .await;
    core_task.abort();
    served
}

async fn status(State(core): State<CoreHandle>) -> Response {
    match core.status().await {
        Some(status) => Json(status).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the hub is stopping\n").into_response(),
    }
}

/// The URL clients use to reach a hub listening on `addr`.
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
