//! Housekeeping: what is past its retention goes, a batch at a time; the latest JobResult of each live repository,
//! running JobResults and unpublished events stay.

use std::time::Duration;

use anyhow::Result;
use gitfleet_infra::store::housekeeping::{Removed, Retention};
use uuid::Uuid;

use crate::support::TestEnv;
use crate::support::git::Remote;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_exactly_what_is_past_it_and_keeps_each_repositorys_latest_job_result() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "kept")?;
    remote.commit("first", &[("README.md", "one")])?;
    let url = remote.file_url();
    let a = format!("Kept {}", env.id);
    let mut a_jobs = vec![env.create(&a, &url, "main").await?];
    env.wait_job(a_jobs[0]).await?;
    for n in 0..2 {
        remote.commit(&format!("more {n}"), &[("README.md", &format!("{n}"))])?;
        let id = env.sync(&a).await?;
        env.wait_job(id).await?;
        a_jobs.push(id);
    }
    let b = format!("Gone {}", env.id);
    let b_remote = Remote::new(env.tmp.path(), "gone")?;
    b_remote.commit("first", &[("README.md", "one")])?;
    let b_created = env.create(&b, &b_remote.file_url(), "main").await?;
    env.wait_job(b_created).await?;
    let b_deleted = crate::support::accepted(
        gitfleet_producer::commands::delete(&env.pool, &b, gitfleet_shared::event::RequestedBy::cli()).await?,
    )?;
    env.wait_job(b_deleted).await?;

    // Everything so far is 40 days old; one more JobResult waits for a worker since then.
    let client = env.pool.get().await?;
    client
        .batch_execute(
            "UPDATE job_result SET date_created = date_created - interval '40 days';
             UPDATE outbox SET published_at = published_at - interval '2 days', created = created - interval '2 days';
             UPDATE sync_lock_log SET acquired_at = acquired_at - interval '40 days';",
        )
        .await?;
    let waiting = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO job_result (id, name, status, date_created)
             VALUES ($1, 'Git Repository: Sync', 'PENDING', now() - interval '40 days')",
            &[&waiting],
        )
        .await?;
    client
        .batch_execute(
            "INSERT INTO dead_letter (routing_key, reason, payload, received_at, replayed_at) VALUES
                 ('repo.sync', 'replayed long ago', '\\x7b7d', now() - interval '41 days', now() - interval '40 days'),
                 ('repo.sync', 'waiting', '\\x7b7d', now() - interval '41 days', NULL);
             INSERT INTO webhook_delivery (provider, delivery_id, event, outcome, received_at) VALUES
                 ('github', 'old', 'push', 'synced', now() - interval '40 days'),
                 ('github', 'new', 'push', 'synced', now());",
        )
        .await?;
    // UI sessions: one expired, one of a revoked token, one live.
    let live = gitfleet_producer::tokens::create(&env.pool, "ui", &[gitfleet_producer::tokens::Scope::Read]).await?;
    let revoked =
        gitfleet_producer::tokens::create(&env.pool, "gone", &[gitfleet_producer::tokens::Scope::Read]).await?;
    assert!(live.is_some() && revoked.is_some());
    client
        .batch_execute(
            "INSERT INTO ui_session (id_hash, token_id, csrf, expires_at)
               SELECT repeat(k, 64), t.id, repeat('c', 64), now() + make_interval(hours => h)
                 FROM (VALUES ('a', 'ui', -1), ('b', 'gone', 5), ('d', 'ui', 5)) AS s (k, name, h)
                 JOIN api_token t ON t.name = s.name;
             UPDATE api_token SET revoked_at = now() WHERE name = 'gone';",
        )
        .await?;
    // A recent repository: its JobResult, event and lock holding are within every retention.
    let c = env.create(&format!("Fresh {}", env.id), &url, "main").await?;
    env.wait_job(c).await?;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)) }
    };
    let old_outbox = count("SELECT count(*) FROM outbox WHERE published_at < now() - interval '1 day'").await?;
    let old_locks = count("SELECT count(*) FROM sync_lock_log WHERE acquired_at < now() - interval '30 days'").await?;
    let logs_of_removed: i64 = client
        .query_one(
            "SELECT count(*) FROM job_log_entry WHERE job_result_id = ANY($1)",
            &[&vec![a_jobs[0], a_jobs[1], b_created, b_deleted]],
        )
        .await?
        .get(0);
    let retention = Retention { records: Duration::from_secs(30 * 86_400), published: Duration::from_secs(86_400) };
    let removed = gitfleet_producer::scheduler::keep_house(&env.pool, retention).await?;

    assert_eq!(
        removed,
        Removed {
            job_results: 4,
            log_entries: u64::try_from(logs_of_removed)?,
            outbox_rows: u64::try_from(old_outbox)?,
            lock_holdings: u64::try_from(old_locks)?,
            dead_letters: 1,
            webhook_deliveries: 1,
            ui_sessions: 2,
        }
    );
    assert!(logs_of_removed > 0 && old_outbox >= 5 && old_locks >= 5, "{logs_of_removed} {old_outbox} {old_locks}");
    let mut left: Vec<Uuid> = client.query("SELECT id FROM job_result", &[]).await?.iter().map(|r| r.get(0)).collect();
    left.sort();
    let mut expected = vec![a_jobs[2], waiting, c];
    expected.sort();
    assert_eq!(left, expected, "the latest of the live repository, the unfinished one and the recent one stay");
    let latest_logs: i64 =
        client.query_one("SELECT count(*) FROM job_log_entry WHERE job_result_id = $1", &[&a_jobs[2]]).await?.get(0);
    assert!(latest_logs > 0, "the kept JobResult keeps its log");
    assert!(count("SELECT count(*) FROM outbox").await? >= 1, "the recent event stays");
    assert_eq!(count("SELECT count(*) FROM dead_letter").await?, 1, "the dead letter waiting for a replay stays");
    let view = env.job(a_jobs[2]).await?;
    assert_eq!(view.status, "SUCCESS");
    // A second pass finds nothing more.
    let again = gitfleet_producer::scheduler::keep_house(&env.pool, retention).await?;
    assert_eq!(again, Removed::default());
    drop(client);
    env.teardown().await
}
