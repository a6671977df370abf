//! `caps demo`: a hub, shops and couriers in one process and one terminal,
//! each line tagged with who said it, so a newcomer can watch packages move.
//! With `--hubs 3 --database postgres://…`, a group of hubs on one database,
//! the shops and couriers spread over them (each knows every hub, its own
//! first).

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::hub::group::GroupConfig;
use crate::hub::{self, EventLog, Hub, HubConfig, Storage};
use crate::protocol::{DriverName, StoreId};
use crate::roles::console::Console;
use crate::roles::driver::{self, DriverConfig};
use crate::roles::vendor::{self, VendorConfig};

/// Stores the course uses, then numbered ones.
const STORES: [&str; 3] = ["1-206-flowers", "acme-widgets", "1-800-flowers"];
/// Courier names, then numbered ones.
const DRIVERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Number of shops.
    pub vendors: usize,
    /// Number of couriers.
    pub drivers: usize,
    /// Orders per shop; `None` runs until shutdown.
    pub orders: Option<u64>,
    /// Time between two orders of one shop.
    pub interval: Duration,
    /// A courier's time to pick a package up.
    pub pickup_delay: Duration,
    /// A courier's time to deliver it.
    pub deliver_delay: Duration,
    /// The (first) hub's port; 0 picks a free one.
    pub port: u16,
    /// How many hubs; more than one needs `database`.
    pub hubs: usize,
    /// The PostgreSQL database of a group of hubs.
    pub database: Option<String>,
}

/// Runs the demo until every shop's orders are delivered or `shutdown` completes.
pub async fn run(config: DemoConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let stop_hub = CancellationToken::new();
    let mut hub_tasks = JoinSet::new();
    let mut hub_urls = Vec::new();
    for index in 0..config.hubs.max(1) {
        let port = if index == 0 { config.port } else { 0 };
        let listener = hub::bind("127.0.0.1", port)
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let hub_url = hub::url_for(listener.local_addr()?);
        let (name, hub_config) = match (&config.database, config.hubs) {
            (Some(url), hubs) if hubs > 1 => {
                let id = format!("hub-{}", index + 1);
                let mut hub_config = HubConfig::durable(std::path::PathBuf::new());
                hub_config.storage = Storage::Database {
                    url: url.clone(),
                    hub_id: id.clone(),
                    group: GroupConfig::default(),
                };
                (id, hub_config)
            }
            (None, hubs) if hubs > 1 => anyhow::bail!("--hubs {hubs} needs --database"),
            _ => ("hub".to_owned(), HubConfig::ephemeral()),
        };
        let log = EventLog::tagged_stdout(&name);
        log.line(format!("caps hub listening on {hub_url}"));
        // Opening a group hub waits for the database: not on this runtime's thread.
        let hub = tokio::task::spawn_blocking(move || Hub::open(hub_config)).await??;
        hub_tasks.spawn(hub.serve(listener, log, stop_hub.clone().cancelled_owned()));
        hub_urls.push(hub_url);
    }
    // Each client knows every hub, its own first.
    let hubs_from = |first: usize| -> Vec<String> {
        (0..hub_urls.len())
            .map(|offset| hub_urls[(first + offset) % hub_urls.len()].clone())
            .collect()
    };

    let stop_roles = CancellationToken::new();
    let mut drivers = JoinSet::new();
    for index in 0..config.drivers {
        let name = pick_name(&DRIVERS, index, "driver");
        let driver_config = DriverConfig {
            hubs: hubs_from(index),
            connect_timeout: Duration::from_secs(10),
            token: None,
            name: DriverName::new(name.clone()).map_err(anyhow::Error::msg)?,
            capacity: None,
            pickup_delay: config.pickup_delay,
            deliver_delay: config.deliver_delay,
        };
        let stop = stop_roles.clone();
        drivers.spawn(async move {
            driver::run(driver_config, Console::tagged(name), stop.cancelled_owned()).await
        });
    }

    let mut vendors = JoinSet::new();
    for index in 0..config.vendors {
        let store = pick_name(&STORES, index, "store");
        let vendor_config = VendorConfig {
            hubs: hubs_from(index),
            connect_timeout: Duration::from_secs(10),
            token: None,
            store: StoreId::new(store.clone()).map_err(anyhow::Error::msg)?,
            interval: config.interval,
            count: config.orders,
            resend_after: Duration::from_secs(30),
            state_file: None,
        };
        let stop = stop_roles.clone();
        vendors.spawn(async move {
            vendor::run(
                vendor_config,
                Console::tagged(store),
                stop.cancelled_owned(),
            )
            .await
        });
    }

    let (mut placed, mut delivered) = (0, 0);
    let mut first_error = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                stop_roles.cancel();
            }
            finished = vendors.join_next() => {
                match finished {
                    None => break,
                    Some(Ok(Ok(report))) => {
                        placed += report.placed;
                        delivered += report.delivered;
                    }
                    Some(Ok(Err(error))) => {
                        first_error.get_or_insert(error);
                    }
                    Some(Err(panic)) => {
                        first_error.get_or_insert(anyhow::anyhow!("a vendor task failed: {panic}"));
                    }
                }
            }
        }
    }
    stop_roles.cancel();
    while let Some(finished) = drivers.join_next().await {
        if let Ok(Err(error)) = finished {
            first_error.get_or_insert(error);
        }
    }
    stop_hub.cancel();
    while let Some(stopped) = hub_tasks.join_next().await {
        stopped.context("a hub task failed")??;
    }

    println!("demo finished: {placed} orders placed, {delivered} delivered");
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn pick_name(names: &[&str], index: usize, fallback: &str) -> String {
    names
        .get(index)
        .map(|name| name.to_string())
        .unwrap_or_else(|| format!("{fallback}-{}", index + 1))
}
