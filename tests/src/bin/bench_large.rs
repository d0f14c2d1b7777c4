//! `make bench`: syncs of large repositories (the large-repository issue). Generated repositories of config
//! context files (10,000 and 100,000 by default, `GITFLEET_BENCH_LARGE_SIZES`), served by a loopback `git daemon`,
//! synced by one worker process (so its peak memory is its own) against the real PostgreSQL and RabbitMQ, with
//! filesystem storage, and at 10,000 files (`GITFLEET_BENCH_LARGE_S3_SIZE`) again against the S3 server of
//! `make services` directly and behind a loopback proxy that adds 20 ms to every request, as a real region would.
//! Another S3 server: `GITFLEET_S3_PORT` (its credentials are `bench`/`bench`) and `GITFLEET_BENCH_S3_SERVER`, the
//! name the tables give it.
//!
//! Per run: the first sync, unchanged re-syncs, one-file changes (incremental), and a full load of the same
//! commit (a definition change makes the sync load every file), each timed from the JobResult's start to its end
//! (the database clock) and from publish to SUCCESS; where each sync spent its time (`result.phases_ms`); how long
//! after the first sync its artifact was named in `current.json`; the worker's peak memory (VmHWM).
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitfleet_producer::commands::{self, NewRepo, RepoChanges};
use gitfleet_shared::event::{EventKind, RequestedBy};
use gitfleet_tests::{git, git_daemon, write_section};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const NAME: &str = "Large";
const CHANGES: usize = 3;
const RESYNCS: usize = 5;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn context(n: usize, round: usize) -> String {
    format!(
        "_metadata:\n  name: \"Context {n}\"\n  weight: {}\nntp-servers:\n  - \"10.0.{}.{}\"\n  - \"10.1.{}.{}\"\n\
         snmp:\n  community: round-{round}\n  enabled: yes\nsyslog:\n  - host: \"192.0.2.{}\"\n    port: 514\n",
        n % 2000,
        n / 256 % 256,
        n % 256,
        n / 256 % 256,
        n % 256,
        n % 250
    )
}

/// A bare repository with `files` config contexts in its first commit, then one commit per one-file change.
/// Returns the commits, oldest first; `main` points at the first.
fn generate(bare: &Path, files: usize) -> Result<Vec<String>> {
    let mut stream = Vec::new();
    for mark in 1..=CHANGES + 1 {
        write!(stream, "commit refs/heads/main\nmark :{mark}\ncommitter Bench <bench@example.com> {mark} +0000\n")?;
        write!(stream, "data 6\nbench\n")?;
        if mark > 1 {
            writeln!(stream, "from :{}", mark - 1)?;
        }
        let changed: Vec<usize> = if mark == 1 { (0..files).collect() } else { vec![0] };
        for n in changed {
            let body = context(n, mark);
            write!(stream, "M 100644 inline config_contexts/context_{n:06}.yaml\ndata {}\n{body}\n", body.len())?;
        }
    }
    gitfleet_tests::fast_import(bare, &stream)
}

/// A TCP proxy on loopback that holds each request 20 ms (or `delay`) before passing it on: the first bytes a
/// client sends after the server last answered start a request.
async fn latency_proxy(upstream: u16, delay: Duration) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let answered = Arc::new(AtomicBool::new(true));
                let requests = {
                    let answered = answered.clone();
                    async move {
                        let mut buf = vec![0; 64 * 1024];
                        loop {
                            let n = client_read.read(&mut buf).await?;
                            if n == 0 {
                                return server_write.shutdown().await;
                            }
                            if answered.swap(false, Ordering::SeqCst) {
                                tokio::time::sleep(delay).await;
                            }
                            server_write.write_all(&buf[..n]).await?;
                        }
                    }
                };
                let responses = async move {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = server_read.read(&mut buf).await?;
                        if n == 0 {
                            return client_write.shutdown().await;
                        }
                        answered.store(true, Ordering::SeqCst);
                        client_write.write_all(&buf[..n]).await?;
                    }
                };
                let _: (std::io::Result<()>, std::io::Result<()>) = tokio::join!(requests, responses);
            });
        }
    });
    Ok(port)
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Filesystem,
    S3,
    S3Slow,
}

impl Store {
    /// The store as the tables name it; the S3 server is `make services`' unless `GITFLEET_BENCH_S3_SERVER` names
    /// another one (served at `GITFLEET_S3_PORT`).
    fn describe(self) -> String {
        let server = var("GITFLEET_BENCH_S3_SERVER", "moto on loopback");
        match self {
            Self::Filesystem => "filesystem".to_owned(),
            Self::S3 => format!("S3 ({server})"),
            Self::S3Slow => format!("S3 ({server}) + 20 ms per request"),
        }
    }
}

/// The worker's storage variables for a run.
async fn storage_vars(store: Store, root: &Path, id: &str) -> Result<Vec<(String, String)>> {
    if store == Store::Filesystem {
        return Ok(vec![("GITFLEET_STORAGE_ROOT".to_owned(), root.join("storage").display().to_string())]);
    }
    let mut port = gitfleet_tests::s3_port();
    if store == Store::S3Slow {
        port = latency_proxy(port, Duration::from_millis(20)).await?;
    }
    Ok(gitfleet_tests::s3_vars(port, &format!("bench-large-{id}")))
}

/// One sync, measured.
#[derive(Debug, Clone, Default)]
struct Timed {
    /// From the JobResult's start to its end, on the database clock.
    job: Duration,
    /// From publish to SUCCESS, seen by a client polling the database.
    wall: Duration,
    phases: Value,
    incremental: bool,
}

/// Waits (bounded) for the JobResult to end SUCCESS, and reads its times without its log. The poll itself only
/// reads the JobResult's row by its key: the machine has two cores, and a poll that scanned the growing log every
/// few milliseconds would take the database's time from the sync it measures. The log is asked once, at the end,
/// whether the sync was incremental.
async fn wait(pool: &deadpool_postgres::Pool, id: Uuid, started: Instant) -> Result<Timed> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let client = pool.get().await?;
        let row = client
            .query_opt(
                "SELECT status, (EXTRACT(EPOCH FROM date_done - date_started) * 1000)::float8, result
                   FROM job_result WHERE id = $1",
                &[&id],
            )
            .await?;
        if let Some(row) = row {
            let status: String = row.get(0);
            match status.as_str() {
                "SUCCESS" => {
                    let wall = started.elapsed();
                    let result: Option<Value> = row.get(2);
                    let incremental = client
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM job_log_entry WHERE job_result_id = $1
                                               AND message LIKE 'Incremental load:%')",
                            &[&id],
                        )
                        .await?
                        .get(0);
                    return Ok(Timed {
                        job: Duration::from_secs_f64(row.get::<_, Option<f64>>(1).unwrap_or(0.0) / 1000.0),
                        wall,
                        phases: result.map(|r| r["phases_ms"].clone()).unwrap_or_default(),
                        incremental,
                    });
                }
                "FAILURE" => {
                    let errors = client
                        .query(
                            "SELECT message FROM job_log_entry WHERE job_result_id = $1 AND log_level = 'error' LIMIT 5",
                            &[&id],
                        )
                        .await?;
                    let errors: Vec<String> = errors.iter().map(|r| r.get(0)).collect();
                    bail!("sync {id} failed: {errors:?}");
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("sync {id} did not finish in 600 s");
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn median(mut runs: Vec<Timed>) -> Timed {
    runs.sort_by_key(|t| t.job);
    runs[runs.len() / 2].clone()
}

/// A child process killed when dropped, whatever ends the run.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    files: usize,
    store: Store,
    first: Timed,
    artifact_after: Option<Duration>,
    resync: Timed,
    change: Timed,
    full: Timed,
    peak_kib: u64,
}

/// Waits (bounded) until the default store's pointer names an artifact; returns how long that took.
async fn artifact_named(vars: &[(String, String)], slug: &str) -> Result<Option<Duration>> {
    let settings = gitfleet_worker::storage::StorageSettings::from_vars(vars.to_vec())?;
    let storage = gitfleet_worker::storage::Storage::new(settings).await;
    let store = storage.settings.default.clone();
    let key = format!("{}/{}/{slug}/current.json", store.location, store.upload_to).trim_start_matches('/').to_owned();
    let backend = storage.backend(&store);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        let current: Value = serde_json::from_slice(&backend.get(&key).await?.unwrap_or_default()).unwrap_or_default();
        if current["artifact"].is_string() {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

async fn run(files: usize, store: Store, tmp: &Path, worker_exe: &Path) -> Result<Run> {
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let root = tmp.join(format!("run-{id}"));
    let served = root.join("served");
    std::fs::create_dir_all(&served)?;
    let generating = Instant::now();
    let commits = generate(&served.join("large.git"), files)?;
    eprintln!("[{} files, {}] generated in {:.1?}", files, store.describe(), generating.elapsed());
    let (daemon, port) = git_daemon(&served)?;
    let daemon = Killed(daemon);

    let (database, amqp) = gitfleet_tests::bench_settings(&format!("bench_large_{id}"), &id, 8);
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let vars = storage_vars(store, &root, &id).await?;
    // `GITFLEET_BENCH_WORKER_WRAPPER="heaptrack -o /tmp/worker"` runs the worker under a profiler (its peak memory
    // then reads the wrapper's process).
    let wrapper = std::env::var("GITFLEET_BENCH_WORKER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(worker_exe);
            command
        }
        None => Command::new(worker_exe),
    };
    gitfleet_tests::bench_worker_env(&mut command, &database, &amqp, &root.join("git-root"), "bench-large");
    let started = command.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).spawn();
    let worker = Killed(
        started
            .with_context(|| format!("starting {} (cargo build --profile perf --bins first)", worker_exe.display()))?,
    );
    let shutdown = CancellationToken::new();
    let relay = gitfleet_tests::spawn_relay(&pool, &database, &amqp, &shutdown);

    gitfleet_tests::wait_for_consumer(&amqp).await?;
    let new = NewRepo {
        name: NAME.into(),
        slug: Some("large".into()),
        remote_url: format!("git://127.0.0.1:{port}/large.git"),
        branch: Some("main".into()),
        provided_contents: vec!["extras.configcontext".into()],
        ..NewRepo::default()
    };
    let started = Instant::now();
    let job = commands::create(&pool, new, RequestedBy::cli()).await?.job_result_id().context("accepted")?;
    let first = wait(&pool, job, started).await?;
    eprintln!("  first sync {:.2?} (job {:.2?}), phases {}", first.wall, first.job, first.phases);
    let artifact_after = artifact_named(&vars, "large").await?;

    let sync = |pool: deadpool_postgres::Pool| async move {
        let started = Instant::now();
        let job = commands::sync(&pool, NAME, EventKind::Sync, None, RequestedBy::cli())
            .await?
            .job_result_id()
            .context("accepted")?;
        wait(&pool, job, started).await
    };
    let mut resyncs = Vec::new();
    for _ in 0..RESYNCS {
        resyncs.push(sync(pool.clone()).await?);
    }
    let mut changes = Vec::new();
    for commit in &commits[1..] {
        git(&served.join("large.git"), &["update-ref", "refs/heads/main", commit])?;
        let timed = sync(pool.clone()).await?;
        eprintln!("  one-file change {:.0?} (job {:.0?}), phases {}", timed.wall, timed.job, timed.phases);
        if !timed.incremental {
            bail!("the one-file change was not loaded incrementally");
        }
        changes.push(timed);
    }
    // The same commit loaded in full: a definition change makes the sync load every file.
    let started = Instant::now();
    let changes_def = RepoChanges { git_timeout_secs: Some(Some(600)), ..RepoChanges::default() };
    let job =
        commands::update(&pool, NAME, changes_def, RequestedBy::cli()).await?.job_result_id().context("accepted")?;
    let full = wait(&pool, job, started).await?;
    eprintln!("  full load of the same commit {:.2?} (job {:.2?}), phases {}", full.wall, full.job, full.phases);
    if full.incremental {
        bail!("the definition change did not load every file");
    }

    let peak_kib = gitfleet_tests::peak_rss_kib(worker.0.id());
    drop(worker);
    shutdown.cancel();
    let _ = relay.await;
    drop(daemon);
    pool.get().await?.batch_execute(&format!("DROP SCHEMA {} CASCADE", database.schema)).await?;
    gitfleet_tests::delete_broker_objects(&amqp).await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(Run { files, store, first, artifact_after, resync: median(resyncs), change: median(changes), full, peak_kib })
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

fn sizes(name: &str, default: &str) -> Vec<usize> {
    var(name, default).split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let write_to = std::env::args().skip_while(|a| a != "--write").nth(1);
    let tmp = tempfile::tempdir()?;
    let worker_exe: PathBuf = std::env::current_exe()?.with_file_name("fleet_worker");
    let mut plan: Vec<(usize, Store)> =
        sizes("GITFLEET_BENCH_LARGE_SIZES", "10000,100000").into_iter().map(|n| (n, Store::Filesystem)).collect();
    for n in sizes("GITFLEET_BENCH_LARGE_S3_SIZE", "10000") {
        plan.push((n, Store::S3));
        plan.push((n, Store::S3Slow));
    }
    let mut runs = Vec::new();
    for (files, store) in plan {
        runs.push(run(files, store, tmp.path(), &worker_exe).await?);
    }

    let profile = if cfg!(debug_assertions) { "debug build" } else { "optimized build" };
    // `GITFLEET_BENCH_SECTION` names the section of BENCHMARKS.md the table replaces (`make bench-s3s-fs` writes its
    // own beside the main one).
    let section = var("GITFLEET_BENCH_SECTION", "large");
    let mut table = String::new();
    writeln!(table, "<!-- bench:{section} -->")?;
    writeln!(
        table,
        "Generated repositories of config context files (one commit, then {CHANGES} commits changing one file each), \
         one worker process, {profile}, 2-core machine. Times are from the JobResult's start to its end (database \
         clock); publish to SUCCESS in brackets. Re-sync: median of {RESYNCS}; one-file change: median of {CHANGES}. \
         Full load: the same commit after a definition change, which loads every file.\n"
    )?;
    writeln!(
        table,
        "| files | storage | first sync (target < 10 s; S3 < 15 s) | one-file change (< 100 ms; S3 < 200 ms) | \
         unchanged re-sync (< 30 ms) | full load, same commit | artifact named after | worker peak memory (< 256 MiB) |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|---|")?;
    for r in &runs {
        writeln!(
            table,
            "| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} ({}) | {} | {:.0} MiB |",
            r.files,
            r.store.describe(),
            ms(r.first.job),
            ms(r.first.wall),
            ms(r.change.job),
            ms(r.change.wall),
            ms(r.resync.job),
            ms(r.resync.wall),
            ms(r.full.job),
            ms(r.full.wall),
            r.artifact_after.map_or("not within 300 s".to_owned(), ms),
            r.peak_kib as f64 / 1024.0
        )?;
    }
    writeln!(
        table,
        "\nWhere the time goes (`phases_ms` of the JobResult; the `storage: ...` phases run beside the load, \
         reconcile and log, on their own clock, and `storage (after the records)` is what the sync waited for them \
         after its records were written; the commit is the rest):\n"
    )?;
    writeln!(table, "| files | storage | sync | phases (ms) |")?;
    writeln!(table, "|---|---|---|---|")?;
    for r in &runs {
        for (what, timed) in [("first", &r.first), ("one-file change", &r.change), ("full load", &r.full)] {
            let phases = timed
                .phases
                .as_object()
                .map(|o| o.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
            writeln!(table, "| {} | {} | {what} | {} |", r.files, r.store.describe(), phases.unwrap_or_default())?;
        }
    }
    writeln!(table, "<!-- /bench:{section} -->")?;
    print!("{table}");
    if let Some(path) = write_to {
        write_section(&path, &section, "Large repositories: a push costs what it changed", &table)?;
    }
    Ok(())
}
