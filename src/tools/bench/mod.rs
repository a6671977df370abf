//! `caps bench`: a load generator that drives a hub the way vendors and
//! drivers do, and measures it.
//!
//! V vendors each place K orders; D drivers take each offer at once (zero
//! delays). Vendors send either as fast as a window of orders in flight
//! allows (closed loop), or at a fixed offered rate (`--rate`, open loop).
//! For each order the generator records the time from sending `pickup` to
//! hearing `delivered`, counts orders delivered twice (duplicates) or never
//! (lost), and reads the server's CPU time and memory from /proc. Several
//! targets (caps, the Node peer, the echo ceiling) are measured in turns in
//! one run, so their figures can be compared as ratios on a noisy machine.

pub mod echo;
mod node_generator;
pub mod peer;
mod target;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use target::Kind;
use target::Target;

use crate::protocol::{Event, NAMESPACE};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The servers to measure, in turns.
    pub targets: Vec<Kind>,
    /// The load generators to measure each target with, in turns.
    pub generators: Vec<Generator>,
    /// Measure this already running hub instead.
    pub hub: Option<String>,
    /// Its process id, to read its CPU and memory.
    pub hub_pid: Option<u32>,
    /// Extra flags for the `caps hub` processes started.
    pub hub_args: Vec<String>,
    /// The PostgreSQL database of the caps-pg targets (emptied before each).
    pub database: Option<String>,
    /// The shape the vendors, drivers and window came from (for reports).
    pub scenario: Scenario,
    /// Whether vendors acknowledge each notice (`received`, Phase 3); the
    /// course's Phase 2 vendors never do.
    pub acknowledge: bool,
    /// Vendors.
    pub vendors: usize,
    /// Drivers.
    pub drivers: usize,
    /// Orders per vendor.
    pub orders: usize,
    /// Offered orders per second over all vendors; `None` for closed loop.
    pub rate: Option<f64>,
    /// Orders in flight per vendor in closed loop.
    pub window: usize,
    /// Idle driver connections to open first (memory and connection rate).
    pub conns: usize,
    /// How many times to measure each target.
    pub rounds: usize,
    /// Give up on orders not delivered this long after the last was sent.
    pub patience: Duration,
    /// Clients reading the HTTP API in a loop while orders flow (as open
    /// dashboards and scripts do): `/api/status`, then a page of 500 orders.
    pub pollers: usize,
}

/// A shape of load: how many shops and couriers, and how many orders each
/// shop keeps in flight in closed loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// caps's own: 4 vendors, 4 drivers, a window of 64.
    Bench,
    /// The course lab's: 10 shops, 2 couriers, a window of 20.
    Lab,
}

impl BenchConfig {
    /// The scenario and phase, as reports name them (`lab/phase2`).
    pub fn scenario_label(&self) -> String {
        let phase = if self.acknowledge { 3 } else { 2 };
        format!("{}/phase{phase}", self.scenario.label())
    }
}

/// A scenario's numbers.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub vendors: usize,
    pub drivers: usize,
    pub window: usize,
}

impl Scenario {
    /// Its vendors, drivers and window.
    pub fn shape(self) -> Shape {
        match self {
            Scenario::Bench => Shape {
                vendors: 4,
                drivers: 4,
                window: 64,
            },
            Scenario::Lab => Shape {
                vendors: 10,
                drivers: 2,
                window: 20,
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::Bench => "bench",
            Scenario::Lab => "lab",
        }
    }
}

/// Which client drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// caps bench's own client (a minimal Socket.IO client in Rust).
    Rust,
    /// bench/generator.mjs on the official socket.io-client.
    Node,
}

impl Generator {
    fn label(self) -> &'static str {
        match self {
            Generator::Rust => "rust",
            Generator::Node => "node",
        }
    }
}

/// The figures of one measurement.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// What was measured.
    pub target: String,
    /// What drove the load.
    pub generator: String,
    /// The shape of the load and the vendors' phase (`lab/phase2`).
    pub scenario: String,
    /// Offered orders per second; `None` in closed loop.
    pub rate: Option<f64>,
    /// Which round.
    pub round: usize,
    /// Orders sent.
    pub sent: u64,
    /// Orders delivered (each counted once).
    pub delivered: u64,
    /// Orders never delivered.
    pub lost: u64,
    /// Extra deliveries of an order already delivered.
    pub duplicates: u64,
    /// Delivered orders per second, first pickup sent to last delivery heard.
    pub per_second: f64,
    /// Median pickup-to-delivered latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Slowest, in milliseconds.
    pub max_ms: f64,
    /// Server CPU time per 1,000 delivered orders, in milliseconds.
    pub cpu_ms_per_1000: Option<f64>,
    /// PostgreSQL's CPU time per 1,000 delivered orders, in milliseconds
    /// (the caps-pg targets: every `postgres` process of the machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_cpu_ms_per_1000: Option<f64>,
    /// Server peak resident memory, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Idle connections opened per second (with `--conns`).
    pub connects_per_second: Option<f64>,
    /// Server memory per idle connection, in KiB (with `--conns`).
    pub kib_per_connection: Option<f64>,
    /// API reads answered per second (with `--pollers`).
    pub polls_per_second: Option<f64>,
}

/// Runs every round against every target, prints a table and JSON lines,
/// and fails if any order was lost or duplicated.
pub async fn run(config: BenchConfig) -> anyhow::Result<()> {
    let mut results: Vec<Figures> = Vec::new();
    for round in 1..=config.rounds.max(1) {
        if let Some(url) = &config.hub {
            let target = Target::external(url.clone(), config.hub_pid);
            for &generator in &config.generators {
                results.push(match generator {
                    Generator::Rust => measure(&target, "external", round, false, &config).await?,
                    Generator::Node => {
                        node_generator::measure(&target, "external", round, &config).await?
                    }
                });
            }
            continue;
        }
        for &kind in &config.targets {
            for &generator in &config.generators {
                if generator == Generator::Node && kind == Kind::Echo {
                    continue; // the echo server speaks only to the Rust generator
                }
                if kind.group_hubs() > 0 {
                    let database = config
                        .database
                        .as_deref()
                        .context("the caps-pg targets need --database (or CAPS_DATABASE)")?;
                    empty_database(database).await?;
                }
                let target = Target::start(kind, &config.hub_args, config.database.as_deref())?;
                eprintln!(
                    "bench: round {round}: {} at {}, {} generator",
                    kind.label(),
                    target.url,
                    generator.label()
                );
                let figures = match generator {
                    Generator::Rust => {
                        measure(&target, kind.label(), round, kind == Kind::Echo, &config).await?
                    }
                    Generator::Node => {
                        node_generator::measure(&target, kind.label(), round, &config).await?
                    }
                };
                results.push(figures);
            }
        }
    }
    println!(
        "scenario {}: {} vendors, {} drivers, {}, vendors {}",
        config.scenario_label(),
        config.vendors,
        config.drivers,
        match config.rate {
            Some(rate) => format!("{rate} orders/s offered"),
            None => format!("closed loop, a window of {}", config.window),
        },
        if config.acknowledge {
            "acknowledge each notice"
        } else {
            "never acknowledge"
        }
    );
    print_report(&results);
    let bad: Vec<&Figures> = results
        .iter()
        .filter(|f| f.lost > 0 || f.duplicates > 0)
        .collect();
    if !bad.is_empty() {
        bail!(
            "{} run(s) lost or duplicated orders: {}",
            bad.len(),
            bad.iter()
                .map(|f| format!("{} lost={} duplicates={}", f.target, f.lost, f.duplicates))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Drops every table of `database`, so that each measurement of a group
/// starts from an empty schema (the hubs create it).
async fn empty_database(database: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(database)
        .await
        .with_context(|| format!("connecting to {database}"))?;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .execute(&mut connection)
        .await
        .context("emptying the benchmark's database")?;
    Ok(())
}

/// What the vendors share: when each order was sent, and what came back.
#[derive(Default)]
struct Tally {
    sent_at: HashMap<String, Instant>,
    done: HashSet<String>,
    latencies: Vec<Duration>,
    duplicates: u64,
    last_delivery: Option<Instant>,
}

async fn measure(
    target: &Target,
    label: &str,
    round: usize,
    echo: bool,
    config: &BenchConfig,
) -> anyhow::Result<Figures> {
    let (connects_per_second, kib_per_connection) = if config.conns > 0 {
        let (rate, per) = idle_connections(target, config.conns).await?;
        (Some(rate), per)
    } else {
        (None, None)
    };

    // Drivers: take every offer at once.
    let mut drivers = JoinSet::new();
    if !echo {
        for index in 0..config.drivers {
            let auth = json!({"role": "driver", "name": format!("bench-driver-{index}"), "capacity": 10_000});
            let url = target.url_for(index);
            let (mut sender, mut receiver) = wire::connect(url, NAMESPACE, &auth).await?;
            drivers.spawn(async move {
                while let Some(frame) = receiver.next().await {
                    match frame {
                        wire::Frame::Ping => {
                            let _ = sender.pong().await;
                        }
                        wire::Frame::Event(incoming) if incoming.event == Event::Pickup.name() => {
                            let order = incoming.payload.to_string();
                            if sender
                                .emit_raw(Event::InTransit.name(), &order)
                                .await
                                .is_err()
                                || sender
                                    .emit_raw(Event::Delivered.name(), &order)
                                    .await
                                    .is_err()
                            {
                                return;
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let total = (config.vendors * config.orders) as u64;
    let cpu_before = target.cpu();
    let db_before = target.on_database.then(target::database_cpu);
    let started = Instant::now();
    let mut vendors = JoinSet::new();
    for index in 0..config.vendors {
        let store = format!("bench-store-{index}");
        let auth = json!({"role": "vendor", "store": store});
        let (sender, receiver) = wire::connect(target.url_for(index), NAMESPACE, &auth).await?;
        let window = Arc::new(Semaphore::new(config.window.max(1)));
        let per_vendor_rate = config.rate.map(|rate| rate / config.vendors as f64);
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        vendors.spawn(listen(
            receiver,
            Arc::clone(&sender),
            Arc::clone(&tally),
            Arc::clone(&window),
            echo,
            config.acknowledge,
        ));
        vendors.spawn(place(
            sender,
            store,
            config.orders,
            per_vendor_rate,
            window,
            Arc::clone(&tally),
        ));
    }

    let polls = Arc::new(AtomicU64::new(0));
    let stop_polling = Arc::new(AtomicBool::new(false));
    let pollers = (config.pollers > 0).then(|| {
        poll_beside(
            target.url.clone(),
            config.pollers,
            Arc::clone(&polls),
            Arc::clone(&stop_polling),
        )
    });

    // Wait for every delivery, or until nothing has come for `patience`.
    let mut last_progress = (0usize, Instant::now());
    loop {
        let done = tally.lock().expect("tally lock").done.len();
        if done as u64 >= total {
            break;
        }
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > config.patience {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after = target.cpu();
    let db_after = target.on_database.then(target::database_cpu);
    vendors.abort_all();
    drivers.abort_all();
    stop_polling.store(true, Ordering::Relaxed);
    if let Some(pollers) = pollers {
        let _ = pollers.join();
    }
    let polled = polls.load(Ordering::Relaxed);

    let tally = tally.lock().expect("tally lock");
    let delivered = tally.done.len() as u64;
    let elapsed = tally
        .last_delivery
        .map(|last| last.duration_since(started))
        .unwrap_or_else(|| started.elapsed());
    let mut latencies = tally.latencies.clone();
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    let cpu_ms_per_1000 = cpu_per_1000(cpu_before, cpu_after, delivered);
    Ok(Figures {
        target: label.to_owned(),
        generator: "rust".to_owned(),
        scenario: config.scenario_label(),
        rate: config.rate,
        round,
        sent: tally.sent_at.len() as u64,
        delivered,
        lost: total.saturating_sub(delivered),
        duplicates: tally.duplicates,
        per_second: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        cpu_ms_per_1000,
        db_cpu_ms_per_1000: cpu_per_1000(db_before, db_after, delivered),
        peak_rss_mib: target.peak_rss_mib(),
        connects_per_second,
        kib_per_connection,
        polls_per_second: (config.pollers > 0)
            .then(|| polled as f64 / started.elapsed().as_secs_f64().max(1e-9)),
    })
}

/// The server's CPU time per 1,000 delivered orders, in milliseconds, from
/// its CPU time read before and after the load.
pub(super) fn db_cpu_per_1000(
    target: &Target,
    before: Option<Duration>,
    delivered: u64,
) -> Option<f64> {
    cpu_per_1000(
        before,
        target.on_database.then(target::database_cpu),
        delivered,
    )
}

fn cpu_per_1000(before: Option<Duration>, after: Option<Duration>, delivered: u64) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if delivered > 0 => {
            Some((after - before).as_secs_f64() * 1000.0 * 1000.0 / delivered as f64)
        }
        _ => None,
    }
}

/// The server's growth in resident memory per connection opened, in KiB.
fn kib_per_connection(before: Option<u64>, after: Option<u64>, connections: usize) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / 1024.0 / connections.max(1) as f64)
        }
        _ => None,
    }
}

/// Runs `clients` API readers on a thread of their own (with its own
/// runtime, so they do not delay the vendors' and drivers' tasks) until
/// `stop` is set.
fn poll_beside(
    url: String,
    clients: usize,
    polls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the pollers");
        runtime.block_on(async move {
            let mut readers = JoinSet::new();
            for _ in 0..clients {
                readers.spawn(poll_api(url.clone(), Arc::clone(&polls)));
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            readers.abort_all();
        });
    })
}

/// One API reader: the board, then a page of orders, again and again.
async fn poll_api(url: String, polls: Arc<AtomicU64>) {
    let client = reqwest::Client::new();
    let paths = [
        crate::api::STATUS_PATH.to_owned(),
        format!("{}?limit=500", crate::api::ORDERS_PATH),
    ];
    for path in paths.iter().cycle() {
        let answered = match client.get(format!("{url}{path}")).send().await {
            Ok(response) => response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if answered {
            polls.fetch_add(1, Ordering::Relaxed);
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One vendor's sending side.
async fn place(
    sender: Arc<tokio::sync::Mutex<wire::Sender>>,
    store: String,
    orders: usize,
    rate: Option<f64>,
    window: Arc<Semaphore>,
    tally: Arc<Mutex<Tally>>,
) {
    let pace = rate.map(|rate| Duration::from_secs_f64(1.0 / rate.max(1e-3)));
    let mut ticker = pace.map(|pace| {
        let mut ticker = tokio::time::interval(pace);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    for n in 0..orders {
        match &mut ticker {
            Some(ticker) => {
                ticker.tick().await;
            }
            None => match window.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            },
        }
        let order_id = format!("{store}-{n}-{}", uuid::Uuid::new_v4().simple());
        let order = json!({"store": store, "orderId": order_id, "customer": "Bench Customer", "address": "Benchtown, BT"});
        tally
            .lock()
            .expect("tally lock")
            .sent_at
            .insert(order_id, Instant::now());
        if sender
            .lock()
            .await
            .emit_raw(Event::Pickup.name(), &order.to_string())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One vendor's receiving side: record deliveries, and acknowledge them
/// (`acknowledge`: Phase 3).
async fn listen(
    mut receiver: wire::Receiver,
    sender: Arc<tokio::sync::Mutex<wire::Sender>>,
    tally: Arc<Mutex<Tally>>,
    window: Arc<Semaphore>,
    echo: bool,
    acknowledge: bool,
) {
    let delivered_event = if echo {
        Event::Pickup.name()
    } else {
        Event::Delivered.name()
    };
    while let Some(frame) = receiver.next().await {
        let incoming = match frame {
            wire::Frame::Ping => {
                let _ = sender.lock().await.pong().await;
                continue;
            }
            wire::Frame::Event(incoming) if incoming.event == delivered_event => incoming,
            _ => continue,
        };
        let Some(order_id) = incoming.payload["orderId"].as_str() else {
            continue;
        };
        let first = {
            let mut tally = tally.lock().expect("tally lock");
            let now = Instant::now();
            if tally.done.insert(order_id.to_owned()) {
                if let Some(sent) = tally.sent_at.get(order_id).copied() {
                    tally.latencies.push(now.duration_since(sent));
                }
                tally.last_delivery = Some(now);
                true
            } else {
                tally.duplicates += 1;
                false
            }
        };
        if first {
            window.add_permits(1);
        }
        if let Some(message_id) = incoming.payload["messageId"].as_str()
            && acknowledge
        {
            let store = incoming.payload["store"].as_str().unwrap_or_default();
            let received = json!({"queueId": store, "event": "delivered", "messageId": message_id});
            if sender
                .lock()
                .await
                .emit_raw(Event::Received.name(), &received.to_string())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Opens `count` idle driver connections; returns connections per second
/// and the server's memory per connection (KiB), then closes them.
async fn idle_connections(target: &Target, count: usize) -> anyhow::Result<(f64, Option<f64>)> {
    let rss_before = target.rss();
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(256));
    let mut opening = JoinSet::new();
    for index in 0..count {
        let url = target.url_for(index).to_owned();
        let limit = Arc::clone(&limit);
        opening.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let auth = json!({"role": "driver", "name": format!("idle-{index}"), "capacity": 1});
            wire::connect(&url, NAMESPACE, &auth).await
        });
    }
    let mut held = Vec::with_capacity(count);
    while let Some(opened) = opening.join_next().await {
        held.push(opened.context("a connecting task failed")??);
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    // Let the server settle (its per-connection tasks start), then read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = kib_per_connection(rss_before, target.rss(), count);
    for (sender, _) in held {
        sender.close().await;
    }
    Ok((rate, per))
}

fn print_report(results: &[Figures]) {
    println!(
        "{:<15} {:<5} {:>5} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>5} {:>11} {:>9} {:>9} {:>8}",
        "target",
        "gen",
        "round",
        "delivered",
        "lost",
        "per sec",
        "p50 ms",
        "p99 ms",
        "max ms",
        "dup",
        "cpu/1k ms",
        "peak MiB",
        "conn/s",
        "KiB/conn"
    );
    let show = |value: Option<f64>, digits: usize| {
        value.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
    };
    for f in results {
        println!(
            "{:<15} {:<5} {:>5} {:>9} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>5} {:>11} {:>9} {:>9} {:>8}",
            f.target,
            f.generator,
            f.round,
            f.delivered,
            f.lost,
            f.per_second,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.duplicates,
            show(f.cpu_ms_per_1000, 1),
            show(f.peak_rss_mib, 1),
            show(f.connects_per_second, 0),
            show(f.kib_per_connection, 1),
        );
    }
    for f in results {
        if let Ok(line) = serde_json::to_string(f) {
            println!("{line}");
        }
    }
    let mut generators: Vec<&str> = Vec::new();
    for f in results {
        if !generators.contains(&f.generator.as_str()) {
            generators.push(&f.generator);
        }
    }
    for generator in generators {
        let measured: Vec<Figures> = results
            .iter()
            .filter(|f| f.generator == generator)
            .cloned()
            .collect();
        print_ratios(generator, &measured);
    }
}

/// Medians per target, and caps's against each other target, for the
/// figures of one generator.
fn print_ratios(generator: &str, results: &[Figures]) {
    let median = |target: &str, pick: &dyn Fn(&Figures) -> Option<f64>| -> Option<f64> {
        let mut values: Vec<f64> = results
            .iter()
            .filter(|f| f.target == target)
            .filter_map(pick)
            .collect();
        values.sort_by(|a, b| a.total_cmp(b));
        values.get(values.len() / 2).copied()
    };
    let Some(caps) = ["caps", "caps-ephemeral", "external"]
        .into_iter()
        .find(|t| results.iter().any(|f| f.target == *t))
    else {
        return;
    };
    let mut others: Vec<&str> = Vec::new();
    for f in results {
        if f.target != caps && !others.contains(&f.target.as_str()) {
            others.push(&f.target);
        }
    }
    for other in others {
        let ratio = |pick: &dyn Fn(&Figures) -> Option<f64>| match (
            median(caps, pick),
            median(other, pick),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        println!(
            "ratio {caps}/{other} ({generator} generator, medians): per-second {}  p99 {}  cpu/1k {}  KiB/conn {}  conn/s {}",
            ratio(&|f| Some(f.per_second)),
            ratio(&|f| Some(f.p99_ms)),
            ratio(&|f| f.cpu_ms_per_1000),
            ratio(&|f| f.kib_per_connection),
            ratio(&|f| f.connects_per_second),
        );
    }
}
