//! Apply: what a load produced reconciled into the database, type by type in refresh order, with each type's
//! loading lines followed by what reconciling it did.

use gitfleet_shared::job_result::{LogEntry, LogLevel};
use gitfleet_shared::loaders::Loaded;
use tokio_postgres::GenericClient;

use super::JobContext;
use super::error::{Step, StepError};
use super::run::JobLog;
use crate::reconcile::{self, Owner};

/// Writes the log lines as it goes; returns whether any error-level entry was written (which fails the sync). A
/// refusal by the database names the data type it was saving.
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
        let mut batch: Vec<LogEntry> = loaded.logs[start..*end].to_vec();
        start = *end;
        if let Some(data_type) = ctx.registry.get(identifier) {
            let reconciled = reconcile::reconcile_type(db, owner, data_type, loaded, ctx.schema_enforcement)
                .await
                .map_err(|e| StepError::db(&format!("{} of {}", data_type.name(), owner.name), e))?;
            batch.extend(reconciled.into_iter().map(|change| change.line));
        }
        failed |= batch.iter().any(|e| e.level == LogLevel::Error);
        log.write_all(&batch).await?;
    }
    let rest = &loaded.logs[start..];
    failed |= rest.iter().any(|e| e.level == LogLevel::Error);
    log.write_all(rest).await?;
    Ok(failed)
}
