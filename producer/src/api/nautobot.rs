//! Nautobot's REST API for Git repositories and their JobResults (`/api/extras/...`), in Nautobot's JSON shapes
//! (`count`/`next`/`previous`/`results` pages by `limit` and `offset`, trailing slashes, choice fields as
//! `{value, label}`), so scripts and `pynautobot` written against Nautobot keep working. Writes are the CLI's
//! commands, as for `/api/v1`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::HOST};
use chrono::{DateTime, Utc};
use gitfleet_infra::store::job_result::{self, JobResultView};
use gitfleet_infra::store::repository::{self, RepositoryFilter, RepositoryRow};
use gitfleet_shared::event::EventKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::authorize;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery, json_body};
use crate::commands::{self, NewRepo, Outcome, RepoChanges};
use crate::tokens::Scope;

/// Nautobot's page size when a client asks for none, and the most it serves at once.
const PAGE: i64 = 50;
const MAX_PAGE: i64 = 1000;

/// Nautobot's paging query, with the Git repository filters it offers (`name`, `slug`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Exact name.
    pub name: Option<String>,
    /// Exact slug.
    pub slug: Option<String>,
    /// Page size (0: the largest page served, 1000).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// A page, as Nautobot's REST API pages lists.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Value>,
}

/// The log entries of one JobResult.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The JobResult's id (required).
    pub job_result: Option<Uuid>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// A Git repository as Nautobot's API writes one (create and PATCH take the same fields). Other fields Nautobot
/// has (`current_head`, read-only there; `custom_fields`, `tags`) are accepted and ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct GitRepositoryWrite {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub remote_url: Option<String>,
    pub branch: Option<String>,
    pub provided_contents: Option<Vec<String>>,
    /// A secrets group: its name, `{"name": ...}`, or null.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub secrets_group: Option<Option<Value>>,
}

fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The base URL the client used (`http://host`), for Nautobot's absolute `url` fields.
fn origin(headers: &HeaderMap) -> String {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

fn page_bounds(limit: Option<i64>, offset: Option<i64>) -> Result<(i64, i64), ApiError> {
    let limit = match limit {
        None => PAGE,
        Some(0) => MAX_PAGE,
        Some(n @ 1..) => n.min(MAX_PAGE),
        Some(n) => return Err(ApiError::bad_request(format!("limit must not be negative, not {n}."))),
    };
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(format!("offset must not be negative, not {offset}.")));
    }
    Ok((limit, offset))
}

/// `next` and `previous` links of an offset page, keeping the other query parameters.
fn links(
    base: &str,
    params: &[(&str, String)],
    count: i64,
    limit: i64,
    offset: i64,
) -> (Option<String>, Option<String>) {
    let link = |offset: i64| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            query.append_pair(k, v);
        }
        query.append_pair("limit", &limit.to_string()).append_pair("offset", &offset.to_string());
        format!("{base}?{}", query.finish())
    };
    let next = (offset.saturating_add(limit) < count).then(|| link(offset.saturating_add(limit)));
    let previous = (offset > 0).then(|| link(offset.saturating_sub(limit).max(0)));
    (next, previous)
}

fn repository_json(origin: &str, r: &RepositoryRow) -> Value {
    json!({
        "id": r.id,
        "object_type": "extras.gitrepository",
        "display": r.name,
        "url": format!("{origin}/api/extras/git-repositories/{}/", r.id),
        "name": r.name,
        "slug": r.slug,
        "remote_url": r.remote_url,
        "branch": r.branch.as_str(),
        "current_head": r.current_head.as_ref().map_or("", |c| c.as_str()),
        "provided_contents": r.provided_contents,
        "secrets_group": r.secrets_group.as_ref().map(|g| json!({"object_type": "extras.secretsgroup", "display": g, "name": g})),
        "created": r.created,
        "last_updated": r.last_updated,
        "custom_fields": {},
        "tags": [],
    })
}

fn status_label(status: &str) -> &'static str {
    match status {
        "PENDING" => "Pending",
        "STARTED" => "Started",
        "SUCCESS" => "Success",
        "FAILURE" => "Failure",
        "REVOKED" => "Revoked",
        _ => "Unknown",
    }
}

fn job_result_json(origin: &str, v: &JobResultView) -> Value {
    json!({
        "id": v.id,
        "object_type": "extras.jobresult",
        "display": format!("{}: {}", v.name, v.status),
        "url": format!("{origin}/api/extras/job-results/{}/", v.id),
        "name": v.name,
        "task_name": v.task_name,
        "status": {"value": v.status, "label": status_label(&v.status)},
        "date_created": v.date_created,
        "date_started": v.date_started,
        "date_done": v.date_done,
        "worker": v.worker,
        "result": v.result,
        "traceback": v.traceback,
        "task_args": [],
        "task_kwargs": {"repository": v.repository_id},
        "celery_kwargs": {},
        "user": null,
        "job_model": null,
        "meta": null,
        "files": [],
        "debug_log_count": v.debug_log_count,
        "success_log_count": v.success_log_count,
        "info_log_count": v.info_log_count,
        "warning_log_count": v.warning_log_count,
        "error_log_count": v.error_log_count,
    })
}

/// A secrets group given as a name or as `{"name": ...}`.
fn group_name(value: Option<Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name)),
        Some(Value::Object(map)) => match map.get("name") {
            Some(Value::String(name)) => Ok(Some(name.clone())),
            _ => Err(field_error("secrets_group", "Give the secrets group by name: \"name\" or {\"name\": \"...\"}.")),
        },
        Some(_) => {
            Err(field_error("secrets_group", "Give the secrets group by name: \"name\" or {\"name\": \"...\"}."))
        }
    }
}

fn field_error(field: &str, message: &str) -> ApiError {
    let mut err = ApiError::bad_request("Invalid repository definition.");
    err.body.fields.insert(field.to_owned(), vec![message.to_owned()]);
    err
}

async fn by_id(state: &AppState, id: Uuid) -> Result<RepositoryRow, ApiError> {
    let client = state.pool.get().await?;
    repository::find_by_id(&**client, id)
        .await?
        .filter(|r| r.deleted_at.is_none())
        .ok_or_else(|| ApiError::not_found("Not found."))
}

async fn job_result_by_id(state: &AppState, id: Uuid) -> Result<JobResultView, ApiError> {
    let client = state.pool.get().await?;
    // Its log is served by job-logs, page by page: a large sync's is not read here.
    job_result::load_without_log(&**client, id).await?.ok_or_else(|| ApiError::not_found("Not found."))
}

#[utoipa::path(get, path = "/api/extras/git-repositories/", operation_id = "nautobot_list_git_repositories",
    tag = "nautobot", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = Page), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let filter = RepositoryFilter { name: q.name.clone(), slug: q.slug.clone(), ..RepositoryFilter::default() };
    let client = state.pool.get().await?;
    let (count, rows) = repository::list_offset(&**client, &filter, offset, limit).await?;
    let origin = origin(&headers);
    let params: Vec<(&str, String)> =
        [("name", q.name), ("slug", q.slug)].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
    let (next, previous) = links(&format!("{origin}/api/extras/git-repositories/"), &params, count, limit, offset);
    let results = rows.iter().map(|r| repository_json(&origin, r)).collect();
    Ok(Json(Page { count, next, previous, results }))
}

#[utoipa::path(post, path = "/api/extras/git-repositories/", operation_id = "nautobot_create_git_repository",
    tag = "nautobot", request_body = GitRepositoryWrite, security(("bearer" = [])),
    responses((status = 201, body = Object, description = "Created (and, unlike Nautobot, its first sync queued)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let w: GitRepositoryWrite = json_body(&headers, &body)?;
    let new = NewRepo {
        name: w.name.ok_or_else(|| field_error("name", "This field is required."))?,
        slug: w.slug,
        remote_url: w.remote_url.ok_or_else(|| field_error("remote_url", "This field is required."))?,
        branch: w.branch,
        provided_contents: w.provided_contents.unwrap_or_default(),
        secrets_group: group_name(w.secrets_group.flatten())?,
        git_timeout_secs: None,
        sync_interval_secs: None,
    };
    let Outcome::Accepted { repository_id, .. } = commands::create(&state.pool, new, caller.requested_by()).await?
    else {
        return Err(ApiError::internal(&"a create reported an already deleted repository"));
    };
    let row = by_id(&state, repository_id).await?;
    Ok((StatusCode::CREATED, Json(repository_json(&origin(&headers), &row))))
}

#[utoipa::path(get, path = "/api/extras/git-repositories/{id}/", operation_id = "nautobot_get_git_repository",
    tag = "nautobot", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    Ok(Json(repository_json(&origin(&headers), &by_id(&state, id).await?)))
}

#[utoipa::path(patch, path = "/api/extras/git-repositories/{id}/", operation_id = "nautobot_update_git_repository",
    tag = "nautobot", params(("id" = Uuid, Path)), request_body = GitRepositoryWrite, security(("bearer" = [])),
    responses((status = 200, body = Object, description = "Changed (and, unlike Nautobot, a sync queued)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let w: GitRepositoryWrite = json_body(&headers, &body)?;
    let current = by_id(&state, id).await?;
    let changes = RepoChanges {
        new_name: w.name,
        slug: w.slug,
        remote_url: w.remote_url,
        branch: w.branch,
        provided_contents: w.provided_contents,
        secrets_group: w.secrets_group.map(group_name).transpose()?,
        git_timeout_secs: None,
        sync_interval_secs: None,
    };
    commands::update(&state.pool, &current.name, changes, caller.requested_by()).await?;
    Ok(Json(repository_json(&origin(&headers), &by_id(&state, id).await?)))
}

#[utoipa::path(delete, path = "/api/extras/git-repositories/{id}/", operation_id = "nautobot_delete_git_repository",
    tag = "nautobot", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "The delete is queued"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let current = by_id(&state, id).await?;
    commands::delete(&state.pool, &current.name, caller.requested_by()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/extras/git-repositories/{id}/sync/", operation_id = "nautobot_sync_git_repository",
    tag = "nautobot", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Object, description = "`{message, job_result}`, as Nautobot answers"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Scope::Write).await?;
    let repo = by_id(&state, id).await?;
    let outcome = commands::sync(&state.pool, &repo.name, EventKind::Sync, None, caller.requested_by()).await?;
    let job = outcome.job_result_id().ok_or_else(|| ApiError::not_found("Not found."))?;
    let view = job_result_by_id(&state, job).await?;
    Ok(Json(json!({
        "message": format!("Repository {} sync job added to queue.", repo.name),
        "job_result": job_result_json(&origin(&headers), &view),
    })))
}

#[utoipa::path(get, path = "/api/extras/job-results/{id}/", operation_id = "nautobot_get_job_result", tag = "nautobot",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn job_result(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    Ok(Json(job_result_json(&origin(&headers), &job_result_by_id(&state, id).await?)))
}

#[utoipa::path(get, path = "/api/extras/job-logs/", operation_id = "nautobot_list_job_logs", tag = "nautobot",
    params(LogQuery), security(("bearer" = [])),
    responses((status = 200, body = Page), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn job_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<Page>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let id = q.job_result.ok_or_else(|| ApiError::bad_request("Filter by job_result: ?job_result=<id>."))?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let client = state.pool.get().await?;
    let (count, entries) = job_result::log_page(&**client, id, offset, limit).await?;
    let origin = origin(&headers);
    let base = format!("{origin}/api/extras/job-logs/");
    let (next, previous) = links(&base, &[("job_result", id.to_string())], count, limit, offset);
    let results = entries
        .into_iter()
        .map(|(entry_id, l): (Uuid, _)| {
            let created: DateTime<Utc> = l.created;
            json!({
                "id": entry_id,
                "object_type": "extras.joblogentry",
                "display": l.message,
                "url": format!("{base}{entry_id}/"),
                "job_result": {"id": id, "object_type": "extras.jobresult", "url": format!("{origin}/api/extras/job-results/{id}/")},
                "log_level": l.level,
                "grouping": l.grouping,
                "message": l.message,
                "created": created,
                "log_object": l.log_object,
                "absolute_url": "",
            })
        })
        .collect();
    Ok(Json(Page { count, next, previous, results }))
}

#[utoipa::path(get, path = "/api/", operation_id = "nautobot_root", tag = "nautobot",
    responses((status = 200, body = Object, description = "The API root, with Nautobot's `API-Version` header")))]
pub async fn root(headers: HeaderMap) -> ([(&'static str, &'static str); 1], Json<Value>) {
    let origin = origin(&headers);
    (
        [("API-Version", "2.4")],
        Json(json!({"extras": format!("{origin}/api/extras/"), "v1": format!("{origin}/api/v1/openapi.json")})),
    )
}
