//! End to end through the built binary: `caps hub`, `caps driver` and
//! `caps vendor` as separate processes over real sockets.

mod common;

use std::collections::HashSet;

use common::{Proc, caps_command, closed_port, ids_after, port_of, start_hub, start_hub_with};

const READY: &str = "VENDOR: order ";
const THANKS: &str = "VENDOR: Thank you for delivering ";

fn driver(url: &str) -> Proc {
    common::driver(url, "bob", "50ms", "100ms", &[])
}

/// Every order the vendor placed was thanked for exactly once.
fn assert_each_order_thanked_once(vendor: &Proc, count: usize) {
    let out = vendor.stdout();
    let placed = ids_after(&out, READY);
    let thanked = ids_after(&out, THANKS);
    assert_eq!(placed.len(), count, "{}", vendor.describe());
    let unique: HashSet<_> = thanked.iter().collect();
    assert_eq!(
        unique.len(),
        thanked.len(),
        "a thank-you was repeated\n{}",
        vendor.describe()
    );
    assert_eq!(unique, placed.iter().collect(), "{}", vendor.describe());
}

#[test]
fn hub_driver_and_vendor_processes_deliver_every_order() {
    let (hub, url) = start_hub(0);
    let driver = driver(&url);
    hub.wait_for_log("driver name=bob");
    let mut vendor = common::vendor(&url, "acme", "100ms", 3, &[]);
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    assert_each_order_thanked_once(&vendor, 3);

    let placed = ids_after(&vendor.stdout(), READY);
    for id in &placed {
        driver.wait_for_line(&format!("DRIVER: picked up {id}"));
        driver.wait_for_line(&format!("DRIVER: delivered {id}"));
    }
    for event in ["pickup", "in-transit", "delivered"] {
        let lines = hub.wait_for_count(&format!(r#"EVENT {{"event":"{event}""#), 3);
        let record: serde_json::Value =
            serde_json::from_str(lines[0].strip_prefix("EVENT ").unwrap()).unwrap();
        let time = record["time"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert!(
            time.ends_with('Z') && time.len() == "2020-03-06T18:27:17.732Z".len(),
            "{time}"
        );
        assert_eq!(record["payload"]["store"], "acme");
        assert!(placed.contains(&record["payload"]["orderId"].as_str().unwrap().to_owned()));
        let address = record["payload"]["address"].as_str().unwrap();
        assert!(address.contains(", "), "a City, ST address: {address}");
    }
}

#[test]
fn a_vendor_exits_non_zero_with_one_line_when_the_hub_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let mut vendor = Proc::spawn("vendor", {
        let mut command = caps_command(&[
            "vendor",
            "--hub",
            &url,
            "--store",
            "acme",
            "--connect-timeout",
            "500ms",
        ]);
        command.env("RUST_LOG", "off");
        command
    });
    let status = vendor.wait_exit();
    assert_eq!(status.code(), Some(1));
    let stderr = vendor.stderr();
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].starts_with(&format!("caps: cannot reach hub at {url}")),
        "{stderr:?}"
    );
}

#[test]
fn flags_can_be_given_as_caps_environment_variables() {
    let (hub, url) = start_hub(0);
    let mut driver = caps_command(&["driver"]);
    driver
        .env("CAPS_HUB", format!("{url}/caps"))
        .env("CAPS_NAME", "envy")
        .env("CAPS_PICKUP_DELAY", "10ms")
        .env("CAPS_DELIVER_DELAY", "10ms");
    let _driver = Proc::spawn("driver", driver);
    hub.wait_for_log("driver name=envy");

    let mut vendor = caps_command(&["vendor"]);
    vendor
        .env("CAPS_HUB", &url)
        .env("CAPS_STORE", "env-store")
        .env("CAPS_INTERVAL", "50ms")
        .env("CAPS_COUNT", "2");
    let mut vendor = Proc::spawn("vendor", vendor);
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    assert_each_order_thanked_once(&vendor, 2);
    hub.wait_for_log("vendor store=env-store");
}

#[test]
fn every_subcommand_documents_its_environment_variables() {
    for (subcommand, vars) in [
        ("hub", &["CAPS_HOST", "CAPS_PORT"][..]),
        (
            "vendor",
            &[
                "CAPS_STORE",
                "CAPS_INTERVAL",
                "CAPS_COUNT",
                "CAPS_RESEND_AFTER",
                "CAPS_HUB",
                "CAPS_CONNECT_TIMEOUT",
            ][..],
        ),
        (
            "driver",
            &[
                "CAPS_NAME",
                "CAPS_PICKUP_DELAY",
                "CAPS_DELIVER_DELAY",
                "CAPS_HUB",
            ][..],
        ),
        (
            "demo",
            &["CAPS_DEMO_VENDORS", "CAPS_DEMO_DRIVERS", "CAPS_DEMO_ORDERS"][..],
        ),
    ] {
        let output = caps_command(&[subcommand, "--help"]).output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        for var in vars {
            assert!(
                help.contains(&format!("env: {var}=")),
                "{subcommand} --help lacks {var}:\n{help}"
            );
        }
    }
}

#[test]
fn clients_carry_on_across_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (mut hub, url) = start_hub_with(&["--port", "0", "--data-dir", data_dir]);
    let port = port_of(&url).to_string();
    let driver = driver(&url);
    hub.wait_for_log("driver name=bob");
    let mut vendor = common::vendor(&url, "acme", "300ms", 6, &["--resend-after", "1s"]);
    vendor.wait_for_line(THANKS);

    hub.signal("KILL");
    hub.wait_exit();
    let (hub, _) = start_hub_with(&["--port", &port, "--data-dir", data_dir]);
    hub.wait_for_log("driver name=bob");
    hub.wait_for_log("vendor store=acme");

    assert!(
        vendor.wait_exit_or_describe(&[&driver, &hub]).success(),
        "{}",
        vendor.describe()
    );
    assert_each_order_thanked_once(&vendor, 6);
}

/// How many delivery notices wait in `store`'s queue.
fn queued(url: &str, store: &str) -> u64 {
    common::hub_status(url)["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|queue| queue["store"] == store)
        .map_or(0, |queue| queue["queued"].as_u64().unwrap())
}

/// Places `count` orders of store acme with `POST /api/orders`, on one
/// kept-alive connection.
fn place_over_http(url: &str, count: usize) {
    common::block_on(async {
        let client = reqwest::Client::new();
        for n in 0..count {
            let order = serde_json::json!({"store": "acme", "orderId": format!("web-{n}"),
                "customer": "Jamal Braun", "address": "Schmittfurt, LA"});
            let response = client
                .post(format!("{url}/api/orders"))
                .json(&order)
                .send()
                .await
                .expect("the hub answers");
            assert_eq!(response.status().as_u16(), 201, "order web-{n}");
        }
    });
}

#[test]
fn a_vendor_that_finishes_leaves_no_delivery_notice_queued() {
    let (hub, url) = start_hub(0);
    let state = tempfile::tempdir().unwrap();
    let ledger = state.path().join("acme.state");
    let ledger = ledger.to_str().unwrap();
    // The shop's one order, placed with no courier about; the shop goes.
    let mut first = common::vendor(&url, "acme", "10ms", 1, &["--state-file", ledger]);
    first.wait_for_line(READY);
    common::wait_for_status(&url, "the shop's order at the hub", |status| {
        status["orders"]["ready"] == 1
    });
    first.kill();
    let placed = ids_after(&first.stdout(), READY);
    // 200 more of the store's orders come over HTTP, and all 201 are
    // delivered while no vendor listens: 201 notices wait for the shop.
    place_over_http(&url, 200);
    let _driver = common::driver(&url, "bob", "0ms", "0ms", &[]);
    common::wait_for_status(&url, "201 delivered", |status| {
        status["orders"]["delivered"] == 201
    });
    assert_eq!(queued(&url, "acme"), 201);

    // The shop comes back: its order's thank-you comes early in the replay
    // of the queue, and it has nothing more to wait for.
    let mut again = common::vendor(&url, "acme", "10ms", 1, &["--state-file", ledger]);
    assert!(
        again.wait_exit_or_describe(&[&hub]).success(),
        "{}",
        again.describe()
    );
    assert_eq!(
        ids_after(&again.stdout(), THANKS),
        placed,
        "{}",
        again.describe()
    );
    assert_eq!(
        queued(&url, "acme"),
        0,
        "notices left for a shop that has gone\n{}",
        again.describe()
    );
}

#[test]
fn a_hub_stopped_with_sigterm_exits_zero() {
    let (mut hub, url) = start_hub(0);
    let _driver = driver(&url);
    hub.wait_for_log("driver name=bob");
    hub.signal("TERM");
    assert!(hub.wait_exit().success(), "{}", hub.describe());
    hub.wait_for_log("hub stopped");
}

#[test]
fn the_demo_runs_shops_and_couriers_to_completion() {
    let mut demo = Proc::caps(
        "demo",
        &[
            "demo",
            "--orders",
            "2",
            "--interval",
            "50ms",
            "--pickup-delay",
            "20ms",
            "--deliver-delay",
            "20ms",
        ],
    );
    assert!(demo.wait_exit().success(), "{}", demo.describe());
    demo.wait_for_line("demo finished: 4 orders placed, 4 delivered");
    demo.wait_for_count("[1-206-flowers] VENDOR: Thank you for delivering", 2);
    demo.wait_for_count("[acme-widgets] VENDOR: Thank you for delivering", 2);
    demo.wait_for_line("[alice] DRIVER: delivered");
}
