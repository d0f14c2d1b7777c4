//! Delete: the JobResult, the mirror, the tombstone, and deleting twice.

use anyhow::Result;
use gitfleet_producer::commands::{self, Outcome};
use gitfleet_shared::event::RequestedBy;

use crate::support::git::Remote;
use crate::support::{TestEnv, assert_log};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_mirror_and_tombstones_the_definition() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("first", &[("README.md", "one")])?;
    let name = format!("Doomed {}", env.id);
    let created = env.wait_job(env.create(&name, &remote.file_url(), "main").await?).await?;
    assert_eq!(created.status, "SUCCESS");
    let repo = env.repo(created.repository_id.unwrap()).await?;
    let mirror = env.git_root().join(&repo.slug);
    assert!(mirror.is_dir());

    let outcome = commands::delete(&env.pool, &name, RequestedBy::cli()).await?;
    let Outcome::Accepted { job_result_id, version, .. } = outcome else { panic!("expected an event: {outcome:?}") };
    assert_eq!(version, 2, "a delete is a definition change");
    let view = env.wait_job(job_result_id).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.name, name, "the delete JobResult is named after the repository");
    assert_log(&view, "info", "main", &format!("Git repository \"{name}\" deleted."));
    assert!(!mirror.exists(), "mirror removed");
    let gone = env.repo(repo.id).await?;
    assert!(gone.is_deleted());
    assert_eq!(gone.applied_version, 2);

    // Deleting again: nothing to do, no event, no error.
    let again = commands::delete(&env.pool, &name, RequestedBy::cli()).await?;
    assert_eq!(again, Outcome::AlreadyDeleted { repository_id: repo.id });
    // The name is free again, and a new definition with it is a different repository.
    remote.commit("second", &[("README.md", "two")])?;
    let reborn = env.wait_job(env.create(&name, &remote.file_url(), "main").await?).await?;
    assert_eq!(reborn.status, "SUCCESS");
    assert_ne!(reborn.repository_id, Some(repo.id));
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_delete_events_in_flight_the_second_is_a_clean_no_op() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("first", &[("README.md", "one")])?;
    let name = format!("Twice {}", env.id);
    let create = env.create(&name, &remote.file_url(), "main").await?;
    // Both deletes are recorded before any worker runs, so both reach the queue.
    let first = commands::delete(&env.pool, &name, RequestedBy::cli()).await?.job_result_id().unwrap();
    let second = commands::delete(&env.pool, &name, RequestedBy::cli()).await?.job_result_id().unwrap();
    env.start_fleet(1);

    env.wait_job(create).await?;
    let first = env.wait_job(first).await?;
    let second = env.wait_job(second).await?;
    assert_eq!((first.status.as_str(), second.status.as_str()), ("SUCCESS", "SUCCESS"));
    // Which one runs first is up to the fleet; exactly one of them does the work.
    let noop = format!("Git repository \"{name}\" is already deleted; nothing to do.");
    let said_noop = |v: &gitfleet_infra::store::job_result::JobResultView| v.logs.iter().any(|l| l.message == noop);
    assert!(said_noop(&first) != said_noop(&second), "{:#?}\n{:#?}", first.logs, second.logs);
    let repo = env.repo(first.repository_id.unwrap()).await?;
    assert!(repo.is_deleted());
    assert!(!env.git_root().join(&repo.slug).exists());
    env.teardown().await
}
