//! What running on Kubernetes relies on: API tokens registered from a mounted Secret, a list of broker addresses
//! of which any live one serves, and a mirror cache bounded to its volume.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gitfleet_infra::amqp;
use gitfleet_producer::tokens::{self, Imported, Scope, TokenCommand};

use crate::support::git::Remote;
use crate::support::{TestEnv, free_port};

fn token(fill: char) -> String {
    format!("gft_{}", fill.to_string().repeat(64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_import_from_a_mounted_secret_and_rotate() -> Result<()> {
    let env = TestEnv::new().await?;
    // A Secret mounted as a volume: keys are links into a timestamped folder, beside a `..data` link.
    let dir = env.tmp.path().join("api-tokens");
    let data = dir.join("..2026_12_04_10_00_00.123");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("ci"), format!("{}\n", token('a')))?;
    std::fs::write(data.join("ops"), token('b'))?;
    std::os::unix::fs::symlink(&data, dir.join("..data"))?;
    for key in ["ci", "ops"] {
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key))?;
    }
    let import = |scopes: Vec<String>| TokenCommand::Import { dir: dir.clone(), scope: scopes };
    let mut out = Vec::new();
    let code = tokens::command(&env.pool, import(vec!["ops=admin".into()]), &mut out).await?;
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(out)?, "ci\tcreated\nops\tcreated\n");
    let ci = tokens::verify(&env.pool, &token('a')).await?;
    assert_eq!((ci.token_name.as_str(), ci.scope), ("ci", Scope::Read), "tokens not named get read");
    assert_eq!(tokens::verify(&env.pool, &token('b')).await?.scope, Scope::Admin);

    // The same Secret again changes nothing; a rotated value replaces the token of that name.
    assert_eq!(tokens::import_one(&env.pool, "ops", &token('b'), &[Scope::Admin]).await?, Imported::Unchanged);
    std::fs::write(data.join("ci"), token('c'))?;
    let mut out = Vec::new();
    tokens::command(&env.pool, import(vec!["ops=admin".into()]), &mut out).await?;
    assert_eq!(String::from_utf8(out)?, "ci\treplaced\nops\tunchanged\n");
    assert!(tokens::verify(&env.pool, &token('a')).await.is_err(), "the old value is revoked");
    assert_eq!(tokens::verify(&env.pool, &token('c')).await?.token_name, "ci");
    // A scope change keeps the token; a revoked value never comes back.
    assert_eq!(tokens::import_one(&env.pool, "ci", &token('c'), &[Scope::Write]).await?, Imported::Rescoped);
    assert_eq!(tokens::verify(&env.pool, &token('c')).await?.scope, Scope::Write);
    let refused = tokens::import_one(&env.pool, "ci", &token('a'), &[Scope::Read]).await.unwrap_err();
    assert!(refused.to_string().contains("was revoked"), "{refused}");
    assert_eq!(tokens::verify(&env.pool, &token('c')).await?.token_name, "ci", "left live");

    // A file that is not a token, or an unknown scope: exit 2, nothing registered.
    std::fs::write(data.join("broken"), "hunter2")?;
    std::os::unix::fs::symlink("..data/broken", dir.join("broken"))?;
    assert_eq!(tokens::command(&env.pool, import(vec![]), &mut Vec::new()).await?, 2);
    std::fs::remove_file(dir.join("broken"))?;
    assert_eq!(tokens::command(&env.pool, import(vec!["ci=root".into()]), &mut Vec::new()).await?, 2);
    assert_eq!(tokens::verify(&env.pool, &token('c')).await?.scope, Scope::Write, "left as it was");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_live_broker_of_the_list_serves() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let live = env.amqp.url.clone();
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/gitfleet", free_port());
    // Whichever address a process starts at, one of the two orders puts the dead broker first.
    for urls in [format!("{dead},{live}"), format!("{live}, {dead}")] {
        let settings = gitfleet_infra::settings::AmqpSettings { url: urls, ..env.amqp.clone() };
        let connection = amqp::connect(&settings, Duration::from_secs(5)).await?;
        assert!(connection.status().connected());
        connection.close(200, "done".into()).await?;
    }
    let nothing = gitfleet_infra::settings::AmqpSettings { url: format!("{dead},{dead}"), ..env.amqp.clone() };
    assert!(amqp::connect(&nothing, Duration::from_millis(300)).await.is_err(), "no live broker");

    // The relay and a worker given the list sync a repository.
    env.amqp.url = format!("{dead},{live}");
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("first", &[("README.md", "one")])?;
    let done = env.wait_job(env.create(&format!("Listed {}", env.id), &remote.file_url(), "main").await?).await?;
    assert_eq!(done.status, "SUCCESS", "{:#?}", done.logs);
    env.teardown().await
}

/// Bytes of incompressible text, so a mirror's size is about that of its content.
fn incompressible(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..bytes)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + u8::try_from((state >> 33) % 26).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_cache_evicts_the_least_recently_used_and_clones_again() -> Result<()> {
    let mut env = TestEnv::new().await?;
    // Room for one mirror of about 200 KB, not two.
    env.git_cache_max_bytes = Some(300_000);
    let metrics = &gitfleet_worker::metrics::METRICS;
    let (evictions, misses, hits) =
        (metrics.git_cache_evictions.get(), metrics.git_cache_misses.get(), metrics.git_cache_hits.get());
    env.start_fleet(1);
    let mut slugs = Vec::new();
    for (i, name) in ["A", "B", "C"].into_iter().enumerate() {
        let remote = Remote::new(env.tmp.path(), name)?;
        remote.commit("first", &[("blob.txt", &incompressible(i as u64, 200_000))])?;
        let done = env.wait_job(env.create(&format!("{name} {}", env.id), &remote.file_url(), "main").await?).await?;
        assert_eq!(done.status, "SUCCESS", "{:#?}", done.logs);
        slugs.push(env.repo(done.repository_id.unwrap()).await?.slug);
    }
    // A lease ends when the last reader of a mirror (the artifact build) lets it go: wait for the evictions.
    let on_disk = |slug: &str| env.git_root().join(slug).is_dir();
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_disk(&slugs[0]) || on_disk(&slugs[1]) {
        if Instant::now() > deadline {
            bail!("mirrors of A and B still cached: {:?}", std::fs::read_dir(env.git_root())?.collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_disk(&slugs[2]), "the most recently used mirror stays");
    assert!(metrics.git_cache_evictions.get() >= evictions + 2);
    assert!(metrics.git_cache_misses.get() >= misses + 3);

    // A's next sync is a miss: its mirror is cloned again and the sync succeeds.
    let again = env.wait_job(env.sync(&format!("A {}", env.id)).await?).await?;
    assert_eq!(again.status, "SUCCESS", "{:#?}", again.logs);
    assert!(metrics.git_cache_misses.get() >= misses + 4);
    // A is now the cached mirror: its next sync is a hit.
    let hit = env.wait_job(env.sync(&format!("A {}", env.id)).await?).await?;
    assert_eq!(hit.status, "SUCCESS");
    assert!(metrics.git_cache_hits.get() > hits);
    env.teardown().await
}
