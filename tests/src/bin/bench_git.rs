//! `make bench`, git part: the worker's git2 fetches against the `git` command line on the same loopback remote.
//!
//! A generated repository of 5,000 files and 500 commits (each commit after the first changes 10 files), served by
//! `git daemon` over git://. Measured, median of 3 runs each: a full and a shallow (depth 1) first clone into a
//! bare repository, then a fetch of 10 new commits into that clone. git2 runs through the worker's own `Mirror`
//! (the code path a sync takes); the CLI runs `git clone --bare [--depth 1]` and `git fetch [--depth 1]`. Prints a
//! Markdown table and, with `--write FILE`, replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitfleet_shared::repo::Branch;
use gitfleet_tests::{git, git_daemon, write_section};
use gitfleet_worker::git::Mirror;

const FILES: usize = 5_000;
const COMMITS: usize = 500;
const CHANGED_PER_COMMIT: usize = 10;
const NEW_COMMITS: usize = 10;
const RUNS: usize = 3;

fn file_body(file: usize, version: usize) -> String {
    let mut body = format!("---\n_metadata:\n  name: context-{file}\n  weight: {}\n", 1000 + file % 7);
    for line in 0..24 {
        let _ = writeln!(body, "setting_{line}: value-{file}-{version}-{line}");
    }
    body
}

/// A fast-import stream: the first commit adds every file, each later one changes `CHANGED_PER_COMMIT` of them;
/// `NEW_COMMITS` more go to `refs/bench/next` (outside what a clone fetches) for the fetch measurement.
fn stream() -> Vec<u8> {
    let mut out = Vec::new();
    let commit = |out: &mut Vec<u8>, r#ref: &str, mark: usize, from: Option<usize>, files: &[(usize, usize)]| {
        let message = format!("commit {mark}");
        let _ = write!(
            out,
            "commit {ref}\nmark :{mark}\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + mark * 60,
            message.len(),
            ref = r#ref,
        );
        if let Some(from) = from {
            let _ = writeln!(out, "from :{from}");
        }
        for (file, version) in files {
            let body = file_body(*file, *version);
            let _ = write!(
                out,
                "M 100644 inline contexts/dir-{:02}/file-{file:05}.yml\ndata {}\n{body}\n",
                file % 50,
                body.len()
            );
        }
    };
    let all: Vec<(usize, usize)> = (0..FILES).map(|f| (f, 0)).collect();
    commit(&mut out, "refs/heads/main", 1, None, &all);
    for mark in 2..=COMMITS + NEW_COMMITS {
        let changed: Vec<(usize, usize)> =
            (0..CHANGED_PER_COMMIT).map(|i| ((mark * 7919 + i * 499) % FILES, mark)).collect();
        let r#ref = if mark <= COMMITS { "refs/heads/main" } else { "refs/bench/next" };
        commit(&mut out, r#ref, mark, Some(mark - 1), &changed);
    }
    out
}

fn generate(bare: &Path) -> Result<()> {
    git(bare.parent().unwrap(), &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()])?;
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .stdin(Stdio::piped())
        .spawn()
        .context("git fast-import")?;
    child.stdin.take().unwrap().write_all(&stream())?;
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    git(bare, &["gc", "-q"])?;
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

struct Row {
    what: &'static str,
    git2: Duration,
    cli: Duration,
}

fn main() -> Result<()> {
    let write_to = std::env::args().skip_while(|a| a != "--write").nth(1);
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let bare = served.join("big.git");
    let started = Instant::now();
    generate(&bare)?;
    let base = git(&bare, &["rev-parse", "refs/heads/main"])?;
    let next = git(&bare, &["rev-parse", "refs/bench/next"])?;
    let pack_bytes: u64 = std::fs::read_dir(bare.join("objects/pack"))?
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    println!("generated {FILES} files, {} commits in {:.1} s", COMMITS + NEW_COMMITS, started.elapsed().as_secs_f64());

    let (mut daemon, port) = git_daemon(&served)?;
    let url = format!("git://127.0.0.1:{port}/big.git");
    let main = Branch::parse("main".to_owned())?;

    let mut rows = Vec::new();
    for shallow in [false, true] {
        let (mut clone2, mut clonec, mut fetch2, mut fetchc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            git(&bare, &["update-ref", "refs/heads/main", &base])?;
            let root = tmp.path().join(format!("run-{shallow}-{run}"));
            let mirror = Mirror::new(root.join("git2"), "big").with_shallow(shallow);
            clone2.push(timed(|| {
                let checkout = mirror.fetch_and_checkout(&url, &main)?;
                assert_eq!(checkout.head, base);
                Ok(())
            })?);
            assert_eq!(mirror.is_shallow(), shallow);
            let cli_dir = root.join("cli.git");
            let depth: &[&str] = if shallow { &["--depth", "1"] } else { &[] };
            clonec.push(timed(|| {
                let mut args = vec!["clone", "-q", "--bare"];
                args.extend(depth);
                args.extend([url.as_str(), cli_dir.to_str().unwrap()]);
                git(tmp.path(), &args).map(drop)
            })?);

            // Ten new commits on the remote, then a fetch into each clone.
            git(&bare, &["update-ref", "refs/heads/main", &next])?;
            fetch2.push(timed(|| {
                let checkout = mirror.fetch_and_checkout(&url, &main)?;
                assert_eq!(checkout.head, next);
                Ok(())
            })?);
            fetchc.push(timed(|| {
                let mut args = vec!["fetch", "-q"];
                args.extend(depth);
                args.extend(["origin", "+refs/heads/*:refs/heads/*"]);
                git(&cli_dir, &args).map(drop)
            })?);
            assert_eq!(git(&cli_dir, &["rev-parse", "refs/heads/main"])?, next);
            std::fs::remove_dir_all(&root)?;
        }
        let what = if shallow { "clone, shallow (depth 1)" } else { "clone, full" };
        rows.push(Row { what, git2: median(clone2), cli: median(clonec) });
        rows.push(Row {
            what: if shallow {
                "fetch of 10 new commits, shallow mirror"
            } else {
                "fetch of 10 new commits, full mirror"
            },
            git2: median(fetch2),
            cli: median(fetchc),
        });
    }
    let _ = daemon.kill();
    let _ = daemon.wait();

    let version = git(tmp.path(), &["--version"])?;
    let profile = if cfg!(debug_assertions) { "debug build" } else { "optimized build" };
    let mut table = String::new();
    writeln!(table, "<!-- bench:git -->")?;
    writeln!(
        table,
        "Generated repository: {FILES} files, {COMMITS} commits ({CHANGED_PER_COMMIT} files changed per commit), packed \
         {:.1} MiB, served by `git daemon` over git:// on loopback; median of {RUNS} runs; {profile}; {version}.\n",
        pack_bytes as f64 / 1_048_576.0
    )?;
    writeln!(table, "| operation | git2 (worker `Mirror`) | git CLI | git2 / CLI |")?;
    writeln!(table, "|---|---|---|---|")?;
    for row in &rows {
        writeln!(
            table,
            "| {} | {:.0} ms | {:.0} ms | {:.2}x |",
            row.what,
            row.git2.as_secs_f64() * 1000.0,
            row.cli.as_secs_f64() * 1000.0,
            row.git2.as_secs_f64() / row.cli.as_secs_f64()
        )?;
    }
    writeln!(table, "<!-- /bench:git -->")?;
    print!("{table}");
    if let Some(path) = write_to {
        write_section(&path, "git", "Git transport: git2 against the git command line", &table)?;
    }
    Ok(())
}
