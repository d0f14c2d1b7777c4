//! A full load, streamed: the loaders run on a thread of their own and hand what they load to the sync's
//! transaction piece by piece, in the order a load logs it, while the transaction writes the previous piece.
//!
//! Every type but config contexts is loaded whole, as before (a repository holds few of them). Config context
//! files, which a large repository holds by the hundred thousand (one local context per device), are left out of
//! the tree: the plan walks each of their folders in the commit's own tree object (twice: the entries it skips are
//! logged before its files), and the files are read, loaded and written a batch at a time: each batch's lines go
//! to the log, its definitions to staging tables of the transaction ([`crate::reconcile::staged`]) and its rows of
//! what each file gave to `loaded_file` for the next, incremental, sync. Once every file is read, the winning
//! definition of each name (the last in processing order) is reconciled a chunk at a time. What the worker holds
//! at once is a batch of files and a chunk of records, whatever the repository's size, beside git's tree object
//! of the folder being walked (git's own record of it: 4.7 MB for 100,000 files).

use gitfleet_infra::store::loaded::{self, FileRow, LoadedState};
use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::inventory::Inventory;
use gitfleet_shared::job_result::{LogEntry, grouping};
use gitfleet_shared::loaders::{
    ContextStep, DataType, FileLoad, Folders, LoadInput, Loaded, Registry, Section, context_plan_each, context_problem,
    load_context_file, local_problem,
};
use gitfleet_shared::tree::{Entry, EntryKind, RepoTree};
use tokio_postgres::GenericClient;

use super::JobContext;
use super::error::{Failure, Step, StepError};
use super::incremental::{CONTEXTS, file_row, type_row};
use super::load::LoadContext;
use super::run::JobLog;
use crate::git::{Blobs, GitError, Mirror};
use crate::reconcile::{Owner, staged};

/// The most bytes of content a batch of config context files reads before it is handed on (a batch ends at its
/// first file past that, or at `GITFLEET_LOAD_BATCH_FILES` files).
const BATCH_BYTES: usize = 8 << 20;

/// Pieces the loader thread may be ahead of the transaction by.
const AHEAD: usize = 2;

/// What the loader thread hands on, in log order.
enum Piece {
    /// Lines to write as they are.
    Lines(Vec<LogEntry>),
    /// A type loaded whole: its section of the log, its records, and (when provided) the row recording it.
    Type { identifier: String, loaded: Box<Loaded>, row: Option<FileRow> },
    /// Config context files, in processing order, each with why the database would refuse its records.
    Files(Vec<ContextFile>),
    /// Every config context file is loaded: the type's own lines (its first and those about folders) and the
    /// bytes of JSON its documents counted against the budget.
    ContextsEnd { own: Vec<LogEntry>, bytes: usize },
}

struct ContextFile {
    load: FileLoad,
    context_problems: Vec<Option<String>>,
    local_problems: Vec<Option<String>>,
}

/// Loads every file of `head` and applies it inside the sync's transaction `db`, recording what each file gave;
/// returns whether an error-level line was written (which fails the sync, and its transaction rolls back).
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_full(
    db: &impl GenericClient,
    ctx: &JobContext,
    owner: Owner<'_>,
    repo: &RepositoryRow,
    mirror: &Mirror,
    (head, base): (&str, &str),
    context: &LoadContext,
    log: &JobLog<'_>,
) -> Step<bool> {
    loaded::forget(db, repo.id).await.map_err(db_error("the recorded loads", owner))?;

    let (send, mut pieces) = tokio::sync::mpsc::channel::<Piece>(AHEAD);
    let loader = {
        let (registry, repo, mirror, head) = (ctx.registry.clone(), repo.clone(), mirror.clone(), head.to_owned());
        let (inventory, limits, mode) = (context.inventory.clone(), ctx.limits, ctx.scope_mode);
        let batch_files = ctx.load_batch_files.max(1);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let send = |piece| send.blocking_send(piece).is_ok();
                produce(&registry, &repo, &mirror, &head, (&inventory, limits, mode), batch_files, &send)
            })
        })
    };

    let mut state = Consumed::default();
    let consumed = async {
        while let Some(piece) = pieces.recv().await {
            state.take(db, ctx, owner, log, piece).await?;
        }
        Ok::<_, StepError>(())
    }
    .await;
    // The loader stops at its next piece once nothing receives them.
    drop(pieces);
    let produced = loader.await?;
    consumed?;
    produced.map_err(|err| StepError::Failed(Failure::new(err.exc_type(), err.to_string(), grouping::ENSURE)))?;
    if !state.failed {
        let state = LoadedState {
            commit: head.to_owned(),
            base: base.to_owned(),
            doc_bytes: i64::try_from(state.doc_bytes).unwrap_or(i64::MAX),
            files: state.files,
        };
        loaded::set_state(db, repo.id, &state).await.map_err(db_error("the recorded loads", owner))?;
    }
    Ok(state.failed)
}

/// A refusal by the database while saving `what` of the repository.
fn db_error(what: &str, owner: Owner<'_>) -> impl FnOnce(tokio_postgres::Error) -> StepError {
    let what = format!("{what} of {}", owner.name);
    move |e| StepError::db(&what, e)
}

/// What the transaction has taken so far.
#[derive(Default)]
struct Consumed {
    failed: bool,
    /// Files the recorded rows stand for, and bytes of JSON counted against the budget.
    files: i64,
    doc_bytes: usize,
    /// Config context definitions staged so far (their place in processing order), and whether one of them would
    /// be refused by the database.
    seq: i64,
    staging: bool,
    refused: bool,
}

impl Consumed {
    async fn take(
        &mut self,
        db: &impl GenericClient,
        ctx: &JobContext,
        owner: Owner<'_>,
        log: &JobLog<'_>,
        piece: Piece,
    ) -> Step<()> {
        match piece {
            Piece::Lines(lines) => self.write(log, &lines).await?,
            Piece::Type { identifier, loaded, row } => {
                self.write(log, &loaded.logs).await?;
                self.doc_bytes += loaded.type_bytes.values().sum::<usize>();
                if let Some(data_type) = ctx.registry.get(&identifier) {
                    self.failed |= super::apply::reconcile_and_log(db, ctx, owner, data_type, &loaded, log).await?;
                }
                if let Some(row) = row {
                    self.files += row.files;
                    loaded::insert_files(db, owner.id, &[row]).await.map_err(db_error("the recorded loads", owner))?;
                }
            }
            Piece::Files(files) => {
                self.start_staging(db).await.map_err(db_error("config contexts", owner))?;
                let lines: Vec<LogEntry> = files.iter().flat_map(|f| f.load.logs.iter().cloned()).collect();
                let rows: Vec<FileRow> = files.iter().map(|f| file_row(&f.load, &f.load.logs)).collect();
                let (mut contexts, mut locals) = (Vec::new(), Vec::new());
                for file in &files {
                    for (context, problem) in file.load.contexts.iter().zip(&file.context_problems) {
                        self.seq += 1;
                        self.refused |= problem.is_some();
                        contexts.push((self.seq, context, problem.as_deref()));
                    }
                    for (local, problem) in file.load.locals.iter().zip(&file.local_problems) {
                        self.seq += 1;
                        self.refused |= problem.is_some();
                        locals.push((self.seq, local, problem.as_deref()));
                    }
                }
                self.files += i64::try_from(rows.len()).unwrap_or(i64::MAX);
                // The log on its own connections while the transaction stages the batch.
                let written = self.write(log, &lines);
                let staged = async {
                    staged::add(db, &contexts, &locals).await?;
                    loaded::insert_files(db, owner.id, &rows).await
                };
                let (written, staged) = tokio::join!(written, staged);
                written?;
                staged.map_err(db_error("config contexts", owner))?;
            }
            Piece::ContextsEnd { own, bytes } => {
                self.start_staging(db).await.map_err(db_error("config contexts", owner))?;
                self.doc_bytes += bytes;
                let row = type_row(CONTEXTS, &own, 0, 0);
                loaded::insert_files(db, owner.id, &[row]).await.map_err(db_error("the recorded loads", owner))?;
                let refused = staged::refused(db, self.refused).await.map_err(db_error("config contexts", owner))?;
                self.write(log, &refused.lines).await?;
                let enforcement = ctx.schema_enforcement;
                let what = format!("config contexts of {}", owner.name);
                self.failed |= super::apply::logged(log, &what, |sink| async move {
                    let rest = staged::reconcile(db, owner, enforcement, &refused, Some(&sink)).await;
                    drop(sink);
                    rest
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn write(&mut self, log: &JobLog<'_>, lines: &[LogEntry]) -> Step<()> {
        self.failed |= super::apply::has_error(lines);
        log.write_all(lines).await?;
        Ok(())
    }

    async fn start_staging(&mut self, db: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        if !self.staging {
            staged::create(db).await?;
            self.staging = true;
        }
        Ok(())
    }
}

/// The loader thread: reads the tree (config context files unread), runs each type in refresh order and hands
/// on what it loads. Stops early, without error, when nothing receives the pieces any more.
fn produce(
    registry: &Registry,
    repo: &RepositoryRow,
    mirror: &Mirror,
    head: &str,
    (inventory, limits, mode): (&Inventory, gitfleet_shared::yaml::Limits, gitfleet_shared::loaders::ScopeMode),
    batch_files: usize,
    send: &dyn Fn(Piece) -> bool,
) -> Result<(), GitError> {
    let provided = |t: &dyn DataType| repo.provided_contents.iter().any(|p| p == t.identifier());
    // Config context files are read apart only when no other provided type reads anything in their folder.
    let apart = registry.types().filter(|t| provided(*t)).any(|t| t.identifier() == CONTEXTS)
        && !registry.types().any(|t| provided(t) && t.identifier() != CONTEXTS && t.reads("config_contexts/x"));
    let tree = tracing::info_span!("tree read")
        .in_scope(|| mirror.read_tree_deferring(head, limits.max_bytes, apart.then_some("config_contexts")))?;
    let blobs = if apart { Some(mirror.blobs()?) } else { None };
    let input = super::load::input(&tree, repo, inventory, (limits, mode));
    let name = &repo.name;
    let mut section = vec![LogEntry::info("main", format!("Refreshing data provided by {name}...")).about(name)];
    for data_type in registry.types() {
        section.push(LogEntry::info("main", format!("Refreshing {}...", data_type.name())));
        let identifier = data_type.identifier();
        let piece = if identifier == CONTEXTS && provided(data_type) {
            let batch = Batch { most: batch_files, ..Batch::default() };
            let listing = match &blobs {
                Some(blobs) => Listing::Git { blobs, commit: head },
                None => Listing::Tree(&tree),
            };
            if !contexts(&input, &listing, data_type, std::mem::take(&mut section), batch, send)? {
                return Ok(());
            }
            continue;
        } else {
            let mut loaded = Loaded { logs: std::mem::take(&mut section), ..Loaded::default() };
            let mut row = None;
            if provided(data_type) {
                Registry::load_type(&input, data_type, &mut loaded);
                Registry::finish(&mut loaded);
                let bytes = loaded.type_bytes.get(identifier).copied().unwrap_or_default();
                let mut files = tree.files_under(data_type.folder()).len();
                if identifier == "extras.job" && tree.is_file("jobs.py") {
                    files += 1;
                }
                row = Some(type_row(identifier, &loaded.logs, bytes, files));
            }
            Piece::Type { identifier: identifier.to_owned(), loaded: Box::new(loaded), row }
        };
        if !send(piece) {
            return Ok(());
        }
    }
    Ok(())
}

/// Loads the config context files a batch at a time and hands each batch on; false when nothing receives the
/// pieces any more. A loader panic is an error line, as for any type.
fn contexts(
    input: &LoadInput<'_>,
    listing: &Listing<'_>,
    data_type: &dyn DataType,
    section: Vec<LogEntry>,
    mut batch: Batch,
    send: &dyn Fn(Piece) -> bool,
) -> Result<bool, GitError> {
    let _span =
        tracing::info_span!("data type", otel.name = data_type.name(), data_type = data_type.identifier()).entered();
    let mut own: Vec<LogEntry> = section.first().cloned().into_iter().collect();
    if !send(Piece::Lines(section)) {
        return Ok(false);
    }
    let spent = input.spent.document_bytes.get();
    let blobs = match listing {
        Listing::Git { blobs, .. } => Some(*blobs),
        Listing::Tree(_) => None,
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut failure = None;
        let going = context_plan_each(input, listing, &mut |step| match step {
            ContextStep::Line(line) => {
                if !batch.hand_on(input, send) {
                    return false;
                }
                own.push((*line).clone());
                send(Piece::Lines(vec![*line]))
            }
            ContextStep::File { section, file, kind, blob_id } => {
                if let Err(err) = batch.add(input, blobs, (section, file, kind), blob_id.as_deref()) {
                    failure = Some(err);
                    return false;
                }
                !batch.full() || batch.hand_on(input, send)
            }
        })?;
        match failure {
            Some(err) => Err(err),
            None => Ok::<_, GitError>(going && batch.hand_on(input, send)),
        }
    }));
    let going = match run {
        Ok(going) => going?,
        Err(panic) => send(Piece::Lines(vec![Registry::panicked(data_type, &*panic)])),
    };
    let bytes = input.spent.document_bytes.get().saturating_sub(spent);
    Ok(going && send(Piece::ContextsEnd { own, bytes }))
}

/// Where the plan lists the config context folders from: the tree, or the commit's own objects when the tree was
/// read without their files.
enum Listing<'a> {
    Tree(&'a RepoTree),
    Git { blobs: &'a Blobs, commit: &'a str },
}

impl Folders for Listing<'_> {
    type Error = GitError;
    fn entries(&self, dir: &str, visit: &mut dyn FnMut(Entry, Option<String>) -> bool) -> Result<bool, GitError> {
        match self {
            Self::Tree(tree) => tree.entries(dir, visit).map_err(|never| match never {}),
            Self::Git { blobs, commit } => blobs.entries(commit, dir, visit),
        }
    }
}

/// Config context files waiting to be loaded, with their contents (when read apart from the tree).
#[derive(Default)]
struct Batch {
    /// Files a batch holds at most.
    most: usize,
    files: Vec<(Section, String, EntryKind)>,
    tree: RepoTree,
    bytes: usize,
}

impl Batch {
    /// Adds a file of the plan; with `blobs`, its content is read by its blob id into the batch's own tree.
    fn add(
        &mut self,
        input: &LoadInput<'_>,
        blobs: Option<&Blobs>,
        (section, file, kind): (Section, String, EntryKind),
        blob_id: Option<&str>,
    ) -> Result<(), GitError> {
        let path = section.path(&file);
        if let (Some(blobs), Some(id)) = (blobs, blob_id) {
            if let Err(err) = blobs.add_to(&mut self.tree, &path, id, input.limits.max_bytes)? {
                tracing::warn!(path = %path, error = %err, "skipping an unsafe path");
            }
            self.bytes += self.tree.read(&path).map(<[u8]>::len).unwrap_or_default();
        }
        self.files.push((section, file, kind));
        Ok(())
    }

    fn full(&self) -> bool {
        self.files.len() >= self.most || self.bytes >= BATCH_BYTES
    }

    /// Loads the batch and hands it on; false when nothing receives it.
    fn hand_on(&mut self, input: &LoadInput<'_>, send: &dyn Fn(Piece) -> bool) -> bool {
        if self.files.is_empty() {
            return true;
        }
        let read_apart = self.tree.file_count() > 0;
        let tree = std::mem::take(&mut self.tree);
        let batch_input = LoadInput { tree: if read_apart { &tree } else { input.tree }, ..input.clone() };
        let files: Vec<ContextFile> = std::mem::take(&mut self.files)
            .into_iter()
            .map(|(section, file, kind)| {
                let load = load_context_file(&batch_input, section, &file, kind);
                ContextFile {
                    context_problems: load.contexts.iter().map(context_problem).collect(),
                    local_problems: load.locals.iter().map(local_problem).collect(),
                    load,
                }
            })
            .collect();
        input.spent.document_bytes.set(batch_input.spent.document_bytes.get());
        self.bytes = 0;
        send(Piece::Files(files))
    }
}
