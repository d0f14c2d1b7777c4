//! `/api/v1/repositories`: the definitions, their syncs and the records they own. Every write is the CLI's own
//! command (`crate::commands`): one transaction with the outbox, the same validation and messages.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header::LOCATION};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use gitfleet_infra::store::repository::{self, RepositoryFilter, RepositoryRow};
use gitfleet_shared::event::EventKind;
use gitfleet_shared::repo::CommitId;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::authorize;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery, json_body, optional_json_body};
use crate::commands::{self, NewRepo, Outcome, RepoChanges};
use crate::tokens::Scope;

/// A repository definition, as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Repository {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub remote_url: String,
    /// Branch, tag or commit that is synced.
    pub branch: String,
    /// The commit whose records are live; null before the first successful sync.
    pub current_head: Option<String>,
    /// The name of the secrets group the workers fetch with (never a secret itself).
    pub secrets_group: Option<String>,
    pub provided_contents: Vec<String>,
    /// Limit for each git operation, in seconds; null: the worker's default.
    pub git_timeout_secs: Option<i32>,
    /// How often the remote is polled for its branch's tip, as a duration (`30s`, `5m`, `1h`); null: no polling.
    pub sync_interval: Option<String>,
    /// When a poll last asked the remote, whatever it found.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// Why the last poll failed; null after a poll that worked.
    pub poll_error: Option<String>,
    /// Bumped by every change of the definition.
    pub version: i64,
    /// The definition version the live records were loaded with.
    pub applied_version: i64,
    pub created: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
}

impl From<&RepositoryRow> for Repository {
    fn from(r: &RepositoryRow) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            slug: r.slug.clone(),
            remote_url: r.remote_url.clone(),
            branch: r.branch.to_string(),
            current_head: r.current_head.as_ref().map(|c| c.as_str().to_owned()),
            secrets_group: r.secrets_group.clone(),
            provided_contents: r.provided_contents.clone(),
            git_timeout_secs: r.git_timeout_secs,
            sync_interval: r.sync_interval_secs.map(gitfleet_shared::repo::format_sync_interval),
            last_polled_at: r.last_polled_at,
            poll_error: r.poll_error.clone(),
            version: r.version,
            applied_version: r.applied_version,
            created: r.created,
            last_updated: r.last_updated,
        }
    }
}

/// One page of repositories, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryPage {
    pub results: Vec<Repository>,
    /// The next page (a path with its query), or null on the last page.
    pub next: Option<String>,
}

/// Filters and paging of the repository list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RepositoryQuery {
    /// Exact name.
    pub name: Option<String>,
    /// Exact slug.
    pub slug: Option<String>,
    /// Exact remote URL.
    pub remote_url: Option<String>,
    /// Exact branch.
    pub branch: Option<String>,
    /// Repositories that provide this data type.
    pub provides: Option<String>,
    /// The name of the last repository of the previous page (as the `next` link gives it).
    pub after: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
}

/// A new repository.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRepository {
    pub name: String,
    /// Default: made from the name.
    pub slug: Option<String>,
    pub remote_url: String,
    /// Default `main`.
    pub branch: Option<String>,
    #[serde(default)]
    pub provided_contents: Vec<String>,
    pub secrets_group: Option<String>,
    pub git_timeout_secs: Option<i32>,
    /// Poll the remote this often (`30s`, `5m`, `1h`; at least 10 s); default: no polling.
    pub sync_interval: Option<String>,
}

/// Changes to a repository; a field left out stays as it is, `null` clears `secrets_group`, `git_timeout_secs`
/// and `sync_interval`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryPatch {
    pub name: Option<String>,
    /// Accepted only if equal to the current slug: slugs never change.
    pub slug: Option<String>,
    pub remote_url: Option<String>,
    pub branch: Option<String>,
    pub provided_contents: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub secrets_group: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub git_timeout_secs: Option<Option<i32>>,
    /// A duration (`30s`, `5m`, `1h`); `null` stops polling.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub sync_interval: Option<Option<String>>,
}

/// A `sync_interval` as the API takes it, in seconds.
fn interval(text: Option<&str>) -> Result<Option<i32>, ApiError> {
    text.map(gitfleet_shared::repo::parse_sync_interval).transpose().map_err(|message| {
        commands::CommandError::Invalid(vec![gitfleet_shared::repo::FieldError::field("sync_interval", message)]).into()
    })
}

/// A field that is present: `null` is `Some(None)`, absent (the default) is `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A sync request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The commit the branch is known to point at (lets a worker skip an unneeded fetch).
    pub target_commit: Option<String>,
}

/// The event recorded: its JobResult (also at the `Location` header).
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub job_result_id: Uuid,
    pub repository_id: Uuid,
    /// The path of the JobResult.
    pub job_result: String,
}

/// Syncs of several repositories.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedMany {
    pub results: Vec<Accepted>,
}

/// Which repositories `POST /repositories/sync` syncs: all live ones, or those matching every filter given.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncAllRequest {
    pub remote_url: Option<String>,
    pub branch: Option<String>,
    /// Repositories that provide this data type.
    pub provides: Option<String>,
}

/// Which records to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordsQuery {
    /// Only this data type's records (e.g. `extras.configcontext`); the other lists are empty.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub data_type: Option<String>,
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

pub(super) fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n @ 1..=MAX_PAGE) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be from 1 to {MAX_PAGE}, not {n}."))),
    }
}

fn accepted(outcome: Outcome) -> Result<Accepted, ApiError> {
    match outcome {
        Outcome::Accepted { job_result_id, repository_id, .. } => {
            Ok(Accepted { job_result_id, repository_id, job_result: format!("/api/v1/job-results/{job_result_id}") })
        }
        Outcome::AlreadyDeleted { .. } => Err(ApiError::not_found("The repository is already deleted.")),
    }
}

/// 202 with the JobResult at `Location`.
fn accepted_response(accepted: Accepted) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(&accepted)).into_response();
    if let Ok(location) = HeaderValue::from_str(&accepted.job_result) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

fn target(request: SyncRequest) -> Result<Option<CommitId>, ApiError> {
    request.target_commit.map(CommitId::parse).transpose().map_err(|e| {
        let mut err = ApiError::bad_request("Invalid sync request.");
        err.body.fields.insert("target_commit".into(), vec![e.to_string()]);
        err
    })
}

#[utoipa::path(get, path = "/api/v1/repositories", operation_id = "list_repositories", tag = "repositories", params(RepositoryQuery),
    security(("bearer" = [])),
    responses((status = 200, body = RepositoryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<RepositoryQuery>,
) -> Result<Json<RepositoryPage>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let limit = page_size(q.limit)?;
    let filter = RepositoryFilter {
        name: q.name.clone(),
        slug: q.slug.clone(),
        remote_url: q.remote_url.clone(),
        branch: q.branch.clone(),
        provides: q.provides.clone(),
    };
    let client = state.pool.get().await?;
    let rows = repository::list_page(&**client, &filter, q.after.as_deref(), limit + 1).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let results: Vec<Repository> = rows.iter().take(rows.len().min(limit as usize)).map(Repository::from).collect();
    let next = match results.last() {
        Some(last) if more => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (key, value) in [
                ("name", &q.name),
                ("slug", &q.slug),
                ("remote_url", &q.remote_url),
                ("branch", &q.branch),
                ("provides", &q.provides),
            ] {
                if let Some(v) = value {
                    query.append_pair(key, v);
                }
            }
            query.append_pair("after", &last.name).append_pair("limit", &limit.to_string());
            Some(format!("/api/v1/repositories?{}", query.finish()))
        }
        _ => None,
    };
    Ok(Json(RepositoryPage { results, next }))
}

#[utoipa::path(post, path = "/api/v1/repositories", operation_id = "create_repository", tag = "repositories", request_body = NewRepository,
    security(("bearer" = [])),
    responses((status = 202, body = Accepted, description = "Defined; its first sync is queued"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let new: NewRepository = json_body(&headers, &body)?;
    let new = NewRepo {
        name: new.name,
        slug: new.slug,
        remote_url: new.remote_url,
        branch: new.branch,
        provided_contents: new.provided_contents,
        secrets_group: new.secrets_group,
        git_timeout_secs: new.git_timeout_secs,
        sync_interval_secs: interval(new.sync_interval.as_deref())?,
    };
    let outcome = commands::create(&state.pool, new, caller.requested_by()).await?;
    Ok(accepted_response(accepted(outcome)?))
}

async fn find(state: &AppState, name: &str) -> Result<RepositoryRow, ApiError> {
    let client = state.pool.get().await?;
    repository::find_live_by_name(&**client, name, false)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No repository named '{name}'.")))
}

#[utoipa::path(get, path = "/api/v1/repositories/{name}", operation_id = "get_repository", tag = "repositories",
    params(("name" = String, Path, description = "The repository's name")), security(("bearer" = [])),
    responses((status = 200, body = Repository), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Repository>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    Ok(Json(Repository::from(&find(&state, &name).await?)))
}

#[utoipa::path(patch, path = "/api/v1/repositories/{name}", operation_id = "update_repository", tag = "repositories", request_body = RepositoryPatch,
    params(("name" = String, Path, description = "The repository's current name")), security(("bearer" = [])),
    responses((status = 202, body = Accepted, description = "Changed; a sync of the new definition is queued"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let patch: RepositoryPatch = json_body(&headers, &body)?;
    let changes = RepoChanges {
        new_name: patch.name,
        slug: patch.slug,
        remote_url: patch.remote_url,
        branch: patch.branch,
        provided_contents: patch.provided_contents,
        secrets_group: patch.secrets_group,
        git_timeout_secs: patch.git_timeout_secs,
        sync_interval_secs: patch.sync_interval.map(|i| interval(i.as_deref())).transpose()?,
    };
    let outcome = commands::update(&state.pool, &name, changes, caller.requested_by()).await?;
    Ok(accepted_response(accepted(outcome)?))
}

#[utoipa::path(delete, path = "/api/v1/repositories/{name}", operation_id = "delete_repository", tag = "repositories",
    params(("name" = String, Path, description = "The repository's name")), security(("bearer" = [])),
    responses((status = 202, body = Accepted, description = "The delete is queued"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let outcome = commands::delete(&state.pool, &name, caller.requested_by()).await?;
    Ok(accepted_response(accepted(outcome)?))
}

#[utoipa::path(post, path = "/api/v1/repositories/{name}/sync", operation_id = "sync_repository", tag = "repositories",
    request_body(content = Option<SyncRequest>, description = "Optional"),
    params(("name" = String, Path, description = "The repository's name")), security(("bearer" = [])),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let target = target(optional_json_body(&headers, &body)?)?;
    let outcome = commands::sync(&state.pool, &name, EventKind::Sync, target, caller.requested_by()).await?;
    Ok(accepted_response(accepted(outcome)?))
}

#[utoipa::path(post, path = "/api/v1/repositories/{name}/dry-run", operation_id = "dry_run_repository", tag = "repositories",
    params(("name" = String, Path, description = "The repository's name")), security(("bearer" = [])),
    responses((status = 202, body = Accepted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn dry_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let outcome = commands::sync(&state.pool, &name, EventKind::DryRun, None, caller.requested_by()).await?;
    Ok(accepted_response(accepted(outcome)?))
}

/// How a list is applied.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// Also delete the live repositories the list does not name.
    #[serde(default)]
    pub prune: bool,
    /// Say what would change, and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[utoipa::path(put, path = "/api/v1/repositories", operation_id = "apply_repositories", tag = "repositories",
    request_body(content = Vec<crate::apply::Declared>, description = "Every repository, as it should be"),
    params(ApplyQuery), security(("bearer" = [])),
    responses((status = 200, body = crate::apply::Plan, description = "What was created, updated, deleted and left"),
        (status = 400, body = ErrorBody, description = "An entry breaks a rule: nothing was applied"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ApplyQuery>,
    body: Bytes,
) -> Result<Json<crate::apply::Plan>, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let list: serde_json::Value = json_body(&headers, &body)?;
    let entries = crate::apply::parse_value(list)?;
    let options = crate::apply::ApplyOptions { prune: q.prune, dry_run: q.dry_run };
    Ok(Json(crate::apply::apply(&state.pool, entries, options, &caller.requested_by()).await?))
}

#[utoipa::path(post, path = "/api/v1/repositories/sync", operation_id = "sync_repositories", tag = "repositories",
    request_body(content = Option<SyncAllRequest>, description = "Optional filters"), security(("bearer" = [])),
    responses((status = 202, body = AcceptedMany), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn sync_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<AcceptedMany>), ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let request: SyncAllRequest = optional_json_body(&headers, &body)?;
    let filter = RepositoryFilter {
        remote_url: request.remote_url,
        branch: request.branch,
        provides: request.provides,
        ..RepositoryFilter::default()
    };
    let mut after: Option<String> = None;
    let mut results = Vec::new();
    loop {
        let client = state.pool.get().await?;
        let page = repository::list_page(&**client, &filter, after.as_deref(), MAX_PAGE).await?;
        drop(client);
        for row in &page {
            let by = caller.requested_by();
            match commands::sync(&state.pool, &row.name, EventKind::Sync, None, by).await {
                Ok(outcome) => results.push(accepted(outcome)?),
                // Deleted since it was listed: nothing to sync.
                Err(commands::CommandError::NotFound(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        match page.last() {
            Some(last) if page.len() == MAX_PAGE as usize => after = Some(last.name.clone()),
            _ => break,
        }
    }
    Ok((StatusCode::ACCEPTED, Json(AcceptedMany { results })))
}

#[utoipa::path(get, path = "/api/v1/repositories/{name}/records", operation_id = "repository_records", tag = "repositories", params(
        ("name" = String, Path, description = "The repository's name"), RecordsQuery), security(("bearer" = [])),
    responses((status = 200, description = "The records the repository has live, in the shape of `worker check --format json` (schemas/check-output.schema.json), plus `commit`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn records(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<RecordsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let (loaded, commit) =
        crate::records::live(&state.pool, &name, q.data_type.as_deref()).await.map_err(|e| match e {
            crate::records::RecordsError::UnknownType(t) => ApiError::bad_request(format!("Unknown data type '{t}'.")),
            crate::records::RecordsError::NotFound(n) => ApiError::not_found(format!("No repository named '{n}'.")),
            crate::records::RecordsError::Db(e) => ApiError::internal(&e),
            crate::records::RecordsError::Pool(e) => e.into(),
        })?;
    let json = crate::records::document(&loaded, commit);
    Ok(Json(json))
}
