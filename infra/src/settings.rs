//! Typed settings, read once at start-up from flags or `GITFLEET_*` environment variables.

use clap::Args;

/// Where PostgreSQL is and how much of it we use.
#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL (libpq form). Never logged: it may carry a password.
    #[arg(
        id = "database_url",
        long = "database-url",
        value_name = "URL",
        env = "GITFLEET_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/gitfleet",
        hide_env_values = true
    )]
    pub url: String,
    /// Schema that holds gitfleet's tables (created when missing). Empty means the server's default search path.
    #[arg(
        id = "database_schema",
        long = "database-schema",
        value_name = "SCHEMA",
        env = "GITFLEET_DATABASE_SCHEMA",
        default_value = ""
    )]
    pub schema: String,
    /// Maximum connections in the pool.
    #[arg(
        id = "database_pool_size",
        long = "database-pool-size",
        value_name = "N",
        env = "GITFLEET_DATABASE_POOL_SIZE",
        default_value_t = 8,
        value_parser = positive
    )]
    pub pool_size: usize,
}

/// Where RabbitMQ is and what our exchanges and queues are called.
#[derive(Debug, Clone, Args)]
pub struct AmqpSettings {
    /// AMQP URL, vhost included; for a cluster, one URL per node separated by commas (a live one is used). Never
    /// logged: it carries a password.
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        value_name = "URL",
        env = "GITFLEET_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/gitfleet",
        hide_env_values = true
    )]
    pub url: String,
    /// Prefix of every exchange and queue name (`<prefix>.events`, `<prefix>.work`, ...).
    #[arg(
        id = "amqp_prefix",
        long = "amqp-prefix",
        value_name = "PREFIX",
        env = "GITFLEET_AMQP_PREFIX",
        default_value = "gitfleet"
    )]
    pub prefix: String,
    /// Deliveries of one message before the work queue dead-letters it (quorum queue `x-delivery-limit`).
    #[arg(
        long = "delivery-limit",
        env = "GITFLEET_DELIVERY_LIMIT",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub delivery_limit: u32,
    /// How long a deferred event waits in the delay queue before it is delivered again, in milliseconds.
    #[arg(
        long = "defer-delay-ms",
        env = "GITFLEET_DEFER_DELAY_MS",
        default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub defer_delay_ms: u32,
    /// Seconds an event waits before each new try after a transient fault (a remote, storage or the database out
    /// of reach), comma separated: one retry per entry, each through a delay queue (no worker slot is held), then
    /// the event is dead-lettered. The default spreads 6 retries over about 9 minutes.
    #[arg(
        long = "retry-delays",
        env = "GITFLEET_RETRY_DELAYS",
        value_delimiter = ',',
        default_value = "5,10,30,60,120,300",
        value_parser = clap::value_parser!(u32).range(1..=86_400)
    )]
    pub retry_delays: Vec<u32>,
}

/// Parses a count or size that must be at least 1 (a zero would disable what it bounds).
pub fn positive(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// How a command prints what it found: for people, or as JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Scope lookups that match no inventory object: `strict` fails the file (as Nautobot), `lenient` stores them
/// unresolved with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeModeArg {
    Strict,
    Lenient,
}

impl From<ScopeModeArg> for gitfleet_shared::loaders::ScopeMode {
    fn from(arg: ScopeModeArg) -> Self {
        match arg {
            ScopeModeArg::Strict => Self::Strict,
            ScopeModeArg::Lenient => Self::Lenient,
        }
    }
}

/// Parses a yes/no option as people write it: `yes`/`no`, `true`/`false`, `1`/`0`, `on`/`off` (any case; empty
/// is no).
pub fn yes_no(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" | "" => Ok(false),
        other => Err(format!("'{other}' is not yes or no")),
    }
}

/// Process logs: the filter (`RUST_LOG` syntax) and the format.
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// Which log lines are written, in `RUST_LOG` syntax (`info`, `gitfleet_worker=debug,info`, ...).
    #[arg(id = "log", long = "log", value_name = "FILTER", env = "GITFLEET_LOG", default_value = "info")]
    pub filter: String,
    /// `text` for people, `json` for JSON lines.
    #[arg(id = "log_format", long = "log-format", env = "GITFLEET_LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Every argument of a command and its subcommands that has no help line, as `command subcommand --option`
/// (what the `--help` tests of both binaries check is empty).
pub fn arguments_without_help(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    let mut stack = vec![(command.get_name().to_owned(), command)];
    while let Some((path, command)) = stack.pop() {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                let name = arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
                missing.push(format!("{path} {name}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                missing.push(format!("{path} {} (command)", sub.get_name()));
            }
            stack.push((format!("{path} {}", sub.get_name()), sub));
        }
    }
    missing.sort();
    missing
}
