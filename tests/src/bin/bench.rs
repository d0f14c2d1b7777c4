//! `make bench`: the loader and sync benchmarks of the data-types issue, against the real services.
//!
//! A generated repository of 10,000 config context files, 1,000 schemas, 500 export templates and 200 job modules:
//! (1) the loaders alone, on one thread, in files per second; (2) a full sync of it through a real worker (fetch
//! from a loopback `git daemon`, load, store the files in the filesystem storage, reconcile into PostgreSQL),
//! publish to SUCCESS; (3) a re-sync of the same commit. Prints a Markdown table and, with `--write FILE`,
//! replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_infra::store::job_result;
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::{EventKind, RequestedBy};
use gitfleet_shared::job_result::JobStatus;
use gitfleet_shared::loaders::{LoadInput, Registry, ScopeMode};
use gitfleet_shared::yaml::Limits;
use gitfleet_tests::{git, git_daemon, write_section};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The worker runs in this process: with the allocator its binaries run with.
#[global_allocator]
static ALLOCATOR: gitfleet_worker::Allocator = gitfleet_worker::Allocator;

/// Config contexts in the generated repository: 10,000, or `GITFLEET_BENCH_CONTEXTS` to look at a larger one.
fn contexts() -> usize {
    std::env::var("GITFLEET_BENCH_CONTEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}
const SCHEMAS: usize = 1_000;
const TEMPLATES: usize = 500;
const JOB_MODULES: usize = 200;

fn generate(dir: &Path) -> Result<usize> {
    let mk = |p: &str| std::fs::create_dir_all(dir.join(p));
    mk("config_contexts")?;
    mk("config_context_schemas")?;
    mk("export_templates/dcim/device")?;
    mk("jobs")?;
    std::fs::write(dir.join("__init__.py"), "")?;
    std::fs::write(dir.join("jobs/__init__.py"), "")?;
    for n in 0..SCHEMAS {
        std::fs::write(
            dir.join(format!("config_context_schemas/schema_{n:04}.yaml")),
            format!(
                "_metadata:\n  name: \"Schema {n}\"\n  description: \"generated\"\ndata_schema:\n  type: object\n  \
                 properties:\n    ntp-servers:\n      type: array\n      items: {{type: string}}\n"
            ),
        )?;
    }
    for n in 0..contexts() {
        std::fs::write(
            dir.join(format!("config_contexts/context_{n:05}.yaml")),
            format!(
                "_metadata:\n  name: \"Context {n}\"\n  weight: {}\n  config_context_schema: \"Schema {}\"\n\
                 ntp-servers:\n  - \"10.0.{}.{}\"\n  - \"10.1.{}.{}\"\nsnmp:\n  community: public\n  enabled: yes\n",
                n % 2000,
                n % SCHEMAS,
                n / 256 % 256,
                n % 256,
                n / 256 % 256,
                n % 256
            ),
        )?;
    }
    for n in 0..TEMPLATES {
        std::fs::write(
            dir.join(format!("export_templates/dcim/device/template_{n:03}.j2")),
            format!("{{% for device in queryset %}}{{{{ device.name }}}},{n}\n{{% endfor %}}\n"),
        )?;
    }
    for n in 0..JOB_MODULES {
        std::fs::write(
            dir.join(format!("jobs/job_{n:03}.py")),
            format!(
                "from nautobot.apps.jobs import Job, register_jobs\n\nname = \"Generated\"\n\n\nclass Job{n}(Job):\n    \
                 class Meta:\n        name = \"Generated job {n}\"\n        description = \"Does thing {n}\"\n\n    \
                 def run(self):\n        self.logger.info(\"ok\")\n\n\nregister_jobs(Job{n})\n"
            ),
        )?;
    }
    Ok(contexts() + SCHEMAS + TEMPLATES + JOB_MODULES + 2)
}

/// Syncs the benchmark's repository and waits for the JobResult: the time from publish to its end, and the
/// JobResult, which must be SUCCESS (`what` names the run in the error otherwise).
async fn timed_sync(pool: &deadpool_postgres::Pool, what: &str) -> Result<(Duration, job_result::JobResultView)> {
    let started = Instant::now();
    let job = commands::sync(pool, "Bench", EventKind::Sync, None, RequestedBy::cli())
        .await?
        .job_result_id()
        .context("the sync was not accepted")?;
    let view = wait(pool, job).await?;
    let took = started.elapsed();
    if view.status != "SUCCESS" {
        let errors: Vec<_> = view.logs.iter().filter(|l| l.level == "error").take(5).collect();
        bail!("{what} failed: {errors:?}");
    }
    Ok((took, view))
}

async fn wait(pool: &deadpool_postgres::Pool, id: Uuid) -> Result<job_result::JobResultView> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let client = pool.get().await?;
        let status = job_result::status(&**client, id).await?;
        if status.is_some_and(JobStatus::is_terminal) {
            return job_result::load(&**client, id).await?.context("job result");
        }
        if Instant::now() > deadline {
            bail!("sync did not finish in 300 s");
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The worker's storage: a folder, or with `GITFLEET_BENCH_S3=1` the S3 server of `make services` (moto on
/// `GITFLEET_S3_PORT`, bucket `GITFLEET_BUCKET`), under a location of its own.
fn storage_vars(tmp: &std::path::Path, id: &str) -> Vec<(String, String)> {
    if std::env::var("GITFLEET_BENCH_S3").as_deref() != Ok("1") {
        return vec![("GITFLEET_STORAGE_ROOT".to_owned(), tmp.join("storage").display().to_string())];
    }
    gitfleet_tests::s3_vars(gitfleet_tests::s3_port(), &format!("bench-{id}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let write_to = std::env::args().skip_while(|a| a != "--write").nth(1);
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().join("work");
    let files = generate(&work)?;

    // (1) Loaders alone, one thread.
    let tree = gitfleet_worker::check::read_dir_tree(&work)?;
    let registry = Registry::with_builtins();
    let provided: Vec<String> = registry.types().map(|t| t.identifier().to_owned()).collect();
    let input = LoadInput {
        tree: &tree,
        repo_name: "Bench",
        slug: "bench",
        provided: &provided,
        inventory: None,
        scope_mode: ScopeMode::Strict,
        limits: Limits::default(),
        spent: Default::default(),
    };
    let runs = 3;
    let started = Instant::now();
    let mut loaded = None;
    for _ in 0..runs {
        loaded = Some(registry.load(&input));
    }
    let load_time = started.elapsed() / runs;
    let loaded = loaded.unwrap();
    assert!(!loaded.has_errors(), "generated repository must load cleanly");
    assert_eq!(loaded.config_contexts.len(), contexts());
    assert_eq!(loaded.jobs.len(), JOB_MODULES);
    let files_per_sec = files as f64 / load_time.as_secs_f64();
    // Where the time goes: each type alone.
    let mut breakdown = Vec::new();
    let read_started = Instant::now();
    let _ = gitfleet_worker::check::read_dir_tree(&work)?;
    breakdown.push(("reading the folder into a tree (not part of the loaders)".to_owned(), read_started.elapsed()));
    for data_type in registry.types() {
        let only = vec![data_type.identifier().to_owned()];
        let input = LoadInput { provided: &only, ..input.clone() };
        let started = Instant::now();
        let _ = registry.load(&input);
        breakdown.push((data_type.name().to_owned(), started.elapsed()));
    }

    // (2) A full sync through a real worker, from a loopback git daemon.
    git(&work, &["init", "-q", "-b", "main"])?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-qm", "generated"])?;
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    git(tmp.path(), &["clone", "-q", "--bare", work.to_str().unwrap(), served.join("bench.git").to_str().unwrap()])?;
    let (mut daemon, port) = git_daemon(&served)?;

    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let database = DatabaseSettings {
        url: std::env::var("GITFLEET_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/gitfleet".into()),
        schema: format!("bench_{id}"),
        pool_size: 8,
    };
    let amqp = AmqpSettings {
        url: std::env::var("GITFLEET_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/gitfleet".into()),
        prefix: format!("bench.{id}"),
        delivery_limit: 3,
        defer_delay_ms: 100,
        retry_delays: vec![1, 2, 4],
    };
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let shutdown = CancellationToken::new();
    let settings = gitfleet_worker::WorkerSettings {
        database: database.clone(),
        amqp: amqp.clone(),
        metrics: Default::default(),
        git_root: Some(tmp.path().join("git-root")),
        prefetch: 4,
        name: Some("bench-worker".into()),
        scope_mode: gitfleet_worker::config::ScopeModeArg::Strict,
        schema_enforcement: gitfleet_shared::loaders::SchemaEnforcement::Warn,
        max_file_bytes: Limits::default().max_bytes,
        max_document_bytes: Limits::default().max_expanded_bytes,
        max_record_bytes: Limits::default().max_record_bytes,
        max_load_bytes: Limits::default().max_load_bytes,
        load_batch_files: 500,
        secrets_dir: None,
        max_mirror_bytes: u64::MAX,
        git_cache_max_bytes: None,
        git_timeout_secs: 60,
        git_ssl_no_verify: false,
        git_ca_bundle: None,
        ssh_known_hosts: None,
        ssh_strict_host_key_checking: true,
        git_shallow: true,
        heartbeat_secs: 10,
        reap_after_secs: 60,
        transient_retries: 3,
        shutdown_grace_secs: 10,
    };
    let parts = gitfleet_worker::Parts {
        registry: Registry::with_builtins(),
        storage: gitfleet_worker::storage::StorageSettings::from_vars(storage_vars(tmp.path(), &id))?,
        secrets: gitfleet_worker::secrets::Secrets::default(),
    };
    let worker = tokio::spawn(gitfleet_worker::run_with(settings, parts, shutdown.clone()));
    let relay = gitfleet_tests::spawn_relay(&pool, &database, &amqp, &shutdown);
    gitfleet_tests::wait_for_consumer(&amqp).await?;

    let new = NewRepo {
        name: "Bench".into(),
        remote_url: format!("git://127.0.0.1:{port}/bench.git"),
        branch: Some("main".into()),
        provided_contents: provided.iter().filter(|p| p.starts_with("extras.")).cloned().collect(),
        ..NewRepo::default()
    };
    let started = Instant::now();
    let job = commands::create(&pool, new, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = wait(&pool, job).await?;
    let full_sync = started.elapsed();
    if view.status != "SUCCESS" {
        bail!("full sync failed: {:?}", view.logs.iter().filter(|l| l.level == "error").take(5).collect::<Vec<_>>());
    }
    // Where the full sync spent its time after the fetch, and whether date_done is when it was committed.
    let phases = view.result.as_ref().and_then(|r| r.get("phases_ms")).cloned().unwrap_or_default();
    let last_log = view.logs.iter().map(|l| l.created).max();
    eprintln!(
        "full sync phases (ms): {phases}; started {:?}, last log line {:?}, done {:?}",
        view.date_started, last_log, view.date_done
    );

    let mut resyncs = Vec::new();
    for _ in 0..5 {
        let (took, _) = timed_sync(&pool, "re-sync").await?;
        resyncs.push(took);
    }
    resyncs.sort();
    let resync = resyncs[resyncs.len() / 2];

    // One changed file, pushed to the served repository, then synced (median of 3).
    let mut changes = Vec::new();
    for round in 0..3 {
        let path = work.join("config_contexts/context_00000.yaml");
        let text = std::fs::read_to_string(&path)?;
        let (kept, _) = text.split_once("snmp:").unwrap_or((&text, ""));
        std::fs::write(&path, format!("{kept}snmp:\n  community: round-{round}\n  enabled: yes\n"))?;
        git(&work, &["commit", "-qam", "one file"])?;
        git(&work, &["push", "-q", &served.join("bench.git").display().to_string(), "main"])?;
        let (took, view) = timed_sync(&pool, "one-file sync").await?;
        changes.push(took);
        let phases = view.result.as_ref().and_then(|r| r.get("phases_ms")).cloned().unwrap_or_default();
        eprintln!("one-file change sync phases (ms): {phases}");
    }
    changes.sort();
    let change = changes[changes.len() / 2];

    shutdown.cancel();
    let _ = worker.await;
    let _ = relay.await;
    let _ = daemon.kill();
    let client = pool.get().await?;
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", database.schema)).await?;
    gitfleet_tests::delete_broker_objects(&amqp).await?;

    let profile = if cfg!(debug_assertions) { "debug build" } else { "optimized build" };
    let mut table = String::new();
    writeln!(table, "<!-- bench:data-types -->")?;
    writeln!(
        table,
        "Generated repository: {} config contexts, {SCHEMAS} schemas, {TEMPLATES} export templates, {JOB_MODULES} job modules ({files} files); {profile}, 2-core machine.\n",
        contexts()
    )?;
    writeln!(table, "| measure | result | target |")?;
    writeln!(table, "|---|---|---|")?;
    writeln!(
        table,
        "| loaders, one thread | {files_per_sec:.0} files/s ({:.0} ms per load) | >= 20,000 files/s |",
        load_time.as_secs_f64() * 1000.0
    )?;
    writeln!(
        table,
        "| full sync: publish to SUCCESS (git:// fetch, load, store the files, reconcile) | {:.2} s | < 10 s |",
        full_sync.as_secs_f64()
    )?;
    writeln!(
        table,
        "| re-sync of the unchanged commit (median of 5) | {:.0} ms | < 100 ms |",
        resync.as_secs_f64() * 1000.0
    )?;
    writeln!(
        table,
        "| sync of a one-file change, incremental (median of 3) | {:.0} ms | < 100 ms |",
        change.as_secs_f64() * 1000.0
    )?;
    writeln!(table, "\nOne load, by data type:\n")?;
    writeln!(table, "| part | time |")?;
    writeln!(table, "|---|---|")?;
    for (part, time) in &breakdown {
        writeln!(table, "| {part} | {:.0} ms |", time.as_secs_f64() * 1000.0)?;
    }
    writeln!(table, "<!-- /bench:data-types -->")?;
    print!("{table}");
    if let Some(path) = write_to {
        write_section(&path, "data-types", "Data types: load and sync", &table)?;
    }
    Ok(())
}
