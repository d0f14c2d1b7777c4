//! `worker check PATH`: the sync's loaders on a local directory, with no services. What a data repository's own CI
//! runs, and what a new user tries first. The JSON form is a contract: `schemas/check-output.schema.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use gitfleet_shared::inventory::Inventory;
use gitfleet_shared::job_result::{LogEntry, LogLevel};
use gitfleet_shared::loaders::{DataChecker, LoadInput, Loaded, Registry, SchemaEnforcement, ScopeMode, summary};
use gitfleet_shared::repo::slugify_dashes_to_underscores;
use gitfleet_shared::tree::RepoTree;
use gitfleet_shared::yaml::Limits;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The repository's directory (a clone or any folder laid out like one).
    pub path: PathBuf,
    /// Repository name used in log lines; the slug (and so job module names) is derived from it.
    /// Default: the folder name.
    #[arg(long)]
    pub name: Option<String>,
    /// Data types to load (comma separated). Default: every registered type whose folder is present.
    #[arg(long, value_delimiter = ',')]
    pub provides: Option<Vec<String>>,
    /// Scope inventory (JSON: a list of {kind, id?, fields}, or {"objects": [...]}) to resolve lookups against.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// With an inventory: strict (each lookup matches exactly one object) or lenient.
    #[arg(long, value_enum, default_value_t = Mode::Strict)]
    pub scope_mode: Mode,
    /// Config context data that does not match its linked schema: `warn` (a warning naming the file and the first
    /// violations), `error` (an error: the check fails, as a sync would) or `off` (not checked, as Nautobot).
    #[arg(long, env = "GITFLEET_SCHEMA_ENFORCEMENT", default_value_t = SchemaEnforcement::Warn)]
    pub schema_enforcement: SchemaEnforcement,
    /// Largest data file read, in bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_file_bytes: usize,
    /// Most bytes one YAML or JSON document may expand to once aliases are followed (as the worker's
    /// `GITFLEET_MAX_DOCUMENT_BYTES`).
    #[arg(long, default_value_t = Limits::default().max_expanded_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_document_bytes: usize,
    /// Largest record, in bytes of JSON (as the worker's `GITFLEET_MAX_RECORD_BYTES`).
    #[arg(long, default_value_t = Limits::default().max_record_bytes, value_parser = gitfleet_infra::settings::positive)]
    pub max_record_bytes: usize,
    /// `text` for people; `json` for programs: the contract in schemas/check-output.schema.json.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub use gitfleet_infra::settings::{Format, ScopeModeArg as Mode};

/// Reads a directory into a tree: regular files with their bytes, symbolic links as links (never followed),
/// and no `.git` directory.
pub fn read_dir_tree(root: &Path) -> Result<RepoTree> {
    let mut tree = RepoTree::new();
    read_dir_into(&mut tree, root)?;
    Ok(tree)
}

/// Adds a directory's files to a tree (later directories overlay earlier ones).
pub fn read_dir_into(tree: &mut RepoTree, root: &Path) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.as_os_str().is_empty() && name == ".git" {
                continue;
            }
            let rel_path = rel.join(&name);
            let key = rel_path.to_string_lossy().replace('\\', "/");
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                tree.add_symlink(&key)?;
            } else if kind.is_dir() {
                tree.add_dir(&key)?;
                stack.push(rel_path);
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).with_context(|| format!("reading {key}"))?;
                tree.add_file(&key, bytes, None)?;
            }
        }
    }
    Ok(())
}

/// Reads an inventory file.
pub fn read_inventory(path: &Path) -> Result<Inventory> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let objects =
        gitfleet_shared::inventory::parse_objects(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Inventory::new(objects))
}

/// Everything `worker check` found, as its JSON output presents it.
#[derive(Debug, Clone)]
pub struct Report {
    pub loaded: Loaded,
    pub logs: Vec<LogEntry>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.logs.iter().any(|l| l.level == LogLevel::Error)
    }

    pub fn to_json(&self) -> Value {
        self.loaded.check_json(self.failed(), &self.logs)
    }
}

/// Runs the loaders on a tree the way a sync does, without a database: a schema link must name a schema of this
/// repository (a fresh Nautobot has no other).
#[allow(clippy::too_many_arguments)]
pub fn check_tree(
    tree: &RepoTree,
    registry: &Registry,
    name: &str,
    slug: &str,
    provides: Option<Vec<String>>,
    inventory: Option<&Inventory>,
    mode: ScopeMode,
    limits: Limits,
    enforcement: SchemaEnforcement,
) -> Report {
    let provided = provides.unwrap_or_else(|| registry.present_in(tree));
    let input = LoadInput {
        tree,
        repo_name: name,
        slug,
        provided: &provided,
        inventory,
        scope_mode: mode,
        limits,
        spent: Default::default(),
    };
    let mut loaded = registry.load(&input);
    let mut logs = std::mem::take(&mut loaded.logs);
    let schemas: BTreeMap<&str, &Value> =
        loaded.config_context_schemas.iter().map(|s| (s.name.as_str(), &s.data_schema)).collect();
    let mut checker = DataChecker::new(enforcement);
    for context in &loaded.config_contexts {
        let Some(name) = &context.config_context_schema else { continue };
        match schemas.get(name.as_str()) {
            Some(schema) => logs.extend(checker.check(context, name, schema)),
            None => logs.push(
                LogEntry::error("config contexts", format!("ConfigContextSchema {name} does not exist."))
                    .about(&context.name),
            ),
        }
    }
    let failed = logs.iter().any(|l| l.level == LogLevel::Error);
    logs.push(summary(name, failed));
    Report { loaded, logs }
}

/// The command: exit 0 when the repository would sync, 1 on any error.
pub fn run(args: CheckArgs, out: &mut impl Write) -> Result<i32> {
    let tree = read_dir_tree(&args.path)?;
    let name = match args.name {
        Some(n) => n,
        None => std::fs::canonicalize(&args.path)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "repository".to_owned()),
    };
    let inventory = args.inventory.as_deref().map(read_inventory).transpose()?;
    let registry = Registry::with_builtins();
    if let Some(provides) = &args.provides
        && let Some(unknown) = provides.iter().find(|p| registry.get(p).is_none())
    {
        anyhow::bail!("unknown data type '{unknown}' (see `worker data-types`)");
    }
    let mode = ScopeMode::from(args.scope_mode);
    let limits = Limits {
        max_bytes: args.max_file_bytes,
        max_expanded_bytes: args.max_document_bytes,
        max_record_bytes: args.max_record_bytes,
        ..Limits::default()
    };
    let slug = slugify_dashes_to_underscores(&name);
    let report = check_tree(
        &tree,
        &registry,
        &name,
        &slug,
        args.provides,
        inventory.as_ref(),
        mode,
        limits,
        args.schema_enforcement,
    );
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report.to_json())?)?,
        Format::Text => print_text(&report, out)?,
    }
    Ok(if report.failed() { 1 } else { 0 })
}

fn print_text(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    for log in &report.logs {
        writeln!(out, "{:<8} {:<24} {}", log.level.as_str(), log.grouping, log.message)?;
    }
    let l = &report.loaded;
    writeln!(out)?;
    writeln!(
        out,
        "{} config context schemas, {} config contexts, {} local contexts, {} export templates, {} GraphQL queries, \
         {} jobs",
        l.config_context_schemas.len(),
        l.config_contexts.len(),
        l.local_contexts.len(),
        l.export_templates.len(),
        l.graphql_queries.len(),
        l.jobs.len()
    )?;
    for (identifier, records) in &l.extensions {
        writeln!(out, "{} {identifier} records", records.len())?;
    }
    writeln!(out, "{}", if report.failed() { "FAILURE" } else { "SUCCESS" })
}

/// `worker data-types`: the registry in refresh order.
pub fn print_data_types(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{:<40} {:<24} {:>6}  folder", "identifier", "name", "weight")?;
    for t in Registry::with_builtins().types() {
        writeln!(out, "{:<40} {:<24} {:>6}  {}", t.identifier(), t.name(), t.weight(), t.folder())?;
    }
    Ok(())
}
