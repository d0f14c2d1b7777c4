//! `/api/v1/inventory` and `/api/v1/dead-letters`: the scope inventory (the same file format as
//! `producer inventory import`) and what the fleet dead-lettered.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use gitfleet_infra::store::inventory::{self, ImportError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::authorize;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use crate::tokens::Scope;

/// How many objects of each kind the inventory holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryCounts {
    /// Kind -> number of objects.
    pub kinds: std::collections::BTreeMap<String, i64>,
}

/// One object of the source of truth (the file format of `producer inventory import`; `{"objects": [...]}` is
/// accepted too).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct InventoryObject {
    /// `location`, `device_type`, `role`, `platform`, `tenant`, `tag`, `device`, `virtual_machine`, ...
    pub kind: String,
    /// Its identity in the source of truth.
    pub id: Option<String>,
    /// Field -> value, e.g. `{"name": "DC1", "parent": {"name": "Berlin"}}`.
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// How an import treats what is stored.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Replace, not merge: every stored object of each kind in the body is removed first.
    #[serde(default)]
    pub replace: bool,
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    pub imported: u64,
}

/// One dead-lettered message.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    /// The event's id (its JobResult), when the message was an event.
    pub event_id: Option<Uuid>,
    pub routing_key: String,
    pub reason: String,
    pub received_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    /// The message as received (lossy UTF-8).
    pub payload: String,
}

/// Which dead letters to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Also those already replayed.
    #[serde(default)]
    pub all: bool,
}

/// Events put back in the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: Vec<Uuid>,
}

#[utoipa::path(get, path = "/api/v1/inventory", operation_id = "list_inventory", tag = "inventory",
    security(("bearer" = [])), responses((status = 200, body = InventoryCounts), (status = 401, body = ErrorBody)))]
pub async fn counts(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<InventoryCounts>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let client = state.pool.get().await?;
    let kinds = inventory::count_by_kind(&**client).await?.into_iter().collect();
    Ok(Json(InventoryCounts { kinds }))
}

#[utoipa::path(post, path = "/api/v1/inventory", operation_id = "import_inventory", tag = "inventory",
    params(ImportQuery), security(("bearer" = [])),
    request_body(content = Vec<InventoryObject>, description = "The objects (or `{\"objects\": [...]}`)"),
    responses((status = 200, body = Imported), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Bytes,
) -> Result<Json<Imported>, ApiError> {
    authorize(&state, &headers, Scope::Write).await?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("The body is not UTF-8."))?;
    if serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| super::extract::has_nul(&v)) {
        return Err(ApiError::bad_request("Null characters are not allowed."));
    }
    let objects = gitfleet_shared::inventory::parse_objects(text).map_err(ApiError::bad_request)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    match inventory::import(&*tx, &objects, q.replace).await {
        Ok(imported) => {
            tx.commit().await?;
            Ok(Json(Imported { imported }))
        }
        Err(ImportError::Invalid(message)) => Err(ApiError::bad_request(message)),
        Err(other) => Err(ApiError::internal(&other)),
    }
}

#[utoipa::path(get, path = "/api/v1/dead-letters", operation_id = "list_dead_letters", tag = "dead letters",
    params(DeadLetterQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<DeadLetter>), (status = 401, body = ErrorBody)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    authorize(&state, &headers, Scope::Read).await?;
    let letters = crate::dead_letters::list(&state.pool, q.all).await?;
    Ok(Json(
        letters
            .into_iter()
            .map(|d| DeadLetter {
                id: d.id,
                event_id: d.event_id,
                routing_key: d.routing_key,
                reason: d.reason,
                received_at: d.received_at,
                replayed_at: d.replayed_at,
                payload: String::from_utf8_lossy(&d.payload).into_owned(),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/replay", operation_id = "replay_dead_letter",
    tag = "dead letters", params(("id" = i64, Path, description = "The dead letter's number")),
    security(("bearer" = [])),
    responses((status = 200, body = Replayed), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Already replayed")))]
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Replayed>, ApiError> {
    let caller = authorize(&state, &headers, Scope::Admin).await?;
    let replayed = crate::dead_letters::replay(&state.pool, Some(id), &caller.requested_by()).await?;
    Ok(Json(Replayed { replayed }))
}
