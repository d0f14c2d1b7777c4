//! Test helpers: each test gets its own PostgreSQL schema, its own exchange and queue names, its own `GIT_ROOT`
//! and its own git remotes, so tests run in parallel against the real services and leave nothing behind.

pub mod git;
pub mod otlp;
pub mod process;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use deadpool_postgres::Pool;
use gitfleet_infra::amqp::{self, Topology};
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_infra::store::job_result::{self, JobResultView};
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_producer::commands::{self, NewRepo, Outcome};
use gitfleet_shared::event::RequestedBy;
use gitfleet_shared::job_result::JobStatus;
use gitfleet_worker::WorkerSettings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const DEADLINE: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One test's private slice of the services.
pub struct TestEnv {
    pub id: String,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub pool: Pool,
    pub tmp: tempfile::TempDir,
    /// Mirror size cap of the workers this env starts.
    pub max_mirror_bytes: u64,
    /// Mirror cache bound of the workers this env starts (none by default).
    pub git_cache_max_bytes: Option<u64>,
    /// TLS settings of the workers this env starts.
    pub ssl_no_verify: bool,
    pub ca_bundle: Option<PathBuf>,
    /// SSH host-key checking of the workers this env starts: the known_hosts file, or None for the opt-out.
    pub known_hosts: Option<PathBuf>,
    /// Shallow fetches (the default).
    pub shallow: bool,
    /// Heartbeat interval and reaper threshold of the workers this env starts.
    pub heartbeat_secs: u64,
    pub reap_after_secs: u64,
    /// How the workers this env starts report context data that does not match its schema.
    pub schema_enforcement: gitfleet_shared::loaders::SchemaEnforcement,
    /// Scope mode of the workers this env starts (strict, as Nautobot, unless a test sets lenient).
    pub scope_mode: gitfleet_worker::config::ScopeModeArg,
    /// Storage of the workers this env starts: the filesystem under the env's directory unless a test sets S3.
    pub storage: gitfleet_worker::storage::StorageSettings,
    /// Config context files the workers this env starts load at a time in a full load.
    pub load_batch_files: usize,
    components: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl TestEnv {
    pub async fn new() -> Result<Self> {
        Self::with_defer_delay(200).await
    }

    pub async fn with_defer_delay(defer_delay_ms: u32) -> Result<Self> {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = DatabaseSettings {
            url: env_or("GITFLEET_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gitfleet"),
            schema: format!("t_{id}"),
            pool_size: 8,
        };
        let amqp = AmqpSettings {
            url: env_or("GITFLEET_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/gitfleet"),
            prefix: format!("test.{id}"),
            delivery_limit: 3,
            defer_delay_ms,
            // Short, so a fault that does not pass ends dead-lettered within seconds.
            retry_delays: vec![1, 1],
        };
        let tmp = tempfile::tempdir()?;
        let storage = gitfleet_worker::storage::StorageSettings::from_vars([(
            "GITFLEET_STORAGE_ROOT".to_owned(),
            tmp.path().join("storage").display().to_string(),
        )])?;
        let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20))
            .await
            .context("PostgreSQL (run `make services`)")?;
        Ok(Self {
            id,
            database,
            amqp,
            pool,
            tmp,
            max_mirror_bytes: u64::MAX,
            git_cache_max_bytes: None,
            ssl_no_verify: false,
            ca_bundle: None,
            known_hosts: None,
            shallow: true,
            heartbeat_secs: 10,
            reap_after_secs: 60,
            schema_enforcement: gitfleet_shared::loaders::SchemaEnforcement::Warn,
            scope_mode: gitfleet_worker::config::ScopeModeArg::Strict,
            storage,
            load_batch_files: 500,
            components: Vec::new(),
        })
    }

    pub fn git_root(&self) -> PathBuf {
        self.tmp.path().join("git-root")
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.amqp)
    }

    pub fn worker_settings(&self, name: &str) -> WorkerSettings {
        WorkerSettings {
            database: self.database.clone(),
            amqp: self.amqp.clone(),
            metrics: Default::default(),
            git_root: Some(self.git_root()),
            prefetch: 4,
            name: Some(name.to_owned()),
            scope_mode: self.scope_mode,
            schema_enforcement: self.schema_enforcement,
            max_file_bytes: gitfleet_shared::yaml::Limits::default().max_bytes,
            max_document_bytes: gitfleet_shared::yaml::Limits::default().max_expanded_bytes,
            max_record_bytes: gitfleet_shared::yaml::Limits::default().max_record_bytes,
            max_load_bytes: gitfleet_shared::yaml::Limits::default().max_load_bytes,
            load_batch_files: self.load_batch_files,
            secrets_dir: Some(self.tmp.path().join("secrets")),
            max_mirror_bytes: self.max_mirror_bytes,
            git_cache_max_bytes: self.git_cache_max_bytes,
            git_timeout_secs: 30,
            git_ssl_no_verify: self.ssl_no_verify,
            git_ca_bundle: self.ca_bundle.clone(),
            ssh_known_hosts: self.known_hosts.clone(),
            ssh_strict_host_key_checking: self.known_hosts.is_some(),
            git_shallow: self.shallow,
            heartbeat_secs: self.heartbeat_secs,
            reap_after_secs: self.reap_after_secs,
            transient_retries: 3,
            shutdown_grace_secs: 10,
        }
    }

    /// Starts an in-process worker; it stops when the test env is torn down.
    pub fn start_worker(&mut self, name: &str) {
        self.start_worker_with(name, gitfleet_shared::loaders::Registry::with_builtins());
    }

    /// Starts an in-process worker with its own registry of data types (test-only extensions).
    pub fn start_worker_with(&mut self, name: &str, registry: gitfleet_shared::loaders::Registry) {
        let settings = self.worker_settings(name);
        let storage = self.storage.clone();
        // The groups as the worker binary reads them: the environment and the test's secrets directory.
        let secrets = gitfleet_worker::secrets::Secrets::from_env(settings.secrets_dir.as_deref())
            .expect("the test's secrets directory is readable");
        let token = CancellationToken::new();
        let child = token.clone();
        let handle = tokio::spawn(async move {
            let parts = gitfleet_worker::Parts { registry, storage, secrets };
            if let Err(err) = gitfleet_worker::run_with(settings, parts, child).await {
                eprintln!("worker failed: {err:#}");
            }
        });
        self.components.push((token, handle));
    }

    /// Starts an in-process outbox relay.
    pub fn start_relay(&mut self) {
        let (pool, database, amqp) = (self.pool.clone(), self.database.clone(), self.amqp.clone());
        let token = CancellationToken::new();
        let child = token.clone();
        let options =
            gitfleet_producer::relay::RelayOptions { poll_interval: Duration::from_millis(100), ..Default::default() };
        let handle = tokio::spawn(async move {
            if let Err(err) = gitfleet_producer::relay::run(pool, database, amqp, options, child).await {
                eprintln!("relay failed: {err:#}");
            }
        });
        self.components.push((token, handle));
    }

    /// Starts `producer serve` on a free loopback port; returns its base URL (`http://127.0.0.1:PORT`).
    pub async fn start_api(&mut self) -> Result<String> {
        let settings = gitfleet_producer::api::hooks::HookSettings {
            secrets_group: "webhooks".into(),
            secrets_dir: Some(self.tmp.path().join("secrets")),
            rate: 10_000,
        };
        self.start_api_with(settings).await
    }

    /// The same with the given webhook settings.
    pub async fn start_api_with(&mut self, hooks: gitfleet_producer::api::hooks::HookSettings) -> Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = gitfleet_producer::api::AppState::new(self.pool.clone(), hooks)?.with_broker(self.amqp.clone());
        let token = CancellationToken::new();
        let child = token.clone();
        let handle = tokio::spawn(async move {
            if let Err(err) = gitfleet_producer::api::run(listener, state, child).await {
                eprintln!("api failed: {err:#}");
            }
        });
        self.components.push((token, handle));
        Ok(base)
    }

    /// Starts `workers` workers and one relay.
    pub fn start_fleet(&mut self, workers: usize) {
        for n in 0..workers {
            self.start_worker(&format!("worker-{n}"));
        }
        self.start_relay();
    }

    pub async fn create(&self, name: &str, remote_url: &str, branch: &str) -> Result<Uuid> {
        let new = NewRepo {
            name: name.to_owned(),
            remote_url: remote_url.to_owned(),
            branch: Some(branch.to_owned()),
            ..NewRepo::default()
        };
        accepted(commands::create(&self.pool, new, RequestedBy::cli()).await?)
    }

    pub async fn sync(&self, name: &str) -> Result<Uuid> {
        accepted(
            commands::sync(&self.pool, name, gitfleet_shared::event::EventKind::Sync, None, RequestedBy::cli()).await?,
        )
    }

    pub async fn repo(&self, id: Uuid) -> Result<RepositoryRow> {
        let client = self.pool.get().await?;
        repository::find_by_id(&**client, id).await?.context("repository row")
    }

    /// The JobResult as it is now.
    pub async fn job(&self, id: Uuid) -> Result<JobResultView> {
        let client = self.pool.get().await?;
        job_result::load(&**client, id).await?.context("job result")
    }

    /// Waits (bounded) until the JobResult is terminal and returns it with its logs.
    pub async fn wait_job(&self, id: Uuid) -> Result<JobResultView> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let client = self.pool.get().await?;
            if let Some(view) = job_result::load(&**client, id).await?
                && view.status().is_some_and(JobStatus::is_terminal)
            {
                return Ok(view);
            }
            drop(client);
            if Instant::now() > deadline {
                bail!("JobResult {id} not terminal after {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every component, then drops the schema and the broker objects.
    pub async fn teardown(mut self) -> Result<()> {
        for (token, _) in &self.components {
            token.cancel();
        }
        for (_, handle) in self.components.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
        }
        let client = self.pool.get().await?;
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.database.schema)).await?;
        drop(client);
        self.pool.close();
        gitfleet_tests::delete_broker_objects(&self.amqp).await
    }
}

pub fn accepted(outcome: Outcome) -> Result<Uuid> {
    outcome.job_result_id().context("expected an accepted event")
}

/// Asserts a log entry with this level, grouping and message substring exists.
pub fn assert_log(view: &JobResultView, level: &str, grouping: &str, needle: &str) {
    let found = view.logs.iter().any(|l| l.level == level && l.grouping == grouping && l.message.contains(needle));
    assert!(found, "no {level}/{grouping} log containing {needle:?} in {:#?}", view.logs);
}

/// A free TCP port on loopback (bound, then released for a server to take).
/// Records the last event the outbox holds as a dead letter (reason "delivery limit reached"), as a worker does when
/// the broker dead-letters it; returns the event's id.
pub async fn dead_letter_last_event(env: &TestEnv) -> Result<Uuid> {
    let db = env.pool.get().await?;
    let payload: String = db.query_one("SELECT payload::text FROM outbox ORDER BY id DESC LIMIT 1", &[]).await?.get(0);
    let event_id: Uuid =
        serde_json::from_str::<serde_json::Value>(&payload)?["event_id"].as_str().context("event_id")?.parse()?;
    let headers = serde_json::json!({});
    let letter = gitfleet_infra::store::dead_letter::NewDeadLetter {
        event_id: Some(event_id),
        routing_key: "repo.sync",
        reason: "delivery limit reached",
        payload: payload.as_bytes(),
        headers: &headers,
    };
    anyhow::ensure!(gitfleet_infra::store::dead_letter::insert(&**db, &letter).await?, "already dead-lettered");
    Ok(event_id)
}

/// `value` percent-encoded as one URL path segment (unreserved characters kept).
pub fn path_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// Waits (bounded) until something accepts connections on the port.
pub async fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Incompressible text: `words` xorshift64 values as hex (16 characters each), the same for the same seed.
pub fn noise(seed: u64, words: usize) -> String {
    let mut x = seed;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect()
}

/// A loopback server that accepts connections and never answers (a hung remote or store). Returns its port; it
/// stops when the handle is aborted.
pub async fn silent_server() -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let handle = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((port, handle))
}

/// An exclusive queue bound to `exchange` with `repo.#`, and a consumer on it: what a test sees published there.
pub async fn tap(env: &TestEnv, exchange: &str) -> Result<(lapin::Connection, lapin::Consumer)> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = amqp::connect(&env.amqp, Duration::from_secs(5)).await?;
    let channel = connection.create_channel().await?;
    env.topology().declare(&channel).await?;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let tap = channel.queue_declare("".into(), exclusive, FieldTable::default()).await?;
    let name = tap.name().to_string();
    let bind = QueueBindOptions::default();
    channel.queue_bind(name.as_str().into(), exchange.into(), "repo.#".into(), bind, FieldTable::default()).await?;
    let consumer = channel
        .basic_consume(name.as_str().into(), "tap".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    Ok((connection, consumer))
}
