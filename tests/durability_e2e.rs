//! Nothing lost: a durable hub, the Phase 3 queues, and clients that catch
//! up, proven by killing things with SIGKILL and reading the data dir back.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use common::{Proc, caps_command, ids_after, port_of, start_hub_with, wait_for_status};
use rusqlite::{Connection, OpenFlags};

const STORE: &str = "acme";
const READY: &str = "VENDOR: order ";
const THANKS: &str = "VENDOR: Thank you for delivering ";

fn hub_on(dir: &Path, port: &str) -> (Proc, String) {
    start_hub_with(&["--port", port, "--data-dir", dir.to_str().unwrap()])
}

fn driver(url: &str, name: &str) -> Proc {
    common::driver(url, name, "5ms", "20ms", &[])
}

/// Every id printed after `prefix` by any of `procs`, with how often.
fn tally(procs: &[&Proc], prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for proc in procs {
        for id in ids_after(&proc.stdout(), prefix) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits until `procs` together printed at least `n` thank-yous.
fn wait_for_thanks(procs: &[&Proc], n: usize) {
    let deadline = std::time::Instant::now() + common::WAIT;
    while tally(procs, THANKS).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} thank-yous:\n{}",
            procs
                .iter()
                .map(|p| p.describe())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn open_read_only(dir: &Path) -> Connection {
    Connection::open_with_flags(dir.join("caps.db"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

#[test]
fn every_confirmed_order_is_delivered_exactly_once_through_crashes_of_everything() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("vendor.state");
    let (mut hub, url) = hub_on(dir.path(), "0");
    let port = port_of(&url).to_string();
    let mut victim = driver(&url, "victim");
    let _steady = driver(&url, "steady");
    hub.wait_for_log("driver name=victim");
    hub.wait_for_log("driver name=steady");

    let vendor_args = [
        "vendor",
        "--hub",
        &url,
        "--store",
        STORE,
        "--interval",
        "5ms",
        "--count",
        "300",
        "--resend-after",
        "2s",
        "--state-file",
        state_file.to_str().unwrap(),
    ];
    let mut first_vendor = Proc::caps("vendor", &vendor_args);
    let restart_hub = |hub: &mut Proc| {
        hub.signal("KILL");
        hub.wait_exit();
        hub_on(dir.path(), &port).0
    };

    wait_for_thanks(&[&first_vendor], 30);
    hub = restart_hub(&mut hub);
    wait_for_thanks(&[&first_vendor], 80);
    victim.signal("KILL");
    victim.wait_exit();
    let _victim_again = driver(&url, "victim");
    wait_for_thanks(&[&first_vendor], 120);
    hub = restart_hub(&mut hub);
    wait_for_thanks(&[&first_vendor], 160);
    first_vendor.signal("KILL");
    first_vendor.wait_exit();
    let mut second_vendor = Proc::caps("vendor again", &vendor_args);
    wait_for_thanks(&[&first_vendor, &second_vendor], 220);
    hub = restart_hub(&mut hub);

    assert!(
        second_vendor.wait_exit().success(),
        "{}\n{}",
        second_vendor.describe(),
        hub.describe()
    );
    let vendors = [&first_vendor, &second_vendor];
    let printed = tally(&vendors, READY);
    let thanked = tally(&vendors, THANKS);
    // A vendor records an order in its ledger before printing it, so a
    // SIGKILL may take the line of an order it did place: the thank-yous
    // name every order, and every order printed is among them.
    assert_eq!(
        thanked.len(),
        300,
        "300 distinct orders thanked across both vendor runs"
    );
    assert!(printed.values().all(|n| *n == 1));
    assert!(printed.keys().all(|id| thanked.contains_key(id)));
    let repeated: Vec<_> = thanked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "thanked more than once: {repeated:?}");
    let placed = thanked;

    // The hub's own history: one delivered transition per order, and every
    // notice acknowledged by the vendor.
    wait_for_status(&url, "all delivered and acknowledged", |status| {
        status["orders"]["delivered"] == 300 && status["queues"].as_array().unwrap().is_empty()
    });
    hub.signal("TERM");
    assert!(hub.wait_exit().success());
    let delivered = common::delivered_transitions(dir.path());
    assert_eq!(delivered.len(), 300);
    assert!(
        delivered.values().all(|n| *n == 1),
        "a delivered transition was repeated"
    );
    assert_eq!(
        delivered.keys().collect::<HashSet<_>>(),
        placed.keys().collect::<HashSet<_>>()
    );
    let queued: i64 = open_read_only(dir.path())
        .query_row("SELECT count(*) FROM notices", [], |row| row.get(0))
        .unwrap();
    assert_eq!(queued, 0);
}

#[test]
fn a_restarted_hub_resumes_its_orders_and_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, url) = hub_on(dir.path(), "0");
    let mut vendor = common::vendor(&url, STORE, "5ms", 3, &[]);
    vendor.wait_for_count("ready for pickup", 3);
    wait_for_status(&url, "three orders waiting", |status| {
        status["orders"]["ready"] == 3
    });
    vendor.kill();
    hub.signal("KILL");
    hub.wait_exit();

    let (hub, url) = hub_on(dir.path(), &port_of(&url).to_string());
    hub.wait_for_log("3 open orders, 0 delivered");
    let status = common::hub_status(&url);
    assert_eq!(status["orders"]["ready"], 3, "{status}");
    let _driver = driver(&url, "late");
    wait_for_status(&url, "all three delivered", |status| {
        status["orders"]["delivered"] == 3
    });
    let queued = wait_for_status(&url, "three notices queued for acme", |status| {
        status["queues"] == serde_json::json!([{"store": STORE, "queued": 3}])
    });
    assert_eq!(queued["orders"]["ready"], 0);
}

#[test]
fn an_ephemeral_hub_forgets_on_restart() {
    let (mut hub, url) = start_hub_with(&["--port", "0", "--ephemeral"]);
    hub.wait_for_log("ephemeral hub");
    let mut vendor = Proc::caps(
        "vendor",
        &["vendor", "--hub", &url, "--store", STORE, "--count", "1"],
    );
    vendor.wait_for_line("ready for pickup");
    wait_for_status(&url, "one order waiting", |status| {
        status["orders"]["ready"] == 1
    });
    vendor.kill();
    hub.signal("KILL");
    hub.wait_exit();
    let (_hub, url) = start_hub_with(&["--port", &port_of(&url).to_string(), "--ephemeral"]);
    assert_eq!(common::hub_status(&url)["orders"]["ready"], 0);
}

/// Runs `caps hub` on `dir` expecting a refusal; returns its one-line error.
fn refused_start(dir: &Path) -> String {
    let output = caps_command(&["hub", "--port", "0", "--data-dir", dir.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "the hub must refuse to start"
    );
    assert!(output.stdout.is_empty(), "it must not start listening");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn bad_data_dirs_are_refused_at_start_and_left_untouched() {
    // Corrupt: not a database at all.
    let corrupt = tempfile::tempdir().unwrap();
    let garbage = b"these bytes are not a database".repeat(100);
    std::fs::write(corrupt.path().join("caps.db"), &garbage).unwrap();
    assert!(refused_start(corrupt.path()).contains("not a caps database"));
    assert_eq!(
        std::fs::read(corrupt.path().join("caps.db")).unwrap(),
        garbage
    );

    // From a newer caps.
    let newer = tempfile::tempdir().unwrap();
    {
        let (mut hub, _) = hub_on(newer.path(), "0");
        hub.signal("TERM");
        hub.wait_exit();
    }
    Connection::open(newer.path().join("caps.db"))
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = std::fs::read(newer.path().join("caps.db")).unwrap();
    assert!(refused_start(newer.path()).contains("written by a newer caps (schema version 99"));
    assert_eq!(std::fs::read(newer.path().join("caps.db")).unwrap(), before);

    // Unreadable: the database path is a directory.
    let unreadable = tempfile::tempdir().unwrap();
    std::fs::create_dir(unreadable.path().join("caps.db")).unwrap();
    assert!(refused_start(unreadable.path()).contains("caps.db"));

    // Not a directory at all.
    let file = tempfile::NamedTempFile::new().unwrap();
    assert!(refused_start(file.path()).contains("cannot create data dir"));

    // Held by another hub.
    let busy = tempfile::tempdir().unwrap();
    let (_running, _) = hub_on(busy.path(), "0");
    assert!(refused_start(busy.path()).contains("in use by another hub"));
}
