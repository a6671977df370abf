//! The command line's definitions: one `Cli` with a subcommand per role.
//! Doc comments here are the `--help` text; every flag also reads a `CAPS_*`
//! environment variable. Turning them into configurations is [`super`]'s job.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::protocol::{DriverName, StoreId, limits};

/// CAPS parcel dispatch over Socket.IO: a hub, shops (vendors) and couriers (drivers).
///
/// Start a hub, then any number of drivers and vendors:
///   caps hub
///   caps driver
///   caps vendor --store acme
/// or watch all of them at once with `caps demo`.
///
/// Diagnostics go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see more.
#[derive(Debug, Parser)]
#[command(
    name = "caps",
    version,
    verbatim_doc_comment,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Run the hub: the Socket.IO server every vendor and driver connects to.
    Hub(HubArgs),
    /// Run a shop: place an order every interval, thank the courier for each delivery.
    Vendor(VendorArgs),
    /// Run a courier: pick up each package offered, report it in transit, deliver it.
    Driver(DriverArgs),
    /// Run a hub with vendors and drivers in one terminal, to watch packages move.
    Demo(DemoArgs),
    /// Print a hub's dispatch board: orders by state, drivers and their load, stores online.
    Status(StatusArgs),
    /// Mint a signed token for a vendor, a driver or a viewer of a hub with a secret.
    Token(TokenArgs),
    /// Print one order's history: each state it entered, when, and with which driver.
    Track(TrackArgs),
    /// Hand a driver's packages (offered and in transit) back to the hub for other drivers, now.
    Reclaim(ReclaimArgs),
    /// Measure a hub under load: throughput, latency, CPU and memory, against the Node peer and a ceiling.
    Bench(BenchArgs),
    /// The bench's ceiling: a bare WebSocket server that echoes events back.
    #[command(hide = true)]
    BenchEcho {
        /// Port to listen on; 0 picks a free one.
        #[arg(long, env = "CAPS_PORT", default_value_t = 0)]
        port: u16,
    },
    /// The bench's floor: socketioxide doing the Node peer's work, nothing more.
    #[command(hide = true)]
    BenchPeer {
        /// Port to listen on; 0 picks a free one.
        #[arg(long, env = "CAPS_PORT", default_value_t = 0)]
        port: u16,
        /// Also append every event to an SQLite log in this dir and hold what
        /// it sends until the event is committed: a durable hub's floor.
        #[arg(long)]
        durable: Option<PathBuf>,
        /// As the hub's: how long a commit under load waits for more events.
        #[arg(long, env = "CAPS_COMMIT_DELAY", default_value = "500us", value_parser = humantime::parse_duration)]
        commit_delay: Duration,
    },
}

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// The servers to measure, in turns each round.
    #[arg(
        long,
        env = "CAPS_BENCH_TARGETS",
        value_enum,
        value_delimiter = ',',
        default_value = "caps"
    )]
    pub(super) targets: Vec<crate::tools::bench::Kind>,
    /// The load generators, in turns: rust (caps bench's own client), node (bench/generator.mjs on the official socket.io-client).
    #[arg(
        long,
        env = "CAPS_BENCH_GENERATORS",
        value_enum,
        value_delimiter = ',',
        default_value = "rust"
    )]
    pub(super) generators: Vec<crate::tools::bench::Generator>,
    /// Measure this running hub instead of starting servers.
    #[arg(long, env = "CAPS_HUB", value_parser = parse_hub_url)]
    pub(super) hub: Option<String>,
    /// The running hub's process id (to read its CPU and memory).
    #[arg(long, env = "CAPS_BENCH_HUB_PID")]
    pub(super) hub_pid: Option<u32>,
    /// The shape of the load: bench (4 vendors, 4 drivers, a window of 64) or lab (the course's: 10 shops, 2 couriers, a window of 20); --vendors, --drivers and --window override it.
    #[arg(long, env = "CAPS_BENCH_SCENARIO", value_enum, default_value = "bench")]
    pub(super) scenario: crate::tools::bench::Scenario,
    /// 3: vendors acknowledge each notice (`received`); 2: they never do, as the course's Phase 2 vendors.
    #[arg(long, env = "CAPS_BENCH_PHASE", default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub(super) phase: u8,
    /// Vendors [default: the scenario's].
    #[arg(long, env = "CAPS_BENCH_VENDORS")]
    pub(super) vendors: Option<usize>,
    /// Drivers [default: the scenario's].
    #[arg(long, env = "CAPS_BENCH_DRIVERS")]
    pub(super) drivers: Option<usize>,
    /// Orders per vendor.
    #[arg(long, env = "CAPS_BENCH_ORDERS", default_value_t = 2_500)]
    pub(super) orders: usize,
    /// Offered orders per second over all vendors (open loop); without it, closed loop.
    #[arg(long, env = "CAPS_BENCH_RATE")]
    pub(super) rate: Option<f64>,
    /// Orders in flight per vendor in closed loop [default: the scenario's].
    #[arg(long, env = "CAPS_BENCH_WINDOW")]
    pub(super) window: Option<usize>,
    /// Idle driver connections to open first (memory per connection, connection rate).
    #[arg(long, env = "CAPS_BENCH_CONNS", default_value_t = 0)]
    pub(super) conns: usize,
    /// How many times to measure each target.
    #[arg(long, env = "CAPS_BENCH_ROUNDS", default_value_t = 1)]
    pub(super) rounds: usize,
    /// Give up on orders not delivered this long after the last progress.
    #[arg(long, env = "CAPS_BENCH_PATIENCE", default_value = "10s", value_parser = parse_positive_duration)]
    pub(super) patience: Duration,
    /// Clients reading the HTTP API in a loop meanwhile (/api/status, then 500 orders).
    #[arg(long, env = "CAPS_BENCH_POLLERS", default_value_t = 0)]
    pub(super) pollers: usize,
    /// Extra flags for the caps hubs started, e.g. --hub-arg=--rate-limit=100000.
    #[arg(
        long = "hub-arg",
        env = "CAPS_BENCH_HUB_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub(super) hub_args: Vec<String>,
    /// The PostgreSQL database of the caps-pg-* targets; emptied before each measurement (scripts/pg_cluster.sh gives a throwaway one).
    #[arg(long, env = "CAPS_DATABASE")]
    pub(super) database: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct HubArgs {
    /// Address to listen on.
    #[arg(long, env = "CAPS_HOST", default_value = "127.0.0.1")]
    pub(super) host: String,
    /// Port to listen on; 0 picks a free one (the first stdout line names it).
    #[arg(long, env = "CAPS_PORT", default_value_t = 3000)]
    pub(super) port: u16,
    /// Where the hub keeps orders, their history and queued notices (SQLite)
    /// [default: $XDG_DATA_HOME/caps, else ~/.local/share/caps].
    #[arg(long, env = "CAPS_DATA_DIR", conflicts_with_all = ["ephemeral", "database"])]
    pub(super) data_dir: Option<PathBuf>,
    /// Keep orders in this PostgreSQL database (postgres://user:password@host:port/name), shared by every hub of a group; see "Running several hubs" in the README.
    #[arg(long, env = "CAPS_DATABASE", conflicts_with = "ephemeral")]
    pub(super) database: Option<String>,
    /// This hub's id in its group: keep it across restarts [default: <host name>-<port>].
    #[arg(long, env = "CAPS_HUB_ID", requires = "database", value_parser = parse_hub_id)]
    pub(super) hub_id: Option<String>,
    /// In a group: a hub silent this long is dead, and another hub takes its orders over.
    #[arg(long, env = "CAPS_HUB_DEAD_AFTER", default_value = "10s", value_parser = parse_positive_duration)]
    pub(super) hub_dead_after: Duration,
    /// In a group: an order waiting this long at a hub with no driver free may be taken by a hub with one.
    #[arg(long, env = "CAPS_TAKE_AFTER", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub(super) take_after: Duration,
    /// Keep everything in memory: a restart forgets all orders.
    #[arg(long, env = "CAPS_EPHEMERAL")]
    pub(super) ephemeral: bool,
    /// Most delivery notices kept per store until its vendor acknowledges them.
    #[arg(long, env = "CAPS_QUEUE_LIMIT", default_value_t = 10_000)]
    pub(super) queue_limit: usize,
    /// When a commit counts as done: `full` (on disk: survives a power cut) or
    /// `normal` (handed to the OS: survives the hub being killed).
    #[arg(long, env = "CAPS_SYNC", value_enum, default_value = "full")]
    pub(super) sync: SyncArg,
    /// Compact orders delivered longer ago than this (e.g. 90d): their history and customer
    /// data are removed, and a re-sent order is still recognised [default: keep everything].
    #[arg(long, env = "CAPS_RETAIN", value_parser = parse_positive_duration)]
    pub(super) retain: Option<Duration>,
    /// How often compaction looks for orders past --retain.
    #[arg(long, env = "CAPS_COMPACT_EVERY", default_value = "1m", value_parser = parse_positive_duration)]
    pub(super) compact_every: Duration,
    /// How long a replay (`getAll`) may take: one that a connection has not taken by then stops and is refused `busy`.
    #[arg(long, env = "CAPS_REPLAY_DEADLINE", default_value = "60s", value_parser = parse_positive_duration)]
    pub(super) replay_deadline: Duration,
    /// With the commit log: the longest a change waits for the sequencer to finish the burst it came in, so that one sync carries the burst. Without it (or on --database): under load (commits moments apart), how long a commit waits for more changes to carry in one fsync. 0s never waits [default: 1ms with the commit log, else 500us].
    #[arg(long, env = "CAPS_COMMIT_DELAY", value_parser = humantime::parse_duration)]
    pub(super) commit_delay: Option<Duration>,
    /// With a data dir: `on` commits each batch by appending it to a log and syncing it, and brings the tables up to date after, many commits at a time; `off` commits each batch as a transaction on the tables.
    #[arg(long, env = "CAPS_COMMIT_LOG", value_enum, default_value = "on")]
    pub(super) commit_log: Switch,
    /// How long the tables' writer gathers logged commits before bringing them in (tests stretch it).
    #[arg(long, env = "CAPS_TABLES_GATHER", default_value = "50ms", value_parser = humantime::parse_duration, hide = true)]
    pub(super) tables_gather: Duration,
    /// Threads serving connections [default: one fewer than the CPUs, at least one: the data dir's writer has a core of its own].
    #[arg(long, env = "CAPS_WORKERS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(super) workers: Option<u64>,
    #[command(flatten)]
    pub(super) dispatch: DispatchArgs,
    #[command(flatten)]
    pub(super) security: SecurityArgs,
}

/// Who may connect, and what one client may cost the hub.
#[derive(Debug, Args)]
pub(super) struct SecurityArgs {
    /// Require signed tokens (see `caps token`) made with the secret in this file.
    #[arg(long, env = "CAPS_SECRET_FILE")]
    pub(super) secret_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without --secret-file.
    #[arg(long, env = "CAPS_INSECURE")]
    pub(super) insecure: bool,
    /// Most connections held at once: TCP connections (HTTP, polling, WebSocket), and Socket.IO sessions.
    #[arg(long, env = "CAPS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(super) max_connections: usize,
    /// Most TCP connections held at once from one address.
    #[arg(long, env = "CAPS_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) max_connections_per_address: u64,
    /// API requests (and Socket.IO session openings) per second, per address and per token (bursts of twice that).
    #[arg(long, env = "CAPS_API_RATE_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) api_rate_limit: u32,
    /// URLs the hub is reached by besides its addresses and localhost, e.g. https://caps.example.com; requests naming any other host are refused (DNS rebinding).
    #[arg(long, env = "CAPS_PUBLIC_URL", value_delimiter = ',', value_parser = parse_hub_url)]
    pub(super) public_url: Vec<String>,
    /// Events per second one connection may send (bursts of twice that); excess is refused.
    #[arg(long, env = "CAPS_RATE_LIMIT", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) rate_limit: u32,
    /// Largest event payload, in bytes; larger ones are refused (payload_too_large).
    #[arg(long, env = "CAPS_MAX_PAYLOAD", default_value_t = 16 * 1024)]
    pub(super) max_payload: usize,
    /// Largest transport message, in bytes; a client that sends more is disconnected.
    #[arg(long, env = "CAPS_MAX_MESSAGE", default_value_t = 1024 * 1024)]
    pub(super) max_message: u64,
    /// Web origins (e.g. https://shop.example) whose pages may connect, besides the hub's own; `*` for any.
    #[arg(long, env = "CAPS_CORS_ORIGIN", value_delimiter = ',')]
    pub(super) cors_origin: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    #[command(subcommand)]
    pub(super) role: TokenRole,
    /// The hub's secret file.
    #[arg(long, env = "CAPS_SECRET_FILE", global = true)]
    pub(super) secret_file: Option<PathBuf>,
    /// How long the token is valid.
    #[arg(long, env = "CAPS_TOKEN_TTL", default_value = "30d", value_parser = parse_positive_duration, global = true)]
    pub(super) ttl: Duration,
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenRole {
    /// A token for the vendor of one store.
    Vendor {
        /// The store.
        #[arg(long, env = "CAPS_STORE")]
        store: StoreId,
    },
    /// A token for one driver.
    Driver {
        /// The driver's name.
        #[arg(long, env = "CAPS_NAME")]
        name: DriverName,
    },
    /// A token that may only read (a dashboard).
    Viewer,
    /// A token for whoever runs the hub: reads, and hands a driver's packages back.
    Operator,
}

/// How the hub hands out packages.
#[derive(Debug, Args)]
pub(super) struct DispatchArgs {
    /// How long a driver has to report a package in transit before it is offered to another.
    #[arg(long, env = "CAPS_OFFER_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub(super) offer_timeout: Duration,
    /// Re-dispatch the packages of a named driver offline this long, or `never`.
    #[arg(long, env = "CAPS_RECLAIM_AFTER", default_value = "15m", value_parser = parse_reclaim_after)]
    pub(super) reclaim_after: Reclaim,
    /// Delivered orders kept in memory: with a data dir a cache (older ones are read from
    /// disk); with --ephemeral the window in which a repeated order is recognised
    /// [default: 10000 with a data dir, 100000 ephemeral].
    #[arg(long, env = "CAPS_KEEP_DELIVERED", value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) keep_delivered: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// The hub's URL.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_parser = parse_hub_url)]
    pub(super) hub: String,
    /// A viewer token, for a hub with a secret.
    #[arg(long, env = "CAPS_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// Print the JSON the hub returns instead of a table.
    #[arg(long, env = "CAPS_JSON")]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct TrackArgs {
    /// The order's id.
    pub(super) order_id: String,
    /// The order's store, when several stores use the same id.
    #[arg(long, env = "CAPS_STORE")]
    pub(super) store: Option<String>,
    /// The hub's URL.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_parser = parse_hub_url)]
    pub(super) hub: String,
    /// A viewer token, or the vendor token of the order's store, for a hub with a secret.
    #[arg(long, env = "CAPS_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ReclaimArgs {
    /// The driver's name.
    pub(super) driver: DriverName,
    /// The hub's URL.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_parser = parse_hub_url)]
    pub(super) hub: String,
    /// An operator token, for a hub with a secret.
    #[arg(long, env = "CAPS_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

/// How a vendor or driver reaches its hub.
#[derive(Debug, Args)]
pub(super) struct LinkArgs {
    /// The hub's URL; a trailing `/caps` (the namespace, as the lab writes it) is accepted. Several, comma-separated (the hubs of one group): the client moves to the next when it cannot reach or loses the one it is on.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_delimiter = ',', value_parser = parse_hub_url)]
    pub(super) hub: Vec<String>,
    /// How long to keep trying to reach the hub at start before giving up.
    #[arg(long, env = "CAPS_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) connect_timeout: Duration,
    /// A token from `caps token`, for a hub that requires one.
    #[arg(
        long,
        env = "CAPS_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub(super) token: Option<String>,
    /// A file holding the token, read again at every reconnection: renew the file before the token expires and the client carries on.
    #[arg(long, env = "CAPS_TOKEN_FILE")]
    pub(super) token_file: Option<PathBuf>,
}

impl LinkArgs {
    /// Where the client's token comes from.
    pub(super) fn token_source(&self) -> Option<crate::roles::hub_link::TokenSource> {
        use crate::roles::hub_link::TokenSource;
        match (&self.token, &self.token_file) {
            (Some(token), _) => Some(TokenSource::Given(token.clone())),
            (None, Some(path)) => Some(TokenSource::File(path.clone())),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct VendorArgs {
    /// The store this vendor speaks for, e.g. 1-206-flowers.
    #[arg(long, env = "CAPS_STORE")]
    pub(super) store: StoreId,
    /// Time between two orders, e.g. 5s or 500ms.
    #[arg(long, env = "CAPS_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub(super) interval: Duration,
    /// Place this many orders, then exit 0 once all are delivered. Without it, run until Ctrl-C.
    #[arg(long, env = "CAPS_COUNT")]
    pub(super) count: Option<u64>,
    /// Send an order again if it is not delivered after this long.
    #[arg(long, env = "CAPS_RESEND_AFTER", default_value = "30s", value_parser = parse_positive_duration)]
    pub(super) resend_after: Duration,
    /// Remember placed and thanked orders in this file, so a restarted vendor
    /// carries on where it stopped (and never thanks twice).
    #[arg(long, env = "CAPS_STATE_FILE")]
    pub(super) state_file: Option<PathBuf>,
    #[command(flatten)]
    pub(super) link: LinkArgs,
}

#[derive(Debug, Args)]
pub(super) struct DriverArgs {
    /// The driver's name, its identity at the hub across reconnections [default: a name made
    /// up once and kept in $XDG_STATE_HOME/caps (~/.local/state/caps), the same at every start].
    #[arg(long, env = "CAPS_NAME")]
    pub(super) name: Option<DriverName>,
    /// The most packages this driver carries at once.
    #[arg(long, env = "CAPS_CAPACITY", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(limits::CAPACITY)))]
    pub(super) capacity: u32,
    /// Time from being offered a package to picking it up.
    #[arg(long, env = "CAPS_PICKUP_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(super) pickup_delay: Duration,
    /// Time from picking a package up to delivering it.
    #[arg(long, env = "CAPS_DELIVER_DELAY", default_value = "3s", value_parser = humantime::parse_duration)]
    pub(super) deliver_delay: Duration,
    #[command(flatten)]
    pub(super) link: LinkArgs,
}

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Number of shops, each with its own store.
    #[arg(long, env = "CAPS_DEMO_VENDORS", default_value_t = 2)]
    pub(super) vendors: usize,
    /// Number of couriers.
    #[arg(long, env = "CAPS_DEMO_DRIVERS", default_value_t = 2)]
    pub(super) drivers: usize,
    /// Orders per shop; 0 runs until Ctrl-C.
    #[arg(long, env = "CAPS_DEMO_ORDERS", default_value_t = 3)]
    pub(super) orders: u64,
    /// Time between two orders of one shop.
    #[arg(long, env = "CAPS_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub(super) interval: Duration,
    /// Time from being offered a package to picking it up.
    #[arg(long, env = "CAPS_PICKUP_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(super) pickup_delay: Duration,
    /// Time from picking a package up to delivering it.
    #[arg(long, env = "CAPS_DELIVER_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(super) deliver_delay: Duration,
    /// Port for the demo's hub; 0 picks a free one.
    #[arg(long, env = "CAPS_PORT", default_value_t = 0)]
    pub(super) port: u16,
    /// Run a group of this many hubs on --database, the shops and couriers spread over them.
    #[arg(long, env = "CAPS_DEMO_HUBS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub(super) hubs: u64,
    /// The PostgreSQL database of the demo's group of hubs (see --hubs).
    #[arg(long, env = "CAPS_DATABASE")]
    pub(super) database: Option<String>,
}

impl Cli {
    /// What stderr shows when RUST_LOG is not set: the demo keeps the
    /// terminal for the roles' lines; the others say what they are doing.
    /// How many threads the async runtime should have: the hub's
    /// `--workers`; other commands take tokio's default (one per CPU).
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Hub(args) => Some(
                args.workers
                    .map_or_else(default_hub_workers, |workers| workers as usize),
            ),
            // The floor runs as the hub does.
            Command::BenchPeer { .. } => Some(default_hub_workers()),
            _ => None,
        }
    }

    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_)
            | Command::Status(_)
            | Command::Token(_)
            | Command::Track(_)
            | Command::Reclaim(_)
            | Command::Bench(_)
            | Command::BenchEcho { .. }
            | Command::BenchPeer { .. } => "warn",
            Command::Hub(_) | Command::Vendor(_) | Command::Driver(_) => "warn,caps=info",
        }
    }
}

/// When a driver's packages go back to `ready` (`--reclaim-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reclaim {
    /// After the driver has been offline this long.
    After(Duration),
    /// Never: they wait for their driver.
    Never,
}

fn parse_reclaim_after(raw: &str) -> Result<Reclaim, String> {
    if raw.trim().eq_ignore_ascii_case("never") {
        return Ok(Reclaim::Never);
    }
    parse_positive_duration(raw).map(Reclaim::After)
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Switch {
    On,
    Off,
}

/// When a hub's commit counts as done (`--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum SyncArg {
    /// After it reached the disk (fsync): survives a power cut.
    Full,
    /// After it reached the operating system: survives the hub being killed,
    /// not a power cut.
    Normal,
}

/// Accepts `http://host:port`, with or without a trailing `/` or `/caps`.
pub(super) fn parse_hub_url(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let base = trimmed
        .strip_suffix(crate::protocol::NAMESPACE)
        .unwrap_or(trimmed);
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| format!("{raw:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{raw:?} should be the hub's base URL, like http://127.0.0.1:3000"
        ));
    }
    Ok(base.to_owned())
}

fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(duration) if duration.is_zero() => Err("must be more than zero".into()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// A hub id: what the group's tables and the logs name a hub by.
fn parse_hub_id(id: &str) -> Result<String, String> {
    let fits = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if fits {
        Ok(id.to_owned())
    } else {
        Err("1 to 64 letters, digits, '-', '_', '.' or ':'".into())
    }
}

/// The hub's async workers unless `--workers` says: one fewer than the CPUs
/// (the data dir's writer has a core of its own), at least one.
fn default_hub_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cpus| cpus.get().saturating_sub(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn hub_urls_are_normalised() {
        assert_eq!(
            parse_hub_url("http://localhost:3000/caps").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(
            parse_hub_url("http://localhost:3000/").unwrap(),
            "http://localhost:3000"
        );
        assert!(parse_hub_url("localhost:3000").is_err());
        assert!(parse_hub_url("http://localhost:3000/other/path").is_err());
    }

    #[test]
    fn durations_and_env_vars_are_read() {
        let cli = Cli::try_parse_from([
            "caps",
            "driver",
            "--pickup-delay",
            "250ms",
            "--deliver-delay",
            "2s",
        ])
        .unwrap();
        let Command::Driver(args) = cli.command else {
            panic!("not a driver")
        };
        assert_eq!(args.pickup_delay, Duration::from_millis(250));
        assert_eq!(args.deliver_delay, Duration::from_secs(2));

        let error = Cli::try_parse_from(["caps", "vendor", "--store", "a", "--interval", "0s"])
            .unwrap_err();
        assert!(
            error.to_string().contains("must be more than zero"),
            "{error}"
        );

        let error = Cli::try_parse_from(["caps", "vendor", "--store", ""]).unwrap_err();
        assert!(
            error.to_string().contains("store must not be empty"),
            "{error}"
        );
    }
}
