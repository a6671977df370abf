//! What the generator measures: a hub process it starts itself (caps, the
//! Node peer, socketioxide's floor, or the bare echo ceiling), a group of caps hubs on one
//! PostgreSQL database, or one hub it is pointed at; and their CPU time and
//! memory, read from /proc (summed over a group's hubs).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Which server to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `caps hub`, durable (a fresh data dir), as deployed.
    Caps,
    /// `caps hub --ephemeral`.
    CapsEphemeral,
    /// `caps hub` durable without its commit log (`--commit-log off`): each
    /// commit a transaction on the tables, as before the log.
    CapsTables,
    /// The Node socket.io 4.8 peer in bench/peer-hub.mjs.
    Node,
    /// The same peer made durable the cheap way: every event appended to a
    /// journal file and fdatasync'd before it is handled (one write and one
    /// sync per event-loop turn).
    NodeJournal,
    /// A bare WebSocket server that echoes each event back: the transport's ceiling.
    Echo,
    /// socketioxide doing the Node peer's work and nothing more: the library's floor.
    RustPeer,
    /// The same, appending every event to an SQLite log before sending what
    /// it causes: a durable hub's floor.
    RustDurablePeer,
    /// One `caps hub` on PostgreSQL (`--database`, emptied first).
    CapsPg1,
    /// Two `caps hub`s of one group on PostgreSQL.
    CapsPg2,
    /// Three `caps hub`s of one group on PostgreSQL.
    CapsPg3,
}

impl Kind {
    /// Its name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Caps => "caps",
            Kind::CapsEphemeral => "caps-ephemeral",
            Kind::CapsTables => "caps-tables",
            Kind::Node => "node-peer",
            Kind::NodeJournal => "node-journal",
            Kind::Echo => "echo-ceiling",
            Kind::RustPeer => "socketioxide-peer",
            Kind::RustDurablePeer => "socketioxide-durable-peer",
            Kind::CapsPg1 => "caps-pg1",
            Kind::CapsPg2 => "caps-pg2",
            Kind::CapsPg3 => "caps-pg3",
        }
    }

    /// How many hubs of a group on PostgreSQL; 0 for the others.
    pub fn group_hubs(self) -> usize {
        match self {
            Kind::CapsPg1 => 1,
            Kind::CapsPg2 => 2,
            Kind::CapsPg3 => 3,
            Kind::Caps
            | Kind::CapsEphemeral
            | Kind::CapsTables
            | Kind::Node
            | Kind::NodeJournal
            | Kind::Echo
            | Kind::RustPeer
            | Kind::RustDurablePeer => 0,
        }
    }
}

/// A running server under test: one process, or the hubs of a group.
pub struct Target {
    /// Its URL (the first hub's).
    pub url: String,
    /// Every hub's URL: client `n` connects to `urls[n % len]`.
    pub urls: Vec<String>,
    /// Its process ids, to read /proc.
    pids: Vec<u32>,
    children: Vec<Child>,
    _data_dir: Option<tempfile::TempDir>,
    /// Whether it keeps its orders in PostgreSQL (whose CPU is read too).
    pub on_database: bool,
}

impl Target {
    /// The URL client number `index` connects to: the hubs of a group in turn.
    pub fn url_for(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    /// Starts a server of `kind` on a free loopback port (a group's hubs on
    /// `database`, which must have been emptied).
    pub fn start(
        kind: Kind,
        hub_args: &[String],
        database: Option<&str>,
    ) -> anyhow::Result<Target> {
        if kind.group_hubs() > 0 {
            let database = database.context("the caps-pg targets need --database")?;
            let mut group = Target {
                url: String::new(),
                urls: Vec::new(),
                pids: Vec::new(),
                children: Vec::new(),
                _data_dir: None,
                on_database: true,
            };
            for index in 0..kind.group_hubs() {
                let id = format!("bench-{}", index + 1);
                let mut hub_args = hub_args.to_vec();
                hub_args.extend(["--database".into(), database.into(), "--hub-id".into(), id]);
                let mut hub = Target::start_one(kind, &hub_args)?;
                group.urls.append(&mut hub.urls);
                group.pids.append(&mut hub.pids);
                group.children.append(&mut hub.children);
            }
            group.url = group.urls[0].clone();
            return Ok(group);
        }
        Target::start_one(kind, hub_args)
    }

    fn start_one(kind: Kind, hub_args: &[String]) -> anyhow::Result<Target> {
        let exe = std::env::current_exe().context("finding the caps binary")?;
        let mut data_dir = None;
        let mut command = match kind {
            Kind::Caps
            | Kind::CapsEphemeral
            | Kind::CapsTables
            | Kind::CapsPg1
            | Kind::CapsPg2
            | Kind::CapsPg3 => {
                let mut command = Command::new(&exe);
                // One generator connection stands for many shops, --conns
                // opens as many as a process may, and all come from one
                // address: lift the rate and connection limits (later
                // --hub-arg flags override).
                command.args([
                    "hub",
                    "--port",
                    "0",
                    "--rate-limit",
                    "100000000",
                    "--max-connections",
                    "1000000",
                    "--max-connections-per-address",
                    "1000000",
                    "--api-rate-limit",
                    "100000000",
                ]);
                // Where the hub keeps orders is the target's choice, not
                // the environment's (scripts/pg_cluster.sh sets CAPS_DATABASE).
                command.env_remove("CAPS_DATABASE");
                if matches!(kind, Kind::Caps | Kind::CapsTables) {
                    let dir = tempfile::tempdir().context("creating a data dir")?;
                    command.arg("--data-dir").arg(dir.path());
                    data_dir = Some(dir);
                }
                if kind == Kind::CapsTables {
                    command.args(["--commit-log", "off"]);
                } else if kind == Kind::CapsEphemeral {
                    command.arg("--ephemeral");
                }
                command.args(hub_args);
                command
            }
            Kind::Node | Kind::NodeJournal => {
                let script = repo_file("bench/peer-hub.mjs")?;
                let mut command = Command::new("node");
                command.arg(script).env("PORT", "0");
                if kind == Kind::NodeJournal {
                    let dir = tempfile::tempdir().context("creating the journal's dir")?;
                    command.env("JOURNAL", dir.path().join("journal.jsonl"));
                    data_dir = Some(dir);
                }
                command
            }
            Kind::Echo => {
                let mut command = Command::new(&exe);
                command.args(["bench-echo", "--port", "0"]);
                command
            }
            Kind::RustPeer => {
                let mut command = Command::new(&exe);
                command.args(["bench-peer", "--port", "0"]);
                command
            }
            Kind::RustDurablePeer => {
                let dir = tempfile::tempdir().context("creating a data dir")?;
                let mut command = Command::new(&exe);
                command
                    .args(["bench-peer", "--port", "0", "--durable"])
                    .arg(dir.path());
                data_dir = Some(dir);
                command
            }
        };
        let mut child = command
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {} server", kind.label()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let Some(line) = lines.next() else {
                bail!(
                    "the {} server exited before saying where it listens",
                    kind.label()
                );
            };
            let line = line?;
            if let Some(url) = line
                .split_whitespace()
                .find(|word| word.starts_with("http://"))
            {
                break url.to_owned();
            }
        };
        // Keep draining its stdout (the event log) so it never blocks.
        std::thread::spawn(move || for _ in lines {});
        Ok(Target {
            urls: vec![url.clone()],
            url,
            pids: vec![child.id()],
            children: vec![child],
            _data_dir: data_dir,
            on_database: false,
        })
    }

    /// A server started elsewhere, measured through `pid` if given.
    pub fn external(url: String, pid: Option<u32>) -> Target {
        Target {
            urls: vec![url.clone()],
            url,
            pids: pid.into_iter().collect(),
            children: Vec::new(),
            _data_dir: None,
            on_database: false,
        }
    }

    /// CPU time (user + system) its processes have used so far.
    pub fn cpu(&self) -> Option<Duration> {
        self.pids.iter().map(|pid| process_cpu(*pid)).sum()
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.status_kb("VmRSS:").map(|kb| kb * 1024)
    }

    /// Peak resident memory, in MiB (summed over a group's hubs).
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.status_kb("VmHWM:").map(|kb| kb as f64 / 1024.0)
    }

    fn status_kb(&self, field: &str) -> Option<u64> {
        self.pids
            .iter()
            .map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(field))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .sum()
    }
}

/// CPU time (user + system) process `pid` has used so far.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

/// CPU time used so far by every PostgreSQL server process on the machine
/// (the database of the caps-pg targets; the benchmark runs one cluster).
pub fn database_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(process_cpu)
        .sum()
}

impl Drop for Target {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Linux reports CPU time in clock ticks, 100 per second on every platform caps runs on.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// A file of this repository, found from the working directory or the binary.
pub(super) fn repo_file(relative: &str) -> anyhow::Result<PathBuf> {
    let mut candidates = vec![PathBuf::from(relative)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/caps → the repository root.
        if let Some(root) = exe
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
        {
            candidates.push(root.join(relative));
        }
    }
    candidates
        .into_iter()
        .find(|path| path.exists())
        .with_context(|| format!("cannot find {relative}: run caps bench from the repository"))
}
