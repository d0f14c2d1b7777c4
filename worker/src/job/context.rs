//! What every job of a worker runs with: built once, when the worker starts.

use std::path::PathBuf;
use std::sync::Arc;

use deadpool_postgres::Pool;
use gitfleet_infra::amqp::Topology;
use gitfleet_shared::loaders::{Registry, SchemaEnforcement, ScopeMode};
use gitfleet_shared::yaml::Limits;

use crate::secrets::Secrets;

#[derive(Debug, Clone)]
pub struct JobContext {
    pub pool: Pool,
    pub git_root: PathBuf,
    /// The mirrors under `git_root`, bounded by `GITFLEET_GIT_CACHE_MAX_BYTES`.
    pub git_cache: crate::git_cache::MirrorCache,
    pub worker_name: String,
    pub topology: Topology,
    pub registry: Arc<Registry>,
    pub secrets: Arc<Secrets>,
    pub max_mirror_bytes: u64,
    pub tls: crate::git::TlsPolicy,
    pub host_keys: crate::known_hosts::HostKeyPolicy,
    /// Fetch depth 1 where the transport allows it.
    pub shallow: bool,
    /// Default limit for a git operation; a repository's `git_timeout_secs` overrides it.
    pub git_timeout: std::time::Duration,
    pub scope_mode: ScopeMode,
    /// How context data that does not match its linked schema is reported.
    pub schema_enforcement: SchemaEnforcement,
    pub limits: Limits,
    /// Config context files a full load reads and writes at a time.
    pub load_batch_files: usize,
    /// How often a running job beats (`job_result.heartbeat`).
    pub heartbeat: std::time::Duration,
    pub storage: Arc<crate::storage::Storage>,
    /// Artifacts built at once by this worker, after their syncs (one).
    pub artifact_slots: Arc<tokio::sync::Semaphore>,
    /// The `(slug, commit)` whose artifacts this worker is building or about to.
    pub artifacts_building: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    /// Each repository's (slug's) commit whose artifacts this worker was last asked to build: a build of an older
    /// commit stops as soon as a newer one is asked for.
    pub artifacts_latest: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl JobContext {
    pub(super) fn scope_mode_name(&self) -> &'static str {
        match self.scope_mode {
            ScopeMode::Strict => "strict",
            ScopeMode::Lenient => "lenient",
        }
    }
}
