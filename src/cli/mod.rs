//! The command line's wiring: turns the parsed arguments (`args`) into each
//! role's configuration and runs it. Only `main` decides the exit code.

mod args;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

pub use args::Cli;
use args::{
    Command, DispatchArgs, HubArgs, Reclaim, SecurityArgs, Switch, SyncArg, TokenArgs, TokenRole,
};

use crate::hub::group::GroupConfig;
use crate::hub::storage::sqlite::SyncMode;
use crate::hub::{self, Admission, DeskConfig, EventLog, Hub, HubConfig, Limits, Storage};
use crate::protocol::RoleName;
use crate::roles::console::Console;
use crate::roles::demo::{self, DemoConfig};
use crate::roles::driver::{self, DriverConfig};
use crate::roles::vendor::{self, VendorConfig};
use crate::shutdown::{Interrupted, shutdown_signal, stop_then_quit};
use crate::token::{self, Claims, Secret};
use crate::tools::status;

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Hub(args) => run_hub(args).await,
        Command::Vendor(args) => {
            let config = VendorConfig {
                token: args.link.token_source(),
                hubs: args.link.hub,
                connect_timeout: args.link.connect_timeout,
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
            // Without --name, the name this user's driver had last time,
            // held (locked) for as long as this driver runs.
            let (name, _kept) = match args.name {
                Some(name) => (name, None),
                None => {
                    let kept = driver::identity::kept_name(&driver::identity::default_state_dir())?;
                    log::info!(
                        "driver name={} (kept in {}; --name to choose one)",
                        kept.name,
                        kept.path.display()
                    );
                    (kept.name.clone(), Some(kept))
                }
            };
            let config = DriverConfig {
                token: args.link.token_source(),
                hubs: args.link.hub,
                connect_timeout: args.link.connect_timeout,
                name,
                capacity: Some(args.capacity),
                pickup_delay: args.pickup_delay,
                deliver_delay: args.deliver_delay,
            };
            // A second Ctrl-C quits without waiting for packages in hand.
            let (stop, now) = stop_then_quit();
            tokio::select! {
                delivered = driver::run(config, Console::stdout(), stop.cancelled_owned()) => delivered.map(|_| ()),
                () = now.cancelled() => Err(Interrupted.into()),
            }
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
                hubs: args.hubs as usize,
                database: args.database,
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
        Command::Reclaim(args) => {
            status::reclaim(&args.hub, args.token.as_deref(), args.driver.as_str()).await
        }
        Command::Token(args) => {
            println!("{}", mint_token(args)?);
            Ok(())
        }
        Command::Bench(args) => {
            let shape = args.scenario.shape();
            crate::tools::bench::run(crate::tools::bench::BenchConfig {
                targets: args.targets,
                generators: args.generators,
                hub: args.hub,
                hub_pid: args.hub_pid,
                hub_args: args.hub_args,
                database: args.database,
                scenario: args.scenario,
                acknowledge: args.phase == 3,
                vendors: args.vendors.unwrap_or(shape.vendors),
                drivers: args.drivers.unwrap_or(shape.drivers),
                orders: args.orders,
                rate: args.rate,
                window: args.window.unwrap_or(shape.window),
                conns: args.conns,
                rounds: args.rounds,
                patience: args.patience,
                pollers: args.pollers,
            })
            .await
        }
        Command::BenchEcho { port } => crate::tools::bench::echo::serve(port).await,
        Command::BenchPeer {
            port,
            durable,
            commit_delay,
        } => {
            let recorder = durable
                .map(|dir| crate::tools::bench::peer::Recorder::start(&dir, commit_delay))
                .transpose()?;
            crate::tools::bench::peer::serve(port, recorder).await
        }
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
        TokenRole::Operator => (RoleName::Operator, None, None),
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
        Storage::Database { hub_id, .. } => log::info!("hub {hub_id} of a group"),
    }
    let hub = Hub::open(config)?;
    let listener = hub::bind(&args.host, args.port)
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

impl SecurityArgs {
    fn admission(&self) -> anyhow::Result<Admission> {
        match &self.secret_file {
            Some(path) => Ok(Admission::Tokens(Secret::read(path)?)),
            None => Ok(Admission::Open),
        }
    }

    fn limits(&self) -> Limits {
        // A page served under a public URL may call the hub even when a
        // proxy in front rewrites the Host header.
        let mut cors_origins = self.cors_origin.clone();
        cors_origins.extend(self.public_url.iter().cloned());
        let public_hosts = self
            .public_url
            .iter()
            .filter_map(|url| url.split_once("://"))
            .map(|(_, authority)| match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => authority,
            })
            .map(str::to_ascii_lowercase)
            .collect();
        Limits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address as usize,
            requests_per_second: self.api_rate_limit,
            events_per_second: self.rate_limit,
            max_event_bytes: self.max_payload,
            max_message_bytes: self.max_message,
            cors_origins,
            public_hosts,
        }
    }
}

impl HubArgs {
    fn config(&self) -> anyhow::Result<HubConfig> {
        let mut config = if self.ephemeral {
            HubConfig::ephemeral()
        } else if let Some(url) = &self.database {
            let mut config = HubConfig::durable(PathBuf::new());
            config.storage = Storage::Database {
                url: url.clone(),
                hub_id: self
                    .hub_id
                    .clone()
                    .unwrap_or_else(|| default_hub_id(self.port)),
                group: GroupConfig {
                    beat_every: (self.hub_dead_after / 5).min(Duration::from_secs(1)),
                    dead_after: self.hub_dead_after,
                    take_after: self.take_after,
                },
            };
            config
        } else {
            HubConfig::durable(self.data_dir.clone().unwrap_or_else(hub::default_data_dir))
        };
        config.dispatch = self.dispatch.config(config.dispatch.keep_delivered);
        config.queue_limit = self.queue_limit;
        config.sync = self.sync.into();
        config.retain = self.retain;
        config.compact_every = self.compact_every;
        config.commit_log = self.commit_log == Switch::On;
        config.tables_gather = self.tables_gather;
        config.commit_delay =
            self.commit_delay
                .unwrap_or(match (&config.storage, config.commit_log) {
                    (Storage::DataDir(_), true) => HubConfig::TURN_WAIT,
                    _ => HubConfig::COMMIT_DELAY,
                });
        config.replay_deadline = self.replay_deadline;
        config.admission = self.security.admission()?;
        config.limits = self.security.limits();
        Ok(config)
    }
}

/// A hub id stable across restarts: this machine's name and the port.
fn default_hub_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hub".into());
    if port == 0 {
        // A port picked at start is not stable: neither can the id be.
        let id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        log::warn!("--port 0 and no --hub-id: this hub is {id} until it stops");
        return id;
    }
    format!("{host}-{port}")
}

impl DispatchArgs {
    /// The desk's configuration; `keep_delivered` unless the flag says otherwise.
    fn config(&self, keep_delivered: usize) -> DeskConfig {
        DeskConfig {
            offer_timeout: self.offer_timeout,
            reclaim_after: match self.reclaim_after {
                Reclaim::After(after) => Some(after),
                Reclaim::Never => None,
            },
            keep_delivered: self
                .keep_delivered
                .map_or(keep_delivered, |kept| kept as usize),
        }
    }
}

impl From<SyncArg> for SyncMode {
    fn from(sync: SyncArg) -> SyncMode {
        match sync {
            SyncArg::Full => SyncMode::Full,
            SyncArg::Normal => SyncMode::Normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "10.0.0.1", "example.com", "::"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
