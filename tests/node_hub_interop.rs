//! Our Rust vendor and driver against a Node socket.io 4.8 hub written the
//! way the course writes it (tests/js/lab/hub.mjs): no auth, no acks, pickup
//! broadcast to every other socket.

mod common;

use std::process::Command;

use common::{Proc, ids_after, repo_root};

#[test]
fn rust_vendor_and_driver_complete_the_flow_through_a_node_socketio_hub() {
    let root = repo_root();
    assert!(
        root.join("node_modules/socket.io").is_dir(),
        "run `npm ci` first: the Node hub needs the socket.io package"
    );
    let mut node = Command::new("node");
    node.arg(root.join("tests/js/lab/hub.mjs")).env("PORT", "0");
    let hub = Proc::spawn("node hub", node);
    let url = hub
        .wait_for_line("lab hub listening on")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();

    let driver = Proc::caps(
        "driver",
        &[
            "driver",
            "--hub",
            &format!("{url}/caps"),
            "--pickup-delay",
            "50ms",
            "--deliver-delay",
            "50ms",
        ],
    );
    driver.wait_for_log("driver connected");
    let mut vendor = common::vendor(&url, "1-206-flowers", "100ms", 3, &[]);
    assert!(
        vendor.wait_exit().success(),
        "{}\n{}",
        vendor.describe(),
        hub.describe()
    );

    // A Phase 2 hub keeps no queue: the vendor does not wait to empty one.
    assert!(
        !vendor.logged("delivery notices maybe still queued"),
        "{}",
        vendor.describe()
    );
    let placed = ids_after(&vendor.stdout(), "VENDOR: order ");
    let thanked = ids_after(&vendor.stdout(), "VENDOR: Thank you for delivering ");
    assert_eq!(placed.len(), 3);
    assert_eq!(thanked.len(), 3, "{}", vendor.describe());
    for id in &placed {
        assert!(thanked.contains(id));
        driver.wait_for_line(&format!("DRIVER: delivered {id}"));
    }
    hub.wait_for_count(r#"EVENT {"event":"delivered""#, 3);
}
