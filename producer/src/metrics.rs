//! Metrics of `producer serve` (its requests, at `/metrics` on the API's address) and of `producer relay` (what it
//! published, and the fleet's backlog read at each scrape from PostgreSQL and the broker, at `/metrics` on
//! `GITFLEET_METRICS_ADDR`). Labels take values from fixed lists only: routes as the router names them (never the
//! path a client sent), methods, status classes, queue roles.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: &'static str,
}

/// `producer serve`'s metrics.
pub struct ApiMetrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

fn request_seconds() -> Histogram {
    // 1 ms to about 16 s (long polls end at their wait).
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub static API: LazyLock<ApiMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let requests = Family::<RequestLabels, Counter>::default();
    let duration = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(request_seconds);
    registry.register(
        "gitfleet_http_requests",
        "HTTP requests answered, by method, route (as the router names it) and status code",
        requests.clone(),
    );
    registry.register(
        "gitfleet_http_request_duration_seconds",
        "Time to answer an HTTP request, by method and route",
        duration.clone(),
    );
    gitfleet_infra::metrics::register_process(&mut registry, "producer");
    ApiMetrics { registry, requests, duration }
});

/// `producer relay`'s metrics.
pub struct RelayMetrics {
    pub registry: Registry,
    pub published: Counter,
    pub publish_failures: Counter,
    pub outbox_backlog: Gauge,
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    pub started: Gauge,
    pub started_oldest_heartbeat_age: Gauge<f64, AtomicU64>,
    pub dead_letters: Gauge,
    pub queue_messages: Family<QueueLabel, Gauge>,
    pub queue_consumers: Family<QueueLabel, Gauge>,
    pub broker_up: Gauge,
    pub scheduling: Gauge,
    pub polls_scheduled: Counter,
    pub housekeeping_removed: Family<KindLabel, Counter>,
}

pub static RELAY: LazyLock<RelayMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = RelayMetrics {
        registry: Registry::default(),
        published: Counter::default(),
        publish_failures: Counter::default(),
        outbox_backlog: Gauge::default(),
        outbox_oldest_age: Gauge::default(),
        started: Gauge::default(),
        started_oldest_heartbeat_age: Gauge::default(),
        dead_letters: Gauge::default(),
        queue_messages: Family::default(),
        queue_consumers: Family::default(),
        broker_up: Gauge::default(),
        scheduling: Gauge::default(),
        polls_scheduled: Counter::default(),
        housekeeping_removed: Family::default(),
    };
    registry.register(
        "gitfleet_outbox_published",
        "Outbox rows this relay published (confirmed by the broker)",
        m.published.clone(),
    );
    registry.register(
        "gitfleet_outbox_publish_failures",
        "Batches of outbox rows the broker did not confirm (they are published again)",
        m.publish_failures.clone(),
    );
    registry.register("gitfleet_outbox_backlog", "Outbox rows not yet published", m.outbox_backlog.clone());
    registry.register(
        "gitfleet_outbox_oldest_age_seconds",
        "Age of the oldest unpublished outbox row (0 when there is none)",
        m.outbox_oldest_age.clone(),
    );
    registry.register("gitfleet_job_results_started", "JobResults in STARTED (a worker runs them)", m.started.clone());
    registry.register(
        "gitfleet_job_results_started_oldest_heartbeat_age_seconds",
        "Seconds since the oldest STARTED JobResult's last heartbeat: past the reaper's limit its worker is gone",
        m.started_oldest_heartbeat_age.clone(),
    );
    registry.register("gitfleet_dead_letters", "Dead letters not replayed", m.dead_letters.clone());
    registry.register(
        "gitfleet_queue_messages",
        "Messages ready in the broker's queues (not counting those delivered and not yet acknowledged), by role \
         (work, deferred, retry, dead)",
        m.queue_messages.clone(),
    );
    registry.register(
        "gitfleet_queue_consumers",
        "Consumers of the broker's queues, by role (work: the workers)",
        m.queue_consumers.clone(),
    );
    registry.register(
        "gitfleet_relay_broker_up",
        "1 when the relay is connected to the broker, 0 while it reconnects",
        m.broker_up.clone(),
    );
    registry.register(
        "gitfleet_scheduler_leading",
        "1 while this relay is the one that schedules polls (one relay at a time)",
        m.scheduling.clone(),
    );
    registry.register(
        "gitfleet_polls_scheduled",
        "Poll events this relay's scheduler recorded for repositories whose sync_interval came round",
        m.polls_scheduled.clone(),
    );
    registry.register(
        "gitfleet_housekeeping_removed",
        "Rows housekeeping removed past their retention, by kind (job_results, log_entries, outbox_rows, \
         lock_holdings, dead_letters, webhook_deliveries)",
        m.housekeeping_removed.clone(),
    );
    for kind in ["job_results", "log_entries", "outbox_rows", "lock_holdings", "dead_letters", "webhook_deliveries"] {
        let _ = m.housekeeping_removed.get_or_create(&KindLabel { kind });
    }
    gitfleet_infra::metrics::register_process(&mut registry, "relay");
    RelayMetrics { registry, ..m }
});
