//! `caps driver`: a courier that picks up each package it is offered, reports
//! it in transit, then delivered, each package on its own timeline.
//!
//! A pickup for a package the driver already carries is ignored; a pickup for
//! one it delivered recently is answered by repeating `delivered`, because the
//! vendor re-sends pickups it has not heard back about (for instance when the
//! first `delivered` went into a connection that died).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::task::JoinSet;
use tokio::time::sleep;

use crate::client::{HubLink, Inbound, LinkConfig};
use crate::console::Console;
use crate::protocol::{DriverName, Event, Handshake, Order, OrderId};
use crate::recent::RecentSet;

/// How many delivered order ids a driver remembers.
const REMEMBERED_DELIVERIES: usize = 100_000;

/// What a driver does.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where the hub is.
    pub hub_url: String,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// The driver's name, as the hub and its logs show it.
    pub name: DriverName,
    /// Time from being offered a package to picking it up.
    pub pickup_delay: Duration,
    /// Time from picking a package up to delivering it.
    pub deliver_delay: Duration,
}

/// The next step of one package's timeline.
enum Step {
    PickedUp(Order),
    Delivered(Order),
}

/// Runs a driver until `shutdown` completes, then finishes the packages it
/// carries (taking no new ones) and returns the number it delivered.
pub async fn run(
    config: DriverConfig,
    console: Console,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<u64> {
    let link_config = LinkConfig {
        hub_url: config.hub_url.clone(),
        handshake: Handshake::driver(config.name.clone()),
        connect_timeout: config.connect_timeout,
        listen: vec![Event::Pickup],
    };
    let (mut link, mut inbound) = HubLink::connect(&link_config).await?;
    log::info!(
        "driver connected name={} hub={}",
        config.name,
        config.hub_url
    );

    let mut timelines: JoinSet<Step> = JoinSet::new();
    let mut carrying: HashSet<OrderId> = HashSet::new();
    let mut delivered = RecentSet::new(REMEMBERED_DELIVERIES);
    let mut delivered_count = 0;
    let mut draining = false;
    tokio::pin!(shutdown);

    loop {
        if draining && timelines.is_empty() {
            break;
        }
        tokio::select! {
            () = &mut shutdown, if !draining => {
                draining = true;
                if !timelines.is_empty() {
                    log::info!("finishing {} packages before leaving", timelines.len());
                }
            }
            Some(step) = timelines.join_next(), if !timelines.is_empty() => {
                match step {
                    Ok(Step::PickedUp(order)) => {
                        console.line(format_args!("DRIVER: picked up {}", order.order_id));
                        link.send(Event::InTransit, &order).await;
                        let delay = config.deliver_delay;
                        timelines.spawn(async move {
                            sleep(delay).await;
                            Step::Delivered(order)
                        });
                    }
                    Ok(Step::Delivered(order)) => {
                        console.line(format_args!("DRIVER: delivered {}", order.order_id));
                        link.send(Event::Delivered, &order).await;
                        carrying.remove(&order.order_id);
                        delivered.insert(order.order_id);
                        delivered_count += 1;
                    }
                    Err(error) => log::error!("a package timeline failed: {error}"),
                }
            }
            message = inbound.recv() => {
                let Some(message) = message else { bail!("the connection to the hub ended") };
                link.observe(&message);
                match message {
                    Inbound::Connected => {
                        log::info!("reconnected to hub; carrying {} packages", carrying.len());
                        link.flush().await;
                    }
                    Inbound::ConnectionLost(reason) => {
                        log::warn!("lost the hub ({reason}); reconnecting");
                    }
                    Inbound::Refused(reason) => bail!("the hub refused us: {reason}"),
                    Inbound::Order(Event::Pickup, order) => {
                        if delivered.contains(&order.order_id) {
                            log::info!("already delivered order={}; telling the hub again", order.order_id);
                            link.send(Event::Delivered, &order).await;
                        } else if draining || carrying.contains(&order.order_id) {
                            log::debug!("not taking order={}", order.order_id);
                        } else {
                            carrying.insert(order.order_id.clone());
                            let delay = config.pickup_delay;
                            timelines.spawn(async move {
                                sleep(delay).await;
                                Step::PickedUp(order)
                            });
                        }
                    }
                    Inbound::Order(..) => {}
                }
            }
        }
    }
    link.close().await;
    log::info!(
        "driver done name={} delivered={delivered_count}",
        config.name
    );
    Ok(delivered_count)
}
