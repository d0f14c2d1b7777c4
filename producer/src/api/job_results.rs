//! `/api/v1/job-results`: what each event did, with its log.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use gitfleet_infra::store::job_result::{self, JobResultFilter, JobResultView, LogView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::authorize;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use super::repositories::page_size;
use crate::tokens::Scope;

/// One log entry of a JobResult.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntry {
    pub created: DateTime<Utc>,
    /// `debug`, `info`, `success`, `warning`, `failure`, `error` or `critical`.
    pub level: String,
    pub grouping: String,
    pub message: String,
    /// What the entry is about (`[repository] record`), or empty.
    pub log_object: String,
}

impl From<LogView> for LogEntry {
    fn from(l: LogView) -> Self {
        Self { created: l.created, level: l.level, grouping: l.grouping, message: l.message, log_object: l.log_object }
    }
}

/// A JobResult: one event's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResult {
    pub id: Uuid,
    pub name: String,
    pub task_name: Option<String>,
    pub repository_id: Option<Uuid>,
    /// The event kind: `create`, `update`, `delete`, `sync` or `dry_run`.
    pub kind: Option<String>,
    /// `PENDING`, `STARTED`, `SUCCESS` or `FAILURE`.
    pub status: String,
    pub date_created: DateTime<Utc>,
    pub date_started: Option<DateTime<Utc>>,
    pub date_done: Option<DateTime<Utc>>,
    pub requested_by: Option<String>,
    pub worker: Option<String>,
    /// What the job returned, or `{exc_type, exc_message}` on failure.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub traceback: Option<String>,
    pub debug_log_count: i32,
    pub success_log_count: i32,
    pub info_log_count: i32,
    pub warning_log_count: i32,
    pub error_log_count: i32,
    /// The trace this event belongs to (W3C trace id, 32 hex digits): look it up in the tracing backend.
    pub trace_id: Option<String>,
    /// The log entries (on `GET /job-results/{id}` only, filtered as asked, one page: `log_offset`, `log_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<LogEntry>>,
    /// How many log entries the filters keep in all (on `GET /job-results/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_matching: Option<i64>,
}

impl JobResult {
    fn from_view(v: JobResultView, logs: Option<Vec<LogEntry>>) -> Self {
        Self {
            id: v.id,
            name: v.name,
            task_name: v.task_name,
            repository_id: v.repository_id,
            kind: v.event_kind,
            status: v.status,
            date_created: v.date_created,
            date_started: v.date_started,
            date_done: v.date_done,
            requested_by: v.requested_by,
            worker: v.worker,
            result: v.result,
            traceback: v.traceback,
            debug_log_count: v.debug_log_count,
            success_log_count: v.success_log_count,
            info_log_count: v.info_log_count,
            warning_log_count: v.warning_log_count,
            error_log_count: v.error_log_count,
            trace_id: v.trace_id,
            logs,
            log_matching: None,
        }
    }
}

/// One page of JobResults, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResultPage {
    pub results: Vec<JobResult>,
    /// The next page (a path with its query), or null on the last page.
    pub next: Option<String>,
}

/// Filters and paging of the JobResult list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobResultQuery {
    /// Only this repository's (its id).
    pub repository: Option<Uuid>,
    /// `PENDING`, `STARTED`, `SUCCESS` or `FAILURE`.
    pub status: Option<String>,
    /// The event kind: `create`, `update`, `delete`, `sync` or `dry_run`.
    pub kind: Option<String>,
    /// Created at or after this time (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Where the previous page ended (as the `next` link gives it).
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
}

/// What to return of one JobResult.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobResultGet {
    /// Only log entries of this level.
    pub level: Option<String>,
    /// Only log entries of this grouping.
    pub grouping: Option<String>,
    /// Wait up to this many seconds (1 to 300; the server may hold less) for the JobResult to be SUCCESS or
    /// FAILURE before answering.
    pub wait: Option<u64>,
    /// The first log entry to answer with, counted among those the filters keep (default 0).
    pub log_offset: Option<i64>,
    /// At most this many log entries (1 to 10,000; default 1,000). `log_matching` says how many there are.
    pub log_limit: Option<i64>,
}

const DEFAULT_LOG_LIMIT: i64 = 1_000;
const MAX_LOG_LIMIT: i64 = 10_000;

const STATUSES: &[&str] = &["PENDING", "STARTED", "SUCCESS", "FAILURE"];
const KINDS: &[&str] = &["create", "update", "delete", "sync", "dry_run"];
const MAX_WAIT_SECS: u64 = 300;

/// The cursor is the last row's position, `created` and `id`, made opaque.
fn encode_cursor(view: &JobResult) -> String {
    hex::encode(format!("{}|{}", view.date_created.to_rfc3339(), view.id))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (created, id) = text.split_once('|')?;
    Some((DateTime::parse_from_rfc3339(created).ok()?.with_timezone(&Utc), id.parse().ok()?))
}

fn one_of(field: &str, value: Option<&String>, allowed: &[&str]) -> Result<(), ApiError> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(ApiError::bad_request(format!("{field} must be one of {}, not '{v}'.", allowed.join(", "))))
        }
        _ => Ok(()),
    }
}

#[utoipa::path(get, path = "/api/v1/job-results", operation_id = "list_job_results", tag = "job results", params(JobResultQuery), security(("bearer" = [])),
    responses((status = 200, body = JobResultPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<JobResultQuery>,
) -> Result<Json<JobResultPage>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let limit = page_size(q.limit)?;
    one_of("status", q.status.as_ref(), STATUSES)?;
    one_of("kind", q.kind.as_ref(), KINDS)?;
    let after = match &q.cursor {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("Invalid cursor."))?),
        None => None,
    };
    let filter = JobResultFilter {
        repository_id: q.repository,
        status: q.status.clone(),
        kind: q.kind.clone(),
        created_after: q.created_after,
        created_before: q.created_before,
    };
    let client = state.pool.get().await?;
    let rows = job_result::list_page(&**client, &filter, after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let results: Vec<JobResult> =
        rows.into_iter().take(usize::try_from(limit).unwrap_or(0)).map(|v| JobResult::from_view(v, None)).collect();
    let next = match results.last() {
        Some(last) if more => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(r) = q.repository {
                query.append_pair("repository", &r.to_string());
            }
            for (key, value) in [("status", &q.status), ("kind", &q.kind)] {
                if let Some(v) = value {
                    query.append_pair(key, v);
                }
            }
            for (key, value) in [("created_after", q.created_after), ("created_before", q.created_before)] {
                if let Some(v) = value {
                    query.append_pair(key, &v.to_rfc3339());
                }
            }
            query.append_pair("cursor", &encode_cursor(last)).append_pair("limit", &limit.to_string());
            Some(format!("/api/v1/job-results?{}", query.finish()))
        }
        _ => None,
    };
    Ok(Json(JobResultPage { results, next }))
}

#[utoipa::path(get, path = "/api/v1/job-results/{id}", operation_id = "get_job_result", tag = "job results",
    params(("id" = Uuid, Path, description = "The JobResult's id"), JobResultGet), security(("bearer" = [])),
    responses((status = 200, body = JobResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<JobResultGet>,
) -> Result<Json<JobResult>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let wait = match q.wait {
        None | Some(0) => Duration::ZERO,
        Some(secs @ 1..=MAX_WAIT_SECS) => Duration::from_secs(secs).min(state.max_wait),
        Some(secs) => {
            return Err(ApiError::bad_request(format!("wait must be from 1 to {MAX_WAIT_SECS}, not {secs}.")));
        }
    };
    let offset = q.log_offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(format!("log_offset must not be negative, not {offset}.")));
    }
    let limit = q.log_limit.unwrap_or(DEFAULT_LOG_LIMIT);
    if !(1..=MAX_LOG_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("log_limit must be from 1 to {MAX_LOG_LIMIT}, not {limit}.")));
    }
    let deadline = Instant::now() + wait;
    loop {
        let client = state.pool.get().await?;
        let status = job_result::status(&**client, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("No JobResult {id}.")))?;
        drop(client);
        if status.is_terminal() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await;
    }
    let client = state.pool.get().await?;
    let view = job_result::load_without_log(&**client, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No JobResult {id}.")))?;
    let filter = job_result::LogFilter { level: q.level.clone(), grouping: q.grouping.clone() };
    let (matching, entries) = job_result::log_page_where(&**client, id, &filter, offset, limit).await?;
    let logs = entries.into_iter().map(|(_, l)| LogEntry::from(l)).collect();
    let mut answer = JobResult::from_view(view, Some(logs));
    answer.log_matching = Some(matching);
    Ok(Json(answer))
}
