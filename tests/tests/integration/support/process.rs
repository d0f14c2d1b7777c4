//! Workers as real processes (the `fleet_worker` binary of this package), for what an in-process worker cannot
//! show: SIGKILL in the middle of a sync, SIGTERM and the exit code.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::TestEnv;

#[allow(dead_code)] // each test binary uses a different part
pub struct WorkerProcess {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl TestEnv {
    /// A command for one of this package's binaries with this env's database, queues and secrets in its
    /// environment (nothing else from the test's), and the file its output goes to: `<tmp>/<name>.log`.
    fn command(&self, exe: &str, name: &str) -> Result<(Command, PathBuf, std::fs::File)> {
        let log = self.tmp.path().join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut command = Command::new(exe);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("GITFLEET_DATABASE_URL", &self.database.url)
            .env("GITFLEET_DATABASE_SCHEMA", &self.database.schema)
            .env("GITFLEET_AMQP_URL", &self.amqp.url)
            .env("GITFLEET_AMQP_PREFIX", &self.amqp.prefix)
            .env("GITFLEET_DELIVERY_LIMIT", self.amqp.delivery_limit.to_string())
            .env("GITFLEET_DEFER_DELAY_MS", self.amqp.defer_delay_ms.to_string())
            .env(
                "GITFLEET_RETRY_DELAYS",
                self.amqp.retry_delays.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            )
            .env("GITFLEET_SECRETS_DIR", self.tmp.path().join("secrets"));
        Ok((command, log, out))
    }

    fn spawn(mut command: Command, name: &str, log: PathBuf, out: std::fs::File) -> Result<WorkerProcess> {
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(WorkerProcess { child, name: name.to_owned(), log })
    }

    /// Starts a worker process on this env's schema and queues; `extra` adds or overrides environment variables.
    pub fn spawn_worker_process(&self, name: &str, extra: &[(&str, String)]) -> Result<WorkerProcess> {
        let (mut command, log, out) = self.command(env!("CARGO_BIN_EXE_fleet_worker"), name)?;
        command
            .env("RUST_LOG", "warn")
            .env("GITFLEET_DATABASE_POOL_SIZE", "6")
            .env("GITFLEET_GIT_ROOT", self.git_root().join(name))
            .env("GITFLEET_WORKER_NAME", name)
            .env("GITFLEET_HEARTBEAT_SECS", self.heartbeat_secs.to_string())
            .env("GITFLEET_REAP_AFTER_SECS", self.reap_after_secs.to_string())
            .env("GITFLEET_GIT_TIMEOUT_SECS", "30")
            .env("GITFLEET_STORAGE_ROOT", &self.storage.root);
        for (key, value) in extra {
            command.env(key, value);
        }
        Self::spawn(command, name, log, out)
    }

    /// Runs the `producer` command as a process on this env's schema and queues with `args` (`relay`, `serve`,
    /// `repo sync NAME`).
    pub fn spawn_producer_process(&self, name: &str, args: &[&str], extra: &[(&str, String)]) -> Result<WorkerProcess> {
        let (mut command, log, out) = self.command(env!("CARGO_BIN_EXE_fleet_producer"), name)?;
        command.env("GITFLEET_RELAY_POLL_MS", "50").args(args);
        for (key, value) in extra {
            command.env(key, value);
        }
        Self::spawn(command, name, log, out)
    }
}

#[allow(dead_code)]
impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: a graceful stop.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
