//! The `caps` binary: parse the command line, run it, report failure.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = caps::cli::Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.default_log_filter()),
    )
    .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = cli.worker_threads() {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("caps: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(caps::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A second Ctrl-C: the shell's code for an interrupt, and no message.
        Err(error) if error.is::<caps::shutdown::Interrupted>() => ExitCode::from(130),
        Err(error) => {
            eprintln!("caps: {error:#}");
            ExitCode::FAILURE
        }
    }
}
