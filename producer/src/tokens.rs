//! API tokens: made from 32 random bytes, shown once, stored as a SHA-256, checked in constant time.

use deadpool_postgres::Pool;
use gitfleet_infra::store::token;
use gitfleet_shared::sanitize::printable;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. Each scope includes the ones before it: `write` can read, `admin` can do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// Every token starts with this, so a leaked one is recognisable (secret scanners match on it).
const TOKEN_PREFIX: &str = "gft_";
/// How many characters of a token are stored in clear to find it: the marker and 8 hex digits.
const LOOKUP_LEN: usize = TOKEN_PREFIX.len() + 8;

/// Why a token was refused. Every case answers 401 alike; the reason is for the process log only.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("not a gitfleet token")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// A token that was checked: who it is and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_name: String,
    pub scope: Scope,
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token with the given scopes; returns it (the only time it is ever shown), or `None` when a live
/// token already has the name.
pub async fn create(pool: &Pool, name: &str, scopes: &[Scope]) -> anyhow::Result<Option<String>> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let client = pool.get().await?;
    let created = token::insert(&**client, name, &secret[..LOOKUP_LEN], &sha256_hex(&secret), &scopes).await?;
    Ok(created.then_some(secret))
}

/// Checks a presented token: found by its first characters, then its hash compared in constant time.
pub async fn verify(pool: &Pool, presented: &str) -> Result<Caller, TokenError> {
    if !presented.starts_with(TOKEN_PREFIX) || presented.len() != TOKEN_PREFIX.len() + 64 || !presented.is_ascii() {
        return Err(TokenError::Malformed);
    }
    let hash = sha256_hex(presented);
    let client = pool.get().await?;
    let candidates = token::live_by_prefix(&**client, &presented[..LOOKUP_LEN]).await?;
    let found = candidates.into_iter().find(|t| bool::from(t.token_hash.as_bytes().ct_eq(hash.as_bytes())));
    let Some(row) = found else { return Err(TokenError::Unknown) };
    // `last_used` is kept to the minute: most requests write nothing.
    if row.last_used.is_none_or(|at| chrono::Utc::now() - at > chrono::TimeDelta::minutes(1)) {
        token::touch(&**client, row.id).await?;
    }
    let scope = row.scopes.iter().filter_map(|s| Scope::parse(s)).max().unwrap_or(Scope::Read);
    Ok(Caller { token_name: row.name, scope })
}

/// `producer token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (the only time it is shown: only its hash is stored).
    Create {
        /// A name for the token (who or what uses it), unique among live tokens.
        #[arg(long)]
        name: String,
        /// What it may do: `read`, `write` (includes read) or `admin` (includes both); comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List the tokens (name, first characters, scopes, when created, last used and revoked).
    List,
    /// Revoke the live token with this name: requests with it are refused from now on.
    Revoke {
        /// The token's name.
        #[arg(long)]
        name: String,
    },
}

/// Runs a token command; exits 2 on bad input.
pub async fn command(pool: &Pool, command: TokenCommand, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    match command {
        TokenCommand::Create { name, scopes } => {
            if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                eprintln!("error: a token name must be 1 to 100 characters, without control characters");
                return Ok(2);
            }
            let mut parsed = Vec::new();
            for scope in &scopes {
                match Scope::parse(scope.trim()) {
                    Some(s) => parsed.push(s),
                    None => {
                        eprintln!("error: unknown scope '{}': use read, write or admin", printable(scope));
                        return Ok(2);
                    }
                }
            }
            match create(pool, &name, &parsed).await? {
                Some(token) => writeln!(out, "{token}")?,
                None => {
                    eprintln!("error: a live token named '{}' exists; revoke it first", printable(&name));
                    return Ok(2);
                }
            }
        }
        TokenCommand::List => {
            let client = pool.get().await?;
            for t in token::list(&**client).await? {
                let when = |d: Option<chrono::DateTime<chrono::Utc>>| d.map_or("-".to_owned(), |d| d.to_rfc3339());
                writeln!(
                    out,
                    "{}\t{}...\t{}\tcreated {}\tlast used {}\t{}",
                    printable(&t.name),
                    t.prefix,
                    t.scopes.join(","),
                    t.created.to_rfc3339(),
                    when(t.last_used),
                    t.revoked_at.map_or("live".to_owned(), |r| format!("revoked {}", r.to_rfc3339())),
                )?;
            }
        }
        TokenCommand::Revoke { name } => {
            let client = pool.get().await?;
            if !token::revoke(&**client, &name).await? {
                eprintln!("error: no live token named '{}'", printable(&name));
                return Ok(2);
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_lesser_ones() {
        assert!(Scope::Admin >= Scope::Write && Scope::Write >= Scope::Read);
        assert_eq!(Scope::parse("write"), Some(Scope::Write));
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
