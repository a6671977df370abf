//! `caps bench-echo`: the ceiling. A bare WebSocket server that speaks just
//! enough engine.io and socket.io to accept the generator's connections and
//! sends every event straight back to its sender: no routing, no state, no
//! storage. What the hub does beyond this is what the hub costs.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::accept_async;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::NAMESPACE;

/// Serves until the process is stopped; the first stdout line names the URL.
pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "echo ceiling listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(socket) = accept_async(tcp).await else {
                return;
            };
            let (mut sink, mut stream) = socket.split();
            let open = r#"0{"sid":"echo","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
            if sink.send(Message::text(open)).await.is_err() {
                return;
            }
            let connect = format!("40{NAMESPACE},");
            let accepted = format!(r#"40{NAMESPACE},{{"sid":"echo"}}"#);
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let reply = if text.starts_with(&connect) {
                    Message::text(accepted.clone())
                } else if text.starts_with("42") {
                    Message::Text(text)
                } else {
                    continue;
                };
                if sink.send(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}
