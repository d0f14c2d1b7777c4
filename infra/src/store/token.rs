//! API tokens: a name, scopes, and the SHA-256 of the token (the token itself is never stored).

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::GenericClient;

type Db = tokio_postgres::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    /// The token's first characters, shown so people can tell tokens apart.
    pub prefix: String,
    /// Lower-case hex SHA-256 of the whole token.
    pub token_hash: String,
    pub scopes: Vec<String>,
    pub created: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            name: row.get("name"),
            prefix: row.get("prefix"),
            token_hash: row.get("token_hash"),
            scopes: row.get("scopes"),
            created: row.get("created"),
            last_used: row.get("last_used"),
            revoked_at: row.get("revoked_at"),
        }
    }
}

/// A new token; `false` when a live token already has the name.
pub async fn insert(
    db: &impl GenericClient,
    name: &str,
    prefix: &str,
    token_hash: &str,
    scopes: &[&str],
) -> Result<bool, Db> {
    let n = db
        .execute(
            "INSERT INTO api_token (id, name, prefix, token_hash, scopes) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING",
            &[&Uuid::new_v4(), &name, &prefix, &token_hash, &scopes],
        )
        .await?;
    Ok(n == 1)
}

/// The live tokens that start with `prefix` (one, unless two random tokens share their first characters).
pub async fn live_by_prefix(db: &impl GenericClient, prefix: &str) -> Result<Vec<TokenRow>, Db> {
    let rows = db
        .query_typed(
            "SELECT * FROM api_token WHERE prefix = $1 AND revoked_at IS NULL",
            &[(&prefix, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
    Ok(rows.iter().map(TokenRow::from_row).collect())
}

/// The live token with this name, if any.
pub async fn live_by_name(db: &impl GenericClient, name: &str) -> Result<Option<TokenRow>, Db> {
    let row = db.query_opt("SELECT * FROM api_token WHERE name = $1 AND revoked_at IS NULL", &[&name]).await?;
    Ok(row.as_ref().map(TokenRow::from_row))
}

/// Sets the scopes of the live token with this name.
pub async fn set_scopes(db: &impl GenericClient, name: &str, scopes: &[&str]) -> Result<(), Db> {
    db.execute("UPDATE api_token SET scopes = $2 WHERE name = $1 AND revoked_at IS NULL", &[&name, &scopes]).await?;
    Ok(())
}

/// Whether any token, live or revoked, has this hash (a token is never registered twice).
pub async fn hash_known(db: &impl GenericClient, token_hash: &str) -> Result<bool, Db> {
    let row = db.query_opt("SELECT 1 FROM api_token WHERE token_hash = $1", &[&token_hash]).await?;
    Ok(row.is_some())
}

/// Every token, live ones first, newest first.
pub async fn list(db: &impl GenericClient) -> Result<Vec<TokenRow>, Db> {
    let rows = db.query("SELECT * FROM api_token ORDER BY revoked_at IS NOT NULL, created DESC", &[]).await?;
    Ok(rows.iter().map(TokenRow::from_row).collect())
}

/// Revokes the live token with this name; `false` when there is none.
pub async fn revoke(db: &impl GenericClient, name: &str) -> Result<bool, Db> {
    let n =
        db.execute("UPDATE api_token SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", &[&name]).await?;
    Ok(n == 1)
}

/// Records that a token was used, at most once a minute (so a busy client does not write a row per request).
pub async fn touch(db: &impl GenericClient, id: Uuid) -> Result<(), Db> {
    db.execute(
        "UPDATE api_token SET last_used = now() WHERE id = $1 AND (last_used IS NULL OR last_used < now() - interval '1 minute')",
        &[&id],
    )
    .await?;
    Ok(())
}
