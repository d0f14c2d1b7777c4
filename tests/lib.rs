//! What the benchmarks (`src/bin/bench*.rs`) share: running git, generating repositories with `git fast-import`,
//! a loopback `git daemon`, the relay, waiting for a worker to consume, a process's peak memory, and rewriting
//! their section of `BENCHMARKS.md`. The integration tests live in `tests/integration/` with their own support module.

#[path = "src/latency.rs"]
pub mod latency;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Runs git in `dir` (with a fixed identity for commits) and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.net")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.net")
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `git daemon` serving every repository under `base` on a free loopback port, once it accepts connections.
pub fn git_daemon(base: &Path) -> Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(git_daemon_program()?)
        .args(["--listen=127.0.0.1", &format!("--port={port}"), "--export-all", "--reuseaddr"])
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("git daemon did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port))
}

/// The `git-daemon` program itself: `git daemon` runs it as a child of its own, which killing `git` leaves behind
/// still listening.
pub fn git_daemon_program() -> Result<std::path::PathBuf> {
    let out = Command::new("git").arg("--exec-path").output()?;
    anyhow::ensure!(out.status.success(), "git --exec-path failed");
    Ok(std::path::PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("git-daemon"))
}

/// Replaces the `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->` section of `path` with `table` (which carries the
/// markers), or appends it under `title` when the file has none yet.
pub fn write_section(path: &str, name: &str, title: &str, table: &str) -> Result<()> {
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let current = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_owned());
    let updated = match (current.find(&open), current.find(&close)) {
        (Some(a), Some(b)) => format!("{}{}{}", &current[..a], table.trim_end(), &current[b + close.len()..]),
        _ => format!("{}\n\n## {title}\n\n{}", current.trim_end(), table),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

/// Waits (bounded, 30 s) until some worker consumes the work queue of `amqp`: benchmarks measure syncs, not
/// start-up, and an event published before the worker declared its queue would have nowhere to go.
pub async fn wait_for_consumer(amqp: &gitfleet_infra::settings::AmqpSettings) -> Result<()> {
    let connection = gitfleet_infra::amqp::connect(amqp, Duration::from_secs(10)).await?;
    let mut channel = connection.create_channel().await?;
    let queue = gitfleet_infra::amqp::Topology::new(amqp).work;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(queue.as_str().into(), passive, lapin::types::FieldTable::default()).await;
        match declared {
            Ok(q) if q.consumer_count() > 0 => break,
            Ok(_) => {}
            // Not declared yet: a failed passive declare closes the channel, so open another.
            Err(_) => channel = connection.create_channel().await?,
        }
        if Instant::now() > deadline {
            bail!("no worker consumed {queue} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = connection.close(200, "ready".into()).await;
    Ok(())
}

/// Deletes the queues and exchanges of `amqp`'s prefix (a test's or a benchmark's own), so that runs leave nothing
/// on the broker.
pub async fn delete_broker_objects(amqp: &gitfleet_infra::settings::AmqpSettings) -> Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connection = gitfleet_infra::amqp::connect(amqp, Duration::from_secs(5)).await?;
    let channel = connection.create_channel().await?;
    let t = gitfleet_infra::amqp::Topology::new(amqp);
    let retry_queues: Vec<String> = t.retry_delays.iter().map(|&s| t.retry_queue(s)).collect();
    for queue in [&t.work, &t.dead, &t.delay].into_iter().chain(&retry_queues) {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in [&t.events, &t.dead_exchange, &t.notifications] {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Initialises a bare repository at `bare` and imports `stream` (a `git fast-import` stream of commits on `main`);
/// returns the commit ids oldest first, with `main` left at the first.
pub fn fast_import(bare: &Path, stream: &[u8]) -> Result<Vec<String>> {
    use std::io::Write as _;
    let parent = bare.parent().unwrap_or(Path::new("."));
    git(parent, &["init", "-q", "--bare", "-b", "main", &bare.display().to_string()])?;
    let mut child =
        Command::new("git").args(["fast-import", "--quiet"]).current_dir(bare).stdin(Stdio::piped()).spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(stream)?;
    }
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    let commits: Vec<String> = git(bare, &["rev-list", "--reverse", "main"])?.lines().map(str::to_owned).collect();
    let Some(first) = commits.first() else { bail!("git fast-import made no commit") };
    git(bare, &["update-ref", "refs/heads/main", first])?;
    Ok(commits)
}

/// The peak resident memory (VmHWM) of a process, in KiB; 0 when it cannot be read.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A benchmark run's own schema and queue prefix (`bench.<id>`) on the services of `make services`, or on those the
/// `GITFLEET_DATABASE_URL` and `GITFLEET_AMQP_URL` variables name.
pub fn bench_settings(
    schema: &str,
    id: &str,
    pool_size: usize,
) -> (gitfleet_infra::settings::DatabaseSettings, gitfleet_infra::settings::AmqpSettings) {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let database = gitfleet_infra::settings::DatabaseSettings {
        url: var("GITFLEET_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gitfleet"),
        schema: schema.to_owned(),
        pool_size,
    };
    let amqp = gitfleet_infra::settings::AmqpSettings {
        url: var("GITFLEET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/gitfleet"),
        prefix: format!("bench.{id}"),
        delivery_limit: 5,
        defer_delay_ms: 100,
        retry_delays: vec![1, 2, 4],
    };
    (database, amqp)
}

/// Sets the environment a benchmark's worker process runs with: the run's database and queues, the relay's retry
/// queues (so that the run deletes all of them at its end), its own mirror folder and name, warnings only.
pub fn bench_worker_env<'a>(
    command: &'a mut Command,
    database: &gitfleet_infra::settings::DatabaseSettings,
    amqp: &gitfleet_infra::settings::AmqpSettings,
    git_root: &Path,
    name: &str,
) -> &'a mut Command {
    command
        .env("GITFLEET_DATABASE_URL", &database.url)
        .env("GITFLEET_DATABASE_SCHEMA", &database.schema)
        .env("GITFLEET_AMQP_URL", &amqp.url)
        .env("GITFLEET_AMQP_PREFIX", &amqp.prefix)
        .env("GITFLEET_DEFER_DELAY_MS", amqp.defer_delay_ms.to_string())
        .env("GITFLEET_RETRY_DELAYS", amqp.retry_delays.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .env("GITFLEET_GIT_ROOT", git_root)
        .env("GITFLEET_WORKER_NAME", name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
}

/// User and system CPU time a process has spent so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    gitfleet_infra::metrics::cpu_seconds(pid) * 1000.0
}

/// Runs the relay in this process, polling the outbox every 20 ms, until `shutdown`.
pub fn spawn_relay(
    pool: &deadpool_postgres::Pool,
    database: &gitfleet_infra::settings::DatabaseSettings,
    amqp: &gitfleet_infra::settings::AmqpSettings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    let options =
        gitfleet_producer::relay::RelayOptions { poll_interval: Duration::from_millis(20), ..Default::default() };
    tokio::spawn(gitfleet_producer::relay::run(pool.clone(), database.clone(), amqp.clone(), options, shutdown.clone()))
}

/// The worker's variables for the S3 server of `make services` (moto, bucket `GITFLEET_BUCKET`) at `port`, under
/// `location`.
pub fn s3_vars(port: u16, location: &str) -> Vec<(String, String)> {
    let bucket = std::env::var("GITFLEET_BUCKET").unwrap_or_else(|_| "gitfleet".to_owned());
    [
        ("AWS_STORAGE_BUCKET_NAME", bucket),
        ("AWS_LOCATION", location.to_owned()),
        ("AWS_S3_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_S3_REGION_NAME", "us-east-1".to_owned()),
        ("AWS_S3_ADDRESSING_STYLE", "path".to_owned()),
        ("AWS_S3_ACCESS_KEY_ID", "bench".to_owned()),
        ("AWS_S3_SECRET_ACCESS_KEY", "bench".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The S3 server's port: `GITFLEET_S3_PORT`, else 5000.
pub fn s3_port() -> u16 {
    std::env::var("GITFLEET_S3_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5000)
}

/// A config context of the generated benchmark repositories: `tag` names them apart, `version` changes the data.
fn bench_context(tag: &str, repo: usize, file: usize, version: usize) -> String {
    format!(
        "_metadata:\n  name: \"{tag}-r{repo}-{file}\"\n  weight: 1000\nntp-servers:\n  - \"10.0.{repo}.{file}\"\nversion: {version}\n"
    )
}

/// A bare repository with `commits` commits on `main`: the first adds `files` config contexts, each later one
/// changes one of them. Returns the commit ids oldest first, with `main` left at the first.
pub fn context_chain(bare: &Path, tag: &str, repo: usize, commits: usize, files: usize) -> Result<Vec<String>> {
    use std::fmt::Write as _;
    let mut stream = String::new();
    for mark in 1..=commits {
        write!(
            stream,
            "commit refs/heads/main\nmark :{mark}\ncommitter Bench <b@example.com> {} +0000\ndata 2\nc\n",
            1_700_000_000 + mark
        )?;
        if mark > 1 {
            writeln!(stream, "from :{}", mark - 1)?;
        }
        let changed: Vec<usize> = if mark == 1 { (0..files).collect() } else { vec![mark % files] };
        for file in changed {
            let body = bench_context(tag, repo, file, mark);
            write!(stream, "M 100644 inline config_contexts/c{file:03}.yaml\ndata {}\n{body}\n", body.len())?;
        }
    }
    fast_import(bare, stream.as_bytes())
}

/// Points `main` at `commit` by replacing the loose ref file atomically (what `git update-ref` does, without
/// starting a process per event, which would make the senders the bottleneck).
pub fn move_branch(bare: &Path, commit: &str) -> Result<()> {
    let tmp = bare.join("refs/heads/main.bench-tmp");
    std::fs::write(&tmp, format!("{commit}\n"))?;
    std::fs::rename(&tmp, bare.join("refs/heads/main"))?;
    Ok(())
}
