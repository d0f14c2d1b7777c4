//! What crosses process boundaries: the published message, and migrations under concurrent start-up.

use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use gitfleet_infra::amqp::header_str;
use gitfleet_infra::settings::DatabaseSettings;
use gitfleet_shared::event::{Event, EventKind};
use lapin::options::BasicAckOptions;

use crate::support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_the_event_contract_with_confirms() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (connection, mut consumer) = crate::support::tap(&env, &env.topology().events).await?;

    // Recorded before the relay runs: the outbox holds it until then.
    let job = env.create(&format!("Contract {}", env.id), "file:///srv/git/contract.git", "main").await?;
    env.start_relay();
    let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next()).await?.unwrap()?;
    delivery.acker.ack(BasicAckOptions::default()).await?;

    let props = &delivery.properties;
    assert_eq!(props.message_id().as_ref().map(|m| m.to_string()), Some(job.to_string()));
    assert_eq!(props.content_type().as_ref().map(|c| c.to_string()).as_deref(), Some("application/json"));
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    let traceparent = header_str(props, "traceparent").unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![2, 32, 16, 2], "{traceparent}");
    assert_eq!(delivery.routing_key.as_str(), "repo.create");

    let value: serde_json::Value = serde_json::from_slice(&delivery.data)?;
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../../schemas/event.schema.json"))?;
    assert!(jsonschema::draft7::is_valid(&schema, &value), "{value}");
    let event = Event::decode(&delivery.data)?;
    assert_eq!((event.event_id, event.kind, event.version.get()), (job, EventKind::Create, 1));

    let client = env.pool.get().await?;
    let published: i64 =
        client.query_one("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL", &[]).await?.get(0);
    assert_eq!(published, 1, "marked published only after the confirm");
    drop(client);
    let _ = connection.close(200, "done".into()).await;
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_safe_when_many_processes_start_at_once() -> Result<()> {
    let env = TestEnv::new().await?;
    let fresh = DatabaseSettings { schema: format!("{}_fresh", env.database.schema), ..env.database.clone() };
    let starts = (0..6).map(|_| {
        let settings = fresh.clone();
        tokio::spawn(async move { gitfleet_infra::db::connect(&settings, Duration::from_secs(10)).await })
    });
    let pools: Vec<_> = futures_util::future::join_all(starts).await;
    for pool in &pools {
        assert!(matches!(pool, Ok(Ok(_))), "{pool:?}");
    }
    let client = env.pool.get().await?;
    let applied: i64 =
        client.query_one(&format!("SELECT count(*) FROM {}.gitfleet_migrations", fresh.schema), &[]).await?.get(0);
    assert_eq!(applied, i64::from(gitfleet_infra::migrate::latest()));
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", fresh.schema)).await?;
    drop(client);
    env.teardown().await
}
