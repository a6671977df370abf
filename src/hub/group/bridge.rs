//! The bridge's outgoing end and its messages: what a hub of a group tells
//! its rooms and viewers, published for the other hubs to repeat (the
//! group's chores carry them over the database).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::hub::metrics::Metrics;
use crate::protocol::{Event, StoreId};

/// NOTIFY refuses payloads of 8,000 bytes or more; larger messages are not
/// bridged (a delivery notice then arrives through the queue).
const MAX_BRIDGED: usize = 7_900;
/// Bridge messages waiting to be published at most; beyond, they are
/// dropped (counted): while the database is away they would pile up, and
/// the notices they carry stay queued anyway.
const PUBLISH_QUEUE: usize = 10_000;
/// One message on the bridge.
#[derive(Serialize, Deserialize)]
pub(in crate::hub) struct Bridged {
    /// The hub that sent it (which has told its own sockets already).
    pub from: String,
    #[serde(flatten)]
    pub what: BridgedWhat,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(in crate::hub) enum BridgedWhat {
    /// Tell a store's room (or, with no store, the viewers) of `event`.
    Tell {
        store: Option<StoreId>,
        event: Event,
        message: serde_json::Value,
    },
    /// The sender could not publish since `since`: every hub re-sends the
    /// delivery notices queued since then to its own vendors.
    ResendSince { resend_since: DateTime<Utc> },
}

/// The outbox's end of the bridge: publishes what this hub tells its rooms.
#[derive(Clone)]
pub struct Bridge {
    hub: Arc<str>,
    outgoing: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

impl Bridge {
    /// Publishes `message` for `store`'s room, or the viewers' (`None`).
    pub fn publish(&self, store: Option<&StoreId>, event: Event, message: serde_json::Value) {
        let bridged = Bridged {
            from: self.hub.to_string(),
            what: BridgedWhat::Tell {
                store: store.cloned(),
                event,
                message,
            },
        };
        match serde_json::to_string(&bridged) {
            Ok(text) if text.len() <= MAX_BRIDGED => {
                if self.outgoing.try_send(text).is_err() {
                    self.metrics.group("bridge_dropped", 1);
                }
            }
            Ok(text) => log::debug!(
                "not bridging {event} of {} bytes (over NOTIFY's limit); it stays queued",
                text.len()
            ),
            Err(_) => {}
        }
    }
}

/// The bridge's two ends, made before the sequencer starts.
pub fn bridge(hub: &str, metrics: Arc<Metrics>) -> (Bridge, mpsc::Receiver<String>) {
    let (outgoing, incoming) = mpsc::channel(PUBLISH_QUEUE);
    (
        Bridge {
            hub: hub.into(),
            outgoing,
            metrics,
        },
        incoming,
    )
}
