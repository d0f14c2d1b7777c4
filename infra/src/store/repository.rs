//! Repository definitions (spec a.1 plus `version`, `applied_version` and the tombstone).

use chrono::{DateTime, Utc};
use gitfleet_shared::event::{RepositoryRef, SlugRef};
use gitfleet_shared::repo::{Branch, CommitId, RemoteUrl, RepoName};
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::GenericClient;

const COLUMNS: &str = "id, name, slug, remote_url, branch, current_head, secrets_group, provided_contents, version, \
                       applied_version, applied_fingerprint, git_timeout_secs, created, last_updated, deleted_at, \
                       fetched_at, sync_interval_secs, next_poll_at, last_polled_at, poll_error, poll_failures";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRow {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub remote_url: String,
    pub branch: Branch,
    /// The commit whose records are live; `None` before the first successful sync.
    pub current_head: Option<CommitId>,
    pub secrets_group: Option<String>,
    pub provided_contents: Vec<String>,
    pub version: i64,
    pub applied_version: i64,
    /// What the last successful sync applied (commit, version, inventory, loaders); empty before the first.
    pub applied_fingerprint: String,
    /// This repository's limit for each git operation; `None`: the worker's default.
    pub git_timeout_secs: Option<i32>,
    pub created: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the fetch behind the live state began (database clock); None before the first sync.
    pub fetched_at: Option<DateTime<Utc>>,
    /// Poll the remote this often, in seconds; `None`: only events sync it.
    pub sync_interval_secs: Option<i32>,
    /// When the scheduler polls it next.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// When a poll last asked the remote for its tip, whatever it found.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// Why the last poll failed (the remote down, credentials refused); `None` after a poll that worked.
    pub poll_error: Option<String>,
    /// Polls failed in a row (each doubles the wait before the next one, up to an hour).
    pub poll_failures: i32,
}

impl RepositoryRow {
    fn from_row(row: &Row) -> Self {
        let provided: Value = row.get("provided_contents");
        let provided_contents = provided
            .as_array()
            .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Self {
            id: row.get("id"),
            name: row.get("name"),
            slug: row.get("slug"),
            remote_url: row.get("remote_url"),
            // The column's CHECK constraint holds exactly the branch rules: every stored value parses.
            branch: Branch::parse(row.get::<_, String>("branch")).unwrap_or_default(),
            // Written only from git's own commit ids; anything else (an edit by hand) reads as never synced.
            current_head: Some(row.get::<_, String>("current_head"))
                .filter(|h| !h.is_empty())
                .and_then(|h| CommitId::parse(h).ok()),
            secrets_group: row.get("secrets_group"),
            provided_contents,
            version: row.get("version"),
            applied_version: row.get("applied_version"),
            applied_fingerprint: row.get("applied_fingerprint"),
            git_timeout_secs: row.get("git_timeout_secs"),
            created: row.get("created"),
            last_updated: row.get("last_updated"),
            deleted_at: row.get("deleted_at"),
            fetched_at: row.get("fetched_at"),
            sync_interval_secs: row.get("sync_interval_secs"),
            next_poll_at: row.get("next_poll_at"),
            last_polled_at: row.get("last_polled_at"),
            poll_error: row.get("poll_error"),
            poll_failures: row.get("poll_failures"),
        }
    }

    /// The live commit as text, `""` before the first sync (for output and JSON results).
    pub fn head_str(&self) -> &str {
        self.current_head.as_ref().map_or("", CommitId::as_str)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// The event form of this definition. Fails only if a row was written around the producer's validation.
    pub fn to_ref(&self) -> Result<RepositoryRef, String> {
        Ok(RepositoryRef {
            id: self.id,
            name: RepoName::parse(self.name.clone()).map_err(|e| e.to_string())?,
            slug: SlugRef::parse(self.slug.clone()).map_err(|e| e.to_string())?,
            remote_url: RemoteUrl::parse(self.remote_url.clone()).map_err(|e| e.to_string())?,
            branch: self.branch.clone(),
            provided_contents: self.provided_contents.clone(),
            secrets_group: self.secrets_group.clone(),
        })
    }
}

/// A definition to insert; `version` starts at 1.
#[derive(Debug, Clone)]
pub struct NewRepository<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub slug: &'a str,
    pub remote_url: &'a str,
    pub branch: &'a str,
    pub secrets_group: Option<&'a str>,
    pub provided_contents: &'a [String],
    pub git_timeout_secs: Option<i32>,
    pub sync_interval_secs: Option<i32>,
}

/// When a repository given an interval in parameter `param` (`$9`) is first polled: at a random point of its first
/// interval, so that many repositories set at once (a file applied, a fleet migrated) spread over it instead of
/// arriving together.
fn first_poll(param: &str) -> String {
    format!("CASE WHEN {param}::integer IS NULL THEN NULL ELSE now() + random() * make_interval(secs => {param}) END")
}

pub async fn insert(db: &impl GenericClient, new: &NewRepository<'_>) -> Result<RepositoryRow, tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO git_repository (id, name, slug, remote_url, branch, secrets_group, provided_contents,
             git_timeout_secs, sync_interval_secs, next_poll_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {}) RETURNING {COLUMNS}",
        first_poll("$9")
    );
    let provided = serde_json::json!(new.provided_contents);
    let row = db
        .query_one(
            &sql,
            &[
                &new.id,
                &new.name,
                &new.slug,
                &new.remote_url,
                &new.branch,
                &new.secrets_group,
                &provided,
                &new.git_timeout_secs,
                &new.sync_interval_secs,
            ],
        )
        .await?;
    Ok(RepositoryRow::from_row(&row))
}

/// The live definition with this name.
pub async fn find_live_by_name(
    db: &impl GenericClient,
    name: &str,
    for_update: bool,
) -> Result<Option<RepositoryRow>, tokio_postgres::Error> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM git_repository WHERE name = $1 AND deleted_at IS NULL {lock}");
    Ok(db.query_opt(&sql, &[&name]).await?.as_ref().map(RepositoryRow::from_row))
}

/// The newest tombstoned definition with this name.
pub async fn find_deleted_by_name(
    db: &impl GenericClient,
    name: &str,
) -> Result<Option<RepositoryRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM git_repository WHERE name = $1 AND deleted_at IS NOT NULL \
         ORDER BY deleted_at DESC LIMIT 1"
    );
    Ok(db.query_opt(&sql, &[&name]).await?.as_ref().map(RepositoryRow::from_row))
}

pub async fn find_by_id(db: &impl GenericClient, id: Uuid) -> Result<Option<RepositoryRow>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM git_repository WHERE id = $1");
    Ok(db.query_opt(&sql, &[&id]).await?.as_ref().map(RepositoryRow::from_row))
}

/// Every live definition, by name.
pub async fn list_live(db: &impl GenericClient) -> Result<Vec<RepositoryRow>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM git_repository WHERE deleted_at IS NULL ORDER BY name");
    Ok(db.query(&sql, &[]).await?.iter().map(RepositoryRow::from_row).collect())
}

/// Filters of a repository listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct RepositoryFilter {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub remote_url: Option<String>,
    pub branch: Option<String>,
    /// Repositories that provide this data type.
    pub provides: Option<String>,
}

/// One page of live repositories by name, after the name `after` (keyset pagination: stable while rows change).
pub async fn list_page(
    db: &impl GenericClient,
    filter: &RepositoryFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<RepositoryRow>, tokio_postgres::Error> {
    let provides = filter.provides.as_ref().map(|p| Value::Array(vec![Value::String(p.clone())]));
    let sql = format!(
        "SELECT {COLUMNS} FROM git_repository WHERE deleted_at IS NULL
           AND ($1::text IS NULL OR name = $1) AND ($2::text IS NULL OR slug = $2)
           AND ($3::text IS NULL OR remote_url = $3) AND ($4::text IS NULL OR branch = $4)
           AND ($5::jsonb IS NULL OR provided_contents @> $5) AND ($6::text IS NULL OR name > $6 COLLATE \"C\")
         ORDER BY name COLLATE \"C\" LIMIT $7"
    );
    let rows = db
        .query(&sql, &[&filter.name, &filter.slug, &filter.remote_url, &filter.branch, &provides, &after, &limit])
        .await?;
    Ok(rows.iter().map(RepositoryRow::from_row).collect())
}

/// Live repositories matching `filter` by name, counted, one page by offset (the pagination Nautobot's REST API
/// and its clients use).
pub async fn list_offset(
    db: &impl GenericClient,
    filter: &RepositoryFilter,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<RepositoryRow>), tokio_postgres::Error> {
    let provides = filter.provides.as_ref().map(|p| Value::Array(vec![Value::String(p.clone())]));
    let condition = "deleted_at IS NULL AND ($1::text IS NULL OR name = $1) AND ($2::text IS NULL OR slug = $2)
           AND ($3::text IS NULL OR remote_url = $3) AND ($4::text IS NULL OR branch = $4)
           AND ($5::jsonb IS NULL OR provided_contents @> $5)";
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&filter.name, &filter.slug, &filter.remote_url, &filter.branch, &provides];
    let count: i64 =
        db.query_one(&format!("SELECT count(*) FROM git_repository WHERE {condition}"), &params).await?.get(0);
    let sql = format!(
        "SELECT {COLUMNS} FROM git_repository WHERE {condition} ORDER BY name COLLATE \"C\" OFFSET $6 LIMIT $7"
    );
    let rows = db
        .query(&sql, &[&filter.name, &filter.slug, &filter.remote_url, &filter.branch, &provides, &offset, &limit])
        .await?;
    Ok((count, rows.iter().map(RepositoryRow::from_row).collect()))
}

/// Live definitions that follow this branch, tag or commit (`branch` as stored), for matching a push.
pub async fn live_on_branch(
    db: &impl GenericClient,
    branch: &str,
) -> Result<Vec<RepositoryRow>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM git_repository WHERE branch = $1 AND deleted_at IS NULL ORDER BY name");
    let rows = db.query_typed(&sql, &[(&branch, tokio_postgres::types::Type::TEXT)]).await?;
    Ok(rows.iter().map(RepositoryRow::from_row).collect())
}

/// Other live definitions on exactly this remote URL (for the overlap rule).
pub async fn live_with_remote_url(
    db: &impl GenericClient,
    remote_url: &str,
    except: Option<Uuid>,
) -> Result<Vec<RepositoryRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM git_repository WHERE remote_url = $1 AND deleted_at IS NULL \
         AND ($2::uuid IS NULL OR id <> $2)"
    );
    Ok(db.query(&sql, &[&remote_url, &except]).await?.iter().map(RepositoryRow::from_row).collect())
}

pub async fn slug_is_live(db: &impl GenericClient, slug: &str) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_one("SELECT EXISTS (SELECT 1 FROM git_repository WHERE slug = $1 AND deleted_at IS NULL)", &[&slug])
        .await?;
    Ok(row.get(0))
}

/// Writes a changed definition and bumps `version`. `current_head` is left alone: it names the commit whose
/// records are live until a sync of the new definition succeeds.
pub async fn update(db: &impl GenericClient, row: &RepositoryRow) -> Result<RepositoryRow, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE git_repository SET name = $2, remote_url = $3, branch = $4, secrets_group = $5,
             provided_contents = $6, git_timeout_secs = $7,
             next_poll_at = CASE WHEN sync_interval_secs IS NOT DISTINCT FROM $8 THEN next_poll_at ELSE {} END,
             sync_interval_secs = $8, poll_failures = CASE WHEN $8::integer IS NULL THEN 0 ELSE poll_failures END,
             version = version + 1, last_updated = now()
         WHERE id = $1 RETURNING {COLUMNS}",
        first_poll("$8")
    );
    let provided = serde_json::json!(row.provided_contents);
    let updated = db
        .query_one(
            &sql,
            &[
                &row.id,
                &row.name,
                &row.remote_url,
                &row.branch.as_str(),
                &row.secrets_group,
                &provided,
                &row.git_timeout_secs,
                &row.sync_interval_secs,
            ],
        )
        .await?;
    Ok(RepositoryRow::from_row(&updated))
}

/// A delete request is a definition change too: it gets its own version.
pub async fn bump_version(db: &impl GenericClient, id: Uuid) -> Result<RepositoryRow, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE git_repository SET version = version + 1, last_updated = now() WHERE id = $1 RETURNING {COLUMNS}"
    );
    Ok(RepositoryRow::from_row(&db.query_one(&sql, &[&id]).await?))
}

/// Records a successful sync: the head it checked out, the definition version and the fingerprint it applied.
pub async fn record_sync(
    db: &impl GenericClient,
    id: Uuid,
    head: &str,
    applied_version: i64,
    fingerprint: &str,
    fetched_at: DateTime<Utc>,
    artifacts: &Value,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "UPDATE git_repository SET current_head = $2, applied_version = GREATEST(applied_version, $3),
             applied_fingerprint = $4, fetched_at = GREATEST(fetched_at, $5), artifacts = $6 WHERE id = $1",
        &[&id, &head, &applied_version, &fingerprint, &fetched_at, artifacts],
    )
    .await
}

/// Records the digests of artifacts built after a sync (`artifact key -> sha256`) in the live commit's
/// `artifacts`, if `head` is still live.
pub async fn record_artifacts(
    db: &impl GenericClient,
    id: Uuid,
    head: &str,
    digests: &Value,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "UPDATE git_repository SET artifacts = (
             SELECT coalesce(jsonb_agg(CASE WHEN $3::jsonb ? (a->>'artifact')
                                            THEN a || jsonb_build_object('sha256', $3::jsonb -> (a->>'artifact'))
                                            ELSE a END ORDER BY n), '[]')
               FROM jsonb_array_elements(artifacts) WITH ORDINALITY AS t(a, n))
          WHERE id = $1 AND current_head = $2",
        &[&id, &head, digests],
    )
    .await
}

/// A fetch found the live state current: records when it began, so events made before it need no fetch.
pub async fn record_fetch(
    db: &impl GenericClient,
    id: Uuid,
    fetched_at: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    db.execute("UPDATE git_repository SET fetched_at = GREATEST(fetched_at, $2) WHERE id = $1", &[&id, &fetched_at])
        .await
}

/// Marks the definition deleted. Returns false if it already was.
pub async fn tombstone(db: &impl GenericClient, id: Uuid, applied_version: i64) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "UPDATE git_repository SET deleted_at = now(), applied_version = GREATEST(applied_version, $2)
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id, &applied_version],
        )
        .await?;
    Ok(n == 1)
}

/// Serializes definition writes that touch one remote URL (until the transaction ends), so two concurrent writers
/// cannot both pass the overlap rule.
pub async fn lock_remote_url(tx: &impl GenericClient, remote_url: &str) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('gitfleet:url:' || $1, 0))", &[&remote_url]).await?;
    Ok(())
}

/// Due polls: each repository whose poll time has come, up to `limit`, with its poll time moved on by its interval
/// (past the present if the scheduler fell behind, so a missed poll is not made up in a burst). Rows another
/// scheduler's transaction holds are skipped.
pub async fn take_due_polls(db: &impl GenericClient, limit: i64) -> Result<Vec<RepositoryRow>, tokio_postgres::Error> {
    let sql = format!(
        "WITH due AS (
             SELECT id FROM git_repository
              WHERE sync_interval_secs IS NOT NULL AND deleted_at IS NULL AND next_poll_at <= now()
              ORDER BY next_poll_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE git_repository r
            SET next_poll_at = CASE
                WHEN r.next_poll_at + make_interval(secs => r.sync_interval_secs) > now()
                    THEN r.next_poll_at + make_interval(secs => r.sync_interval_secs)
                ELSE now() + make_interval(secs => r.sync_interval_secs) END
           FROM due WHERE r.id = due.id
         RETURNING {}",
        COLUMNS.split(", ").map(|c| format!("r.{}", c.trim())).collect::<Vec<_>>().join(", ")
    );
    Ok(db.query(&sql, &[&limit]).await?.iter().map(RepositoryRow::from_row).collect())
}

/// A poll that reached the remote: when it looked, and no error.
pub async fn record_poll(db: &impl GenericClient, id: Uuid) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE git_repository SET last_polled_at = now(), poll_error = NULL, poll_failures = 0 WHERE id = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

/// A poll that failed: its message, one more failure, and the next poll put back by the interval doubled per
/// failure in a row (at most an hour). Returns when the next poll is due.
pub async fn record_poll_failure(
    db: &impl GenericClient,
    id: Uuid,
    message: &str,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "UPDATE git_repository SET last_polled_at = now(), poll_error = $2, poll_failures = poll_failures + 1,
                 next_poll_at = now() + least(make_interval(secs => 3600),
                     make_interval(secs => sync_interval_secs) * power(2, least(poll_failures + 1, 12)))
              WHERE id = $1 AND sync_interval_secs IS NOT NULL RETURNING next_poll_at",
            &[&id, &message],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
