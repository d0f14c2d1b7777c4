//! `make bench`, fleet part: events per second and latency from publish to terminal JobResult, with 1 and 2 worker
//! processes (the default prefetch 4, and one worker at prefetch 8 for its peak memory) against the real PostgreSQL and RabbitMQ and a loopback `git daemon`.
//!
//! 20 repositories of 50 config-context files each, every one with a chain of prepared commits. Runs, per fleet
//! size: (1) a new commit per event: the repository's branch is moved to its next commit, then a sync naming it is
//! sent, as fast as 4 senders can; (2) the same paced at half the rate (1) reached; (3) no-op re-syncs (nothing
//! changed on the remotes) as fast as possible; (4) those paced at half their rate. Latency is `date_done -
//! date_created` of each JobResult (the database clock, both ends). Peak memory is each worker process's VmHWM.
//! Prints a Markdown table and, with `--write FILE`, replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use deadpool_postgres::Pool;
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::{EventKind, RequestedBy};
use gitfleet_shared::repo::CommitId;
use gitfleet_tests::{git_daemon, write_section};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const REPOS: usize = 20;
const FILES: usize = 50;
const COMMITS: usize = 40;
const NEW_COMMIT_EVENTS: usize = 300;
const NOOP_EVENTS: usize = 1000;
/// The worker's default prefetch, used for the throughput and latency runs; the memory run uses 8.
const PREFETCH: u16 = 4;
const MEMORY_PREFETCH: u16 = 8;

fn context(repo: usize, file: usize, version: usize) -> String {
    format!(
        "_metadata:\n  name: \"bench-r{repo}-{file}\"\n  weight: 1000\nntp-servers:\n  - \"10.0.{repo}.{file}\"\nversion: {version}\n"
    )
}

/// A bare repository with `COMMITS` commits on `main` (the first adds every file, each later one changes one);
/// returns the commit ids oldest first, with `main` left at the first.
fn generate(bare: &Path, repo: usize) -> Result<Vec<String>> {
    let mut stream = Vec::new();
    for mark in 1..=COMMITS {
        write!(
            stream,
            "commit refs/heads/main\nmark :{mark}\ncommitter Bench <b@example.com> {} +0000\ndata 2\nc\n",
            1_700_000_000 + mark
        )?;
        if mark > 1 {
            writeln!(stream, "from :{}", mark - 1)?;
        }
        let files: Vec<usize> = if mark == 1 { (0..FILES).collect() } else { vec![mark % FILES] };
        for file in files {
            let body = context(repo, file, mark);
            write!(stream, "M 100644 inline config_contexts/c{file:03}.yaml\ndata {}\n{body}\n", body.len())?;
        }
    }
    gitfleet_tests::fast_import(bare, &stream)
}

/// Points `main` at `commit` by replacing the loose ref file atomically (what `git update-ref` does, without
/// starting a process per event, which would make the senders the bottleneck).
fn move_branch(bare: &Path, commit: &str) -> Result<()> {
    let tmp = bare.join("refs/heads/main.bench-tmp");
    std::fs::write(&tmp, format!("{commit}\n"))?;
    std::fs::rename(&tmp, bare.join("refs/heads/main"))?;
    Ok(())
}

struct Remote {
    name: String,
    bare: PathBuf,
    commits: Vec<String>,
    next: usize,
}

struct Fleet {
    pool: Pool,
    database: DatabaseSettings,
    amqp: AmqpSettings,
    workers: Vec<Child>,
    shutdown: CancellationToken,
    relay: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_fleet(size: usize, prefetch: u16, git_root: &Path) -> Result<Fleet> {
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let database = DatabaseSettings {
        url: std::env::var("GITFLEET_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/gitfleet".into()),
        schema: format!("bench_fleet_{id}"),
        pool_size: 16,
    };
    let amqp = AmqpSettings {
        url: std::env::var("GITFLEET_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/gitfleet".into()),
        prefix: format!("bench.{id}"),
        delivery_limit: 5,
        defer_delay_ms: 100,
        retry_delays: vec![1, 2, 4],
    };
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let exe = std::env::current_exe()?.with_file_name("fleet_worker");
    let mut workers = Vec::new();
    for n in 0..size {
        let child = Command::new(&exe)
            .env("GITFLEET_DATABASE_URL", &database.url)
            .env("GITFLEET_DATABASE_SCHEMA", &database.schema)
            .env("GITFLEET_AMQP_URL", &amqp.url)
            .env("GITFLEET_AMQP_PREFIX", &amqp.prefix)
            .env("GITFLEET_DEFER_DELAY_MS", "100")
            // The same retry queues as the relay's topology, so that the run deletes all of them at its end.
            .env("GITFLEET_RETRY_DELAYS", "1,2,4")
            .env("GITFLEET_PREFETCH", prefetch.to_string())
            .env("GITFLEET_GIT_ROOT", git_root.join(format!("{id}-{n}")))
            .env("GITFLEET_WORKER_NAME", format!("bench-{n}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} (cargo build --profile perf --bins first)", exe.display()))?;
        workers.push(child);
    }
    let shutdown = CancellationToken::new();
    let relay = gitfleet_tests::spawn_relay(&pool, &database, &amqp, &shutdown);
    Ok(Fleet { pool, database, amqp, workers, shutdown, relay })
}

impl Fleet {
    async fn stop(mut self) -> Result<Vec<u64>> {
        let peaks = self.workers.iter().map(|w| gitfleet_tests::peak_rss_kib(w.id())).collect();
        for worker in &mut self.workers {
            let _ = worker.kill();
            let _ = worker.wait();
        }
        self.shutdown.cancel();
        let _ = self.relay.await;
        let client = self.pool.get().await?;
        client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.database.schema)).await?;
        gitfleet_tests::delete_broker_objects(&self.amqp).await?;
        Ok(peaks)
    }
}

async fn wait_done(pool: &Pool, ids: &[Uuid], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let client = pool.get().await?;
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM job_result WHERE id = ANY($1) AND status IN ('SUCCESS', 'FAILURE')",
                &[&ids],
            )
            .await?
            .get(0);
        if done == ids.len() as i64 {
            let failed: i64 = client
                .query_one("SELECT count(*) FROM job_result WHERE id = ANY($1) AND status = 'FAILURE'", &[&ids])
                .await?
                .get(0);
            if failed > 0 {
                bail!("{failed} events failed");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} of {} events done after {limit:?}", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events per second over the run, p50 and p99 latency in ms, and how many of them fetched.
async fn measure(pool: &Pool, ids: &[Uuid]) -> Result<(f64, f64, f64, i64)> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*)::float8 / greatest(extract(epoch FROM max(date_done) - min(date_created)), 0.001),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM date_done - date_created)) * 1000,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM date_done - date_created)) * 1000,
                    count(*) FILTER (WHERE result->'coalesced' IS NULL)
             FROM job_result WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// Sends `count` syncs round-robin over the repositories from 4 senders, at most `rate` per second in all (None:
/// as fast as they go). `new_commit`: move the branch to its next prepared commit first and name it in the event.
async fn send(
    pool: &Pool,
    remotes: &Arc<Mutex<Vec<Remote>>>,
    count: usize,
    rate: Option<f64>,
    new_commit: bool,
) -> Result<Vec<Uuid>> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (pool, remotes, next) = (pool.clone(), remotes.clone(), next.clone());
        senders.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    return Ok::<_, anyhow::Error>(ids);
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let (name, target) = {
                    let mut remotes = remotes.lock().await;
                    let len = remotes.len();
                    let remote = &mut remotes[i % len];
                    let target = if new_commit {
                        remote.next = (remote.next + 1).min(remote.commits.len() - 1);
                        let commit = remote.commits[remote.next].clone();
                        move_branch(&remote.bare, &commit)?;
                        Some(CommitId::parse(commit)?)
                    } else {
                        None
                    };
                    (remote.name.clone(), target)
                };
                let outcome = commands::sync(&pool, &name, EventKind::Sync, target, RequestedBy::cli()).await?;
                ids.push(outcome.job_result_id().unwrap());
            }
        });
    }
    let mut ids = Vec::new();
    while let Some(sent) = senders.join_next().await {
        ids.extend(sent??);
    }
    Ok(ids)
}

struct Row {
    workers: usize,
    prefetch: u16,
    what: String,
    events: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    fetched: i64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let write_to = std::env::args().skip_while(|a| a != "--write").nth(1);
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let (mut daemon, port) = git_daemon(&served)?;

    let mut rows = Vec::new();
    let mut peaks = Vec::new();
    // (workers, prefetch): the two fleet sizes at the default prefetch, then one worker at prefetch 8 whose peak
    // memory is the figure the target names.
    for (size, prefetch) in [(1, PREFETCH), (2, PREFETCH), (1, MEMORY_PREFETCH)] {
        let mut remotes = Vec::new();
        for r in 0..REPOS {
            let bare = served.join(format!("w{size}p{prefetch}-r{r}.git"));
            let commits = generate(&bare, r)?;
            remotes.push(Remote { name: format!("Bench {size} p{prefetch} r{r}"), bare, commits, next: 0 });
        }
        let fleet = start_fleet(size, prefetch, &tmp.path().join("git-root")).await?;
        // Warm-up: the first sync of every repository (a clone), not measured.
        let mut ids = Vec::new();
        for (r, remote) in remotes.iter().enumerate() {
            let new = NewRepo {
                name: remote.name.clone(),
                remote_url: format!("git://127.0.0.1:{port}/w{size}p{prefetch}-r{r}.git"),
                branch: Some("main".into()),
                provided_contents: vec!["extras.configcontext".into()],
                ..NewRepo::default()
            };
            ids.push(commands::create(&fleet.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap());
        }
        wait_done(&fleet.pool, &ids, Duration::from_secs(120)).await?;
        let remotes = Arc::new(Mutex::new(remotes));

        for (what, count, new_commit) in
            [("sync, a new commit per event", NEW_COMMIT_EVENTS, true), ("no-op re-sync", NOOP_EVENTS, false)]
        {
            let ids = send(&fleet.pool, &remotes, count, None, new_commit).await?;
            wait_done(&fleet.pool, &ids, Duration::from_secs(300)).await?;
            let (rate, p50, p99, fetched) = measure(&fleet.pool, &ids).await?;
            rows.push(Row {
                workers: size,
                prefetch,
                what: format!("{what}, max rate"),
                events: count,
                rate,
                p50,
                p99,
                fetched,
            });
            // The same at half that rate.
            let half = count / 2;
            let ids = send(&fleet.pool, &remotes, half, Some(rate / 2.0), new_commit).await?;
            wait_done(&fleet.pool, &ids, Duration::from_secs(300)).await?;
            let (paced, p50, p99, fetched) = measure(&fleet.pool, &ids).await?;
            rows.push(Row {
                workers: size,
                prefetch,
                what: format!("{what}, paced at {:.0}/s", rate / 2.0),
                events: half,
                rate: paced,
                p50,
                p99,
                fetched,
            });
        }
        peaks.extend(fleet.stop().await?.into_iter().map(|kib| (prefetch, kib)));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();

    let profile = if cfg!(debug_assertions) { "debug build" } else { "optimized build" };
    let mut table = String::new();
    writeln!(table, "<!-- bench:fleet -->")?;
    writeln!(
        table,
        "{REPOS} repositories of {FILES} config-context files over git://, worker processes (prefetch as listed), relay \
         in the benchmark process; {profile}, 2-core machine (workers, PostgreSQL, RabbitMQ and the senders share it). \
         Latency: publish (JobResult created) to terminal JobResult. \"Fetched\": events that fetched (the others were \
         coalesced: superseded by a newer queued event for the same repository, or already covered by a fetch that \
         began after they were made).\n"
    )?;
    writeln!(
        table,
        "| workers | prefetch | load | events | events/s | p50 | p99 | fetched | fetch-and-load syncs/s |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|")?;
    for row in &rows {
        writeln!(
            table,
            "| {} | {} | {} | {} | {:.0} | {:.0} ms | {:.0} ms | {} | {:.0} |",
            row.workers,
            row.prefetch,
            row.what,
            row.events,
            row.rate,
            row.p50,
            row.p99,
            row.fetched,
            row.rate * row.fetched as f64 / row.events as f64
        )?;
    }
    let peak = peaks.iter().filter(|(p, _)| *p == MEMORY_PREFETCH).map(|(_, kib)| *kib).max().unwrap_or(0);
    writeln!(
        table,
        "\nPeak memory (VmHWM) of one worker process at prefetch {MEMORY_PREFETCH}, after the runs above: {:.1} MiB \
         (target < 150 MiB).",
        peak as f64 / 1024.0
    )?;
    writeln!(table, "<!-- /bench:fleet -->")?;
    print!("{table}");
    if let Some(path) = write_to {
        write_section(&path, "fleet", "Fleet: events per second, latency and memory", &table)?;
    }
    Ok(())
}
