//! `/hooks/{provider}`: Git hosts' push notifications. The signature is checked over the raw body before anything
//! else is read; the payload becomes a neutral push; every live repository on that remote that follows the pushed
//! branch or tag gets one sync event with the pushed commit, in one transaction with the delivery's record.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use gitfleet_infra::secrets::Secrets;
use gitfleet_infra::store::webhook::{self, NewDelivery};
use gitfleet_shared::event::RequestedBy;
use gitfleet_shared::webhook::{Notification, Provider, PushedRef};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::authorize;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use crate::commands::{self, PushOutcome};
use crate::tokens::Scope;

/// Largest delivery accepted, in bytes: a larger one is refused before it is read whole.
pub const MAX_DELIVERY: usize = 5 * 1024 * 1024;

/// Webhook settings of `producer serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct HookSettings {
    /// The secrets group whose `token` is the webhook secret of every provider without a group of its own
    /// (`GITFLEET_WEBHOOK_<PROVIDER>_SECRETS_GROUP`, e.g. `GITFLEET_WEBHOOK_GITHUB_SECRETS_GROUP`).
    #[arg(long, env = "GITFLEET_WEBHOOK_SECRETS_GROUP", default_value = "webhooks")]
    pub secrets_group: String,
    /// Directory of secrets groups (`<group>/token`), e.g. a mounted Kubernetes Secret; groups may also come from
    /// `GITFLEET_SECRETS_<GROUP>_TOKEN` variables.
    #[arg(long, env = "GITFLEET_SECRETS_DIR")]
    pub secrets_dir: Option<std::path::PathBuf>,
    /// Deliveries accepted per second from one source address (twice as many in a burst); more are answered 429.
    #[arg(long, env = "GITFLEET_WEBHOOK_RATE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
}

/// The state webhooks need: settings, the secrets (re-read every few seconds, so a rotated mounted Secret is
/// picked up) and each source's token bucket.
#[derive(Debug)]
pub struct Hooks {
    settings: HookSettings,
    secrets: Mutex<(Instant, Arc<Secrets>)>,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// How long secrets read from the environment and files are used before they are read again.
const SECRETS_TTL: Duration = Duration::from_secs(10);

impl Hooks {
    pub fn new(settings: HookSettings) -> std::io::Result<Self> {
        let secrets = Secrets::from_env(settings.secrets_dir.as_deref())?;
        Ok(Self {
            settings,
            secrets: Mutex::new((Instant::now(), Arc::new(secrets))),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    fn secrets(&self) -> Arc<Secrets> {
        let mut cached = self.secrets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.0.elapsed() > SECRETS_TTL {
            match Secrets::from_env(self.settings.secrets_dir.as_deref()) {
                Ok(fresh) => *cached = (Instant::now(), Arc::new(fresh)),
                Err(err) => tracing::warn!(error = %err, "cannot re-read the secrets directory; keeping the last read"),
            }
        }
        cached.1.clone()
    }

    /// The provider's secret: the token of its own group if one is configured, else of the shared group.
    fn secret(&self, provider: Provider) -> Option<String> {
        let own = std::env::var(format!("GITFLEET_WEBHOOK_{}_SECRETS_GROUP", provider.as_str().to_ascii_uppercase()));
        let group = own.ok().filter(|g| !g.is_empty()).unwrap_or_else(|| self.settings.secrets_group.clone());
        let secrets = self.secrets();
        secrets.get(&group).and_then(|g| g.token.as_ref()).map(|t| t.expose().to_owned())
    }

    /// Takes one token from the source's bucket; false when it is empty.
    fn admit(&self, source: IpAddr) -> bool {
        let rate = f64::from(self.settings.rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 10_000 {
            // Many sources: forget the ones that have been quiet long enough to have full buckets again.
            buckets.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(2));
        }
        let now = Instant::now();
        let (tokens, at) = buckets.entry(source).or_insert((rate * 2.0, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate * 2.0);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a delivery did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOutcome {
    pub detail: String,
    /// The repositories a sync was recorded for.
    pub matched: Vec<String>,
    pub job_result_ids: Vec<Uuid>,
}

fn outcome(status: StatusCode, detail: &str, synced: Vec<(String, Uuid)>) -> (StatusCode, Json<DeliveryOutcome>) {
    let (matched, job_result_ids) = synced.into_iter().unzip();
    (status, Json(DeliveryOutcome { detail: detail.to_owned(), matched, job_result_ids }))
}

fn header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok())).map(str::trim).filter(|v| !v.is_empty())
}

/// Checks the delivery's signature with the provider's scheme: an HMAC-SHA256 of the raw body in hex (GitHub and
/// Bitbucket Cloud after `sha256=`, Gitea and Forgejo bare), or GitLab's secret token itself; compared in constant
/// time.
fn signed(provider: Provider, headers: &HeaderMap, body: &[u8], secret: &str) -> bool {
    if provider == Provider::Gitlab {
        return header(headers, &["x-gitlab-token"]).is_some_and(|t| bool::from(t.as_bytes().ct_eq(secret.as_bytes())));
    }
    let presented = match provider {
        Provider::Github => header(headers, &["x-hub-signature-256"]).and_then(|s| s.strip_prefix("sha256=")),
        Provider::Bitbucket => header(headers, &["x-hub-signature"]).and_then(|s| s.strip_prefix("sha256=")),
        Provider::Gitea => header(headers, &["x-gitea-signature", "x-forgejo-signature"]),
        Provider::Generic => header(headers, &["x-gitfleet-signature"]).and_then(|s| s.strip_prefix("sha256=")),
        Provider::Gitlab => None,
    };
    let (Some(presented), Ok(mut mac)) = (presented, Hmac::<Sha256>::new_from_slice(secret.as_bytes())) else {
        return false;
    };
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    bool::from(presented.to_ascii_lowercase().as_bytes().ct_eq(expected.as_bytes()))
}

/// The provider's event header, and its delivery id (or, when it sends none, a digest of the body, so an
/// identical redelivery is still recognised).
fn event_and_delivery(provider: Provider, headers: &HeaderMap, body: &[u8]) -> (String, String) {
    let (event, delivery) = match provider {
        Provider::Github => (header(headers, &["x-github-event"]), header(headers, &["x-github-delivery"])),
        Provider::Gitlab => (
            header(headers, &["x-gitlab-event"]),
            header(headers, &["idempotency-key", "x-gitlab-event-uuid", "x-gitlab-webhook-uuid"]),
        ),
        Provider::Gitea => (
            header(headers, &["x-gitea-event", "x-forgejo-event"]),
            header(headers, &["x-gitea-delivery", "x-forgejo-delivery"]),
        ),
        Provider::Bitbucket => (header(headers, &["x-event-key"]), header(headers, &["x-request-uuid"])),
        Provider::Generic => (Some("push"), header(headers, &["x-gitfleet-delivery"])),
    };
    let delivery = delivery
        .map(|d| d.chars().take(255).collect())
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))));
    (event.unwrap_or_default().chars().take(100).collect(), delivery)
}

#[utoipa::path(post, path = "/hooks/{provider}", operation_id = "webhook", tag = "webhooks",
    params(("provider" = String, Path, description = "github, gitlab, gitea (or forgejo), bitbucket or generic")),
    request_body(content = Object, description = "The provider's push payload, signed with the webhook secret"),
    responses(
        (status = 200, body = DeliveryOutcome, description = "A ping, or a delivery seen before (nothing done again)"),
        (status = 202, body = DeliveryOutcome, description = "Recorded: the syncs it started, or no repository matched"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn deliver(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiPath(provider): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeliveryOutcome>), ApiError> {
    let Some(provider) = Provider::parse(&provider) else {
        return Err(ApiError::not_found(format!("No webhook endpoint for '{provider}'.")));
    };
    if !state.hooks.admit(peer.ip()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many deliveries from this address; retry later.",
        ));
    }
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Some(secret) = state.hooks.secret(provider) else {
        tracing::error!(provider = provider.as_str(), "webhook delivery refused: no secret is configured for it");
        return Err(ApiError::unauthorized());
    };
    if !signed(provider, &headers, &body, &secret) {
        tracing::info!(provider = provider.as_str(), source = %peer.ip(), "webhook delivery refused: bad signature");
        return Err(ApiError::unauthorized());
    }
    if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| super::extract::has_nul(&v)) {
        return Err(ApiError::bad_request("Null characters are not allowed."));
    }
    let (event, delivery_id) = event_and_delivery(provider, &headers, &body);
    let notification = gitfleet_shared::webhook::parse(provider, &event, &body)
        .map_err(|e| ApiError::bad_request(format!("Cannot read the delivery: {e}.")))?;
    let mut delivery = NewDelivery {
        provider: provider.as_str(),
        delivery_id: &delivery_id,
        event: &event,
        remote_url: None,
        reference: None,
        commit_id: None,
    };
    let push = match notification {
        Notification::Push(push) => push,
        other => {
            let (status, detail) = match other {
                Notification::Ping => (StatusCode::OK, "pong".to_owned()),
                _ => (StatusCode::ACCEPTED, format!("'{event}' events are not acted on")),
            };
            let client = state.pool.get().await?;
            webhook::record(&**client, &delivery, &[], &[], &detail).await?;
            return Ok(outcome(status, &detail, Vec::new()));
        }
    };
    let reference = match &push.pushed {
        PushedRef::Branch(b) => format!("refs/heads/{b}"),
        PushedRef::Tag(t) => format!("refs/tags/{t}"),
    };
    delivery.remote_url = push.remote_urls.first().map(String::as_str);
    delivery.reference = Some(&reference);
    delivery.commit_id = push.commit.as_deref();
    let by = RequestedBy::parse(format!("webhook:{}", provider.as_str())).unwrap_or_else(|_| RequestedBy::cli());
    match commands::sync_push(&state.pool, &delivery, &push, &by).await? {
        PushOutcome::Duplicate => Ok(outcome(StatusCode::OK, "delivery already processed", Vec::new())),
        PushOutcome::Synced(synced) if push.deleted => {
            Ok(outcome(StatusCode::ACCEPTED, "the ref was deleted: nothing to sync", synced))
        }
        PushOutcome::Synced(synced) if synced.is_empty() => {
            Ok(outcome(StatusCode::ACCEPTED, "no repository matched", synced))
        }
        PushOutcome::Synced(synced) => Ok(outcome(StatusCode::ACCEPTED, "synced", synced)),
    }
}

/// How many deliveries to list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// At most this many, newest first (1 to 500, default 50).
    pub limit: Option<i64>,
}

/// A recorded delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub provider: String,
    pub delivery_id: String,
    pub event: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub remote_url: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub commit_id: Option<String>,
    pub matched: Vec<String>,
    pub job_result_ids: Vec<Uuid>,
    pub outcome: String,
}

#[utoipa::path(get, path = "/api/v1/webhook-deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(DeliveryQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<Delivery>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let limit = super::repositories::page_size(q.limit)?;
    let client = state.pool.get().await?;
    let rows = webhook::recent(&**client, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|d| Delivery {
                id: d.id,
                provider: d.provider,
                delivery_id: d.delivery_id,
                event: d.event,
                received_at: d.received_at,
                remote_url: d.remote_url,
                reference: d.reference,
                commit_id: d.commit_id,
                matched: d.matched,
                job_result_ids: d.job_result_ids,
                outcome: d.outcome,
            })
            .collect(),
    ))
}
