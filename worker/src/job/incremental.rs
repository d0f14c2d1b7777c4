//! Incremental loading: a sync compares the live commit's tree with the new one and reads only what changed.
//!
//! Every applied load records, in the sync's transaction, what each config context file gave (its blob, its
//! record keys, its log lines, its share of the load's budget) and what each other data type gave as a whole
//! (`loaded_file`, `loaded_key`, `loaded_state`). The next sync, when nothing but files changed since:
//! - leaves a data type none of whose files changed as it is (no read, no reconcile);
//! - loads a type whose files changed again whole, except config contexts: there only the changed files are read,
//!   and the records whose winning definition may have moved (every key the changed files defined before or
//!   define now) are reconciled, each from the file that defines it last in processing order, as a full load
//!   would choose;
//! - reloads config contexts whole when anything besides plain files directly in their folders changed (a folder,
//!   a link, a dotfile, a misplaced folder at the root) or when the schemas they link to changed.
//!
//! Anything else that decides what the files load to (the definition, the inventory, the scope mode, the loaders,
//! the storage) makes the sync load every file and say why; so does a change that would take the load over its
//! budget, so that the limit's error names the file a full load would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gitfleet_infra::store::loaded::{self, FileRow, LoadedState};
use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::job_result::{LogEntry, grouping};
use gitfleet_shared::loaders::{
    DataType, FileLoad, LoadInput, Loaded, Registry, Section, check_fields, load_context_file,
};
use gitfleet_shared::tree::{EntryKind, RepoTree};
use tokio_postgres::GenericClient;

use super::JobContext;
use super::error::{Failure, Step, StepError};
use super::load::LoadContext;
use super::run::JobLog;
use crate::git::{Mirror, PathChange};
use crate::reconcile::{self, ContextScope, Owner};

pub(super) const CONTEXTS: &str = "extras.configcontext";
const SCHEMAS: &str = "extras.configcontextschema";

/// What a sync loads: everything, or what changed since the live commit.
pub(super) enum SyncLoad {
    /// Every file, streamed into the transaction ([`super::stream::apply_full`]).
    Full {
        /// Why an incremental sync was not possible (none for a first sync).
        reason: Option<String>,
    },
    Increment(Box<Increment>),
}

/// An incremental sync's load: the types loaded again whole, the changed config context files read one by one.
pub(super) struct Increment {
    state: LoadedState,
    /// The sections of every type, records of the types in `reload` only.
    loaded: Loaded,
    reload: BTreeSet<String>,
    /// New rows of the reloaded types.
    rows: Vec<FileRow>,
    /// Changed config context paths (read file by file), and what their new versions gave.
    context_paths: Vec<String>,
    files: Vec<FileLoad>,
    /// What the changed files and the reloaded types had given at the live commit.
    old_files: Vec<FileRow>,
    old_types: (i64, i64),
    /// Budget spent by the live commit's documents once this change is applied.
    doc_bytes: usize,
    changed: usize,
}

/// The paths a reload of `data_type` reads.
fn prefixes(data_type: &dyn DataType) -> Vec<String> {
    let mut out = vec![data_type.folder().to_owned()];
    out.extend(data_type.root_paths().iter().map(|p| (*p).to_owned()));
    out
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// Decides how to load `head`, and loads it when only what changed is read (a full load is streamed as it is
/// applied).
pub(super) async fn load(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: &Mirror,
    head: &str,
    base: &str,
    context: &LoadContext,
) -> Step<SyncLoad> {
    let reason = match plan(ctx, repo, mirror, head, base).await? {
        Ok((state, changes)) => match increment(ctx, repo, mirror, head, context, state, changes).await? {
            Ok(inc) => return Ok(SyncLoad::Increment(Box::new(inc))),
            Err(reason) => Some(reason),
        },
        Err(reason) => reason,
    };
    Ok(SyncLoad::Full { reason })
}

/// The live commit's recorded load and the changes since, or why every file must be read.
async fn plan(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: &Mirror,
    head: &str,
    base: &str,
) -> Step<Result<(LoadedState, Vec<PathChange>), Option<String>>> {
    if repo.current_head.is_none() {
        return Ok(Err(None));
    }
    let live = repo.head_str().to_owned();
    let state = {
        let client = ctx.pool.get().await?;
        loaded::state(&**client, repo.id).await?
    };
    let live_short = short(&live).to_owned();
    let Some(state) = state.filter(|s| s.commit == live) else {
        return Ok(Err(Some(format!("what the files of commit {live_short} loaded to is not recorded"))));
    };
    if state.base != base {
        return Ok(Err(Some(format!(
            "the definition, the inventory, the scope mode, the loaders or the storage changed since commit \
             {live_short}"
        ))));
    }
    let (mirror, new, old) = (mirror.clone(), head.to_owned(), live.clone());
    let changes = tokio::task::spawn_blocking(move || mirror.changes(&old, &new)).await?;
    Ok(match changes {
        Ok(changes) => Ok((state, changes)),
        Err(err) => Err(Some(format!("commit {live_short} cannot be compared with the new one ({err})"))),
    })
}

/// Loads what changed; `Err(reason)` when a full load must run instead.
async fn increment(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: &Mirror,
    head: &str,
    context: &LoadContext,
    state: LoadedState,
    changes: Vec<PathChange>,
) -> Step<Result<Increment, String>> {
    let provided: Vec<&dyn DataType> =
        ctx.registry.types().filter(|t| repo.provided_contents.iter().any(|p| p == t.identifier())).collect();
    let touches = |t: &dyn DataType| changes.iter().any(|c| t.reads(&c.path));
    let reload: BTreeSet<String> = provided
        .iter()
        .filter(|t| t.identifier() != CONTEXTS && touches(**t))
        .map(|t| t.identifier().to_owned())
        .collect();
    let mut context_paths = Vec::new();
    // The changed files' blob ids at `head` (`None`: removed): read by id, not looked up in their folder again.
    let mut known: BTreeMap<String, Option<String>> = BTreeMap::new();
    if let Some(contexts) = provided.iter().find(|t| t.identifier() == CONTEXTS)
        && touches(*contexts)
    {
        let mine: Vec<&PathChange> = changes.iter().filter(|c| contexts.reads(&c.path)).collect();
        let file_by_file =
            !reload.contains(SCHEMAS) && mine.iter().all(|c| c.regular() && Section::of(&c.path).is_some());
        if !file_by_file {
            // A full load streams them (a reload of the type here would hold every file at once).
            return Ok(Err("besides files in the config context folders, the change touches those folders (a \
                           subfolder, a link, a dotfile) or the schemas the contexts link to"
                .to_owned()));
        }
        for change in &mine {
            let blob = change.new.as_ref().map(|(blob, _)| blob.clone());
            let slot = known.entry(change.path.clone()).or_default();
            if slot.is_none() {
                *slot = blob;
            }
        }
        context_paths = mine.iter().map(|c| c.path.clone()).collect();
        context_paths.sort_unstable();
        context_paths.dedup();
    }

    let reloaded: Vec<&str> = reload.iter().map(String::as_str).collect();
    let paths: Vec<&str> = context_paths.iter().map(String::as_str).collect();
    let (old_files, old_types) = {
        let client = ctx.pool.get().await?;
        (
            loaded::files(&**client, repo.id, CONTEXTS, &paths).await?,
            loaded::type_totals(&**client, repo.id, &reloaded).await?,
        )
    };
    let kept_bytes = state.doc_bytes - old_types.0 - old_files.iter().map(|f| f.bytes).sum::<i64>();
    let read_prefixes: Vec<String> =
        provided.iter().filter(|t| reload.contains(t.identifier())).flat_map(|t| prefixes(*t)).collect();

    let (registry, repo_c, limits, mode, head_c) =
        (ctx.registry.clone(), repo.clone(), ctx.limits, ctx.scope_mode, head.to_owned());
    let (inventory, mirror_c, reload_c, paths_c) =
        (context.inventory.clone(), mirror.clone(), reload.clone(), context_paths.clone());
    let span = tracing::Span::current();
    let done = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let tree = tracing::info_span!("tree read", changed_paths = paths_c.len())
                .in_scope(|| mirror_c.read_parts(&head_c, &read_prefixes, &paths_c, &known, limits.max_bytes))?;
            let input = super::load::input(&tree, &repo_c, &inventory, (limits, mode));
            input.spent.document_bytes.set(usize::try_from(kept_bytes).unwrap_or_default());
            let loaded = registry.load_where(&input, &|id| reload_c.contains(id));
            // The changed config context files, each loaded alone: the data type's span, as a full load has.
            let files = tracing::info_span!("data type", otel.name = "config contexts", files = paths_c.len())
                .in_scope(|| context_files(&input, &tree, &paths_c));
            let rows = rows_of(&registry, &loaded, &tree, &repo_c.provided_contents, &|id| reload_c.contains(id));
            Ok::<_, crate::git::GitError>((loaded, files, rows, input.spent.document_bytes.get()))
        })
    })
    .await?;
    let (loaded, files, rows, doc_bytes) =
        done.map_err(|err| StepError::Failed(Failure::new(err.exc_type(), err.to_string(), grouping::ENSURE)))?;
    if doc_bytes > ctx.limits.max_load_bytes {
        return Ok(Err(format!(
            "with this change the documents add up to more than {} bytes of JSON, and a full load names the file \
             that goes over",
            ctx.limits.max_load_bytes
        )));
    }
    let changed = changes.len();
    Ok(Ok(Increment { state, loaded, reload, rows, context_paths, files, old_files, old_types, doc_bytes, changed }))
}

/// Loads each of `paths` that exists in `tree` as a config context file.
fn context_files(input: &LoadInput<'_>, tree: &RepoTree, paths: &[String]) -> Vec<FileLoad> {
    paths
        .iter()
        .filter(|p| tree.is_file(p))
        .filter_map(|p| Section::of(p).map(|(section, file)| load_context_file(input, section, file, EntryKind::File)))
        .collect()
}

/// The rows a load writes for the provided types that `selected` picks (never config contexts, which a full load
/// streams), one per type: its lines, its budget and file count.
pub(super) fn rows_of(
    registry: &Registry,
    loaded: &Loaded,
    tree: &RepoTree,
    provided: &[String],
    selected: &dyn Fn(&str) -> bool,
) -> Vec<FileRow> {
    let mut rows = Vec::new();
    let mut start = 0;
    for (identifier, end) in &loaded.sections {
        let lines = &loaded.logs[start..*end];
        start = *end;
        if !provided.contains(identifier) || !selected(identifier) {
            continue;
        }
        let Some(data_type) = registry.get(identifier) else { continue };
        let bytes = loaded.type_bytes.get(identifier).copied().unwrap_or_default();
        let mut count = tree.files_under(data_type.folder()).len();
        if identifier == "extras.job" && tree.is_file("jobs.py") {
            count += 1;
        }
        let row = type_row(identifier, lines, bytes, count);
        rows.push(row);
    }
    rows
}

/// Writes the rows of a load; returns the files they stand for.
async fn insert_rows(
    db: &impl GenericClient,
    repository: uuid::Uuid,
    rows: &[FileRow],
) -> Result<i64, tokio_postgres::Error> {
    loaded::insert_files(db, repository, rows).await?;
    Ok(rows.iter().map(|r| r.files).sum::<i64>())
}

/// The row of a data type loaded whole: its section's lines (for config contexts, the first and those about
/// folders: each file has a row of its own), the bytes its documents counted and the files it read.
pub(super) fn type_row(identifier: &str, lines: &[LogEntry], bytes: usize, files: usize) -> FileRow {
    FileRow {
        data_type: identifier.to_owned(),
        path: String::new(),
        blob_id: String::new(),
        ord: 0,
        keys: Vec::new(),
        facts: facts(lines),
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        files: i64::try_from(files).unwrap_or(i64::MAX),
    }
}

/// The row of a config context file that wrote `lines`.
pub(super) fn file_row(file: &FileLoad, lines: &[LogEntry]) -> FileRow {
    FileRow {
        data_type: CONTEXTS.to_owned(),
        path: file.path.clone(),
        blob_id: file.blob_id.clone().unwrap_or_default(),
        ord: file.section.order(),
        keys: file.keys.clone(),
        facts: facts(lines),
        bytes: i64::try_from(file.bytes).unwrap_or(i64::MAX),
        files: 1,
    }
}

pub(super) fn facts(lines: &[LogEntry]) -> serde_json::Value {
    serde_json::to_value(lines).unwrap_or_default()
}

/// Where an incremental sync's config contexts come from once the changed files are recorded.
struct Winners {
    scope_names: Vec<String>,
    scope_locals: Vec<(String, String)>,
    records: Loaded,
}

/// Applies an incremental load inside the sync's transaction, writing the log as a full load would for what
/// was read, and one line for what was reused. Returns whether an error-level line was written.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply(
    db: &impl GenericClient,
    ctx: &JobContext,
    owner: Owner<'_>,
    repo: &RepositoryRow,
    mirror: &Mirror,
    context: &LoadContext,
    (head, base): (&str, &str),
    inc: &Increment,
    log: &JobLog<'_>,
) -> Step<bool> {
    let db_error = |what: &str| {
        let what = format!("{what} of {}", owner.name);
        move |e: tokio_postgres::Error| StepError::db(&what, e)
    };
    let reloaded: Vec<&str> = inc.reload.iter().map(String::as_str).collect();
    loaded::forget_types(db, owner.id, &reloaded).await.map_err(db_error("the recorded loads"))?;
    let paths: Vec<&str> = inc.context_paths.iter().map(String::as_str).collect();
    loaded::forget_files(db, owner.id, CONTEXTS, &paths).await.map_err(db_error("the recorded loads"))?;
    let mut rows = inc.rows.clone();
    rows.extend(inc.files.iter().map(|f| file_row(f, &f.logs)));
    let read = insert_rows(db, owner.id, &rows).await.map_err(db_error("the recorded loads"))?;
    let winners = if paths.is_empty() { None } else { Some(winners(db, ctx, repo, mirror, context, head, inc).await?) };

    let mut failed = false;
    let mut start = 0;
    // Lines wait here and go to the log in one write (an incremental sync writes few), before a reloaded type's
    // reconcile writes its own and at the end.
    let mut pending: Vec<LogEntry> = Vec::new();
    for (identifier, end) in &inc.loaded.sections {
        let mut batch: Vec<LogEntry> = inc.loaded.logs[start..*end].to_vec();
        start = *end;
        let Some(data_type) = ctx.registry.get(identifier) else { continue };
        if inc.reload.contains(identifier) {
            failed |= super::apply::has_error(&batch);
            pending.extend(batch);
            log.write_all(&std::mem::take(&mut pending)).await?;
            failed |= super::apply::reconcile_and_log(db, ctx, owner, data_type, &inc.loaded, log).await?;
            continue;
        } else if identifier == CONTEXTS
            && let Some(winners) = &winners
        {
            let mut files: Vec<&FileLoad> = inc.files.iter().collect();
            files.sort_by(|a, b| (a.section.order(), &a.path).cmp(&(b.section.order(), &b.path)));
            batch.extend(files.into_iter().flat_map(|f| f.logs.iter().cloned()));
            batch.extend(winners.records.logs.iter().cloned());
            let scope = ContextScope { names: &winners.scope_names, locals: &winners.scope_locals };
            let reconciled =
                reconcile::reconcile_contexts_in(db, owner, &winners.records, ctx.schema_enforcement, scope)
                    .await
                    .map_err(db_error(data_type.name()))?;
            batch.extend(reconciled.into_iter().map(|change| change.line));
        }
        failed |= super::apply::has_error(&batch);
        pending.extend(batch);
    }
    let reused = inc.state.files - inc.old_types.1 - i64::try_from(inc.old_files.len()).unwrap_or(i64::MAX);
    pending.push(LogEntry::info(
        grouping::MAIN,
        format!(
            "Incremental load: {} paths changed since commit {}; {read} files read, what {reused} unchanged files \
             gave is reused (they are not logged again)",
            inc.changed,
            short(&inc.state.commit)
        ),
    ));
    let rest = &inc.loaded.logs[start..];
    failed |= super::apply::has_error(rest);
    pending.extend_from_slice(rest);
    log.write_all(&pending).await?;
    if !failed {
        let state = LoadedState {
            commit: head.to_owned(),
            base: base.to_owned(),
            doc_bytes: i64::try_from(inc.doc_bytes).unwrap_or(i64::MAX),
            files: reused + read,
        };
        loaded::set_state(db, owner.id, &state).await.map_err(db_error("the recorded loads"))?;
    }
    Ok(failed)
}

/// The keys the changed files defined before or define now, each taken from the file that defines it last (read
/// again when it is not one of the changed files), checked as a load checks its records.
async fn winners(
    db: &impl GenericClient,
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: &Mirror,
    context: &LoadContext,
    head: &str,
    inc: &Increment,
) -> Step<Winners> {
    let mut keys: BTreeSet<String> = inc.old_files.iter().flat_map(|f| f.keys.iter().cloned()).collect();
    keys.extend(inc.files.iter().flat_map(|f| f.keys.iter().cloned()));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let won = loaded::winners(db, repo.id, &keys).await.map_err(|e| StepError::db("the recorded loads", e))?;
    let by_path: HashMap<&str, &FileLoad> = inc.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut others: Vec<String> =
        won.iter().filter(|(_, p)| !by_path.contains_key(p.as_str())).map(|w| w.1.clone()).collect();
    others.sort_unstable();
    others.dedup();
    let reread = if others.is_empty() { Vec::new() } else { reread(ctx, repo, mirror, context, head, others).await? };
    let by_path: HashMap<&str, &FileLoad> =
        inc.files.iter().chain(reread.iter()).map(|f| (f.path.as_str(), f)).collect();

    let mut records = Loaded::default();
    for (key, path) in &won {
        let Some(file) = by_path.get(path.as_str()) else { continue };
        if let Some(context) =
            file.contexts.iter().rev().find(|c| gitfleet_shared::loaders::context_key(&c.name) == *key)
        {
            records.config_contexts.push(context.clone());
        }
        if let Some(local) =
            file.locals.iter().rev().find(|l| gitfleet_shared::loaders::local_key(l.kind, &l.name) == *key)
        {
            records.local_contexts.push(local.clone());
        }
    }
    check_fields(CONTEXTS, &mut records);
    records.sort();
    let (mut scope_names, mut scope_locals) = (Vec::new(), Vec::new());
    for key in keys {
        if let Some(name) = key.strip_prefix("context:") {
            scope_names.push(name.to_owned());
        } else if let Some((kind, name)) = key.split_once(':') {
            scope_locals.push((kind.to_owned(), name.to_owned()));
        }
    }
    Ok(Winners { scope_names, scope_locals, records })
}

/// Reads unchanged files again for the definitions they win now (their lines are not logged: they are the ones
/// recorded). Their budget was counted when they were first read.
async fn reread(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: &Mirror,
    context: &LoadContext,
    head: &str,
    paths: Vec<String>,
) -> Step<Vec<FileLoad>> {
    let (repo, limits, mode, head, mirror) =
        (repo.clone(), ctx.limits, ctx.scope_mode, head.to_owned(), mirror.clone());
    let inventory: Arc<_> = context.inventory.clone();
    let done = tokio::task::spawn_blocking(move || {
        let tree = mirror.read_parts(&head, &[], &paths, &BTreeMap::new(), limits.max_bytes)?;
        let input = super::load::input(&tree, &repo, &inventory, (limits, mode));
        Ok::<_, crate::git::GitError>(context_files(&input, &tree, &paths))
    })
    .await?;
    done.map_err(|err| StepError::Failed(Failure::new(err.exc_type(), err.to_string(), grouping::ENSURE)))
}
