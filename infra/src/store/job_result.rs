//! JobResults and JobLogEntries (spec f.1, f.2).
//!
//! Log entries are written on their own (auto-commit) so they survive a rolled-back sync and can be read while it
//! runs, as Nautobot's `job_logs` connection does.

use chrono::{DateTime, Utc};
use gitfleet_shared::event::EventKind;
use gitfleet_shared::job_result::{JobStatus, LogEntry};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::GenericClient;

/// What to create: one JobResult per event, keyed by the event id.
#[derive(Debug, Clone)]
pub struct NewJobResult<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub task_name: &'a str,
    pub repository_id: Option<Uuid>,
    pub kind: Option<EventKind>,
    pub requested_by: &'a str,
    pub status: JobStatus,
    /// The W3C trace id of the request that made the event.
    pub trace_id: Option<&'a str>,
}

/// Inserts the JobResult unless one with this id exists. Returns true when it was created.
pub async fn insert(db: &impl GenericClient, new: &NewJobResult<'_>) -> Result<bool, tokio_postgres::Error> {
    let kwargs = serde_json::json!({ "repository": new.repository_id });
    let kind = new.kind.map(EventKind::as_str);
    use tokio_postgres::types::Type;
    // Typed parameters: one round trip, no statement to prepare (every event makes one of these).
    let n = db
        .execute_typed(
            "INSERT INTO job_result (id, name, task_name, repository_id, event_kind, requested_by, status, task_kwargs,
                 trace_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
            &[
                (&new.id, Type::UUID),
                (&new.name, Type::TEXT),
                (&new.task_name, Type::TEXT),
                (&new.repository_id, Type::UUID),
                (&kind, Type::TEXT),
                (&new.requested_by, Type::TEXT),
                (&new.status.as_str(), Type::TEXT),
                (&kwargs, Type::JSONB),
                (&new.trace_id, Type::VARCHAR),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// What happened when a worker tried to start a JobResult.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// Already finished: a duplicate delivery.
    AlreadyTerminal(JobStatus),
}

/// Moves the JobResult to STARTED (or keeps it STARTED on a redelivery) and names the worker.
pub async fn start(db: &impl GenericClient, id: Uuid, worker: &str) -> Result<StartOutcome, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "UPDATE job_result SET status = 'STARTED', date_started = COALESCE(date_started, now()), worker = $2,
                 heartbeat = now()
             WHERE id = $1 AND status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED') RETURNING status",
            &[&id, &worker],
        )
        .await?;
    if row.is_some() {
        return Ok(StartOutcome::Started);
    }
    let status: String = db.query_one("SELECT status FROM job_result WHERE id = $1", &[&id]).await?.get(0);
    Ok(StartOutcome::AlreadyTerminal(status.parse().unwrap_or(JobStatus::Failure)))
}

/// Appends one log entry.
pub async fn log(db: &impl GenericClient, job_result_id: Uuid, entry: &LogEntry) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO job_log_entry (id, job_result_id, log_level, grouping, message, log_object)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&Uuid::new_v4(), &job_result_id, &entry.level.as_str(), &entry.grouping, &entry.message, &entry.log_object],
    )
    .await?;
    Ok(())
}

/// Appends several entries in order, in one `COPY` (binary): a large sync logs two lines per file, and a copy
/// streams them with no statement to plan and no arrays to build and unnest. The database's own cost per row is
/// about the same either way (200,000 lines: 1.4 s copied, 1.5 s inserted by one statement, most of it the index
/// entries and the check of the JobResult each line refers to).
pub async fn log_many(
    db: &impl GenericClient,
    job_result_id: Uuid,
    entries: &[LogEntry],
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    if entries.is_empty() {
        return Ok(());
    }
    let sink = db
        .client()
        .copy_in(
            "COPY job_log_entry (id, job_result_id, log_level, grouping, message, log_object) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [Type::UUID, Type::UUID, Type::VARCHAR, Type::VARCHAR, Type::TEXT, Type::VARCHAR];
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
    for e in entries {
        let level = e.level.as_str();
        writer
            .as_mut()
            .write(&[&Uuid::new_v4(), &job_result_id, &level, &e.grouping, &e.message, &e.log_object])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Ends the JobResult: status, `result`, `traceback`, `date_done` and the per-level log counts. `date_done` is the
/// statement's own clock, not the transaction's start: the last statement before a commit records when the outcome
/// was committed. Does nothing (and
/// returns false) if it had already ended.
pub async fn finish(
    db: &impl GenericClient,
    id: Uuid,
    status: JobStatus,
    result: Option<&Value>,
    traceback: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "UPDATE job_result jr SET status = $2, result = $3, traceback = $4, date_done = clock_timestamp(),
                 date_started = COALESCE(jr.date_started, clock_timestamp()),
                 debug_log_count = c.debug, success_log_count = c.success, info_log_count = c.info,
                 warning_log_count = c.warning, error_log_count = c.error
             FROM (SELECT count(*) FILTER (WHERE log_level = 'debug')::int AS debug,
                          count(*) FILTER (WHERE log_level = 'success')::int AS success,
                          count(*) FILTER (WHERE log_level = 'info')::int AS info,
                          count(*) FILTER (WHERE log_level = 'warning')::int AS warning,
                          count(*) FILTER (WHERE log_level IN ('failure', 'error', 'critical'))::int AS error
                   FROM job_log_entry WHERE job_result_id = $1) c
             WHERE jr.id = $1 AND jr.status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED')",
            &[&id, &status.as_str(), &result, &traceback],
        )
        .await?;
    Ok(n == 1)
}

/// A JobResult as `producer job-result show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct JobResultView {
    pub id: Uuid,
    pub name: String,
    pub task_name: Option<String>,
    pub repository_id: Option<Uuid>,
    pub event_kind: Option<String>,
    pub status: String,
    pub date_created: DateTime<Utc>,
    pub date_started: Option<DateTime<Utc>>,
    pub date_done: Option<DateTime<Utc>>,
    pub requested_by: Option<String>,
    pub worker: Option<String>,
    pub result: Option<Value>,
    pub traceback: Option<String>,
    pub debug_log_count: i32,
    pub success_log_count: i32,
    pub info_log_count: i32,
    pub warning_log_count: i32,
    pub error_log_count: i32,
    /// The trace the event belongs to (32 hex digits), when its request carried one.
    pub trace_id: Option<String>,
    pub logs: Vec<LogView>,
}

impl JobResultView {
    pub fn status(&self) -> Option<JobStatus> {
        self.status.parse().ok()
    }

    /// `date_done - (date_started or date_created)`, once done.
    pub fn duration(&self) -> Option<std::time::Duration> {
        let done = self.date_done?;
        (done - self.date_started.unwrap_or(self.date_created)).to_std().ok()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LogView {
    pub created: DateTime<Utc>,
    pub level: String,
    pub grouping: String,
    pub message: String,
    pub log_object: String,
}

fn view(row: &Row, logs: Vec<LogView>) -> JobResultView {
    JobResultView {
        id: row.get("id"),
        name: row.get("name"),
        task_name: row.get("task_name"),
        repository_id: row.get("repository_id"),
        event_kind: row.get("event_kind"),
        status: row.get("status"),
        date_created: row.get("date_created"),
        date_started: row.get("date_started"),
        date_done: row.get("date_done"),
        requested_by: row.get("requested_by"),
        worker: row.get("worker"),
        result: row.get("result"),
        traceback: row.get("traceback"),
        debug_log_count: row.get("debug_log_count"),
        success_log_count: row.get("success_log_count"),
        info_log_count: row.get("info_log_count"),
        warning_log_count: row.get("warning_log_count"),
        error_log_count: row.get("error_log_count"),
        trace_id: row.get("trace_id"),
        logs,
    }
}

/// Filters of a JobResult listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct JobResultFilter {
    pub repository_id: Option<Uuid>,
    pub status: Option<String>,
    /// The event kind (`create`, `update`, `delete`, `sync`, `dry_run`).
    pub kind: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// One page of JobResults (without their logs), newest first, strictly after the position `after`
/// (`date_created`, `id`) of the last one of the previous page.
pub async fn list_page(
    db: &impl GenericClient,
    filter: &JobResultFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<JobResultView>, tokio_postgres::Error> {
    let (after_created, after_id) = after.map_or((None, None), |(c, i)| (Some(c), Some(i)));
    let rows = db
        .query(
            "SELECT * FROM job_result WHERE ($1::uuid IS NULL OR repository_id = $1) AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR event_kind = $3) AND ($4::timestamptz IS NULL OR date_created >= $4)
               AND ($5::timestamptz IS NULL OR date_created < $5)
               AND ($6::timestamptz IS NULL OR (date_created, id) < ($6, $7::uuid))
             ORDER BY date_created DESC, id DESC LIMIT $8",
            &[
                &filter.repository_id,
                &filter.status,
                &filter.kind,
                &filter.created_after,
                &filter.created_before,
                &after_created,
                &after_id,
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| view(r, Vec::new())).collect())
}

/// One page of a JobResult's log entries with their ids, in the order they were written, and how many it has.
pub async fn log_page(
    db: &impl GenericClient,
    job_result_id: Uuid,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<(Uuid, LogView)>), tokio_postgres::Error> {
    log_page_where(db, job_result_id, &LogFilter::default(), offset, limit).await
}

/// Which log entries a page holds: all, or those of one level and/or grouping.
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    pub level: Option<String>,
    pub grouping: Option<String>,
}

/// [`log_page`] of the entries the filter keeps, and how many it keeps.
pub async fn log_page_where(
    db: &impl GenericClient,
    job_result_id: Uuid,
    filter: &LogFilter,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<(Uuid, LogView)>), tokio_postgres::Error> {
    const WHERE: &str = "WHERE job_result_id = $1 AND ($2::text IS NULL OR log_level = $2)
                           AND ($3::text IS NULL OR grouping = $3)";
    let (level, grouping) = (&filter.level, &filter.grouping);
    let count: i64 = db
        .query_one(&format!("SELECT count(*) FROM job_log_entry {WHERE}"), &[&job_result_id, level, grouping])
        .await?
        .get(0);
    let rows = db
        .query(
            &format!(
                "SELECT id, created, log_level, grouping, message, log_object FROM job_log_entry {WHERE}
                 ORDER BY created, seq OFFSET $4 LIMIT $5"
            ),
            &[&job_result_id, level, grouping, &offset, &limit],
        )
        .await?;
    let entries = rows
        .iter()
        .map(|r| {
            let view = LogView {
                created: r.get(1),
                level: r.get(2),
                grouping: r.get(3),
                message: r.get(4),
                log_object: r.get(5),
            };
            (r.get(0), view)
        })
        .collect();
    Ok((count, entries))
}

/// The JobResult with its log entries in the order they were written.
pub async fn load(db: &impl GenericClient, id: Uuid) -> Result<Option<JobResultView>, tokio_postgres::Error> {
    let Some(row) = db.query_opt("SELECT * FROM job_result WHERE id = $1", &[&id]).await? else {
        return Ok(None);
    };
    let logs = db
        .query(
            "SELECT created, log_level, grouping, message, log_object FROM job_log_entry
             WHERE job_result_id = $1 ORDER BY created, seq",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| LogView {
            created: r.get(0),
            level: r.get(1),
            grouping: r.get(2),
            message: r.get(3),
            log_object: r.get(4),
        })
        .collect();
    Ok(Some(view(&row, logs)))
}

/// The JobResult with one page of its log (`limit` entries from `offset`, in the order they were written) and how
/// many entries the log has in all.
pub async fn load_log_page(
    db: &impl GenericClient,
    id: Uuid,
    offset: i64,
    limit: i64,
) -> Result<Option<(i64, JobResultView)>, tokio_postgres::Error> {
    let Some(row) = db.query_opt("SELECT * FROM job_result WHERE id = $1", &[&id]).await? else {
        return Ok(None);
    };
    let (total, entries) = log_page(db, id, offset, limit).await?;
    Ok(Some((total, view(&row, entries.into_iter().map(|(_, log)| log).collect()))))
}

/// The JobResult without its log entries (their counts by level are on it).
pub async fn load_without_log(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<JobResultView>, tokio_postgres::Error> {
    Ok(db.query_opt("SELECT * FROM job_result WHERE id = $1", &[&id]).await?.map(|row| view(&row, Vec::new())))
}

/// Just the status, for polling.
pub async fn status(db: &impl GenericClient, id: Uuid) -> Result<Option<JobStatus>, tokio_postgres::Error> {
    let row = db.query_opt("SELECT status FROM job_result WHERE id = $1", &[&id]).await?;
    Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
}

/// Notes a transient failure of an attempt (the event goes back to the queue): the reason a dead-lettered event's
/// JobResult will end with. A STARTED result is PENDING again: no worker is on it until the event comes back.
pub async fn note_transient(db: &impl GenericClient, id: Uuid, reason: &str) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "UPDATE job_result SET meta = coalesce(meta, '{}'::jsonb) || jsonb_build_object('last_error', $2::text,
             'failed_attempts', coalesce((meta->>'failed_attempts')::int, 0) + 1),
             status = CASE WHEN status = 'STARTED' THEN 'PENDING' ELSE status END, heartbeat = NULL
         WHERE id = $1 AND status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED')",
        &[&id, &reason],
    )
    .await
}

/// A running job's heartbeat.
pub async fn heartbeat(db: &impl GenericClient, id: Uuid) -> Result<u64, tokio_postgres::Error> {
    db.execute("UPDATE job_result SET heartbeat = now() WHERE id = $1 AND status = 'STARTED'", &[&id]).await
}

/// STARTED results whose worker has not beaten for `stale_secs`, with the slug of their repository (if known).
pub async fn stale_started(
    db: &impl GenericClient,
    stale_secs: f64,
) -> Result<Vec<(Uuid, Option<String>)>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT jr.id, r.slug FROM job_result jr LEFT JOIN git_repository r ON r.id = jr.repository_id
             WHERE jr.status = 'STARTED'
               AND coalesce(jr.heartbeat, jr.date_started) < now() - make_interval(secs => $1)",
            &[&stale_secs],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Ends a STARTED result FAILURE (the reaper: its worker is gone), if it is still STARTED and stale.
pub async fn fail_lost(
    db: &impl GenericClient,
    id: Uuid,
    stale_secs: f64,
    message: &str,
) -> Result<bool, tokio_postgres::Error> {
    let still: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM job_result WHERE id = $1 AND status = 'STARTED'
                 AND coalesce(heartbeat, date_started) < now() - make_interval(secs => $2))",
            &[&id, &stale_secs],
        )
        .await?
        .get(0);
    if !still {
        return Ok(false);
    }
    log(db, id, &LogEntry::error("main", message)).await?;
    let result = serde_json::json!({ "exc_type": "WorkerLost", "exc_message": message });
    finish(db, id, JobStatus::Failure, Some(&result), Some(message)).await
}

/// Ends a dead-lettered event's result FAILURE with the reason (its last attempt's error, when one was noted).
pub async fn fail_dead_lettered(
    db: &impl GenericClient,
    id: Uuid,
    reason: &str,
) -> Result<bool, tokio_postgres::Error> {
    let last: Option<String> =
        db.query_opt("SELECT meta->>'last_error' FROM job_result WHERE id = $1", &[&id]).await?.and_then(|r| r.get(0));
    let message = match last {
        Some(last) => format!("The event was dead-lettered ({reason}). Last error: {last}"),
        None => format!("The event was dead-lettered ({reason})."),
    };
    if status(db, id).await?.is_none_or(JobStatus::is_terminal) {
        return Ok(false);
    }
    log(db, id, &LogEntry::error("main", &message)).await?;
    let result = serde_json::json!({ "exc_type": "DeadLettered", "exc_message": message });
    finish(db, id, JobStatus::Failure, Some(&result), Some(&message)).await
}

/// Makes a finished result runnable again (a dead letter replayed): PENDING, its end and outcome cleared, its logs
/// kept, with a line saying who replayed it.
pub async fn reopen(db: &impl GenericClient, id: Uuid, by: &str) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "UPDATE job_result SET status = 'PENDING', date_done = NULL, result = NULL, traceback = NULL,
                 heartbeat = NULL, meta = coalesce(meta, '{}'::jsonb) - 'last_error' - 'failed_attempts'
                     || jsonb_build_object('replays', coalesce((meta->>'replays')::int, 0) + 1)
             WHERE id = $1",
            &[&id],
        )
        .await?;
    if n == 1 {
        log(db, id, &LogEntry::info("main", format!("Replayed from the dead-letter queue by {by}."))).await?;
    }
    Ok(n == 1)
}

/// The newest sync, create or update of the same repository that is still PENDING and was made after `id`.
pub async fn newer_queued(
    db: &impl GenericClient,
    repository_id: Uuid,
    id: Uuid,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            "SELECT n.id FROM job_result n JOIN job_result me ON me.id = $2
             WHERE n.repository_id = $1 AND n.id <> $2 AND n.status = 'PENDING'
               AND n.event_kind IN ('create', 'update', 'sync') AND n.date_created > me.date_created
             ORDER BY n.date_created DESC LIMIT 1",
            &[&repository_id, &id],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The database's clock now, and when the JobResult was made (coalescing compares both on one clock).
pub async fn clock_and_created(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), tokio_postgres::Error> {
    let row =
        db.query_one("SELECT clock_timestamp(), (SELECT date_created FROM job_result WHERE id = $1)", &[&id]).await?;
    Ok((row.get(0), row.get(1)))
}

/// A STARTED JobResult back to PENDING, its heartbeat cleared: its event waits in a queue and nobody is on it.
pub async fn back_to_pending(db: &impl GenericClient, id: Uuid) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "UPDATE job_result SET status = 'PENDING', heartbeat = NULL WHERE id = $1 AND status = 'STARTED'",
        &[&id],
    )
    .await
}

/// Counts one more stop of a worker while it ran the event (`meta.worker_stops`); returns the count.
pub async fn note_worker_stop(db: &impl GenericClient, id: Uuid) -> Result<Option<i32>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            "UPDATE job_result SET meta = coalesce(meta, '{}'::jsonb) || jsonb_build_object('worker_stops',
                 coalesce((meta->>'worker_stops')::int, 0) + 1)
             WHERE id = $1 RETURNING (meta->>'worker_stops')::int",
            &[&id],
        )
        .await?
        .and_then(|row| row.get(0)))
}

/// Where a page of [`report_lines`] ended: the next page starts after it.
pub type ReportCursor = (DateTime<Utc>, i64);

/// The sync report's lines (level, grouping, message, object), in the order they were written: at most `limit`,
/// after `after`, with the cursor of the last one.
pub async fn report_lines(
    db: &impl GenericClient,
    id: Uuid,
    after: Option<ReportCursor>,
    limit: i64,
) -> Result<(Vec<Value>, Option<ReportCursor>), tokio_postgres::Error> {
    let (created, seq) = after.map_or((None, None), |(c, s)| (Some(c), Some(s)));
    let rows = db
        .query(
            "SELECT log_level, grouping, message, log_object, created, seq FROM job_log_entry
              WHERE job_result_id = $1 AND ($2::timestamptz IS NULL OR (created, seq) > ($2, $3))
              ORDER BY created, seq LIMIT $4",
            &[&id, &created, &seq, &limit],
        )
        .await?;
    let last = rows.last().map(|r| (r.get(4), r.get(5)));
    let lines = rows.iter().map(|r| report_line(r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    Ok((lines, last))
}

/// One line of the sync report.
pub fn report_line(level: &str, grouping: &str, message: &str, object: &str) -> Value {
    serde_json::json!({ "level": level, "grouping": grouping, "message": message, "object": object })
}

/// How many lines the JobResult's log holds.
pub async fn log_count(db: &impl GenericClient, id: Uuid) -> Result<i64, tokio_postgres::Error> {
    Ok(db.query_one("SELECT count(*) FROM job_log_entry WHERE job_result_id = $1", &[&id]).await?.get(0))
}
