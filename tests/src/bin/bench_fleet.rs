//! `make bench`, fleet part: events per second and latency from publish to terminal JobResult, with 1 and 2 worker
//! processes (the default prefetch 4, and one worker at prefetch 8 for its peak memory) against the real PostgreSQL and RabbitMQ and a loopback `git daemon`.
//!
//! 20 repositories of 50 config-context files each, every one with a chain of prepared commits. Runs, per fleet
//! size: (1) a new commit per event: the repository's branch is moved to its next commit, then a sync naming it is
//! sent, as fast as 4 senders can; (2) the same paced at half the rate (1) reached; (3) no-op re-syncs (nothing
//! changed on the remotes) as fast as possible; (4) those paced at half their rate. Latency is `date_done -
//! date_created` of each JobResult (the database clock, both ends). Peak memory is each worker process's VmHWM.
//! Then the cost of tracing (1 worker, alternating runs with tracing off and exporting to a loopback OTLP receiver)
//! and the time of a `/metrics` scrape of a worker and of a relay facing 10,000 repositories.
//! Prints a Markdown table and, with `--write FILE`, replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
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

async fn start_fleet(size: usize, prefetch: u16, git_root: &Path, extra: &[(&str, String)]) -> Result<Fleet> {
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (database, amqp) = gitfleet_tests::bench_settings(&format!("bench_fleet_{id}"), &id, 16);
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let exe = std::env::current_exe()?.with_file_name("fleet_worker");
    let mut workers = Vec::new();
    for n in 0..size {
        let mut command = Command::new(&exe);
        command.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let git_root = git_root.join(format!("{id}-{n}"));
        gitfleet_tests::bench_worker_env(&mut command, &database, &amqp, &git_root, &format!("bench-{n}"));
        let child = command
            .env("GITFLEET_PREFETCH", prefetch.to_string())
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
                        gitfleet_tests::move_branch(&remote.bare, &commit)?;
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

/// `REPOS` repositories with their prepared commits, named `<tag>-r<n>.git`.
fn remotes(served: &Path, tag: &str) -> Result<Vec<Remote>> {
    let mut remotes = Vec::new();
    for r in 0..REPOS {
        let bare = served.join(format!("{tag}-r{r}.git"));
        let commits = gitfleet_tests::context_chain(&bare, "bench", r, COMMITS, FILES)?;
        remotes.push(Remote { name: format!("Bench {tag} r{r}"), bare, commits, next: 0 });
    }
    Ok(remotes)
}

/// Defines the repositories and waits for their first syncs (a clone each), which are not measured.
async fn warm_up(fleet: &Fleet, remotes: Vec<Remote>, port: u16) -> Result<Arc<Mutex<Vec<Remote>>>> {
    let mut ids = Vec::new();
    for remote in &remotes {
        let file = remote.bare.file_name().and_then(|f| f.to_str()).context("bare name")?;
        let new = NewRepo {
            name: remote.name.clone(),
            remote_url: format!("git://127.0.0.1:{port}/{file}"),
            branch: Some("main".into()),
            provided_contents: vec!["extras.configcontext".into()],
            ..NewRepo::default()
        };
        ids.push(commands::create(&fleet.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap());
    }
    wait_done(&fleet.pool, &ids, Duration::from_secs(120)).await?;
    Ok(Arc::new(Mutex::new(remotes)))
}

/// Scrapes of `/metrics` timed in each measurement.
const SCRAPES: usize = 100;
/// Rounds of the tracing comparison (each: a run with tracing off, then one exporting).
const TRACING_ROUNDS: usize = 3;

/// Fetch-and-load syncs per second and worker CPU per event, with tracing off and exporting to a loopback OTLP
/// receiver, over alternating rounds (the machine's noise moves both alike); and the worker's scrape time.
struct TracingCost {
    /// (traced, syncs per second, worker CPU ms per event) per run.
    runs: Vec<(bool, f64, f64)>,
    spans_bytes: u64,
    scrape_ms: (f64, f64, usize),
}

async fn tracing_cost(served: &Path, port: u16, git_root: &Path) -> Result<TracingCost> {
    let (endpoint, received) = otlp_sink().await?;
    let mut runs = Vec::new();
    let mut scrape_ms = (0.0, 0.0, 0);
    for round in 0..TRACING_ROUNDS {
        for traced in [false, true] {
            let remotes = remotes(served, &format!("t{round}{}", if traced { "on" } else { "off" }))?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            let mut extra = vec![("GITFLEET_METRICS_ADDR", addr.clone())];
            if traced {
                extra.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
            }
            let fleet = start_fleet(1, PREFETCH, git_root, &extra).await?;
            let remotes = warm_up(&fleet, remotes, port).await?;
            let cpu = gitfleet_tests::cpu_ms(fleet.workers[0].id());
            let ids = send(&fleet.pool, &remotes, NEW_COMMIT_EVENTS, None, true).await?;
            wait_done(&fleet.pool, &ids, Duration::from_secs(300)).await?;
            let cpu = gitfleet_tests::cpu_ms(fleet.workers[0].id()) - cpu;
            let (rate, _, _, fetched) = measure(&fleet.pool, &ids).await?;
            runs.push((traced, rate * fetched as f64 / ids.len() as f64, cpu / ids.len() as f64));
            if traced && round == TRACING_ROUNDS - 1 {
                scrape_ms = time_scrapes(&addr).await?;
            }
            fleet.stop().await?;
        }
    }
    let spans_bytes = received.load(std::sync::atomic::Ordering::SeqCst);
    Ok(TracingCost { runs, spans_bytes, scrape_ms })
}

impl TracingCost {
    fn write(&self, table: &mut String) -> Result<()> {
        let median = |traced: bool, pick: fn(&(bool, f64, f64)) -> f64| {
            let mut v: Vec<f64> = self.runs.iter().filter(|r| r.0 == traced).map(pick).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let (off, on) = (median(false, |r| r.1), median(true, |r| r.1));
        let (cpu_off, cpu_on) = (median(false, |r| r.2), median(true, |r| r.2));
        let each: Vec<String> =
            self.runs.iter().map(|(t, s, c)| format!("{} {s:.0}/s {c:.2} ms", if *t { "on" } else { "off" })).collect();
        writeln!(
            table,
            "\nTracing: 1 worker, prefetch {PREFETCH}, a new commit per event at the maximum rate, {TRACING_ROUNDS} \
             rounds alternating tracing off and on (spans exported over OTLP/HTTP to a receiver on loopback, \
             {:.1} MiB of spans received). Fetch-and-load syncs per second, median: {off:.0} off, {on:.0} on \
             ({:+.1}%; target: a cost under 5%); worker CPU per event, median: {cpu_off:.2} ms off, {cpu_on:.2} ms on \
             ({:+.1}%). Each run: {}.",
            self.spans_bytes as f64 / 1_048_576.0,
            (on - off) / off * 100.0,
            (cpu_on - cpu_off) / cpu_off * 100.0,
            each.join(", ")
        )?;
        writeln!(
            table,
            "\nThe worker's `/metrics` after those syncs: median {:.2} ms, slowest {:.2} ms of {SCRAPES} scrapes, {} \
             bytes.",
            self.scrape_ms.0, self.scrape_ms.1, self.scrape_ms.2
        )?;
        Ok(())
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An OTLP/HTTP receiver on loopback that accepts every export and counts its bytes.
async fn otlp_sink() -> Result<(String, Arc<std::sync::atomic::AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            counter.fetch_add(body.len() as u64, std::sync::atomic::Ordering::SeqCst);
            async { "" }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((endpoint, received))
}

/// Median and slowest of `SCRAPES` scrapes of `addr`'s `/metrics`, in ms, and the page's size.
async fn time_scrapes(addr: &str) -> Result<(f64, f64, usize)> {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..SCRAPES {
        let started = Instant::now();
        let page = client.get(format!("http://{addr}/metrics")).send().await?.error_for_status()?.text().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        size = page.len();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1], size))
}

/// The relay's scrape with `repositories` defined and as many JobResults waiting (no worker runs): the gauges it
/// reads from PostgreSQL and the broker at each scrape face a fleet of that size.
async fn relay_scrape(repositories: usize) -> Result<(f64, f64, usize)> {
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (database, amqp) = gitfleet_tests::bench_settings(&format!("bench_scrape_{id}"), &id, 8);
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (pool, next) = (pool.clone(), next.clone());
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= repositories {
                    return Ok::<_, anyhow::Error>(());
                }
                let new = NewRepo {
                    name: format!("Scrape {i}"),
                    remote_url: format!("git://127.0.0.1:9/scrape-{i}.git"),
                    ..NewRepo::default()
                };
                commands::create(&pool, new, RequestedBy::cli()).await?;
            }
        });
    }
    while let Some(done) = creators.join_next().await {
        done??;
    }
    let addr = format!("127.0.0.1:{}", free_port()?);
    let shutdown = CancellationToken::new();
    let options = gitfleet_producer::relay::RelayOptions {
        poll_interval: Duration::from_millis(20),
        metrics_addr: Some(addr.parse()?),
        ..Default::default()
    };
    let relay = tokio::spawn(gitfleet_producer::relay::run(
        pool.clone(),
        database.clone(),
        amqp.clone(),
        options,
        shutdown.clone(),
    ));
    // Every row published: the work queue holds them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let client = pool.get().await?;
        let left: i64 = client.query_one("SELECT count(*) FROM outbox WHERE published_at IS NULL", &[]).await?.get(0);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} outbox rows still unpublished");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let timed = time_scrapes(&addr).await?;
    shutdown.cancel();
    let _ = relay.await;
    let client = pool.get().await?;
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", database.schema)).await?;
    gitfleet_tests::delete_broker_objects(&amqp).await?;
    Ok(timed)
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
        let remotes = remotes(&served, &format!("w{size}p{prefetch}"))?;
        let fleet = start_fleet(size, prefetch, &tmp.path().join("git-root"), &[]).await?;
        let remotes = warm_up(&fleet, remotes, port).await?;

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
    let tracing = tracing_cost(&served, port, &tmp.path().join("git-root")).await?;
    let relay_scrape = relay_scrape(10_000).await?;
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
    tracing.write(&mut table)?;
    writeln!(
        table,
        "\nThe relay's `/metrics` with 10,000 repositories defined, 10,000 JobResults waiting and 10,000 messages on \
         the work queue (its gauges are read from PostgreSQL and the broker at each scrape): median {:.1} ms, slowest \
         {:.1} ms of {SCRAPES} scrapes, {} bytes (target < 10 ms). No label names a repository or a commit, so the \
         worker's page has the same series for any number of repositories.",
        relay_scrape.0, relay_scrape.1, relay_scrape.2
    )?;
    writeln!(table, "<!-- /bench:fleet -->")?;
    print!("{table}");
    if let Some(path) = write_to {
        write_section(&path, "fleet", "Fleet: events per second, latency and memory", &table)?;
    }
    Ok(())
}
