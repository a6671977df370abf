//! The scale suite (`make test-scale`, run by CI after `make test`): our own
//! clients against our own hub, every one at its default limits, with
//! thousands of orders. Nothing is stranded, nothing is thanked twice, and
//! no client is dropped for flooding.
//!
//! These take minutes rather than seconds (the hub's default rate limit is
//! the point), so they are `#[ignore]`d in the quick suite.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Proc, ids_after, port_of, start_hub_with, wait_for_status};
use rusqlite::{Connection, OpenFlags};

const STORE: &str = "acme";
const PLACED: &str = "VENDOR: order ";
const THANKS: &str = "VENDOR: Thank you for delivering ";
/// The longest a whole run may take; runs take a third of it on 2 cores.
const RUN_LIMIT: Duration = Duration::from_secs(540);

fn hub_on(dir: &Path, port: &str) -> (Proc, String) {
    start_hub_with(&["--port", port, "--data-dir", dir.to_str().unwrap()])
}

/// A driver at its default capacity and limits, quick on the road.
fn driver(url: &str, name: &str) -> Proc {
    common::driver(url, name, "1ms", "1ms", &[])
}

fn vendor(url: &str, state_file: &Path, count: usize, interval: &str) -> Proc {
    let count = count.to_string();
    Proc::caps(
        "vendor",
        &[
            "vendor",
            "--hub",
            url,
            "--store",
            STORE,
            "--count",
            &count,
            "--interval",
            interval,
            "--state-file",
            state_file.to_str().unwrap(),
        ],
    )
}

/// How often each id was thanked.
fn thanks(vendor: &Proc) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids_after(&vendor.stdout(), THANKS) {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

fn wait_for_thanks(vendor: &Proc, n: usize, others: &[&Proc]) {
    let deadline = Instant::now() + RUN_LIMIT;
    while thanks(vendor).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} thank-yous\n{}\n{}",
            vendor.describe(),
            others
                .iter()
                .map(|p| p.describe())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_thanked_once_each(vendor: &Proc, expected: &HashSet<String>) {
    let thanked = thanks(vendor);
    let twice: Vec<_> = thanked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "thanked more than once: {twice:?}");
    let thanked: HashSet<String> = thanked.into_keys().collect();
    assert_eq!(thanked.len(), expected.len());
    assert!(&thanked == expected, "thanked for other orders than placed");
}

/// No client was dropped for flooding and none lost its connection.
fn assert_no_disconnect_loop(hub: &Proc, clients: &[&Proc]) {
    let floods = hub
        .stderr()
        .into_iter()
        .filter(|line| line.contains("over its rate limit"))
        .count();
    assert_eq!(floods, 0, "the hub dropped a client for flooding");
    for client in clients {
        assert!(
            !client.logged("lost the hub"),
            "a client lost the hub:\n{}",
            client.describe()
        );
    }
}

/// One `delivered` transition per order, and no notice left queued.
fn assert_history_exactly_once(dir: &Path, expected: &HashSet<String>) {
    let delivered = common::delivered_transitions(dir);
    assert!(
        delivered.values().all(|n| *n == 1),
        "a delivered transition was repeated"
    );
    assert!(&delivered.into_keys().collect::<HashSet<_>>() == expected);
    let db =
        Connection::open_with_flags(dir.join("caps.db"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let queued: i64 = db
        .query_row("SELECT count(*) FROM notices", [], |row| row.get(0))
        .unwrap();
    assert_eq!(queued, 0, "notices left queued");
}

#[test]
#[ignore = "scale suite: make test-scale"]
fn a_restarted_vendor_with_10000_outstanding_orders_has_each_delivered_and_thanked_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("vendor.state");
    // What a vendor that placed 10,000 orders and was killed before the hub
    // heard of them leaves behind: its ledger, in the format it writes.
    let mut placed = HashSet::new();
    let mut ledger = std::io::BufWriter::new(std::fs::File::create(&state_file).unwrap());
    for n in 0..10_000 {
        let order_id = format!("scale-{n:05}");
        let record = serde_json::json!({"placed": {
            "store": STORE, "orderId": order_id,
            "customer": format!("Customer {n}"), "address": "1 Main St, Springfield"
        }});
        writeln!(ledger, "{record}").unwrap();
        placed.insert(order_id);
    }
    drop(ledger);

    let (mut hub, url) = hub_on(dir.path(), "0");
    let mut vendor = vendor(&url, &state_file, 10_000, "1h");
    vendor.wait_for_log("outstanding=10000");
    let drivers: Vec<Proc> = (1..=3)
        .map(|n| driver(&url, &format!("courier-{n}")))
        .collect();

    let mut everyone: Vec<&Proc> = vec![&hub];
    everyone.extend(&drivers);
    let status = vendor.wait_exit_within(RUN_LIMIT, &everyone);
    assert!(status.success(), "{}", vendor.describe());

    assert_thanked_once_each(&vendor, &placed);
    let mut clients: Vec<&Proc> = vec![&vendor];
    clients.extend(&drivers);
    assert_no_disconnect_loop(&hub, &clients);
    wait_for_status(&url, "all delivered and acknowledged", |status| {
        status["orders"]["delivered"] == 10_000 && status["queues"].as_array().unwrap().is_empty()
    });
    drop(drivers);
    hub.signal("TERM");
    hub.wait_exit();
    assert_history_exactly_once(dir.path(), &placed);
}

#[test]
#[ignore = "scale suite: make test-scale"]
fn three_thousand_orders_through_four_hub_crashes_and_two_courier_crashes_are_each_thanked_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("vendor.state");
    let (mut hub, url) = hub_on(dir.path(), "0");
    let port = port_of(&url).to_string();
    let mut drivers: Vec<Proc> = (1..=3)
        .map(|n| driver(&url, &format!("courier-{n}")))
        .collect();
    let mut vendor = vendor(&url, &state_file, 3_000, "1ms");

    let crash_hub = |hub: &mut Proc| {
        hub.signal("KILL");
        hub.wait_exit();
        *hub = hub_on(dir.path(), &port).0;
    };
    let crash_driver = |drivers: &mut Vec<Proc>, n: usize| {
        drivers[n].signal("KILL");
        drivers[n].wait_exit();
        drivers[n] = driver(&url, &format!("courier-{}", n + 1));
    };
    wait_for_thanks(&vendor, 300, &[&hub]);
    crash_hub(&mut hub);
    wait_for_thanks(&vendor, 700, &[&hub]);
    crash_driver(&mut drivers, 0);
    wait_for_thanks(&vendor, 1_100, &[&hub]);
    crash_hub(&mut hub);
    wait_for_thanks(&vendor, 1_500, &[&hub]);
    crash_driver(&mut drivers, 1);
    crash_hub(&mut hub);
    wait_for_thanks(&vendor, 2_200, &[&hub]);
    crash_hub(&mut hub);

    let mut everyone: Vec<&Proc> = vec![&hub];
    everyone.extend(&drivers);
    let status = vendor.wait_exit_within(RUN_LIMIT, &everyone);
    assert!(status.success(), "{}", vendor.describe());

    let placed: HashSet<String> = ids_after(&vendor.stdout(), PLACED).into_iter().collect();
    assert_eq!(placed.len(), 3_000);
    assert_thanked_once_each(&vendor, &placed);
    wait_for_status(&url, "all delivered and acknowledged", |status| {
        status["orders"]["delivered"] == 3_000 && status["queues"].as_array().unwrap().is_empty()
    });
    drop(drivers);
    hub.signal("TERM");
    hub.wait_exit();
    assert_history_exactly_once(dir.path(), &placed);
}
