//! Repositories with a `sync_interval`: the relay's scheduler polls them, a worker asks the remote for the branch's
//! tip, and only a moved tip becomes a sync. On the real services, with real remotes, at the shortest interval.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::RequestedBy;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::TestEnv;
use crate::support::git::Remote;

const INTERVAL: i32 = gitfleet_shared::repo::MIN_SYNC_INTERVAL_SECS;

async fn create_polled(env: &TestEnv, name: &str, url: &str) -> Result<Uuid> {
    let new = NewRepo {
        name: name.to_owned(),
        remote_url: url.to_owned(),
        provided_contents: vec!["extras.configcontext".into()],
        sync_interval_secs: Some(INTERVAL),
        ..NewRepo::default()
    };
    crate::support::accepted(commands::create(&env.pool, new, RequestedBy::cli()).await?)
}

async fn count(env: &TestEnv, sql: &str) -> Result<i64> {
    Ok(env.pool.get().await?.query_one(sql, &[]).await?.get(0))
}

/// Waits (bounded) until `done` holds of the repository's row.
async fn wait_row(
    env: &TestEnv,
    id: Uuid,
    limit: Duration,
    what: &str,
    done: impl Fn(&gitfleet_infra::store::repository::RepositoryRow) -> bool,
) -> Result<gitfleet_infra::store::repository::RepositoryRow> {
    let deadline = Instant::now() + limit;
    loop {
        let row = env.repo(id).await?;
        if done(&row) {
            return Ok(row);
        }
        ensure!(Instant::now() < deadline, "{what}: not within {limit:?}: {row:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (bounded) until at least `polls` poll events are recorded; returns how many there are.
async fn wait_polls(env: &TestEnv, polls: i64, limit: Duration) -> Result<i64> {
    let deadline = Instant::now() + limit;
    loop {
        let n = count(env, "SELECT count(*) FROM outbox WHERE routing_key = 'repo.poll'").await?;
        if n >= polls {
            return Ok(n);
        }
        ensure!(Instant::now() < deadline, "{n} polls, not {polls}, within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An unchanged remote is polled every interval and makes no JobResult; a push is picked up with no event sent,
/// as the sync of the pushed commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_picked_up_without_an_event_and_an_unchanged_remote_makes_no_job_result() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "polled")?;
    remote.commit("first", &[("config_contexts/a.yml", "_metadata: {name: A, weight: 1000}\nv: 1\n")])?;
    let first = create_polled(&env, &format!("Polled {}", env.id), &remote.file_url()).await?;
    let view = env.wait_job(first).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let repo_id = env.job(first).await?.repository_id.context("repository")?;

    // Two polls that find nothing new: when they looked is recorded, and no JobResult is made.
    let polled =
        wait_row(&env, repo_id, Duration::from_secs(25), "a first poll", |r| r.last_polled_at.is_some()).await?;
    let first_poll = polled.last_polled_at.context("polled")?;
    let again = wait_row(&env, repo_id, Duration::from_secs(25), "a second poll", |r| {
        r.last_polled_at.is_some_and(|t| t > first_poll)
    })
    .await?;
    assert_eq!(again.poll_error, None);
    assert_eq!(count(&env, "SELECT count(*) FROM job_result").await?, 1, "unchanged polls make no JobResult");
    // `repo list` and the API say when it last looked.
    let args =
        ["producer", "--database-url", &env.database.url, "--database-schema", &env.database.schema, "repo", "list"];
    let mut out = Vec::new();
    gitfleet_producer::cli::run(clap::Parser::parse_from(args), &env.pool, CancellationToken::new(), &mut out).await?;
    let listed = String::from_utf8(out)?;
    assert!(listed.contains("\tpolled every 10s, last 20"), "{listed}");
    let base = env.start_api().await?;
    let token = gitfleet_producer::tokens::create(&env.pool, "poll", &[gitfleet_producer::tokens::Scope::Read])
        .await?
        .context("token")?;
    let name = format!("Polled%20{}", env.id);
    let shown: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/repositories/{name}"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(shown["sync_interval"], "10s", "{shown}");
    assert!(shown["last_polled_at"].is_string() && shown["poll_error"].is_null(), "{shown}");
    let polls = count(&env, "SELECT count(*) FROM outbox WHERE routing_key = 'repo.poll'").await?;
    assert!((2..=4).contains(&polls), "about one poll per interval: {polls}");

    // A push, and no event: the next poll syncs the pushed commit.
    let pushed = remote.commit("second", &[("config_contexts/b.yml", "_metadata: {name: B, weight: 1000}\nv: 2\n")])?;
    let synced =
        wait_row(&env, repo_id, Duration::from_secs(30), "the pushed commit live", |r| r.head_str() == pushed).await?;
    assert_eq!(synced.poll_error, None);
    let client = env.pool.get().await?;
    let row = client
        .query_one("SELECT id, status, requested_by, repository_id FROM job_result WHERE requested_by = 'poll'", &[])
        .await?;
    let (status, repository): (String, Option<Uuid>) = (row.get("status"), row.get("repository_id"));
    assert_eq!((status.as_str(), repository), ("SUCCESS", Some(repo_id)));
    let view = env.job(row.get("id")).await?;
    assert_eq!(view.result.clone().unwrap_or_default()["current_head"], pushed.as_str());
    drop(client);
    env.teardown().await
}

/// A remote that cannot be reached: the poll's failure is recorded on the repository with its message, the next
/// poll waits twice the interval, and the first poll that reaches it again clears the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_remote_backs_off_and_recovers() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "flaky")?;
    remote.commit("first", &[("config_contexts/a.yml", "_metadata: {name: A, weight: 1000}\nv: 1\n")])?;
    let first = create_polled(&env, &format!("Flaky {}", env.id), &remote.file_url()).await?;
    let view = env.wait_job(first).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let repo_id = env.job(first).await?.repository_id.context("repository")?;

    let away = env.tmp.path().join("flaky-away.git");
    std::fs::rename(&remote.bare, &away)?;
    let failed = wait_row(&env, repo_id, Duration::from_secs(25), "a failed poll", |r| r.poll_error.is_some()).await?;
    assert_eq!(failed.poll_failures, 1);
    let (polled, next) = (failed.last_polled_at.context("polled")?, failed.next_poll_at.context("next")?);
    let wait = (next - polled).num_seconds();
    assert!((2 * i64::from(INTERVAL) - 1..=2 * i64::from(INTERVAL) + 1).contains(&wait), "backed off {wait} s");
    assert_eq!(count(&env, "SELECT count(*) FROM job_result").await?, 1, "a failed poll makes no JobResult");

    std::fs::rename(&away, &remote.bare)?;
    let recovered = wait_row(&env, repo_id, Duration::from_secs(40), "a poll that works again", |r| {
        r.poll_error.is_none() && r.last_polled_at.is_some_and(|t| t > polled)
    })
    .await?;
    assert_eq!(recovered.poll_failures, 0);
    env.teardown().await
}

/// Two relays: each due poll is scheduled once; when a relay stops, the other schedules on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_schedule_each_poll_once_and_one_takes_over_from_the_other() -> Result<()> {
    let env = TestEnv::new().await?;
    let relay = |env: &TestEnv| {
        let token = CancellationToken::new();
        let options = gitfleet_producer::relay::RelayOptions {
            poll_interval: Duration::from_millis(100),
            scheduler: gitfleet_producer::scheduler::SchedulerOptions {
                takeover: Duration::from_millis(500),
                ..Default::default()
            },
            ..Default::default()
        };
        let run = gitfleet_producer::relay::run(
            env.pool.clone(),
            env.database.clone(),
            env.amqp.clone(),
            options,
            token.clone(),
        );
        (token, tokio::spawn(run))
    };
    let (a, b) = (relay(&env), relay(&env));
    let remote = Remote::new(env.tmp.path(), "twice")?;
    remote.commit("first", &[("README.md", "one")])?;
    create_polled(&env, &format!("Twice {}", env.id), &remote.file_url()).await?;
    let polls = "SELECT count(*) FROM outbox WHERE routing_key = 'repo.poll'";

    // Three polls, each an interval after the last (below): not one per relay.
    let both = wait_polls(&env, 3, Duration::from_secs(4 * INTERVAL as u64)).await?;
    assert!((3..=4).contains(&both), "{both} polls with two relays");
    let gaps = env
        .pool
        .get()
        .await?
        .query(
            "SELECT extract(epoch FROM created - lag(created) OVER (ORDER BY created))::float8 FROM outbox
              WHERE routing_key = 'repo.poll' ORDER BY created",
            &[],
        )
        .await?;
    for gap in gaps.iter().filter_map(|r| r.get::<_, Option<f64>>(0)) {
        assert!(gap > f64::from(INTERVAL) - 2.0, "two polls {gap:.1} s apart");
    }

    // Stop each first relay in turn (one of them schedules): with a third started, polls go on.
    a.0.cancel();
    a.1.await??;
    let c = relay(&env);
    b.0.cancel();
    b.1.await??;
    let before = count(&env, polls).await?;
    let after = wait_polls(&env, before + 1, Duration::from_secs(2 * INTERVAL as u64 + 5)).await?;
    assert!(after > before, "the remaining relay schedules: {before} then {after}");
    c.0.cancel();
    c.1.await??;
    env.teardown().await
}
