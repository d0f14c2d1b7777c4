//! The fleet-wide per-repository lock (ARCHITECTURE 4.2): a PostgreSQL session advisory lock held on the very
//! connection that writes the sync's results.
//!
//! If the worker dies or its connection drops, PostgreSQL releases the lock, and the results of that worker can no
//! longer be committed (its writes were to go through the dead connection): the lock fences stale writers.
//! A connection is never returned to the pool still holding the lock: either `release` unlocks it, or the guard
//! detaches and closes the connection.

use deadpool_postgres::{Object, Pool};
use uuid::Uuid;

/// The lock key for a repository. Keyed by slug, which is unique among live repositories and names the mirror
/// directory, so a delete and a re-create under the same slug serialize too.
pub fn key(slug: &str) -> i64 {
    let hash = format!("gitfleet:repo:{slug}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// A held repository lock and the connection it lives on.
pub struct RepoLock {
    conn: Option<Object>,
    key: i64,
    holding_id: i64,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock").field("key", &self.key).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error while locking: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl RepoLock {
    /// Tries once, for a job; `None` when another worker holds it. On success, records the holding in
    /// `sync_lock_log`.
    pub async fn try_acquire(
        pool: &Pool,
        repository_id: Uuid,
        slug: &str,
        event_id: Uuid,
        worker: &str,
    ) -> Result<Option<Self>, LockError> {
        Self::try_acquire_for(pool, (repository_id, slug), event_id, worker, "job").await
    }

    /// Tries once, recording what the holding is for (`job` or `artifact`, the check of `sync_lock_log`).
    pub async fn try_acquire_for(
        pool: &Pool,
        (repository_id, slug): (Uuid, &str),
        event_id: Uuid,
        worker: &str,
        purpose: &str,
    ) -> Result<Option<Self>, LockError> {
        let conn = pool.get().await?;
        let key = key(slug);
        let got: bool = conn.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0);
        if !got {
            return Ok(None);
        }
        let mut lock = Self { conn: Some(conn), key, holding_id: 0 };
        let row = lock
            .client()
            .query_one(
                "INSERT INTO sync_lock_log (repository_id, slug, event_id, worker, purpose) VALUES ($1, $2, $3, $4, $5)
                 RETURNING id",
                &[&repository_id, &slug, &event_id, &worker, &purpose],
            )
            .await?;
        lock.holding_id = row.get(0);
        Ok(Some(lock))
    }

    /// The connection that holds the lock: all of the sync's writes go through it.
    pub fn client(&mut self) -> &mut Object {
        // `conn` is only taken by `release` and `drop`, which consume the guard.
        self.conn.as_mut().unwrap_or_else(|| unreachable!("RepoLock used after release"))
    }

    /// Records the end of the holding and unlocks, returning the connection to the pool.
    pub async fn release(mut self) -> Result<(), LockError> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let ended = async {
            conn.execute("UPDATE sync_lock_log SET released_at = clock_timestamp() WHERE id = $1", &[&self.holding_id])
                .await?;
            conn.query_one("SELECT pg_advisory_unlock($1)", &[&self.key]).await?;
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        if ended.is_err() {
            drop(Object::take(conn));
        }
        Ok(ended?)
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Not released (an error or a panic unwound past it): close the connection, which frees the lock.
            drop(Object::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_differ_per_slug_and_are_stable() {
        assert_eq!(super::key("a"), super::key("a"));
        assert_ne!(super::key("a"), super::key("b"));
    }
}
