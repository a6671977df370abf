//! What the generator measures: a hub process it starts itself (caps, the
//! Node peer, or the bare echo ceiling) or one it is pointed at, and that
//! process's CPU time and memory, read from /proc.

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
    /// The Node socket.io 4.8 peer in bench/peer-hub.mjs.
    Node,
    /// A bare WebSocket server that echoes each event back: the transport's ceiling.
    Echo,
}

impl Kind {
    /// Its name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Caps => "caps",
            Kind::CapsEphemeral => "caps-ephemeral",
            Kind::Node => "node-peer",
            Kind::Echo => "echo-ceiling",
        }
    }
}

/// A running server under test.
pub struct Target {
    /// Its URL.
    pub url: String,
    /// Its process id, to read /proc.
    pub pid: u32,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts a server of `kind` on a free loopback port.
    pub fn start(kind: Kind, hub_args: &[String]) -> anyhow::Result<Target> {
        let exe = std::env::current_exe().context("finding the caps binary")?;
        let mut data_dir = None;
        let mut command = match kind {
            Kind::Caps | Kind::CapsEphemeral => {
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
                if kind == Kind::Caps {
                    let dir = tempfile::tempdir().context("creating a data dir")?;
                    command.arg("--data-dir").arg(dir.path());
                    data_dir = Some(dir);
                } else {
                    command.arg("--ephemeral");
                }
                command.args(hub_args);
                command
            }
            Kind::Node => {
                let script = repo_file("bench/peer-hub.mjs")?;
                let mut command = Command::new("node");
                command.arg(script).env("PORT", "0");
                command
            }
            Kind::Echo => {
                let mut command = Command::new(&exe);
                command.args(["bench-echo", "--port", "0"]);
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
            url,
            pid: child.id(),
            child: Some(child),
            _data_dir: data_dir,
        })
    }

    /// A server started elsewhere, measured through `pid` if given.
    pub fn external(url: String, pid: Option<u32>) -> Target {
        Target {
            url,
            pid: pid.unwrap_or(0),
            child: None,
            _data_dir: None,
        }
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_second(),
        ))
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.status_kb("VmRSS:").map(|kb| kb * 1024)
    }

    /// Peak resident memory, in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.status_kb("VmHWM:").map(|kb| kb as f64 / 1024.0)
    }

    fn status_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
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
