//! Request extractors whose refusals are the API's own error shape (axum's answer plain text, with 422 for a
//! body that does not fit): a malformed body, query or path is a 400 that says what did not fit.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// No text the API stores or looks up may hold a NUL character (PostgreSQL keeps none): refused as Django does.
fn refuse_nul(encoded: &str) -> Result<(), ApiError> {
    if encoded.to_ascii_lowercase().contains("%00") {
        return Err(ApiError::bad_request("Null characters are not allowed."));
    }
    Ok(())
}

pub fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// A query string, or a 400 naming what did not parse.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        refuse_nul(parts.uri.query().unwrap_or_default())?;
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters, or a 400 naming what did not parse (a JobResult id that is not a UUID, say).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        refuse_nul(parts.uri.path())?;
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

/// A JSON body of `Content-Type: application/json`, parsed into `T`; anything else is a 400 (415 for another
/// content type) with serde's message.
pub fn json_body<T: DeserializeOwned>(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Expected a body of type application/json."));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    if has_nul(&value) {
        return Err(ApiError::bad_request("Null characters are not allowed."));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))
}

/// The same for a body that may be left out: an empty body is `T::default()`.
pub fn optional_json_body<T: DeserializeOwned + Default>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { json_body(headers, body) }
}
