//! Fleet correctness under load and faults (ARCHITECTURE section 4): coalescing, transient faults that end in the
//! dead-letter queue and are replayed, permanent faults that fail at once, and the reaper of lost workers.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::{EventKind, RequestedBy};
use uuid::Uuid;

use crate::support::git::{Remote, git_daemon_on};
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

/// A remote that refuses connections is a transient fault: tried within each delivery, then again after each delay
/// of the retry schedule, dead-lettered once it is spent, its JobResult ended FAILURE with the reason; listed and replayed once the
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
    assert!(message.contains("transient failures did not pass in"), "{message}");
    assert!(message.contains("2 tries after the first, GITFLEET_RETRY_DELAYS"), "{message}");
    assert!(message.contains("the last: fetching from the remote"), "{message}");
    // Tried several times in each of the three tries of the schedule.
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
    assert!(
        matches!(&again, Err(gitfleet_producer::commands::CommandError::Refused(m)) if m.contains("already replayed")),
        "{again:?}"
    );
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

async fn create_providing(env: &TestEnv, name: String, remote_url: String, provides: &[&str]) -> Result<Uuid> {
    let provided_contents = provides.iter().map(|p| (*p).to_owned()).collect();
    let new = NewRepo { name, remote_url, provided_contents, ..NewRepo::default() };
    crate::support::accepted(commands::create(&env.pool, new, RequestedBy::cli()).await?)
}

/// One repository can only fail its own sync: a job module of one 100,000-term expression and a context file whose
/// aliases expand a 1 MiB string 729 times end that repository's sync FAILURE with errors naming the files, while
/// another repository's sync on the same worker (in this test's own process: a crash would end the test) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_repository_fails_only_its_own_sync() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let hostile = Remote::new(env.tmp.path(), "hostile")?;
    let expression = format!("x = {}\n", vec!["1"; 100_000].join("+"));
    let mut bomb = format!("_metadata:\n  name: bomb\ns: &s \"{}\"\n", "x".repeat(1 << 20));
    bomb.push_str("a: &a [*s, *s, *s, *s, *s, *s, *s, *s, *s]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
    bomb.push_str("c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n");
    hostile.commit(
        "hostile",
        &[("__init__.py", ""), ("jobs/__init__.py", &expression), ("config_contexts/bomb.yaml", &bomb)],
    )?;
    let good = Remote::new(env.tmp.path(), "good")?;
    let files: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("config_contexts/c{i:05}.yaml"), format!("_metadata:\n  name: ctx-{i}\nv: {i}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    good.commit("good", &refs)?;
    env.start_fleet(1);

    let both = ["extras.configcontext", "extras.job"];
    let bad = create_providing(&env, format!("Hostile {}", env.id), hostile.file_url(), &both).await?;
    let fine = create_providing(&env, format!("Good {}", env.id), good.file_url(), &["extras.configcontext"]).await?;

    let view = env.wait_job(bad).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    assert_log(&view, "error", "jobs", "maximum recursion depth exceeded during compilation (__init__.py)");
    assert_log(&view, "error", "config contexts", "`bomb.yaml`: document expands to more than");
    let view = env.wait_job(fine).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let client = env.pool.get().await?;
    let contexts: i64 = client.query_one("SELECT count(*) FROM config_context", &[]).await?.get(0);
    assert_eq!(contexts, 2000);
    drop(client);
    env.teardown().await
}

/// A context nested as deep as the limit allows is stored and read back by the next sync (PostgreSQL's JSON is
/// read with serde_json, which stops at 128 levels: a deeper record would fail every later sync); one nested
/// deeper is refused at load, naming its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_stops_where_stored_records_can_be_read_back() -> Result<()> {
    let mut env = TestEnv::new().await?;
    // The root mapping is the first level; `levels` arrays under it, a scalar inside the last.
    let nested = |levels: usize, leaf: u32| {
        format!("{{\"_metadata\": {{\"name\": \"deep\"}}, \"d\": {}{leaf}{}}}", "[".repeat(levels), "]".repeat(levels))
    };
    let remote = Remote::new(env.tmp.path(), "deep")?;
    remote.commit("at the limit", &[("config_contexts/deep.json", &nested(125, 1))])?;
    env.start_fleet(1);
    let repo = create_providing(&env, format!("Deep {}", env.id), remote.file_url(), &["extras.configcontext"]).await?;
    let view = env.wait_job(repo).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);

    // The changed file's record is compared with the stored one, which is read back.
    remote.commit("changed", &[("config_contexts/deep.json", &nested(125, 2))])?;
    let view = env.wait_job(env.sync(&format!("Deep {}", env.id)).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_log(&view, "info", "config contexts", "Successfully refreshed config context");

    remote.commit("too deep", &[("config_contexts/deep.json", &nested(200, 3))])?;
    let view = env.wait_job(env.sync(&format!("Deep {}", env.id)).await?).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    assert_log(&view, "error", "config contexts", "`deep.json`: document nests deeper than 126 levels");
    env.teardown().await
}

/// A refusal by the database (a data or integrity error) is not an outage: the sync fails at once with the
/// server's message, its records rolled back, and is never retried. An over-long name is caught by the loader
/// first, with Django's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_refusals_fail_at_once() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let remote = Remote::new(env.tmp.path(), "refused")?;
    remote.commit("ok", &[("config_contexts/a.yaml", "_metadata:\n  name: fine\nv: 1\n")])?;
    env.start_fleet(1);
    let name = format!("Refused {}", env.id);
    let created = create_providing(&env, name.clone(), remote.file_url(), &["extras.configcontext"]).await?;
    assert_eq!(env.wait_job(created).await?.status, "SUCCESS");

    // A rule of the database the loaders do not know: PostgreSQL refuses the row (SQLSTATE 23514).
    let client = env.pool.get().await?;
    client.batch_execute("ALTER TABLE config_context ADD CONSTRAINT no_refused CHECK (name <> 'refused')").await?;
    remote.commit("refused", &[("config_contexts/b.yaml", "_metadata:\n  name: refused\nv: 2\n")])?;
    let started = Instant::now();
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    let result = view.result.clone().unwrap();
    assert_eq!(result["exc_type"], "IntegrityError");
    let message = result["exc_message"].as_str().unwrap();
    assert!(message.contains("violates check constraint \"no_refused\""), "{message}");
    assert!(message.contains("config contexts of"), "names the data type: {message}");
    assert_log(&view, "info", "main", "Changes to database records have been reverted.");
    assert_eq!(view.logs.iter().filter(|l| l.message == "Running job").count(), 1, "not retried");
    let meta: Option<serde_json::Value> =
        client.query_one("SELECT meta FROM job_result WHERE id = $1", &[&view.id]).await?.get(0);
    assert!(meta.is_none_or(|m| m.get("failed_attempts").is_none()), "no transient attempt was counted");
    assert!(started.elapsed() < Duration::from_secs(20), "at once, not after retries");
    let names: Vec<String> =
        client.query("SELECT name FROM config_context", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["fine"], "the last good state stays live");

    // An over-long name: the loader's check, with Django's message, before anything reaches the database.
    remote
        .commit("long", &[("config_contexts/b.yaml", &format!("_metadata:\n  name: {}\nv: 2\n", "n".repeat(300)))])?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(
        &view,
        "error",
        "config contexts",
        "`b.yaml`: _metadata.name: Ensure this value has at most 255 characters (it has 300).",
    );
    assert_eq!(view.logs.iter().filter(|l| l.message == "Running job").count(), 1, "not retried");
    drop(client);
    env.teardown().await
}

/// A remote that refuses connections for 60 seconds, then accepts them: the event waits through the retry schedule
/// (no worker slot held) and ends SUCCESS, never dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_down_for_a_minute_ends_in_success() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.amqp.retry_delays = vec![5, 10, 20, 40];
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "outage")?;
    let head = remote.commit("first", &[("README.md", "one")])?;
    let port = free_port();
    env.start_fleet(1);
    let job = env.create(&format!("Outage {}", env.id), &format!("git://127.0.0.1:{port}/outage.git"), "main").await?;
    let down_since = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let client = env.pool.get().await?;
    let status: String = client.query_one("SELECT status FROM job_result WHERE id = $1", &[&job]).await?.get(0);
    assert_eq!(status, "PENDING", "waiting for its next try, not ended and not holding a worker");
    let daemon = git_daemon_on(&served, port).await?;
    eprintln!("remote up after {:.0} s", down_since.elapsed().as_secs_f64());
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], head.as_str());
    let meta: serde_json::Value = client.query_one("SELECT meta FROM job_result WHERE id = $1", &[&job]).await?.get(0);
    assert!(meta["failed_attempts"].as_i64().unwrap_or(0) >= 3, "{meta}");
    let letters: i64 = client.query_one("SELECT count(*) FROM dead_letter", &[]).await?.get(0);
    assert_eq!(letters, 0, "nothing dead-lettered");
    drop((client, daemon));
    env.teardown().await
}
