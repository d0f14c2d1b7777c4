//! The chaos test (issue "fleet correctness"): three worker processes, a stream of create / update / sync / delete
//! events over several repositories while new commits are pushed; workers are SIGKILLed at random every few seconds
//! and restarted; RabbitMQ and PostgreSQL are each restarted once. Then it checks, and prints:
//! - every event has exactly one terminal JobResult (none left PENDING or STARTED);
//! - each live repository's config contexts equal the files at its branch head, under its final definition;
//! - deleted repositories own nothing; no record is duplicated or left without an owner;
//! - no two lock holdings of one repository overlapped (a holding without a release ends when its worker was
//!   killed or PostgreSQL restarted, whichever came first; one with no such end is counted as an overlap).
//!
//! With `GITFLEET_CHAOS_CLUSTER` set to the AMQP URLs of the three-node cluster of `make services-cluster`
//! (`make test-chaos-cluster`), the fleet runs on that cluster instead, and instead of restarting a broker it stops
//! node 1 mid-load, starts it again once syncs have completed while it was down, then does the same with node 2:
//! besides the checks above, syncs must keep completing while a node is down.
//!
//! It restarts the shared services, so it is its own test binary: `cargo test` runs binaries one after another,
//! never beside the integration tests. Size: `GITFLEET_CHAOS_EVENTS` (default 60) over `GITFLEET_CHAOS_REPOS`
//! (default 6); `make test-chaos` runs 300 over 30. `GITFLEET_CHAOS_SEED` repeats a run.
#![allow(clippy::unwrap_used, clippy::print_stderr, dead_code)]

#[path = "integration/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use gitfleet_producer::commands::{self, CommandError, NewRepo, RepoChanges};
use gitfleet_shared::event::{EventKind, RequestedBy};
use serde_json::Value;
use tokio::sync::Mutex;

use support::TestEnv;
use support::git::{Remote, git};
use support::process::WorkerProcess;

const WORKERS: usize = 3;

/// (worker name, when it was killed)
type Kills = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;
/// (repository, worker, acquired, released)
type Holding = (uuid::Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: enough randomness for choosing actions, repeatable from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn context(repo: usize, n: usize, value: u64) -> String {
    format!(
        r#"{{"_metadata": {{"name": "ctx-r{repo}-{n}", "weight": 1000}}, "repo": {repo}, "n": {n}, "value": {value}}}"#
    )
}

struct ChaosRepo {
    index: usize,
    remote: Remote,
    name: String,
    live: bool,
    branch: &'static str,
    next_file: usize,
}

/// Runs a producer command, retrying while PostgreSQL is away. `Ok(None)`: refused as invalid (a create whose name
/// is still held by a definition being deleted, or an earlier try that committed but lost its answer).
async fn command<F, Fut>(what: &str, mut run: F) -> Result<Option<uuid::Uuid>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<commands::Outcome, CommandError>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match run().await {
            Ok(outcome) => return Ok(outcome.job_result_id()),
            Err(CommandError::Invalid(errors)) => {
                eprintln!("{what}: refused ({errors:?})");
                return Ok(None);
            }
            Err(err) if Instant::now() < deadline => {
                eprintln!("{what}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => bail!("{what}: {err}"),
        }
    }
}

/// name -> data of the config contexts at `branch` of a bare repository.
fn contexts_at(bare: &Path, branch: &str) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    let files = git(bare, &["ls-tree", "-r", "--name-only", branch, "config_contexts"])?;
    for file in files.lines().filter(|l| !l.is_empty()) {
        let mut data: Value = serde_json::from_str(&git(bare, &["show", &format!("{branch}:{file}")])?)?;
        let name = data["_metadata"]["name"].as_str().unwrap().to_owned();
        data.as_object_mut().unwrap().remove("_metadata");
        out.insert(name, data);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos() -> Result<()> {
    let events = env_usize("GITFLEET_CHAOS_EVENTS", 60);
    let repo_count = env_usize("GITFLEET_CHAOS_REPOS", 6);
    let seed = std::env::var("GITFLEET_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64 | 1);
    eprintln!("chaos: {events} events over {repo_count} repositories, {WORKERS} workers, seed {seed}");
    let mut rng = Rng(seed);

    let mut env = TestEnv::with_defer_delay(200).await?;
    let cluster = std::env::var("GITFLEET_CHAOS_CLUSTER").ok().filter(|urls| !urls.is_empty());
    if let Some(urls) = &cluster {
        env.amqp.url = urls.clone();
    }
    env.amqp.delivery_limit = 20;
    // Outages (the broker and the database restart) last seconds: the retry schedule outlasts them.
    env.amqp.retry_delays = vec![1, 2, 4, 8, 16];
    env.heartbeat_secs = 1;
    env.reap_after_secs = 30;
    let provided = vec!["extras.configcontext".to_owned()];
    let mut repos = Vec::new();
    for index in 0..repo_count {
        let remote = Remote::new(env.tmp.path(), &format!("r{index}"))?;
        remote.commit("first", &[("config_contexts/c0.json", &context(index, 0, 0))])?;
        git(&remote.work, &["checkout", "-q", "-b", "alt"])?;
        remote.commit("alt", &[("config_contexts/alt.json", &context(index, 99, 0))])?;
        git(&remote.work, &["checkout", "-q", "main"])?;
        repos.push(ChaosRepo {
            index,
            remote,
            name: format!("Chaos {} r{index}", env.id),
            live: false,
            branch: "main",
            next_file: 1,
        });
    }
    env.start_relay();
    if cluster.is_some() {
        // The relay declared the topology: the work queue is a quorum queue with a replica on every node.
        let queue = env.topology().work;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = cluster_ctl(&["list_queues", "-p", "gitfleet", "name", "type", "members"]).await?;
            if let Some(line) = listed.lines().find(|l| l.split_whitespace().next() == Some(queue.as_str())) {
                assert!(line.contains("quorum"), "{line}");
                for node in 1..=3 {
                    assert!(line.contains(&format!("gitfleet-{node}@localhost")), "no replica on node {node}: {line}");
                }
                break;
            }
            assert!(Instant::now() < deadline, "the work queue {queue} was not declared: {listed}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let workers: Arc<Mutex<Vec<WorkerProcess>>> = Arc::new(Mutex::new(
        (0..WORKERS).map(|k| env.spawn_worker_process(&format!("w{k}-0"), &[])).collect::<Result<_>>()?,
    ));

    // The chaos: SIGKILL a random worker every 1.5 to 3.5 s and start a new one in its place.
    let kills: Kills = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (workers, kills, stop) = (workers.clone(), kills.clone(), stop.clone());
        let mut rng = Rng(seed.rotate_left(17) | 1);
        tokio::spawn(async move {
            let mut generation = 1;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1500 + rng.below(2000) as u64)).await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let k = rng.below(WORKERS);
                let mut workers = workers.lock().await;
                let victim = &mut workers[k];
                victim.kill();
                kills.lock().await.push((victim.name.clone(), Utc::now()));
                victim.name = format!("w{k}-{generation}");
                generation += 1;
            }
        })
    };

    let test_started = Utc::now();
    let mut restarts = Vec::new();
    let mut node_outages: Vec<NodeOutage> = Vec::new();
    let mut sent = Vec::new();
    let mut pushes = 0;
    for i in 0..events {
        // Replace killed workers (the chaos task only kills; respawning needs the env).
        respawn(&env, &workers).await?;
        // On a cluster: node 1 stops at a quarter of the events, starts again at half once syncs have completed
        // without it, then node 2 the same way from three quarters to the end.
        if cluster.is_some() {
            for (at, node) in [(events / 4, 1), (3 * events / 4, 2)] {
                if i == at {
                    eprintln!("chaos: stopping cluster node {node}");
                    node_outages.push(stop_node(node).await?);
                }
            }
            if i == events / 2 {
                restart_node(&env, &mut node_outages[0]).await?;
            }
        }
        // The restarts run beside the event stream: events keep coming while a service is down.
        if cluster.is_none() && i == events / 3 {
            eprintln!("chaos: restarting RabbitMQ");
            restarts.push(tokio::spawn(restart("restart-rabbitmq")));
        }
        if cluster.is_none() && i == 2 * events / 3 {
            eprintln!("chaos: restarting PostgreSQL");
            restarts.push(tokio::spawn(restart("restart-postgres")));
        }
        let r = rng.below(repos.len());
        let repo = &mut repos[r];
        let roll = rng.below(100);
        let id = if !repo.live {
            repo.live = true;
            repo.branch = "main";
            let new = NewRepo {
                name: repo.name.clone(),
                remote_url: repo.remote.file_url(),
                branch: Some("main".to_owned()),
                provided_contents: provided.clone(),
                ..NewRepo::default()
            };
            let id = command("create", || commands::create(&env.pool, new.clone(), RequestedBy::cli())).await?;
            // Refused: the name is still taken by a definition whose delete no worker has run yet.
            repo.live = id.is_some();
            id
        } else if roll < 50 {
            command("sync", || commands::sync(&env.pool, &repo.name, EventKind::Sync, None, RequestedBy::cli())).await?
        } else if roll < 65 {
            repo.branch = if repo.branch == "main" { "alt" } else { "main" };
            let changes = RepoChanges { branch: Some(repo.branch.to_owned()), ..RepoChanges::default() };
            command("update", || commands::update(&env.pool, &repo.name, changes.clone(), RequestedBy::cli())).await?
        } else if roll < 75 {
            repo.live = false;
            command("delete", || commands::delete(&env.pool, &repo.name, RequestedBy::cli())).await?
        } else {
            // A push to main (a new file, a changed one, or a removed one), then a sync as a webhook would send.
            let n = repo.next_file;
            repo.next_file += 1;
            let dir = repo.remote.work.join("config_contexts");
            if n % 3 == 0
                && let Some(old) =
                    std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).find(|p| !p.ends_with("c0.json"))
            {
                std::fs::remove_file(old)?;
            }
            repo.remote.commit(
                &format!("push {n}"),
                &[(&format!("config_contexts/c{n}.json"), &context(repo.index, n, rng.next() % 1000))],
            )?;
            pushes += 1;
            command("sync", || commands::sync(&env.pool, &repo.name, EventKind::Sync, None, RequestedBy::cli())).await?
        };
        sent.extend(id);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Every live repository ends with a sync of its final definition (as the next webhook would).
    for repo in repos.iter().filter(|r| r.live) {
        let id =
            command("final sync", || commands::sync(&env.pool, &repo.name, EventKind::Sync, None, RequestedBy::cli()))
                .await?;
        sent.extend(id);
    }
    for restarted in restarts {
        restarted.await??;
    }
    for outage in node_outages.iter_mut().filter(|o| o.completed_while_down.is_none()) {
        restart_node(&env, outage).await?;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = chaos.await;
    respawn(&env, &workers).await?;

    // Wait (bounded) until nothing is left unfinished.
    let deadline = Instant::now() + Duration::from_secs(300);
    let unfinished = loop {
        let open: i64 = match env.pool.get().await {
            Ok(client) => client
                .query_one("SELECT count(*) FROM job_result WHERE status NOT IN ('SUCCESS', 'FAILURE')", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1),
            Err(_) => -1,
        };
        if open == 0 || Instant::now() > deadline {
            break open;
        }
        respawn(&env, &workers).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let client = env.pool.get().await?;
    let statuses: Vec<(String, i64)> = client
        .query("SELECT status, count(*) FROM job_result GROUP BY status ORDER BY status", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let total: i64 = statuses.iter().map(|(_, n)| n).sum();
    let dead_letters: i64 = client.query_one("SELECT count(*) FROM dead_letter", &[]).await?.get(0);
    for row in
        client.query("SELECT event_kind, result->>'exc_message' FROM job_result WHERE status = 'FAILURE'", &[]).await?
    {
        let (kind, message): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        eprintln!("chaos: a {kind:?} event failed: {message:?}");
    }

    // Records of each live repository against the files at its branch head.
    let mut mismatched = Vec::new();
    let mut expected_total = 0;
    for row in client
        .query("SELECT id, name, branch, current_head, version, applied_version FROM git_repository WHERE deleted_at IS NULL", &[])
        .await?
    {
        let (id, name, branch): (uuid::Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
        let repo = repos.iter().find(|r| r.name == name).unwrap();
        let expected = contexts_at(&repo.remote.bare, &branch)?;
        expected_total += expected.len() as i64;
        let actual: BTreeMap<String, Value> = client
            .query("SELECT name, data FROM config_context WHERE owner_repository_id = $1", &[&id])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let head = git(&repo.remote.bare, &["rev-parse", &branch])?;
        let (current, version, applied): (String, i64, i64) = (row.get(3), row.get(4), row.get(5));
        if actual != expected || current != head || applied != version {
            eprintln!("chaos: {name} differs: head {current} vs {head}, version {applied}/{version}, records {actual:?} vs {expected:?}");
            mismatched.push(name);
        }
    }
    let orphans: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM config_context c WHERE c.owner_repository_id IS NULL
                        OR c.owner_repository_id IN (SELECT id FROM git_repository WHERE deleted_at IS NOT NULL))",
            &[],
        )
        .await?
        .get(0);
    let all_records: i64 = client.query_one("SELECT count(*) FROM config_context", &[]).await?.get(0);
    let duplicates = all_records - orphans - expected_total;

    // Lock holdings: no overlap per repository. PostgreSQL's own start time says when the restart cut every
    // connection (and so every lock) it held.
    let pg_started: DateTime<Utc> = client.query_one("SELECT pg_postmaster_start_time()", &[]).await?.get(0);
    let pg_restarted_at = Some(pg_started).filter(|t| *t > test_started);
    let kills = kills.lock().await.clone();
    let holdings: Vec<Holding> = client
        .query("SELECT repository_id, worker, acquired_at, released_at FROM sync_lock_log ORDER BY repository_id, acquired_at", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut overlaps = 0;
    let mut by_repo: HashMap<uuid::Uuid, Vec<_>> = HashMap::new();
    for h in &holdings {
        by_repo.entry(h.0).or_default().push(h);
    }
    for list in by_repo.values() {
        for pair in list.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let end = a.3.or_else(|| {
                let killed = kills.iter().filter(|(w, t)| *w == a.1 && *t >= a.2).map(|(_, t)| *t).min();
                let restarted = pg_restarted_at.filter(|t| *t >= a.2);
                [killed, restarted].into_iter().flatten().min()
            });
            match end {
                Some(end) if end <= b.2 => {}
                _ => {
                    eprintln!("chaos: holdings overlap: {a:?} then {b:?}");
                    overlaps += 1;
                }
            }
        }
    }

    let deleted_owning: i64 = client
        .query_one(
            "SELECT count(*) FROM config_context WHERE owner_repository_id IN
                 (SELECT id FROM git_repository WHERE deleted_at IS NOT NULL)",
            &[],
        )
        .await?
        .get(0);
    let outages = if cluster.is_some() {
        "cluster nodes 1 and 2 stopped in turn"
    } else {
        "RabbitMQ and PostgreSQL restarted once each"
    };
    eprintln!(
        "chaos: {} events sent ({total} JobResults: {statuses:?}), {pushes} pushes, {} kills, {outages}; unfinished {unfinished}, dead letters {dead_letters}, live repositories differing {}, \
         deleted repositories owning records {deleted_owning}, orphan records {orphans}, duplicate records \
         {duplicates}, overlapping lock holdings {overlaps} (of {})",
        sent.len(),
        kills.len(),
        mismatched.len(),
        holdings.len()
    );
    drop(client);
    workers.lock().await.clear();
    for outage in &node_outages {
        eprintln!("chaos: while node {} was down, {:?} syncs completed", outage.node, outage.completed_while_down);
        assert!(
            outage.completed_while_down.unwrap_or(0) > 0,
            "syncs keep completing while node {} is down",
            outage.node
        );
    }
    assert_eq!(unfinished, 0, "every event ends");
    assert!(total >= sent.len() as i64);
    assert!(mismatched.is_empty(), "live repositories differ: {mismatched:?}");
    assert_eq!(deleted_owning, 0);
    assert_eq!(orphans, 0);
    assert_eq!(duplicates, 0);
    assert_eq!(overlaps, 0);
    env.teardown().await
}

/// Starts a process in every slot whose worker is not running (killed by the chaos task).
async fn respawn(env: &TestEnv, workers: &Mutex<Vec<WorkerProcess>>) -> Result<()> {
    let mut workers = workers.lock().await;
    for slot in workers.iter_mut() {
        if !slot.is_running() {
            let name = slot.name.clone();
            *slot = env.spawn_worker_process(&name, &[])?;
        }
    }
    Ok(())
}

/// A cluster node stopped by the test: when, and how many syncs completed before it was started again.
struct NodeOutage {
    node: u8,
    since: DateTime<Utc>,
    completed_while_down: Option<i64>,
}

async fn cluster(args: Vec<String>) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh");
    let status =
        tokio::task::spawn_blocking(move || std::process::Command::new("bash").arg(script).args(&args).status())
            .await??;
    if !status.success() {
        bail!("rabbitmq-cluster.sh failed");
    }
    Ok(())
}

/// `rabbitmqctl` against the cluster's first node; its output.
async fn cluster_ctl(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl").args(["-q", "-n", "gitfleet-1@localhost"]).args(&args).output()
    })
    .await??;
    if !out.status.success() {
        bail!("rabbitmqctl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn stop_node(node: u8) -> Result<NodeOutage> {
    cluster(vec!["stop".into(), node.to_string()]).await?;
    Ok(NodeOutage { node, since: Utc::now(), completed_while_down: None })
}

/// Waits (bounded) until a sync has completed since the node stopped, then starts it again.
async fn restart_node(env: &TestEnv, outage: &mut NodeOutage) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let completed = loop {
        let client = env.pool.get().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM job_result WHERE status = 'SUCCESS' AND date_done > $1", &[&outage.since])
            .await?
            .get(0);
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    outage.completed_while_down = Some(completed);
    eprintln!("chaos: starting cluster node {} again ({completed} syncs completed without it)", outage.node);
    cluster(vec!["start".into(), outage.node.to_string()]).await
}

async fn restart(what: &'static str) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let status = tokio::task::spawn_blocking(move || std::process::Command::new("bash").arg(script).arg(what).status())
        .await??;
    if !status.success() {
        bail!("services.sh {what} failed");
    }
    Ok(())
}
