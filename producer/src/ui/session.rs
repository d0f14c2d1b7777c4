//! Signing in to the UI: an API token is exchanged for a session cookie (HttpOnly, SameSite=Strict, Secure when the
//! request came over TLS), whose SHA-256 PostgreSQL keeps with the token it stands for and a CSRF token. Every form
//! carries the CSRF token; a POST without the session's own is refused. A session ends at sign-out, when it
//! expires (`SESSION_HOURS`), or as soon as its token is revoked.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use chrono::Utc;
use gitfleet_infra::store::ui_session;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::tokens::{self, Scope};

/// The cookie's name.
pub const COOKIE_NAME: &str = "gitfleet_session";
/// How long a session lasts.
pub const SESSION_HOURS: i64 = 12;

/// A signed-in person: the token's name and scope, and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub token_name: String,
    pub scope: Scope,
    pub csrf: String,
    id_hash: String,
}

impl Session {
    pub fn can(&self, needed: Scope) -> bool {
        self.scope >= needed
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        presented.len() == self.csrf.len() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }

    /// Events recorded from the UI are requested by the token, as from the API: `api:<token name>`.
    pub fn requested_by(&self) -> gitfleet_shared::event::RequestedBy {
        gitfleet_shared::event::RequestedBy::parse(format!("api:{}", self.token_name))
            .unwrap_or_else(|_| gitfleet_shared::event::RequestedBy::cli())
    }
}

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The session cookie's value in a request, if any.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

/// The live session a request's cookie names.
pub async fn current(pool: &deadpool_postgres::Pool, headers: &HeaderMap) -> anyhow::Result<Option<Session>> {
    let Some(value) = cookie_value(headers) else { return Ok(None) };
    let id_hash = sha256_hex(&value);
    let client = pool.get().await?;
    let Some(row) = ui_session::live(&**client, &id_hash).await? else { return Ok(None) };
    Ok(Some(Session { token_name: row.token_name, scope: tokens::highest(&row.scopes), csrf: row.csrf, id_hash }))
}

/// Opens a session for a checked token; returns the `Set-Cookie` value.
pub async fn open(pool: &deadpool_postgres::Pool, token_id: uuid::Uuid, secure: bool) -> anyhow::Result<String> {
    let value = random_hex()?;
    let csrf = random_hex()?;
    let expires = Utc::now() + chrono::TimeDelta::hours(SESSION_HOURS);
    let client = pool.get().await?;
    ui_session::insert(&**client, &sha256_hex(&value), token_id, &csrf, expires).await?;
    Ok(cookie(&value, SESSION_HOURS * 3600, secure))
}

/// Ends the session; returns the `Set-Cookie` value that clears the cookie.
pub async fn close(pool: &deadpool_postgres::Pool, session: &Session, secure: bool) -> anyhow::Result<String> {
    let client = pool.get().await?;
    ui_session::delete(&**client, &session.id_hash).await?;
    Ok(cookie("", 0, secure))
}

fn cookie(value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={value}; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// Whether the request reached us over TLS (directly, or through a proxy that says so).
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; gitfleet_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie_value(&headers).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let set = cookie("v", 60, true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("; Secure"), "{set}");
        assert!(!cookie("v", 60, false).contains("Secure"));
    }
}
