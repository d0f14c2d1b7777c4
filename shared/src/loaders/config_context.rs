//! Config contexts (spec c.3): explicit files in `config_contexts/`, implicit `config_contexts/<filter>/<name>`
//! files scoped by their file name, and local contexts for devices and virtual machines.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{DataType, LoadInput, Loaded, Log, ScopeMode, data_entry, django, metadata, parse_file};
use crate::inventory::{FILTERS, LOCAL_KINDS, python_repr};
use crate::job_result::LogEntry;
use crate::json_text::JsonText;
use crate::py;
use crate::tree::{EntryKind, stem};

pub const GROUPING: &str = "config contexts";
pub const LOCAL_GROUPING: &str = "local config contexts";

/// The filter and local folders, which the load warns about when they sit at the root instead of inside
/// `config_contexts/`.
const ROOT_FOLDERS: [&str; FILTERS.len() + LOCAL_KINDS.len()] = {
    let mut out = [""; FILTERS.len() + LOCAL_KINDS.len()];
    let mut i = 0;
    while i < FILTERS.len() {
        out[i] = FILTERS[i].0;
        i += 1;
    }
    let mut j = 0;
    while j < LOCAL_KINDS.len() {
        out[i + j] = LOCAL_KINDS[j].0;
        j += 1;
    }
    out
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigContext {
    pub name: String,
    pub weight: i64,
    pub description: String,
    pub is_active: bool,
    /// Name of the linked schema, looked up globally when reconciling.
    pub config_context_schema: Option<String>,
    pub data: JsonText,
    /// Filter -> lookups as written (implicit files add their implied lookup).
    pub scope: BTreeMap<String, Vec<Value>>,
    /// Filter -> inventory ids of the objects the lookups matched (empty when not resolved).
    #[serde(skip)]
    pub resolved: BTreeMap<String, Vec<String>>,
    #[serde(skip)]
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalContext {
    /// `devices` or `virtual_machines`.
    pub kind: &'static str,
    pub name: String,
    pub data: JsonText,
    /// The inventory id of the device or virtual machine, when resolved.
    #[serde(skip)]
    pub target: Option<String>,
}

pub(super) struct ConfigContexts;

impl DataType for ConfigContexts {
    fn identifier(&self) -> &'static str {
        "extras.configcontext"
    }
    fn name(&self) -> &'static str {
        "config contexts"
    }
    fn weight(&self) -> u32 {
        200
    }
    fn folder(&self) -> &'static str {
        "config_contexts"
    }
    fn root_paths(&self) -> &'static [&'static str] {
        &ROOT_FOLDERS
    }
    fn records(&self) -> super::Records {
        super::Records::ConfigContexts
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        if !input.tree.is_dir("config_contexts") {
            return;
        }
        let mut contexts: Vec<ConfigContext> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut files: Vec<FileLoad> = Vec::new();
        // Where each file's lines are in the log, and the lines about folders rather than one file.
        let mut own: Vec<std::ops::Range<usize>> = Vec::new();
        let mut folder_lines = Vec::new();
        for step in plan(input) {
            match step {
                Step::Line(line) => {
                    folder_lines.push((*line).clone());
                    out.logs.push(*line);
                }
                Step::File { section, file, kind, .. } => {
                    let mut loaded = load_file(input, section, &file, kind);
                    let at = out.logs.len();
                    out.logs.append(&mut loaded.logs);
                    own.push(at..out.logs.len());
                    // The records and lines go to the load; the file keeps its keys and where its lines are.
                    keep(&mut contexts, &mut index, std::mem::take(&mut loaded.contexts));
                    out.local_contexts.append(&mut loaded.locals);
                    files.push(loaded);
                }
            }
        }
        out.config_contexts.extend(contexts);
        super::dedupe_keep_last(&mut out.local_contexts, |l| (l.kind, l.name.clone()));
        out.files = Some(ContextFiles { files, lines: own, folder_lines });
    }
}

/// One step of the config contexts load, in the order it is taken: a line about a folder (a misplaced folder at
/// the root, a skipped entry), or a file to load with [`load_file`].
#[derive(Debug, Clone)]
pub enum Step {
    /// Boxed: a plan holds a step per file, and lines are few.
    Line(Box<LogEntry>),
    File {
        section: Section,
        file: String,
        kind: EntryKind,
        /// The file's blob id, when the listing knows it.
        blob_id: Option<String>,
    },
}

/// What loading the config contexts type does, in order, from the tree's listing alone (no file is read): a full
/// load runs the files of this plan in batches, reading each batch's contents as it goes.
pub fn plan(input: &LoadInput<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    match plan_each(input, input.tree, &mut |step| {
        steps.push(step);
        true
    }) {
        Ok(_) => steps,
        Err(never) => match never {},
    }
}

/// [`plan`] a step at a time, the section folders listed by `folders` (the tree's folders themselves, or a
/// repository's objects for a folder of many files: nothing here holds a list of them), until `step` returns
/// false; returns whether every step was taken. Each folder is listed twice: first for the lines about entries it
/// skips, which come before its files, then for the files.
pub fn plan_each<F: super::Folders>(
    input: &LoadInput<'_>,
    folders: &F,
    step: &mut dyn FnMut(Step) -> bool,
) -> Result<bool, F::Error> {
    let root = "config_contexts";
    if !input.tree.is_dir(root) {
        return Ok(true);
    }
    let mut sections = vec![(Section::Explicit, root.to_owned())];
    sections.extend((0..FILTERS.len()).map(|i| (Section::Implicit(i), format!("{root}/{}", FILTERS[i].0))));
    sections.extend((0..LOCAL_KINDS.len()).map(|i| (Section::Local(i), format!("{root}/{}", LOCAL_KINDS[i].0))));
    for (section, dir) in sections {
        let grouping = if matches!(section, Section::Local(_)) { LOCAL_GROUPING } else { GROUPING };
        let mut lines = Vec::new();
        if section != Section::Explicit {
            misplaced(input, section.folder(), &mut Log { out: &mut lines, grouping: GROUPING });
        }
        let listed = section == Section::Explicit || input.tree.is_dir(&dir);
        if listed {
            let mut log = Log { out: &mut lines, grouping };
            folders.entries(&dir, &mut |entry, _| {
                data_entry(&dir, &entry, &mut log, section.has_dirs());
                true
            })?;
        }
        if !lines.into_iter().all(|line| step(Step::Line(Box::new(line)))) {
            return Ok(false);
        }
        if listed {
            let mut quiet = Vec::new();
            let going = folders.entries(&dir, &mut |entry, blob_id| {
                if !data_entry(&dir, &entry, &mut Log { out: &mut quiet, grouping }, section.has_dirs()) {
                    quiet.clear();
                    return true;
                }
                step(Step::File { section, file: entry.name, kind: entry.kind, blob_id })
            })?;
            if !going {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Where a config context file sits, which says what it defines and whose definition wins: explicit files in
/// `config_contexts/`, then each filter's folder in turn (a later definition of a name replaces an earlier one),
/// and the local contexts of devices and virtual machines (their own names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Explicit,
    /// An implicit file; the index of its filter.
    Implicit(usize),
    /// A local context; the index of its kind.
    Local(usize),
}

impl Section {
    /// The folder's name inside `config_contexts/` (empty for explicit files).
    pub fn folder(self) -> &'static str {
        match self {
            Self::Explicit => "",
            Self::Implicit(i) => FILTERS[i].0,
            Self::Local(i) => LOCAL_KINDS[i].0,
        }
    }

    /// Processing order: of two definitions of one name, the one with the higher (order, path) wins.
    pub fn order(self) -> i32 {
        match self {
            Self::Explicit => 0,
            Self::Implicit(i) => 1 + i32::try_from(i).unwrap_or(i32::MAX - 1),
            Self::Local(i) => 1000 + i32::try_from(i).unwrap_or(0),
        }
    }

    fn has_dirs(self) -> bool {
        self != Self::Explicit
    }

    /// The section and file name of a path that the loader reads as a file of its own, on its own: a file directly
    /// in `config_contexts/` or in one of its filter or local folders, not a dotfile. `None` for anything else (a
    /// folder's contents depend on more than one path, and such changes reload the whole type).
    pub fn of(path: &str) -> Option<(Self, &str)> {
        let rest = path.strip_prefix("config_contexts/")?;
        let (section, file) = match rest.split_once('/') {
            None => (Self::Explicit, rest),
            Some((dir, file)) => {
                let section = if let Some(i) = FILTERS.iter().position(|f| f.0 == dir) {
                    Self::Implicit(i)
                } else {
                    Self::Local(LOCAL_KINDS.iter().position(|k| k.0 == dir)?)
                };
                (section, file)
            }
        };
        (!file.is_empty() && !file.contains('/') && !file.starts_with('.')).then_some((section, file))
    }

    /// The path of `file` in this section.
    pub fn path(self, file: &str) -> String {
        match self {
            Self::Explicit => format!("config_contexts/{file}"),
            other => format!("config_contexts/{}/{file}", other.folder()),
        }
    }
}

/// What loading one config context file gave: its records, its lines, and what it spent of the load's budget.
#[derive(Debug, Clone)]
pub struct FileLoad {
    pub path: String,
    pub blob_id: Option<String>,
    pub section: Section,
    /// Contexts in the file (a name defined twice keeps its last definition).
    pub contexts: Vec<ConfigContext>,
    pub locals: Vec<LocalContext>,
    pub logs: Vec<LogEntry>,
    /// Bytes of JSON its document counted against the load's budget.
    pub bytes: usize,
    /// The keys of the records it defines: `context:{name}` and `{kind}:{name}`.
    pub keys: Vec<String>,
}

pub fn context_key(name: &str) -> String {
    format!("context:{name}")
}

pub fn local_key(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

/// Every file the config contexts loader read, with the lines that belong to no single file.
#[derive(Debug, Clone, Default)]
pub struct ContextFiles {
    /// Each file's records and keys; its `logs` are moved to the load's log (not kept twice).
    pub files: Vec<FileLoad>,
    /// Where each file's lines are in the load's log (`Loaded::logs`), one range per file.
    pub lines: Vec<std::ops::Range<usize>>,
    pub folder_lines: Vec<LogEntry>,
}

/// Loads one file of a section (a directory entry is an error in the folders that take files only).
pub fn load_file(input: &LoadInput<'_>, section: Section, file: &str, kind: EntryKind) -> FileLoad {
    let path = section.path(file);
    let spent = input.spent.document_bytes.get();
    let mut loaded = FileLoad {
        path: path.clone(),
        blob_id: input.tree.blob_id(&path).map(str::to_owned),
        section,
        contexts: Vec::new(),
        locals: Vec::new(),
        logs: Vec::new(),
        bytes: 0,
        keys: Vec::new(),
    };
    match section {
        Section::Explicit => {
            let mut log = Log { out: &mut loaded.logs, grouping: GROUPING };
            log.info(format!("Loading config context from `{file}`"));
            let result = parse_file(input, &path).and_then(|data| match data {
                Value::Object(map) => import(input, map, file, log.out).map(|c| vec![c]),
                Value::Array(items) => {
                    let mut done = Vec::new();
                    for item in items {
                        let Value::Object(map) = item else {
                            return Err("data must be a dict or list of dicts".to_owned());
                        };
                        done.push(import(input, map, file, log.out)?);
                    }
                    Ok(done)
                }
                _ => Err("data must be a dict or list of dicts".to_owned()),
            });
            match result {
                Ok(contexts) => keep(&mut loaded.contexts, &mut HashMap::new(), contexts),
                Err(e) => log.error(format!("Error in loading config context data from `{file}`: {e}")),
            }
        }
        Section::Implicit(i) => {
            let mut log = Log { out: &mut loaded.logs, grouping: GROUPING };
            let filter = FILTERS[i].0;
            let field = if filter == "device_types" { "model" } else { "name" };
            let name = stem(file).to_owned();
            log.info(format!(
                "Loading config context, filter `{filter} = [{field}: \"{name}\"]`, from `{filter}/{file}`"
            ));
            let result = if kind == EntryKind::Dir {
                Err(format!("`{filter}/{file}` is a directory, not a config context file"))
            } else {
                parse_file(input, &path).and_then(|data| {
                    let Value::Object(mut map) = data else { return Err("data must be a dict".to_owned()) };
                    let meta = map.entry("_metadata").or_insert_with(|| Value::Object(Map::new()));
                    let Value::Object(meta) = meta else {
                        return Err("data `_metadata` must be a mapping.".to_owned());
                    };
                    let implied = Value::Object(Map::from_iter([(field.to_owned(), Value::String(name.clone()))]));
                    match meta.entry(filter).or_insert_with(|| Value::Array(Vec::new())) {
                        Value::Array(list) => list.push(implied),
                        other => *other = Value::Array(vec![implied]),
                    }
                    import(input, map, file, log.out)
                })
            };
            match result {
                Ok(context) => loaded.contexts.push(context),
                Err(e) => log.error(format!("Error in loading config context data from `{file}`: {e}")),
            }
        }
        Section::Local(i) => {
            let (local_type, inventory_kind) = LOCAL_KINDS[i];
            let mut log = Log { out: &mut loaded.logs, grouping: LOCAL_GROUPING };
            let name = stem(file).to_owned();
            log.info(format!("Loading local config context for `{name}` from `{local_type}/{file}`"));
            let result = if kind == EntryKind::Dir {
                Err(format!("`{local_type}/{file}` is a directory, not a local config context file"))
            } else {
                parse_file(input, &path)
                    .and_then(|data| local_target(input, inventory_kind, &name, log.out).map(|t| (data, t)))
                    .and_then(|(data, target)| match &data {
                        Value::Object(_) | Value::Null => Ok((data, target)),
                        _ => Err("JSON data must be in object form".to_owned()),
                    })
            };
            match result {
                Ok((data, target)) => {
                    loaded.locals.push(LocalContext { kind: local_type, name, data: data.into(), target })
                }
                Err(e) => log.error(format!("Error in loading local config context from `{local_type}/{file}`: {e}")),
            }
        }
    }
    loaded.bytes = input.spent.document_bytes.get().saturating_sub(spent);
    loaded.keys = loaded.contexts.iter().map(|c| context_key(&c.name)).collect();
    loaded.keys.extend(loaded.locals.iter().map(|l| local_key(l.kind, &l.name)));
    loaded
}

/// Two files defining the same context name update the same record: the last one processed wins.
fn keep(contexts: &mut Vec<ConfigContext>, index: &mut HashMap<String, usize>, loaded: Vec<ConfigContext>) {
    for context in loaded {
        match index.get(&context.name) {
            Some(&at) => contexts[at] = context,
            None => {
                index.insert(context.name.clone(), contexts.len());
                contexts.push(context);
            }
        }
    }
}

fn misplaced(input: &LoadInput<'_>, dir: &str, log: &mut Log<'_>) {
    if input.tree.is_dir(dir) {
        log.warning(format!(
            "Found \"{dir}\" directory in the repository root. If this is meant to contain config contexts, it \
             should be moved into a `config_contexts/` subdirectory."
        ));
    }
}

/// Finds the device or virtual machine a local context file names (by exact `name`).
fn local_target(
    input: &LoadInput<'_>,
    kind: &str,
    name: &str,
    logs: &mut Vec<LogEntry>,
) -> Result<Option<String>, String> {
    let Some(inventory) = input.inventory else { return Ok(None) };
    let lookup = Value::Object(Map::from_iter([("name".to_owned(), Value::String(name.to_owned()))]));
    let found = inventory.find(kind, &lookup).map_err(|e| e.to_string())?;
    match found.as_slice() {
        [one] => Ok(Some(one.id.clone().unwrap_or_else(|| name.to_owned()))),
        [] if input.scope_mode == ScopeMode::Lenient => {
            logs.push(LogEntry::warning(
                LOCAL_GROUPING,
                format!("No {kind} named `{name}` in the inventory yet: its local context is stored unresolved"),
            ));
            Ok(None)
        }
        [] => Err("record not found!".to_owned()),
        _ => Err("multiple records with the same name found; unable to determine which one to apply to!".to_owned()),
    }
}

/// Imports one context dict (spec c.3.4).
fn import(
    input: &LoadInput<'_>,
    mut data: Map<String, Value>,
    file: &str,
    logs: &mut Vec<LogEntry>,
) -> Result<ConfigContext, String> {
    let (meta, name) = metadata(&data)?;
    let meta = meta.clone();
    // Absent keys take Nautobot's defaults; present ones go through Django's field preparation, `null` included.
    let weight = match meta.get("weight") {
        None => 1000,
        Some(value) => match django::integer("weight", value)? {
            w @ 0..=32767 => i64::try_from(w).unwrap_or_default(),
            w => return Err(format!("weight {w} is out of range: it must be an integer from 0 to 32767")),
        },
    };
    let description = meta.get("description").map_or(Ok(String::new()), |d| django::text("description", d))?;
    let is_active = meta.get("is_active").map_or(Ok(true), |a| django::boolean("is_active", a))?;
    // The deprecated key applies when the new one is absent (even if empty); a link is made only when the value is
    // truthy, so `config_context_schema: ""` means no schema.
    let link = match (meta.get("config_context_schema"), meta.get("schema")) {
        (None, Some(old)) => {
            logs.push(LogEntry::warning(
                "config context",
                "`schema` is deprecated in `_metadata`, please use `config_context_schema` instead.",
            ));
            Some(old)
        }
        (new, _) => new,
    };
    let schema = link.filter(|v| py::truthy(v)).map(py::str_of);

    let mut scope = BTreeMap::new();
    let mut resolved = BTreeMap::new();
    for &(filter, model, kind) in FILTERS {
        let Some(lookups) = meta.get(filter) else { continue };
        // Nautobot iterates the value: an empty string or mapping is no lookup at all; anything else that is not
        // a list fails there.
        let lookups: &[Value] = match lookups {
            Value::Array(items) => items,
            Value::String(s) if s.is_empty() => &[],
            Value::Object(m) if m.is_empty() => &[],
            other => {
                return Err(format!(
                    "`_metadata.{filter}` must be a list of lookups, e.g. [{{name: \"...\"}}], not {}",
                    py::repr(other)
                ));
            }
        };
        let mut ids = Vec::new();
        for lookup in lookups {
            if let Some(inventory) = input.inventory {
                let found = inventory.find(kind, lookup).map_err(|e| e.to_string())?;
                let shown = python_repr(lookup);
                match found.as_slice() {
                    [one] => ids.push(one.id.clone().unwrap_or_else(|| shown.clone())),
                    [] if input.scope_mode == ScopeMode::Lenient => logs.push(LogEntry::warning(
                        GROUPING,
                        format!("No {model} found for {shown} yet: context {name} keeps the lookup unresolved"),
                    )),
                    [] => {
                        return Err(format!(
                            "No matching {model} found for {shown}; unable to create/update context {name}"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "Multiple {model} found for {shown}; unable to create/update context {name}"
                        ));
                    }
                }
            } else if !lookup.is_object() {
                return Err(format!("a lookup must be a mapping of field to value, got {}", python_repr(lookup)));
            }
        }
        scope.insert(filter.to_owned(), lookups.to_vec());
        resolved.insert(filter.to_owned(), ids);
    }

    data.remove("_metadata");
    Ok(ConfigContext {
        name,
        weight,
        description,
        is_active,
        config_context_schema: schema,
        data: Value::Object(data).into(),
        scope,
        resolved,
        file: file.to_owned(),
    })
}
