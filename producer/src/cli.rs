//! `producer` command line.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use deadpool_postgres::Pool;
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_infra::store::job_result::{self, JobResultView};
use gitfleet_infra::store::repository;
use gitfleet_shared::event::{EventKind, RequestedBy};
use gitfleet_shared::job_result::{JobStatus, format_duration};
use gitfleet_shared::repo::CommitId;
use gitfleet_shared::sanitize::printable;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::commands::{self, CommandError, NewRepo, Outcome, RepoChanges};
use crate::relay::{self, RelayOptions};

#[derive(Debug, Parser)]
#[command(name = "producer", version, about = "gitfleet producer: define repositories and emit their events")]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub log: gitfleet_infra::settings::LogSettings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, change, delete or sync a repository definition.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Inspect JobResults.
    #[command(subcommand, name = "job-result")]
    JobResult(JobResultCommand),
    /// Manage the scope inventory that config context lookups resolve against.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Publish recorded events to RabbitMQ (runs until SIGTERM or Ctrl-C).
    Relay {
        #[command(flatten)]
        amqp: AmqpSettings,
        /// Poll interval in milliseconds when no NOTIFY arrives.
        #[arg(long, env = "GITFLEET_RELAY_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        poll_ms: u64,
        /// Days finished JobResults (with their logs), lock holdings, replayed dead letters and webhook deliveries
        /// are kept; the latest JobResult of each live repository is always kept.
        #[arg(long, env = "GITFLEET_JOB_RESULT_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        job_result_retention_days: u32,
        #[command(flatten)]
        metrics: gitfleet_infra::metrics::MetricsSettings,
    },
    /// List or replay the events the fleet dead-lettered.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
    /// Make the live repositories match a file (a YAML list of repositories): create what is new, update what
    /// changed, and with --prune delete what the file does not list. All or nothing.
    Apply {
        /// The file (`-` for standard input).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: std::path::PathBuf,
        /// Also delete live repositories the file does not list.
        #[arg(long)]
        prune: bool,
        /// Print what would change and change nothing.
        #[arg(long)]
        diff: bool,
    },
    /// Serve the HTTP API (`/api/v1/`, `/healthz`, `/readyz`) until SIGTERM or Ctrl-C.
    Serve(crate::api::ServeArgs),
    /// Create, list or revoke the HTTP API's bearer tokens.
    #[command(subcommand)]
    Token(crate::tokens::TokenCommand),
    /// Print the HTTP API's OpenAPI document (what `/api/v1/openapi.json` serves) and exit; needs no database.
    Openapi,
    /// Apply database migrations and exit.
    Migrate,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Dead letters not yet replayed, newest first.
    List {
        /// Also those already replayed.
        #[arg(long)]
        all: bool,
        /// `text` for people, `json` for programs.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Send a dead-lettered event again (its JobResult becomes PENDING); without an ID, every one not yet replayed.
    Replay {
        /// The dead letter's number, as `dead-letters list` shows it.
        id: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Define a new repository and sync it.
    Create(CreateArgs),
    /// Change a repository (found by --name) and sync it.
    Update(UpdateArgs),
    /// Delete a repository and everything it loaded.
    Delete(NameArg),
    /// Sync a repository now.
    Sync(SyncArgs),
    /// Fetch and report what a sync would change, changing nothing.
    DryRun(NameArg),
    /// List live repositories.
    List,
    /// Print the records a repository has live (the shape of `worker check --format json`).
    Records(crate::records::RecordsArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The repository's name, unique among live repositories (at most 255 characters).
    #[arg(long)]
    pub name: String,
    /// The folder and Python package name of the repository: a Python identifier that is not a keyword or the name
    /// of an installed module. Default: made from the name (lower case, other characters as `_`, a leading `a` when
    /// the name does not start with a letter). Immutable once set.
    #[arg(long)]
    pub slug: Option<String>,
    /// Where to fetch from: a file://, git://, http(s):// or ssh:// URL, without credentials (they come from the
    /// secrets group).
    #[arg(long)]
    pub remote_url: String,
    /// Branch, tag or commit to sync.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Provided data types (repeat or separate with commas), e.g. extras.configcontext,extras.job.
    #[arg(long = "provides", value_delimiter = ',')]
    pub provides: Vec<String>,
    /// The secrets group holding the credentials (a token, or an SSH key) the workers fetch with.
    #[arg(long)]
    pub secrets_group: Option<String>,
    /// Limit for each git operation, in seconds (default: the worker's GITFLEET_GIT_TIMEOUT_SECS).
    #[arg(long)]
    pub git_timeout: Option<i32>,
    /// Ask the remote for the branch's tip this often and sync when it moved (30s, 5m, 1h; at least 10s); default:
    /// no polling, only events sync it.
    #[arg(long, value_name = "DURATION", value_parser = gitfleet_shared::repo::parse_sync_interval)]
    pub sync_interval: Option<i32>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The repository's current name.
    #[arg(long)]
    pub name: String,
    /// Rename the repository.
    #[arg(long)]
    pub new_name: Option<String>,
    /// Only accepted if equal to the current slug: slugs never change.
    #[arg(long)]
    pub slug: Option<String>,
    /// A new remote URL (same rules as for create).
    #[arg(long)]
    pub remote_url: Option<String>,
    /// A new branch, tag or commit to sync.
    #[arg(long)]
    pub branch: Option<String>,
    /// Replaces the provided data types (repeat or separate with commas).
    #[arg(long = "provides", value_delimiter = ',', num_args = 0..)]
    pub provides: Option<Vec<String>>,
    /// A new secrets group.
    #[arg(long, conflicts_with = "no_secrets_group")]
    pub secrets_group: Option<String>,
    /// Remove the secrets group.
    #[arg(long)]
    pub no_secrets_group: bool,
    /// Limit for each git operation, in seconds; 0 returns to the worker's default.
    #[arg(long)]
    pub git_timeout: Option<i32>,
    /// Poll the remote this often (30s, 5m, 1h; at least 10s); `none` stops polling.
    #[arg(long, value_name = "DURATION", value_parser = interval_or_none)]
    pub sync_interval: Option<IntervalSetting>,
}

/// A new sync interval in seconds, or `None` to stop polling.
#[derive(Debug, Clone, Copy)]
pub struct IntervalSetting(pub Option<i32>);

/// What `repo list` says of a polled repository: its interval, when it last looked, and its last failure.
fn polling(r: &repository::RepositoryRow) -> String {
    let Some(interval) = r.sync_interval_secs else { return String::new() };
    let polled = r.last_polled_at.map_or("never".to_owned(), |t| t.to_rfc3339());
    let failed = r.poll_error.as_deref().map_or(String::new(), |e| format!(", failing: {}", printable(e)));
    format!("\tpolled every {}, last {polled}{failed}", gitfleet_shared::repo::format_sync_interval(interval))
}

/// `none` (or `off`, `0`) for no polling, else a sync interval.
fn interval_or_none(text: &str) -> Result<IntervalSetting, String> {
    match text.trim() {
        "none" | "off" | "0" => Ok(IntervalSetting(None)),
        other => gitfleet_shared::repo::parse_sync_interval(other).map(|s| IntervalSetting(Some(s))),
    }
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The repository's name.
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The repository's name.
    #[arg(long)]
    pub name: String,
    /// The commit the branch is known to point at (lets a worker skip an unneeded fetch).
    #[arg(long)]
    pub target_commit: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Import scope objects from JSON: a list of {kind, id?, fields}, or {"objects": [...]}.
    Import {
        /// The JSON file to import.
        file: std::path::PathBuf,
        /// Replace, not merge: first remove every stored object of each kind that appears in the file (kinds not in
        /// the file are kept), so objects missing from the file disappear. Without it, objects are added or
        /// updated by (kind, id) and nothing is removed.
        #[arg(long)]
        replace: bool,
    },
    /// Count stored objects per kind.
    List,
}

#[derive(Debug, Subcommand)]
pub enum JobResultCommand {
    /// Print a JobResult and its log; exits 1 if it FAILED.
    Show {
        /// The JobResult's id (printed by the command that recorded the event).
        id: Uuid,
        /// Wait until the JobResult is SUCCESS or FAILURE.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 3).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// `text` for people, `json` for programs.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Which page of the log to print, from 1 (a large sync writes a line per file).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        page: u32,
        /// Log entries per page (1 to 100000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        page_size: u32,
    },
}

pub use gitfleet_infra::settings::Format;

/// Exit codes: 0 done, 1 operational failure or a FAILED JobResult, 2 bad input, 3 timed out waiting.
pub async fn run(cli: Cli, pool: &Pool, shutdown: CancellationToken, out: &mut impl Write) -> anyhow::Result<i32> {
    match cli.command {
        Command::Repo(command) => Ok(repo(pool, command, out).await?),
        Command::JobResult(JobResultCommand::Show { id, wait, timeout, format, page, page_size }) => {
            let page = LogPage { number: i64::from(page), size: i64::from(page_size) };
            show(pool, id, wait.then(|| Duration::from_secs(timeout)), format, page, out).await
        }
        Command::Relay { amqp, poll_ms, job_result_retention_days, metrics } => {
            let mut options = RelayOptions {
                poll_interval: Duration::from_millis(poll_ms),
                metrics_addr: metrics.addr,
                ..RelayOptions::default()
            };
            options.scheduler.retention.records = Duration::from_secs(u64::from(job_result_retention_days) * 86_400);
            relay::run(pool.clone(), cli.database, amqp, options, shutdown).await?;
            Ok(0)
        }
        Command::Serve(args) => {
            let listener = tokio::net::TcpListener::bind(args.addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.addr))?;
            let mut state = crate::api::AppState::new(pool.clone(), args.hooks)
                .map_err(|e| anyhow::anyhow!("cannot read the secrets directory: {e}"))?
                .with_broker(args.amqp);
            state.max_wait = Duration::from_secs(args.max_wait_secs);
            crate::api::run(listener, state, shutdown).await?;
            Ok(0)
        }
        Command::Token(command) => crate::tokens::command(pool, command, out).await,
        Command::Apply { file, prune, diff } => apply(pool, &file, prune, diff, out).await,
        Command::Openapi => {
            writeln!(out, "{}", crate::api::openapi_document())?;
            Ok(0)
        }
        Command::Migrate => Ok(0),
        Command::Inventory(command) => inventory(pool, command, out).await,
        Command::DeadLetters(command) => dead_letters(pool, command, out).await,
    }
}

async fn apply(
    pool: &Pool,
    file: &std::path::Path,
    prune: bool,
    diff: bool,
    out: &mut impl Write,
) -> anyhow::Result<i32> {
    use crate::apply::{self, ApplyError, ApplyOptions};
    let bytes = if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        bytes
    } else {
        match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(err) => {
                eprintln!("error: cannot read {}: {err}", file.display());
                return Ok(2);
            }
        }
    };
    let planned = match apply::parse_file(&bytes) {
        Ok(entries) => apply::apply(pool, entries, ApplyOptions { prune, dry_run: diff }, &RequestedBy::cli()).await,
        Err(err) => Err(err),
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(ApplyError::Invalid(errors)) => {
            eprintln!("error: {} not applied; nothing changed:", file.display());
            for (path, message) in errors {
                eprintln!("  {}: {}", printable(&path), printable(&message));
            }
            return Ok(2);
        }
        Err(err) => return Err(err.into()),
    };
    let verb = |done: &'static str, would: &'static str| if plan.dry_run { would } else { done };
    let job = |c: &apply::Change| c.job_result_id.map_or(String::new(), |id| format!(" (JobResult {id})"));
    for c in &plan.created {
        writeln!(out, "{} {}{}", verb("created", "would create"), printable(&c.name), job(c))?;
    }
    for c in &plan.updated {
        writeln!(out, "{} {}: {}{}", verb("updated", "would update"), printable(&c.name), c.fields.join(", "), job(c))?;
    }
    for c in &plan.deleted {
        writeln!(out, "{} {}{}", verb("deleted", "would delete"), printable(&c.name), job(c))?;
    }
    writeln!(
        out,
        "{} unchanged{}",
        plan.unchanged.len(),
        if plan.dry_run { "; nothing applied (--diff)" } else { "" }
    )?;
    Ok(0)
}

async fn dead_letters(pool: &Pool, command: DeadLetterCommand, out: &mut impl Write) -> anyhow::Result<i32> {
    match command {
        DeadLetterCommand::List { all, format } => {
            let letters = crate::dead_letters::list(pool, all).await?;
            if format == Format::Json {
                let rows: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.id, "event_id": d.event_id, "routing_key": d.routing_key, "reason": d.reason,
                            "received_at": d.received_at, "replayed_at": d.replayed_at, "headers": d.headers,
                            "payload": String::from_utf8_lossy(&d.payload),
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(0);
            }
            if letters.is_empty() {
                writeln!(out, "no dead letters")?;
            }
            for d in &letters {
                let event = d.event_id.map_or_else(|| "(not an event)".to_owned(), |e| e.to_string());
                let replayed = d.replayed_at.map(|t| format!("  replayed {t}")).unwrap_or_default();
                writeln!(
                    out,
                    "{}\t{}\t{event}\t{}\t{}{replayed}",
                    d.id,
                    d.received_at,
                    printable(&d.routing_key),
                    printable(&d.reason)
                )?;
            }
            Ok(0)
        }
        DeadLetterCommand::Replay { id } => match crate::dead_letters::replay(pool, id, &RequestedBy::cli()).await {
            Ok(events) => {
                for event in &events {
                    writeln!(out, "replayed {event}")?;
                }
                if events.is_empty() {
                    writeln!(out, "nothing to replay")?;
                }
                Ok(0)
            }
            Err(err) => {
                eprintln!("error: {err}");
                Ok(err.exit_code())
            }
        },
    }
}

async fn repo(pool: &Pool, command: RepoCommand, out: &mut impl Write) -> anyhow::Result<i32> {
    let by = RequestedBy::cli();
    let result = match command {
        RepoCommand::Create(a) => {
            let new = NewRepo {
                name: a.name,
                slug: a.slug,
                remote_url: a.remote_url,
                branch: Some(a.branch),
                provided_contents: a.provides,
                secrets_group: a.secrets_group,
                git_timeout_secs: a.git_timeout,
                sync_interval_secs: a.sync_interval,
            };
            commands::create(pool, new, by).await
        }
        RepoCommand::Update(a) => {
            let secrets_group = if a.no_secrets_group { Some(None) } else { a.secrets_group.map(Some) };
            let changes = RepoChanges {
                new_name: a.new_name,
                slug: a.slug,
                remote_url: a.remote_url,
                branch: a.branch,
                provided_contents: a.provides,
                secrets_group,
                git_timeout_secs: a.git_timeout.map(|t| (t != 0).then_some(t)),
                sync_interval_secs: a.sync_interval.map(|i| i.0),
            };
            commands::update(pool, &a.name, changes, by).await
        }
        RepoCommand::Delete(a) => commands::delete(pool, &a.name, by).await,
        RepoCommand::Sync(a) => match a.target_commit.map(CommitId::parse).transpose() {
            Ok(target) => commands::sync(pool, &a.name, EventKind::Sync, target, by).await,
            Err(e) => Err(CommandError::Invalid(vec![gitfleet_shared::repo::FieldError::field(
                "target_commit",
                e.to_string(),
            )])),
        },
        RepoCommand::DryRun(a) => commands::sync(pool, &a.name, EventKind::DryRun, None, by).await,
        RepoCommand::Records(a) => return crate::records::run(pool, a, out).await,
        RepoCommand::List => {
            let client = pool.get().await?;
            for r in repository::list_live(&**client).await? {
                let head = r.current_head.as_ref().map_or("-", |c| c.as_str());
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\tversion {} (applied {}){}",
                    printable(&r.name),
                    r.slug,
                    printable(&r.remote_url),
                    printable(r.branch.as_str()),
                    head,
                    r.version,
                    r.applied_version,
                    polling(&r)
                )?;
            }
            return Ok(0);
        }
    };
    match result {
        Ok(Outcome::Accepted { job_result_id, .. }) => {
            writeln!(out, "{job_result_id}")?;
            Ok(0)
        }
        Ok(Outcome::AlreadyDeleted { .. }) => {
            eprintln!("the repository is already deleted; nothing to do");
            Ok(0)
        }
        Err(err) => {
            for line in err.to_string().lines() {
                eprintln!("error: {line}");
            }
            Ok(err.exit_code())
        }
    }
}

async fn inventory(pool: &Pool, command: InventoryCommand, out: &mut impl Write) -> anyhow::Result<i32> {
    use gitfleet_infra::store::inventory::{self, ImportError};
    let mut client = pool.get().await?;
    match command {
        InventoryCommand::Import { file, replace } => {
            let objects = match read_objects(&file) {
                Ok(objects) => objects,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    return Ok(2);
                }
            };
            let tx = client.transaction().await?;
            match inventory::import(&*tx, &objects, replace).await {
                Ok(n) => {
                    tx.commit().await?;
                    writeln!(out, "imported {n} scope objects")?;
                    Ok(0)
                }
                Err(ImportError::Invalid(message)) => {
                    eprintln!("error: {message}");
                    Ok(2)
                }
                Err(err) => Err(err.into()),
            }
        }
        InventoryCommand::List => {
            for (kind, count) in gitfleet_infra::store::inventory::count_by_kind(&**client).await? {
                writeln!(out, "{kind}\t{count}")?;
            }
            Ok(0)
        }
    }
}

fn read_objects(path: &std::path::Path) -> anyhow::Result<Vec<gitfleet_shared::inventory::ScopeObject>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    gitfleet_shared::inventory::parse_objects(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Which log entries `job-result show` prints: page `number` (from 1) of `size` entries.
#[derive(Debug, Clone, Copy)]
struct LogPage {
    number: i64,
    size: i64,
}

async fn show(
    pool: &Pool,
    id: Uuid,
    wait: Option<Duration>,
    format: Format,
    page: LogPage,
    out: &mut impl Write,
) -> anyhow::Result<i32> {
    let deadline = wait.map(|w| Instant::now() + w);
    let client = pool.get().await?;
    loop {
        let Some(status) = job_result::status(&**client, id).await? else {
            eprintln!("error: no JobResult with id {id}");
            return Ok(2);
        };
        let terminal = status.is_terminal();
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        if terminal || deadline.is_none() || timed_out {
            // Only the asked-for page of the log is read: a 100,000-file sync has a line per file.
            let offset = (page.number - 1).saturating_mul(page.size);
            let Some((total, view)) = job_result::load_log_page(&**client, id, offset, page.size).await? else {
                eprintln!("error: no JobResult with id {id}");
                return Ok(2);
            };
            print_view(&view, format, out)?;
            if format == Format::Text && (offset > 0 || total > page.size) {
                let shown = i64::try_from(view.logs.len()).unwrap_or(i64::MAX);
                let pages = (total + page.size - 1) / page.size;
                let (first, last) = if shown == 0 { (0, 0) } else { (offset + 1, offset + shown) };
                write!(out, "  log page {} of {pages}: entries {first} to {last} of {total}", page.number)?;
                if page.number < pages {
                    write!(out, "; --page {} for the next", page.number + 1)?;
                }
                writeln!(out)?;
            }
            return Ok(match view.status() {
                Some(JobStatus::Failure | JobStatus::Revoked) => 1,
                _ if !terminal && timed_out => {
                    eprintln!("error: JobResult {id} is still {} after waiting", view.status);
                    3
                }
                _ => 0,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn print_view(view: &JobResultView, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    if format == Format::Json {
        let text = serde_json::to_string_pretty(view).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
    writeln!(out, "JobResult {}  {}", view.id, printable(&view.name))?;
    writeln!(out, "  status:     {}", view.status)?;
    if let Some(repo) = view.repository_id {
        writeln!(out, "  repository: {repo}")?;
    }
    writeln!(out, "  kind:       {}", view.event_kind.as_deref().unwrap_or("-"))?;
    writeln!(out, "  created:    {}", view.date_created.to_rfc3339())?;
    writeln!(out, "  started:    {}", time(view.date_started))?;
    writeln!(out, "  done:       {}", time(view.date_done))?;
    if let Some(d) = view.duration() {
        writeln!(out, "  duration:   {}", format_duration(d))?;
    }
    writeln!(out, "  worker:     {}", printable(view.worker.as_deref().unwrap_or("-")))?;
    writeln!(out, "  trace:      {}", view.trace_id.as_deref().unwrap_or("-"))?;
    if let Some(result) = &view.result {
        // JSON escapes control characters already.
        writeln!(out, "  result:     {result}")?;
    }
    writeln!(
        out,
        "  logs:       {} info, {} success, {} warning, {} error",
        view.info_log_count, view.success_log_count, view.warning_log_count, view.error_log_count
    )?;
    for log in &view.logs {
        writeln!(
            out,
            "    {}  {:<8} {:<24} {}",
            log.created.format("%H:%M:%S%.3f"),
            log.level,
            printable(&log.grouping),
            printable(&log.message)
        )?;
    }
    Ok(())
}

/// The `producer` binary: parses the command line, connects to PostgreSQL (applying migrations) and runs the
/// command; a one-off command is one trace, sent before the process exits.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(start())
}

async fn start() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if matches!(cli.command, Command::Openapi) {
        println!("{}", crate::api::openapi_document());
        return ExitCode::SUCCESS;
    }
    let telemetry = gitfleet_infra::telemetry::init(&cli.log, "gitfleet-producer");
    // A one-off command is one trace (its root span); the relay and the server start one per publish or request.
    let span = if matches!(cli.command, Command::Relay { .. } | Command::Serve(_)) {
        tracing::Span::none()
    } else {
        let mut path = vec!["producer"];
        let mut sub = matches.subcommand();
        while let Some((name, next)) = sub {
            path.push(name);
            sub = next.subcommand();
        }
        tracing::info_span!(
            "command",
            otel.name = path.join(" "),
            otel.kind = "client",
            exit_code = tracing::field::Empty
        )
    };
    let code = run_process(cli).instrument(span.clone()).await;
    span.record("exit_code", code.1);
    drop(span);
    telemetry.shutdown().await;
    code.0
}

async fn run_process(cli: Cli) -> (ExitCode, u8) {
    let shutdown = CancellationToken::new();
    tokio::spawn(gitfleet_infra::shutdown::on_signal(shutdown.clone()));

    // A long-running relay or server waits for PostgreSQL; a one-off command says it is unreachable within seconds.
    let wait = if matches!(cli.command, Command::Relay { .. } | Command::Serve(_)) { 60 } else { 5 };
    let pool = match gitfleet_infra::db::connect(&cli.database, Duration::from_secs(wait)).await {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!("error: {err}");
            return (ExitCode::from(1), 1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let code = match run(cli, &pool, shutdown, &mut stdout).await {
        Ok(code) => u8::try_from(code).unwrap_or(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    };
    (ExitCode::from(code), code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_option_has_a_help_line() {
        assert_eq!(gitfleet_infra::settings::arguments_without_help(&super::Cli::command()), Vec::<String>::new());
    }
}
