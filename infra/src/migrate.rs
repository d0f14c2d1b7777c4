//! Embedded migrations, applied at start-up by every producer and worker process.
//!
//! Safe when many processes start at once: the whole run holds a session advisory lock, so one process applies
//! what is missing while the others wait and then find nothing to do. Each migration runs in its own transaction
//! and records a checksum, so an edited migration that was already applied is reported instead of ignored.

use deadpool_postgres::{Object, Pool};
use thiserror::Error;

/// `(version, name, sql)` in order. Append only; never edit an applied one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (2, "data_types", include_str!("../../migrations/0002_data_types.sql")),
    (3, "applied_fingerprint", include_str!("../../migrations/0003_applied_fingerprint.sql")),
    (4, "git_timeout", include_str!("../../migrations/0004_git_timeout.sql")),
    (5, "fleet", include_str!("../../migrations/0005_fleet.sql")),
    (6, "storage", include_str!("../../migrations/0006_storage.sql")),
    (7, "api_tokens", include_str!("../../migrations/0007_api_tokens.sql")),
    (8, "webhook_deliveries", include_str!("../../migrations/0008_webhook_deliveries.sql")),
    (9, "outbox_notify", include_str!("../../migrations/0009_outbox_notify.sql")),
    (10, "loaded_files", include_str!("../../migrations/0010_loaded_files.sql")),
    (11, "lock_purpose", include_str!("../../migrations/0011_lock_purpose.sql")),
    (12, "trace_id", include_str!("../../migrations/0012_trace_id.sql")),
    (13, "polling", include_str!("../../migrations/0013_polling.sql")),
    (14, "housekeeping", include_str!("../../migrations/0014_housekeeping.sql")),
    (15, "ui_sessions", include_str!("../../migrations/0015_ui_sessions.sql")),
];

/// Advisory lock key for the migration run ("gitfleet" in ASCII).
const MIGRATION_LOCK: i64 = 0x6769_7466_6c65_6574;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MigrateError {
    #[error("database error while migrating: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migration {version} ({name}) was changed after it was applied (checksum {found}, expected {expected})")]
    Changed { version: i32, name: &'static str, found: String, expected: String },
    #[error("the database is at migration {0}, newer than this build knows; upgrade this binary")]
    TooNew(i32),
}

/// The newest migration this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// FNV-1a, enough to notice an edited migration file.
fn checksum(sql: &str) -> String {
    let hash = sql.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// Applies every migration this build has and the database lacks. Returns how many were applied.
pub async fn run(pool: &Pool) -> Result<usize, MigrateError> {
    let mut client = pool.get().await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let outcome = apply(&mut client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    if unlocked.is_err() {
        // The connection is broken; make sure it is closed, not returned to the pool still holding the lock.
        drop(Object::take(client));
    }
    outcome
}

async fn apply(client: &mut Object) -> Result<usize, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS gitfleet_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let applied: Vec<(i32, String)> = client
        .query("SELECT version, checksum FROM gitfleet_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if let Some((newest, _)) = applied.last()
        && MIGRATIONS.iter().all(|(v, _, _)| v < newest)
    {
        return Err(MigrateError::TooNew(*newest));
    }
    let mut count = 0;
    for &(version, name, sql) in MIGRATIONS {
        let expected = checksum(sql);
        if let Some((_, found)) = applied.iter().find(|(v, _)| *v == version) {
            if *found != expected {
                return Err(MigrateError::Changed { version, name, found: found.clone(), expected });
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO gitfleet_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &name, &expected],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        count += 1;
    }
    Ok(count)
}
