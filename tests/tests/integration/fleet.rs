//! More than one worker: the per-repository lock, deferral, and what happens to bad messages.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gitfleet_infra::amqp::{self, Publisher};
use lapin::BasicProperties;

use crate::support::TestEnv;
use crate::support::git::Remote;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_twenty_events_never_overlap_on_one_repository() -> Result<()> {
    let mut env = TestEnv::with_defer_delay(50).await?;
    env.start_fleet(2);
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("c0", &[("n.txt", "0")])?;
    let name = format!("Busy {}", env.id);

    let mut jobs = vec![env.create(&name, &remote.file_url(), "main").await?];
    let mut last = String::new();
    for n in 1..20 {
        if n % 5 == 0 {
            last = remote.commit(&format!("c{n}"), &[("n.txt", &n.to_string())])?;
        }
        jobs.push(env.sync(&name).await?);
    }
    let mut workers = std::collections::BTreeSet::new();
    let mut repo_id = None;
    let mut superseded = std::collections::HashSet::new();
    for id in &jobs {
        let view = env.wait_job(*id).await?;
        assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
        workers.insert(view.worker.clone().unwrap());
        repo_id = view.repository_id;
        if view.result.as_ref().is_some_and(|r| r.get("superseded_by").is_some()) {
            superseded.insert(*id);
        }
    }
    let repo = env.repo(repo_id.unwrap()).await?;
    assert_eq!(repo.head_str(), last, "the last holding of the lock saw the final push");

    // The workers' own record of lock holding: one per event that was not superseded by a newer queued one while
    // the lock was busy, each released before the next began.
    let client = env.pool.get().await?;
    let rows = client
        .query(
            "SELECT worker, acquired_at, released_at, event_id, purpose FROM sync_lock_log WHERE repository_id = $1
             ORDER BY acquired_at",
            &[&repo.id],
        )
        .await?;
    // Naming an artifact after a sync holds the lock too, under the sync's event id: it never overlaps either.
    let jobs_held: Vec<uuid::Uuid> = rows.iter().filter(|r| r.get::<_, String>(4) == "job").map(|r| r.get(3)).collect();
    let held: std::collections::HashSet<uuid::Uuid> = jobs_held.iter().copied().collect();
    assert_eq!(jobs_held.len(), held.len(), "one holding per event");
    for id in &jobs {
        assert!(held.contains(id) || superseded.contains(id), "{id} ran without the lock and was not superseded");
    }
    for pair in rows.windows(2) {
        let released: Option<chrono::DateTime<chrono::Utc>> = pair[0].get(2);
        let next_acquired: chrono::DateTime<chrono::Utc> = pair[1].get(1);
        let released = released.expect("every holding was released");
        assert!(released <= next_acquired, "holdings overlap: {released} > {next_acquired}");
    }
    eprintln!("20 events, {} lock holdings, workers used: {workers:?}", rows.len());
    drop(client);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_a_reason_and_the_worker_keeps_going() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let topology = env.topology();
    let connection = amqp::connect(&env.amqp, Duration::from_secs(5)).await?;
    let publisher = Publisher::new(&connection).await?;
    topology.declare(publisher.channel()).await?;

    let bad: [(&str, &[u8]); 3] = [
        ("not json", b"definitely { not json"),
        ("wrong schema", br#"{"schema": 2, "event_id": "x"}"#),
        ("bad branch", br#"{"schema":1,"event_id":"1b4e28ba-2fa1-11d2-883f-0016d3cca427","kind":"sync","repository":{"id":"1b4e28ba-2fa1-11d2-883f-0016d3cca427","name":"x","slug":"x","remote_url":"file:///x","branch":"--upload-pack=evil","provided_contents":[],"secrets_group":null},"version":1,"target_commit":null,"requested_at":"2026-11-22T06:00:00Z","requested_by":"cli"}"#),
    ];
    for (label, body) in bad {
        let properties = BasicProperties::default().with_message_id(label.into());
        publisher.publish(&topology.events, "repo.sync", body, properties).await?;
    }

    // Every one of them is dead-lettered with the reason, and recorded from the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reasons: Vec<(String, String)> = loop {
        let client = env.pool.get().await?;
        let rows = client
            .query("SELECT coalesce(headers->>'message_id', ''), reason FROM dead_letter WHERE event_id IS NULL", &[])
            .await?;
        if rows.len() >= 3 {
            break rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        if Instant::now() > deadline {
            bail!("only {} dead letters were recorded", rows.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for (label, reason) in &reasons {
        assert!(reason.starts_with("malformed event:"), "{label}: {reason}");
    }
    let reason_of = |label: &str| reasons.iter().find(|(l, _)| l == label).map(|(_, r)| r.clone()).unwrap();
    assert!(reason_of("wrong schema").contains("unsupported event schema 2"), "{reasons:?}");
    assert!(reason_of("bad branch").contains("must not start with '-'"), "{reasons:?}");

    // The worker is still consuming.
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("first", &[("README.md", "one")])?;
    let view = env.wait_job(env.create(&format!("After {}", env.id), &remote.file_url(), "main").await?).await?;
    assert_eq!(view.status, "SUCCESS");
    let _ = connection.close(200, "done".into()).await;
    env.teardown().await
}
