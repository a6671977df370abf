//! The command line: one `Cli` with a subcommand per role. Doc comments here
//! are the `--help` text; every flag also reads a `CAPS_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::console::Console;
use crate::demo::{self, DemoConfig};
use crate::driver::{self, DriverConfig};
use crate::hub::{self, Admission, DispatchConfig, EventLog, Hub, HubConfig, Limits, Storage};
use crate::protocol::{DriverName, RoleName, StoreId, limits};
use crate::status;
use crate::token::{self, Claims, Secret};
use crate::vendor::{self, VendorConfig};

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
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Measure a hub under load: throughput, latency, CPU and memory, against the Node peer and a ceiling.
    Bench(BenchArgs),
    /// The bench's ceiling: a bare WebSocket server that echoes events back.
    #[command(hide = true)]
    BenchEcho {
        /// Port to listen on; 0 picks a free one.
        #[arg(long, env = "CAPS_PORT", default_value_t = 0)]
        port: u16,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// The servers to measure, in turns each round.
    #[arg(
        long,
        env = "CAPS_BENCH_TARGETS",
        value_enum,
        value_delimiter = ',',
        default_value = "caps"
    )]
    targets: Vec<crate::bench::Kind>,
    /// Measure this running hub instead of starting servers.
    #[arg(long, env = "CAPS_HUB", value_parser = parse_hub_url)]
    hub: Option<String>,
    /// The running hub's process id (to read its CPU and memory).
    #[arg(long, env = "CAPS_BENCH_HUB_PID")]
    hub_pid: Option<u32>,
    /// Vendors.
    #[arg(long, env = "CAPS_BENCH_VENDORS", default_value_t = 4)]
    vendors: usize,
    /// Drivers.
    #[arg(long, env = "CAPS_BENCH_DRIVERS", default_value_t = 4)]
    drivers: usize,
    /// Orders per vendor.
    #[arg(long, env = "CAPS_BENCH_ORDERS", default_value_t = 2_500)]
    orders: usize,
    /// Offered orders per second over all vendors (open loop); without it, closed loop.
    #[arg(long, env = "CAPS_BENCH_RATE")]
    rate: Option<f64>,
    /// Orders in flight per vendor in closed loop.
    #[arg(long, env = "CAPS_BENCH_WINDOW", default_value_t = 64)]
    window: usize,
    /// Idle driver connections to open first (memory per connection, connection rate).
    #[arg(long, env = "CAPS_BENCH_CONNS", default_value_t = 0)]
    conns: usize,
    /// How many times to measure each target.
    #[arg(long, env = "CAPS_BENCH_ROUNDS", default_value_t = 1)]
    rounds: usize,
    /// Give up on orders not delivered this long after the last progress.
    #[arg(long, env = "CAPS_BENCH_PATIENCE", default_value = "10s", value_parser = parse_positive_duration)]
    patience: Duration,
    /// Extra flags for the caps hubs started, e.g. --hub-arg=--rate-limit=100000.
    #[arg(
        long = "hub-arg",
        env = "CAPS_BENCH_HUB_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    hub_args: Vec<String>,
}

#[derive(Debug, Args)]
struct HubArgs {
    /// Address to listen on.
    #[arg(long, env = "CAPS_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the first stdout line names it).
    #[arg(long, env = "CAPS_PORT", default_value_t = 3000)]
    port: u16,
    /// Where the hub keeps orders, their history and queued notices (SQLite)
    /// [default: $XDG_DATA_HOME/caps, else ~/.local/share/caps].
    #[arg(long, env = "CAPS_DATA_DIR", conflicts_with = "ephemeral")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory: a restart forgets all orders.
    #[arg(long, env = "CAPS_EPHEMERAL")]
    ephemeral: bool,
    /// Most delivery notices kept per store until its vendor acknowledges them.
    #[arg(long, env = "CAPS_QUEUE_LIMIT", default_value_t = 10_000)]
    queue_limit: usize,
    /// When a commit counts as done: `full` (on disk: survives a power cut) or
    /// `normal` (handed to the OS: survives the hub being killed).
    #[arg(long, env = "CAPS_SYNC", value_enum, default_value = "full")]
    sync: hub::sqlite::Sync,
    #[command(flatten)]
    dispatch: DispatchArgs,
    #[command(flatten)]
    security: SecurityArgs,
}

/// Who may connect, and what one client may cost the hub.
#[derive(Debug, Args)]
struct SecurityArgs {
    /// Require signed tokens (see `caps token`) made with the secret in this file.
    #[arg(long, env = "CAPS_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without --secret-file.
    #[arg(long, env = "CAPS_INSECURE")]
    insecure: bool,
    /// Most Socket.IO connections held at once.
    #[arg(long, env = "CAPS_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Events per second one connection may send (bursts of twice that); excess is refused.
    #[arg(long, env = "CAPS_RATE_LIMIT", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: u32,
    /// Largest event payload, in bytes; larger ones are refused (payload_too_large).
    #[arg(long, env = "CAPS_MAX_PAYLOAD", default_value_t = 16 * 1024)]
    max_payload: usize,
    /// Largest transport message, in bytes; a client that sends more is disconnected.
    #[arg(long, env = "CAPS_MAX_MESSAGE", default_value_t = 1024 * 1024)]
    max_message: u64,
    /// Web origins (e.g. https://shop.example) whose pages may connect, besides the hub's own; `*` for any.
    #[arg(long, env = "CAPS_CORS_ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
}

impl SecurityArgs {
    fn admission(&self) -> anyhow::Result<Admission> {
        match &self.secret_file {
            Some(path) => Ok(Admission::Tokens(Secret::read(path)?)),
            None => Ok(Admission::Open),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            events_per_second: self.rate_limit,
            max_event_bytes: self.max_payload,
            max_message_bytes: self.max_message,
            cors_origins: self.cors_origin.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(subcommand)]
    role: TokenRole,
    /// The hub's secret file.
    #[arg(long, env = "CAPS_SECRET_FILE", global = true)]
    secret_file: Option<PathBuf>,
    /// How long the token is valid.
    #[arg(long, env = "CAPS_TOKEN_TTL", default_value = "30d", value_parser = parse_positive_duration, global = true)]
    ttl: Duration,
}

#[derive(Debug, Subcommand)]
enum TokenRole {
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
}

impl HubArgs {
    fn config(&self) -> anyhow::Result<HubConfig> {
        let mut config = if self.ephemeral {
            HubConfig::ephemeral()
        } else {
            HubConfig::durable(self.data_dir.clone().unwrap_or_else(hub::default_data_dir))
        };
        config.dispatch = self.dispatch.config();
        config.queue_limit = self.queue_limit;
        config.sync = self.sync;
        config.admission = self.security.admission()?;
        config.limits = self.security.limits();
        Ok(config)
    }
}

/// How the hub hands out packages.
#[derive(Debug, Args)]
struct DispatchArgs {
    /// How long a driver has to report a package in transit before it is offered to another.
    #[arg(long, env = "CAPS_OFFER_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    offer_timeout: Duration,
    /// Re-dispatch the packages of a named driver offline this long [default: never].
    #[arg(long, env = "CAPS_RECLAIM_AFTER", value_parser = parse_positive_duration)]
    reclaim_after: Option<Duration>,
}

impl DispatchArgs {
    fn config(&self) -> DispatchConfig {
        DispatchConfig {
            offer_timeout: self.offer_timeout,
            reclaim_after: self.reclaim_after,
            ..DispatchConfig::default()
        }
    }
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The hub's URL.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_parser = parse_hub_url)]
    hub: String,
    /// A viewer token, for a hub with a secret.
    #[arg(long, env = "CAPS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the JSON the hub returns instead of a table.
    #[arg(long, env = "CAPS_JSON")]
    json: bool,
}

#[derive(Debug, Args)]
struct TrackArgs {
    /// The order's id.
    order_id: String,
    /// The order's store, when several stores use the same id.
    #[arg(long, env = "CAPS_STORE")]
    store: Option<String>,
    /// The hub's URL.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_parser = parse_hub_url)]
    hub: String,
    /// A viewer token, or the vendor token of the order's store, for a hub with a secret.
    #[arg(long, env = "CAPS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// How a vendor or driver reaches its hub.
#[derive(Debug, Args)]
struct LinkArgs {
    /// The hub's URL; a trailing `/caps` (the namespace, as the lab writes it) is accepted.
    #[arg(long, env = "CAPS_HUB", default_value = "http://127.0.0.1:3000", value_parser = parse_hub_url)]
    hub: String,
    /// How long to keep trying to reach the hub at start before giving up.
    #[arg(long, env = "CAPS_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// A token from `caps token`, for a hub that requires one.
    #[arg(long, env = "CAPS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct VendorArgs {
    /// The store this vendor speaks for, e.g. 1-206-flowers.
    #[arg(long, env = "CAPS_STORE")]
    store: StoreId,
    /// Time between two orders, e.g. 5s or 500ms.
    #[arg(long, env = "CAPS_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    interval: Duration,
    /// Place this many orders, then exit 0 once all are delivered. Without it, run until Ctrl-C.
    #[arg(long, env = "CAPS_COUNT")]
    count: Option<u64>,
    /// Send an order again if it is not delivered after this long.
    #[arg(long, env = "CAPS_RESEND_AFTER", default_value = "30s", value_parser = parse_positive_duration)]
    resend_after: Duration,
    /// Remember placed and thanked orders in this file, so a restarted vendor
    /// carries on where it stopped (and never thanks twice).
    #[arg(long, env = "CAPS_STATE_FILE")]
    state_file: Option<PathBuf>,
    #[command(flatten)]
    link: LinkArgs,
}

#[derive(Debug, Args)]
struct DriverArgs {
    /// The driver's name, its identity at the hub across reconnections [default: driver-<random>].
    #[arg(long, env = "CAPS_NAME")]
    name: Option<DriverName>,
    /// The most packages this driver carries at once.
    #[arg(long, env = "CAPS_CAPACITY", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(limits::CAPACITY)))]
    capacity: u32,
    /// Time from being offered a package to picking it up.
    #[arg(long, env = "CAPS_PICKUP_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pickup_delay: Duration,
    /// Time from picking a package up to delivering it.
    #[arg(long, env = "CAPS_DELIVER_DELAY", default_value = "3s", value_parser = humantime::parse_duration)]
    deliver_delay: Duration,
    #[command(flatten)]
    link: LinkArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Number of shops, each with its own store.
    #[arg(long, env = "CAPS_DEMO_VENDORS", default_value_t = 2)]
    vendors: usize,
    /// Number of couriers.
    #[arg(long, env = "CAPS_DEMO_DRIVERS", default_value_t = 2)]
    drivers: usize,
    /// Orders per shop; 0 runs until Ctrl-C.
    #[arg(long, env = "CAPS_DEMO_ORDERS", default_value_t = 3)]
    orders: u64,
    /// Time between two orders of one shop.
    #[arg(long, env = "CAPS_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    interval: Duration,
    /// Time from being offered a package to picking it up.
    #[arg(long, env = "CAPS_PICKUP_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pickup_delay: Duration,
    /// Time from picking a package up to delivering it.
    #[arg(long, env = "CAPS_DELIVER_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    deliver_delay: Duration,
    /// Port for the demo's hub; 0 picks a free one.
    #[arg(long, env = "CAPS_PORT", default_value_t = 0)]
    port: u16,
}

impl Cli {
    /// What stderr shows when RUST_LOG is not set: the demo keeps the
    /// terminal for the roles' lines; the others say what they are doing.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_)
            | Command::Status(_)
            | Command::Token(_)
            | Command::Track(_)
            | Command::Bench(_)
            | Command::BenchEcho { .. } => "warn",
            Command::Hub(_) | Command::Vendor(_) | Command::Driver(_) => "warn,caps=info",
        }
    }
}

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Hub(args) => run_hub(args).await,
        Command::Vendor(args) => {
            let config = VendorConfig {
                hub_url: args.link.hub,
                connect_timeout: args.link.connect_timeout,
                token: args.link.token,
                store: args.store,
                interval: args.interval,
                count: args.count,
                resend_after: args.resend_after,
                state_file: args.state_file,
            };
            vendor::run(config, Console::stdout(), shutdown_signal()).await?;
            Ok(())
        }
        Command::Driver(args) => {
            let name = args.name.unwrap_or_else(random_driver_name);
            let config = DriverConfig {
                hub_url: args.link.hub,
                connect_timeout: args.link.connect_timeout,
                token: args.link.token,
                name,
                capacity: Some(args.capacity),
                pickup_delay: args.pickup_delay,
                deliver_delay: args.deliver_delay,
            };
            let first_signal = async {
                shutdown_signal().await;
                // A second Ctrl-C quits without waiting for packages in hand.
                tokio::spawn(async {
                    shutdown_signal().await;
                    std::process::exit(130);
                });
            };
            driver::run(config, Console::stdout(), first_signal).await?;
            Ok(())
        }
        Command::Demo(args) => {
            let config = DemoConfig {
                vendors: args.vendors,
                drivers: args.drivers,
                orders: (args.orders > 0).then_some(args.orders),
                interval: args.interval,
                pickup_delay: args.pickup_delay,
                deliver_delay: args.deliver_delay,
                port: args.port,
            };
            demo::run(config, shutdown_signal()).await
        }
        Command::Status(args) => status::print(&args.hub, args.token.as_deref(), args.json).await,
        Command::Track(args) => {
            status::track(
                &args.hub,
                args.token.as_deref(),
                &args.order_id,
                args.store.as_deref(),
            )
            .await
        }
        Command::Token(args) => {
            println!("{}", mint_token(args)?);
            Ok(())
        }
        Command::Bench(args) => {
            crate::bench::run(crate::bench::BenchConfig {
                targets: args.targets,
                hub: args.hub,
                hub_pid: args.hub_pid,
                hub_args: args.hub_args,
                vendors: args.vendors,
                drivers: args.drivers,
                orders: args.orders,
                rate: args.rate,
                window: args.window,
                conns: args.conns,
                rounds: args.rounds,
                patience: args.patience,
            })
            .await
        }
        Command::BenchEcho { port } => crate::bench::echo::serve(port).await,
    }
}

fn mint_token(args: TokenArgs) -> anyhow::Result<String> {
    let path = args
        .secret_file
        .context("--secret-file (or CAPS_SECRET_FILE) is required to sign a token")?;
    let secret = Secret::read(&path)?;
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(args.ttl.as_secs()).context("--ttl is too long")?;
    let (role, store, name) = match args.role {
        TokenRole::Vendor { store } => (RoleName::Vendor, Some(store), None),
        TokenRole::Driver { name } => (RoleName::Driver, None, Some(name)),
        TokenRole::Viewer => (RoleName::Viewer, None, None),
    };
    let claims = Claims {
        role,
        store,
        name,
        iat: now,
        exp: now.saturating_add(ttl),
    };
    Ok(token::mint(&secret, &claims))
}

async fn run_hub(args: HubArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    match &config.admission {
        Admission::Tokens(_) => {
            log::info!("clients must present tokens signed with the hub's secret")
        }
        Admission::Open if is_loopback(&args.host) => log::warn!(
            "open mode: no --secret-file, so the hub trusts the identities clients claim (fine on this machine)"
        ),
        Admission::Open if args.security.insecure => log::warn!(
            "open mode on {}: anyone who can reach this port can act as any store or driver (--insecure)",
            args.host
        ),
        Admission::Open => anyhow::bail!(
            "refusing to listen on {} without --secret-file: anyone on the network could act as any store or driver (add --insecure to do it anyway)",
            args.host
        ),
    }
    match &config.storage {
        Storage::Ephemeral => log::warn!("ephemeral hub: orders are kept in memory only"),
        Storage::DataDir(dir) => log::info!("data dir {}", dir.display()),
    }
    let hub = Hub::open(config)?;
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let log = EventLog::stdout();
    log.line(format!("caps hub listening on {}", hub::url_for(addr)));
    log::info!("namespace {} ready", crate::protocol::NAMESPACE);
    hub.serve(listener, log, shutdown_signal()).await?;
    log::info!("hub stopped");
    Ok(())
}

/// Whether `host` names this machine only.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Accepts `http://host:port`, with or without a trailing `/` or `/caps`.
fn parse_hub_url(raw: &str) -> Result<String, String> {
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

fn random_driver_name() -> DriverName {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    DriverName::new(format!("driver-{suffix}")).expect("a generated name is valid")
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                log::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
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
    fn loopback_hosts_are_recognised() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "10.0.0.1", "example.com", "::"] {
            assert!(!is_loopback(host), "{host}");
        }
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
