//! The `caps` binary: parse the command line, run it, report failure.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = caps::cli::Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.default_log_filter()),
    )
    .init();
    match caps::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // A second Ctrl-C: the shell's code for an interrupt, and no message.
        Err(error) if error.is::<caps::shutdown::Interrupted>() => ExitCode::from(130),
        Err(error) => {
            eprintln!("caps: {error:#}");
            ExitCode::FAILURE
        }
    }
}
