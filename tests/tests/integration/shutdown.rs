//! SIGTERM on a worker process (ARCHITECTURE 4.9): it stops consuming, lets the sync in flight finish within the
//! grace period, hands back what it cannot finish, and exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use uuid::Uuid;

use crate::support::TestEnv;
use crate::support::git::{Remote, delay_proxy, git_daemon};

async fn wait_status(env: &TestEnv, id: Uuid, status: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.job(id).await?.status != status {
        if Instant::now() > deadline {
            bail!("JobResult {id} never became {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_within_the_grace_period_and_exits_0() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "slow")?;
    let head = remote.commit("first", &[("README.md", "one")])?;
    let daemon = git_daemon(&served).await?;
    let delay = Arc::new(AtomicU64::new(2_000));
    let (port, proxy) = delay_proxy(daemon.port, delay.clone()).await?;
    let url = format!("git://127.0.0.1:{port}/slow.git");
    env.start_relay();

    // Grace 20 s: the 2-second fetch in flight finishes, and the worker exits 0.
    let mut worker = env.spawn_worker_process("graceful", &[("GITFLEET_SHUTDOWN_GRACE_SECS", "20".into())])?;
    let first = env.create(&format!("Slow {}", env.id), &url, "main").await?;
    wait_status(&env, first, "STARTED").await?;
    // The worker ran itself again with mimalloc's options (the same process: what SIGTERM reaches below).
    let environ = environ_of(worker.pid())?;
    for option in ["MIMALLOC_ARENA_EAGER_COMMIT=0", "MIMALLOC_PURGE_DELAY=0"] {
        assert!(environ.iter().any(|v| v == option), "{option} missing from {environ:?}");
    }
    worker.terminate()?;
    let second = env.create(&format!("Later {}", env.id), &url, "main").await?;
    let status = worker.wait_exit(Duration::from_secs(30))?.expect("the worker exits within the grace period");
    assert!(status.success(), "exit status {status:?}");
    let view = env.job(first).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], head.as_str());
    // It stopped consuming: the event sent after SIGTERM waits for another worker.
    assert_eq!(env.job(second).await?.status, "PENDING");

    // Grace 1 s with a fetch held for 60 s: the sync is handed back, the worker still exits 0, and the next worker
    // finishes the event.
    delay.store(60_000, Ordering::SeqCst);
    let mut impatient = env.spawn_worker_process(
        "impatient",
        &[("GITFLEET_SHUTDOWN_GRACE_SECS", "1".into()), ("MIMALLOC_PURGE_DELAY", "5".into())],
    )?;
    wait_status(&env, second, "STARTED").await?;
    // An option already set is kept; the other is added.
    let environ = environ_of(impatient.pid())?;
    assert!(environ.iter().any(|v| v == "MIMALLOC_PURGE_DELAY=5"), "{environ:?}");
    assert!(!environ.iter().any(|v| v == "MIMALLOC_PURGE_DELAY=0"), "{environ:?}");
    assert!(environ.iter().any(|v| v == "MIMALLOC_ARENA_EAGER_COMMIT=0"), "{environ:?}");
    let stopped = Instant::now();
    impatient.terminate()?;
    let status = impatient.wait_exit(Duration::from_secs(20))?.expect("the worker exits after its grace period");
    assert!(status.success(), "exit status {status:?}");
    assert!(stopped.elapsed() < Duration::from_secs(10), "it did not wait for the held fetch");
    assert_eq!(env.job(second).await?.status, "STARTED", "handed back, not ended");
    delay.store(0, Ordering::SeqCst);
    let _next = env.spawn_worker_process("next", &[])?;
    let view = env.wait_job(second).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    proxy.abort();
    drop(daemon);
    env.teardown().await
}

/// Events a worker was running when it was killed come back one at a time: each runs alone on the next worker, the
/// others wait in the delay queue instead of being held with it, so a second stop charges only the event that was
/// running. An event its workers stopped under as many times as the delivery limit is dead-lettered with that
/// reason; the others end SUCCESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_running_when_a_worker_dies_come_back_one_at_a_time() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.amqp.delivery_limit = 2;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let daemon = git_daemon(&served).await?;
    let delay = Arc::new(AtomicU64::new(60_000));
    let (port, proxy) = delay_proxy(daemon.port, delay.clone()).await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        Remote::new(&served, &format!("r{n}"))?.commit("first", &[("README.md", "one")])?;
        let url = format!("git://127.0.0.1:{port}/r{n}.git");
        ids.push(env.create(&format!("Held {n} {}", env.id), &url, "main").await?);
    }
    env.start_relay();

    // The first worker runs all three (each fetch held by the proxy), and is killed.
    let mut first = env.spawn_worker_process("first", &[])?;
    for id in &ids {
        wait_status(&env, *id, "STARTED").await?;
    }
    first.kill();

    // The next one runs one of them alone; the two others wait in the delay queue, PENDING, not held by it.
    let mut second = env.spawn_worker_process("second", &[])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let mut running = Vec::new();
        for id in &ids {
            let view = env.job(*id).await?;
            if view.status == "STARTED" && view.worker.as_deref().is_some_and(|w| w.starts_with("second")) {
                running.push(*id);
            }
        }
        if running.len() == 1 {
            // Give the others time to arrive, and check they are not held here.
            tokio::time::sleep(Duration::from_secs(2)).await;
            break running[0];
        }
        if Instant::now() > deadline {
            bail!("no event ran alone on the second worker");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in ids.iter().filter(|id| **id != running) {
        let view = env.job(*id).await?;
        assert_ne!(
            view.worker.as_deref().filter(|_| view.status == "STARTED").map(|w| w.starts_with("second")),
            Some(true),
            "an event ran beside the lone one"
        );
    }
    second.kill();

    // The third worker: the event running at both stops is dead-lettered (two stops, limit 2); the others succeed.
    delay.store(0, Ordering::SeqCst);
    let _third = env.spawn_worker_process("third", &[])?;
    let view = env.wait_job(running).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    let result = view.result.clone().unwrap();
    assert_eq!(result["exc_type"], "DeadLettered");
    assert!(result["exc_message"].as_str().unwrap().contains("the worker running it stopped 2 times"), "{result}");
    for id in ids.iter().filter(|id| **id != running) {
        let view = env.wait_job(*id).await?;
        assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    }
    proxy.abort();
    drop(daemon);
    env.teardown().await
}

/// The environment a running process has now (`/proc/PID/environ`).
fn environ_of(pid: u32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw.split(|b| *b == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned()).collect())
}
