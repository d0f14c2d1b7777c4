//! Traces, metrics and probes of real processes: the `producer` command, the relay, the API server and a worker,
//! each exporting over OTLP/HTTP to a receiver the test runs on loopback, and scraped at `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use uuid::Uuid;

use crate::support::git::{Remote, delay_proxy, git_daemon};
use crate::support::otlp::{Receiver, Span};
use crate::support::{TestEnv, free_port};

const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const CONSUMER: i32 = 5;

fn otel(receiver: &Receiver, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_SERVICE_NAME", service.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ]
}

async fn wait_done(env: &TestEnv, id: Uuid) -> Result<gitfleet_infra::store::job_result::JobResultView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = env.job(id).await?;
        if view.status == "SUCCESS" || view.status == "FAILURE" {
            return Ok(view);
        }
        ensure!(Instant::now() < deadline, "JobResult {id} still {} after 60 s", view.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The worker's spans of one event: its `handle sync` span, a child of `parent`, and the stages under it.
fn assert_worker_trace(spans: &[Span], trace_id: &str, parent: &Span, job: Uuid, commit: &str) -> Result<()> {
    let event = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.service == "test-worker" && s.name == "handle sync")
        .context("the worker's event span is in the trace")?;
    assert_eq!(event.parent_span_id, parent.span_id, "the worker continues the request's span: {event:#?}");
    assert_eq!(event.kind, CONSUMER);
    assert_eq!(event.attributes.get("job_result_id").map(String::as_str), Some(job.to_string().as_str()));
    assert_eq!(event.attributes.get("event_id").map(String::as_str), Some(job.to_string().as_str()));
    assert_eq!(event.attributes.get("commit").map(String::as_str), Some(commit));
    assert_eq!(event.attributes.get("outcome").map(String::as_str), Some("success"));
    assert!(event.attributes.contains_key("repository_id") && event.attributes.contains_key("repo"), "{event:#?}");
    let children: HashMap<&str, &Span> =
        spans.iter().filter(|s| s.parent_span_id == event.span_id).map(|s| (s.name.as_str(), s)).collect();
    for stage in ["lock wait", "fetch", "fingerprint", "load", "reconcile and log", "report and pointers", "commit"] {
        let span = children.get(stage).with_context(|| format!("stage {stage:?} under the event: {children:?}"))?;
        assert_eq!(span.kind, INTERNAL);
        if stage != "lock wait" {
            assert_eq!(span.attributes.get("stage").map(String::as_str), Some(stage));
        }
    }
    assert!(children.contains_key("tree read"), "{children:?}");
    assert!(children.contains_key("config contexts"), "each data type's load is a span: {children:?}");
    assert!(children.keys().any(|k| k.starts_with("storage: ")), "{children:?}");
    Ok(())
}

/// `producer repo sync` and `POST .../sync` each start one trace: the command's (or request's) span, the relay's
/// publish linked to it, and the worker's event span continued from the message, with a span per stage; the
/// JobResult records the trace id and `producer job-result show` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_and_an_api_request_are_each_one_trace_down_to_the_worker_stages() -> Result<()> {
    let env = TestEnv::new().await?;
    let receiver = Receiver::start().await?;
    let worker = env.spawn_worker_process("traced", &otel(&receiver, "test-worker"))?;
    let _relay = env.spawn_producer_process("relay", &["relay"], &otel(&receiver, "test-relay"))?;
    let remote = Remote::new(env.tmp.path(), "traced")?;
    remote.commit("first", &[("config_contexts/one.yml", "_metadata: {name: One, weight: 1000}\na: 1\n")])?;
    let name = format!("Traced {}", env.id);
    let created = env.create(&name, &remote.file_url(), "main").await?;
    wait_done(&env, created).await?;

    // The command line, after a push (a sync with something to load).
    let commit =
        remote.commit("second", &[("config_contexts/two.yml", "_metadata: {name: Two, weight: 1000}\nb: 2\n")])?;
    let mut sync =
        env.spawn_producer_process("sync", &["repo", "sync", "--name", &name], &otel(&receiver, "test-cli"))?;
    let status = sync.wait_exit(Duration::from_secs(30))?.context("producer repo sync exits")?;
    ensure!(status.success(), "producer repo sync: {status:?}, {}", std::fs::read_to_string(&sync.log)?);
    let printed = std::fs::read_to_string(&sync.log)?;
    let job = Uuid::parse_str(printed.lines().last().context("it prints the JobResult id")?.trim())?;
    let view = wait_done(&env, job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let trace_id = view.trace_id.clone().context("the JobResult records its trace")?;
    let spans = receiver
        .wait_for("the command's trace", |spans| {
            spans.iter().any(|s| s.trace_id == trace_id && s.name == "producer repo sync")
                && spans.iter().any(|s| s.trace_id == trace_id && s.name == "commit")
                && spans.iter().any(|s| s.trace_id == trace_id && s.name == "handle sync")
                && spans.iter().any(|s| s.links.iter().any(|(t, _)| *t == trace_id))
        })
        .await?;
    let root = spans.iter().find(|s| s.trace_id == trace_id && s.name == "producer repo sync").context("root")?;
    assert_eq!((root.kind, root.parent_span_id.as_str(), root.service.as_str()), (CLIENT, "", "test-cli"));
    let publish = spans
        .iter()
        .find(|s| s.service == "test-relay" && s.links.contains(&(trace_id.clone(), root.span_id.clone())))
        .context("the relay's publish links to the command's span")?;
    assert_eq!(publish.name, "publish outbox");
    assert_ne!(publish.trace_id, trace_id, "the publish is a trace of its own, linked");
    assert_worker_trace(&spans, &trace_id, root, job, &commit)?;
    // The worker's log lines inside the event carry its trace and span ids.
    let event_span = spans.iter().find(|s| s.trace_id == trace_id && s.name == "handle sync").context("event")?;
    let log = std::fs::read_to_string(&worker.log)?;
    let ids = format!("trace_id={trace_id} span_id={}", event_span.span_id);
    assert!(log.lines().any(|l| l.contains("sync committed") && l.ends_with(&ids)), "{ids} in {log}");
    let mut shown = env.spawn_producer_process("show", &["job-result", "show", &job.to_string()], &[])?;
    shown.wait_exit(Duration::from_secs(30))?.context("job-result show exits")?;
    let text = std::fs::read_to_string(&shown.log)?;
    assert!(text.contains(&format!("trace:      {trace_id}")), "{text}");

    // The API, continuing the caller's own trace.
    let port = free_port();
    let serve_env = [otel(&receiver, "test-api"), vec![("GITFLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))]].concat();
    let _serve = env.spawn_producer_process("serve", &["serve"], &serve_env)?;
    crate::support::wait_port(port).await?;
    let token = gitfleet_producer::tokens::create(&env.pool, "traced", &[gitfleet_producer::tokens::Scope::Write])
        .await?
        .context("token")?;
    let commit =
        remote.commit("third", &[("config_contexts/two.yml", "_metadata: {name: Two, weight: 1000}\nb: 3\n")])?;
    let caller = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/repositories/{}/sync", urlencode(&name)))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{caller}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({}))
        .send()
        .await?;
    ensure!(response.status().is_success(), "sync request: {}", response.status());
    let body: serde_json::Value = response.json().await?;
    let job = Uuid::parse_str(body["job_result_id"].as_str().context("job_result_id")?)?;
    let view = wait_done(&env, job).await?;
    assert_eq!(view.trace_id.as_deref(), Some(caller), "the JobResult is in the caller's trace");
    let spans = receiver
        .wait_for("the request's trace", |spans| {
            spans.iter().any(|s| s.trace_id == caller && s.service == "test-api")
                && spans.iter().any(|s| s.trace_id == caller && s.name == "commit")
                && spans.iter().any(|s| s.trace_id == caller && s.name == "handle sync")
        })
        .await?;
    let request = spans.iter().find(|s| s.trace_id == caller && s.service == "test-api").context("request span")?;
    assert_eq!(request.name, "POST /api/v1/repositories/{name}/sync");
    assert_eq!((request.kind, request.parent_span_id.as_str()), (SERVER, "b7ad6b7169203331"));
    assert_eq!(request.attributes.get("http.response.status_code").map(String::as_str), Some("202"));
    assert_worker_trace(&spans, caller, request, job, &commit)?;
    env.teardown().await
}

fn urlencode(name: &str) -> String {
    name.replace(' ', "%20")
}

/// A Prometheus text page as `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: &str) -> Result<String> {
    let response = reqwest::get(format!("http://{addr}/metrics")).await?;
    ensure!(response.status().is_success(), "/metrics answered {}", response.status());
    let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    ensure!(kind.starts_with("application/openmetrics-text"), "content type {kind}");
    Ok(response.text().await?)
}

async fn wait_ready(addr: &str, log: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status() == 200
        {
            return Ok(());
        }
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        ensure!(Instant::now() < deadline, "{addr} not ready within 30 s: {}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The metric names a dashboard query or an alerting rule uses (`gitfleet_*` and `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("gitfleet_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.push(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

/// `/metrics` of a worker, the relay and the server move with a sync; every metric the checked-in dashboard and
/// alerting rules query is one these processes export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_a_sync_and_the_dashboard_queries_only_exported_metrics() -> Result<()> {
    let env = TestEnv::new().await?;
    let (worker_addr, relay_addr, api_port) =
        (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()), free_port());
    let worker = env.spawn_worker_process(
        "metered",
        &[("GITFLEET_METRICS_ADDR", worker_addr.clone()), ("GITFLEET_LOG_FORMAT", "json".to_owned())],
    )?;
    let relay = env.spawn_producer_process("relay", &["relay"], &[("GITFLEET_METRICS_ADDR", relay_addr.clone())])?;
    let _serve =
        env.spawn_producer_process("serve", &["serve"], &[("GITFLEET_HTTP_ADDR", format!("127.0.0.1:{api_port}"))])?;
    wait_ready(&worker_addr, &worker.log).await?;
    wait_ready(&relay_addr, &relay.log).await?;
    crate::support::wait_port(api_port).await?;

    let before = samples(&scrape(&worker_addr).await?);
    let relay_before = samples(&scrape(&relay_addr).await?);
    let remote = Remote::new(env.tmp.path(), "metered")?;
    remote.commit("first", &[("config_contexts/one.yml", "_metadata: {name: One, weight: 1000}\na: 1\n")])?;
    let created = env.create(&format!("Metered {}", env.id), &remote.file_url(), "main").await?;
    let view = wait_done(&env, created).await?;
    assert_eq!(view.status, "SUCCESS");
    // A JSON log line inside the event starts with its trace and span ids (tracing is off here: ids still exist).
    let log = std::fs::read_to_string(&worker.log)?;
    let committed: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "sync committed")
        .with_context(|| format!("a JSON 'sync committed' line in {log}"))?;
    assert_eq!(committed["trace_id"].as_str(), view.trace_id.as_deref(), "{committed}");
    assert!(committed["span_id"].as_str().is_some_and(|s| s.len() == 16), "{committed}");
    let after = samples(&scrape(&worker_addr).await?);
    let relay_after = samples(&scrape(&relay_addr).await?);
    let moved = |samples: &HashMap<String, f64>, series: &str| samples.get(series).copied().unwrap_or(0.0);
    let syncs = r#"gitfleet_syncs_total{kind="create",outcome="success"}"#;
    assert_eq!(moved(&after, syncs), moved(&before, syncs) + 1.0, "{after:#?}");
    for series in [
        r#"gitfleet_sync_duration_seconds_count{kind="create"}"#,
        r#"gitfleet_sync_stage_duration_seconds_count{stage="fetch"}"#,
        r#"gitfleet_sync_stage_duration_seconds_count{stage="load"}"#,
        r#"gitfleet_lock_wait_seconds_count{outcome="acquired"}"#,
        r#"gitfleet_storage_requests_total{storage="filesystem",operation="put",outcome="ok"}"#,
    ] {
        assert!(moved(&after, series) > moved(&before, series), "{series} moved: {after:#?}");
    }
    assert_eq!(moved(&after, "gitfleet_worker_consumers"), 1.0);
    assert!(moved(&after, "process_resident_memory_bytes") > 0.0);
    let published = "gitfleet_outbox_published_total";
    assert!(moved(&relay_after, published) > moved(&relay_before, published), "{relay_after:#?}");
    assert_eq!(moved(&relay_after, r#"gitfleet_queue_consumers{queue="work"}"#), 1.0, "{relay_after:#?}");
    assert_eq!(moved(&relay_after, "gitfleet_relay_broker_up"), 1.0);
    assert!(relay_after.contains_key("gitfleet_outbox_backlog"), "{relay_after:#?}");
    let api = reqwest::get(format!("http://127.0.0.1:{api_port}/healthz")).await?;
    assert_eq!(api.status(), 200);
    let api_page = scrape(&format!("127.0.0.1:{api_port}")).await?;
    assert!(
        api_page.contains(r#"gitfleet_http_requests_total{method="GET",route="/healthz",status="200"} 1"#),
        "{api_page}"
    );

    // Every name the dashboard and the rules use is exported (a histogram by its _bucket, _sum or _count).
    let mut exported: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for page in [scrape(&worker_addr).await?, scrape(&relay_addr).await?, api_page] {
        for line in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let mut parts = line.split(' ');
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            match kind {
                "counter" => exported.insert(format!("{name}_total")),
                "histogram" => {
                    exported.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
                    true
                }
                _ => exported.insert(name.to_owned()),
            };
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ops/grafana/gitfleet.json"))?)?;
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().unwrap_or_default()));
        }
    }
    ensure!(queried.len() >= 10, "the dashboard queries metrics: {queried:?}");
    let rules = std::fs::read_to_string(root.join("ops/prometheus/gitfleet-rules.yml"))?;
    queried.extend(rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).flat_map(metric_names));
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}; exported: {exported:?}");
    env.teardown().await
}

/// `/readyz` is 503 while the database is out of reach, 200 once the worker consumes, and 503 again during the
/// drain after SIGTERM; `/healthz` answers all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_without_the_database_and_while_draining() -> Result<()> {
    let env = TestEnv::new().await?;
    let addr = format!("127.0.0.1:{}", free_port());
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/gitfleet", free_port());
    let _lost = env
        .spawn_worker_process("lost", &[("GITFLEET_METRICS_ADDR", addr.clone()), ("GITFLEET_DATABASE_URL", nowhere)])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await {
            break (r.status(), r.text().await?);
        }
        ensure!(Instant::now() < deadline, "no /readyz within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database"), "{body}");
    assert_eq!(reqwest::get(format!("http://{addr}/healthz")).await?.status(), 200);
    drop(_lost);

    // A worker draining a slow fetch after SIGTERM is not ready, and still healthy.
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "slow")?;
    remote.commit("first", &[("README.md", "one")])?;
    let daemon = git_daemon(&served).await?;
    let (port, _proxy) = delay_proxy(daemon.port, Arc::new(AtomicU64::new(4_000))).await?;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = env.spawn_worker_process(
        "draining",
        &[("GITFLEET_METRICS_ADDR", addr.clone()), ("GITFLEET_SHUTDOWN_GRACE_SECS", "20".into())],
    )?;
    let _relay = env.spawn_producer_process("relay", &["relay"], &[])?;
    wait_ready(&addr, &worker.log).await?;
    let job = env.create(&format!("Slow {}", env.id), &format!("git://127.0.0.1:{port}/slow.git"), "main").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.job(job).await?.status != "STARTED" {
        ensure!(Instant::now() < deadline, "the slow sync never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.terminate()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let drained = loop {
        let r = reqwest::get(format!("http://{addr}/readyz")).await?;
        if r.status() == 503 {
            break r.text().await?;
        }
        if Instant::now() > deadline {
            bail!("/readyz still {} after SIGTERM", r.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(drained.contains("draining"), "{drained}");
    assert_eq!(reqwest::get(format!("http://{addr}/healthz")).await?.status(), 200);
    let status = worker.wait_exit(Duration::from_secs(30))?.context("the worker exits after its drain")?;
    assert!(status.success(), "{status:?}");
    assert_eq!(env.job(job).await?.status, "SUCCESS", "the sync in flight finished during the drain");
    env.teardown().await
}
