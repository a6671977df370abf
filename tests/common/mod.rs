//! Helpers shared by the end-to-end tests: run the built `caps` binary (and
//! Node scripts) as child processes, and wait on the lines they print, always
//! with a timeout. Children are killed when their handle is dropped.

#![allow(dead_code)]

pub mod postgres;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// The lines one output stream has printed so far.
#[derive(Default)]
struct Lines {
    seen: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn follow(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let lines = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.seen.lock().unwrap().push(line);
                lines.changed.notify_all();
            }
        });
    }

    fn snapshot(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn wait_for(
        &self,
        count: usize,
        timeout: Duration,
        matches: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.seen.lock().unwrap();
        loop {
            let found: Vec<String> = seen.iter().filter(|l| matches(l)).cloned().collect();
            if found.len() >= count {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(seen.clone());
            }
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
    }
}

/// A running child process whose output can be waited on.
pub struct Proc {
    name: String,
    child: Child,
    out: Arc<Lines>,
    err: Arc<Lines>,
    /// A temporary directory that lives as long as the process handle.
    scratch: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `command`, capturing stdout and stderr.
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        out.follow(child.stdout.take().unwrap());
        err.follow(child.stderr.take().unwrap());
        Proc {
            name: name.to_owned(),
            child,
            out,
            err,
            scratch: None,
        }
    }

    /// Keeps `dir` until this handle is dropped.
    pub fn keep(mut self, dir: tempfile::TempDir) -> Proc {
        self.scratch = Some(dir);
        self
    }

    /// Starts the `caps` binary with `args`.
    pub fn caps(name: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, caps_command(args))
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.out.snapshot()
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.err.snapshot()
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_count(needle, 1).remove(0)
    }

    /// Waits until `count` stdout lines contain `needle`; returns them.
    pub fn wait_for_count(&self, needle: &str, count: usize) -> Vec<String> {
        self.out
            .wait_for(count, WAIT, &|line| line.contains(needle))
            .unwrap_or_else(|_| {
                panic!(
                    "{}: fewer than {count} stdout lines containing {needle:?}\n{}",
                    self.name,
                    self.describe()
                )
            })
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.err
            .wait_for(1, WAIT, &|line| line.contains(needle))
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no stderr line containing {needle:?}\n{}",
                    self.name,
                    self.describe()
                )
            })
            .remove(0)
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_or_describe(&[])
    }

    /// Waits for the process to exit on its own; if it does not, fails
    /// showing what `others` printed too (to diagnose a hang).
    pub fn wait_exit_or_describe(&mut self, others: &[&Proc]) -> ExitStatus {
        self.wait_exit_within(WAIT, others)
    }

    /// Waits up to `limit` for the process to exit on its own; if it does
    /// not, fails showing what `others` printed too.
    pub fn wait_exit_within(&mut self, limit: Duration, others: &[&Proc]) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let context: Vec<String> = others
                    .iter()
                    .map(|p| format!("=== {}\n{}", p.name, p.describe()))
                    .collect();
                panic!(
                    "{} did not exit in time\n{}\n{}",
                    self.name,
                    self.describe(),
                    context.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether a line on stderr (the log) contains `needle`, so far.
    pub fn logged(&self, needle: &str) -> bool {
        self.stderr().iter().any(|line| line.contains(needle))
    }

    /// Both streams, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout().join("\n"),
            self.stderr().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        // CAPS_TEST_LOGS=dir keeps every process's output, to study a
        // failure whose message cannot hold all of it.
        if let Some(dir) = std::env::var_os("CAPS_TEST_LOGS") {
            let file = PathBuf::from(dir).join(format!("{}-{}.log", self.name, self.pid()));
            let _ = std::fs::write(file, self.describe());
        }
    }
}

/// A `caps` command with `args`, quiet unless RUST_LOG says otherwise.
pub fn caps_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_caps"));
    command.args(args);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command
}

/// A `caps driver` called `name` with these delays, plus `extra` flags (a
/// later flag overrides an earlier one).
pub fn driver(url: &str, name: &str, pickup: &str, deliver: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "driver",
        "--hub",
        url,
        "--name",
        name,
        "--pickup-delay",
        pickup,
        "--deliver-delay",
        deliver,
    ];
    args.extend_from_slice(extra);
    Proc::caps(name, &args)
}

/// A `caps vendor` of `store` placing `count` orders every `interval`, plus
/// `extra` flags.
pub fn vendor(url: &str, store: &str, interval: &str, count: usize, extra: &[&str]) -> Proc {
    let count = count.to_string();
    let mut args = vec![
        "vendor",
        "--hub",
        url,
        "--store",
        store,
        "--interval",
        interval,
        "--count",
        &count,
    ];
    args.extend_from_slice(extra);
    Proc::caps("vendor", &args)
}

/// A durable hub on a fresh temporary data dir, started with `--port 0`
/// (or `port`), and its URL from its first line.
pub fn start_hub(port: u16) -> (Proc, String) {
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = start_hub_with(&[
        "--port",
        &port.to_string(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    (hub.keep(dir), url)
}

/// A hub started with these arguments, and its URL from its first line.
pub fn start_hub_with(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["hub"];
    all.extend_from_slice(args);
    let hub = Proc::caps("hub", &all);
    let banner = hub.wait_for_line("listening on http://");
    let url = banner.rsplit(' ').next().unwrap().to_owned();
    (hub, url)
}

/// The port in a `http://host:port` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A port with nothing listening on it (bound then released).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ids in lines of the form `PREFIX <id>`.
pub fn ids_after(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(prefix))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The hub's dispatch board, read through `caps status --json`.
pub fn hub_status(url: &str) -> serde_json::Value {
    let output = caps_command(&["status", "--json", "--hub", url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "caps status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Polls the hub's board until `ready` holds for it; returns that board.
/// Waits (at most [`WAIT`]) until `check` holds.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_for_status(
    url: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = hub_status(url);
        if ready(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "hub never reached: {what}\n{status:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A vendor connection of our own that records every order event its store
/// is told, to count exactly what a store sees.
pub struct StoreWatcher {
    heard: Arc<Mutex<Vec<(String, String)>>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl StoreWatcher {
    /// Connects as a vendor of `store` and starts recording.
    pub fn start(url: &str, store: &str) -> StoreWatcher {
        use caps::protocol::{Event, Handshake, StoreId};
        use caps::roles::hub_link::{HubLink, Inbound, LinkConfig};

        let heard = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel::<()>();
        let config = LinkConfig {
            hubs: vec![url.to_owned()],
            handshake: Handshake::vendor(StoreId::new(store).unwrap()),
            connect_timeout: Duration::from_secs(10),
            listen: vec![Event::Pickup, Event::InTransit, Event::Delivered],
            token: None,
        };
        let record = Arc::clone(&heard);
        std::thread::spawn(move || {
            block_on(async move {
                let (_link, mut inbound) =
                    HubLink::connect(&config).await.expect("watcher connects");
                ready.send(()).unwrap();
                loop {
                    if stopped.try_recv().is_ok() {
                        return;
                    }
                    let next =
                        tokio::time::timeout(Duration::from_millis(50), inbound.recv()).await;
                    match next {
                        Ok(Some(Inbound::Order(event, order, _))) => record
                            .lock()
                            .unwrap()
                            .push((event.name().to_owned(), order.order_id.to_string())),
                        Ok(Some(_)) | Err(_) => {}
                        Ok(None) => return,
                    }
                }
            });
        });
        is_ready
            .recv_timeout(WAIT)
            .expect("the watcher connected in time");
        StoreWatcher {
            heard,
            stop: Some(stop),
        }
    }

    /// How many times each order was announced with `event`.
    pub fn counts(&self, event: &str) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for (heard_event, id) in self.heard.lock().unwrap().iter() {
            if heard_event == event {
                *counts.entry(id.clone()).or_default() += 1;
            }
        }
        counts
    }
}

impl Drop for StoreWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How many `delivered` transitions the data dir in `dir` records for each
/// order id (read-only, beside a running or stopped hub).
pub fn delivered_transitions(dir: &std::path::Path) -> std::collections::HashMap<String, i64> {
    use rusqlite::{Connection, OpenFlags};
    let db =
        Connection::open_with_flags(dir.join("caps.db"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut per_order = db
        .prepare(
            "SELECT order_id, count(*) FROM transitions WHERE state = 'delivered' \
             GROUP BY store, order_id",
        )
        .unwrap();
    per_order
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The hub's `/metrics` text (a hub without a secret).
pub fn metrics_text(url: &str) -> String {
    block_on(async {
        reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

/// One HTTP request to the hub's API; the status and the JSON body (null if
/// the body is not JSON).
pub fn http(method: &str, url: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(method.parse().unwrap(), url).timeout(WAIT);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the hub answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    })
}

/// Runs `work` to its end on a runtime of its own, from a test's thread.
pub fn block_on<F: std::future::Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}
