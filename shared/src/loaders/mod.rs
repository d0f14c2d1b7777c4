//! The data types a repository provides, loaded from a commit's tree by pure functions (spec sections c, d, e).
//!
//! A [`Registry`] holds every data type ordered by (weight, name); [`Registry::load`] runs all of them on every sync
//! and returns the records each provided type yields plus the log entries Nautobot would write while loading. A type
//! the repository does not provide yields nothing, and reconciling then deletes what it owned. The database side
//! (change detection, global uniqueness, deletion) is the reconciler's job; nothing here does I/O.

mod config_context;
mod django;
mod export_template;
mod fields;
mod graphql_query;
mod job;
mod schema;
mod text_file;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::inventory::Inventory;
use crate::job_result::{LogEntry, LogLevel};
use crate::tree::{Entry, EntryKind, RepoTree};
use crate::yaml::{self, Limits};

pub use config_context::GROUPING as CONTEXTS_GROUPING;
pub use config_context::{
    ConfigContext, ContextFiles, FileLoad, LocalContext, Section, Step as ContextStep, context_key,
    load_file as load_context_file, local_key, plan as context_plan, plan_each as context_plan_each,
};
pub use export_template::{ExportTemplate, mime_type};
pub use fields::{context_problem, local_problem};
pub use graphql_query::GraphqlQuery;
pub use job::{JobRecord, unique_name as unique_job_name};
pub use schema::{ContextSchema, DataChecker, SchemaEnforcement};

/// How scope lookups that match no inventory object are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMode {
    /// As Nautobot: each lookup must match exactly one object, or the file fails with an error.
    #[default]
    Strict,
    /// Unresolved lookups are stored as written (with a warning) and resolve once the inventory knows them.
    Lenient,
}

/// Everything a load needs; all of it in memory.
#[derive(Debug, Clone)]
pub struct LoadInput<'a> {
    pub tree: &'a RepoTree,
    pub repo_name: &'a str,
    pub slug: &'a str,
    /// Content identifiers the repository provides.
    pub provided: &'a [String],
    /// `None`: lookups are not resolved at all (`worker check` without `--inventory`).
    pub inventory: Option<&'a Inventory>,
    pub scope_mode: ScopeMode,
    pub limits: Limits,
    /// What this load has spent of its budgets so far (`Budget::default()` to start).
    pub spent: Budget,
}

/// Running totals of one load, checked against the repository-wide limits of [`Limits`]: each document and module
/// is bounded on its own, and these bound what a load keeps of all of them together.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Bytes of JSON of every YAML or JSON document parsed so far.
    pub document_bytes: std::cell::Cell<usize>,
    /// Tokens of every Python module parsed so far (the syntax trees are kept until jobs are resolved).
    pub python_tokens: std::cell::Cell<usize>,
}

/// A record of an extension data type: a natural key and its data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtensionRecord {
    pub key: String,
    pub data: Value,
}

/// What one load produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loaded {
    pub config_context_schemas: Vec<ContextSchema>,
    pub config_contexts: Vec<ConfigContext>,
    pub local_contexts: Vec<LocalContext>,
    pub export_templates: Vec<ExportTemplate>,
    pub graphql_queries: Vec<GraphqlQuery>,
    pub jobs: Vec<JobRecord>,
    /// Records of extension types, by identifier.
    pub extensions: BTreeMap<String, Vec<ExtensionRecord>>,
    #[serde(skip)]
    pub logs: Vec<LogEntry>,
    /// Where each type's log lines end in `logs` (identifier, index): the reconciler's lines for a type go there.
    #[serde(skip)]
    pub sections: Vec<(String, usize)>,
    /// The config context files one by one, when that type was loaded (an incremental sync reuses them).
    #[serde(skip)]
    pub files: Option<ContextFiles>,
    /// Bytes of JSON each loaded type's documents counted against the load's budget, by identifier.
    #[serde(skip)]
    pub type_bytes: BTreeMap<String, usize>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.logs.iter().any(|l| l.level == LogLevel::Error)
    }

    /// The records and the log in the shape of `worker check --format json` (`schemas/check-output.schema.json`):
    /// one list per built-in record kind, one per extension type, `status` and `logs`.
    pub fn check_json(&self, failed: bool, logs: &[LogEntry]) -> Value {
        let mut out = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        if let Some(Value::Object(extensions)) = out.remove("extensions") {
            out.extend(extensions);
        }
        out.insert("status".into(), Value::from(if failed { "FAILURE" } else { "SUCCESS" }));
        let logs: Vec<Value> = logs
            .iter()
            .map(|l| {
                let mut entry = Map::new();
                entry.insert("level".into(), Value::from(l.level.as_str()));
                entry.insert("grouping".into(), Value::from(l.grouping.as_str()));
                entry.insert("message".into(), Value::from(l.message.as_str()));
                Value::Object(entry)
            })
            .collect();
        out.insert("logs".into(), Value::Array(logs));
        Value::Object(out)
    }

    /// Keeps only the records of one data type (the lists of the others become empty).
    pub fn keep_only(&mut self, data_type: &dyn DataType) {
        let records = data_type.records();
        if records != Records::ConfigContextSchemas {
            self.config_context_schemas.clear();
        }
        if records != Records::ConfigContexts {
            self.config_contexts.clear();
            self.local_contexts.clear();
        }
        if records != Records::Jobs {
            self.jobs.clear();
        }
        if records != Records::ExportTemplates {
            self.export_templates.clear();
        }
        if records != Records::GraphqlQueries {
            self.graphql_queries.clear();
        }
        self.extensions.retain(|identifier, _| identifier == data_type.identifier());
    }

    /// Sorts every record list by its natural key (processing is already in sorted path order; this makes the
    /// output independent of which file defined a record).
    pub fn sort(&mut self) {
        self.config_context_schemas.sort_by(|a, b| a.name.cmp(&b.name));
        self.config_contexts.sort_by(|a, b| a.name.cmp(&b.name));
        self.local_contexts.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        self.export_templates.sort_by(|a, b| (&a.content_type, &a.name).cmp(&(&b.content_type, &b.name)));
        self.graphql_queries.sort_by(|a, b| a.name.cmp(&b.name));
        self.jobs.sort_by(|a, b| (&a.module_name, &a.job_class_name).cmp(&(&b.module_name, &b.job_class_name)));
        for records in self.extensions.values_mut() {
            records.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
}

/// The records a data type writes, which tells the reconciler which writer to use (the built-in types have tables
/// of their own; an extension's records are rows of `extension_record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    ConfigContextSchemas,
    /// Config contexts and local contexts.
    ConfigContexts,
    Jobs,
    ExportTemplates,
    GraphqlQueries,
    /// Reported while loading, stored nowhere (data compliance rules, as Nautobot).
    Nothing,
    Extension,
}

/// One data type a repository can provide. Built-in types and extensions implement the same trait.
pub trait DataType: Send + Sync {
    /// The content identifier stored in `provided_contents`, e.g. `extras.configcontext`.
    fn identifier(&self) -> &'static str;
    /// Human-readable name, also the log label (`Refreshing {name}...`).
    fn name(&self) -> &'static str;
    /// Refresh order: lower first; ties are broken by name.
    fn weight(&self) -> u32 {
        1000
    }
    /// The folder (or file) whose presence means the repository has this type (`worker check` default).
    fn folder(&self) -> &'static str;
    /// Paths at the root besides `folder` that the load looks at (files it reads, folders it warns about): with
    /// the folder, every path whose change can change what the type loads.
    fn root_paths(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether a change at `path` can change what this type loads (an empty folder means any path can).
    fn reads(&self, path: &str) -> bool {
        let under = |p: &str| path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'));
        self.folder().is_empty() || under(self.folder()) || self.root_paths().iter().any(|p| under(p))
    }
    /// Which records this type's loads become in the database (an extension's: `extension_record` rows).
    fn records(&self) -> Records {
        Records::Extension
    }
    /// Loads the type from the tree into `out`, logging as it goes.
    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded);
}

/// Every data type, in refresh order.
pub struct Registry {
    types: Vec<Box<dyn DataType>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.types.iter().map(|t| t.identifier())).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl Registry {
    /// The built-in types of spec c.0 and the example extension (`example_app.textfile`).
    pub fn with_builtins() -> Self {
        let mut registry = Self { types: Vec::new() };
        registry.register(Box::new(schema::Schemas));
        registry.register(Box::new(config_context::ConfigContexts));
        registry.register(Box::new(job::Jobs));
        registry.register(Box::new(export_template::ExportTemplates));
        registry.register(Box::new(graphql_query::GraphqlQueries));
        registry.register(Box::new(job::DataComplianceRules));
        registry.register(Box::new(text_file::TextFiles));
        registry
    }

    /// Adds a type, keeping (weight, name) order.
    pub fn register(&mut self, data_type: Box<dyn DataType>) {
        self.types.push(data_type);
        self.types.sort_by(|a, b| (a.weight(), a.name()).cmp(&(b.weight(), b.name())));
    }

    pub fn types(&self) -> impl Iterator<Item = &dyn DataType> {
        self.types.iter().map(|t| &**t)
    }

    /// Every registered type as a choice for `provided_contents` (what the producer accepts).
    pub fn content_types(&self) -> Vec<crate::repo::ContentType> {
        self.types()
            .map(|t| crate::repo::ContentType { identifier: t.identifier(), name: t.name(), weight: t.weight() })
            .collect()
    }

    pub fn get(&self, identifier: &str) -> Option<&dyn DataType> {
        self.types().find(|t| t.identifier() == identifier)
    }

    /// The identifiers whose folder exists in the tree (what `worker check` loads by default).
    pub fn present_in(&self, tree: &RepoTree) -> Vec<String> {
        self.types()
            .filter(|t| tree.kind(t.folder()).is_some() || (t.folder() == "jobs" && tree.is_file("jobs.py")))
            .map(|t| t.identifier().to_owned())
            .collect()
    }

    /// Runs every registered type (spec b.7): `Refreshing {type}...`, then the type's loader when it is provided.
    /// Ends with the summary line: `Data refresh from {name} complete!` or, after any error,
    /// `Failed to refresh data provided by {name}. Please see logs.`
    pub fn load(&self, input: &LoadInput<'_>) -> Loaded {
        self.load_where(input, &|_| true)
    }

    /// As [`Registry::load`], running only the provided types that `reload` selects: every type still gets its
    /// `Refreshing` line and its section, so an incremental sync can put what it reused in its place.
    pub fn load_where(&self, input: &LoadInput<'_>, reload: &dyn Fn(&str) -> bool) -> Loaded {
        let mut out = Loaded::default();
        let name = input.repo_name;
        out.logs.push(LogEntry::info("main", format!("Refreshing data provided by {name}...")).about(name));
        for data_type in self.types() {
            out.logs.push(LogEntry::info("main", format!("Refreshing {}...", data_type.name())));
            if input.provided.iter().any(|p| p == data_type.identifier()) && reload(data_type.identifier()) {
                Self::load_type(input, data_type, &mut out);
            }
            out.sections.push((data_type.identifier().to_owned(), out.logs.len()));
        }
        Self::finish(&mut out);
        out
    }

    /// Runs one type's loader into `out` as a load does: in a span of its own, a panic caught as an error line,
    /// its records checked against what the database takes, and what it spent of the budget noted.
    pub fn load_type(input: &LoadInput<'_>, data_type: &dyn DataType, out: &mut Loaded) {
        // A span per data type (in the worker, a child of the sync's: its trace shows each loader's time).
        let _span = tracing::info_span!("data type", otel.name = data_type.name(), data_type = data_type.identifier())
            .entered();
        let marks = fields::Marks::of(out);
        let spent = input.spent.document_bytes.get();
        // A loader bug must fail this repository's sync, not the worker that runs it.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| data_type.load(input, out)));
        if let Err(panic) = loaded {
            out.logs.push(Self::panicked(data_type, &*panic));
        }
        fields::check(data_type.identifier(), out, marks);
        let bytes = input.spent.document_bytes.get().saturating_sub(spent);
        out.type_bytes.insert(data_type.identifier().to_owned(), bytes);
    }

    /// The error line of a loader that panicked.
    pub fn panicked(data_type: &dyn DataType, panic: &(dyn std::any::Any + Send)) -> LogEntry {
        let what = crate::panic_message(panic);
        LogEntry::error(
            "main",
            format!("Error in loading {}: the loader failed unexpectedly ({what})", data_type.name()),
        )
    }

    /// What a load does once every type ran: records in their natural order, jobs' names made unique.
    pub fn finish(out: &mut Loaded) {
        out.sort();
        job::assign_unique_names(&mut out.jobs);
    }
}

/// Checks every record in `out` as a load checks what a type yields: refused ones are removed and logged as errors
/// of the type `identifier` (for records an incremental sync assembled from single files).
pub fn check_fields(identifier: &str, out: &mut Loaded) {
    fields::check(identifier, out, fields::Marks::default());
}

/// The end-of-refresh line (spec b.7 steps 3 and 4).
pub fn summary(repo_name: &str, failed: bool) -> LogEntry {
    if failed {
        LogEntry::error("main", format!("Failed to refresh data provided by {repo_name}. Please see logs."))
    } else {
        LogEntry::info("main", format!("Data refresh from {repo_name} complete!")).about(repo_name)
    }
}

/// Log helpers shared by the loaders.
pub(crate) struct Log<'a> {
    pub out: &'a mut Vec<LogEntry>,
    pub grouping: &'static str,
}

impl Log<'_> {
    pub fn info(&mut self, message: impl AsRef<str>) {
        self.out.push(LogEntry::info(self.grouping, message));
    }
    pub fn warning(&mut self, message: impl AsRef<str>) {
        self.out.push(LogEntry::warning(self.grouping, message));
    }
    pub fn error(&mut self, message: impl AsRef<str>) {
        self.out.push(LogEntry::error(self.grouping, message));
    }
}

/// The entries of a data folder that loaders read as files, in name order. Dotfiles (`.gitkeep`, `.DS_Store`) are
/// skipped with a warning instead of failing the sync (ARCHITECTURE 7); symbolic links and submodules are never
/// followed.
pub(crate) fn data_files(
    tree: &RepoTree,
    dir: &str,
    log: &mut Log<'_>,
    include_dirs: bool,
) -> Vec<(String, EntryKind)> {
    tree.list(dir)
        .into_iter()
        .filter(|entry| data_entry(dir, entry, log, include_dirs))
        .map(|entry| (entry.name, entry.kind))
        .collect()
}

/// Whether a loader reads `entry` of the data folder `dir` as a file; a skipped dotfile, link or submodule is
/// logged as a warning.
pub(crate) fn data_entry(dir: &str, entry: &Entry, log: &mut Log<'_>, include_dirs: bool) -> bool {
    let name = &entry.name;
    if name.starts_with('.') {
        log.warning(format!("Skipping `{dir}/{name}`: dotfiles in data folders are ignored"));
        return false;
    }
    match entry.kind {
        EntryKind::File => true,
        EntryKind::Dir => include_dirs,
        EntryKind::Symlink => {
            log.warning(format!("Skipping `{dir}/{name}`: symbolic links are not followed"));
            false
        }
        EntryKind::Submodule => {
            log.warning(format!("Skipping `{dir}/{name}`: git submodules are not read"));
            false
        }
    }
}

/// Where a plan lists folders from: the loaded tree itself, or (for a folder too large to hold as a list) the
/// repository's own objects, read one folder at a time.
pub trait Folders {
    type Error;
    /// Visits the entries directly inside `dir` in name order, each with its blob id when known, until `visit`
    /// returns false; returns whether every entry was visited. A folder that does not exist has no entries.
    fn entries(&self, dir: &str, visit: &mut dyn FnMut(Entry, Option<String>) -> bool) -> Result<bool, Self::Error>;
}

impl Folders for RepoTree {
    type Error = std::convert::Infallible;
    fn entries(&self, dir: &str, visit: &mut dyn FnMut(Entry, Option<String>) -> bool) -> Result<bool, Self::Error> {
        Ok(self.list(dir).into_iter().all(|entry| {
            let path = if dir.is_empty() { entry.name.clone() } else { format!("{dir}/{}", entry.name) };
            let id = self.blob_id(&path).map(str::to_owned);
            visit(entry, id)
        }))
    }
}

/// Reads and parses a YAML or JSON file with the YAML 1.1 loader, within the load's total budget. Nautobot opens
/// data files in text mode, so line ends are Python's universal newlines before the parser sees them.
pub(crate) fn parse_file(input: &LoadInput<'_>, path: &str) -> Result<Value, String> {
    let bytes = input.tree.read(path).map_err(|e| e.to_string())?;
    let (value, size) = yaml::load_sized(&universal_newlines(bytes), &input.limits).map_err(|e| e.to_string())?;
    let total = input.spent.document_bytes.get().saturating_add(size);
    input.spent.document_bytes.set(total);
    if total > input.limits.max_load_bytes {
        return Err(format!(
            "the repository's documents add up to more than {} bytes of JSON (the limit for one sync)",
            input.limits.max_load_bytes
        ));
    }
    Ok(value)
}

/// Reads a text file (templates, queries, Python): UTF-8 and within the size limit, with Python's universal
/// newlines as a file opened in text mode reads (`\r\n` and a lone `\r` become `\n`).
pub(crate) fn read_text<'t>(input: &LoadInput<'t>, path: &str) -> Result<Cow<'t, str>, String> {
    let bytes = input.tree.read(path).map_err(|e| e.to_string())?;
    if bytes.len() > input.limits.max_bytes {
        return Err(format!("file is {} bytes, over the limit of {} bytes", bytes.len(), input.limits.max_bytes));
    }
    std::str::from_utf8(bytes)
        .map_err(|e| format!("file is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    Ok(match universal_newlines(bytes) {
        // Both arms hold valid UTF-8: the bytes were checked, and replacing the ASCII `\r` keeps them valid.
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or_default()),
        Cow::Owned(b) => Cow::Owned(String::from_utf8(b).unwrap_or_default()),
    })
}

/// Python's universal newlines: `\r\n` and a lone `\r` become `\n`. Borrowed when there is nothing to change.
pub fn universal_newlines(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.contains(&b'\r') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes.iter().peekable();
    while let Some(&b) = rest.next() {
        if b == b'\r' {
            out.push(b'\n');
            rest.next_if_eq(&&b'\n');
        } else {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// The `_metadata` mapping of a context or schema dict, with Nautobot's messages when it is missing, and the
/// record's name as Django stores it (`str()` of the value: `name: 12:30` is `"750"`).
pub(crate) fn metadata(data: &Map<String, Value>) -> Result<(&Map<String, Value>, String), String> {
    let Some(meta) = data.get("_metadata") else {
        return Err("data is missing the required `_metadata` key.".to_owned());
    };
    let Some(meta) = meta.as_object() else {
        return Err("data `_metadata` must be a mapping.".to_owned());
    };
    match meta.get("name") {
        None => Err("data `_metadata` is missing the required `name` key.".to_owned()),
        Some(name) => Ok((meta, django::text("name", name)?)),
    }
}

/// Keeps only the last item for each key, in first-seen order: two files defining the same record update the same
/// record, and the last one processed wins (as in Nautobot). Linear, for repositories with thousands of files.
pub(crate) fn dedupe_keep_last<T, K: std::hash::Hash + Eq>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut last = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    if last.len() == items.len() {
        return;
    }
    let mut i = 0;
    items.retain(|item| {
        let keep = last.get(&key(item)) == Some(&i);
        i += 1;
        keep
    });
}

#[cfg(test)]
mod tests;
