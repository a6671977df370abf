//! The CAPS hub: a Socket.IO server on axum that routes events between
//! vendors and drivers.
//!
//! [`serve`] takes its listener and its shutdown signal as arguments, so tests
//! run the real hub in-process on port 0 and stop it when they like.

mod checked;
mod event_log;
mod handlers;
mod peer;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use tokio::net::TcpListener;

pub use event_log::EventLog;
pub use peer::Peer;

use crate::protocol::NAMESPACE;

/// Tunables of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest engine.io message accepted, in bytes; a client that sends more
    /// is disconnected. Event payloads have a smaller limit of their own
    /// ([`crate::protocol::limits::EVENT_BYTES`]) that is answered with an error.
    pub max_message_bytes: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// State shared by every handler.
#[derive(Clone)]
pub(crate) struct HubState {
    log: EventLog,
}

/// The hub's HTTP app (Socket.IO at `/socket.io`, plus `/healthz`) and the
/// Socket.IO handle that can close every connection.
pub fn app(config: &HubConfig, log: EventLog) -> (Router, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .max_payload(config.max_message_bytes)
        .ws_max_message_size(config.max_message_bytes as usize)
        .ws_max_frame_size(config.max_message_bytes as usize)
        .with_state(HubState { log })
        .build_layer();
    io.ns(NAMESPACE, handlers::on_connect.with(handlers::admit));
    let router = Router::new()
        .route("/healthz", get(async || "ok\n"))
        .layer(layer);
    (router, io)
}

/// Serves the hub on `listener` until `shutdown` completes, then closes every
/// Socket.IO connection (clients see a server disconnect) and returns.
pub async fn serve(
    listener: TcpListener,
    config: HubConfig,
    log: EventLog,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, io) = app(&config, log);
    // Small messages must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {error}");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            log::info!("shutting down: closing all connections");
            io.close().await;
        })
        .await
}

/// The URL clients use to reach a hub listening on `addr`.
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
