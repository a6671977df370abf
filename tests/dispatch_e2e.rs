//! Dispatch through real processes: one driver per package, nothing stuck,
//! capacity respected; checked from what a store is told and from the hub's
//! own board (`caps status`).

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;

use common::{
    Proc, StoreWatcher, ids_after, repo_root, start_hub, start_hub_with, wait_for_status,
};

const STORE: &str = "acme";

fn rust_driver(url: &str, name: &str, extra: &[&str]) -> Proc {
    common::driver(url, name, "5ms", "10ms", extra)
}

fn lab_driver(url: &str) -> Proc {
    let root = repo_root();
    assert!(
        root.join("node_modules/socket.io-client").is_dir(),
        "run `npm ci` first"
    );
    let mut node = Command::new("node");
    node.arg(root.join("tests/js/lab/driver.mjs"))
        .env("CAPS_URL", format!("{url}/caps"))
        .env("PICKUP_MS", "5")
        .env("DELIVER_MS", "10")
        .env("TRANSPORTS", "websocket");
    Proc::spawn("lab driver", node)
}

fn vendor(url: &str, count: usize, interval: &str) -> Proc {
    common::vendor(url, STORE, interval, count, &[])
}

/// The store was told of every placed order exactly once in transit and
/// exactly once delivered, and the vendor thanked once per order.
fn assert_exactly_once(vendor: &Proc, watcher: &StoreWatcher, count: usize) {
    let placed: HashSet<String> = ids_after(&vendor.stdout(), "VENDOR: order ")
        .into_iter()
        .collect();
    let thanked = ids_after(&vendor.stdout(), "VENDOR: Thank you for delivering ");
    assert_eq!(placed.len(), count, "{}", vendor.describe());
    assert_eq!(thanked.len(), count, "{}", vendor.describe());
    assert_eq!(thanked.into_iter().collect::<HashSet<_>>(), placed);
    for event in ["in-transit", "delivered"] {
        let counts: HashMap<String, usize> = watcher.counts(event);
        let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            repeated.is_empty(),
            "the store heard {event} more than once: {repeated:?}"
        );
        assert_eq!(
            counts.keys().cloned().collect::<HashSet<_>>(),
            placed,
            "{event}"
        );
    }
    assert!(
        watcher.counts("pickup").is_empty(),
        "a vendor must never be offered a package"
    );
}

/// Waits until the hub has delivered `count` orders and holds none open.
fn wait_until_all_delivered(url: &str, count: u64) -> serde_json::Value {
    wait_for_status(url, "all orders delivered", |status| {
        status["orders"]["delivered"] == count
            && status["openOrders"].as_array().unwrap().is_empty()
    })
}

/// Two slow drivers, "victim" and "steady", 40 orders on their way, and the
/// victim holding a package in transit.
struct VictimRun {
    victim: Proc,
    _steady: Proc,
    watcher: StoreWatcher,
    vendor: Proc,
}

fn start_victim_run(hub: &Proc, url: &str) -> VictimRun {
    let slow = ["--deliver-delay", "300ms"];
    let victim = rust_driver(url, "victim", &slow);
    let steady = rust_driver(url, "steady", &slow);
    hub.wait_for_log("driver name=victim");
    hub.wait_for_log("driver name=steady");
    let watcher = StoreWatcher::start(url, STORE);
    let vendor = vendor(url, 40, "10ms");
    wait_for_victim_in_transit(url);
    VictimRun {
        victim,
        _steady: steady,
        watcher,
        vendor,
    }
}

/// Waits until the hub records the driver "victim" carrying a package.
fn wait_for_victim_in_transit(url: &str) {
    wait_for_status(url, "victim carrying a package", |status| {
        status["openOrders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|order| order["state"] == "in-transit" && order["driver"] == "victim")
    });
}

#[test]
fn three_rust_drivers_deliver_200_orders_exactly_once() {
    let (hub, url) = start_hub(0);
    let _drivers: Vec<Proc> = ["alice", "bob", "carol"]
        .iter()
        .map(|name| rust_driver(&url, name, &[]))
        .collect();
    for name in ["alice", "bob", "carol"] {
        hub.wait_for_log(&format!("driver name={name}"));
    }
    let watcher = StoreWatcher::start(&url, STORE);
    let mut vendor = vendor(&url, 200, "2ms");
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());

    let status = wait_until_all_delivered(&url, 200);
    assert_exactly_once(&vendor, &watcher, 200);
    let per_driver: Vec<u64> = status["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivered"].as_u64().unwrap())
        .collect();
    assert_eq!(per_driver.iter().sum::<u64>(), 200);
    assert!(
        per_driver.iter().all(|n| *n > 0),
        "every driver got work: {per_driver:?}"
    );
}

#[test]
fn three_lab_js_drivers_deliver_200_orders_exactly_once() {
    let (hub, url) = start_hub(0);
    let drivers: Vec<Proc> = (0..3).map(|_| lab_driver(&url)).collect();
    wait_for_status(&url, "three anonymous drivers online", |status| {
        status["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["online"] == true)
            .count()
            == 3
    });
    let watcher = StoreWatcher::start(&url, STORE);
    let mut vendor = vendor(&url, 200, "2ms");
    let exited = vendor.wait_exit_or_describe(&[&hub, &drivers[0], &drivers[1], &drivers[2]]);
    assert!(exited.success(), "{}", vendor.describe());
    wait_until_all_delivered(&url, 200);
    assert_exactly_once(&vendor, &watcher, 200);
}

#[test]
fn a_driver_killed_mid_run_resumes_its_packages_when_restarted() {
    let (hub, url) = start_hub(0);
    let VictimRun {
        mut victim,
        _steady,
        watcher,
        mut vendor,
    } = start_victim_run(&hub, &url);
    victim.signal("KILL");
    victim.wait_exit();
    let held = wait_for_status(&url, "the victim offline holding packages", |status| {
        status["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "victim" && d["online"] == false)
    });
    let victim_status = held["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "victim")
        .unwrap()
        .clone();
    assert!(
        victim_status["load"].as_u64().unwrap() > 0,
        "it was carrying: {victim_status}"
    );

    let restarted = rust_driver(&url, "victim", &["--deliver-delay", "300ms"]);
    assert!(
        vendor.wait_exit().success(),
        "{}\n{}",
        vendor.describe(),
        restarted.describe()
    );
    wait_until_all_delivered(&url, 40);
    assert_exactly_once(&vendor, &watcher, 40);
}

#[test]
fn a_driver_killed_for_good_has_its_packages_reclaimed_by_others() {
    let (hub, url) = start_hub_with(&["--port", "0", "--ephemeral", "--reclaim-after", "300ms"]);
    let VictimRun {
        victim,
        _steady,
        watcher,
        mut vendor,
    } = start_victim_run(&hub, &url);
    victim.signal("KILL");
    assert!(
        vendor.wait_exit().success(),
        "{}\n{}",
        vendor.describe(),
        hub.describe()
    );
    wait_until_all_delivered(&url, 40);
    assert_exactly_once(&vendor, &watcher, 40);
    hub.wait_for_log("offline too long; re-dispatching");
}

#[test]
fn pickups_made_while_no_driver_is_up_are_delivered_once_one_starts() {
    let (_hub, url) = start_hub(0);
    let watcher = StoreWatcher::start(&url, STORE);
    let mut vendor = vendor(&url, 5, "10ms");
    vendor.wait_for_count("ready for pickup", 5);
    wait_for_status(&url, "five orders waiting", |status| {
        status["orders"]["ready"] == 5
    });

    let _driver = rust_driver(&url, "late", &[]);
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    wait_until_all_delivered(&url, 5);
    assert_exactly_once(&vendor, &watcher, 5);
}

#[test]
fn a_driver_never_holds_more_than_its_capacity() {
    let (hub, url) = start_hub(0);
    let _driver = rust_driver(
        &url,
        "small-van",
        &["--capacity", "2", "--deliver-delay", "200ms"],
    );
    hub.wait_for_log("driver name=small-van");
    let mut vendor = vendor(&url, 8, "1ms");

    // While orders wait, the van is full, and no fuller.
    let busy = wait_for_status(&url, "a full van with orders waiting", |status| {
        status["drivers"][0]["load"] == 2 && status["orders"]["ready"].as_u64().unwrap() > 0
    });
    assert_eq!(busy["drivers"][0]["capacity"], 2);
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    let done = wait_until_all_delivered(&url, 8);
    assert_eq!(
        done["drivers"][0]["peakLoad"], 2,
        "the hub's own record of the most it ever held"
    );
}

#[test]
fn caps_status_prints_the_board() {
    let (hub, url) = start_hub(0);
    let _driver = rust_driver(&url, "alice", &["--capacity", "3"]);
    hub.wait_for_log("driver name=alice");
    let mut vendor = vendor(&url, 2, "10ms");
    assert!(vendor.wait_exit().success());
    wait_until_all_delivered(&url, 2);

    let mut status = Proc::caps("status", &["status", "--hub", &url]);
    assert!(status.wait_exit().success(), "{}", status.describe());
    let out = status.stdout().join("\n");
    assert!(
        out.contains("orders: 0 ready, 0 assigned, 0 in-transit, 2 delivered"),
        "{out}"
    );
    assert!(out.contains("drivers: 1 online"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("alice") && l.contains("0/3")),
        "{out}"
    );
    assert!(
        out.contains("stores online: 0"),
        "the vendor has left: {out}"
    );
}

#[test]
fn caps_track_prints_an_orders_history() {
    let (hub, url) = start_hub(0);
    let _driver = rust_driver(&url, "alice", &[]);
    hub.wait_for_log("driver name=alice");
    let mut vendor = vendor(&url, 1, "10ms");
    assert!(vendor.wait_exit().success());
    let id = ids_after(&vendor.stdout(), "VENDOR: order ").remove(0);
    wait_until_all_delivered(&url, 1);

    let mut track = Proc::caps("track", &["track", &id, "--hub", &url]);
    assert!(track.wait_exit().success(), "{}", track.describe());
    let out = track.stdout();
    assert_eq!(
        out[0],
        format!("order {id} of store {STORE}: delivered"),
        "{out:?}"
    );
    let states: Vec<&str> = out[2..]
        .iter()
        .map(|line| line.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(states, ["ready", "assigned", "in-transit", "delivered"]);
    assert!(out.last().unwrap().ends_with("alice"));

    let mut missing = Proc::caps("track", &["track", "no-such-order", "--hub", &url]);
    assert_eq!(missing.wait_exit().code(), Some(1));
    assert!(
        missing
            .stderr()
            .join("\n")
            .contains("404 Not Found: unknown_order: no such order: no-such-order")
    );
}

/// A `caps driver` given no name, keeping its state in `state_dir`.
fn nameless_driver(url: &str, state_dir: &std::path::Path, deliver: &str) -> Proc {
    let mut command = common::caps_command(&[
        "driver",
        "--hub",
        url,
        "--pickup-delay",
        "10ms",
        "--deliver-delay",
        deliver,
    ]);
    command.env("XDG_STATE_HOME", state_dir);
    Proc::spawn("nameless", command)
}

#[test]
fn a_driver_given_no_name_is_the_same_courier_after_a_crash() {
    let (hub, url) = start_hub(0);
    let state = tempfile::tempdir().unwrap();
    // It picks up every package, then takes an hour to deliver.
    let mut first = nameless_driver(&url, state.path(), "1h");
    let name_line = first.wait_for_log("driver name=");
    let name = name_line
        .split("driver name=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let watcher = StoreWatcher::start(&url, STORE);
    let mut shop = vendor(&url, 5, "10ms");
    wait_for_status(&url, "five packages in transit", |status| {
        status["orders"]["in-transit"] == 5
    });
    first.signal("KILL");
    first.wait_exit();

    let again = nameless_driver(&url, state.path(), "10ms");
    again.wait_for_log(&format!("driver name={name} "));
    // Seen once in CI: the shop never heard its deliveries. On a hang this
    // shows what the hub and the second driver said.
    assert!(
        shop.wait_exit_or_describe(&[&again, &hub]).success(),
        "{}\n{}",
        shop.describe(),
        again.describe()
    );
    let status = wait_until_all_delivered(&url, 5);
    let drivers: Vec<&str> = status["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(drivers, [name.as_str()], "one courier, under one name");
    assert_exactly_once(&shop, &watcher, 5);
}

#[test]
fn clients_over_a_hubs_low_rate_limit_slow_down_retry_and_strand_nothing() {
    // A hub that lets each connection send 20 events a second, a fifth of
    // what our clients send by default: they are refused rate_limited, slow
    // down and send the refused events again.
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = common::start_hub_with(&[
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--rate-limit",
        "20",
    ]);
    let _driver = common::driver(&url, "bob", "1ms", "1ms", &["--capacity", "100"]);
    hub.wait_for_log("driver name=bob");
    let watcher = StoreWatcher::start(&url, STORE);
    let mut shop = vendor(&url, 30, "1ms");
    assert!(
        shop.wait_exit_or_describe(&[&hub]).success(),
        "{}",
        shop.describe()
    );
    let status = wait_until_all_delivered(&url, 30);
    assert_eq!(status["orders"]["in-transit"], 0, "{status}");
    assert_exactly_once(&shop, &watcher, 30);
    hub.wait_for_log("rate_limited");
}

#[test]
fn an_operator_hands_a_vanished_drivers_packages_back_at_once() {
    let (hub, url) = start_hub_with(&["--port", "0", "--ephemeral", "--reclaim-after", "never"]);
    let VictimRun {
        mut victim,
        _steady,
        watcher,
        mut vendor,
    } = start_victim_run(&hub, &url);
    victim.signal("KILL");
    victim.wait_exit();
    wait_for_status(&url, "the victim offline holding packages", |status| {
        status["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "victim" && d["online"] == false && d["load"] != 0)
    });

    let output = common::caps_command(&["reclaim", "victim", "--hub", &url])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        said.starts_with("handed ") && !said.starts_with("handed 0 "),
        "{said}"
    );
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    wait_until_all_delivered(&url, 40);
    assert_exactly_once(&vendor, &watcher, 40);
}
