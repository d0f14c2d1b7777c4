//! `make bench`, polling part: 10,000 repositories on a 1-minute `sync_interval`, served by a loopback `git daemon`,
//! one relay (its scheduler in this process) and two worker processes.
//!
//! The repositories are defined directly in PostgreSQL as a fleet would be after its first syncs (each live at its
//! remote's tip, next poll spread over the first interval): what is measured is the polling, not 10,000 clones.
//! All but one point at one bare repository through symbolic links (`git daemon` serves each path); the last has a
//! remote of its own, pushed to during the run. Measured: how late each repository's poll is against its interval
//! (sampled every 5 s over two intervals: a repository last polled longer ago than the interval is late by the
//! difference), when the pushed commit went live, and the CPU of the workers and of `git daemon` with the
//! `upload-pack` processes it starts, per 1,000 repositories and minute.
//! Prints a Markdown section and, with `--write FILE`, replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gitfleet_tests::{git_daemon, write_section};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const INTERVAL_SECS: i32 = 60;
const WORKERS: usize = 2;

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").current_dir(dir).args(args).output()?;
    anyhow::ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A bare repository with one commit; returns its tip.
fn bare_with_commit(work: &Path, bare: &Path, content: &str) -> Result<String> {
    std::fs::create_dir_all(work)?;
    git(work, &["init", "-q", "-b", "main"])?;
    std::fs::write(work.join("README.md"), content)?;
    git(work, &["add", "-A"])?;
    git(work, &["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "first"])?;
    git(
        work.parent().context("parent")?,
        &["clone", "-q", "--bare", work.to_str().context("path")?, bare.to_str().context("path")?],
    )?;
    git(work, &["rev-parse", "HEAD"])
}

/// CPU seconds of a process and of its children it has reaped (`git daemon`'s `upload-pack` processes).
fn cpu_with_children(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect())
        .unwrap_or_default();
    // utime, stime, cutime, cstime: fields 14 to 17 of the line, in 1/100 s.
    (11..15).filter_map(|i| fields.get(i)).sum::<f64>() / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let write_to = std::env::args().skip_while(|a| a != "--write").nth(1);
    let repositories: usize =
        std::env::var("GITFLEET_BENCH_POLL_REPOSITORIES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let tip = bare_with_commit(&tmp.path().join("base-work"), &served.join("base.git"), "base")?;
    for i in 1..repositories {
        std::os::unix::fs::symlink(served.join("base.git"), served.join(format!("r{i}.git")))?;
    }
    let pushed_work = tmp.path().join("pushed-work");
    let pushed_tip = bare_with_commit(&pushed_work, &served.join("r0.git"), "pushed")?;
    git(&pushed_work, &["remote", "add", "origin", served.join("r0.git").to_str().context("path")?])?;
    let (mut daemon, port) = git_daemon(&served)?;

    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (database, amqp) = gitfleet_tests::bench_settings(&format!("bench_poll_{id}"), &id, 8);
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let client = pool.get().await?;
    // The fleet after its first syncs: every repository live at its remote's tip, its next poll somewhere in the
    // first interval (as setting an interval spreads them).
    client
        .execute(
            "INSERT INTO git_repository (id, name, slug, remote_url, current_head, version, applied_version,
                 sync_interval_secs, next_poll_at)
             SELECT gen_random_uuid(), 'Polled ' || i, 'polled_' || i, 'git://127.0.0.1:' || $1::text || '/r' || i || '.git',
                    CASE WHEN i = 0 THEN $3 ELSE $2 END, 1, 1, $4::integer,
                    now() + interval '5 seconds' + random() * make_interval(secs => $4::integer)
               FROM generate_series(0, $5::integer - 1) AS i",
            &[&port.to_string(), &tip, &pushed_tip, &INTERVAL_SECS, &i32::try_from(repositories)?],
        )
        .await?;
    drop(client);

    let exe = std::env::current_exe()?.with_file_name("fleet_worker");
    let mut workers = Vec::new();
    for n in 0..WORKERS {
        let mut command = Command::new(&exe);
        let git_root = tmp.path().join(format!("git-root-{n}"));
        gitfleet_tests::bench_worker_env(&mut command, &database, &amqp, &git_root, &format!("poll-{n}"));
        let started = command.env("GITFLEET_LOG", "warn").spawn();
        workers.push(
            started.with_context(|| format!("starting {} (cargo build --profile perf --bins first)", exe.display()))?,
        );
    }
    let shutdown = CancellationToken::new();
    let relay = gitfleet_tests::spawn_relay(&pool, &database, &amqp, &shutdown);
    gitfleet_tests::wait_for_consumer(&amqp).await?;

    let started = Instant::now();
    let interval = Duration::from_secs(u64::try_from(INTERVAL_SECS)?);
    // One interval for every repository's first poll, then two measured.
    tokio::time::sleep(interval + Duration::from_secs(5)).await;
    let measure_from = Instant::now();
    let cpu_from: f64 = workers.iter().map(|w| cpu_with_children(w.id())).sum::<f64>() + cpu_with_children(daemon.id());
    let mut lateness = Vec::new();
    let mut pushed: Option<(Instant, String)> = None;
    let mut picked_up = None;
    while measure_from.elapsed() < 2 * interval {
        let client = pool.get().await?;
        let rows = client
            .query(
                "SELECT extract(epoch FROM now() - coalesce(last_polled_at, created))::float8, current_head, name
                   FROM git_repository",
                &[],
            )
            .await?;
        for row in &rows {
            let stale: f64 = row.get(0);
            lateness.push((stale - f64::from(INTERVAL_SECS)).max(0.0));
            if let Some((at, commit)) = &pushed
                && picked_up.is_none()
                && row.get::<_, String>(2) == "Polled 0"
                && row.get::<_, String>(1) == *commit
            {
                picked_up = Some(at.elapsed());
            }
        }
        drop(client);
        if pushed.is_none() && measure_from.elapsed() > Duration::from_secs(10) {
            std::fs::write(pushed_work.join("README.md"), "pushed again")?;
            git(&pushed_work, &["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "second"])?;
            git(&pushed_work, &["push", "-q", "origin", "main"])?;
            pushed = Some((Instant::now(), git(&pushed_work, &["rev-parse", "HEAD"])?));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let measured = measure_from.elapsed();
    let cpu_to: f64 = workers.iter().map(|w| cpu_with_children(w.id())).sum::<f64>() + cpu_with_children(daemon.id());
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM outbox WHERE routing_key = 'repo.poll'),
                    (SELECT count(*) FROM job_result),
                    (SELECT count(*) FROM git_repository WHERE poll_error IS NOT NULL)",
            &[],
        )
        .await?;
    let (polls, jobs, failing): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    drop(client);

    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    shutdown.cancel();
    let _ = relay.await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    let client = pool.get().await?;
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", database.schema)).await?;
    gitfleet_tests::delete_broker_objects(&amqp).await?;

    lateness.sort_by(f64::total_cmp);
    let pct = |p: f64| lateness.get(((lateness.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0);
    let on_time = lateness.iter().filter(|l| **l == 0.0).count() as f64 / lateness.len().max(1) as f64 * 100.0;
    let minutes = measured.as_secs_f64() / 60.0;
    let cpu_per_thousand = (cpu_to - cpu_from) / minutes / (repositories as f64 / 1000.0);
    let profile = if cfg!(debug_assertions) { "debug build" } else { "optimized build" };
    let mut out = String::new();
    writeln!(out, "<!-- bench:poll -->")?;
    writeln!(
        out,
        "{repositories} repositories on a {INTERVAL_SECS} s `sync_interval` over git:// (`git daemon` on loopback), \
         one relay scheduling, {WORKERS} worker processes at the default prefetch; {profile}, 2-core machine \
         (PostgreSQL, RabbitMQ, `git daemon` and the workers share it). Measured over {:.0} s after one interval of \
         warm-up ({:.0} s from the start).\n",
        measured.as_secs_f64(),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(out, "| measure | value | target |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(
        out,
        "| lateness p50 / p99 / max (how much longer than the interval since the last poll) | {:.1} s / {:.1} s / {:.1} s | p99 < 10 s |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    )?;
    writeln!(out, "| samples on time (polled within the interval) | {on_time:.1}% of {} | |", lateness.len())?;
    match picked_up {
        Some(after) => writeln!(
            out,
            "| a pushed commit live after | {:.1} s | < {INTERVAL_SECS} s plus the sync |",
            after.as_secs_f64()
        )?,
        None => {
            writeln!(out, "| a pushed commit live after | not within the run | < {INTERVAL_SECS} s plus the sync |")?
        }
    }
    writeln!(out, "| polls scheduled (whole run) | {polls} | |")?;
    writeln!(out, "| JobResults made | {jobs} (the pushed repository's sync) | only for a moved tip |")?;
    writeln!(out, "| repositories whose last poll failed | {failing} | 0 |")?;
    writeln!(
        out,
        "| CPU of the workers and `git daemon` (with its `upload-pack` processes) per 1,000 repositories | {cpu_per_thousand:.2} s per minute ({:.0}% of one core for all {repositories}) | |",
        cpu_per_thousand * repositories as f64 / 1000.0 / 60.0 * 100.0
    )?;
    writeln!(out, "<!-- /bench:poll -->")?;
    print!("{out}");
    if let Some(path) = write_to {
        write_section(&path, "poll", "Polling: 10,000 repositories on one interval", &out)?;
    }
    Ok(())
}
