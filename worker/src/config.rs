//! Worker settings: flags or `GITFLEET_*` environment variables, read once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};

#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub amqp: AmqpSettings,
    /// Where bare mirrors are cached (`GIT_ROOT`). Default: `$HOME/.gitfleet/git`.
    #[arg(long, env = "GITFLEET_GIT_ROOT")]
    pub git_root: Option<PathBuf>,
    /// Unacknowledged events this worker may hold at once (AMQP prefetch), which is also how many it syncs in
    /// parallel.
    #[arg(long, env = "GITFLEET_PREFETCH", default_value_t = 4)]
    pub prefetch: u16,
    /// Name recorded on JobResults and lock holdings. Default: `<hostname>-<pid>`.
    #[arg(long = "worker-name", env = "GITFLEET_WORKER_NAME")]
    pub name: Option<String>,
    /// On SIGTERM, how long in-flight events may take to finish before they are handed back.
    #[arg(long, env = "GITFLEET_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl WorkerSettings {
    pub fn git_root(&self) -> PathBuf {
        self.git_root.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".gitfleet").join("git")
        })
    }

    pub fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
