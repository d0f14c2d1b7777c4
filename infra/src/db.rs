//! The PostgreSQL pool.

use std::str::FromStr;
use std::time::Duration;

use backon::Retryable;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use thiserror::Error;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::settings::DatabaseSettings;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(tokio_postgres::Error),
    #[error("invalid database schema name '{0}': use letters, digits and '_'")]
    Schema(String),
    #[error("could not build the connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("PostgreSQL is not reachable: {0}")]
    Unreachable(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && name.len() <= 63
}

/// Builds the pool, waits (with backoff, up to `wait`) until PostgreSQL answers, creates the schema when one is
/// configured, and applies the migrations.
pub async fn connect(settings: &DatabaseSettings, wait: Duration) -> Result<Pool, DbError> {
    let mut config = tokio_postgres::Config::from_str(&settings.url).map_err(DbError::Url)?;
    if !settings.schema.is_empty() {
        if !valid_schema(&settings.schema) {
            return Err(DbError::Schema(settings.schema.clone()));
        }
        config.options(format!("-c search_path={}", settings.schema));
    }
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("gitfleet");
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()?;

    let backoff = crate::retry::until_ready(wait);
    let client = (|| pool.get())
        .retry(backoff)
        .notify(|err, after| tracing::warn!(error = %err, ?after, "PostgreSQL not ready, retrying"))
        .await?;
    if !settings.schema.is_empty() {
        // The name was checked above, so it can be spliced into the statement.
        // Two processes starting at once may both try; the loser's "already exists" is fine.
        if let Err(err) = client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", settings.schema)).await {
            let benign = [SqlState::DUPLICATE_SCHEMA, SqlState::UNIQUE_VIOLATION];
            if !err.code().is_some_and(|code| benign.contains(code)) {
                return Err(err.into());
            }
        }
    }
    drop(client);
    crate::migrate::run(&pool).await?;
    Ok(pool)
}

/// Whether PostgreSQL answers a query through the pool within two seconds (what `/readyz` asks).
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    answer.unwrap_or_else(|_| Err("no answer within 2 s".to_owned()))
}
