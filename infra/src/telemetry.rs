//! Process logs and traces. Logs are human-readable by default, JSON lines with `GITFLEET_LOG_FORMAT=json`, filtered
//! by `GITFLEET_LOG` (the `RUST_LOG` syntax, default `info`); a line written inside a span carries its trace and span
//! ids. Traces follow OpenTelemetry: every process builds spans (so ids exist and propagate), and exports them over
//! OTLP/HTTP (protobuf) only when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. The
//! SDK reads the other standard variables itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`.

use std::collections::HashMap;
use std::fmt;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// What [`init`] started; [`Telemetry::shutdown`] sends the spans still buffered before the process exits.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans leave the process (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (bounded by the exporter's timeout). Call it inside the Tokio runtime.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The batch processor's thread sends through the runtime: wait for it off the runtime's own threads.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = done {
                eprintln!("warning: could not send the last traces: {err}");
            }
        }
    }
}

/// Starts logging, and tracing for `service` (the default `service.name`). A second call (tests start several
/// components in one process) keeps the first subscriber and returns a [`Telemetry`] that exports nothing.
pub fn init(settings: &crate::settings::LogSettings, service: &str) -> Telemetry {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = settings.format == crate::settings::Format::Json;
    let (exporter, warning) = exporter().map_or_else(|err| (None, Some(err)), |exporter| (exporter, None));
    let exporting = exporter.is_some();
    let provider = tracer_provider(service, exporter);
    let tracer = provider.tracer("gitfleet");
    // Spans are kept at info whatever the log filter says: `GITFLEET_LOG=warn` quiets the log, not the traces.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt::layer();
    let registry = tracing_subscriber::registry().with(otel);
    let started = if json {
        let fmt = fmt.json().event_format(WithTraceIds { inner: tracing_subscriber::fmt::format().json(), json });
        registry.with(fmt.with_writer(std::io::stderr).with_filter(filter)).try_init()
    } else {
        // Text lines are escaped as they are written: a newline or terminal escape sequence in a repository's name
        // or message can neither forge a log line nor reach an operator's terminal (JSON escapes them itself).
        let format = tracing_subscriber::fmt::format().with_ansi(false);
        let fmt = fmt.with_ansi(false).event_format(WithTraceIds { inner: format, json });
        registry.with(fmt.with_writer(|| Escaping(std::io::stderr())).with_filter(filter)).try_init()
    };
    if started.is_err() {
        let _ = provider.shutdown();
        return Telemetry::default();
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(warning) = warning {
        tracing::warn!("traces are not exported: {warning}");
    }
    opentelemetry::global::set_tracer_provider(provider.clone());
    Telemetry { provider: exporting.then_some(provider) }
}

/// The OTLP exporter when an endpoint is configured, `None` when tracing is off.
fn exporter() -> Result<Option<opentelemetry_otlp::SpanExporter>, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| "no async runtime to send them from")?;
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| format!("cannot read the system's CA certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let timeout = std::time::Duration::from_secs(10);
    let client = OnRuntime { runtime, client: opentelemetry_http::hyper::HyperClient::new(tls, timeout, None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Some(exporter))
}

fn tracer_provider(service: &str, exporter: Option<opentelemetry_otlp::SpanExporter>) -> SdkTracerProvider {
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    let resource =
        resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    match exporter {
        Some(exporter) => builder.with_batch_exporter(exporter).build(),
        None => builder.build(),
    }
}

/// The OTLP client runs its requests on the process's Tokio runtime: the SDK's batch processor sends from a thread
/// of its own, where hyper has no reactor.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
}

impl opentelemetry_http::HttpClient for OnRuntime {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> std::pin::Pin<
        Box<
            dyn Future<
                    Output = Result<
                        opentelemetry_http::Response<opentelemetry_http::Bytes>,
                        opentelemetry_http::HttpError,
                    >,
                > + Send
                + 'b,
        >,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { sent.await.map_err(|e| Box::new(e) as opentelemetry_http::HttpError)? })
    }
}

/// The W3C `traceparent` of the current span, for an event that starts here (what the outbox row and the message
/// carry). Every span has valid ids (spans are built even when they are not exported).
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    traceparent_of(&context).unwrap_or_else(random_traceparent)
}

fn traceparent_of(context: &opentelemetry::Context) -> Option<String> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove("traceparent")
}

/// A new `traceparent` (version 00, sampled) when no span is current.
fn random_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// The remote parent a `traceparent` names (an empty context when it does not parse).
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The trace id (32 hex digits) of a valid `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let context = context_from_traceparent(traceparent);
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Makes `span` a child of the remote span a `traceparent` names (the message's, the request's).
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    let context = context_from_traceparent(traceparent);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Adds a link from `span` to the span a `traceparent` names (the relay's publish to the request that wrote the row).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    let context = context_from_traceparent(traceparent);
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}

/// Records a finished child span of `parent` from its measured start and end (a pipeline stage, timed where it runs:
/// on a blocking thread, or between two marks of one function).
pub fn record_span(
    parent: &opentelemetry::Context,
    name: &'static str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let tracer = opentelemetry::global::tracer("gitfleet");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(end);
}

/// The trace id of the current span (32 hex digits).
pub fn current_trace_id() -> Option<String> {
    let context = current_context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The OpenTelemetry context of the current `tracing` span (the parent to give [`record_span`]).
pub fn current_context() -> opentelemetry::Context {
    tracing::Span::current().context()
}

/// Formats a line as the inner format does, then adds the current span's trace and span ids: as the first keys of
/// a JSON line, or as `trace_id=... span_id=...` at the end of a text line.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            let dispatch = tracing::dispatcher::get_default(Clone::clone);
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span_ref = context.span();
            let span_context = span_ref.span_context();
            span_context.is_valid().then(|| (span_context.trace_id(), span_context.span_id()))
        });
        let Some((trace_id, span_id)) = ids else { return self.inner.format_event(ctx, writer, event) };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        if self.json && line.starts_with('{') {
            writer.write_str(&format!("{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\","))?;
            writer.write_str(&line[1..])
        } else {
            let (body, end) = line.strip_suffix('\n').map_or((line.as_str(), ""), |body| (body, "\n"));
            writer.write_str(&format!("{body} trace_id={trace_id} span_id={span_id}{end}"))
        }
    }
}

/// Writes each formatted line with its control characters escaped, keeping the line's own final newline.
struct Escaping<W>(W);

impl<W: std::io::Write> std::io::Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        let text = String::from_utf8_lossy(body);
        let escaped = gitfleet_shared::sanitize::printable(&text);
        if matches!(escaped, std::borrow::Cow::Borrowed(_)) && matches!(text, std::borrow::Cow::Borrowed(_)) {
            self.0.write_all(buf)?;
        } else {
            let mut line = escaped.into_owned().into_bytes();
            if newline {
                line.push(b'\n');
            }
            self.0.write_all(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_traceparent_gives_its_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(super::trace_id(tp).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(super::trace_id("00-nothing"), None);
        assert_eq!(super::trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn a_traceparent_survives_a_round_trip() {
        let tp = super::random_traceparent();
        let context = super::context_from_traceparent(&tp);
        assert_eq!(super::traceparent_of(&context).as_deref(), Some(tp.as_str()));
    }
}
