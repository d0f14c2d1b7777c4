//! `producer`: parse the command line, connect to PostgreSQL (applying migrations), run the command.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gitfleet_producer::cli::{self, Cli};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    gitfleet_infra::telemetry::init(&cli.log);
    if matches!(cli.command, cli::Command::Openapi) {
        println!("{}", gitfleet_producer::api::openapi_document());
        return ExitCode::SUCCESS;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(gitfleet_infra::shutdown::on_signal(shutdown.clone()));

    // A long-running relay or server waits for PostgreSQL; a one-off command says it is unreachable within seconds.
    let wait = if matches!(cli.command, cli::Command::Relay { .. } | cli::Command::Serve(_)) { 60 } else { 5 };
    let pool = match gitfleet_infra::db::connect(&cli.database, Duration::from_secs(wait)).await {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match cli::run(cli, &pool, shutdown, &mut stdout).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
