//! Apply: what a load produced reconciled into the database, type by type in refresh order, with each type's
//! loading lines followed by what reconciling it did.

use gitfleet_shared::job_result::{LogEntry, LogLevel};
use gitfleet_shared::loaders::{DataType, Loaded};
use tokio_postgres::GenericClient;

use super::JobContext;
use super::error::{Step, StepError};
use super::run::JobLog;
use crate::reconcile::{self, Change, Owner};

/// Writes the log lines as it goes; returns whether any error-level entry was written (which fails the sync). A
/// refusal by the database names the data type it was saving. A type's loading lines are written first, then what
/// reconciling it did.
pub(super) async fn apply(
    db: &impl GenericClient,
    ctx: &JobContext,
    owner: Owner<'_>,
    loaded: &Loaded,
    log: &JobLog<'_>,
) -> Step<bool> {
    let mut failed = false;
    let mut start = 0;
    for (identifier, end) in &loaded.sections {
        let lines = &loaded.logs[start..*end];
        start = *end;
        failed |= has_error(lines);
        log.write_all(lines).await?;
        if let Some(data_type) = ctx.registry.get(identifier) {
            failed |= reconcile_and_log(db, ctx, owner, data_type, loaded, log).await?;
        }
    }
    let rest = &loaded.logs[start..];
    failed |= has_error(rest);
    log.write_all(rest).await?;
    Ok(failed)
}

/// Reconciles one data type and writes what it did, in batches while it runs (on other connections than the
/// transaction's); whether an error-level line was written.
pub(super) async fn reconcile_and_log(
    db: &impl GenericClient,
    ctx: &JobContext,
    owner: Owner<'_>,
    data_type: &dyn DataType,
    loaded: &Loaded,
    log: &JobLog<'_>,
) -> Step<bool> {
    let what = format!("{} of {}", data_type.name(), owner.name);
    logged(log, &what, |sink| async move {
        let rest = reconcile::reconcile_type(db, owner, data_type, loaded, ctx.schema_enforcement, Some(&sink)).await;
        drop(sink);
        rest
    })
    .await
}

/// Runs a reconcile that hands its changes to the sink it is given, writing them as they come; a refusal by the
/// database names `what` was being saved. The reconcile must drop the sink when it ends. Whether an error-level
/// line was written.
pub(super) async fn logged<F, R>(log: &JobLog<'_>, what: &str, reconcile: F) -> Step<bool>
where
    F: FnOnce(reconcile::ChangeSink) -> R,
    R: std::future::Future<Output = Result<Vec<Change>, tokio_postgres::Error>>,
{
    let (sink, mut changes) = tokio::sync::mpsc::channel::<Vec<Change>>(2);
    let reconciling = reconcile(sink);
    let writing = async {
        let mut failed = false;
        while let Some(batch) = changes.recv().await {
            failed |= write_changes(log, batch).await?;
        }
        Ok::<_, StepError>(failed)
    };
    let (rest, written) = tokio::join!(reconciling, writing);
    let rest = rest.map_err(|e| StepError::db(what, e))?;
    Ok(written? | write_changes(log, rest).await?)
}

/// Whether one of `lines` is an error (which fails the sync).
pub(super) fn has_error(lines: &[LogEntry]) -> bool {
    lines.iter().any(|e| e.level == LogLevel::Error)
}

/// Writes the lines of `changes`; whether one is an error.
async fn write_changes(log: &JobLog<'_>, changes: Vec<Change>) -> Step<bool> {
    let lines: Vec<LogEntry> = changes.into_iter().map(|change| change.line).collect();
    log.write_all(&lines).await?;
    Ok(has_error(&lines))
}
