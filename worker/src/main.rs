//! `worker`: read settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gitfleet_worker::WorkerSettings;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "worker", version, about = "gitfleet worker: sync Git repositories from the event queue")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: WorkerSettings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume events until SIGTERM or Ctrl-C (the default).
    Run,
    /// Load a local repository with the sync's loaders, no services needed; exit 1 on any error.
    Check(gitfleet_worker::check::CheckArgs),
    /// List the registered data types in refresh order.
    DataTypes,
}

#[tokio::main]
async fn main() -> ExitCode {
    gitfleet_infra::telemetry::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check(args) => match gitfleet_worker::check::run(args, &mut std::io::stdout().lock()) {
            Ok(0) => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        },
        Command::DataTypes => match gitfleet_worker::check::print_data_types(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(gitfleet_infra::shutdown::on_signal(shutdown.clone()));
            match gitfleet_worker::run(cli.settings, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "worker failed");
                    ExitCode::from(1)
                }
            }
        }
    }
}
