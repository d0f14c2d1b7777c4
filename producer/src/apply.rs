//! Declarative repositories: make the live definitions match a list (`producer apply -f repositories.yaml`,
//! `PUT /api/v1/repositories`). What is new is created and what differs is updated, one event each as the command
//! line would record them; with `prune`, live repositories the list does not name are deleted. The whole list is
//! one transaction: when any entry is invalid nothing is applied, and every invalid entry is reported by its
//! position, name and field. A dry run (`--diff`) makes the same changes and rolls them back. Applying a list
//! that matches the live state changes nothing and records no event.

use deadpool_postgres::Pool;
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_shared::event::RequestedBy;
use gitfleet_shared::repo::FieldError;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::commands::{self, CommandError, NewRepo, Outcome, RepoChanges};

/// One entry of the list: the fields of the API's repository object. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    pub name: String,
    /// Default: made from the name. A live repository's slug never changes.
    pub slug: Option<String>,
    pub remote_url: String,
    /// Default `main`.
    pub branch: Option<String>,
    #[serde(default)]
    pub provided_contents: Vec<String>,
    /// A secrets group's name (never a secret).
    pub secrets_group: Option<String>,
    /// Limit for each git operation, in seconds; default: the worker's.
    #[serde(alias = "git_timeout_secs")]
    pub git_timeout: Option<i32>,
    /// Poll the remote this often (`30s`, `5m`, `1h`); default: no polling.
    pub sync_interval: Option<String>,
}

/// What applying a list does (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Plan {
    /// Created, with the JobResult of each one's create event.
    pub created: Vec<Change>,
    /// Updated, with the fields that changed.
    pub updated: Vec<Change>,
    /// Deleted (with `prune`).
    pub deleted: Vec<Change>,
    /// Live repositories the list names as they are.
    pub unchanged: Vec<String>,
    /// True when nothing was written (a dry run).
    pub dry_run: bool,
}

/// One repository's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub name: String,
    /// The fields that differ (on an update).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The event's JobResult (none in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_result_id: Option<Uuid>,
}

/// Why a list was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Entries break rules: `(field path, message)`, the path naming the entry (`repositories[2] (Name).branch`).
    #[error("{}", render(.0))]
    Invalid(Vec<(String, String)>),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

fn render(errors: &[(String, String)]) -> String {
    errors.iter().map(|(path, message)| format!("{path}: {message}")).collect::<Vec<_>>().join("\n")
}

/// Reads a `repositories.yaml`: a list of entries (an empty file is an empty list). Errors name the entry.
pub fn parse_file(bytes: &[u8]) -> Result<Vec<Declared>, ApplyError> {
    let limits = gitfleet_shared::yaml::Limits::default();
    let value = gitfleet_shared::yaml::load(bytes, &limits)
        .map_err(|e| ApplyError::Invalid(vec![("file".to_owned(), e.to_string())]))?;
    parse_value(value)
}

/// The entries of a JSON (or YAML-loaded) list.
pub fn parse_value(value: serde_json::Value) -> Result<Vec<Declared>, ApplyError> {
    let items = match value {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(items) => items,
        _ => {
            let message = "The file must be a list of repositories (each a mapping with name, remote_url, ...).";
            return Err(ApplyError::Invalid(vec![("file".to_owned(), message.to_owned())]));
        }
    };
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let label = entry_label(i, item.get("name").and_then(|n| n.as_str()));
        match serde_json::from_value::<Declared>(item) {
            Ok(entry) => entries.push(entry),
            Err(e) => errors.push((label, e.to_string())),
        }
    }
    if errors.is_empty() { Ok(entries) } else { Err(ApplyError::Invalid(errors)) }
}

fn entry_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("repositories[{index}] ({name})"),
        None => format!("repositories[{index}]"),
    }
}

/// Options of one application.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Delete live repositories the list does not name.
    pub prune: bool,
    /// Work out and check every change, then roll it all back.
    pub dry_run: bool,
}

/// Makes the live definitions match `entries`, in one transaction.
pub async fn apply(
    pool: &Pool,
    entries: Vec<Declared>,
    options: ApplyOptions,
    requested_by: &RequestedBy,
) -> Result<Plan, ApplyError> {
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        if !seen.insert(entry.name.clone()) {
            errors.push((format!("{}.name", entry_label(i, Some(&entry.name))), "The list names it twice.".into()));
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(errors));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut plan = Plan { dry_run: options.dry_run, ..Plan::default() };
    // Two applications at once take turns (a transaction lock, released when this one ends).
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('gitfleet apply ' || current_schema(), 0))", &[]).await?;
    let live = repository::list_live(&*tx).await?;
    for (i, entry) in entries.iter().enumerate() {
        let label = entry_label(i, Some(&entry.name));
        // Each entry under a savepoint: an entry a rule refuses is reported, and the others are still checked.
        tx.batch_execute("SAVEPOINT entry").await?;
        let current = live.iter().find(|r| r.name == entry.name);
        match apply_one(&*tx, entry, current, requested_by, &mut plan).await {
            Ok(()) => tx.batch_execute("RELEASE SAVEPOINT entry").await?,
            Err(CommandError::Invalid(fields)) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT entry").await?;
                errors.extend(fields.into_iter().map(|f| field_error(&label, f)));
            }
            Err(other) => return Err(other.into()),
        }
    }
    if options.prune {
        for row in live.iter().filter(|r| !seen.contains(&r.name)) {
            // Its delete is recorded and waits for a worker: applying the file again asks for nothing more.
            let pending: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM job_result WHERE repository_id = $1 AND event_kind = 'delete'
                                       AND status IN ('PENDING', 'STARTED'))",
                    &[&row.id],
                )
                .await?
                .get(0);
            if pending {
                continue;
            }
            let outcome = commands::delete_in(&*tx, &row.name, requested_by).await?;
            plan.deleted.push(Change { name: row.name.clone(), fields: Vec::new(), job_result_id: job(&outcome) });
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(errors));
    }
    if options.dry_run {
        tx.rollback().await?;
        for change in plan.created.iter_mut().chain(&mut plan.updated).chain(&mut plan.deleted) {
            change.job_result_id = None;
        }
    } else {
        tx.commit().await?;
    }
    Ok(plan)
}

fn field_error(label: &str, field: FieldError) -> (String, String) {
    let path = match field.field {
        Some(name) => format!("{label}.{name}"),
        None => label.to_owned(),
    };
    (path, field.message)
}

fn job(outcome: &Outcome) -> Option<Uuid> {
    outcome.job_result_id()
}

/// Creates the entry's repository, or updates it where it differs, or leaves it.
async fn apply_one(
    tx: &impl GenericClient,
    entry: &Declared,
    current: Option<&RepositoryRow>,
    requested_by: &RequestedBy,
    plan: &mut Plan,
) -> Result<(), CommandError> {
    let interval = match entry.sync_interval.as_deref().map(gitfleet_shared::repo::parse_sync_interval).transpose() {
        Ok(interval) => interval,
        Err(message) => return Err(CommandError::Invalid(vec![FieldError::field("sync_interval", message)])),
    };
    let Some(current) = current else {
        let new = NewRepo {
            name: entry.name.clone(),
            slug: entry.slug.clone(),
            remote_url: entry.remote_url.clone(),
            branch: entry.branch.clone(),
            provided_contents: entry.provided_contents.clone(),
            secrets_group: entry.secrets_group.clone(),
            git_timeout_secs: entry.git_timeout,
            sync_interval_secs: interval,
        };
        let outcome = commands::create_in(tx, new, requested_by).await?;
        plan.created.push(Change { name: entry.name.clone(), fields: Vec::new(), job_result_id: job(&outcome) });
        return Ok(());
    };
    let branch = entry.branch.clone().unwrap_or_else(|| gitfleet_shared::repo::Branch::default().to_string());
    let mut provided = entry.provided_contents.clone();
    let mut live_provided = current.provided_contents.clone();
    provided.sort();
    live_provided.sort();
    let mut fields = Vec::new();
    let mut changes = RepoChanges::default();
    if entry.slug.as_ref().is_some_and(|s| !s.is_empty() && *s != current.slug) {
        // Refused by the update, with the command line's message.
        changes.slug = entry.slug.clone();
        fields.push("slug");
    }
    if entry.remote_url != current.remote_url {
        changes.remote_url = Some(entry.remote_url.clone());
        fields.push("remote_url");
    }
    if branch != current.branch.as_str() {
        changes.branch = Some(branch);
        fields.push("branch");
    }
    if provided != live_provided {
        changes.provided_contents = Some(entry.provided_contents.clone());
        fields.push("provided_contents");
    }
    if entry.secrets_group != current.secrets_group {
        changes.secrets_group = Some(entry.secrets_group.clone());
        fields.push("secrets_group");
    }
    if entry.git_timeout != current.git_timeout_secs {
        changes.git_timeout_secs = Some(entry.git_timeout);
        fields.push("git_timeout");
    }
    if interval != current.sync_interval_secs {
        changes.sync_interval_secs = Some(interval);
        fields.push("sync_interval");
    }
    if fields.is_empty() {
        plan.unchanged.push(entry.name.clone());
        return Ok(());
    }
    let outcome = commands::update_in(tx, &current.name, changes, requested_by).await?;
    plan.updated.push(Change {
        name: entry.name.clone(),
        fields: fields.into_iter().map(str::to_owned).collect(),
        job_result_id: job(&outcome),
    });
    Ok(())
}
