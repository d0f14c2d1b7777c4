//! The web UI, served by `producer serve` at `/ui/`: server-rendered pages that work without JavaScript (a small
//! script only shows times in the viewer's zone), on the same commands and queries as the API and the command line.
//!
//! Pages: the repositories (filter and sort; create and edit forms with the API's messages next to their fields),
//! a repository (its definition, live commit, records per data type,
//! JobResults; Sync, Dry-run and Delete), one record (its data pretty-printed), a JobResult (its log with Nautobot's
//! columns, filtered by level, a page at a time, reloading itself while the job runs), and the fleet (workers seen
//! recently, the backlog, dead letters with Replay). Signing in exchanges an API token for a session (see
//! [`session`]); what a token's scope does not allow is neither shown nor accepted.

mod forms;
mod page;
pub mod session;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gitfleet_infra::store::{job_result, repository};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::api::AppState;
use crate::commands;
use crate::tokens::{self, Scope};
use page::Page;
use session::Session;

/// Log entries per page of a JobResult.
const LOG_PAGE: i64 = 200;

/// The UI's routes, merged into the API's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(|| async { redirect("/ui/repositories") }))
        .route("/ui/static/ui.css", get(|| async { asset("text/css", page::CSS) }))
        .route("/ui/static/ui.js", get(|| async { asset("text/javascript", page::JS) }))
        .route("/ui/static/favicon.svg", get(|| async { asset("image/svg+xml", page::FAVICON) }))
        .route("/ui/sign-in", get(sign_in_form).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/repositories", get(repositories))
        .route("/ui/new-repository", get(forms::new_form).post(forms::create))
        .route("/ui/repositories/{name}/edit", get(forms::edit_form).post(forms::update))
        .route("/ui/repositories/{name}", get(repository_page))
        .route("/ui/repositories/{name}/records/{data_type}/{index}", get(record_page))
        .route("/ui/repositories/{name}/sync", post(sync))
        .route("/ui/repositories/{name}/dry-run", post(dry_run))
        .route("/ui/repositories/{name}/delete", get(confirm_delete).post(delete))
        .route("/ui/job-results/{id}", get(job_result_page))
        .route("/ui/fleet", get(fleet))
        .route("/ui/dead-letters/{id}/replay", post(replay))
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
        ],
        body,
    )
        .into_response()
}

/// A page, or the answer that replaces it (a redirect to sign in, an error page).
type PageResult = Result<Response, Response>;

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
                ),
            ),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn error_page(session: Option<&Session>, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    html_response(status, Page::new(title, session).render(html! { p.error role="alert" { (message) } }))
}

fn internal(session: Option<&Session>, err: impl std::fmt::Display) -> Response {
    tracing::error!(error = %err, "a UI page failed");
    error_page(session, StatusCode::INTERNAL_SERVER_ERROR, "The page could not be made; the server's log says why.")
}

/// The signed-in session, or a redirect to the sign-in page (back here afterwards).
async fn signed_in(state: &AppState, headers: &HeaderMap, here: &str) -> Result<Session, Response> {
    match session::current(&state.pool, headers).await {
        Ok(Some(session)) => Ok(session),
        Ok(None) => Err(redirect(&format!("/ui/sign-in?next={}", page::encode(here)))),
        Err(err) => Err(internal(None, err)),
    }
}

/// The signed-in session, refused with a page saying so when its scope is below `needed`.
async fn signed_in_with(state: &AppState, headers: &HeaderMap, here: &str, needed: Scope) -> Result<Session, Response> {
    let session = signed_in(state, headers, here).await?;
    match below(&session, needed) {
        Some(refusal) => Err(refusal),
        None => Ok(session),
    }
}

/// A 403 page saying what the session's scope lacks, when it is below `needed`.
fn below(session: &Session, needed: Scope) -> Option<Response> {
    (!session.can(needed)).then(|| {
        let message = format!("Your token's scope does not allow this: it needs {}.", needed.as_str());
        error_page(Some(session), StatusCode::FORBIDDEN, &message)
    })
}

/// The session, for a form post: it must carry the session's CSRF token and the session must have `needed`.
async fn form_session(state: &AppState, headers: &HeaderMap, csrf: &str, needed: Scope) -> Result<Session, Response> {
    let session = match session::current(&state.pool, headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(redirect("/ui/sign-in")),
        Err(err) => return Err(internal(None, err)),
    };
    if !session.csrf_ok(csrf) {
        return Err(error_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "The form was not sent by this session (CSRF check).",
        ));
    }
    match below(&session, needed) {
        Some(refusal) => Err(refusal),
        None => Ok(session),
    }
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only paths inside the UI are followed after signing in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/ui/repositories")
        .to_owned()
}

async fn sign_in_form(Query(q): Query<NextQuery>) -> Response {
    html_response(StatusCode::OK, page::sign_in(&safe_next(q.next.as_deref()), None))
}

#[derive(Debug, Deserialize)]
struct SignIn {
    token: String,
    next: Option<String>,
}

async fn sign_in(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<SignIn>) -> Response {
    let next = safe_next(form.next.as_deref());
    match tokens::verify(&state.pool, form.token.trim()).await {
        Ok(caller) => match session::open(&state.pool, caller.token_id, session::over_tls(&headers)).await {
            Ok(cookie) => {
                let mut response = redirect(&next);
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(SET_COOKIE, value);
                }
                tracing::info!(token = %caller.token_name, "signed in to the UI");
                response
            }
            Err(err) => internal(None, err),
        },
        Err(tokens::TokenError::Db(e)) => internal(None, e),
        Err(tokens::TokenError::Pool(e)) => internal(None, e),
        Err(why) => {
            tracing::info!(reason = %why, "UI sign-in refused");
            html_response(
                StatusCode::UNAUTHORIZED,
                page::sign_in(&next, Some("That token is not a live gitfleet token.")),
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let session = match form_session(&state, &headers, &form.csrf, Scope::Read).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    match session::close(&state.pool, &session, session::over_tls(&headers)).await {
        Ok(cookie) => {
            let mut response = redirect("/ui/sign-in");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, value);
            }
            response
        }
        Err(err) => internal(Some(&session), err),
    }
}

#[derive(Debug, Deserialize, Default)]
struct ListQuery {
    /// Part of the name, remote URL or branch.
    q: Option<String>,
    /// `name` (default), `status` or `age`.
    sort: Option<String>,
    /// The page, from 1.
    page: Option<i64>,
}

/// One row of the repositories page.
pub struct RepoRow {
    pub name: String,
    pub remote_url: String,
    pub branch: String,
    pub current_head: Option<String>,
    pub last_status: Option<String>,
    pub last_done: Option<chrono::DateTime<chrono::Utc>>,
    pub records: Vec<(String, i64)>,
}

async fn repositories(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> PageResult {
    let session = signed_in(&state, &headers, "/ui/repositories").await?;
    let client = state.pool.get().await.map_err(|e| internal(Some(&session), e))?;
    let filter = q.q.clone().unwrap_or_default();
    let page_number = q.page.unwrap_or(1).clamp(1, 1_000_000);
    let rows = client
        .query(
            "SELECT r.name, r.remote_url, r.branch, r.current_head, j.status, j.date_done,
                    (SELECT count(*) FROM config_context c WHERE c.owner_repository_id = r.id),
                    (SELECT count(*) FROM config_context_schema s WHERE s.owner_repository_id = r.id),
                    (SELECT count(*) FROM job j2 WHERE j2.owner_repository_id = r.id),
                    (SELECT count(*) FROM export_template e WHERE e.owner_repository_id = r.id)
               FROM git_repository r
               LEFT JOIN LATERAL (SELECT status, date_done, date_created FROM job_result
                                   WHERE repository_id = r.id ORDER BY date_created DESC LIMIT 1) j ON true
              WHERE r.deleted_at IS NULL
                AND ($1 = '' OR strpos(lower(r.name || ' ' || r.remote_url || ' ' || r.branch), lower($1)) > 0)
              ORDER BY CASE WHEN $2 = 'status' THEN coalesce(j.status, '') END,
                       CASE WHEN $2 = 'age' THEN j.date_created END DESC NULLS LAST,
                       r.name
              OFFSET $3 LIMIT $4",
            &[
                &filter,
                &q.sort.clone().unwrap_or_default(),
                &((page_number - 1) * page::REPOSITORIES_PAGE),
                &(page::REPOSITORIES_PAGE + 1),
            ],
        )
        .await
        .map_err(|e| internal(Some(&session), e))?;
    let more = rows.len() as i64 > page::REPOSITORIES_PAGE;
    let repos: Vec<RepoRow> = rows
        .iter()
        .take(usize::try_from(page::REPOSITORIES_PAGE).unwrap_or(100))
        .map(|r| RepoRow {
            name: r.get(0),
            remote_url: r.get(1),
            branch: r.get(2),
            current_head: Some(r.get::<_, String>(3)).filter(|h| !h.is_empty()),
            last_status: r.get(4),
            last_done: r.get(5),
            records: vec![
                ("contexts".to_owned(), r.get(6)),
                ("schemas".to_owned(), r.get(7)),
                ("jobs".to_owned(), r.get(8)),
                ("templates".to_owned(), r.get(9)),
            ],
        })
        .collect();
    let list = page::ListPage { filter: &filter, sort: q.sort.as_deref(), page: page_number, more };
    Ok(html_response(StatusCode::OK, page::repositories(&session, &repos, &list)))
}

async fn repository_page(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> PageResult {
    let here = format!("/ui/repositories/{}", page::encode(&name));
    let session = signed_in(&state, &headers, &here).await?;
    let client = state.pool.get().await.map_err(|e| internal(Some(&session), e))?;
    let Some(repo) =
        repository::find_live_by_name(&**client, &name, false).await.map_err(|e| internal(Some(&session), e))?
    else {
        return Err(error_page(Some(&session), StatusCode::NOT_FOUND, "No live repository has that name."));
    };
    let filter = job_result::JobResultFilter { repository_id: Some(repo.id), ..Default::default() };
    let results = job_result::list_page(&**client, &filter, None, 25).await.map_err(|e| internal(Some(&session), e))?;
    drop(client);
    let records = match crate::records::live(&state.pool, &name, None).await {
        Ok((loaded, commit)) => crate::records::document(&loaded, commit),
        Err(err) => return Err(internal(Some(&session), err)),
    };
    Ok(html_response(StatusCode::OK, page::repository(&session, &repo, &records, &results)))
}

async fn record_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, data_type, index)): Path<(String, String, usize)>,
) -> PageResult {
    let here = format!("/ui/repositories/{}/records/{}/{index}", page::encode(&name), page::encode(&data_type));
    let session = signed_in(&state, &headers, &here).await?;
    let document = match crate::records::live(&state.pool, &name, None).await {
        Ok((loaded, commit)) => crate::records::document(&loaded, commit),
        Err(crate::records::RecordsError::NotFound(_)) => {
            return Err(error_page(Some(&session), StatusCode::NOT_FOUND, "No live repository has that name."));
        }
        Err(err) => return Err(internal(Some(&session), err)),
    };
    let Some(record) = document.get(&data_type).and_then(|list| list.get(index)) else {
        return Err(error_page(Some(&session), StatusCode::NOT_FOUND, "The repository has no such record."));
    };
    Ok(html_response(StatusCode::OK, page::record(&session, &name, &data_type, record)))
}

/// Records an event from a form and shows its JobResult.
async fn act(
    state: &AppState,
    headers: &HeaderMap,
    csrf: &str,
    run: impl AsyncFnOnce(&Session) -> Result<commands::Outcome, commands::CommandError>,
) -> Response {
    let session = match form_session(state, headers, csrf, Scope::Write).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    match run(&session).await {
        Ok(outcome) => match outcome.job_result_id() {
            Some(id) => redirect(&format!("/ui/job-results/{id}")),
            None => redirect("/ui/repositories"),
        },
        Err(err) => error_page(Some(&session), StatusCode::BAD_REQUEST, &err.to_string()),
    }
}

async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&state, &headers, &form.csrf, async |session: &Session| {
        commands::sync(&state.pool, &name, gitfleet_shared::event::EventKind::Sync, None, session.requested_by()).await
    })
    .await
}

async fn dry_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&state, &headers, &form.csrf, async |session: &Session| {
        commands::sync(&state.pool, &name, gitfleet_shared::event::EventKind::DryRun, None, session.requested_by())
            .await
    })
    .await
}

async fn confirm_delete(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> PageResult {
    let here = format!("/ui/repositories/{}/delete", page::encode(&name));
    let session = signed_in_with(&state, &headers, &here, Scope::Write).await?;
    Ok(html_response(StatusCode::OK, page::confirm_delete(&session, &name)))
}

async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&state, &headers, &form.csrf, async |session: &Session| {
        commands::delete(&state.pool, &name, session.requested_by()).await
    })
    .await
}

#[derive(Debug, Deserialize, Default)]
struct LogQuery {
    level: Option<String>,
    page: Option<i64>,
}

async fn job_result_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> PageResult {
    let here = format!("/ui/job-results/{}", page::encode(&id));
    let session = signed_in(&state, &headers, &here).await?;
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(error_page(Some(&session), StatusCode::NOT_FOUND, "That is not a JobResult id."));
    };
    let level = q.level.filter(|l| ["debug", "info", "success", "warning", "failure", "error"].contains(&l.as_str()));
    let page_number = q.page.unwrap_or(1).max(1);
    let client = state.pool.get().await.map_err(|e| internal(Some(&session), e))?;
    let Some(view) = job_result::load_without_log(&**client, id).await.map_err(|e| internal(Some(&session), e))? else {
        return Err(error_page(Some(&session), StatusCode::NOT_FOUND, "No JobResult has that id."));
    };
    let filter = job_result::LogFilter { level: level.clone(), grouping: None };
    let (matching, entries) =
        job_result::log_page_where(&**client, id, &filter, (page_number - 1) * LOG_PAGE, LOG_PAGE)
            .await
            .map_err(|e| internal(Some(&session), e))?;
    let entries: Vec<_> = entries.into_iter().map(|(_, entry)| entry).collect();
    let log =
        page::LogPage { level: level.as_deref(), page: page_number, per_page: LOG_PAGE, matching, entries: &entries };
    Ok(html_response(StatusCode::OK, page::job_result(&session, &view, &log)))
}

/// The broker as the fleet page sees it: one connection, opened when first needed and again after it drops.
pub struct BrokerView {
    amqp: gitfleet_infra::settings::AmqpSettings,
    topology: gitfleet_infra::amqp::Topology,
    connection: tokio::sync::Mutex<Option<lapin::Connection>>,
}

impl std::fmt::Debug for BrokerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerView").field("prefix", &self.amqp.prefix).finish_non_exhaustive()
    }
}

/// How long the fleet page waits for the broker.
const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl BrokerView {
    pub fn new(amqp: gitfleet_infra::settings::AmqpSettings) -> Self {
        let topology = gitfleet_infra::amqp::Topology::new(&amqp);
        Self { amqp, topology, connection: tokio::sync::Mutex::new(None) }
    }

    /// The queues' depths and consumers, or why they cannot be read now (bounded: the page never hangs on it).
    pub async fn depths(&self) -> Result<Vec<crate::relay::QueueDepth>, String> {
        let read = async {
            let mut connection = self.connection.lock().await;
            if !connection.as_ref().is_some_and(|c| c.status().connected()) {
                *connection =
                    Some(gitfleet_infra::amqp::connect(&self.amqp, BROKER_WAIT).await.map_err(|e| e.to_string())?);
            }
            let Some(live) = connection.as_ref() else { return Err("no connection".to_owned()) };
            let depths = crate::relay::queue_depths(live, &self.topology).await.map_err(|e| e.to_string());
            if depths.is_err() {
                *connection = None;
            }
            depths
        };
        tokio::time::timeout(BROKER_WAIT * 2, read)
            .await
            .unwrap_or_else(|_| Err("the broker did not answer".to_owned()))
    }
}

/// A worker seen recently: its name, when last seen, and the jobs it runs now.
pub struct WorkerSeen {
    pub name: String,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    pub running: i64,
}

async fn fleet(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let session = signed_in(&state, &headers, "/ui/fleet").await?;
    let client = state.pool.get().await.map_err(|e| internal(Some(&session), e))?;
    let gauges = gitfleet_infra::store::gauges::read(&**client).await.map_err(|e| internal(Some(&session), e))?;
    let pending: i64 = client
        .query_one("SELECT count(*) FROM job_result WHERE status = 'PENDING'", &[])
        .await
        .map_err(|e| internal(Some(&session), e))?
        .get(0);
    let workers = client
        .query(
            "SELECT worker, max(seen), count(*) FILTER (WHERE running) FROM (
                 SELECT worker, coalesce(heartbeat, date_started) AS seen, status = 'STARTED' AS running
                   FROM job_result WHERE worker IS NOT NULL AND coalesce(heartbeat, date_started) > now() - interval '1 hour'
                 UNION ALL
                 SELECT worker, acquired_at, false FROM sync_lock_log WHERE acquired_at > now() - interval '1 hour'
             ) seen GROUP BY worker ORDER BY max(seen) DESC LIMIT 200",
            &[],
        )
        .await
        .map_err(|e| internal(Some(&session), e))?
        .iter()
        .map(|r| WorkerSeen { name: r.get(0), last_seen: r.get(1), running: r.get(2) })
        .collect::<Vec<_>>();
    drop(client);
    let letters = crate::dead_letters::list(&state.pool, false).await.map_err(|e| internal(Some(&session), e))?;
    let queues = match &state.broker {
        Some(broker) => broker.depths().await,
        None => Err("this server was not given a broker".to_owned()),
    };
    let view = page::FleetView { gauges: &gauges, pending, workers: &workers, letters: &letters, queues: &queues };
    Ok(html_response(StatusCode::OK, page::fleet(&session, &view)))
}

async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf, Scope::Admin).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    match crate::dead_letters::replay(&state.pool, Some(id), &session.requested_by()).await {
        Ok(replayed) => match replayed.first() {
            Some(job) => redirect(&format!("/ui/job-results/{job}")),
            None => redirect("/ui/fleet"),
        },
        Err(err) => error_page(Some(&session), StatusCode::BAD_REQUEST, &err.to_string()),
    }
}
