//! `caps driver`: a courier that picks up each package it is offered, reports
//! it in transit, then delivered, each package on its own timeline.
//!
//! The hub offers each package to one driver and hands a driver back the
//! packages it holds when it reconnects, so the driver:
//! - ignores an offer for a package it already carries;
//! - answers an offer for a package it delivered recently by repeating
//!   `in-transit` and `delivered` (its first report was lost);
//! - re-announces the packages it carries after every reconnect;
//! - drops a package when the hub refuses its report (the offer expired or
//!   went to another driver while this one was away).

pub mod identity;
mod recent;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::task::JoinSet;
use tokio::time::sleep;

use crate::protocol::{DriverName, ErrorCode, Event, Handshake, Order, OrderId, StoreId};
use crate::roles::console::Console;
use crate::roles::hub_link::{HubLink, Inbound, LinkConfig, TokenSource, retry_delay};
use recent::{RecentMap, RecentSet};

/// How many reported deliveries a driver keeps, to report again when the
/// hub says it was too busy (it says so within moments).
const REPORTS_KEPT: usize = 1_000;

/// How many delivered packages a driver remembers.
const REMEMBERED_DELIVERIES: usize = 100_000;

/// What a driver does.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where the hub is.
    pub hubs: Vec<String>,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// A token (or a file to read it from), for a hub that requires one.
    pub token: Option<TokenSource>,
    /// The driver's name: its identity at the hub, across reconnections.
    pub name: DriverName,
    /// The most packages it carries at once; `None` for no limit.
    pub capacity: Option<u32>,
    /// Time from being offered a package to picking it up.
    pub pickup_delay: Duration,
    /// Time from picking a package up to delivering it.
    pub deliver_delay: Duration,
}

/// A package is known by its store and id: two shops may reuse an id.
type PackageKey = (StoreId, OrderId);

fn key_of(order: &Order) -> PackageKey {
    (order.store.clone(), order.order_id.clone())
}

/// Where a package the driver holds is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Offered; the driver is on its way to pick it up.
    Offered,
    /// Picked up and reported in transit.
    InTransit,
}

/// The next step of one package's timeline.
enum Leg {
    PickedUp(Order),
    Delivered(Order),
    /// Report this again: the hub was too busy to take it.
    Report(Event, Order),
}

/// Runs a driver until `shutdown` completes, then finishes the packages it
/// carries (taking no new ones) and returns the number it delivered.
pub async fn run(
    config: DriverConfig,
    console: Console,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<u64> {
    let link_config = LinkConfig {
        hubs: config.hubs.clone(),
        handshake: Handshake::driver(config.name.clone(), config.capacity),
        connect_timeout: config.connect_timeout,
        token: config.token.clone(),
        listen: vec![Event::Pickup],
    };
    let (mut link, mut inbound) = HubLink::connect(&link_config).await?;
    log::info!(
        "driver connected name={} hub={}",
        config.name,
        config.hubs.join(",")
    );

    let mut timelines: JoinSet<Leg> = JoinSet::new();
    let mut holding: HashMap<PackageKey, (Order, Stage)> = HashMap::new();
    let mut delivered = RecentSet::new(REMEMBERED_DELIVERIES);
    // The deliveries just reported, to report again if the hub was too busy.
    let mut reported: RecentMap<PackageKey, Order> = RecentMap::new(REPORTS_KEPT);
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
                    Ok(Leg::PickedUp(order)) => {
                        let Some((_, stage)) = holding.get_mut(&key_of(&order)) else {
                            continue; // dropped while on the way
                        };
                        *stage = Stage::InTransit;
                        console.line(format_args!("DRIVER: picked up {}", order.order_id));
                        link.send(Event::InTransit, &order).await;
                        let delay = config.deliver_delay;
                        timelines.spawn(async move {
                            sleep(delay).await;
                            Leg::Delivered(order)
                        });
                    }
                    Ok(Leg::Delivered(order)) => {
                        let key = key_of(&order);
                        if holding.remove(&key).is_none() {
                            continue; // dropped while in transit
                        }
                        console.line(format_args!("DRIVER: delivered {}", order.order_id));
                        link.send(Event::Delivered, &order).await;
                        delivered.insert(key.clone());
                        reported.insert(key, order);
                        delivered_count += 1;
                    }
                    Ok(Leg::Report(event, order)) => {
                        link.send(event, &order).await;
                        // An in-transit sent again for a package already
                        // delivered is followed by its delivery.
                        if event == Event::InTransit && reported.get(&key_of(&order)).is_some() {
                            link.send(Event::Delivered, &order).await;
                        }
                    }
                    Err(error) => log::error!("a package timeline failed: {error}"),
                }
            }
            message = inbound.recv() => {
                let Some(message) = message else { bail!("the connection to the hub ended") };
                link.observe(&message);
                match message {
                    Inbound::Connected => {
                        log::info!("reconnected to hub; holding {} packages", holding.len());
                        link.flush().await;
                        for (order, stage) in holding.values() {
                            if *stage == Stage::InTransit {
                                link.send(Event::InTransit, order).await;
                            }
                        }
                    }
                    Inbound::ConnectionLost(reason) => {
                        log::warn!("lost the hub ({reason}); reconnecting");
                    }
                    Inbound::ConnectRefused(reason) => bail!("the hub refused us: {reason}"),
                    Inbound::EventRefused(notice) if notice.error.code.is_transient() => {
                        if notice.error.code == ErrorCode::RateLimited {
                            link.slow_down();
                        }
                        // The hub's load, not the package: report it again soon.
                        let Some(key) = notice.store.zip(notice.order_id) else { continue };
                        let order = match notice.event {
                            Event::InTransit => holding.get(&key).map(|(order, _)| order.clone()),
                            Event::Delivered => reported.get(&key).cloned(),
                            _ => None,
                        };
                        if let Some(order) = order {
                            let wait = retry_delay();
                            log::debug!("the hub is busy ({}); {} of {} again in {wait:?}", notice.error.code.as_str(), notice.event, order.order_id);
                            let event = notice.event;
                            timelines.spawn(async move {
                                sleep(wait).await;
                                Leg::Report(event, order)
                            });
                        }
                    }
                    Inbound::EventRefused(notice)
                        if notice.event == Event::Delivered && notice.error.code == ErrorCode::OutOfOrder =>
                    {
                        // The hub did not take our in-transit (refused for
                        // its load, or lost): report both again, in order.
                        let Some(key) = notice.store.zip(notice.order_id) else { continue };
                        if let Some(order) = reported.get(&key).cloned() {
                            let wait = retry_delay();
                            log::info!("the hub missed our in-transit of {}; reporting it again in {wait:?}", order.order_id);
                            timelines.spawn(async move {
                                sleep(wait).await;
                                Leg::Report(Event::InTransit, order.clone())
                            });
                        }
                    }
                    Inbound::EventRefused(notice) => {
                        log::warn!("the hub refused our {}: {}", notice.event, notice.error);
                        let dropped = match (notice.store, notice.order_id) {
                            (Some(store), Some(order_id)) => holding.remove(&(store, order_id)),
                            _ => None,
                        };
                        if let Some((order, _)) = dropped {
                            console.line(format_args!("DRIVER: dropped {} ({})", order.order_id, notice.error.code));
                        }
                    }
                    Inbound::Order(Event::Pickup, order, _) => {
                        let key = key_of(&order);
                        if delivered.contains(&key) {
                            log::info!("already delivered order={}; telling the hub again", order.order_id);
                            link.send(Event::InTransit, &order).await;
                            link.send(Event::Delivered, &order).await;
                        } else if draining || holding.contains_key(&key) {
                            log::debug!("not taking order={}", order.order_id);
                        } else {
                            holding.insert(key, (order.clone(), Stage::Offered));
                            let delay = config.pickup_delay;
                            timelines.spawn(async move {
                                sleep(delay).await;
                                Leg::PickedUp(order)
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
