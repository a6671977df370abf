//! A minimal Socket.IO client over one WebSocket, for load generation.
//!
//! rust_socketio is too slow and too fragile to drive a hub at full speed
//! (see ../shared/STACK-NOTES.md), so the generator speaks the protocol
//! itself: engine.io v4 over WebSocket only, socket.io v5 text packets, one
//! namespace. It does what the official client does on that path: waits for
//! the engine's open packet, connects the namespace with its `auth`, answers
//! pings, and sends and receives `EVENT` packets. Nothing else (no polling,
//! no binary, no acks) because the generator needs nothing else.

use anyhow::{Context, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sending half of a connection.
pub struct Sender {
    sink: SplitSink<Socket, Message>,
    namespace: String,
}

/// The receiving half of a connection.
pub struct Receiver {
    stream: SplitStream<Socket>,
    namespace: String,
}

/// One event received.
#[derive(Debug)]
pub struct Incoming {
    /// Its name.
    pub event: String,
    /// Its first argument.
    pub payload: Value,
}

/// Connects to `hub_url` (`http://host:port`) and joins `namespace` with
/// `auth`; returns once the namespace accepted the connection.
pub async fn connect(
    hub_url: &str,
    namespace: &str,
    auth: &Value,
) -> anyhow::Result<(Sender, Receiver)> {
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        hub_url.replacen("http", "ws", 1)
    );
    let (socket, _) = connect_async(&ws_url)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        let _ = tcp.set_nodelay(true);
    }
    let (mut sink, mut stream) = socket.split();
    // engine.io OPEN: "0{...}".
    let open = next_text(&mut stream).await?;
    if !open.starts_with('0') {
        bail!("expected an engine.io open packet, got {open:?}");
    }
    sink.send(Message::text(format!("40{namespace},{auth}")))
        .await
        .context("sending the namespace connect")?;
    loop {
        let packet = next_text(&mut stream).await?;
        if packet == "2" {
            sink.send(Message::text("3")).await?;
        } else if packet.starts_with(&format!("40{namespace},")) {
            break;
        } else if let Some(error) = packet.strip_prefix(&format!("44{namespace},")) {
            bail!("the hub refused the connection: {error}");
        }
    }
    Ok((
        Sender {
            sink,
            namespace: namespace.to_owned(),
        },
        Receiver {
            stream,
            namespace: namespace.to_owned(),
        },
    ))
}

async fn next_text(stream: &mut SplitStream<Socket>) -> anyhow::Result<String> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(_))) | None => bail!("the connection closed"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error).context("reading from the hub"),
        }
    }
}

impl Sender {
    /// Sends `event` with one argument, already encoded as JSON.
    pub async fn emit_raw(&mut self, event: &str, payload_json: &str) -> anyhow::Result<()> {
        let packet = format!("42{},[\"{event}\",{payload_json}]", self.namespace);
        self.sink
            .send(Message::text(packet))
            .await
            .context("sending an event")
    }

    /// Sends an engine.io PONG.
    pub async fn pong(&mut self) -> anyhow::Result<()> {
        self.sink
            .send(Message::text("3"))
            .await
            .context("sending a pong")
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
    }
}

/// What one received frame was.
pub enum Frame {
    /// An event on our namespace.
    Event(Incoming),
    /// An engine.io PING: answer with [`Sender::pong`].
    Ping,
    /// Anything else.
    Other,
}

impl Receiver {
    /// The next frame, or `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Frame> {
        let text = next_text(&mut self.stream).await.ok()?;
        if text == "2" {
            return Some(Frame::Ping);
        }
        let Some(body) = text
            .strip_prefix("42")
            .and_then(|rest| rest.strip_prefix(self.namespace.as_str()))
        else {
            return Some(Frame::Other);
        };
        let body = body.strip_prefix(',').unwrap_or(body);
        let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(body) else {
            return Some(Frame::Other);
        };
        if parts.is_empty() {
            return Some(Frame::Other);
        }
        let payload = if parts.len() > 1 {
            parts.swap_remove(1)
        } else {
            Value::Null
        };
        let event = parts[0].as_str().unwrap_or_default().to_owned();
        Some(Frame::Event(Incoming { event, payload }))
    }
}
