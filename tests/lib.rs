//! What the benchmarks (`src/bin/bench*.rs`) share: running git, a loopback `git daemon`, and rewriting their
//! section of `BENCHMARKS.md`. The integration tests live in `tests/integration/` with their own support module.

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
    let mut child = Command::new("git")
        .args(["daemon", "--listen=127.0.0.1", &format!("--port={port}"), "--export-all", "--reuseaddr"])
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
