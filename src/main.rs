//! The `caps` binary: parse the command line, run it, report failure.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,caps=info"))
        .init();
    match caps::cli::run(caps::cli::Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("caps: {error:#}");
            ExitCode::FAILURE
        }
    }
}
