//! The sync job (spec b, f.3): the list of its stages. Each stage either continues, ends the job early with
//! SUCCESS (coalesced, up to date), or fails through the one ending in `run.rs`.

use gitfleet_infra::store::job_result;
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_shared::job_result::{LogEntry, grouping};
use gitfleet_shared::loaders::summary;
use serde_json::json;

use super::Notification;
use super::coalesce::{self, finish_superseded};
use super::error::{Failure, Step, StepError};
use super::incremental::{self, SyncLoad};
use super::run::JobRun;
use super::{fetch, load, store};
use crate::lock::RepoLock;
use crate::reconcile::Owner;

pub(super) async fn sync(run: &JobRun<'_>, lock: &mut RepoLock) -> Step<Notification> {
    let ctx = run.ctx;
    let mut phases = Phases::start();
    run.log.write(LogEntry::info(grouping::INITIALIZATION, "Running job")).await?;
    let repo = run.definition(lock).await?;
    let name = repo.name.as_str();
    run.log
        .write(LogEntry::info(grouping::RUN, format!("Creating/refreshing local copy of Git repository \"{name}\"...")))
        .await?;
    // Coalescing (ARCHITECTURE 4.3), on the database clock: when this fetch begins, and when the event was made.
    let (fetch_started, requested) = job_result::clock_and_created(&***lock.client(), run.id()).await?;
    if needs_no_fetch(run, lock, &repo, requested).await? {
        return Ok(None);
    }

    phases.mark("definition and coalescing");
    let (mirror, checkout) = fetch::fetch(ctx, &repo).await?;
    phases.mark("fetch");
    let head = checkout.head.clone();
    tracing::Span::current().record("commit", head.as_str());
    run.log
        .write_all(&[
            LogEntry::info(grouping::ENSURE, "Repository successfully refreshed"),
            LogEntry::info(grouping::ENSURE, format!("{name}: the current Git repository hash is \"{head}\""))
                .about(name),
        ])
        .await?;

    // What this sync would apply; the same as last time means the live records are already these.
    let context = load::context(ctx).await?;
    let fingerprint = coalesce::fingerprint(ctx, &repo, &head, &context.inventory_stamp);
    if fingerprint == repo.applied_fingerprint {
        crate::metrics::event("up_to_date");
        run.log
            .write(LogEntry::info(
                grouping::MAIN,
                format!("Data from {name} is already up to date at commit {head}: nothing to reload."),
            ))
            .await?;
        repository::record_fetch(&***lock.client(), repo.id, fetch_started).await?;
        super::artifact::resume_unbuilt(ctx, &***lock.client(), &repo, (&head, run.id()), &mirror).await;
        run.log.write(LogEntry::success(grouping::POST_RUN, "Job completed")).await?;
        run.succeed(
            &***lock.client(),
            json!({ "current_head": head, "applied_version": repo.version, "up_to_date": true }),
        )
        .await?;
        return Ok(None);
    }

    phases.mark("fingerprint");
    let base = coalesce::base_fingerprint(ctx, &repo, &context.inventory_stamp);
    let (tx, staged) =
        apply_beside_storage(run, lock.client(), &repo, &mirror, (&head, &base), &context, &mut phases).await?;
    run.log.write_all(&[summary(name, false), LogEntry::success(grouping::POST_RUN, "Job completed")]).await?;
    let applied =
        Applied { head: &head, ref_kind: checkout.kind, fingerprint: &fingerprint, fetch_started, staged, mirror };
    commit(run, tx, &repo, applied, phases).await
}

/// Loads and writes the records in the sync's transaction while storage is staged beside them (it reads only the
/// mirror, and nothing names what it uploads until the pointers are written): a sync takes the longer of the two,
/// not their sum. Storage failing first ends the sync at once (the transaction is dropped: a rollback); the
/// records failing first drop the staging (what it uploaded is named by nothing). The open transaction and what
/// storage staged.
async fn apply_beside_storage<'c>(
    run: &JobRun<'_>,
    client: &'c mut deadpool_postgres::Object,
    repo: &RepositoryRow,
    mirror: &crate::git::Mirror,
    (head, base): (&str, &str),
    context: &super::load::LoadContext,
    phases: &mut Phases,
) -> Step<(deadpool_postgres::Transaction<'c>, Vec<crate::storage::Staged>)> {
    let (ctx, name) = (run.ctx, repo.name.as_str());
    let mut storage_phases = phases.beside();
    let staged = {
        let mut staging = std::pin::pin!(store::stage(ctx, repo, mirror.clone(), head, &mut storage_phases));
        let mut applying = std::pin::pin!(async {
            let load = incremental::load(ctx, repo, mirror, head, base, context).await?;
            phases.mark("load");
            let client = client; // moved in: the transaction outlives this block
            let tx = client.transaction().await?;
            let owner = Owner { id: repo.id, name, slug: &repo.slug };
            let failed = match &load {
                SyncLoad::Full { reason } => {
                    if let Some(reason) = reason {
                        let line = format!("Loading every file of {name}: {reason}.");
                        run.log.write(LogEntry::info(grouping::MAIN, line)).await?;
                    }
                    super::stream::apply_full(&*tx, ctx, owner, repo, mirror, (head, base), context, &run.log).await?
                }
                SyncLoad::Increment(inc) => {
                    incremental::apply(&*tx, ctx, owner, repo, mirror, context, (head, base), inc, &run.log).await?
                }
            };
            // A full load reads, loads and writes its files in one stream: its "load" phase is only the plan.
            phases.mark(if matches!(load, SyncLoad::Full { .. }) {
                "load, reconcile and log (streamed)"
            } else {
                "reconcile and log"
            });
            Step::Ok((tx, failed))
        });
        let mut staged = None;
        let (tx, failed) = loop {
            tokio::select! {
                applied = &mut applying => break applied?,
                done = &mut staging, if staged.is_none() => staged = Some(done?),
            }
        };
        if failed {
            let message = format!("Failed to refresh data provided by {name}. Please see logs.");
            return Err(StepError::Failed(Failure::new("RuntimeError", message, grouping::MAIN).reverted()));
        }
        match staged {
            Some(staged) => (tx, staged),
            None => (tx, staging.await?),
        }
    };
    phases.mark("storage (after the records)");
    phases.absorb(storage_phases);
    Ok(staged)
}

/// What a sync applies once its records are written.
struct Applied<'a> {
    head: &'a str,
    ref_kind: crate::git::RefKind,
    fingerprint: &'a str,
    fetch_started: chrono::DateTime<chrono::Utc>,
    staged: Vec<crate::storage::Staged>,
    mirror: crate::git::Mirror,
}

/// The report and the pointers, then the new head and the JobResult's end, committed with the records. If the
/// commit fails, the pointers are put back: storage names the new commit only if the database does.
async fn commit(
    run: &JobRun<'_>,
    tx: deadpool_postgres::Transaction<'_>,
    repo: &RepositoryRow,
    applied: Applied<'_>,
    mut phases: Phases,
) -> Step<Notification> {
    let (ctx, event, head) = (run.ctx, run.event, applied.head);
    let artifacts: Vec<serde_json::Value> = applied.staged.iter().map(crate::storage::Staged::describe).collect();
    let report =
        store::report_and_point(ctx, (run.id(), &run.log), repo, head, &applied.staged, &artifacts, &mut phases)
            .await?;
    let result = json!({
        "current_head": head, "applied_version": repo.version, "ref_kind": format!("{:?}", applied.ref_kind),
        "artifacts": artifacts, "report": report, "phases_ms": phases.to_json(),
    });
    let artifacts = serde_json::Value::Array(artifacts);
    let committed = async {
        repository::record_sync(
            &*tx,
            repo.id,
            head,
            repo.version,
            applied.fingerprint,
            applied.fetch_started,
            &artifacts,
        )
        .await?;
        job_result::finish(&*tx, run.id(), gitfleet_shared::job_result::JobStatus::Success, Some(&result), None)
            .await?;
        tx.commit().await
    }
    .await;
    if let Err(err) = committed {
        ctx.storage.restore_pointers(&applied.staged).await;
        return Err(StepError::db(&format!("the sync of {}", repo.name), err));
    }
    phases.mark("commit");
    tracing::info!(event_id = %event.event_id, phases = %phases.to_json(), "sync committed");
    if !applied.staged.is_empty() {
        let request = super::artifact::Request {
            job_result_id: run.id(),
            repository_id: repo.id,
            slug: repo.slug.clone(),
            commit: head.to_owned(),
            mirror: applied.mirror,
            targets: applied.staged.iter().map(crate::storage::Staged::artifact_target).collect(),
        };
        super::artifact::spawn(ctx, request);
    }
    let body = json!({
        "repository_id": repo.id, "slug": repo.slug, "current_head": head, "job_result_id": event.event_id,
    });
    Ok(Some(("repo.synced", body)))
}

/// Ends the job SUCCESS without a fetch when it needs none: a newer sync of this repository is queued (it fetches
/// after this event was made), or the live state already covers this event and nothing else changed what the live
/// commit loads to (inventory, loaders, scope mode, storage). Returns whether it ended the job.
async fn needs_no_fetch(
    run: &JobRun<'_>,
    lock: &mut RepoLock,
    repo: &RepositoryRow,
    requested: Option<chrono::DateTime<chrono::Utc>>,
) -> Step<bool> {
    let (ctx, event) = (run.ctx, run.event);
    if let Some(newer) = job_result::newer_queued(&***lock.client(), repo.id, run.id()).await? {
        let extra = json!({ "current_head": repo.head_str(), "applied_version": repo.applied_version });
        finish_superseded(&***lock.client(), &run.log, event, newer, extra).await?;
        return Ok(true);
    }
    let Some(reason) = coalesce::reason(repo, event, requested) else { return Ok(false) };
    let stamp = load::inventory_stamp(ctx).await?;
    if coalesce::fingerprint(ctx, repo, repo.head_str(), &stamp) != repo.applied_fingerprint {
        return Ok(false);
    }
    crate::metrics::event("coalesced");
    let (name, head) = (repo.name.as_str(), repo.head_str());
    run.log
        .write_all(&[
            LogEntry::info(
                grouping::MAIN,
                format!(
                    "Data from {name} is already up to date at commit {head} ({reason}): nothing to fetch or reload."
                ),
            ),
            LogEntry::success(grouping::POST_RUN, "Job completed"),
        ])
        .await?;
    let result = json!({
        "current_head": head, "applied_version": repo.applied_version, "up_to_date": true, "fetched": false,
        "coalesced": reason,
    });
    run.succeed(&***lock.client(), result).await?;
    Ok(true)
}

/// Where a sync spends its time: each phase's duration (phases marked more than once, as the storage stage's per
/// store, add up), in the JobResult's `result.phases_ms` and the worker's log; each phase is also a span of the
/// event's trace and an observation of `gitfleet_sync_stage_duration_seconds`.
pub(super) struct Phases {
    last: std::time::Instant,
    last_wall: std::time::SystemTime,
    spent: Vec<(&'static str, std::time::Duration)>,
    /// The event's span: each phase's span is its child.
    parent: opentelemetry::Context,
}

impl Phases {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            last_wall: std::time::SystemTime::now(),
            spent: Vec::new(),
            parent: gitfleet_infra::telemetry::current_context(),
        }
    }

    /// Phases of work that runs beside this one's from now on (their own clock, the same parent span).
    fn beside(&self) -> Self {
        Self { parent: self.parent.clone(), ..Self::start() }
    }

    /// Adds the phases of work that ran beside these (so the phases may add up to more than the sync took).
    fn absorb(&mut self, beside: Self) {
        self.spent.extend(beside.spent);
    }

    /// Ends the phase that began at the last mark.
    pub fn mark(&mut self, phase: &'static str) {
        let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        let spent = now - self.last;
        self.spent.push((phase, spent));
        crate::metrics::METRICS
            .stage_duration
            .get_or_create(&crate::metrics::StageLabel { stage: phase })
            .observe(spent.as_secs_f64());
        let stage = vec![opentelemetry::KeyValue::new("stage", phase)];
        gitfleet_infra::telemetry::record_span(&self.parent, phase, self.last_wall, wall, stage);
        (self.last, self.last_wall) = (now, wall);
    }

    fn to_json(&self) -> serde_json::Value {
        let mut phases: Vec<(&str, std::time::Duration)> = Vec::new();
        for (phase, spent) in &self.spent {
            match phases.iter_mut().find(|(p, _)| p == phase) {
                Some((_, total)) => *total += *spent,
                None => phases.push((phase, *spent)),
            }
        }
        let phases = phases.into_iter().map(|(p, d)| (p.to_owned(), json!(d.as_millis())));
        serde_json::Value::Object(phases.collect())
    }
}
