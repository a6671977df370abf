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

/// `POST /api/orders` of order `id` for acme: the status.
fn place(url: &str, id: &str, customer: &str) -> u16 {
    let order = serde_json::json!({"store": STORE, "orderId": id, "customer": customer, "address": "Schmittfurt, LA"});
    common::http("POST", &format!("{url}/api/orders"), Some(order)).0
}

/// Orders in the data dir's tables (not its commit log).
fn orders_in_tables(dir: &Path) -> i64 {
    open_read_only(dir)
        .query_row("SELECT count(*) FROM orders", [], |row| row.get(0))
        .unwrap()
}

fn commit_log_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("commit-") && name.ends_with(".log")
        })
        .count()
}

/// A hub on `dir` whose tables' writer waits an hour to gather commits
/// (unless a read hurries it, or 8,192 steps wait): what it acknowledges
/// stays in its commit log alone meanwhile.
fn hub_with_tables_held_back(dir: &Path, more: &[&str]) -> (Proc, String) {
    let mut args = vec!["--port", "0", "--data-dir", dir.to_str().unwrap()];
    args.extend(["--tables-gather", "1h"]);
    args.extend_from_slice(more);
    start_hub_with(&args)
}

/// With the tables' writer held back (`--tables-gather 1h`), what the hub
/// acknowledged is in its commit log alone: a read still sees it (it has the
/// tables brought up to date first), a SIGKILL loses none of it (the next
/// start brings the log's tail in), and a clean stop leaves no log behind.
#[test]
fn what_was_acknowledged_before_the_tables_took_it_is_read_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (mut hub, url) = hub_with_tables_held_back(dir.path(), &[]);
    for n in 0..20 {
        assert_eq!(place(&url, &format!("a{n}"), "Jamal Braun"), 201);
    }
    assert_eq!(
        orders_in_tables(dir.path()),
        0,
        "acknowledged and logged, not yet in the tables"
    );
    let (status, view) = common::http("GET", &format!("{url}/api/orders/a19"), None);
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "ready");
    assert_eq!(
        orders_in_tables(dir.path()),
        20,
        "the read had the tables brought up to date first"
    );

    for n in 0..30 {
        assert_eq!(place(&url, &format!("b{n}"), "Jamal Braun"), 201);
    }
    hub.signal("KILL");
    hub.wait_exit();
    assert_eq!(orders_in_tables(dir.path()), 20);
    assert_eq!(commit_log_files(dir.path()), 1);

    // Started without the log now: what the log holds is brought in anyway.
    let port = port_of(&url).to_string();
    let (mut hub, url) = start_hub_with(&[
        "--port",
        &port,
        "--data-dir",
        data_dir,
        "--commit-log",
        "off",
    ]);
    hub.wait_for_log("30 logged steps brought into its tables");
    hub.wait_for_log("50 open orders, 0 delivered");
    assert_eq!(orders_in_tables(dir.path()), 50);
    assert_eq!(commit_log_files(dir.path()), 0);
    assert_eq!(common::hub_status(&url)["orders"]["ready"], 50);
    hub.signal("TERM");
    assert!(hub.wait_exit().success(), "{}", hub.describe());

    let (mut hub, url) = hub_on(dir.path(), &port);
    assert_eq!(place(&url, "c0", "Jamal Braun"), 201);
    hub.signal("TERM");
    assert!(hub.wait_exit().success(), "{}", hub.describe());
    assert_eq!(orders_in_tables(dir.path()), 51);
    assert_eq!(
        commit_log_files(dir.path()),
        0,
        "a clean stop brings everything into the tables and leaves no log"
    );
}

/// The desk forgets delivered orders beyond `--keep-delivered` and asks the
/// tables about them after; an order delivered but not yet in the tables is
/// kept until it is, so that the same order sent again is still recognised
/// (and another payload under its id refused), however small the window.
#[test]
fn an_order_sent_again_is_recognised_while_its_delivery_is_not_yet_in_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, url) = hub_with_tables_held_back(dir.path(), &["--keep-delivered", "1"]);
    let _dana = common::driver(&url, "dana", "1ms", "1ms", &[]);
    hub.wait_for_log("driver name=dana");
    for n in 0..4 {
        assert_eq!(place(&url, &format!("o{n}"), "Jamal Braun"), 201);
    }
    // Delivered as the hub's event log tells (the API would read the tables,
    // and have them brought up to date first).
    hub.wait_for_count(r#"EVENT {"event":"delivered""#, 4);
    assert_eq!(orders_in_tables(dir.path()), 0, "the tables are held back");
    assert_eq!(
        place(&url, "o0", "Jamal Braun"),
        201,
        "the same order again"
    );
    assert_eq!(
        place(&url, "o0", "Someone Else"),
        409,
        "another payload under a delivered order's id"
    );
    assert_eq!(orders_in_tables(dir.path()), 0, "recognised from memory");

    // Had the desk forgotten o0 too soon, it would have taken it for a new
    // order: the tables would refuse its insert when they catch up.
    let status = common::hub_status(&url);
    assert_eq!(status["orders"]["delivered"], 4, "{status}");
    hub.signal("TERM");
    assert!(hub.wait_exit().success(), "{}", hub.describe());
    assert!(!hub.logged("tables refused"), "{}", hub.describe());
    let delivered = common::delivered_transitions(dir.path());
    assert_eq!(delivered.len(), 4);
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
}

/// A vendor acknowledges each notice moments after it is sent, long before
/// the tables (held back here) list it: the acknowledgement is answered from
/// what the hub keeps in memory until then, and every queue ends empty.
#[test]
fn notices_are_acknowledged_before_the_tables_list_them() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = hub_with_tables_held_back(dir.path(), &[]);
    let _dana = driver(&url, "dana");
    hub.wait_for_log("driver name=dana");
    let mut vendor = common::vendor(&url, STORE, "5ms", 5, &[]);
    wait_for_thanks(&[&vendor], 5);
    hub.wait_for_count(r#"EVENT {"event":"received""#, 5);
    // (A replay the vendor asks for reads the tables, and has them brought
    // up to date first; the acknowledgements came before.)
    assert!(!hub.logged("no message"), "{}", hub.describe());
    wait_for_status(&url, "every notice acknowledged", |status| {
        status["orders"]["delivered"] == 5 && status["queues"].as_array().unwrap().is_empty()
    });
    vendor.kill();
}
