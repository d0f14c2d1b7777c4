//! Jobs (spec e), discovered statically: the repository's Python is parsed with a real Python parser and never
//! executed. A job is a class passed to `register_jobs(...)` in a module of `<slug>.jobs`, defined in that package;
//! its `Meta` literals give the name, description and flags.
//!
//! What static discovery cannot see, it does not guess: a class built at run time, or registered through a
//! computed expression, is not found (the "No jobs were registered" warning says so); a missing third-party
//! import is not detected, since nothing is imported.

use std::collections::{BTreeMap, HashMap};

use ruff_python_ast::{Expr, ModModule, Number, Stmt, StmtClassDef};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{DataType, LoadInput, Loaded, Log, read_text};
use crate::repo::RepoSlug;

pub const GROUPING: &str = "jobs";
const MAX_NAME: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub module_name: String,
    pub job_class_name: String,
    pub grouping: String,
    /// The name as stored: `Meta.name` (or the class name), made unique with ` (2)`, ` (3)`, ... where another job
    /// of the load already has it. A sync decides the stored name against every job in the database.
    pub name: String,
    /// `Meta.name`, or the class name: what the job asks to be called.
    #[serde(skip)]
    pub meta_name: String,
    pub description: String,
    pub installed: bool,
    /// `Meta` flags (dryrun_default, hidden, soft_time_limit, ...) and receiver kinds.
    #[serde(skip)]
    pub flags: Map<String, Value>,
}

pub(super) struct Jobs;

impl DataType for Jobs {
    fn identifier(&self) -> &'static str {
        "extras.job"
    }
    fn name(&self) -> &'static str {
        "jobs"
    }
    fn weight(&self) -> u32 {
        300
    }
    fn folder(&self) -> &'static str {
        "jobs"
    }
    fn root_paths(&self) -> &'static [&'static str] {
        &["jobs.py", "__init__.py"]
    }
    fn records(&self) -> super::Records {
        super::Records::Jobs
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        let mut log = Log { out: &mut out.logs, grouping: GROUPING };
        let fail = |log: &mut Log<'_>, e: &str| log.error(format!("Error in loading Jobs from Git repository: {e}"));
        if let Err(e) = RepoSlug::parse(input.slug) {
            fail(&mut log, &e.to_string());
            return;
        }
        let tree = input.tree;
        let package = tree.is_dir("jobs");
        if !package && !tree.is_file("jobs.py") {
            // As Nautobot: a repository that provides jobs must have them, whether or not an earlier sync had some
            // (a sync that fails here keeps the last good state, jobs included).
            fail(&mut log, &format!("No `jobs` submodule found in Git repository {}", input.repo_name));
            return;
        }
        let no_jobs = |log: &mut Log<'_>| {
            log.warning(format!(
                "No jobs were registered on loading the `{}.jobs` submodule. Did you miss a `register_jobs()` call? \
                 Or was there a syntax error or similar in your code?",
                input.slug
            ))
        };
        if !tree.is_file("__init__.py") {
            // Without it the repository root is not a package and nothing is imported (spec h.3).
            no_jobs(&mut log);
            return;
        }

        // Modules of <slug>.jobs: the package's __init__ first, as importing it does, then the rest by path.
        let mut paths: Vec<String> = if package {
            tree.files_under("jobs").into_iter().filter(|p| p.ends_with(".py")).collect()
        } else {
            vec!["jobs.py".to_owned()]
        };
        paths.sort_by_key(|p| (p != "jobs/__init__.py", p.clone()));
        let mut modules: BTreeMap<String, ModModule> = BTreeMap::new();
        for path in &paths {
            let module = module_name(input.slug, path);
            if module.len() > MAX_NAME {
                fail(&mut log, &format!("module name {module} is longer than {MAX_NAME} characters"));
                return;
            }
            let source = match read_text(input, path) {
                Ok(s) => s,
                Err(e) => return fail(&mut log, &format!("{path}: {e}")),
            };
            if source.len() > input.limits.max_python_bytes {
                let limit = input.limits.max_python_bytes;
                return fail(
                    &mut log,
                    &format!(
                        "{path}: file is {} bytes, over the limit of {limit} bytes for a Python module",
                        source.len()
                    ),
                );
            }
            match crate::python::parse_module_counted(&source) {
                Ok((parsed, tokens)) => {
                    let total = input.spent.python_tokens.get().saturating_add(tokens);
                    input.spent.python_tokens.set(total);
                    if total > input.limits.max_python_tokens {
                        let limit = input.limits.max_python_tokens;
                        return fail(
                            &mut log,
                            &format!("{path}: the repository's Python modules have more than {limit} tokens in all"),
                        );
                    }
                    modules.insert(module, parsed);
                }
                Err(e) => {
                    let file = path.rsplit('/').next().unwrap_or(path);
                    let at = e.line.map(|line| format!(", line {line}")).unwrap_or_default();
                    return fail(&mut log, &format!("{} ({file}{at})", e.message));
                }
            }
        }

        let packages =
            paths.iter().filter(|p| p.ends_with("__init__.py")).map(|p| module_name(input.slug, p)).collect();
        let index = Index { modules: &modules, packages };
        let prefix = format!("{}.jobs.", input.slug);
        let mut seen = Vec::new();
        for (module, body) in &modules {
            for class_path in registered(module, body, &index) {
                if !class_path.starts_with(&prefix) {
                    continue;
                }
                if seen.contains(&class_path) {
                    continue;
                }
                seen.push(class_path.clone());
                let Some((defining, class)) = index.class(&class_path) else { continue };
                match job_record(defining, class, &modules[defining]) {
                    Ok(record) => out.jobs.push(record),
                    // Nautobot reads these while refreshing job records: the first bad value stops the refresh.
                    Err(e) => return fail(&mut log, &e),
                }
            }
        }
        if out.jobs.is_empty() {
            no_jobs(&mut log);
        }
    }
}

/// `jobs/sub/x.py` -> `<slug>.jobs.sub.x`; `jobs/__init__.py` -> `<slug>.jobs`; `jobs.py` -> `<slug>.jobs`.
fn module_name(slug: &str, path: &str) -> String {
    let trimmed = path.trim_end_matches(".py");
    let trimmed = trimmed.strip_suffix("/__init__").unwrap_or(trimmed);
    format!("{slug}.{}", trimmed.replace('/', "."))
}

/// Where each module's top-level names come from.
struct Index<'a> {
    modules: &'a BTreeMap<String, ModModule>,
    /// Modules that are packages (`__init__.py`): relative imports in them start from themselves.
    packages: Vec<String>,
}

impl<'a> Index<'a> {
    /// The module a relative import in `module` refers to.
    fn resolve_module(&self, module: &str, level: u32, target: Option<&str>) -> String {
        let mut base: Vec<&str> = module.split('.').collect();
        let is_package = self.packages.iter().any(|p| p == module);
        if level > 0 {
            if !is_package {
                base.pop();
            }
            for _ in 1..level {
                base.pop();
            }
        } else {
            base.clear();
        }
        let mut out = base.join(".");
        if let Some(t) = target {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(t);
        }
        out
    }

    /// Follows a name in a module to the class it denotes: `module.Class`, through `from ... import` chains.
    fn follow(&self, module: &str, name: &str, depth: usize) -> Option<String> {
        if depth > 16 {
            return None;
        }
        let Some(body) = self.modules.get(module) else {
            // Outside the repository's modules: keep the path (it will not start with <slug>.jobs.).
            return Some(format!("{module}.{name}"));
        };
        for stmt in body.body.iter().rev() {
            match stmt {
                Stmt::ClassDef(class) if class.name.as_str() == name => return Some(format!("{module}.{name}")),
                Stmt::ImportFrom(import) => {
                    for alias in &import.names {
                        let bound = alias.asname.as_ref().unwrap_or(&alias.name);
                        if bound.as_str() == name {
                            let source =
                                self.resolve_module(module, import.level, import.module.as_ref().map(|m| m.as_str()));
                            let imported = alias.name.as_str();
                            // `from . import my_job` binds a module, not a class.
                            let submodule = format!("{source}.{imported}");
                            if self.modules.contains_key(&submodule) {
                                return None;
                            }
                            return self.follow(&source, imported, depth + 1);
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn class(&self, class_path: &str) -> Option<(&'a str, &'a StmtClassDef)> {
        let (module, name) = class_path.rsplit_once('.')?;
        let (key, body) = self.modules.get_key_value(module)?;
        body.body.iter().find_map(|s| match s {
            Stmt::ClassDef(c) if c.name.as_str() == name => Some((key.as_str(), c)),
            _ => None,
        })
    }

    /// The names a module-level list or tuple assignment holds (`jobs = [A, B]; register_jobs(*jobs)`).
    fn list_names(&self, body: &ModModule, variable: &str) -> Vec<String> {
        for stmt in body.body.iter().rev() {
            if let Stmt::Assign(assign) = stmt
                && assign.targets.iter().any(|t| matches!(t, Expr::Name(n) if n.id.as_str() == variable))
            {
                return match &*assign.value {
                    Expr::List(l) => names(&l.elts),
                    Expr::Tuple(t) => names(&t.elts),
                    _ => Vec::new(),
                };
            }
        }
        Vec::new()
    }
}

fn names(elts: &[Expr]) -> Vec<String> {
    elts.iter()
        .filter_map(|e| match e {
            Expr::Name(n) => Some(n.id.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

/// Class paths passed to `register_jobs(...)` at the top level of a module.
fn registered(module: &str, body: &ModModule, index: &Index<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for stmt in &body.body {
        let Stmt::Expr(expr) = stmt else { continue };
        let Expr::Call(call) = &*expr.value else { continue };
        let is_register = match &*call.func {
            Expr::Name(n) => n.id.as_str() == "register_jobs",
            Expr::Attribute(a) => a.attr.as_str() == "register_jobs",
            _ => false,
        };
        if !is_register {
            continue;
        }
        for arg in &*call.arguments.args {
            let bound: Vec<String> = match arg {
                Expr::Name(n) => vec![n.id.as_str().to_owned()],
                Expr::Starred(s) => match &*s.value {
                    Expr::Name(n) => index.list_names(body, n.id.as_str()),
                    Expr::List(l) => names(&l.elts),
                    Expr::Tuple(t) => names(&t.elts),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            out.extend(bound.iter().filter_map(|name| index.follow(module, name, 0)));
        }
    }
    out
}

/// A literal from `Meta`: strings (implicitly concatenated too), booleans, numbers, None, and lists of those.
fn literal(expr: &Expr) -> Option<Value> {
    Some(match expr {
        Expr::StringLiteral(s) => Value::String(s.value.to_str().to_owned()),
        Expr::BooleanLiteral(b) => Value::Bool(b.value),
        Expr::NoneLiteral(_) => Value::Null,
        Expr::NumberLiteral(n) => match &n.value {
            Number::Int(i) => Value::from(i.as_i64()?),
            Number::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number)?,
            Number::Complex { .. } => return None,
        },
        Expr::List(l) => Value::Array(l.elts.iter().filter_map(literal).collect()),
        Expr::Tuple(t) => Value::Array(t.elts.iter().filter_map(literal).collect()),
        _ => return None,
    })
}

/// Python's `textwrap.dedent(text).strip()`.
fn dedent_strip(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    let lines: Vec<&str> =
        text.lines().map(|l| if l.trim().is_empty() { "" } else { &l[indent.min(l.len())..] }).collect();
    lines.join("\n").trim().to_owned()
}

const FLAGS: &[&str] = &[
    "dryrun_default",
    "hidden",
    "soft_time_limit",
    "time_limit",
    "has_sensitive_variables",
    "is_singleton",
    "approval_required",
    "read_only",
    "task_queues",
    "field_order",
];

/// The Python type each `Meta` attribute must have (Nautobot checks them with `isinstance` and raises `TypeError`).
const META_TYPES: &[(&str, &[&str])] = &[
    ("name", &["str"]),
    ("description", &["str"]),
    ("dryrun_default", &["bool"]),
    ("hidden", &["bool"]),
    ("field_order", &["list", "tuple"]),
    ("read_only", &["bool"]),
    ("approval_required", &["bool"]),
    // `bool` is a subclass of `int` in Python, so `True` passes an `int` check.
    ("soft_time_limit", &["int", "bool"]),
    ("time_limit", &["int", "bool"]),
    ("has_sensitive_variables", &["bool"]),
    ("task_queues", &["list", "tuple"]),
    ("is_singleton", &["bool"]),
];

/// The Python type of a literal expression, when the parser can tell it.
fn py_type(expr: &Expr) -> Option<&'static str> {
    Some(match expr {
        Expr::StringLiteral(_) | Expr::FString(_) => "str",
        Expr::BytesLiteral(_) => "bytes",
        Expr::BooleanLiteral(_) => "bool",
        Expr::NoneLiteral(_) => "NoneType",
        Expr::NumberLiteral(n) => match n.value {
            Number::Int(_) => "int",
            Number::Float(_) => "float",
            Number::Complex { .. } => "complex",
        },
        Expr::List(_) => "list",
        Expr::Tuple(_) => "tuple",
        Expr::Dict(_) => "dict",
        Expr::Set(_) => "set",
        _ => return None,
    })
}

/// Nautobot's `TypeError` for a `Meta` attribute of the wrong type.
fn check_meta_type(attr: &str, found: &str) -> Result<(), String> {
    let Some((_, expected)) = META_TYPES.iter().find(|(a, _)| *a == attr) else { return Ok(()) };
    if expected.contains(&found) {
        return Ok(());
    }
    let class = |t: &str| format!("<class '{t}'>");
    let wanted = match expected {
        [one] | [one, "bool"] => class(one),
        many => format!("({})", many.iter().map(|t| class(t)).collect::<Vec<_>>().join(", ")),
    };
    Err(format!("Meta.{attr} should be {wanted}, not {}", class(found)))
}

/// Nautobot's unique job names: a name another job holds gets ` (2)`, ` (3)`, ..., cut to fit 100 characters.
pub fn unique_name(wanted: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut name = wanted.to_owned();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        let suffix = format!(" ({n})");
        let keep = MAX_NAME.saturating_sub(suffix.chars().count());
        name = format!("{}{suffix}", wanted.chars().take(keep).collect::<String>());
    }
    name
}

/// Gives each job of one load a name no other job of the load has, in load order (what `worker check` shows and
/// what a sync stores into a database with no other jobs).
pub(super) fn assign_unique_names(jobs: &mut [JobRecord]) {
    let mut taken = std::collections::HashSet::new();
    for job in jobs {
        job.name = unique_name(&job.meta_name, |n| taken.contains(n));
        taken.insert(job.name.clone());
    }
}

fn job_record(module: &str, class: &StmtClassDef, body: &ModModule) -> Result<JobRecord, String> {
    let mut meta: HashMap<String, Value> = HashMap::new();
    for stmt in &class.body {
        let Stmt::ClassDef(inner) = stmt else { continue };
        if inner.name.as_str() != "Meta" {
            continue;
        }
        for stmt in &inner.body {
            if let Stmt::Assign(assign) = stmt
                && let [Expr::Name(target)] = assign.targets.as_slice()
            {
                if let Some(found) = py_type(&assign.value) {
                    check_meta_type(target.id.as_str(), found)?;
                }
                if let Some(value) = literal(&assign.value) {
                    meta.insert(target.id.as_str().to_owned(), value);
                }
            }
        }
    }
    // The module's `name` variable; Nautobot measures it with `len()`, which a number, a boolean or None refuses.
    let module_name_var = body.body.iter().rev().find_map(|s| match s {
        Stmt::Assign(a) if a.targets.iter().any(|t| matches!(t, Expr::Name(n) if n.id.as_str() == "name")) => {
            Some(&*a.value)
        }
        _ => None,
    });
    let grouping = match module_name_var {
        Some(Expr::StringLiteral(s)) => s.value.to_str().to_owned(),
        Some(value) => match py_type(value) {
            Some(t @ ("int" | "float" | "bool" | "NoneType" | "complex")) => {
                return Err(format!("object of type '{t}' has no len()"));
            }
            _ => module.to_owned(),
        },
        None => module.to_owned(),
    };
    let class_name = class.name.as_str().to_owned();
    // Longer than the column: refused when the record is checked, as the database refuses it in Nautobot.
    let name = meta.get("name").and_then(Value::as_str).map_or_else(|| class_name.clone(), str::to_owned);
    let description = meta.get("description").and_then(Value::as_str).map(dedent_strip).unwrap_or_default();
    let mut flags: Map<String, Value> =
        FLAGS.iter().filter_map(|f| meta.get(*f).map(|v| ((*f).to_owned(), v.clone()))).collect();
    let bases: Vec<String> = class
        .arguments
        .as_ref()
        .map(|a| {
            a.args
                .iter()
                .filter_map(|b| match b {
                    Expr::Name(n) => Some(n.id.as_str().to_owned()),
                    Expr::Attribute(a) => Some(a.attr.as_str().to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    flags.insert("is_job_hook_receiver".into(), Value::Bool(bases.iter().any(|b| b == "JobHookReceiver")));
    flags.insert("is_job_button_receiver".into(), Value::Bool(bases.iter().any(|b| b == "JobButtonReceiver")));
    Ok(JobRecord {
        module_name: module.to_owned(),
        job_class_name: class_name,
        grouping: grouping.chars().take(255).collect(),
        meta_name: name.clone(),
        name,
        description,
        installed: true,
        flags,
    })
}

/// Data compliance rules (spec c.5): report the rule classes of `custom_validators`; nothing is stored.
pub(super) struct DataComplianceRules;

impl DataType for DataComplianceRules {
    fn identifier(&self) -> &'static str {
        "data_validation.data_compliance_rule"
    }
    fn name(&self) -> &'static str {
        "data compliance rules"
    }
    fn folder(&self) -> &'static str {
        "custom_validators"
    }
    fn root_paths(&self) -> &'static [&'static str] {
        &["custom_validators.py"]
    }
    fn records(&self) -> super::Records {
        super::Records::Nothing
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        let mut log = Log { out: &mut out.logs, grouping: "data compliance rules" };
        let paths: Vec<String> = if input.tree.is_dir("custom_validators") {
            input.tree.files_under("custom_validators").into_iter().filter(|p| p.ends_with(".py")).collect()
        } else if input.tree.is_file("custom_validators.py") {
            vec!["custom_validators.py".to_owned()]
        } else {
            // Nautobot reports this to its process log only; nothing fails.
            return;
        };
        for path in paths {
            let Ok(source) = read_text(input, &path) else { continue };
            let Ok(parsed) = ruff_python_parser::parse_module(&source) else { continue };
            for stmt in &parsed.syntax().body {
                if let Stmt::ClassDef(class) = stmt {
                    let is_rule = class.arguments.as_ref().is_some_and(|a| {
                        a.args.iter().any(|b| match b {
                            Expr::Name(n) => n.id.as_str() == "DataComplianceRule",
                            Expr::Attribute(a) => a.attr.as_str() == "DataComplianceRule",
                            _ => false,
                        })
                    });
                    if is_rule {
                        log.info(format!("Found class {}", class.name.as_str()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_name("r", "jobs/__init__.py"), "r.jobs");
        assert_eq!(module_name("r", "jobs/my_job.py"), "r.jobs.my_job");
        assert_eq!(module_name("r", "jobs/sub/x.py"), "r.jobs.sub.x");
        assert_eq!(module_name("r", "jobs.py"), "r.jobs");
    }

    #[test]
    fn unique_names_take_a_counter() {
        let taken = ["A", "A (2)"];
        assert_eq!(unique_name("A", |n| taken.contains(&n)), "A (3)");
        assert_eq!(unique_name("B", |n| taken.contains(&n)), "B");
        let long = "x".repeat(100);
        let cut = unique_name(&long, |n| n == long);
        assert_eq!((cut.chars().count(), cut.ends_with("x (2)")), (100, true));
    }

    #[test]
    fn meta_types_are_checked_as_nautobot_does() {
        assert_eq!(check_meta_type("name", "int"), Err("Meta.name should be <class 'str'>, not <class 'int'>".into()));
        assert_eq!(
            check_meta_type("task_queues", "str"),
            Err("Meta.task_queues should be (<class 'list'>, <class 'tuple'>), not <class 'str'>".into())
        );
        assert_eq!(
            check_meta_type("time_limit", "float"),
            Err("Meta.time_limit should be <class 'int'>, not <class 'float'>".into())
        );
        assert_eq!(check_meta_type("time_limit", "bool"), Ok(()));
        assert_eq!(check_meta_type("hidden", "bool"), Ok(()));
        assert_eq!(check_meta_type("something_else", "dict"), Ok(()));
    }

    #[test]
    fn dedent() {
        assert_eq!(dedent_strip("\n    First line.\n      indented\n\n    last\n"), "First line.\n  indented\n\nlast");
    }
}
