//! `producer serve`: the HTTP API. Stateless: any number of replicas serve the same database, and every write is
//! the CLI's own command (one transaction with the outbox), so the relay publishes what either front end records.

mod auth;
mod error;
mod extract;
pub mod hooks;
mod job_results;
mod nautobot;
mod operations;
mod repositories;

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use error::{ApiError, ErrorBody};

/// `producer serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (host:port).
    #[arg(long = "http-addr", env = "GITFLEET_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Longest a `?wait=` long poll is held, in seconds (below a load balancer's idle timeout, say); a client
    /// asking for longer gets the JobResult as it is then.
    #[arg(long, env = "GITFLEET_API_MAX_WAIT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub max_wait_secs: u64,
    #[command(flatten)]
    pub hooks: hooks::HookSettings,
    /// The broker whose queue depths the UI's fleet page shows (it publishes nothing: the relay does).
    #[command(flatten)]
    pub amqp: gitfleet_infra::settings::AmqpSettings,
}

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: Pool,
    pub hooks: std::sync::Arc<hooks::Hooks>,
    /// Longest a long poll is held.
    pub max_wait: std::time::Duration,
    /// Where the UI reads queue depths, when serve is given a broker.
    pub broker: Option<std::sync::Arc<crate::ui::BrokerView>>,
}

impl AppState {
    /// Reads the webhook secrets once (they are re-read every few seconds after).
    pub fn new(pool: Pool, hooks: hooks::HookSettings) -> std::io::Result<Self> {
        let hooks = std::sync::Arc::new(hooks::Hooks::new(hooks)?);
        Ok(Self { hooks, pool, max_wait: std::time::Duration::from_secs(300), broker: None })
    }

    /// Lets the UI's fleet page read the queues of this broker.
    pub fn with_broker(mut self, amqp: gitfleet_infra::settings::AmqpSettings) -> Self {
        self.broker = Some(std::sync::Arc::new(crate::ui::BrokerView::new(amqp)));
        self
    }
}

/// Largest request body accepted, in bytes (definitions and sync requests are small).
const MAX_BODY: usize = 1024 * 1024;
/// Largest inventory import, in bytes (an inventory lists every device of a network).
const MAX_INVENTORY_BODY: usize = 64 * 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "gitfleet API", description = "Repository definitions, their syncs and JobResults. Every write records an event through the same outbox as the `producer` command line. Authenticate with `Authorization: Bearer <token>` (`producer token create`); scopes: read < write < admin."),
    paths(
        repositories::list, repositories::create, repositories::apply, repositories::get, repositories::update, repositories::delete,
        repositories::sync, repositories::dry_run, repositories::sync_all, repositories::records,
        job_results::list, job_results::get, operations::counts, operations::import, operations::dead_letters,
        operations::replay, hooks::deliver, hooks::deliveries, nautobot::root, nautobot::list, nautobot::create,
        nautobot::get, nautobot::update, nautobot::delete, nautobot::sync, nautobot::job_result, nautobot::job_logs,
        healthz, readyz, openapi_json,
    ),
    modifiers(&BearerAuth, &ErrorResponses),
    tags((name = "repositories", description = "Definitions, syncs and the records they own"),
        (name = "job results", description = "What each event did"),
        (name = "inventory", description = "The scope objects config context lookups resolve against"),
        (name = "dead letters", description = "Events the fleet gave up on"),
        (name = "webhooks", description = "Git hosts' push notifications, signed with the webhook secret"),
        (name = "nautobot", description = "Nautobot's REST API for Git repositories and JobResults, in its shapes"),
        (name = "health", description = "Probes"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The answers every operation can give besides its own, all in the one error shape: 400 (a query, path or body
/// that does not fit), 415 (a body that is not JSON) where there is a body, 500 and 503 (the database).
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                let with_body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, description: &str| {
                    responses.entry(code.to_owned()).or_insert_with(|| error(description).into());
                };
                add("400", "The query, path or body does not fit the operation");
                if with_body {
                    add("415", "The body is not application/json");
                }
                add("500", "The request could not be completed");
                add("503", "The database is not reachable");
            }
        }
    }
}

/// The OpenAPI document the server publishes (and `schemas/openapi.json` holds).
pub fn openapi_document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/repositories", get(repositories::list).post(repositories::create).put(repositories::apply))
        .route("/api/v1/repositories/sync", post(repositories::sync_all))
        .route(
            "/api/v1/repositories/{name}",
            get(repositories::get).patch(repositories::update).delete(repositories::delete),
        )
        .route("/api/v1/repositories/{name}/sync", post(repositories::sync))
        .route("/api/v1/repositories/{name}/dry-run", post(repositories::dry_run))
        .route("/api/v1/repositories/{name}/records", get(repositories::records))
        .route("/api/v1/job-results", get(job_results::list))
        .route("/api/v1/job-results/{id}", get(job_results::get))
        .route(
            "/api/v1/inventory",
            get(operations::counts).post(operations::import).layer(DefaultBodyLimit::max(MAX_INVENTORY_BODY)),
        )
        .route("/api/v1/dead-letters", get(operations::dead_letters))
        .route("/api/v1/dead-letters/{id}/replay", post(operations::replay))
        .route("/api/v1/webhook-deliveries", get(hooks::deliveries))
        .route("/hooks/{provider}", post(hooks::deliver).layer(DefaultBodyLimit::max(hooks::MAX_DELIVERY)))
        .route("/api/", get(nautobot::root))
        .route("/api/extras/git-repositories/", get(nautobot::list).post(nautobot::create))
        .route(
            "/api/extras/git-repositories/{id}/",
            get(nautobot::get).patch(nautobot::update).delete(nautobot::delete),
        )
        .route("/api/extras/git-repositories/{id}/sync/", post(nautobot::sync))
        .route("/api/extras/job-results/{id}/", get(nautobot::job_result))
        .route("/api/extras/job-logs/", get(nautobot::job_logs))
        .merge(crate::ui::routes())
        .fallback(|| async { ApiError::not_found("No such endpoint.") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// Every request is a span (continuing the caller's trace when it sends a W3C `traceparent`) and a count and a
/// duration by method, route and status. Routes are the router's patterns (`/api/v1/repositories/{name}`), never
/// the path sent; a method outside HTTP's usual ones counts as `other`.
async fn observe(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(traceparent) = request.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        gitfleet_infra::telemetry::continue_from(&span, traceparent);
    }
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let metrics = &crate::metrics::API;
    let labels = crate::metrics::RouteLabels { method, route };
    metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let crate::metrics::RouteLabels { method, route } = labels;
    metrics.requests.get_or_create(&crate::metrics::RequestLabels { method, route, status }).inc();
    response
}

/// Prometheus metrics of this server (requests by route and status, process figures).
async fn metrics() -> axum::response::Response {
    gitfleet_infra::metrics::response(gitfleet_infra::metrics::encode(&crate::metrics::API.registry))
}

/// Serves until `shutdown` fires, then finishes the requests in flight.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving the HTTP API");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", responses((status = 200, description = "The process runs")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses((status = 200, description = "The database answers"), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let client = state.pool.get().await?;
    client.simple_query("SELECT 1").await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok("ready")
}

#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "health", responses((status = 200, description = "This document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    /// The published contract is the one the handlers' types make: regenerate it with `make openapi`.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let checked_in = include_str!("../../../schemas/openapi.json");
        assert!(
            checked_in.trim_end() == super::openapi_document().trim_end(),
            "schemas/openapi.json differs from the API's types: run `make openapi` and commit it"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_document()).unwrap_or_default();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
        assert!(doc["paths"]["/api/v1/repositories/{name}/sync"]["post"].is_object());
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
