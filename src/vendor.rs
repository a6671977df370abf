//! `caps vendor`: a shop that places an order every interval and thanks the
//! courier for each delivery.
//!
//! The vendor re-announces itself on every (re)connection: it joins its
//! store's room and re-sends every order not yet delivered. It also re-sends
//! an order that has waited longer than `resend_after` without a delivery.
//! The same `orderId` twice is the same order, so a re-send is harmless, and
//! an order emitted into a dying connection, or while no driver could hear
//! it, is not lost.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use fake::Fake;
use fake::faker::address::en::{CityName, StateAbbr};
use fake::faker::name::en::Name;
use tokio::time::{Instant, MissedTickBehavior, interval};

use crate::client::{HubLink, Inbound, LinkConfig};
use crate::console::Console;
use crate::protocol::{Address, Customer, Event, Handshake, JoinRequest, Order, OrderId, StoreId};
use crate::recent::RecentSet;

/// How many delivered order ids a vendor remembers to avoid thanking twice.
const REMEMBERED_DELIVERIES: usize = 100_000;

/// What a vendor does.
#[derive(Debug, Clone)]
pub struct VendorConfig {
    /// Where the hub is.
    pub hub_url: String,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// The store this vendor speaks for.
    pub store: StoreId,
    /// Time between two orders.
    pub interval: Duration,
    /// Stop after this many orders have been delivered; `None` runs until shutdown.
    pub count: Option<u64>,
    /// Re-send an order not delivered after this long.
    pub resend_after: Duration,
}

/// What a vendor did, for its caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VendorReport {
    /// Orders placed.
    pub placed: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Of those, refused by the hub (they will never be delivered).
    pub refused: u64,
}

impl VendorReport {
    /// Orders settled one way or the other.
    fn settled(&self) -> u64 {
        self.delivered + self.refused
    }
}

/// Runs a vendor until its `count` orders are delivered or `shutdown` completes.
pub async fn run(
    config: VendorConfig,
    console: Console,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<VendorReport> {
    let link_config = LinkConfig {
        hub_url: config.hub_url.clone(),
        handshake: Handshake::vendor(config.store.clone()),
        connect_timeout: config.connect_timeout,
        listen: vec![Event::Delivered],
    };
    let (mut link, mut inbound) = HubLink::connect(&link_config).await?;
    let join = JoinRequest {
        store: config.store.clone(),
    };
    link.try_send(Event::Join, &join).await;
    log::info!(
        "vendor connected store={} hub={}",
        config.store,
        config.hub_url
    );

    let mut ticker = interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = VendorReport::default();
    let mut outstanding: HashMap<OrderId, Outstanding> = HashMap::new();
    let mut resend_check = interval(config.resend_after / 2);
    resend_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut thanked = RecentSet::new(REMEMBERED_DELIVERIES);
    let wants_more = |report: &VendorReport| config.count.is_none_or(|n| report.placed < n);
    tokio::pin!(shutdown);

    loop {
        if config.count == Some(report.settled()) {
            break;
        }
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick(), if wants_more(&report) => {
                let order = fake_order(&config.store);
                console.line(format_args!("VENDOR: order {} ready for pickup", order.order_id));
                link.try_send(Event::Pickup, &order).await;
                outstanding.insert(order.order_id.clone(), Outstanding { order, sent: Instant::now() });
                report.placed += 1;
            }
            _ = resend_check.tick() => {
                for waiting in outstanding.values_mut() {
                    if waiting.sent.elapsed() >= config.resend_after {
                        log::info!("no delivery yet for order={}; sending it again", waiting.order.order_id);
                        link.try_send(Event::Pickup, &waiting.order).await;
                        waiting.sent = Instant::now();
                    }
                }
            }
            message = inbound.recv() => {
                let Some(message) = message else { bail!("the connection to the hub ended") };
                link.observe(&message);
                match message {
                    Inbound::Connected => {
                        log::info!("reconnected to hub; re-sending {} undelivered orders", outstanding.len());
                        link.try_send(Event::Join, &join).await;
                        for waiting in outstanding.values_mut() {
                            link.try_send(Event::Pickup, &waiting.order).await;
                            waiting.sent = Instant::now();
                        }
                    }
                    Inbound::ConnectionLost(reason) => {
                        log::warn!("lost the hub ({reason}); reconnecting");
                    }
                    Inbound::ConnectRefused(reason) => bail!("the hub refused us: {reason}"),
                    Inbound::EventRefused(notice) => {
                        log::warn!("the hub refused our {}: {}", notice.event, notice.error);
                        let ours = notice.event == Event::Pickup && notice.store.as_ref() == Some(&config.store);
                        if let Some(order_id) = notice.order_id.filter(|_| ours)
                            && outstanding.remove(&order_id).is_some()
                        {
                            console.line(format_args!("VENDOR: order {order_id} refused ({})", notice.error.code));
                            report.refused += 1;
                        }
                    }
                    Inbound::Order(Event::Delivered, order) if order.store == config.store => {
                        let ours = outstanding.remove(&order.order_id).is_some();
                        if ours {
                            report.delivered += 1;
                        }
                        if thanked.insert(order.order_id.clone()) || ours {
                            console.line(format_args!("VENDOR: Thank you for delivering {}", order.order_id));
                        }
                    }
                    Inbound::Order(..) => {}
                }
            }
        }
    }
    link.close().await;
    log::info!(
        "vendor done store={} placed={} delivered={} refused={}",
        config.store,
        report.placed,
        report.delivered,
        report.refused
    );
    if report.refused > 0 {
        bail!(
            "the hub refused {} of {} orders",
            report.refused,
            report.placed
        );
    }
    Ok(report)
}

/// An order placed and not yet delivered.
struct Outstanding {
    order: Order,
    /// When it was last sent to the hub.
    sent: Instant,
}

/// A new order for `store` with a fresh UUID and a fake customer and address.
pub fn fake_order(store: &StoreId) -> Order {
    let name: String = Name().fake();
    let city: String = CityName().fake();
    let state: String = StateAbbr().fake();
    Order {
        store: store.clone(),
        order_id: OrderId::new(uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid order id"),
        customer: Customer::new(name).expect("fake names are valid"),
        address: Address::new(format!("{city}, {state}")).expect("fake addresses are valid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_orders_are_valid_and_unique() {
        let store = StoreId::new("acme").unwrap();
        let a = fake_order(&store);
        let b = fake_order(&store);
        assert_ne!(a.order_id, b.order_id);
        assert!(a.address.as_str().contains(", "));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(serde_json::from_value::<Order>(json).unwrap(), a);
    }
}
