//! Repository commands: validate, then write the definition, a PENDING JobResult and the outbox row in one
//! transaction. Nothing is published here; the relay does that once the transaction has committed.

use chrono::Utc;
use deadpool_postgres::Pool;
use gitfleet_infra::store::repository::{NewRepository, RepositoryRow};
use gitfleet_infra::store::{job_result, outbox, repository};
use gitfleet_infra::telemetry::current_traceparent;
use gitfleet_shared::event::{Event, EventKind, RequestedBy, SchemaVersion, Version};
use gitfleet_shared::job_result::JobStatus;
use gitfleet_shared::repo::{
    Branch, CommitId, FieldError, OtherRepository, RemoteUrl, RepoName, RepoSlug, check_overlap,
    parse_provided_contents, slugify_dashes_to_underscores,
};
use thiserror::Error;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The definition breaks a rule; every broken rule is listed.
    #[error("{}", render(.0))]
    Invalid(Vec<FieldError>),
    #[error("no repository named '{0}'")]
    NotFound(String),
    /// Something other than a repository that does not exist (a dead letter, say).
    #[error("{0}")]
    Absent(String),
    /// A request that cannot be done as asked (a dead letter already replayed, say).
    #[error("{0}")]
    Refused(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CommandError {
    /// Bad input exits 2, as the CLI promises; everything else is an operational failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Invalid(_) | Self::NotFound(_) | Self::Absent(_) | Self::Refused(_) => 2,
            _ => 1,
        }
    }
}

fn render(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| match e.field {
            Some(field) => format!("{field}: {}", e.message),
            None => e.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An event was recorded; its JobResult id is the event id.
    Accepted { job_result_id: Uuid, repository_id: Uuid, version: i64 },
    /// A delete of a repository that is already deleted: nothing to do.
    AlreadyDeleted { repository_id: Uuid },
}

impl Outcome {
    pub fn job_result_id(&self) -> Option<Uuid> {
        match self {
            Self::Accepted { job_result_id, .. } => Some(*job_result_id),
            Self::AlreadyDeleted { .. } => None,
        }
    }
}

/// A new definition as given on the command line or through the API.
#[derive(Debug, Clone, Default)]
pub struct NewRepo {
    pub name: String,
    pub slug: Option<String>,
    pub remote_url: String,
    pub branch: Option<String>,
    pub provided_contents: Vec<String>,
    pub secrets_group: Option<String>,
    /// Limit for each git operation, in seconds; `None`: the worker's default.
    pub git_timeout_secs: Option<i32>,
    /// Poll the remote this often, in seconds; `None`: no polling.
    pub sync_interval_secs: Option<i32>,
}

/// Changes to a live definition; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RepoChanges {
    pub new_name: Option<String>,
    pub slug: Option<String>,
    pub remote_url: Option<String>,
    pub branch: Option<String>,
    pub provided_contents: Option<Vec<String>>,
    /// `Some(None)` removes the secrets group.
    pub secrets_group: Option<Option<String>>,
    /// `Some(None)` returns to the worker's default.
    pub git_timeout_secs: Option<Option<i32>>,
    /// `Some(None)` stops polling.
    pub sync_interval_secs: Option<Option<i32>>,
}

/// Field checks that need no database: collects every failure, as Django's form validation does.
fn check_fields(
    name: &str,
    remote_url: &str,
    branch: &str,
    provided: &[String],
    secrets_group: Option<&str>,
) -> Result<Vec<String>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(e) = RepoName::parse(name) {
        errors.push(e);
    }
    if let Err(e) = RemoteUrl::parse(remote_url) {
        errors.push(FieldError::field("remote_url", e.to_string()));
    }
    if let Err(e) = Branch::parse(branch) {
        errors.push(FieldError::field("branch", e.to_string()));
    }
    if secrets_group.is_some_and(|g| g.trim().is_empty()) {
        errors.push(FieldError::field("secrets_group", "A secrets group name must not be empty."));
    }
    // The choices are the worker's registry, extensions included: what a worker can load, a definition may provide.
    let choices = gitfleet_shared::loaders::Registry::with_builtins().content_types();
    let provided = parse_provided_contents(provided.iter().map(String::as_str), &choices)
        .map_err(|e| errors.push(e))
        .unwrap_or_default();
    if errors.is_empty() { Ok(provided) } else { Err(errors) }
}

/// Every rule a new definition breaks that needs no database (what a form shows before anything is recorded; the
/// name's uniqueness and remote overlaps are checked when it is recorded).
pub fn check_new(new: &NewRepo) -> Vec<FieldError> {
    let branch = new.branch.as_deref().unwrap_or("main");
    let mut errors =
        check_fields(&new.name, &new.remote_url, branch, &new.provided_contents, new.secrets_group.as_deref())
            .err()
            .unwrap_or_default();
    for check in [check_timeout(new.git_timeout_secs), check_interval(new.sync_interval_secs)] {
        if let Err(CommandError::Invalid(more)) = check {
            errors.extend(more);
        }
    }
    errors
}

fn check_timeout(secs: Option<i32>) -> Result<(), CommandError> {
    match secs {
        Some(s) if !(1..=86_400).contains(&s) => Err(CommandError::Invalid(vec![FieldError::field(
            "git_timeout",
            "The git timeout must be between 1 and 86400 seconds (a day).",
        )])),
        _ => Ok(()),
    }
}

fn check_interval(secs: Option<i32>) -> Result<(), CommandError> {
    match secs.map(gitfleet_shared::repo::check_sync_interval) {
        Some(Err(message)) => Err(CommandError::Invalid(vec![FieldError::field("sync_interval", message)])),
        _ => Ok(()),
    }
}

async fn check_overlap_in_db(
    tx: &impl GenericClient,
    remote_url: &str,
    provided: &[String],
    except: Option<Uuid>,
) -> Result<Result<(), FieldError>, tokio_postgres::Error> {
    let others = repository::live_with_remote_url(tx, remote_url, except).await?;
    Ok(check_overlap(
        remote_url,
        provided,
        others.iter().map(|o| OtherRepository { remote_url: &o.remote_url, provided_contents: &o.provided_contents }),
    ))
}

fn unique_violation(err: &tokio_postgres::Error) -> Option<FieldError> {
    let db = err.as_db_error()?;
    if db.code() != &SqlState::UNIQUE_VIOLATION {
        return None;
    }
    match db.constraint() {
        Some("git_repository_name_live") => {
            Some(FieldError::taken("name", "Git repository with this Name already exists."))
        }
        Some("git_repository_slug_live") => {
            Some(FieldError::taken("slug", "Git repository with this Slug already exists."))
        }
        _ => None,
    }
}

fn map_write_error(err: tokio_postgres::Error) -> CommandError {
    match unique_violation(&err) {
        Some(field) => CommandError::Invalid(vec![field]),
        None => CommandError::Db(err),
    }
}

/// Validates and records a new repository, with a create event (a create is "create and sync").
pub async fn create(pool: &Pool, new: NewRepo, requested_by: RequestedBy) -> Result<Outcome, CommandError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let outcome = create_in(&*tx, new, &requested_by).await?;
    tx.commit().await.map_err(map_write_error)?;
    Ok(outcome)
}

/// [`create`] inside the caller's transaction (`producer apply` makes every change of a file in one).
pub async fn create_in(
    tx: &impl GenericClient,
    new: NewRepo,
    requested_by: &RequestedBy,
) -> Result<Outcome, CommandError> {
    let branch = new.branch.clone().unwrap_or_else(|| Branch::default().to_string());
    let provided =
        check_fields(&new.name, &new.remote_url, &branch, &new.provided_contents, new.secrets_group.as_deref())
            .map_err(CommandError::Invalid)?;
    check_timeout(new.git_timeout_secs)?;
    check_interval(new.sync_interval_secs)?;
    repository::lock_remote_url(tx, &new.remote_url).await?;

    let mut errors = Vec::new();
    if repository::find_live_by_name(tx, &new.name, false).await?.is_some() {
        errors.push(FieldError::taken("name", "Git repository with this Name already exists."));
    }
    let slug = match &new.slug {
        Some(slug) if !slug.is_empty() => {
            if repository::slug_is_live(tx, slug).await? {
                errors.push(FieldError::taken("slug", "Git repository with this Slug already exists."));
            }
            slug.clone()
        }
        // AutoSlugField: the generated slug, or the first free `-N` variant (which then fails the identifier rule).
        _ => {
            let base = slugify_dashes_to_underscores(&new.name);
            let mut candidate = base.clone();
            let mut n = 2;
            while repository::slug_is_live(tx, &candidate).await? {
                candidate = format!("{base}-{n}");
                n += 1;
            }
            candidate
        }
    };
    if let Err(e) = RepoSlug::parse(slug.clone()) {
        errors.push(FieldError::field("slug", e.to_string()));
    }
    if let Err(e) = check_overlap_in_db(tx, &new.remote_url, &provided, None).await? {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(CommandError::Invalid(errors));
    }

    let row = repository::insert(
        tx,
        &NewRepository {
            id: Uuid::new_v4(),
            name: &new.name,
            slug: &slug,
            remote_url: &new.remote_url,
            branch: &branch,
            secrets_group: new.secrets_group.as_deref(),
            provided_contents: &provided,
            git_timeout_secs: new.git_timeout_secs,
            sync_interval_secs: new.sync_interval_secs,
        },
    )
    .await
    .map_err(map_write_error)?;
    emit(tx, EventKind::Create, &row, None, requested_by).await
}

/// Changes a live definition (identified by its current name), with an update event.
pub async fn update(
    pool: &Pool,
    name: &str,
    changes: RepoChanges,
    requested_by: RequestedBy,
) -> Result<Outcome, CommandError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let outcome = update_in(&*tx, name, changes, &requested_by).await?;
    tx.commit().await.map_err(map_write_error)?;
    Ok(outcome)
}

/// [`update`] inside the caller's transaction.
pub async fn update_in(
    tx: &impl GenericClient,
    name: &str,
    changes: RepoChanges,
    requested_by: &RequestedBy,
) -> Result<Outcome, CommandError> {
    let Some(current) = repository::find_live_by_name(tx, name, true).await? else {
        return Err(CommandError::NotFound(name.to_owned()));
    };

    let mut next = current.clone();
    if let Some(n) = changes.new_name {
        next.name = n;
    }
    if let Some(u) = changes.remote_url {
        next.remote_url = u;
    }
    let branch = changes.branch.unwrap_or_else(|| next.branch.to_string());
    if let Some(p) = changes.provided_contents {
        next.provided_contents = p;
    }
    if let Some(g) = changes.secrets_group {
        next.secrets_group = g;
    }
    if let Some(t) = changes.git_timeout_secs {
        next.git_timeout_secs = t;
    }
    if let Some(i) = changes.sync_interval_secs {
        next.sync_interval_secs = i;
    }
    check_timeout(next.git_timeout_secs)?;
    check_interval(next.sync_interval_secs)?;
    let mut errors = match check_fields(
        &next.name,
        &next.remote_url,
        &branch,
        &next.provided_contents,
        next.secrets_group.as_deref(),
    ) {
        Ok(provided) => {
            next.provided_contents = provided;
            Vec::new()
        }
        Err(errors) => errors,
    };
    if let Some(slug) = changes.slug.filter(|s| !s.is_empty() && *s != current.slug) {
        errors.push(FieldError::record(format!(
            "Slug cannot be changed once set. Current slug is {}, requested slug is {slug}",
            current.slug
        )));
    }
    match Branch::parse(branch) {
        Ok(branch) => next.branch = branch,
        // Reported by the field checks above already.
        Err(_) if !errors.is_empty() => {}
        Err(e) => errors.push(FieldError::field("branch", e.to_string())),
    }
    if !errors.is_empty() {
        return Err(CommandError::Invalid(errors));
    }
    if next.name != current.name && repository::find_live_by_name(tx, &next.name, false).await?.is_some() {
        errors.push(FieldError::taken("name", "Git repository with this Name already exists."));
    }
    repository::lock_remote_url(tx, &next.remote_url).await?;
    if let Err(e) = check_overlap_in_db(tx, &next.remote_url, &next.provided_contents, Some(current.id)).await? {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(CommandError::Invalid(errors));
    }

    // Unlike Nautobot's clean() (spec a.3 step 8) a new remote or branch keeps `current_head`: it always names the
    // commit whose records are live, which stays true until a sync of the new definition succeeds.
    let row = repository::update(tx, &next).await.map_err(map_write_error)?;
    emit(tx, EventKind::Update, &row, None, requested_by).await
}

/// Requests a sync (or a dry-run) of a live definition. The definition is unchanged, so its version is too.
pub async fn sync(
    pool: &Pool,
    name: &str,
    kind: EventKind,
    target_commit: Option<CommitId>,
    requested_by: RequestedBy,
) -> Result<Outcome, CommandError> {
    debug_assert!(matches!(kind, EventKind::Sync | EventKind::DryRun));
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = repository::find_live_by_name(&*tx, name, false).await? else {
        return Err(CommandError::NotFound(name.to_owned()));
    };
    let outcome = emit(&*tx, kind, &row, target_commit, &requested_by).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Requests the deletion of a repository. Deleting one that is already deleted is a no-op.
pub async fn delete(pool: &Pool, name: &str, requested_by: RequestedBy) -> Result<Outcome, CommandError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let outcome = delete_in(&*tx, name, &requested_by).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// [`delete`] inside the caller's transaction.
pub async fn delete_in(
    tx: &impl GenericClient,
    name: &str,
    requested_by: &RequestedBy,
) -> Result<Outcome, CommandError> {
    let Some(current) = repository::find_live_by_name(tx, name, true).await? else {
        return match repository::find_deleted_by_name(tx, name).await? {
            Some(gone) => Ok(Outcome::AlreadyDeleted { repository_id: gone.id }),
            None => Err(CommandError::NotFound(name.to_owned())),
        };
    };
    let row = repository::bump_version(tx, current.id).await?;
    emit(tx, EventKind::Delete, &row, None, requested_by).await
}

/// Writes the PENDING JobResult and the outbox row for one event about `row`.
async fn emit(
    tx: &impl GenericClient,
    kind: EventKind,
    row: &RepositoryRow,
    target_commit: Option<CommitId>,
    requested_by: &RequestedBy,
) -> Result<Outcome, CommandError> {
    let repository = row.to_ref().map_err(|e| anyhow::anyhow!("stored definition is invalid: {e}"))?;
    let version = Version::new(row.version).map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = Event {
        schema: SchemaVersion,
        event_id: Uuid::new_v4(),
        kind,
        repository,
        version,
        target_commit,
        requested_at: Utc::now(),
        requested_by: requested_by.clone(),
    };
    let (name, task_name) = kind.job_names(&row.name);
    let traceparent = current_traceparent();
    let trace_id = gitfleet_infra::telemetry::trace_id(&traceparent);
    job_result::insert(
        tx,
        &job_result::NewJobResult {
            id: event.event_id,
            name: &name,
            task_name,
            repository_id: Some(row.id),
            kind: Some(kind),
            requested_by: requested_by.as_str(),
            status: JobStatus::Pending,
            trace_id: trace_id.as_deref(),
        },
    )
    .await?;
    outbox::insert(tx, &event, &traceparent).await?;
    Ok(Outcome::Accepted { job_result_id: event.event_id, repository_id: row.id, version: row.version })
}

/// What a push delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The delivery id was seen before: nothing done again.
    Duplicate,
    /// Sync events recorded: (repository name, JobResult id) each. Empty: no repository follows that ref there.
    Synced(Vec<(String, Uuid)>),
}

/// Records a push delivery and, in the same transaction, one sync event (with the pushed commit as
/// `target_commit`) for every live repository on that remote that follows the pushed branch or tag. A delivery id
/// recorded before makes this a no-op, so redeliveries sync nothing twice.
pub async fn sync_push(
    pool: &Pool,
    delivery: &gitfleet_infra::store::webhook::NewDelivery<'_>,
    push: &gitfleet_shared::webhook::Push,
    requested_by: &RequestedBy,
) -> Result<PushOutcome, CommandError> {
    use gitfleet_infra::store::webhook;
    use gitfleet_shared::webhook::{PushedRef, remote_key};
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let keys: Vec<String> = push.remote_urls.iter().filter_map(|u| remote_key(u)).collect();
    let name = match &push.pushed {
        PushedRef::Branch(b) | PushedRef::Tag(b) => b,
    };
    let target = push.commit.as_deref().and_then(|c| CommitId::parse(c).ok());
    let mut synced = Vec::new();
    if !push.deleted {
        for row in repository::live_on_branch(&*tx, name).await? {
            if remote_key(&row.remote_url).is_some_and(|k| keys.contains(&k)) {
                let outcome = emit(&*tx, EventKind::Sync, &row, target.clone(), requested_by).await?;
                if let Some(job) = outcome.job_result_id() {
                    synced.push((row.name.clone(), job));
                }
            }
        }
    }
    let outcome = match (push.deleted, synced.is_empty()) {
        (true, _) => "the ref was deleted: nothing to sync",
        (false, true) => "no repository matched",
        (false, false) => "synced",
    };
    let (names, jobs): (Vec<String>, Vec<Uuid>) = synced.iter().cloned().unzip();
    // Recorded last, in the same transaction: a delivery seen before rolls back the events it just made.
    if !webhook::record(&*tx, delivery, &names, &jobs, outcome).await? {
        tx.rollback().await?;
        return Ok(PushOutcome::Duplicate);
    }
    tx.commit().await?;
    Ok(PushOutcome::Synced(synced))
}
