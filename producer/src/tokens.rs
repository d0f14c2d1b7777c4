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
    pub token_id: uuid::Uuid,
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

/// The highest scope of a token's scopes (`read` when none is known).
pub fn highest(scopes: &[String]) -> Scope {
    scopes.iter().filter_map(|s| Scope::parse(s)).max().unwrap_or(Scope::Read)
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
    let scope = highest(&row.scopes);
    Ok(Caller { token_id: row.id, token_name: row.name, scope })
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
    /// Register tokens made elsewhere (a mounted Kubernetes Secret): every file of DIR whose name does not start
    /// with a dot is a token (`gft_` and 64 hex digits) named after the file. A live token of that name with
    /// another value is revoked and replaced (a rotation); one with the same value is left as it is.
    Import {
        /// Directory holding one file per token.
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// Scopes of one token, as `NAME=SCOPES` (`ci=write`, `ops=admin`; repeatable); tokens not named get `read`.
        #[arg(long = "scope", value_name = "NAME=SCOPES")]
        scope: Vec<String>,
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

/// Whether `name` may name a token: 1 to 100 characters, none of them control characters.
fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 100 && !name.chars().any(char::is_control)
}

/// Parses comma-separated scopes; the unknown one on failure.
fn parse_scopes(scopes: &[String]) -> Result<Vec<Scope>, String> {
    scopes.iter().flat_map(|s| s.split(',')).map(|s| Scope::parse(s.trim()).ok_or_else(|| s.to_owned())).collect()
}

/// What importing one token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Created,
    /// Another value had the name: it was revoked.
    Replaced,
    /// The same token with other scopes.
    Rescoped,
    Unchanged,
}

/// Registers `secret` under `name` with `scopes`, in one transaction: a live token of that name with the same
/// value is kept (its scopes set), one with another value is revoked first. A value that was revoked, or that
/// another name holds, is refused: a token once retired never comes back.
pub async fn import_one(pool: &Pool, name: &str, secret: &str, scopes: &[Scope]) -> anyhow::Result<Imported> {
    let hash = sha256_hex(secret);
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let live = token::live_by_name(&*tx, name).await?;
    let outcome = match live {
        Some(row) if row.token_hash == hash && row.scopes == scopes => return Ok(Imported::Unchanged),
        Some(row) if row.token_hash == hash => {
            token::set_scopes(&*tx, name, &scopes).await?;
            tx.commit().await?;
            return Ok(Imported::Rescoped);
        }
        Some(_) => {
            token::revoke(&*tx, name).await?;
            Imported::Replaced
        }
        None => Imported::Created,
    };
    if token::hash_known(&*tx, &hash).await? {
        anyhow::bail!("the token for '{}' was revoked or belongs to another name: make a new one", printable(name));
    }
    token::insert(&*tx, name, &secret[..LOOKUP_LEN], &hash, &scopes).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// `producer token import`: every token file of `dir`; exits 2 (having registered none) when any is invalid.
async fn import(
    pool: &Pool,
    dir: &std::path::Path,
    scope: &[String],
    out: &mut impl std::io::Write,
) -> anyhow::Result<i32> {
    let mut scopes = std::collections::HashMap::new();
    for entry in scope {
        let Some((name, list)) = entry.split_once('=') else {
            eprintln!("error: --scope takes NAME=SCOPES, not '{}'", printable(entry));
            return Ok(2);
        };
        match parse_scopes(&[list.to_owned()]) {
            Ok(parsed) => scopes.insert(name.to_owned(), parsed),
            Err(bad) => {
                eprintln!("error: unknown scope '{}': use read, write or admin", printable(&bad));
                return Ok(2);
            }
        };
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", dir.display());
            return Ok(2);
        }
    };
    let mut tokens = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        // A mounted Secret's `..data` and timestamped folders start with dots; keys are links into them.
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let secret = std::fs::read_to_string(&path)?.trim_end_matches(['\n', '\r']).to_owned();
        let well_formed = secret.starts_with(TOKEN_PREFIX)
            && secret.len() == TOKEN_PREFIX.len() + 64
            && secret[TOKEN_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_name(&name) || !well_formed {
            eprintln!(
                "error: {}: a token file is named after its token (1 to 100 characters) and holds `gft_` and 64 hex digits",
                printable(&name)
            );
            return Ok(2);
        }
        tokens.push((name, secret));
    }
    tokens.sort();
    for (name, secret) in tokens {
        let granted = scopes.get(&name).cloned().unwrap_or_else(|| vec![Scope::Read]);
        let outcome = import_one(pool, &name, &secret, &granted).await?;
        let word = match outcome {
            Imported::Created => "created",
            Imported::Replaced => "replaced",
            Imported::Rescoped => "rescoped",
            Imported::Unchanged => "unchanged",
        };
        writeln!(out, "{}\t{word}", printable(&name))?;
    }
    Ok(0)
}

/// Runs a token command; exits 2 on bad input.
pub async fn command(pool: &Pool, command: TokenCommand, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    match command {
        TokenCommand::Create { name, scopes } => {
            if !valid_name(&name) {
                eprintln!("error: a token name must be 1 to 100 characters, without control characters");
                return Ok(2);
            }
            let parsed = match parse_scopes(&scopes) {
                Ok(parsed) => parsed,
                Err(bad) => {
                    eprintln!("error: unknown scope '{}': use read, write or admin", printable(&bad));
                    return Ok(2);
                }
            };
            match create(pool, &name, &parsed).await? {
                Some(token) => writeln!(out, "{token}")?,
                None => {
                    eprintln!("error: a live token named '{}' exists; revoke it first", printable(&name));
                    return Ok(2);
                }
            }
        }
        TokenCommand::Import { dir, scope } => return import(pool, &dir, &scope, out).await,
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
