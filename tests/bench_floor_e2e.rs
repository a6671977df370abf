//! The durable floor `caps bench` measures caps against (`caps bench-peer
//! --durable`), and the Node peer made durable with a journal
//! (`node-journal`), are only fair peers if they keep what a durable hub
//! keeps: every event recorded, and committed before anything it causes is
//! sent. Checked through the doors the bench uses: the built binary and the
//! Node peer as child processes, `caps bench` driving them, and the log or
//! journal read back after a SIGKILL.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Proc, caps_command};
use rusqlite::{Connection, OpenFlags};

/// `caps bench-peer --durable <log_dir>`, and its URL.
fn durable_peer(log_dir: &Path) -> (Proc, String) {
    let peer = Proc::caps(
        "durable-peer",
        &[
            "bench-peer",
            "--port",
            "0",
            "--durable",
            log_dir.to_str().unwrap(),
        ],
    );
    let banner = peer.wait_for_line("listening on");
    let url = banner.rsplit(' ').next().unwrap().to_owned();
    (peer, url)
}

/// `caps bench` against `url` with these vendors, each placing `orders`.
fn bench(url: &str, vendors: i64, orders: i64, extra: &[&str]) -> Output {
    let (vendors, orders) = (vendors.to_string(), orders.to_string());
    let mut args = vec![
        "bench",
        "--hub",
        url,
        "--vendors",
        &vendors,
        "--drivers",
        "2",
        "--orders",
        &orders,
    ];
    args.extend_from_slice(extra);
    caps_command(&args).output().unwrap()
}

#[test]
fn the_durable_floor_records_every_event_before_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (mut peer, url) = durable_peer(&log_dir);

    let (vendors, orders_each) = (2, 150);
    let run = bench(&url, vendors, orders_each, &[]);
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // Killed the moment the bench heard every delivery: whatever it heard
    // must already be on disk.
    peer.kill();

    let log = Connection::open_with_flags(
        log_dir.join("peer-log.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count = |kind: &str| -> i64 {
        log.query_row("SELECT count(*) FROM log WHERE kind = ?1", [kind], |row| {
            row.get(0)
        })
        .unwrap()
    };
    let orders = vendors * orders_each;
    for kind in ["pickup", "assigned", "in-transit", "delivered"] {
        assert_eq!(count(kind), orders, "{kind} rows");
    }
    let distinct: i64 = log
        .query_row(
            "SELECT count(DISTINCT key) FROM log WHERE kind = 'delivered'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(distinct, orders, "each order delivered once");
    // It pays for what caps promises: each new order's key in a unique index.
    let unique: i64 = log
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'orders_by_key' AND sql LIKE '%UNIQUE%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(unique, 1);
}

/// A driver and a vendor on the official client, run by Node: the vendor
/// places one order, and the driver prints each offer it is made.
const PROBE: &str = r#"
import { io } from "socket.io-client";
const url = process.env.PEER_URL + "/caps";
const options = (auth) => ({ auth, transports: ["websocket"], forceNew: true });
const driver = io(url, options({ role: "driver", name: "probe" }));
driver.on("pickup", (order) => console.log(`offer ${order.orderId}`));
driver.on("connect", () => {
  const vendor = io(url, options({ role: "vendor", store: "probe-store" }));
  vendor.on("connect", () => {
    vendor.emit("pickup", { store: "probe-store", orderId: "o-1", customer: "C", address: "A" });
    console.log("placed");
  });
});
"#;

#[test]
fn the_durable_floor_sends_nothing_its_log_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (_peer, url) = durable_peer(&log_dir);

    // Another connection holds the log's write lock: no commit can happen.
    let lock = Connection::open(log_dir.join("peer-log.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let root = common::repo_root();
    assert!(
        root.join("node_modules/socket.io-client").is_dir(),
        "run `npm ci` first"
    );
    let mut node = Command::new("node");
    node.args(["--input-type=module", "-e", PROBE])
        .current_dir(&root)
        .env("PEER_URL", &url);
    let probe = Proc::spawn("probe", node);
    probe.wait_for_line("placed");
    // Absence can only be shown over a span: the offer would come in
    // well under a millisecond, were it not held.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !probe.stdout().iter().any(|line| line.starts_with("offer")),
        "an offer went out before its order was committed:\n{}",
        probe.describe()
    );

    // Once the lock is let go, the order is committed and offered.
    lock.execute_batch("ROLLBACK").unwrap();
    probe.wait_for_line("offer o-1");
}

/// The Node peer made durable (`bench/peer-hub.mjs` with `JOURNAL`), and its URL.
fn journal_peer(journal: &Path) -> (Proc, String) {
    let mut node = Command::new("node");
    node.arg(common::repo_root().join("bench/peer-hub.mjs"))
        .env("PORT", "0")
        .env("JOURNAL", journal);
    let peer = Proc::spawn("journal-peer", node);
    let banner = peer.wait_for_line("listening on");
    let url = banner.rsplit(' ').next().unwrap().to_owned();
    (peer, url)
}

#[test]
fn the_journal_peer_records_every_event_before_it_answers_in_the_labs_shape() {
    for (phase, acknowledges) in [("2", false), ("3", true)] {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.jsonl");
        let (mut peer, url) = journal_peer(&journal);
        let run = caps_command(&[
            "bench",
            "--hub",
            &url,
            "--scenario",
            "lab",
            "--phase",
            phase,
            "--orders",
            "20",
        ])
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains(&format!("\"scenario\":\"lab/phase{phase}\"")),
            "the figures name their scenario: {stdout}"
        );
        // Killed the moment the bench heard every delivery (10 shops x 20):
        // whatever it heard must already be in the journal.
        peer.kill();
        let text = std::fs::read_to_string(&journal).unwrap();
        let count = |event: &str| {
            text.lines()
                .filter(|line| line.starts_with(&format!("{{\"event\":\"{event}\"")))
                .count()
        };
        for event in ["pickup", "in-transit", "delivered"] {
            assert_eq!(count(event), 200, "{event} lines, phase {phase}");
        }
        // Phase 2 vendors never acknowledge; Phase 3 vendors acknowledge every
        // notice (the last ones may still be on their way when the peer is killed).
        let received = count("received");
        if !acknowledges {
            assert_eq!(received, 0, "phase 2 vendors acknowledge nothing");
        } else {
            assert!(received > 0, "phase 3 vendors acknowledge");
        }
    }
}
