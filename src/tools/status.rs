//! `caps status`, `caps track` and `caps reclaim`: a hub's HTTP API from the
//! command line.

use std::fmt::Write as _;

use anyhow::{Context, bail};

use crate::api::{ORDERS_PATH, OrderView, Reclaimed, STATUS_PATH, Status, reclaim_path};

/// GETs `path` from the hub, with `token` as a bearer token; an error reply
/// becomes an error carrying the hub's own message.
async fn get(hub_url: &str, path: &str, token: Option<&str>) -> anyhow::Result<reqwest::Response> {
    call(reqwest::Method::GET, hub_url, path, token).await
}

/// Sends `method` to `path` on the hub; as [`get`].
async fn call(
    method: reqwest::Method,
    hub_url: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let url = format!("{hub_url}{path}");
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach hub at {hub_url}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let reason = body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        let code = body["error"]["code"].as_str().unwrap_or("error");
        bail!("the hub answered {status}: {code}: {reason}");
    }
    Ok(response)
}

/// Fetches the board from the hub at `hub_url` and prints it (as a table, or
/// as the hub's JSON).
pub async fn print(hub_url: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let response = get(hub_url, STATUS_PATH, token).await?;
    if json {
        println!("{}", response.text().await.context("reading the status")?);
        return Ok(());
    }
    let status: Status = response.json().await.context("reading the status")?;
    print!("{}", render(&status));
    Ok(())
}

/// Prints one order's history.
pub async fn track(
    hub_url: &str,
    token: Option<&str>,
    order_id: &str,
    store: Option<&str>,
) -> anyhow::Result<()> {
    let mut path = format!("{ORDERS_PATH}/{}", encode(order_id));
    if let Some(store) = store {
        path.push_str(&format!("?store={}", encode(store)));
    }
    let view: OrderView = get(hub_url, &path, token)
        .await?
        .json()
        .await
        .context("reading the order")?;
    print!("{}", render_track(&view));
    Ok(())
}

/// Hands driver `name`'s packages back to `ready`, and says how many.
pub async fn reclaim(hub_url: &str, token: Option<&str>, name: &str) -> anyhow::Result<()> {
    let path = reclaim_path(&encode(name));
    let answer: Reclaimed = call(reqwest::Method::POST, hub_url, &path, token)
        .await?
        .json()
        .await
        .context("reading the answer")?;
    println!(
        "handed {} packages of driver {} back for other drivers",
        answer.reclaimed, answer.driver
    );
    Ok(())
}

/// Percent-encodes a path or query component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// An order's history as text.
pub fn render_track(view: &OrderView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "order {} of store {}: {}",
        view.order_id, view.store, view.state
    );
    let _ = writeln!(out, "  for {}, {}", view.customer, view.address);
    for step in &view.history {
        let _ = writeln!(
            out,
            "  {}  {:<11} {}",
            step.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            step.state,
            step.driver.as_deref().unwrap_or("")
        );
    }
    out
}

/// The board as text.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let counts = &status.orders;
    let counted: Vec<String> = counts
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    let _ = writeln!(out, "orders: {}", counted.join(", "));

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
