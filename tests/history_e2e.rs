//! Promises at any age: an order is the same order however long ago it was
//! delivered. A hub whose memory keeps only a few delivered orders (a small
//! `--keep-delivered`, the window a large history would cross) still
//! recognises a re-sent old order, from its data dir, before and after a
//! restart; a different payload under the same id is still refused.

mod common;

use common::{Proc, caps_command, driver, http, start_hub_with, vendor};
use serde_json::{Value, json};

const STORE: &str = "c1-shop";

fn first_order() -> Value {
    json!({"store": STORE, "orderId": "c1-order-1", "customer": "Jamal Braun", "address": "Schmittfurt, LA"})
}

/// Places an order over HTTP and returns the status.
fn place(url: &str, order: Value) -> (u16, Value) {
    http("POST", &format!("{url}/api/orders"), Some(order))
}

fn state_of(url: &str, order_id: &str) -> Value {
    let (status, view) = http("GET", &format!("{url}/api/orders/{order_id}"), None);
    assert_eq!(status, 200, "{view}");
    view
}

/// The re-sent first order is acknowledged, changes nothing, and the hub
/// keeps running; a conflicting one is refused.
fn old_order_is_recognised(hub: &mut Proc, url: &str) {
    let (status, body) = place(url, first_order());
    assert_eq!(status, 201, "the same order again is acknowledged: {body}");
    let mut changed = first_order();
    changed["customer"] = json!("Someone Else");
    let (status, body) = place(url, changed);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "order_conflict");
    assert!(hub.is_running(), "the hub stopped:\n{}", hub.describe());

    let view = state_of(url, "c1-order-1");
    assert_eq!(view["state"], "delivered", "{view}");
    let steps: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["state"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["ready", "assigned", "in-transit", "delivered"]);
    let tracked = caps_command(&["track", "c1-order-1", "--hub", url])
        .output()
        .unwrap();
    let tracked = String::from_utf8_lossy(&tracked.stdout);
    assert!(tracked.contains("delivered"), "caps track: {tracked}");
}

#[test]
fn an_old_order_is_recognised_past_the_memory_window_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let flags = [
        "--port",
        "0",
        "--data-dir",
        data_dir,
        "--keep-delivered",
        "3",
    ];
    let (mut hub, url) = start_hub_with(&flags);
    let _bob = driver(&url, "bob", "1ms", "1ms", &[]);
    hub.wait_for_log("driver name=bob");

    assert_eq!(place(&url, first_order()).0, 201);
    common::wait_for_status(&url, "the first order delivered", |status| {
        status["orders"]["delivered"] == 1
    });
    // Ten more deliveries push the first far out of a memory of three.
    let mut shop = vendor(&url, STORE, "1ms", 10, &[]);
    assert!(shop.wait_exit().success(), "{}", shop.describe());

    old_order_is_recognised(&mut hub, &url);
    let (status, page) = http(
        "GET",
        &format!("{url}/api/orders?store={STORE}&limit=500"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        page["orders"].as_array().unwrap().len(),
        11,
        "paging reads the whole history"
    );

    hub.signal("TERM");
    assert!(hub.wait_exit().success(), "{}", hub.describe());
    let (mut hub, url) = start_hub_with(&flags);
    old_order_is_recognised(&mut hub, &url);
    let (_, status) = http("GET", &format!("{url}/api/status"), None);
    assert_eq!(status["orders"]["delivered"], 11, "{status}");
}

#[test]
fn an_order_compacted_by_retention_is_still_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (mut hub, url) = start_hub_with(&[
        "--port",
        "0",
        "--data-dir",
        data_dir,
        "--retain",
        "1s",
        "--compact-every",
        "100ms",
    ]);
    let _bob = driver(&url, "bob", "1ms", "1ms", &[]);
    hub.wait_for_log("driver name=bob");
    assert_eq!(place(&url, first_order()).0, 201);

    // A second after its delivery it is compacted: no history, no customer.
    let deadline = std::time::Instant::now() + common::WAIT;
    let view = loop {
        let view = state_of(&url, "c1-order-1");
        if view["customer"] == "(removed)" {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never compacted: {view}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(view["state"], "delivered");
    assert_eq!(view["address"], "(removed)");
    assert_eq!(view["history"], json!([]), "{view}");
    hub.wait_for_log("compacted 1 orders");

    // Idempotence does not expire with the data.
    let (status, body) = place(&url, first_order());
    assert_eq!(status, 201, "{body}");
    let mut changed = first_order();
    changed["address"] = json!("Elsewhere, NY");
    assert_eq!(place(&url, changed).0, 409);
    assert!(hub.is_running(), "{}", hub.describe());
}

#[test]
fn the_integrity_check_runs_after_a_crash_and_not_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let flags = ["--port", "0", "--data-dir", data_dir];
    let (mut hub, url) = start_hub_with(&flags);
    assert_eq!(place(&url, first_order()).0, 201);
    hub.signal("TERM");
    assert!(hub.wait_exit().success(), "{}", hub.describe());

    let (mut hub, url) = start_hub_with(&flags);
    hub.wait_for_log("namespace /caps ready");
    assert!(
        !hub.logged("not closed cleanly"),
        "a clean stop needs no check:\n{}",
        hub.describe()
    );
    assert_eq!(
        place(&url, first_order()).0,
        201,
        "the order is still there"
    );
    hub.signal("KILL");
    hub.wait_exit();

    let (hub, url) = start_hub_with(&flags);
    hub.wait_for_log("was not closed cleanly: integrity checked");
    assert_eq!(state_of(&url, "c1-order-1")["state"], "ready");
}
