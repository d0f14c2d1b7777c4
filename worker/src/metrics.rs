//! The worker's metrics, served at `/metrics` on `GITFLEET_METRICS_ADDR`. One set per process (as Prometheus
//! clients keep a default registry): several workers started by one test process add to the same counters.
//! Every label takes a value from a short fixed list (event kinds, outcomes, stage names, storage operations):
//! nothing per repository or per commit, so a fleet of any size has the same series.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    pub storage: &'static str,
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageBytesLabels {
    pub storage: &'static str,
    pub direction: &'static str,
}

fn seconds() -> Histogram {
    // 5 ms to about 82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric the worker exports.
pub struct WorkerMetrics {
    pub registry: Registry,
    pub jobs: Family<JobLabels, Counter>,
    pub job_duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub stage_duration: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub events: Family<OutcomeLabel, Counter>,
    pub lock_wait: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    pub fetched_bytes: Counter,
    pub storage_requests: Family<StorageLabels, Counter>,
    pub storage_bytes: Family<StorageBytesLabels, Counter>,
    pub polls: Family<OutcomeLabel, Counter>,
    pub in_flight: Gauge,
    pub consumers: Gauge,
    pub git_cache_hits: Counter,
    pub git_cache_misses: Counter,
    pub git_cache_evictions: Counter,
    pub git_cache_evicted_bytes: Counter,
    pub git_cache_bytes: Gauge,
}

pub static METRICS: LazyLock<WorkerMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = WorkerMetrics {
        jobs: Family::default(),
        job_duration: Family::new_with_constructor(seconds),
        stage_duration: Family::new_with_constructor(seconds),
        events: Family::default(),
        lock_wait: Family::new_with_constructor(seconds),
        fetched_bytes: Counter::default(),
        storage_requests: Family::default(),
        storage_bytes: Family::default(),
        polls: Family::default(),
        in_flight: Gauge::default(),
        consumers: Gauge::default(),
        git_cache_hits: Counter::default(),
        git_cache_misses: Counter::default(),
        git_cache_evictions: Counter::default(),
        git_cache_evicted_bytes: Counter::default(),
        git_cache_bytes: Gauge::default(),
        registry: Registry::default(),
    };
    registry.register(
        "gitfleet_syncs",
        "Jobs this worker ended, by event kind (create, update, sync, delete, dry_run) and outcome (success, failure)",
        m.jobs.clone(),
    );
    registry.register(
        "gitfleet_sync_duration_seconds",
        "Time from a job's start under the repository lock to its end, by event kind",
        m.job_duration.clone(),
    );
    registry.register(
        "gitfleet_sync_stage_duration_seconds",
        "Time each stage of a sync took (the stages of the JobResult's phases_ms)",
        m.stage_duration.clone(),
    );
    registry.register(
        "gitfleet_events",
        "Events handled without running their job, or sent back: coalesced, superseded, up_to_date, duplicate, \
         deferred (repository busy), retried (a transient fault), dead_lettered",
        m.events.clone(),
    );
    registry.register(
        "gitfleet_lock_wait_seconds",
        "Time to take a repository's fleet-wide lock, by outcome (acquired, busy: the event is deferred)",
        m.lock_wait.clone(),
    );
    registry.register("gitfleet_fetched_bytes", "Bytes received from Git remotes", m.fetched_bytes.clone());
    registry.register(
        "gitfleet_storage_requests",
        "Requests to the file stores, by storage (s3, filesystem), operation (head, get, put, list, delete) and \
         outcome (ok, error)",
        m.storage_requests.clone(),
    );
    registry.register(
        "gitfleet_storage_bytes",
        "Bytes written to and read from the file stores",
        m.storage_bytes.clone(),
    );
    registry.register(
        "gitfleet_polls",
        "Polls of a remote for its branch's tip, by outcome: unchanged (no JobResult), changed (a sync runs), failed",
        m.polls.clone(),
    );
    registry.register("gitfleet_events_in_flight", "Events this worker is handling now", m.in_flight.clone());
    registry.register(
        "gitfleet_worker_consumers",
        "Work-queue consumers this process runs (0 while it reconnects or drains)",
        m.consumers.clone(),
    );
    registry.register(
        "gitfleet_git_cache_hits",
        "Syncs that found their repository's mirror in the worker's cache (a fetch of what is new)",
        m.git_cache_hits.clone(),
    );
    registry.register(
        "gitfleet_git_cache_misses",
        "Syncs that had to clone their repository's mirror (first sync on this worker, or evicted)",
        m.git_cache_misses.clone(),
    );
    registry.register(
        "gitfleet_git_cache_evictions",
        "Mirrors removed to keep the cache under GITFLEET_GIT_CACHE_MAX_BYTES",
        m.git_cache_evictions.clone(),
    );
    registry.register(
        "gitfleet_git_cache_evicted_bytes",
        "Bytes of the mirrors evicted from the cache",
        m.git_cache_evicted_bytes.clone(),
    );
    registry.register("gitfleet_git_cache_bytes", "Bytes of the mirrors in the cache", m.git_cache_bytes.clone());
    gitfleet_infra::metrics::register_process(&mut registry, "worker");
    // Every series of a fixed label set exists from the start (at 0): a rate over it, or an alert on it, does
    // not wait for its first event.
    for kind in KINDS {
        for outcome in ["success", "failure"] {
            let _ = m.jobs.get_or_create(&JobLabels { kind, outcome });
        }
        let _ = m.job_duration.get_or_create(&KindLabel { kind });
    }
    for stage in STAGES {
        let _ = m.stage_duration.get_or_create(&StageLabel { stage });
    }
    for outcome in EVENT_OUTCOMES {
        let _ = m.events.get_or_create(&OutcomeLabel { outcome });
    }
    for outcome in ["unchanged", "changed", "failed"] {
        let _ = m.polls.get_or_create(&OutcomeLabel { outcome });
    }
    for outcome in ["acquired", "busy"] {
        let _ = m.lock_wait.get_or_create(&OutcomeLabel { outcome });
    }
    for storage in ["s3", "filesystem"] {
        for operation in ["head", "get", "put", "list", "delete"] {
            for outcome in ["ok", "error"] {
                let _ = m.storage_requests.get_or_create(&StorageLabels { storage, operation, outcome });
            }
        }
        for direction in ["written", "read"] {
            let _ = m.storage_bytes.get_or_create(&StorageBytesLabels { storage, direction });
        }
    }
    WorkerMetrics { registry, ..m }
});

/// The event kinds, as labels.
const KINDS: [&str; 5] = ["create", "update", "sync", "delete", "dry_run"];
// (A poll's job is a sync: it is counted under `sync`, and the poll itself under `gitfleet_polls`.)

/// The stages of a sync (the phases its JobResult reports).
const STAGES: [&str; 12] = [
    "definition and coalescing",
    "fetch",
    "fingerprint",
    "load",
    "reconcile and log",
    "storage: live manifest",
    "storage: listing",
    "storage: live parts",
    "storage: blobs",
    "storage: manifest and last blobs",
    "report and pointers",
    "commit",
];

/// What [`event`] counts.
const EVENT_OUTCOMES: [&str; 7] =
    ["coalesced", "superseded", "up_to_date", "duplicate", "deferred", "retried", "dead_lettered"];

/// Counts an event that ended without its job running, or went back to a queue.
pub fn event(outcome: &'static str) {
    METRICS.events.get_or_create(&OutcomeLabel { outcome }).inc();
}

/// Counts a poll by what it found.
pub fn poll(outcome: &'static str) {
    METRICS.polls.get_or_create(&OutcomeLabel { outcome }).inc();
}

/// Counts a request to a store.
pub fn storage_request(storage: &'static str, operation: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    METRICS.storage_requests.get_or_create(&StorageLabels { storage, operation, outcome }).inc();
}

/// Counts bytes written to (`written`) or read from (`read`) a store.
pub fn storage_bytes(storage: &'static str, direction: &'static str, bytes: u64) {
    METRICS.storage_bytes.get_or_create(&StorageBytesLabels { storage, direction }).inc_by(bytes);
}

/// A stretch of work, timed for a histogram and, when it ends, recorded as a span of the current trace.
pub struct Timer {
    started: Instant,
    wall: SystemTime,
    parent: opentelemetry::Context,
}

impl Timer {
    pub fn start() -> Self {
        Self { started: Instant::now(), wall: SystemTime::now(), parent: gitfleet_infra::telemetry::current_context() }
    }

    /// Ends a lock attempt: its histogram, and a `lock wait` span.
    pub fn lock_wait(self, acquired: bool) {
        let outcome = if acquired { "acquired" } else { "busy" };
        METRICS.lock_wait.get_or_create(&OutcomeLabel { outcome }).observe(self.started.elapsed().as_secs_f64());
        self.span("lock wait", vec![opentelemetry::KeyValue::new("outcome", outcome)]);
    }

    /// Ends the stretch as a span named `name`.
    pub fn span(self, name: &'static str, attributes: Vec<opentelemetry::KeyValue>) {
        gitfleet_infra::telemetry::record_span(&self.parent, name, self.wall, SystemTime::now(), attributes);
    }
}
