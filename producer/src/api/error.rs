//! The one error shape of the API, as Nautobot's REST API shapes errors: `detail` says what went wrong, and a
//! validation error lists each field's messages under the field's name (`{"slug": ["..."]}`), with rules about the
//! whole record under `non_field_errors`.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::commands::CommandError;

/// Every error response of the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"detail": "Invalid repository definition.", "slug": ["Please choose a different slug; 'sys' is a Python builtin"]}))]
pub struct ErrorBody {
    /// What went wrong, in one sentence.
    pub detail: String,
    /// Field name (or `non_field_errors`) -> that field's messages; present on validation errors only.
    #[serde(flatten)]
    pub fields: BTreeMap<String, Vec<String>>,
}

/// An API failure: its status and body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self { status, body: ErrorBody { detail: detail.into(), fields: BTreeMap::new() } }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 401, saying nothing about why (no token, an unknown one, a revoked one).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Authentication credentials were not provided or are not valid.")
    }

    pub fn forbidden(scope: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, format!("This token does not have the '{scope}' scope."))
    }

    /// A failure of our own (the database, say): logged with its cause, answered without it.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "The request could not be completed; see the server's log.")
    }
}

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Invalid(errors) => {
                let conflict = errors.iter().any(|e| e.conflict);
                let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for e in errors {
                    fields.entry(e.field.unwrap_or("non_field_errors").to_owned()).or_default().push(e.message);
                }
                let (status, detail) = if conflict {
                    (StatusCode::CONFLICT, "Another live repository already has this name or slug.")
                } else {
                    (StatusCode::BAD_REQUEST, "Invalid repository definition.")
                };
                Self { status, body: ErrorBody { detail: detail.to_owned(), fields } }
            }
            CommandError::NotFound(name) => Self::not_found(format!("No repository named '{name}'.")),
            CommandError::Absent(what) => Self::not_found(what),
            CommandError::Refused(why) => Self::new(StatusCode::CONFLICT, why),
            other => Self::internal(&other),
        }
    }
}

impl From<crate::apply::ApplyError> for ApiError {
    fn from(err: crate::apply::ApplyError) -> Self {
        use crate::apply::ApplyError;
        match err {
            ApplyError::Invalid(errors) => {
                let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (path, message) in errors {
                    fields.entry(path).or_default().push(message);
                }
                let detail = "The list was not applied: nothing changed. Each entry's errors are under its position, \
                              name and field.";
                Self { status: StatusCode::BAD_REQUEST, body: ErrorBody { detail: detail.to_owned(), fields } }
            }
            ApplyError::Command(err) => err.into(),
            ApplyError::Db(err) => err.into(),
            ApplyError::Pool(err) => err.into(),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::internal(&err)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, format!("The database is not reachable: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
