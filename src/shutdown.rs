//! Stopping on Ctrl-C or SIGTERM. The first signal asks a role to stop
//! (finishing or recording what it holds); for the driver, a second one quits
//! at once, which `main` reports with exit code 130.

use tokio_util::sync::CancellationToken;

/// What a role returns when a second signal cut it short.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Two tokens: the first Ctrl-C or SIGTERM cancels `stop`, a second `now`.
pub fn stop_then_quit() -> (CancellationToken, CancellationToken) {
    let stop = CancellationToken::new();
    let now = CancellationToken::new();
    let (first, second) = (stop.clone(), now.clone());
    tokio::spawn(async move {
        shutdown_signal().await;
        first.cancel();
        shutdown_signal().await;
        second.cancel();
    });
    (stop, now)
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                log::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
