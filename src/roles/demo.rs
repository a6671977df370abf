//! `caps demo`: a hub, shops and couriers in one process and one terminal,
//! each line tagged with who said it, so a newcomer can watch packages move.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::hub::{self, EventLog, Hub, HubConfig};
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
    /// The hub's port; 0 picks a free one.
    pub port: u16,
}

/// Runs the demo until every shop's orders are delivered or `shutdown` completes.
pub async fn run(config: DemoConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
    let hub_url = hub::url_for(listener.local_addr()?);
    let log = EventLog::tagged_stdout("hub");
    log.line(format!("caps hub listening on {hub_url}"));

    let stop_hub = CancellationToken::new();
    let hub = Hub::open(HubConfig::ephemeral())?;
    let hub_task = tokio::spawn(hub.serve(listener, log, stop_hub.clone().cancelled_owned()));

    let stop_roles = CancellationToken::new();
    let mut drivers = JoinSet::new();
    for index in 0..config.drivers {
        let name = pick_name(&DRIVERS, index, "driver");
        let driver_config = DriverConfig {
            hubs: vec![hub_url.clone()],
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
            hubs: vec![hub_url.clone()],
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
    hub_task.await.context("the hub task failed")??;

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
