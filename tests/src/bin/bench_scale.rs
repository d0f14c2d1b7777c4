//! `make bench`, scale-out part: syncs per second with 1, 2, 4 and 8 worker processes when the Git host is across
//! a network, and a scale-down from 8 to 2 workers by SIGTERM in the middle of the load.
//!
//! 200 repositories of 20 config-context files, each with a chain of prepared commits, served by a loopback
//! `git daemon` behind a proxy that delays every byte 50 ms each way (a 100 ms round trip, as a Git host in another
//! region). Each worker runs at prefetch 1, so the number of syncs in flight is the number of processes. Per fleet
//! size: the repositories are defined and cloned with the proxy's delay at 0 (not measured), then the delay is set
//! and every repository gets a new commit and a sync naming it (200 events). Syncs per second are the
//! events over the time from the first event's creation to the last one's end (database clock); the fetch time is
//! the JobResults' `phases_ms.fetch`; CPU is what the worker processes used. The mirror cache's hits and misses are
//! read from each worker's `/metrics`: with competing consumers a repository's next event reaches any worker.
//!
//! The scale-down run starts 8 workers (prefetch 2), sends 400 events at once (two per repository), and SIGTERMs 6 workers one by one
//! once a quarter of the events are done: every event must end SUCCESS, none may stay STARTED or PENDING, and every
//! stopped worker must exit 0 within its grace period (it finished or handed back what it held).
//! Prints a Markdown table and, with `--write FILE`, replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use deadpool_postgres::Pool;
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::{EventKind, RequestedBy};
use gitfleet_shared::repo::CommitId;
use gitfleet_tests::latency::LatencyProxy;
use gitfleet_tests::{git_daemon, write_section};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const REPOS: usize = 200;
const FILES: usize = 20;
const COMMITS: usize = 6;
/// Events per repository in the scale runs: one, so no event is coalesced with another and each is one sync.
const ROUNDS: usize = 1;
/// Events per repository in the scale-down run.
const DOWN_ROUNDS: usize = 2;
const ONE_WAY: Duration = Duration::from_millis(50);
const SIZES: [usize; 4] = [1, 2, 4, 8];

struct Remote {
    name: String,
    bare: PathBuf,
    commits: Vec<String>,
    next: usize,
}

struct Worker {
    child: Child,
    metrics: String,
}

struct Fleet {
    pool: Pool,
    database: DatabaseSettings,
    amqp: AmqpSettings,
    workers: Vec<Worker>,
    shutdown: CancellationToken,
    relay: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_fleet(size: usize, prefetch: u16, git_root: &Path, grace_secs: u64) -> Result<Fleet> {
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (database, amqp) = gitfleet_tests::bench_settings(&format!("bench_scale_{id}"), &id, 16);
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let exe = std::env::current_exe()?.with_file_name("fleet_worker");
    let mut workers = Vec::new();
    for n in 0..size {
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut command = Command::new(&exe);
        let git_root = git_root.join(format!("{id}-{n}"));
        gitfleet_tests::bench_worker_env(&mut command, &database, &amqp, &git_root, &format!("scale-{n}"));
        let child = command
            .env("GITFLEET_PREFETCH", prefetch.to_string())
            .env("GITFLEET_METRICS_ADDR", &metrics)
            .env("GITFLEET_SHUTDOWN_GRACE_SECS", grace_secs.to_string())
            .spawn()
            .with_context(|| format!("starting {} (cargo build --profile perf --bins first)", exe.display()))?;
        workers.push(Worker { child, metrics });
    }
    let shutdown = CancellationToken::new();
    let relay = gitfleet_tests::spawn_relay(&pool, &database, &amqp, &shutdown);
    Ok(Fleet { pool, database, amqp, workers, shutdown, relay })
}

impl Fleet {
    fn cpu_ms(&self) -> f64 {
        self.workers.iter().map(|w| gitfleet_tests::cpu_ms(w.child.id())).sum()
    }

    /// Cache hits and misses over the live workers, from their `/metrics`.
    async fn cache_counts(&self) -> Result<(f64, f64)> {
        let client = reqwest::Client::new();
        let (mut hits, mut misses) = (0.0, 0.0);
        for worker in &self.workers {
            let page = client.get(format!("http://{}/metrics", worker.metrics)).send().await?.text().await?;
            let value = |name: &str| {
                page.lines()
                    .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            hits += value("gitfleet_git_cache_hits_total");
            misses += value("gitfleet_git_cache_misses_total");
        }
        Ok((hits, misses))
    }

    async fn stop(mut self) -> Result<()> {
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
        self.shutdown.cancel();
        let _ = self.relay.await;
        let client = self.pool.get().await?;
        client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.database.schema)).await?;
        gitfleet_tests::delete_broker_objects(&self.amqp).await?;
        Ok(())
    }
}

/// Terminal counts of `ids`: (done, failed).
async fn progress(pool: &Pool, ids: &[Uuid]) -> Result<(i64, i64)> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status IN ('SUCCESS', 'FAILURE')), count(*) FILTER (WHERE status = 'FAILURE')
             FROM job_result WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn wait_done(pool: &Pool, ids: &[Uuid], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (done, failed) = progress(pool, ids).await?;
        if done == ids.len() as i64 {
            if failed > 0 {
                bail!("{failed} events failed");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} of {} events done after {limit:?}", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Syncs per second, mean and p50 of the fetch phase in ms.
async fn measure(pool: &Pool, ids: &[Uuid]) -> Result<(f64, f64, f64)> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*)::float8 / greatest(extract(epoch FROM max(date_done) - min(date_created)), 0.001),
                    coalesce(avg((result->'phases_ms'->>'fetch')::float8), 0),
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY (result->'phases_ms'->>'fetch')::float8), 0)
             FROM job_result WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Defines the repositories (through the proxy) and waits for their first syncs.
async fn define(pool: &Pool, remotes: &[Remote], port: u16) -> Result<()> {
    let mut ids = Vec::new();
    for remote in remotes {
        let file = remote.bare.file_name().and_then(|f| f.to_str()).context("bare name")?;
        let new = NewRepo {
            name: remote.name.clone(),
            remote_url: format!("git://127.0.0.1:{port}/{file}"),
            branch: Some("main".into()),
            provided_contents: vec!["extras.configcontext".into()],
            ..NewRepo::default()
        };
        ids.push(commands::create(pool, new, RequestedBy::cli()).await?.job_result_id().unwrap());
    }
    wait_done(pool, &ids, Duration::from_secs(300)).await
}

/// One new commit and a sync naming it per repository, `rounds` times over; returns the JobResult ids.
async fn push_round(pool: &Pool, remotes: &mut [Remote], rounds: usize) -> Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    for _ in 0..rounds {
        for remote in remotes.iter_mut() {
            remote.next = (remote.next + 1).min(remote.commits.len() - 1);
            let commit = remote.commits[remote.next].clone();
            gitfleet_tests::move_branch(&remote.bare, &commit)?;
            let target = Some(CommitId::parse(commit)?);
            let outcome = commands::sync(pool, &remote.name, EventKind::Sync, target, RequestedBy::cli()).await?;
            ids.push(outcome.job_result_id().unwrap());
        }
    }
    Ok(ids)
}

fn remotes(served: &Path, tag: &str) -> Result<Vec<Remote>> {
    (0..REPOS)
        .map(|r| {
            let bare = served.join(format!("{tag}-r{r}.git"));
            let commits = gitfleet_tests::context_chain(&bare, "scale", r, COMMITS, FILES)?;
            Ok(Remote { name: format!("Scale {tag} r{r}"), bare, commits, next: 0 })
        })
        .collect()
}

struct Row {
    workers: usize,
    per_second: f64,
    fetch_mean: f64,
    fetch_p50: f64,
    cpu_ms_per_sync: f64,
    hit_rate: f64,
}

async fn scale_run(size: usize, served: &Path, proxy: &LatencyProxy, git_root: &Path) -> Result<Row> {
    let tag = format!("s{size}");
    let mut remotes = remotes(served, &tag)?;
    let fleet = start_fleet(size, 1, git_root, 30).await?;
    proxy.set_delay(Duration::ZERO);
    define(&fleet.pool, &remotes, proxy.port).await?;
    let (hits0, misses0) = fleet.cache_counts().await?;
    let cpu0 = fleet.cpu_ms();
    proxy.set_delay(ONE_WAY);
    let ids = push_round(&fleet.pool, &mut remotes, ROUNDS).await?;
    wait_done(&fleet.pool, &ids, Duration::from_secs(600)).await?;
    let (per_second, fetch_mean, fetch_p50) = measure(&fleet.pool, &ids).await?;
    let cpu = fleet.cpu_ms() - cpu0;
    let (hits, misses) = fleet.cache_counts().await?;
    let (hits, misses) = (hits - hits0, misses - misses0);
    fleet.stop().await?;
    for remote in &remotes {
        let _ = std::fs::remove_dir_all(&remote.bare);
    }
    Ok(Row {
        workers: size,
        per_second,
        fetch_mean,
        fetch_p50,
        cpu_ms_per_sync: cpu / ids.len() as f64,
        hit_rate: if hits + misses > 0.0 { hits / (hits + misses) } else { 0.0 },
    })
}

struct ScaleDown {
    events: usize,
    succeeded: i64,
    failed: i64,
    stuck: i64,
    exits: Vec<(bool, f64)>,
    per_second: f64,
}

/// 8 workers, 400 events; 6 workers are sent SIGTERM once a quarter of the events are done.
async fn scale_down(served: &Path, proxy: &LatencyProxy, git_root: &Path) -> Result<ScaleDown> {
    let mut remotes = remotes(served, "down")?;
    let grace = 30;
    let mut fleet = start_fleet(8, 2, git_root, grace).await?;
    proxy.set_delay(Duration::ZERO);
    define(&fleet.pool, &remotes, proxy.port).await?;
    proxy.set_delay(ONE_WAY);
    let ids = push_round(&fleet.pool, &mut remotes, DOWN_ROUNDS).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while progress(&fleet.pool, &ids).await?.0 < (ids.len() / 4) as i64 {
        if Instant::now() > deadline {
            bail!("a quarter of the events not done after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stopping = Vec::new();
    for _ in 0..6 {
        let worker = fleet.workers.pop().context("a worker")?;
        let status = Command::new("kill").args(["-TERM", &worker.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        stopping.push((worker, Instant::now()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut exits = Vec::new();
    for (mut worker, since) in stopping {
        let limit = since + Duration::from_secs(grace + 10);
        loop {
            if let Some(status) = worker.child.try_wait()? {
                exits.push((status.success(), since.elapsed().as_secs_f64()));
                break;
            }
            if Instant::now() > limit {
                let _ = worker.child.kill();
                exits.push((false, since.elapsed().as_secs_f64()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let finished = wait_done(&fleet.pool, &ids, Duration::from_secs(600)).await;
    let client = fleet.pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'SUCCESS'), count(*) FILTER (WHERE status = 'FAILURE'),
                    count(*) FILTER (WHERE status NOT IN ('SUCCESS', 'FAILURE'))
             FROM job_result WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let (succeeded, failed, stuck): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    drop(client);
    let per_second = measure(&fleet.pool, &ids).await?.0;
    fleet.stop().await?;
    if let Err(err) = finished {
        bail!("the scale-down run did not end cleanly: {err} ({succeeded} succeeded, {failed} failed, {stuck} stuck)");
    }
    Ok(ScaleDown { events: ids.len(), succeeded, failed, stuck, exits, per_second })
}

#[tokio::main]
async fn main() -> Result<()> {
    let write_to = std::env::args().skip_while(|a| a != "--write").nth(1);
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let (mut daemon, daemon_port) = git_daemon(&served)?;
    let proxy = LatencyProxy::start(daemon_port, ONE_WAY).await?;
    let git_root = tmp.path().join("git-root");

    let mut rows = Vec::new();
    for size in SIZES {
        let row = scale_run(size, &served, &proxy, &git_root).await?;
        eprintln!("[bench_scale] {size} workers: {:.1} syncs/s", row.per_second);
        rows.push(row);
    }
    let down = scale_down(&served, &proxy, &git_root).await?;
    let _ = daemon.kill();
    let _ = daemon.wait();

    let mut table = String::from("<!-- bench:scale -->\n");
    writeln!(
        table,
        "Optimized build, {REPOS} repositories of {FILES} config contexts behind a proxy adding {} ms each way ({} ms \
         round trip) in front of `git daemon`; worker processes at prefetch 1; {} events (a new commit and a sync \
         naming it, {ROUNDS} per repository) per fleet size.\n",
        ONE_WAY.as_millis(),
        ONE_WAY.as_millis() * 2,
        REPOS * ROUNDS
    )?;
    table.push_str(
        "| workers | syncs/s | speed-up | fetch mean ms | fetch p50 ms | worker CPU ms per sync | mirror cache hits |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let base = rows[0].per_second;
    for r in &rows {
        writeln!(
            table,
            "| {} | {:.1} | {:.2}x | {:.0} | {:.0} | {:.1} | {:.0}% |",
            r.workers,
            r.per_second,
            r.per_second / base,
            r.fetch_mean,
            r.fetch_p50,
            r.cpu_ms_per_sync,
            r.hit_rate * 100.0
        )?;
    }
    let clean = down.exits.iter().filter(|(ok, _)| *ok).count();
    let slowest = down.exits.iter().map(|(_, s)| *s).fold(0.0, f64::max);
    writeln!(
        table,
        "\nScale-down: 8 workers (prefetch 2), {} events; 6 workers sent SIGTERM one by one once a quarter were done. \
         {} ended SUCCESS, {} FAILURE, {} left unfinished; {clean} of 6 stopped workers exited 0, the slowest {slowest:.1} s \
         after its SIGTERM; {:.1} syncs/s over the run.",
        down.events, down.succeeded, down.failed, down.stuck, down.per_second
    )?;
    table.push_str("<!-- /bench:scale -->\n");
    print!("{table}");
    std::io::stdout().flush()?;
    if let Some(path) = write_to {
        write_section(&path, "scale", "Scale-out across a network", &table)?;
    }
    if down.failed > 0 || down.stuck > 0 || clean < 6 {
        bail!("the scale-down lost or cut off work");
    }
    Ok(())
}
