//! A private PostgreSQL cluster for one test: `initdb` in a temporary
//! directory, on a free port, stopped and removed when dropped. PostgreSQL
//! refuses to run as root, so as root it runs as the `postgres` user.
//!
//! Where PostgreSQL is not installed, a test that needs it is skipped with
//! one line saying so ([`PgCluster::start`] returns `None`), unless
//! `CAPS_REQUIRE_POSTGRES` is set (`make test` sets it, so CI never skips).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::closed_port;

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

/// Where the server's programs are: `CAPS_PG_BIN`, else the newest Debian
/// PostgreSQL; `None` if there are none.
fn server_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CAPS_PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().filter(|_| which("psql"))
}

/// Whether `program` is on the PATH.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).exists()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// Creates and starts a cluster whose superuser is `caps` (trusted on
    /// loopback); `None`, after a line saying the test is skipped, where
    /// PostgreSQL is not installed.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = server_bin() else {
            assert!(
                std::env::var_os("CAPS_REQUIRE_POSTGRES").is_none(),
                "CAPS_REQUIRE_POSTGRES is set, but PostgreSQL is not installed \
                 (scripts/setup.sh installs it)"
            );
            eprintln!(
                "skipped: this test needs PostgreSQL, which is not installed (scripts/setup.sh installs it)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("caps-pg")
            .tempdir()
            .unwrap();
        let cluster = PgCluster {
            port: closed_port(),
            bin,
            dir,
        };
        if is_root() {
            let owned = Command::new("chown")
                .args(["postgres:", cluster.dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(owned.success(), "chown to postgres");
        }
        let data = cluster.data();
        cluster.run_ok(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "caps",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster.psql("postgres", "CREATE DATABASE caps");
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let mut all = vec![
            "-D",
            data.to_str().unwrap(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
        ];
        all.extend_from_slice(args);
        self.run_ok("pg_ctl", &all);
    }

    /// Starts the cluster (again).
    pub fn start_again(&self) {
        self.pg_ctl(&["start"]);
    }

    /// Stops it at once: clients see their connections cut.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// A fast restart, as an operator applying a setting does.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// The URL of database `caps`.
    pub fn url(&self) -> String {
        format!("postgres://caps@127.0.0.1:{}/caps", self.port)
    }

    /// psql, to run `sql` in `database` on this cluster.
    fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut command = Command::new("psql");
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "caps",
            ])
            .args(["-d", database, "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        command
    }

    /// Runs `sql` in `database` with psql; its output, one row per line.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = self.psql_command(database, sql).output().unwrap();
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `sql` in the caps database with psql and returns at once: the
    /// child runs until the statement ends.
    pub fn psql_in_background(&self, sql: &str) -> std::process::Child {
        self.psql_command("caps", sql)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs `sql` in the caps database; its output.
    pub fn query(&self, sql: &str) -> String {
        self.psql("caps", sql)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
