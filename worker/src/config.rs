//! Worker settings: flags or `GITFLEET_*` environment variables, read once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_shared::loaders::SchemaEnforcement;

#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub amqp: AmqpSettings,
    #[command(flatten)]
    pub metrics: gitfleet_infra::metrics::MetricsSettings,
    /// Where bare mirrors are cached (`GIT_ROOT`). Default: `$HOME/.gitfleet/git`.
    #[arg(long, env = "GITFLEET_GIT_ROOT")]
    pub git_root: Option<PathBuf>,
    /// Unacknowledged events this worker may hold at once (AMQP prefetch), which is also how many it syncs in
    /// parallel.
    #[arg(long, env = "GITFLEET_PREFETCH", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Name recorded on JobResults and lock holdings. Default: `<hostname>-<pid>`.
    #[arg(long = "worker-name", env = "GITFLEET_WORKER_NAME")]
    pub name: Option<String>,
    /// Scope lookups that match no inventory object: `strict` fails the file (as Nautobot), `lenient` stores them
    /// unresolved with a warning.
    #[arg(long, env = "GITFLEET_SCOPE_MODE", value_enum, default_value_t = ScopeModeArg::Strict)]
    pub scope_mode: ScopeModeArg,
    /// Config context data that does not match its linked schema: `warn` (a warning naming the file and the first
    /// violations), `error` (the same line as an error, which fails the sync) or `off` (not checked, as Nautobot).
    #[arg(long, env = "GITFLEET_SCHEMA_ENFORCEMENT", default_value_t = SchemaEnforcement::Warn)]
    pub schema_enforcement: SchemaEnforcement,
    /// Largest data file a sync reads, in bytes; a larger one is an error naming the file.
    #[arg(long, env = "GITFLEET_MAX_FILE_BYTES", default_value_t = gitfleet_shared::yaml::Limits::default().max_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_file_bytes: usize,
    /// Most bytes of keys and values one YAML or JSON document may expand to once anchors and aliases are followed;
    /// past it the file is an error (an alias bomb), in bounded memory.
    #[arg(long, env = "GITFLEET_MAX_DOCUMENT_BYTES", default_value_t = gitfleet_shared::yaml::Limits::default().max_expanded_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_document_bytes: usize,
    /// Largest record a sync stores, in bytes of JSON (a context's data, a schema): a larger one is an error naming
    /// the file, before anything reaches the database.
    #[arg(long, env = "GITFLEET_MAX_RECORD_BYTES", default_value_t = gitfleet_shared::yaml::Limits::default().max_record_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_record_bytes: usize,
    /// Most bytes of JSON all the YAML and JSON documents of one sync may add up to (past it, the file that crosses
    /// it is an error). A sync streams its config context files; a dry run holds all of them.
    #[arg(long, env = "GITFLEET_MAX_LOAD_BYTES", default_value_t = gitfleet_shared::yaml::Limits::default().max_load_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_load_bytes: usize,
    /// Config context files a full load reads, loads and writes at a time (a batch also ends after 8 MiB of
    /// content): what a sync holds at once, whatever the repository's size.
    #[arg(long, env = "GITFLEET_LOAD_BATCH_FILES", default_value_t = 500, value_parser = gitfleet_infra::settings::positive)]
    pub load_batch_files: usize,
    /// Default limit for each git operation, in seconds (a repository's `--git-timeout` overrides it). Also the
    /// connect and read timeout of every git connection.
    #[arg(long, env = "GITFLEET_GIT_TIMEOUT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub git_timeout_secs: u64,
    /// `1`, `true` or `yes`: accept any HTTPS certificate (self-signed remotes), as `GIT_SSL_NO_VERIFY` does for
    /// Nautobot.
    #[arg(long, env = "GIT_SSL_NO_VERIFY", default_value_t = false, action = clap::ArgAction::Set,
          value_parser = gitfleet_infra::settings::yes_no)]
    pub git_ssl_no_verify: bool,
    /// PEM bundle of the CAs that HTTPS remotes' certificates must be issued by (instead of the system store).
    #[arg(long, env = "GITFLEET_GIT_CA_BUNDLE")]
    pub git_ca_bundle: Option<PathBuf>,
    /// OpenSSH known-hosts file that ssh:// remotes' host keys must be listed in. Default: `$HOME/.ssh/known_hosts`.
    #[arg(long, env = "GITFLEET_SSH_KNOWN_HOSTS")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// `no`: accept any SSH host key (an explicit opt-out of host-key checking, logged at start-up). Default `yes`.
    #[arg(long, env = "GITFLEET_SSH_STRICT_HOST_KEY_CHECKING", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = gitfleet_infra::settings::yes_no)]
    pub ssh_strict_host_key_checking: bool,
    /// `false`: fetch whole histories. By default a new mirror fetches only the branch and tag tips (depth 1) over
    /// git://, http(s):// and ssh://, and deepens when a commit outside them is asked for.
    #[arg(long, env = "GITFLEET_GIT_SHALLOW", default_value_t = true, action = clap::ArgAction::Set)]
    pub git_shallow: bool,
    /// Largest a repository's mirror may grow, in bytes: a fetch past it is stopped and the sync fails.
    #[arg(long, env = "GITFLEET_MAX_MIRROR_BYTES", default_value_t = 2 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_mirror_bytes: u64,
    /// Bound of the mirror cache under the git root, in bytes: past it the least recently used mirrors no sync
    /// holds are removed (and cloned again when next needed). Default: no bound.
    #[arg(long, env = "GITFLEET_GIT_CACHE_MAX_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub git_cache_max_bytes: Option<u64>,
    /// Directory of secrets groups, one folder per group with `token` and `username` files (a mounted Kubernetes
    /// Secret). Groups can also come from `GITFLEET_SECRETS_<GROUP>_TOKEN` / `_USERNAME` variables.
    #[arg(long, env = "GITFLEET_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// How often a running job records that its worker is alive.
    #[arg(long, env = "GITFLEET_HEARTBEAT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,
    /// A STARTED job whose worker has not beaten for this long, and whose repository lock is free, is ended FAILURE
    /// "worker lost" by any worker's reaper.
    #[arg(long, env = "GITFLEET_REAP_AFTER_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub reap_after_secs: u64,
    /// Tries of an event inside one delivery when it meets a transient fault (database, broker, network), with
    /// exponential backoff and jitter, before the event goes back to the queue.
    #[arg(long, env = "GITFLEET_TRANSIENT_RETRIES", default_value_t = 3, value_parser = gitfleet_infra::settings::positive)]
    pub transient_retries: usize,
    /// On SIGTERM, how long in-flight events may take to finish before they are handed back.
    #[arg(long, env = "GITFLEET_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

pub use gitfleet_infra::settings::ScopeModeArg;

impl WorkerSettings {
    pub fn scope_mode(&self) -> gitfleet_shared::loaders::ScopeMode {
        self.scope_mode.into()
    }

    pub fn tls(&self) -> crate::git::TlsPolicy {
        if self.git_ssl_no_verify {
            crate::git::TlsPolicy::NoVerify
        } else if let Some(bundle) = &self.git_ca_bundle {
            crate::git::TlsPolicy::CaBundle(bundle.clone())
        } else {
            crate::git::TlsPolicy::System
        }
    }

    pub fn host_keys(&self) -> crate::known_hosts::HostKeyPolicy {
        if !self.ssh_strict_host_key_checking {
            crate::known_hosts::HostKeyPolicy::AcceptAny
        } else {
            crate::known_hosts::HostKeyPolicy::KnownHosts(
                self.ssh_known_hosts.clone().unwrap_or_else(crate::known_hosts::default_path),
            )
        }
    }

    pub fn limits(&self) -> gitfleet_shared::yaml::Limits {
        gitfleet_shared::yaml::Limits {
            max_bytes: self.max_file_bytes,
            max_expanded_bytes: self.max_document_bytes,
            max_record_bytes: self.max_record_bytes,
            max_load_bytes: self.max_load_bytes,
            ..Default::default()
        }
    }

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
