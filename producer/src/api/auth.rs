//! Bearer tokens (`Authorization: Bearer <token>`, or Nautobot's `Authorization: Token <token>`), checked for the
//! scope an endpoint needs. The token never reaches a log line: only the token's name does.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use super::AppState;
use super::error::ApiError;
use crate::tokens::{self, Caller, Scope, TokenError};

/// The caller, when the request carries a live token with at least `needed`.
pub async fn authorize(state: &AppState, headers: &HeaderMap, needed: Scope) -> Result<Caller, ApiError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("Token ")))
        .map(str::trim);
    let result = match presented {
        Some(token) => tokens::verify(&state.pool, token).await,
        None => Err(TokenError::Missing),
    };
    let caller = match result {
        Ok(caller) => caller,
        Err(TokenError::Db(e)) => return Err(ApiError::internal(&e)),
        Err(TokenError::Pool(e)) => return Err(e.into()),
        Err(why) => {
            tracing::info!(reason = %why, "request refused: 401");
            return Err(ApiError::unauthorized());
        }
    };
    if caller.scope < needed {
        tracing::info!(token = %caller.token_name, needed = needed.as_str(), "request refused: 403");
        return Err(ApiError::forbidden(needed.as_str()));
    }
    Ok(caller)
}

impl Caller {
    /// Who the events this caller records are requested by: `api:<token name>`.
    pub fn requested_by(&self) -> gitfleet_shared::event::RequestedBy {
        gitfleet_shared::event::RequestedBy::parse(format!("api:{}", self.token_name))
            .unwrap_or_else(|_| gitfleet_shared::event::RequestedBy::cli())
    }
}
