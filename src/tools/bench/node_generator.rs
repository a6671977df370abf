//! The second load generator: `bench/generator.mjs`, on the official
//! socket.io-client, driving the same scenarios as the Rust generator while
//! caps bench measures the server the same way. A figure only counts when
//! both generators put it on the same side of a target.
//!
//! The generator says where it is in JSON lines on stdout and waits for a
//! line on stdin at the points where the server must be read (after the idle
//! connections, and before the load starts); see the script's header.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use super::target::{Target, repo_file};
use super::{BenchConfig, Figures};

/// One line of the generator's.
#[derive(Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
enum Phase {
    #[serde(rename_all = "camelCase")]
    Idle {
        connects_per_second: f64,
    },
    Ready,
    #[serde(rename_all = "camelCase")]
    Done {
        sent: u64,
        delivered: u64,
        duplicates: u64,
        seconds: f64,
        p50_ms: f64,
        p99_ms: f64,
        max_ms: f64,
    },
}

/// Measures `target` with the Node generator.
pub async fn measure(
    target: &Target,
    label: &str,
    round: usize,
    config: &BenchConfig,
) -> anyhow::Result<Figures> {
    let script = repo_file("bench/generator.mjs")?;
    let settings = json!({
        "url": target.url,
        "urls": target.urls,
        "vendors": config.vendors,
        "drivers": config.drivers,
        "orders": config.orders,
        "rate": config.rate,
        "window": config.window,
        "acknowledge": config.acknowledge,
        "conns": config.conns,
        "patienceMs": config.patience.as_millis() as u64,
    });
    let mut child = Command::new("node")
        .arg(script)
        .arg(settings.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node bench/generator.mjs")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();

    let rss_before = target.rss();
    let (mut connects_per_second, mut kib_per_connection) = (None, None);
    let mut phase = next_phase(&mut lines).await?;
    if let Phase::Idle {
        connects_per_second: rate,
    } = phase
    {
        // Let the server settle (its per-connection tasks start), then read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        connects_per_second = Some(rate);
        kib_per_connection = super::kib_per_connection(rss_before, target.rss(), config.conns);
        stdin.write_all(b"next\n").await?;
        phase = next_phase(&mut lines).await?;
    }
    let Phase::Ready = phase else {
        bail!("the generator skipped its ready line")
    };
    let cpu_before = target.cpu();
    let db_before = target.on_database.then(super::target::database_cpu);
    stdin.write_all(b"go\n").await?;
    let Phase::Done {
        sent,
        delivered,
        duplicates,
        seconds,
        p50_ms,
        p99_ms,
        max_ms,
    } = next_phase(&mut lines).await?
    else {
        bail!("the generator ended out of order")
    };
    let cpu_after = target.cpu();
    let db_cpu_ms_per_1000 = super::db_cpu_per_1000(target, db_before, delivered);
    let _ = child.wait().await;
    let total = (config.vendors * config.orders) as u64;
    let cpu_ms_per_1000 = super::cpu_per_1000(cpu_before, cpu_after, delivered);
    Ok(Figures {
        target: label.to_owned(),
        generator: "node".to_owned(),
        scenario: config.scenario_label(),
        rate: config.rate,
        round,
        sent,
        delivered,
        lost: total.saturating_sub(delivered),
        duplicates,
        per_second: delivered as f64 / seconds.max(1e-9),
        p50_ms,
        p99_ms,
        max_ms,
        cpu_ms_per_1000,
        db_cpu_ms_per_1000,
        peak_rss_mib: target.peak_rss_mib(),
        connects_per_second,
        kib_per_connection,
        polls_per_second: None,
    })
}

async fn next_phase(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<Phase> {
    loop {
        let Some(line) = lines.next_line().await? else {
            bail!("the generator exited early (see its stderr)")
        };
        if line.starts_with('{') {
            return serde_json::from_str(&line)
                .with_context(|| format!("a generator line I cannot read: {line}"));
        }
    }
}
