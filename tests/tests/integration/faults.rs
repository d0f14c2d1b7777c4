//! Fleet correctness under load and faults (ARCHITECTURE section 4): coalescing, transient faults that end in the
//! dead-letter queue and are replayed, permanent faults that fail at once, and the reaper of lost workers.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::{EventKind, RequestedBy};
use uuid::Uuid;

use crate::support::git::Remote;
use crate::support::{TestEnv, assert_log, free_port};

/// Waits (bounded) until every listed JobResult has ended; returns their `result` documents.
async fn wait_all(env: &TestEnv, ids: &[Uuid], limit: Duration) -> Result<Vec<(String, serde_json::Value)>> {
    let deadline = Instant::now() + limit;
    loop {
        let client = env.pool.get().await?;
        let rows = client
            .query(
                "SELECT status, coalesce(result, 'null'::jsonb) FROM job_result WHERE id = ANY($1)
                   AND status IN ('SUCCESS', 'FAILURE')",
                &[&ids],
            )
            .await?;
        if rows.len() == ids.len() {
            return Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
        }
        if Instant::now() > deadline {
            bail!("only {} of {} events ended within {limit:?}", rows.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 500 sync events for one repository, sent as fast as the producer takes them, with two workers: every one ends
/// SUCCESS and at most 3 of them fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_syncs_costs_at_most_3_fetches() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let remote = Remote::new(env.tmp.path(), "burst")?;
    remote.commit("first", &[("README.md", "one")])?;
    env.start_fleet(2);
    let name = format!("Burst {}", env.id);
    let created = env.wait_job(env.create(&name, &remote.file_url(), "main").await?).await?;
    assert_eq!(created.status, "SUCCESS");

    let started = Instant::now();
    let mut ids = Vec::new();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (pool, name) = (env.pool.clone(), name.clone());
        senders.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..125 {
                let outcome = commands::sync(&pool, &name, EventKind::Sync, None, RequestedBy::cli()).await?;
                ids.push(outcome.job_result_id().unwrap());
            }
            Ok::<_, anyhow::Error>(ids)
        });
    }
    while let Some(sent) = senders.join_next().await {
        ids.extend(sent??);
    }
    let results = wait_all(&env, &ids, Duration::from_secs(120)).await?;
    let fetched = results.iter().filter(|(_, r)| r.get("coalesced").is_none()).count();
    let superseded = results.iter().filter(|(_, r)| r.get("superseded_by").is_some()).count();
    eprintln!(
        "500 syncs ended in {:.1} s: {fetched} fetched, {superseded} superseded, {} already fetched since",
        started.elapsed().as_secs_f64(),
        results.len() - fetched - superseded
    );
    assert!(results.iter().all(|(status, _)| status == "SUCCESS"));
    assert!((1..=3).contains(&fetched), "{fetched} fetches for one burst");

    // A commit pushed after the burst is still picked up by the next event.
    let head = remote.commit("second", &[("README.md", "two")])?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.result.clone().unwrap()["current_head"], head.as_str());
    env.teardown().await
}

/// A remote that refuses connections is a transient fault: tried within each delivery, returned to the queue,
/// dead-lettered at the delivery limit, its JobResult ended FAILURE with the reason; listed and replayed once the
/// remote is back. A missing branch is permanent: FAILURE at once, never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_dead_lettered_and_replayed() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "flaky")?;
    let head = remote.commit("first", &[("README.md", "one")])?;
    // Nothing listens on this port yet.
    let port = free_port();
    env.start_fleet(1);
    let name = format!("Flaky {}", env.id);
    let job = env.create(&name, &format!("git://127.0.0.1:{port}/flaky.git"), "main").await?;
    let missing = env.create(&format!("Missing {}", env.id), &remote.file_url(), "no-such-branch").await?;

    let view = env.wait_job(missing).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(&view, "error", "ensure_git_repository", "does not appear to be an existing branch");
    assert!(view.logs.iter().filter(|l| l.message == "Running job").count() == 1, "a permanent fault is not retried");

    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    let result = view.result.clone().unwrap();
    assert_eq!(result["exc_type"], "DeadLettered");
    let message = result["exc_message"].as_str().unwrap();
    assert!(message.contains("delivery limit of 3"), "{message}");
    assert!(message.contains("Last error: fetching from the remote"), "{message}");
    // Tried several times in each of several deliveries.
    let attempts = view.logs.iter().filter(|l| l.message == "Running job").count();
    assert!(attempts >= 6, "{attempts} attempts");

    // Listed, then replayed once the remote answers.
    let letters = gitfleet_producer::dead_letters::list(&env.pool, false).await?;
    let letter = letters.iter().find(|d| d.event_id == Some(job)).expect("the event is listed");
    let daemon = crate::support::git::git_daemon_on(&served, port).await?;
    let replayed = gitfleet_producer::dead_letters::replay(&env.pool, Some(letter.id), &RequestedBy::cli()).await?;
    assert_eq!(replayed, vec![job]);
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], head.as_str());
    assert_log(&view, "info", "main", "Replayed from the dead-letter queue by cli");
    // Replayed once: a second replay of the same letter is refused.
    let again = gitfleet_producer::dead_letters::replay(&env.pool, Some(letter.id), &RequestedBy::cli()).await;
    assert!(matches!(again, Err(gitfleet_producer::dead_letters::ReplayError::AlreadyReplayed(_))));
    assert!(gitfleet_producer::dead_letters::list(&env.pool, false).await?.iter().all(|d| d.event_id != Some(job)));
    drop(daemon);
    env.teardown().await
}

/// A STARTED JobResult whose worker stopped beating is ended FAILURE "worker lost", unless its repository's lock is
/// held (a live worker is on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_ends_results_of_lost_workers_only() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.heartbeat_secs = 1;
    env.reap_after_secs = 2;
    let remote = Remote::new(env.tmp.path(), "reaped")?;
    remote.commit("first", &[("README.md", "one")])?;
    let lost_name = format!("Lost {}", env.id);
    let held_name = format!("Held {}", env.id);
    // Two definitions whose sync events no worker runs yet: mark them as started by a worker that is gone.
    let lost = commands::create(
        &env.pool,
        NewRepo { name: lost_name.clone(), remote_url: remote.file_url(), ..NewRepo::default() },
        RequestedBy::cli(),
    )
    .await?
    .job_result_id()
    .unwrap();
    let held = commands::create(
        &env.pool,
        NewRepo { name: held_name.clone(), remote_url: remote.file_url(), ..NewRepo::default() },
        RequestedBy::cli(),
    )
    .await?
    .job_result_id()
    .unwrap();
    let client = env.pool.get().await?;
    client
        .execute(
            "UPDATE job_result SET status = 'STARTED', worker = 'gone', date_started = now() - interval '1 minute',
                 heartbeat = now() - interval '1 minute' WHERE id = ANY($1)",
            &[&vec![lost, held]],
        )
        .await?;
    // Someone holds the second repository's lock.
    let slug: String = client.query_one("SELECT slug FROM git_repository WHERE name = $1", &[&held_name]).await?.get(0);
    let holder = env.pool.get().await?;
    holder.query_one("SELECT pg_advisory_lock($1)", &[&gitfleet_worker::lock::key(&slug)]).await?;

    // A worker that consumes nothing of these (the outbox is not relayed) but runs the reaper.
    env.start_worker("reaper");
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let view = env.job(lost).await?;
        if view.status == "FAILURE" || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view.status, "FAILURE");
    assert_eq!(view.result.clone().unwrap()["exc_type"], "WorkerLost");
    assert_log(&view, "error", "main", "worker lost");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.job(held).await?.status, "STARTED", "a job whose lock is held is not reaped");
    holder.query_one("SELECT pg_advisory_unlock($1)", &[&gitfleet_worker::lock::key(&slug)]).await?;
    drop((client, holder));
    env.teardown().await
}
