//! What every long-running process serves besides its work: Prometheus metrics at `/metrics` (the text format, as
//! `prometheus-client` encodes it), `/healthz` (the process runs) and `/readyz` (it can do its work now), on
//! `GITFLEET_METRICS_ADDR` for the worker and the relay, and on the API's own address for `producer serve`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The content type of the text `prometheus-client` writes (OpenMetrics 1.0, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GITFLEET_METRICS_ADDR`: where a worker or relay serves `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsSettings {
    /// Address (host:port) to serve /metrics, /healthz and /readyz on; none by default (a Kubernetes pod sets one
    /// for its probes and scrapes).
    #[arg(long = "metrics-addr", env = "GITFLEET_METRICS_ADDR", value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Answers `/readyz`: `Err(reason)` when the process cannot do its work now.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;
/// Writes the `/metrics` page (after refreshing what is read at scrape time, such as the outbox's backlog).
pub type Render = Arc<dyn Fn() -> BoxFuture<String> + Send + Sync>;

/// Encodes a registry in the text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The `/metrics` answer.
pub fn response(text: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The `/readyz` answer: 200 `ready`, or 503 with the reason.
pub async fn readiness(check: &ReadyCheck) -> Response {
    match check().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

/// The probe and metrics routes, for a process whose only HTTP is these.
pub fn router(ready: ReadyCheck, render: Render) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { readiness(&ready).await }))
        .route("/metrics", get(move || async move { response(render().await) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: /metrics, /healthz and /readyz are served here\n") })
}

/// Binds `addr` and serves [`router`] until `stop` fires. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    ready: ReadyCheck,
    render: Render,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    let app = router(ready, render);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::warn!(error = %err, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

/// Registers `gitfleet_build_info` and the `process_*` metrics of this process.
pub fn register_process(registry: &mut Registry, component: &'static str) {
    registry.register_collector(Box::new(ProcessCollector { component }));
}

/// Reads the process's figures from `/proc` at each scrape (Linux; elsewhere only the build info).
#[derive(Debug)]
struct ProcessCollector {
    component: &'static str,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = encoder.encode_descriptor(
            "gitfleet_build_info",
            "The running build: version and component (worker, producer)",
            None,
            MetricType::Gauge,
        )?;
        let mut info = info;
        let labels = [("version", env!("CARGO_PKG_VERSION")), ("component", self.component)];
        ConstGauge::new(1_i64).encode(info.encode_family(&labels)?)?;
        let Some(figures) = ProcFigures::read() else { return Ok(()) };
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge("process_resident_memory_bytes", "Resident memory size in bytes", figures.resident_bytes)?;
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", figures.virtual_bytes)?;
        gauge("process_open_fds", "Open file descriptors", figures.open_fds)?;
        gauge("process_threads", "Threads of the process", figures.threads)?;
        gauge("process_start_time_seconds", "Start time of the process since the Unix epoch", figures.start_time)?;
        ConstCounter::new(figures.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            MetricType::Counter,
        )?)
    }
}

struct ProcFigures {
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    threads: f64,
    start_time: f64,
    cpu_seconds: f64,
}

impl ProcFigures {
    fn read() -> Option<Self> {
        let stat = Stat::read("self")?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|v| v * 1024.0)
        };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        Some(Self {
            resident_bytes: kib("VmRSS:").unwrap_or(0.0),
            virtual_bytes: kib("VmSize:").unwrap_or(0.0),
            open_fds: std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0),
            threads: stat.field(20).unwrap_or(0.0),
            start_time: boot + stat.field(22).unwrap_or(0.0) / TICKS,
            cpu_seconds: stat.cpu_seconds(),
        })
    }
}

/// `/proc` reports times in clock ticks of 1/100 s (`USER_HZ`, 100 on Linux's common architectures).
const TICKS: f64 = 100.0;

/// A process's `/proc/<pid>/stat` line.
struct Stat(String);

impl Stat {
    fn read(pid: &str) -> Option<Self> {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().map(Self)
    }

    /// Field `n` (from 1, as `proc(5)` numbers them). The command name (field 2) is in parentheses and may hold
    /// spaces: fields are counted after its end.
    fn field(&self, n: usize) -> Option<f64> {
        let rest = self.0.get(self.0.rfind(')')? + 2..)?;
        rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
    }

    fn cpu_seconds(&self) -> f64 {
        (self.field(14).unwrap_or(0.0) + self.field(15).unwrap_or(0.0)) / TICKS
    }
}

/// User and system CPU seconds process `pid` has spent so far (Linux), 0 when it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    Stat::read(&pid.to_string()).map_or(0.0, |stat| stat.cpu_seconds())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_figures_are_read_and_encoded() {
        let mut registry = prometheus_client::registry::Registry::default();
        super::register_process(&mut registry, "test");
        let text = super::encode(&registry);
        assert!(text.contains("gitfleet_build_info{version=\""), "{text}");
        assert!(text.contains("component=\"test\"} 1"), "{text}");
        let rss = text.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).unwrap_or("0");
        assert!(rss.parse::<f64>().unwrap_or(0.0) > 1e6, "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
