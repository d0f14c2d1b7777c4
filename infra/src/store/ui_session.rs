//! Sessions of the web UI: the SHA-256 of a session cookie, the API token it was opened with, its CSRF token.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::GenericClient;

type Db = tokio_postgres::Error;

/// A live session: its token is live and it has not expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_id: Uuid,
    pub token_name: String,
    pub scopes: Vec<String>,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert(
    db: &impl GenericClient,
    id_hash: &str,
    token_id: Uuid,
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), Db> {
    db.execute(
        "INSERT INTO ui_session (id_hash, token_id, csrf, expires_at) VALUES ($1, $2, $3, $4)",
        &[&id_hash, &token_id, &csrf, &expires_at],
    )
    .await?;
    Ok(())
}

/// The session with this cookie hash, if it is live (unexpired, and its token not revoked).
pub async fn live(db: &impl GenericClient, id_hash: &str) -> Result<Option<SessionRow>, Db> {
    let row = db
        .query_opt(
            "SELECT s.token_id, t.name, t.scopes, s.csrf, s.expires_at FROM ui_session s
               JOIN api_token t ON t.id = s.token_id
             WHERE s.id_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
            &[&id_hash],
        )
        .await?;
    Ok(row.map(|r| SessionRow {
        token_id: r.get(0),
        token_name: r.get(1),
        scopes: r.get(2),
        csrf: r.get(3),
        expires_at: r.get(4),
    }))
}

/// Ends a session (signing out).
pub async fn delete(db: &impl GenericClient, id_hash: &str) -> Result<(), Db> {
    db.execute("DELETE FROM ui_session WHERE id_hash = $1", &[&id_hash]).await?;
    Ok(())
}

/// Removes sessions that expired, or whose token was revoked; returns how many.
pub async fn purge(db: &impl GenericClient) -> Result<u64, Db> {
    db.execute(
        "DELETE FROM ui_session s WHERE s.expires_at <= now()
            OR EXISTS (SELECT 1 FROM api_token t WHERE t.id = s.token_id AND t.revoked_at IS NOT NULL)",
        &[],
    )
    .await
}
