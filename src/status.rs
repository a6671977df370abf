//! `caps status`: read a hub's dispatch board over HTTP and print it.

use std::fmt::Write as _;

use anyhow::Context;

use crate::api::{STATUS_PATH, Status};

/// Fetches the board from the hub at `hub_url` and prints it (as a table, or
/// as the hub's JSON).
pub async fn print(hub_url: &str, json: bool) -> anyhow::Result<()> {
    let url = format!("{hub_url}{STATUS_PATH}");
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("cannot reach hub at {hub_url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?;
    if json {
        println!("{}", response.text().await.context("reading the status")?);
        return Ok(());
    }
    let status: Status = response.json().await.context("reading the status")?;
    print!("{}", render(&status));
    Ok(())
}

/// The board as text.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let counts = &status.orders;
    let _ = writeln!(
        out,
        "orders: {} ready, {} assigned, {} in-transit, {} delivered",
        counts.ready, counts.assigned, counts.in_transit, counts.delivered
    );

    let online = status.drivers.iter().filter(|d| d.online).count();
    let _ = writeln!(out, "\ndrivers: {online} online");
    if !status.drivers.is_empty() {
        let _ = writeln!(
            out,
            "  {:<24} {:<7} {:>9} {:>5} {:>10}",
            "NAME", "ONLINE", "LOAD/CAP", "PEAK", "DELIVERED"
        );
        for driver in &status.drivers {
            let capacity = driver.capacity.map_or("-".to_owned(), |c| c.to_string());
            let _ = writeln!(
                out,
                "  {:<24} {:<7} {:>9} {:>5} {:>10}",
                driver.name,
                if driver.online { "yes" } else { "no" },
                format!("{}/{capacity}", driver.load),
                driver.peak_load,
                driver.delivered
            );
        }
    }

    let _ = writeln!(out, "\nstores online: {}", status.stores.len());
    for store in &status.stores {
        let _ = writeln!(
            out,
            "  {} ({} vendor connections)",
            store.store, store.vendors
        );
    }

    let queued: u64 = status.queues.iter().map(|queue| queue.queued).sum();
    let _ = writeln!(out, "\nnotices awaiting acknowledgement: {queued}");
    for queue in &status.queues {
        let _ = writeln!(out, "  {} ({} queued)", queue.store, queue.queued);
    }

    let _ = writeln!(out, "\nopen orders: {}", status.open_orders.len());
    if !status.open_orders.is_empty() {
        let _ = writeln!(
            out,
            "  {:<11} {:<20} {:<38} {:<24} SINCE",
            "STATE", "STORE", "ORDER", "DRIVER"
        );
        for order in &status.open_orders {
            let _ = writeln!(
                out,
                "  {:<11} {:<20} {:<38} {:<24} {}",
                order.state,
                order.store,
                order.order_id,
                order.driver.as_deref().unwrap_or("-"),
                order
                    .since
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }
    out
}
