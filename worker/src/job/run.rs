//! The run of one JobResult: its log writer, its heartbeat, and the one place a failed job ends.

use deadpool_postgres::Pool;
use gitfleet_infra::store::job_result;
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_shared::event::{Event, EventKind};
use gitfleet_shared::job_result::{JobStatus, LogEntry, grouping};
use gitfleet_shared::sanitize::sanitize;
use serde_json::json;
use uuid::Uuid;

use super::error::{Failure, Step, StepError, TransientError};
use super::{JobContext, Notification};
use crate::lock::RepoLock;

/// Log lines written per statement.
const LOG_BATCH: usize = 2000;

/// Writes JobLogEntries as they happen, each on its own (auto-commit) so they survive a rolled-back sync.
///
/// A run's log can also keep a copy of its lines, as the sync report writes them, in a file of its own (its
/// spool): the report then copies the file instead of reading 200,000 lines of a large sync back from the database.
/// Writes are serialized, so the spool holds the lines in the order the database does.
pub(super) struct JobLog<'a> {
    pool: &'a Pool,
    id: Uuid,
    spool: tokio::sync::Mutex<Spool>,
}

impl<'a> JobLog<'a> {
    pub fn new(pool: &'a Pool, id: Uuid) -> Self {
        Self { pool, id, spool: tokio::sync::Mutex::new(Spool::default()) }
    }

    /// A log that keeps a copy of its lines in a file under `dir` (created at the first line).
    pub fn spooled(pool: &'a Pool, id: Uuid, dir: &std::path::Path) -> Self {
        let spool = Spool { dir: Some(dir.to_owned()), ..Spool::default() };
        Self { pool, id, spool: tokio::sync::Mutex::new(spool) }
    }

    pub async fn write(&self, entry: LogEntry) -> Result<(), TransientError> {
        tracing::debug!(level = %entry.level, grouping = %entry.grouping, message = %entry.message, "job log");
        let mut spool = self.spool.lock().await;
        let client = self.pool.get().await?;
        job_result::log(&**client, self.id, &entry).await?;
        spool.append(std::slice::from_ref(&entry));
        Ok(())
    }

    /// Writes a batch, [`LOG_BATCH`] lines per statement (a type's loading lines can number in the thousands).
    pub async fn write_all(&self, entries: &[LogEntry]) -> Result<(), TransientError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut spool = self.spool.lock().await;
        let client = self.pool.get().await?;
        for chunk in entries.chunks(LOG_BATCH) {
            job_result::log_many(&**client, self.id, chunk).await?;
            spool.append(chunk);
        }
        Ok(())
    }

    /// The lines written so far, as the report's comma-separated JSON objects: the spool's path, how many bytes of
    /// it hold them, and how many lines they are. `None` when the log keeps no spool (or none yet), or could not
    /// write it.
    pub async fn spooled_lines(&self) -> Option<(std::path::PathBuf, u64, u64)> {
        let mut spool = self.spool.lock().await;
        if spool.broken {
            return None;
        }
        let (file, out) = spool.file.as_mut()?;
        let path = file.0.clone();
        if let Err(err) = std::io::Write::flush(out) {
            tracing::warn!(error = %err, "could not write the log's spool; the report reads the log back");
            spool.broken = true;
            return None;
        }
        Some((path, spool.bytes, spool.lines))
    }
}

/// The copy of a run's lines (see [`JobLog`]).
#[derive(Default)]
struct Spool {
    /// Where the file goes; `None`: no spool.
    dir: Option<std::path::PathBuf>,
    file: Option<(super::store::TempFile, std::io::BufWriter<std::fs::File>)>,
    bytes: u64,
    lines: u64,
    /// A write failed: the spool no longer holds every line.
    broken: bool,
}

impl Spool {
    fn append(&mut self, entries: &[LogEntry]) {
        use std::io::Write as _;
        let Some(dir) = self.dir.as_ref().filter(|_| !self.broken) else { return };
        if self.file.is_none() {
            let path = super::store::TempFile(dir.join(format!(".tmp-log-{}", Uuid::new_v4().simple())));
            match std::fs::File::create(&path.0) {
                Ok(file) => self.file = Some((path, std::io::BufWriter::with_capacity(64 << 10, file))),
                Err(err) => {
                    tracing::warn!(error = %err, "could not create the log's spool; the report reads the log back");
                    self.broken = true;
                    return;
                }
            }
        }
        let Some((_, out)) = self.file.as_mut() else { return };
        let mut text = String::new();
        for entry in entries {
            if self.lines > 0 || !text.is_empty() {
                text.push(',');
            }
            text.push_str(&report_line(entry).to_string());
        }
        match out.write_all(text.as_bytes()) {
            Ok(()) => {
                self.bytes += text.len() as u64;
                self.lines += entries.len() as u64;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not write the log's spool; the report reads the log back");
                self.broken = true;
                self.file = None;
            }
        }
    }
}

/// A log line as the sync report writes it.
pub(super) fn report_line(entry: &LogEntry) -> serde_json::Value {
    job_result::report_line(entry.level.as_str(), &entry.grouping, &entry.message, &entry.log_object)
}

/// Beats for a running job until dropped, on a pooled connection (the lock's connection is busy with the sync's
/// transaction). A killed worker stops beating, which is how the reaper knows.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(ctx: &JobContext, id: Uuid) -> Self {
        let (pool, every) = (ctx.pool.clone(), ctx.heartbeat);
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Ok(client) = pool.get().await
                    && let Err(err) = job_result::heartbeat(&**client, id).await
                {
                    tracing::debug!(error = %err, "heartbeat failed");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One JobResult being run: the event, its log and its heartbeat (which stops when the run is dropped).
pub(super) struct JobRun<'a> {
    pub ctx: &'a JobContext,
    pub event: &'a Event,
    pub log: JobLog<'a>,
    _beating: Heartbeat,
}

impl<'a> JobRun<'a> {
    pub fn start(ctx: &'a JobContext, event: &'a Event) -> Self {
        let log = JobLog::spooled(&ctx.pool, event.event_id, &ctx.git_root);
        Self { ctx, event, log, _beating: Heartbeat::start(ctx, event.event_id) }
    }

    pub fn id(&self) -> Uuid {
        self.event.event_id
    }

    /// Ends the JobResult SUCCESS with `result`, on `db` (the sync's transaction, or the lock's connection).
    pub async fn succeed(&self, db: &impl tokio_postgres::GenericClient, result: serde_json::Value) -> Step<()> {
        job_result::finish(db, self.id(), JobStatus::Success, Some(&result), None).await?;
        Ok(())
    }

    /// Loads the current definition on the lock's connection; a missing one (or a deleted one, except for a delete)
    /// fails the job.
    pub async fn definition(&self, lock: &mut RepoLock) -> Step<RepositoryRow> {
        let event = self.event;
        let row = repository::find_by_id(&***lock.client(), event.repository.id).await?;
        let problem = match row {
            None => format!("Git repository {} does not exist.", event.repository.id),
            Some(r) if r.is_deleted() && event.kind != EventKind::Delete => {
                format!("Git repository {} has been deleted.", r.name)
            }
            Some(row) => return Ok(row),
        };
        Err(StepError::Failed(Failure::new("DoesNotExist", problem, grouping::RUN)))
    }
}

/// The one ending of a failed job: the error line, "Changes to database records have been reverted." where records
/// had been touched (their transaction is already rolled back: dropping it did), the failure's epilogue, the
/// JobResult ended FAILURE with a sanitized `result`, and the notification a failed sync sends (none for a delete
/// or a dry-run).
pub(super) async fn end_failed(
    run: &JobRun<'_>,
    lock: &mut RepoLock,
    failure: Failure,
) -> Result<Notification, TransientError> {
    let mut lines = vec![LogEntry::error(failure.grouping, &failure.message)];
    if failure.reverted {
        lines.push(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted."));
    }
    lines.extend(failure.epilogue);
    run.log.write_all(&lines).await?;
    let message = sanitize(&failure.message);
    let result = json!({ "exc_type": failure.exc_type, "exc_message": message });
    job_result::finish(&***lock.client(), run.id(), JobStatus::Failure, Some(&result), Some(&message)).await?;
    let event = run.event;
    Ok(match event.kind {
        EventKind::Create | EventKind::Update | EventKind::Sync | EventKind::Poll => {
            let body = json!({
                "repository_id": event.repository.id, "slug": event.repository.slug, "job_result_id": event.event_id,
            });
            Some(("repo.sync_failed", body))
        }
        EventKind::Delete | EventKind::DryRun => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spool holds the lines as the report writes them: the report made from it parses to the same lines, in
    /// order, whatever the batches they came in.
    #[test]
    fn a_report_from_the_spool_holds_every_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool { dir: Some(dir.path().to_owned()), ..Spool::default() };
        let lines = [
            LogEntry::info("main", "Refreshing data provided by \"net\"..."),
            LogEntry::warning("config contexts", "quote \" and\nnewline").about("ntp"),
            LogEntry::error("config contexts", "ünïcode ✓"),
        ];
        spool.append(&lines[..1]);
        spool.append(&lines[1..]);
        let (path, bytes) = (spool.file.as_ref().unwrap().0.0.clone(), spool.bytes);
        std::io::Write::flush(&mut spool.file.as_mut().unwrap().1).unwrap();
        let report = dir.path().join("report.json");
        super::super::store::copy_report(&report, "{\"commit\":\"abc\",\"log\":[", &path, bytes).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let expected: Vec<serde_json::Value> = lines.iter().map(report_line).collect();
        assert_eq!(parsed["log"], serde_json::Value::from(expected));
        assert_eq!((parsed["commit"].as_str(), spool.lines), (Some("abc"), 3));
        // Lines written after the report was cut are not in it.
        spool.append(&lines[..1]);
        std::io::Write::flush(&mut spool.file.as_mut().unwrap().1).unwrap();
        super::super::store::copy_report(&report, "{\"log\":[", &path, bytes).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(parsed["log"].as_array().unwrap().len(), 3);
        // Dropped with the log: the spool goes.
        drop(spool);
        assert!(!path.exists());
    }
}
