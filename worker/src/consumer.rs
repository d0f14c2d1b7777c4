//! The consumer loop: competing consumers on the quorum work queue, manual acks, bounded prefetch.
//!
//! Each delivery runs in its own task (a panic there is caught and the message handed back). A message is
//! acknowledged only after its outcome is durable in PostgreSQL; a malformed one is copied to the dead-letter
//! exchange with the reason in a header, confirmed, and then acknowledged, so it never blocks the queue.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use futures_util::{FutureExt, StreamExt};
use gitfleet_infra::amqp::{self, Publisher, REJECT_REASON_HEADER, Topology};
use gitfleet_shared::event::Event;
use gitfleet_shared::job_result::JobStatus;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WorkerSettings;
use crate::job::{self, Disposition, JobContext};

/// Runs the worker with the built-in data types until `shutdown` is cancelled, reconnecting to RabbitMQ when the
/// connection is lost.
pub async fn run(settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let parts = Parts {
        registry: gitfleet_shared::loaders::Registry::with_builtins(),
        storage: crate::storage::StorageSettings::from_env()?,
        secrets: crate::secrets::Secrets::from_env(settings.secrets_dir.as_deref())?,
    };
    run_with(settings, parts, shutdown).await
}

/// What a worker is built from besides its settings: the data types it loads, where it stores files and the
/// secrets groups it fetches with. `run` reads the last two from the environment; a program that embeds the
/// worker (or a test) passes its own.
pub struct Parts {
    pub registry: gitfleet_shared::loaders::Registry,
    pub storage: crate::storage::StorageSettings,
    pub secrets: crate::secrets::Secrets,
}

/// The same with a registry of one's own: a worker that embeds gitfleet as a library registers its extension data
/// types here.
pub async fn run_with(settings: WorkerSettings, parts: Parts, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Each event in flight holds its lock's connection and needs another for its log lines and heartbeats; the
    // reaper and the dead-letter recorder need theirs. A smaller pool would starve running jobs of their heartbeat.
    let mut database = settings.database.clone();
    let needed = usize::from(settings.prefetch.max(1)) * 2 + 4;
    if database.pool_size < needed {
        tracing::info!(configured = database.pool_size, used = needed, "database pool raised to 2 x prefetch + 4");
        database.pool_size = needed;
    }
    // The probes answer from the start: not ready while the database or the broker is still out of reach.
    let probes = Arc::new(Probes { shutdown: shutdown.clone(), ..Probes::default() });
    let probes_stop = CancellationToken::new();
    if let Some(addr) = settings.metrics.addr {
        let render: gitfleet_infra::metrics::Render =
            Arc::new(|| Box::pin(async { gitfleet_infra::metrics::encode(&crate::metrics::METRICS.registry) }));
        gitfleet_infra::metrics::serve(addr, probes.clone().check(), render, probes_stop.clone()).await?;
    }
    let _stop_probes = probes_stop.drop_guard();
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(60)).await?;
    let _ = probes.pool.set(pool.clone());
    let storage = Arc::new(crate::storage::Storage::new(parts.storage).await);
    let git_root = settings.git_root();
    std::fs::create_dir_all(&git_root)?;
    let git_cache = {
        let (root, max) = (git_root.clone(), settings.git_cache_max_bytes);
        tokio::task::spawn_blocking(move || crate::git_cache::MirrorCache::open(&root, max)).await?
    };
    let ctx = Arc::new(JobContext {
        storage,
        pool,
        git_root,
        git_cache,
        worker_name: settings.worker_name(),
        topology: Topology::new(&settings.amqp),
        registry: Arc::new(parts.registry),
        max_mirror_bytes: settings.max_mirror_bytes,
        tls: settings.tls(),
        host_keys: settings.host_keys(),
        shallow: settings.git_shallow,
        git_timeout: Duration::from_secs(settings.git_timeout_secs.max(1)),
        secrets: Arc::new(parts.secrets),
        scope_mode: settings.scope_mode(),
        schema_enforcement: settings.schema_enforcement,
        limits: settings.limits(),
        load_batch_files: settings.load_batch_files,
        heartbeat: Duration::from_secs(settings.heartbeat_secs.max(1)),
        artifact_slots: Arc::new(tokio::sync::Semaphore::new(1)),
        artifacts_building: Arc::default(),
        artifacts_latest: Arc::default(),
    });
    crate::git::set_network_timeouts(ctx.git_timeout);
    crate::git::trust_indexed_objects();
    if ctx.host_keys == crate::known_hosts::HostKeyPolicy::AcceptAny {
        tracing::warn!(
            "SSH host-key checking is off (GITFLEET_SSH_STRICT_HOST_KEY_CHECKING=no): any host key is accepted"
        );
    }
    remove_orphan_mirrors(&ctx).await?;
    tracing::info!(worker = %ctx.worker_name, git_root = %ctx.git_root.display(), prefetch = settings.prefetch, "worker starting");

    let reaper = {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        let (every, stale) = (ctx.heartbeat, Duration::from_secs(settings.reap_after_secs.max(1)));
        tokio::spawn(async move { crate::fleet::reap(&ctx, every, stale, &shutdown).await })
    };

    gitfleet_infra::retry::reconnecting("the worker's RabbitMQ session", Duration::from_millis(200), &shutdown, || {
        session(&settings, &ctx, &shutdown, &probes.consuming)
    })
    .await;
    reaper.abort();
    ctx.pool.close();
    tracing::info!(worker = %ctx.worker_name, "worker stopped");
    Ok(())
}

/// Spec b.9: mirrors under `GIT_ROOT` whose slug belongs to no live repository are removed at start-up, and so are
/// temporary clone directories left by a crash (only old ones: a worker sharing the directory may be cloning now).
async fn remove_orphan_mirrors(ctx: &JobContext) -> anyhow::Result<()> {
    let client = ctx.pool.get().await?;
    let live: std::collections::HashSet<String> =
        gitfleet_infra::store::repository::list_live(&**client).await?.into_iter().map(|r| r.slug).collect();
    drop(client);
    for entry in std::fs::read_dir(&ctx.git_root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() {
            // An artifact or a report a stopped worker was writing, or the copy of a log it kept (only an old one:
            // a worker sharing the directory may be running that job now; its report would read the log back).
            let old = || entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| m.elapsed().ok());
            if name.starts_with(".tmp-artifact-")
                || name.starts_with(".tmp-report-")
                || (name.starts_with(".tmp-log-") && old().is_some_and(|age| age > Duration::from_secs(3600)))
            {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let stale_tmp = name.starts_with(".tmp-")
            && entry.metadata()?.modified()?.elapsed().unwrap_or_default() > Duration::from_secs(3600);
        let orphan = !name.starts_with('.') && !live.contains(&name);
        if stale_tmp || orphan {
            tracing::warn!(path = %entry.path().display(), "Deleting unmanaged (leftover?) Git repository clone");
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// What `/readyz` of a worker looks at.
#[derive(Default)]
struct Probes {
    /// Set once PostgreSQL was reached and migrated.
    pool: std::sync::OnceLock<deadpool_postgres::Pool>,
    /// A consumer runs on the work queue.
    consuming: std::sync::atomic::AtomicBool,
    shutdown: CancellationToken,
}

impl Probes {
    /// Not ready while it drains after SIGTERM, before PostgreSQL was reached, while it has no consumer on the work
    /// queue (the broker is out of reach and it reconnects), nor when PostgreSQL does not answer now.
    fn check(self: Arc<Self>) -> gitfleet_infra::metrics::ReadyCheck {
        Arc::new(move || {
            let probes = self.clone();
            Box::pin(async move {
                if probes.shutdown.is_cancelled() {
                    return Err("draining: the worker is stopping".to_owned());
                }
                let Some(pool) = probes.pool.get() else {
                    return Err("connecting to the database".to_owned());
                };
                if !probes.consuming.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err("not consuming: the broker is not reachable yet".to_owned());
                }
                gitfleet_infra::db::ping(pool).await.map_err(|e| format!("the database does not answer: {e}"))
            })
        })
    }
}

/// Clears the consuming flag (and the gauge) when a session ends, however it ends.
struct Consuming<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Consuming<'_> {
    fn drop(&mut self) {
        if self.0.swap(false, std::sync::atomic::Ordering::SeqCst) {
            crate::metrics::METRICS.consumers.dec();
        }
    }
}

/// One connection's life: consume until shutdown (Ok) or until the connection fails (Err).
async fn session(
    settings: &WorkerSettings,
    ctx: &Arc<JobContext>,
    shutdown: &CancellationToken,
    consuming: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let connection = amqp::connect(&settings.amqp, Duration::from_secs(10)).await?;
    let publisher = Publisher::new(&connection).await?;
    ctx.topology.declare(publisher.channel()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(settings.prefetch.max(1), BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            ctx.topology.work.as_str().into(),
            ctx.worker_name.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %ctx.topology.work, "consuming");
    if !consuming.swap(true, std::sync::atomic::Ordering::SeqCst) {
        crate::metrics::METRICS.consumers.inc();
    }
    let consumer_flag = Consuming(consuming);
    let recorder_channel = connection.create_channel().await?;
    let recorder = {
        let (ctx, shutdown, limit) = (ctx.clone(), shutdown.clone(), settings.amqp.delivery_limit);
        let channel = recorder_channel.clone();
        tokio::spawn(async move {
            if let Err(err) = crate::fleet::record_dead_letters(&ctx, channel, limit, &shutdown).await {
                tracing::warn!(error = %err, "dead-letter recorder stopped");
            }
        })
    };

    let mut tasks = JoinSet::new();
    let isolation = Isolation::default();
    let outcome = loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let (ctx, publisher, tries) = (ctx.clone(), publisher.clone(), settings.transient_retries);
                    let (isolation, stop_limit) = (isolation.clone(), settings.amqp.delivery_limit);
                    tasks.spawn(async move {
                        let handling =
                            Handling { ctx: &ctx, publisher: &publisher, isolation: &isolation, tries, stop_limit };
                        process(handling, delivery).await
                    });
                }
                Some(Err(err)) => break Err(anyhow::Error::from(err)),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
            Some(joined) = tasks.join_next() => {
                if let Err(err) = joined {
                    tracing::error!(error = %err, "event task failed");
                }
            }
            () = shutdown.cancelled() => break Ok(()),
        }
    };

    drop(consumer_flag);
    if outcome.is_ok() {
        // Stop taking new events, then let the in-flight ones finish within the grace period.
        let _ = channel.basic_cancel(ShortString::from(ctx.worker_name.as_str()), BasicCancelOptions::default()).await;
    }
    let drained = tokio::time::timeout(settings.shutdown_grace(), async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "event task failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(in_flight = tasks.len(), "grace period over: handing unfinished events back");
        tasks.abort_all();
    }
    recorder.abort();
    // Every channel is closed before the connection, the consumer's last (closing it returns every unacknowledged
    // message to the queue): a connection closed under open channels makes the client log errors about them.
    let _ = recorder_channel.close(200, "worker stopping".into()).await;
    let _ = publisher.channel().close(200, "worker stopping".into()).await;
    let _ = channel.close(200, "worker stopping".into()).await;
    let _ = connection.close(200, "worker stopping".into()).await;
    outcome
}

/// Header counting the retries an event has had after transient faults.
const RETRY_HEADER: &str = "x-gitfleet-retry";
/// Header with the time (milliseconds since the epoch) of the first transient fault of an event.
const FIRST_FAILURE_HEADER: &str = "x-gitfleet-first-failure";

/// How a worker keeps an event that may have crashed a worker away from the others.
///
/// An event redelivered while its JobResult says STARTED was running when its worker stopped (killed, crashed, cut
/// off): it may be the cause. It runs alone: after the events in flight finish, and while it runs, the events
/// that arrive are sent through the delay queue instead of being held, so if it stops this worker too, nothing
/// else was held with it. Only one such event runs at a time per worker; each time one is found, its JobResult
/// counts a stop (`meta.worker_stops`), and at the delivery limit it is dead-lettered with that reason.
#[derive(Clone, Default)]
struct Isolation {
    turns: Arc<tokio::sync::RwLock<()>>,
    /// An event runs (or waits to run) alone.
    alone: Arc<std::sync::atomic::AtomicBool>,
}

/// What handling a delivery needs besides the delivery itself.
struct Handling<'a> {
    ctx: &'a JobContext,
    publisher: &'a Publisher,
    isolation: &'a Isolation,
    /// Tries of a transient fault inside one delivery.
    tries: usize,
    /// Worker stops under one event before it is dead-lettered (the delivery limit).
    stop_limit: u32,
}

/// Handles one delivery and settles it exactly once, whatever happens while handling it (a panic included).
async fn process(handling: Handling<'_>, delivery: Delivery) {
    let (ctx, publisher) = (handling.ctx, handling.publisher);
    let (data, properties, acker) = (delivery.data.clone(), delivery.properties.clone(), delivery.acker.clone());
    let routing_key = delivery.routing_key.to_string();
    crate::metrics::METRICS.in_flight.inc();
    let handled = std::panic::AssertUnwindSafe(process_event(&handling, delivery)).catch_unwind().await;
    crate::metrics::METRICS.in_flight.dec();
    if let Err(panic) = handled {
        let what = gitfleet_shared::panic_message(&*panic);
        tracing::error!(panic = %what, "handling an event panicked: dead-lettering it");
        let reason = format!("the worker failed unexpectedly while handling this event ({what})");
        dead_letter_parts(ctx, publisher, &data, properties, &routing_key, &acker, &reason).await;
    }
}

/// Transient faults are tried `tries` times in all inside the delivery (backoff with jitter); then the event waits
/// in a retry queue for the schedule's next delay and comes back, until the schedule is spent and it is
/// dead-lettered. A failing remote or store never holds a worker slot while it waits.
async fn process_event(handling: &Handling<'_>, delivery: Delivery) {
    let Handling { ctx, publisher, isolation, tries, stop_limit } = *handling;
    let event = match Event::decode(&delivery.data) {
        Ok(event) => event,
        Err(err) => {
            dead_letter(ctx, publisher, delivery, &err.to_string()).await;
            return;
        }
    };
    let span = tracing::info_span!(
        "event",
        otel.name = %format!("handle {}", event.kind),
        otel.kind = "consumer",
        event_id = %event.event_id,
        job_result_id = %event.event_id,
        kind = %event.kind,
        repo = %event.repository.slug,
        repository_id = %event.repository.id,
        commit = tracing::field::Empty,
        fetched_bytes = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    // The event's trace goes on from the request that made it (the message's W3C `traceparent`).
    if let Some(traceparent) = amqp::header_str(&delivery.properties, "traceparent") {
        gitfleet_infra::telemetry::continue_from(&span, &traceparent);
    }
    let status = if delivery.redelivered { job_status(ctx, &event).await } else { None };
    if status == Some(JobStatus::Pending) {
        // Handed back because the worker that held it stopped (a crash, a lost connection) before it ran: send it
        // again as a new message, so the work queue's delivery limit counts only the event that was running.
        let fresh = publisher.publish("", &ctx.topology.work, &delivery.data, delivery.properties.clone()).await;
        match fresh {
            Ok(()) => {
                tracing::info!(parent: &span, "redelivered event that never ran: queued afresh");
                ack(&delivery).await;
                return;
            }
            Err(err) => tracing::warn!(parent: &span, error = %err, "could not queue the event afresh; running it"),
        }
    }
    use std::sync::atomic::Ordering;
    let suspect = status == Some(JobStatus::Started);
    let _turn = if suspect {
        if isolation.alone.swap(true, Ordering::SeqCst) {
            // Another event already runs alone here: this one waits its turn in the delay queue, not in this worker.
            requeue_later(ctx, publisher, delivery, &event).await;
            return;
        }
        let alone = AloneFlag(&isolation.alone);
        let stops = note_worker_stop(ctx, &event).await;
        if stops >= stop_limit {
            let reason = format!(
                "the worker running it stopped {stops} times before it ended (a crash, a kill or a lost connection; \
                 GITFLEET_DELIVERY_LIMIT is {stop_limit})"
            );
            dead_letter(ctx, publisher, delivery, &reason).await;
            return;
        }
        tracing::warn!(parent: &span, stops, "redelivered while it was running: it runs alone on this worker");
        Turn::Alone { _guard: isolation.turns.clone().write_owned().await, _flag: alone }
    } else {
        if isolation.alone.load(Ordering::SeqCst) {
            requeue_later(ctx, publisher, delivery, &event).await;
            return;
        }
        Turn::Shared { _guard: isolation.turns.clone().read_owned().await }
    };
    let handled = (|| job::handle(ctx, publisher, &event))
        .retry(gitfleet_infra::retry::transient(tries))
        .notify(|err, wait| {
            crate::metrics::event("retried");
            tracing::warn!(parent: &span, error = %err, retry_in = ?wait, "transient failure; retrying");
        })
        .instrument(span.clone())
        .await;
    match handled {
        Ok(Disposition::Ack) => ack(&delivery).await,
        Ok(Disposition::Defer) => defer(ctx, publisher, delivery).await,
        Err(err) => retry_later(ctx, publisher, delivery, &event, &err.to_string(), &span).await,
    }
}

/// The event's JobResult status (None when it cannot be read: the event is then handled as usual).
async fn job_status(ctx: &JobContext, event: &Event) -> Option<JobStatus> {
    let client = ctx.pool.get().await.ok()?;
    gitfleet_infra::store::job_result::status(&**client, event.event_id).await.ok().flatten()
}

/// Counts one more stop of a worker while it ran the event; returns the count.
async fn note_worker_stop(ctx: &JobContext, event: &Event) -> u32 {
    let Ok(client) = ctx.pool.get().await else { return 1 };
    let stops = gitfleet_infra::store::job_result::note_worker_stop(&**client, event.event_id).await;
    stops.ok().flatten().and_then(|n| u32::try_from(n).ok()).unwrap_or(1)
}

/// Sends the event through the delay queue (its JobResult back to PENDING: nobody is on it meanwhile).
async fn requeue_later(ctx: &JobContext, publisher: &Publisher, delivery: Delivery, event: &Event) {
    if let Ok(client) = ctx.pool.get().await {
        let _ = gitfleet_infra::store::job_result::back_to_pending(&**client, event.event_id).await;
    }
    defer(ctx, publisher, delivery).await;
}

/// A turn to run an event, shared with the other events or alone; held (for its drop) until the event is settled.
enum Turn<'a> {
    Shared { _guard: tokio::sync::OwnedRwLockReadGuard<()> },
    Alone { _guard: tokio::sync::OwnedRwLockWriteGuard<()>, _flag: AloneFlag<'a> },
}

/// Clears the "an event runs alone" flag when the lone event ends, however it ends.
struct AloneFlag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for AloneFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sends an event that met a transient fault to the retry queue of its next delay, or dead-letters it when the
/// schedule is spent.
async fn retry_later(
    ctx: &JobContext,
    publisher: &Publisher,
    delivery: Delivery,
    event: &Event,
    error: &str,
    span: &tracing::Span,
) {
    let error = gitfleet_shared::sanitize::sanitize(error);
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let retries = header_u64(&headers, RETRY_HEADER).unwrap_or(0);
    let now = chrono::Utc::now().timestamp_millis();
    let first = header_u64(&headers, FIRST_FAILURE_HEADER).and_then(|t| i64::try_from(t).ok()).unwrap_or(now);
    let schedule = &ctx.topology.retry_delays;
    let Some(&delay) = usize::try_from(retries).ok().and_then(|n| schedule.get(n)) else {
        let waited = gitfleet_shared::job_result::format_duration(std::time::Duration::from_millis(
            u64::try_from(now - first).unwrap_or(0),
        ));
        let reason = format!(
            "transient failures did not pass in {waited} ({} tries after the first, GITFLEET_RETRY_DELAYS); the last: \
             {error}",
            schedule.len()
        );
        tracing::warn!(parent: span, %reason, "retry schedule spent: dead-lettering the event");
        dead_letter(ctx, publisher, delivery, &reason).await;
        return;
    };
    let note = format!("{error} (try {} of {} in {delay} s)", retries + 2, schedule.len() + 1);
    tracing::warn!(parent: span, error = %error, retry_in_secs = delay, "transient failure; the event waits for its next try");
    crate::metrics::event("retried");
    if let Ok(client) = ctx.pool.get().await {
        // Back to PENDING with the reason: the reaper never mistakes a waiting event for a lost one.
        let _ = gitfleet_infra::store::job_result::note_transient(&**client, event.event_id, &note).await;
    }
    headers.insert(
        RETRY_HEADER.into(),
        lapin::types::AMQPValue::LongLongInt(i64::try_from(retries + 1).unwrap_or(i64::MAX)),
    );
    headers.insert(FIRST_FAILURE_HEADER.into(), lapin::types::AMQPValue::LongLongInt(first));
    let properties = delivery.properties.clone().with_headers(headers);
    let queue = ctx.topology.retry_queue(delay);
    match publisher.publish("", &queue, &delivery.data, properties).await {
        Ok(()) => ack(&delivery).await,
        Err(err) => {
            // The broker itself is in trouble: hand the event back; its delivery limit still bounds the tries.
            tracing::warn!(parent: span, error = %err, "could not queue the retry; returning the event to the queue");
            if let Err(err) =
                delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
            {
                tracing::warn!(error = %err, "could not return the event (it comes back when the channel closes)");
            }
        }
    }
}

fn header_u64(headers: &FieldTable, name: &str) -> Option<u64> {
    use lapin::types::AMQPValue;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %err, "ack failed; the event will be redelivered and recognised as done");
    }
}

/// Sends the event through the delay queue (confirmed) and acknowledges the original.
async fn defer(ctx: &JobContext, publisher: &Publisher, delivery: Delivery) {
    crate::metrics::event("deferred");
    let published = publisher.publish("", &ctx.topology.delay, &delivery.data, delivery.properties.clone()).await;
    match published {
        Ok(()) => ack(&delivery).await,
        Err(err) => {
            tracing::warn!(error = %err, "could not defer; returning the event to the queue");
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
        }
    }
}

/// Copies a message that is not a valid event (or cannot be handled) to the dead-letter exchange with the reason,
/// then acknowledges it.
async fn dead_letter(ctx: &JobContext, publisher: &Publisher, delivery: Delivery, reason: &str) {
    let routing_key = delivery.routing_key.to_string();
    dead_letter_parts(
        ctx,
        publisher,
        &delivery.data,
        delivery.properties.clone(),
        &routing_key,
        &delivery.acker,
        reason,
    )
    .await;
}

async fn dead_letter_parts(
    ctx: &JobContext,
    publisher: &Publisher,
    data: &[u8],
    original: BasicProperties,
    routing_key: &str,
    acker: &lapin::Acker,
    reason: &str,
) {
    tracing::warn!(reason, routing_key, "dead-lettering the message");
    crate::metrics::event("dead_lettered");
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(REJECT_REASON_HEADER.into(), amqp::long_string(reason));
    headers.insert("x-gitfleet-rejected-by".into(), amqp::long_string(&ctx.worker_name));
    if amqp::header_str(&original, "x-original-routing-key").is_none() {
        headers.insert("x-original-routing-key".into(), amqp::long_string(routing_key));
    }
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_content_type(original.content_type().clone().unwrap_or_else(|| "application/octet-stream".into()));
    let properties = match original.message_id() {
        Some(id) => properties.with_message_id(id.clone()),
        None => properties,
    };
    match publisher.publish(&ctx.topology.dead_exchange, "", data, properties).await {
        Ok(()) => {
            if let Err(err) = acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %err, "ack failed; the event will be redelivered and recognised as done");
            }
        }
        Err(err) => {
            // Without the copy, let the broker dead-letter it (no reason header, but nothing is lost).
            tracing::warn!(error = %err, "could not publish to the dead-letter exchange; rejecting");
            let _ = acker.reject(lapin::options::BasicRejectOptions { requeue: false }).await;
        }
    }
}
