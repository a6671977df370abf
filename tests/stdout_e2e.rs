//! The event log never holds dispatch up: a hub whose stdout nobody reads,
//! or whose stdout is closed, keeps dispatching at full speed; the lines it
//! could not write are dropped and counted in `/metrics`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};

use common::{caps_command, http};

/// A hub whose stdout is a pipe: its banner is read, then nothing more.
fn hub_with_unread_stdout() -> (Child, BufReader<ChildStdout>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = caps_command(&[
        "hub",
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--rate-limit",
        "100000",
    ])
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // The data dir lives as long as the test process; the hub is killed first.
    std::mem::forget(dir);
    let mut stdout = BufReader::new(hub.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let url = banner.trim().rsplit(' ').next().unwrap().to_owned();
    (hub, stdout, url)
}

/// Runs `caps bench` against the hub: every order must be delivered once.
fn orders_flow(url: &str, orders_per_vendor: &str) {
    let output = caps_command(&[
        "bench",
        "--hub",
        url,
        "--vendors",
        "2",
        "--drivers",
        "2",
        "--orders",
        orders_per_vendor,
    ])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn dropped_lines(url: &str) -> u64 {
    common::metrics_text(url)
        .lines()
        .find_map(|line| line.strip_prefix("caps_event_log_dropped_total "))
        .expect("the counter is exported")
        .parse()
        .unwrap()
}

#[test]
fn a_stdout_nobody_reads_does_not_stop_dispatch() {
    let (mut hub, _unread, url) = hub_with_unread_stdout();
    // Far more lines than a pipe and the log's buffer hold.
    orders_flow(&url, "3000");
    assert!(
        dropped_lines(&url) > 0,
        "lines beyond the buffer are counted"
    );
    assert_eq!(http("GET", &format!("{url}/api/status"), None).0, 200);
    assert!(hub.try_wait().unwrap().is_none(), "the hub runs on");
    hub.kill().unwrap();
}

#[test]
fn a_closed_stdout_does_not_stop_dispatch() {
    let (mut hub, stdout, url) = hub_with_unread_stdout();
    drop(stdout);
    orders_flow(&url, "300");
    assert!(
        dropped_lines(&url) > 0,
        "lines that could not be written are counted"
    );
    assert!(hub.try_wait().unwrap().is_none(), "the hub runs on");
    hub.kill().unwrap();
}
