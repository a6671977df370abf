//! Helpers for tests that talk to an in-process hub through our own client
//! link: connect, and wait (always with a timeout) for the next order event.

#![allow(dead_code)]

use std::time::Duration;

use caps::protocol::{Event, Handshake, Order};
use caps::roles::hub_link::{HubLink, Inbound, LinkConfig};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

/// How long a test waits for what must happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// Connects to the hub at `url` with `handshake`, listening for `listen`.
pub async fn connect(
    url: &str,
    handshake: Handshake,
    listen: Vec<Event>,
) -> (HubLink, UnboundedReceiver<Inbound>) {
    let config = LinkConfig {
        hubs: vec![url.to_owned()],
        handshake,
        connect_timeout: WAIT,
        listen,
        token: None,
    };
    HubLink::connect(&config)
        .await
        .expect("connecting to the in-process hub")
}

/// The next order event within `within` (which event, and the order), or
/// `None` if none came.
pub async fn order_within(
    inbound: &mut UnboundedReceiver<Inbound>,
    within: Duration,
) -> Option<(Event, Order)> {
    let next = async {
        loop {
            match inbound.recv().await {
                Some(Inbound::Order(event, order, _)) => return Some((event, order)),
                Some(_) => continue,
                None => return None,
            }
        }
    };
    timeout(within, next).await.ok().flatten()
}

/// The next order event, which must come within [`WAIT`].
pub async fn next_order(inbound: &mut UnboundedReceiver<Inbound>) -> (Event, Order) {
    order_within(inbound, WAIT)
        .await
        .expect("an order event within the wait")
}
