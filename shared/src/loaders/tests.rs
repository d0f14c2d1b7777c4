//! Rule by rule, on small in-memory trees.

use serde_json::{Value, json};

use super::*;
use crate::inventory::ScopeObject;

const ALL: &[&str] = &[
    "extras.configcontextschema",
    "extras.configcontext",
    "extras.job",
    "extras.exporttemplate",
    "extras.graphqlquery",
];

fn tree(files: &[(&str, &str)]) -> RepoTree {
    let mut tree = RepoTree::new();
    for (path, content) in files {
        tree.add_file(path, content.as_bytes().to_vec(), None).unwrap();
    }
    tree
}

fn load_with(tree: &RepoTree, inventory: Option<&Inventory>, mode: ScopeMode, limits: Limits) -> Loaded {
    // A repository without jobs does not provide them (providing them without a `jobs` module is an error).
    let has_jobs = tree.kind("jobs").is_some() || tree.is_file("jobs.py");
    let types: Vec<&str> = ALL.iter().copied().filter(|t| has_jobs || *t != "extras.job").collect();
    load_types(tree, &types, inventory, mode, limits)
}

fn load_types(
    tree: &RepoTree,
    types: &[&str],
    inventory: Option<&Inventory>,
    scope_mode: ScopeMode,
    limits: Limits,
) -> Loaded {
    let provided: Vec<String> = types.iter().map(|s| (*s).to_owned()).collect();
    let input = LoadInput {
        tree,
        repo_name: "Repo",
        slug: "repo",
        provided: &provided,
        inventory,
        scope_mode,
        limits,
        spent: Default::default(),
    };
    Registry::with_builtins().load(&input)
}

fn load(tree: &RepoTree) -> Loaded {
    load_with(tree, None, ScopeMode::Strict, Limits::default())
}

fn messages(loaded: &Loaded, level: LogLevel) -> Vec<String> {
    loaded.logs.iter().filter(|l| l.level == level).map(|l| l.message.clone()).collect()
}

#[test]
fn explicit_list_file_yields_one_context_per_item() {
    let t = tree(&[(
        "config_contexts/many.yaml",
        "- _metadata: {name: A}\n  x: 1\n- _metadata: {name: B, weight: 10, is_active: false}\n  y: 2\n",
    )]);
    let loaded = load(&t);
    assert!(!loaded.has_errors());
    let names: Vec<_> = loaded.config_contexts.iter().map(|c| (c.name.as_str(), c.weight, c.is_active)).collect();
    assert_eq!(names, [("A", 1000, true), ("B", 10, false)]);
    assert_eq!(loaded.config_contexts[0].data, json!({"x": 1}));
}

#[test]
fn dotfiles_and_symlinks_are_skipped_never_read() {
    let mut t = tree(&[("config_contexts/.gitkeep", ""), ("graphql_queries/.DS_Store", "\0\0")]);
    t.add_symlink("config_contexts/outside.yaml").unwrap();
    let loaded = load(&t);
    assert!(!loaded.has_errors(), "{:#?}", loaded.logs);
    let warnings = messages(&loaded, LogLevel::Warning);
    assert!(warnings.iter().any(|w| w.contains("config_contexts/.gitkeep") && w.contains("dotfiles")));
    assert!(warnings.iter().any(|w| w.contains("outside.yaml") && w.contains("symbolic links are not followed")));
}

#[test]
fn implicit_files_are_named_by_stem_and_scoped_by_filter() {
    let t = tree(&[
        ("config_contexts/device_types/Frobozz 1000.yaml", "_metadata: {name: Frobozz}\nntp: [1]\n"),
        ("config_contexts/roles/Active Test.v2.yaml", "_metadata:\n  name: Role ctx\n  roles: [{name: Other}]\nk: v\n"),
    ]);
    let loaded = load(&t);
    let by_name = |n: &str| loaded.config_contexts.iter().find(|c| c.name == n).unwrap().clone();
    assert_eq!(by_name("Frobozz").scope["device_types"], vec![json!({"model": "Frobozz 1000"})]);
    assert_eq!(by_name("Role ctx").scope["roles"], vec![json!({"name": "Other"}), json!({"name": "Active Test.v2"})]);
    assert!(loaded.logs.iter().any(|l| l.message
        == "Loading config context, filter `device_types = [model: \"Frobozz 1000\"]`, from `device_types/Frobozz 1000.yaml`"));
}

#[test]
fn lookups_resolve_strictly_against_the_inventory() {
    let inv = Inventory::new([ScopeObject {
        kind: "tenant".into(),
        id: Some("t1".into()),
        fields: json!({"name": "Acme"}).as_object().unwrap().clone(),
    }]);
    let t = tree(&[
        ("config_contexts/tenants/Acme.yaml", "_metadata: {name: ok}\n"),
        ("config_contexts/tenants/Nobody.yaml", "_metadata: {name: missing}\n"),
    ]);
    let strict = load_with(&t, Some(&inv), ScopeMode::Strict, Limits::default());
    assert_eq!(strict.config_contexts.len(), 1);
    assert_eq!(strict.config_contexts[0].resolved["tenants"], vec!["t1".to_owned()]);
    assert_eq!(
        messages(&strict, LogLevel::Error),
        vec![
        "Error in loading config context data from `Nobody.yaml`: No matching Tenant found for {'name': 'Nobody'}; \
         unable to create/update context missing"
            .to_owned()
    ]
    );
    let lenient = load_with(&t, Some(&inv), ScopeMode::Lenient, Limits::default());
    assert!(!lenient.has_errors());
    assert_eq!(lenient.config_contexts.len(), 2);
    assert!(messages(&lenient, LogLevel::Warning).iter().any(|w| w.contains("unresolved")));
}

#[test]
fn deprecated_schema_key_and_metadata_defaults() {
    let t = tree(&[("config_contexts/a.json", r#"{"_metadata": {"name": "A", "schema": "S"}, "_private": 1}"#)]);
    let loaded = load(&t);
    let context = &loaded.config_contexts[0];
    assert_eq!(context.config_context_schema.as_deref(), Some("S"));
    assert_eq!((context.weight, context.description.as_str(), context.is_active), (1000, "", true));
    assert_eq!(context.data, json!({"_private": 1}), "keys starting with _ are data, _metadata is not");
    let deprecation = loaded.logs.iter().find(|l| l.level == LogLevel::Warning).unwrap();
    assert_eq!(deprecation.grouping, "config context");
    assert_eq!(
        deprecation.message,
        "`schema` is deprecated in `_metadata`, please use `config_context_schema` instead."
    );
}

#[test]
fn bad_metadata_values_are_errors_not_database_failures() {
    let t = tree(&[
        ("config_contexts/w.yaml", "_metadata: {name: W, weight: 40000}\n"),
        ("config_contexts/x.yaml", "_metadata: {name: X, is_active: maybe}\n"),
        ("config_contexts/y.yaml", "_metadata: {name: Y, roles: edge}\n"),
        ("config_contexts/z.yaml", "just a string\n"),
    ]);
    let errors = messages(&load(&t), LogLevel::Error);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].contains("weight 40000 is out of range"));
    assert!(errors[1].ends_with(": ['“maybe” value must be either True or False.']"), "{}", errors[1]);
    assert!(errors[2].contains("`_metadata.roles` must be a list"));
    assert!(errors[3].ends_with("data must be a dict or list of dicts"));
}

/// Django's field preparation: `int()` for integer fields, `str()` for text fields, Django's boolean spellings.
#[test]
fn metadata_values_are_stored_as_django_prepares_them() {
    let t = tree(&[
        ("config_contexts/a.yaml", "_metadata: {name: 12:30, weight: \"50\", description: 12:30, is_active: \"0\"}\n"),
        ("config_contexts/b.yaml", "_metadata: {name: true, weight: 7.9, description: yes, is_active: 1}\n"),
        ("config_contexts/c.yaml", "_metadata: {name: C, weight: \"heavy\"}\n"),
        ("config_contexts/d.yaml", "_metadata: {name: D, description: null}\n"),
        ("config_contexts/e.yaml", "_metadata: {name: E, weight: [1]}\n"),
        (
            "config_context_schemas/s.yaml",
            "_metadata: {name: 1.5, description: off}\ndata_schema: {type: object, properties: {}}\n",
        ),
    ]);
    let loaded = load(&t);
    let got: Vec<_> = loaded
        .config_contexts
        .iter()
        .map(|c| (c.name.as_str(), c.weight, c.description.as_str(), c.is_active))
        .collect();
    assert_eq!(got, [("750", 50, "750", false), ("True", 7, "True", true)]);
    assert_eq!(
        (loaded.config_context_schemas[0].name.as_str(), loaded.config_context_schemas[0].description.as_str()),
        ("1.5", "False")
    );
    let errors = messages(&loaded, LogLevel::Error);
    assert_eq!(
        errors,
        [
            "Error in loading config context data from `c.yaml`: Field 'weight' expected a number but got 'heavy'.",
            "Error in loading config context data from `d.yaml`: null value in column \"description\" violates not-null constraint",
            "Error in loading config context data from `e.yaml`: Field 'weight' expected a number but got [1].",
        ]
    );
}

/// Where Nautobot tests a value's truth, an empty value means absent; where it iterates one, an empty one is no
/// lookup at all.
#[test]
fn empty_means_absent_where_nautobot_tests_truthiness() {
    let t = tree(&[
        ("config_contexts/a.yaml", "_metadata: {name: A, config_context_schema: \"\"}\n"),
        ("config_contexts/b.yaml", "_metadata: {name: B, schema: \"\"}\n"),
        ("config_contexts/c.yaml", "_metadata: {name: C, config_context_schema: null, schema: S}\n"),
        ("config_contexts/d.yaml", "_metadata: {name: D, config_context_schema: 0, roles: \"\", tags: {}}\n"),
        ("config_contexts/e.yaml", "_metadata: {name: E, roles: null}\n"),
    ]);
    let loaded = load(&t);
    let links: Vec<_> =
        loaded.config_contexts.iter().map(|c| (c.name.as_str(), c.config_context_schema.clone())).collect();
    assert_eq!(links, [("A", None), ("B", None), ("C", None), ("D", None)]);
    assert_eq!(
        loaded.config_contexts[3].scope,
        BTreeMap::from([("roles".to_owned(), vec![]), ("tags".to_owned(), vec![])])
    );
    let warnings = messages(&loaded, LogLevel::Warning);
    assert_eq!(warnings.len(), 1, "only B uses the deprecated key while the new one is absent: {warnings:?}");
    let errors = messages(&loaded, LogLevel::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("`e.yaml`") && errors[0].contains("not None"), "{errors:?}");
}

/// Text files are read as Python reads a file opened in text mode: universal newlines.
#[test]
fn text_reads_use_universal_newlines() {
    let t = tree(&[
        ("export_templates/dcim/device/crlf.j2", "{% for d in queryset %}\r\n{{ d.name }}\r\n{% endfor %}\r\n"),
        ("export_templates/dcim/device/cr.j2", "a\rb\r\rc"),
        ("graphql_queries/q.gql", "query {\r\n  devices {\r\n    name\r\n  }\r\n}\r\n"),
        ("config_contexts/c.yaml", "_metadata:\r\n  name: C\r\ntext: |\r\n  one\r\n  two\r\n"),
    ]);
    let loaded = load(&t);
    assert!(!loaded.has_errors(), "{:#?}", loaded.logs);
    let codes: Vec<_> = loaded.export_templates.iter().map(|t| (t.name.as_str(), t.template_code.as_str())).collect();
    assert_eq!(codes, [("cr.j2", "a\nb\n\nc"), ("crlf.j2", "{% for d in queryset %}\n{{ d.name }}\n{% endfor %}\n")]);
    assert_eq!(loaded.graphql_queries[0].query, "query {\n  devices {\n    name\n  }\n}");
    assert_eq!(loaded.config_contexts[0].data, json!({"text": "one\ntwo\n"}));
}

/// Valid JSON that PyYAML refuses (a TAB used for indentation) still loads here.
#[test]
fn json_indented_with_tabs_loads() {
    let t = tree(&[(
        "config_contexts/tabs.json",
        "{\n\t\"_metadata\": {\n\t\t\"name\": \"T\"\n\t},\n\t\"a\": [1,\n\t\t2]\n}\n",
    )]);
    let loaded = load(&t);
    assert!(!loaded.has_errors(), "{:#?}", loaded.logs);
    assert_eq!(loaded.config_contexts[0].data, json!({"a": [1, 2]}));
}

#[test]
fn schemas_must_be_draft7_objects() {
    let t = tree(&[
        (
            "config_context_schemas/ok.yaml",
            "_metadata: {name: OK}\ndata_schema: {type: object, properties: {a: {type: string}}}\n",
        ),
        ("config_context_schemas/array.yaml", "_metadata: {name: Arr}\ndata_schema: {type: array}\n"),
        (
            "config_context_schemas/bad.yaml",
            "_metadata: {name: Bad}\ndata_schema: {type: object, properties: {}, minProperties: -1}\n",
        ),
        ("config_context_schemas/none.yaml", "_metadata: {name: None}\n"),
        (
            "config_context_schemas/list.yaml",
            "- _metadata: {name: L1}\n  data_schema: {type: object, properties: {}}\n- 5\n",
        ),
    ]);
    let loaded = load(&t);
    let names: Vec<_> = loaded.config_context_schemas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["OK"], "a list stops at its first bad item, and a failed file loads nothing");
    let errors = messages(&loaded, LogLevel::Error);
    assert!(errors.iter().any(|e| e.contains("`array.yaml`") && e.contains("must be of type object")));
    assert!(errors.iter().any(|e| e.contains("`bad.yaml`") && e.contains("data_schema:")));
    assert!(errors.iter().any(|e| e.contains("`none.yaml`") && e.contains("`data_schema`")));
    assert!(errors.iter().any(|e| e.contains("`list.yaml`") && e.contains("each item in list data must be a dict")));
}

/// Context data is checked against its linked schema: a warning by default, an error when asked, nothing when off.
#[test]
fn context_data_is_checked_against_its_schema() {
    let t = tree(&[
        (
            "config_context_schemas/person.yaml",
            "_metadata: {name: Person}\ndata_schema:\n  type: object\n  properties:\n    age: {type: integer, minimum: 0}\n    name: {type: string}\n    city: {type: string}\n  required: [city]\n  additionalProperties: false\n",
        ),
        (
            "config_contexts/bad.yaml",
            "_metadata: {name: Bad, config_context_schema: Person}\nage: -1\nname: 5\nextra: x\nmore: y\n",
        ),
        ("config_contexts/good.yaml", "_metadata: {name: Good, config_context_schema: Person}\nage: 3\ncity: Bern\n"),
    ]);
    let loaded = load(&t);
    let schema = &loaded.config_context_schemas[0].data_schema;
    let mut warn = DataChecker::new(SchemaEnforcement::Warn);
    let line = warn.check(&loaded.config_contexts[0], "Person", schema).unwrap();
    assert_eq!(line.level, LogLevel::Warning);
    assert!(
        line.message.starts_with("Config context `Bad` from `bad.yaml` does not match its schema `Person`: at `"),
        "{}",
        line.message
    );
    assert!(line.message.contains("at `/age`: -1 is less than the minimum of 0"), "{}", line.message);
    assert!(line.message.ends_with("(and 1 more)"), "four violations, three shown: {}", line.message);
    assert!(warn.check(&loaded.config_contexts[1], "Person", schema).is_none());
    let mut error = DataChecker::new(SchemaEnforcement::Error);
    assert_eq!(error.check(&loaded.config_contexts[0], "Person", schema).unwrap().level, LogLevel::Error);
    assert!(DataChecker::new(SchemaEnforcement::Off).check(&loaded.config_contexts[0], "Person", schema).is_none());
    assert_eq!("ERROR".parse::<SchemaEnforcement>(), Ok(SchemaEnforcement::Error));
    assert!("strict".parse::<SchemaEnforcement>().is_err());
}

#[test]
fn size_limit_utf8_and_alias_bombs_are_clear_errors() {
    let big = "a: 1\n".repeat(20);
    let mut t = tree(&[("config_contexts/big.yaml", &big)]);
    t.add_file("config_contexts/latin1.yaml", b"_metadata: {name: caf\xe9}\n".to_vec(), None).unwrap();
    let limits = Limits { max_bytes: 50, ..Limits::default() };
    let errors = messages(&load_with(&t, None, ScopeMode::Strict, limits), LogLevel::Error);
    assert!(errors.iter().any(|e| e.contains("`big.yaml`") && e.contains("over the limit of 50 bytes")), "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("`latin1.yaml`") && e.contains("not valid UTF-8")), "{errors:#?}");

    let mut bomb = String::from("_metadata: {name: bomb}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for n in 1..10 {
        let p = n - 1;
        bomb.push_str(&format!("a{n}: &a{n} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let t = tree(&[("config_contexts/bomb.yaml", &bomb)]);
    let limits = Limits { max_nodes: 10_000, ..Limits::default() };
    let errors = messages(&load_with(&t, None, ScopeMode::Strict, limits), LogLevel::Error);
    assert!(errors[0].contains("alias bomb"), "{errors:#?}");
}

#[test]
fn a_fifty_megabyte_file_is_refused_with_the_default_limit() {
    let mut t = RepoTree::new();
    t.add_file("config_contexts/huge.json", vec![b' '; 50 * 1024 * 1024], None).unwrap();
    let errors = messages(&load(&t), LogLevel::Error);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("52428800 bytes, over the limit of 10485760 bytes"), "{errors:#?}");
}

#[test]
fn export_templates_name_mime_extension_and_unknown_types() {
    let t = tree(&[
        ("export_templates/dcim/device/README", "x"),
        ("export_templates/dcim/device/inventory.csv", "a,b"),
        ("export_templates/dcim/virtualmachine/x.j2", "x"),
        ("export_templates/virtualization/virtualmachine/vm.j2", "{{ queryset }}"),
        ("export_templates/loose.j2", "ignored"),
    ]);
    let loaded = load(&t);
    let rows: Vec<_> = loaded
        .export_templates
        .iter()
        .map(|t| (t.content_type.as_str(), t.name.as_str(), t.mime_type.as_str(), t.file_extension.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("dcim.device", "README", "text/plain", "README"),
            ("dcim.device", "inventory.csv", "text/csv", "csv"),
            ("virtualization.virtualmachine", "vm.j2", "text/plain", "j2"),
        ]
    );
    let warnings: Vec<_> =
        loaded.logs.iter().filter(|l| l.grouping == "export templates" && l.level == LogLevel::Warning).collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].message, "Skipping `dcim.virtualmachine` as it isn't a known content type");
}

#[test]
fn graphql_names_and_variables() {
    let t = tree(&[
        ("graphql_queries/x.graphql", "  query ($n: String = \"a\") { devices(name: $n) { name } }\n"),
        ("graphql_queries/y.gql", "{ devices { name } }"),
    ]);
    let loaded = load(&t);
    let names: Vec<_> = loaded.graphql_queries.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["x.graphql", "y"]);
    assert!(loaded.graphql_queries[0].query.starts_with("query"), "content is stripped");
    assert_eq!(Value::Object(loaded.graphql_queries[0].variables.clone()), json!({"n": "a"}));
}

#[test]
fn jobs_meta_grouping_and_registration_forms() {
    let t = tree(&[
        ("__init__.py", ""),
        (
            "jobs/__init__.py",
            "from nautobot.apps.jobs import register_jobs\nfrom .a import First\nfrom .sub.b import *\nimport os\n\nJOBS = [First]\nregister_jobs(*JOBS)\n",
        ),
        (
            "jobs/a.py",
            "from nautobot.apps.jobs import Job\n\nname = \"Backups\"\n\nclass First(Job):\n    class Meta:\n        name = \"First job\"\n        description = \"\"\"\n            Line one.\n              Line two.\n        \"\"\"\n        dryrun_default = True\n        soft_time_limit = 30\n\nclass Unregistered(Job):\n    pass\n",
        ),
        ("jobs/sub/__init__.py", ""),
        (
            "jobs/sub/b.py",
            "from nautobot.apps import jobs\n\nclass Second(jobs.Job):\n    pass\n\njobs.register_jobs(Second)\n",
        ),
        (
            "jobs/external.py",
            "from somewhere import Foreign\nfrom nautobot.apps.jobs import register_jobs\nregister_jobs(Foreign)\n",
        ),
    ]);
    let loaded = load(&t);
    assert!(!loaded.has_errors(), "{:#?}", loaded.logs);
    let jobs: Vec<_> = loaded
        .jobs
        .iter()
        .map(|j| (j.module_name.as_str(), j.job_class_name.as_str(), j.name.as_str(), j.grouping.as_str()))
        .collect();
    assert_eq!(
        jobs,
        [("repo.jobs.a", "First", "First job", "Backups"), ("repo.jobs.sub.b", "Second", "Second", "repo.jobs.sub.b"),]
    );
    assert_eq!(loaded.jobs[0].description, "Line one.\n  Line two.");
    assert_eq!(loaded.jobs[0].flags["dryrun_default"], json!(true));
    assert_eq!(loaded.jobs[0].flags["soft_time_limit"], json!(30));
}

/// Two jobs asking for one name: the second gets Nautobot's ` (2)`; a `Meta` value of the wrong type is
/// Nautobot's `TypeError`.
#[test]
fn job_names_are_unique_in_a_load_and_meta_types_are_checked() {
    let module = "from nautobot.apps.jobs import Job, register_jobs\n\
                  class A(Job):\n    class Meta:\n        name = \"Same\"\n\
                  class B(Job):\n    class Meta:\n        name = \"Same\"\n\
                  register_jobs(A, B)\n";
    let t = tree(&[("__init__.py", ""), ("jobs/__init__.py", module)]);
    let loaded = load(&t);
    assert!(!loaded.has_errors(), "{:#?}", loaded.logs);
    let names: Vec<_> =
        loaded.jobs.iter().map(|j| (j.job_class_name.as_str(), j.name.as_str(), j.meta_name.as_str())).collect();
    assert_eq!(names, [("A", "Same", "Same"), ("B", "Same (2)", "Same")]);

    let module = "class A(Job):\n    class Meta:\n        hidden = \"yes\"\nregister_jobs(A)\n";
    let t = tree(&[("__init__.py", ""), ("jobs/__init__.py", module)]);
    let errors = messages(&load(&t), LogLevel::Error);
    assert_eq!(
        errors[0],
        "Error in loading Jobs from Git repository: Meta.hidden should be <class 'bool'>, not <class 'str'>"
    );
    let module = "name = 5\nclass A(Job):\n    pass\nregister_jobs(A)\n";
    let t = tree(&[("__init__.py", ""), ("jobs/__init__.py", module)]);
    let errors = messages(&load(&t), LogLevel::Error);
    assert_eq!(errors[0], "Error in loading Jobs from Git repository: object of type 'int' has no len()");
}

#[test]
fn jobs_py_module_and_missing_root_package() {
    let t = tree(&[
        ("__init__.py", ""),
        ("jobs.py", "from nautobot.apps.jobs import Job, register_jobs\nclass J(Job):\n    pass\nregister_jobs(J)\n"),
    ]);
    let loaded = load(&t);
    assert_eq!(loaded.jobs.len(), 1);
    assert_eq!((loaded.jobs[0].module_name.as_str(), loaded.jobs[0].job_class_name.as_str()), ("repo.jobs", "J"));

    let t = tree(&[("jobs/__init__.py", "register_jobs(J)\nclass J: pass\n")]);
    let loaded = load(&t);
    assert!(loaded.jobs.is_empty() && !loaded.has_errors());
    assert!(
        messages(&loaded, LogLevel::Warning)[0]
            .starts_with("No jobs were registered on loading the `repo.jobs` submodule.")
    );

    let t = tree(&[("__init__.py", ""), ("jobs/__init__.py", "def broken(:\n")]);
    let errors = messages(&load(&t), LogLevel::Error);
    assert!(
        errors[0].starts_with("Error in loading Jobs from Git repository: ")
            && errors[0].contains("(__init__.py, line 1)"),
        "{errors:?}"
    );
}

#[test]
fn every_registered_type_runs_and_unprovided_types_load_nothing() {
    let t = tree(&[("config_contexts/a.yaml", "_metadata: {name: A}\n")]);
    let registry = Registry::with_builtins();
    let loaded = load_types(&t, &["extras.graphqlquery"], None, ScopeMode::Strict, Limits::default());
    assert!(loaded.config_contexts.is_empty());
    let refreshing: Vec<_> =
        loaded.logs.iter().filter(|l| l.message.starts_with("Refreshing ")).map(|l| l.message.as_str()).collect();
    assert_eq!(
        refreshing,
        [
            "Refreshing data provided by Repo...",
            "Refreshing config context schemas...",
            "Refreshing config contexts...",
            "Refreshing jobs...",
            "Refreshing export templates...",
            "Refreshing graphql queries...",
            "Refreshing data compliance rules...",
            "Refreshing text files...",
        ]
    );
    // Only the provided type loaded: its folder's lines are the only loading lines.
    assert!(loaded.logs.iter().all(|l| !l.message.starts_with("Loading config context")));
    let order: Vec<_> = registry.types().map(|t| (t.weight(), t.name())).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[test]
fn the_example_extension_loads_its_folder() {
    let t = tree(&[("text_files/a.txt", "hello"), ("text_files/b.md", "ignored")]);
    let loaded = load_types(&t, &["example_app.textfile"], None, ScopeMode::Strict, Limits::default());
    assert_eq!(
        loaded.extensions["example_app.textfile"],
        vec![ExtensionRecord { key: "a.txt".into(), data: json!({"content": "hello"}) }]
    );
    assert!(loaded.logs.iter().any(|l| l.message == "Refreshed text files"));
}

#[test]
fn the_last_definition_of_a_name_wins() {
    let t = tree(&[
        ("config_contexts/a.yaml", "_metadata: {name: Same}\nv: 1\n"),
        ("config_contexts/b.yaml", "_metadata: {name: Same}\nv: 2\n"),
        ("config_contexts/devices/d1.json", "{\"v\": 1}"),
        ("config_contexts/devices/d1.yaml", "v: 2\n"),
    ]);
    let loaded = load(&t);
    assert_eq!(loaded.config_contexts.len(), 1);
    assert_eq!(loaded.config_contexts[0].data, json!({"v": 2}));
    assert_eq!(loaded.local_contexts.len(), 1);
    assert_eq!(loaded.local_contexts[0].data, json!({"v": 2}));
}

#[test]
fn a_load_is_bounded_in_all_not_only_per_file() {
    // Each document is small; together they pass the load's budget, and the file that crosses it is named.
    let files: Vec<(String, String)> = (0..10)
        .map(|i| (format!("config_contexts/c{i}.yaml"), format!("_metadata: {{name: c{i}}}\nv: {}\n", "x".repeat(100))))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let limits = Limits { max_load_bytes: 600, ..Limits::default() };
    let loaded = load_with(&tree(&refs), None, ScopeMode::Strict, limits);
    let errors = messages(&loaded, LogLevel::Error);
    assert!(
        errors.iter().any(|e| e.contains("`c4.yaml`") && e.contains("add up to more than 600 bytes")),
        "{errors:#?}"
    );
    assert_eq!(loaded.config_contexts.len(), 4, "what fitted was loaded");

    // Python: a module over its size limit, and modules over the load's token budget.
    let jobs = [("__init__.py", ""), ("jobs/__init__.py", "x = 1\n"), ("jobs/big.py", "y = [1, 2, 3, 4, 5, 6]\n")];
    let limits = Limits { max_python_bytes: 10, ..Limits::default() };
    let errors = messages(&load_with(&tree(&jobs), None, ScopeMode::Strict, limits), LogLevel::Error);
    assert!(errors.iter().any(|e| e.contains("jobs/big.py: file is 23 bytes, over the limit of 10")), "{errors:#?}");
    let limits = Limits { max_python_tokens: 10, ..Limits::default() };
    let errors = messages(&load_with(&tree(&jobs), None, ScopeMode::Strict, limits), LogLevel::Error);
    assert!(
        errors.iter().any(|e| e.contains("jobs/big.py: the repository's Python modules have more than 10 tokens")),
        "{errors:#?}"
    );
}

#[test]
fn a_plan_taken_a_step_at_a_time_is_the_whole_plan_and_stops_when_asked() {
    let mut t = tree(&[
        ("config_contexts/a.json", "{}"),
        ("config_contexts/.gitkeep", ""),
        ("config_contexts/roles/edge.yaml", "{}"),
        ("config_contexts/roles/inner/x.yaml", "{}"),
        ("config_contexts/devices/d1.json", "{}"),
        ("roles/misplaced.yaml", "{}"),
    ]);
    t.add_symlink("config_contexts/devices/link.json").unwrap();
    let provided = vec!["extras.configcontext".to_owned()];
    let input = LoadInput {
        tree: &t,
        repo_name: "Repo",
        slug: "repo",
        provided: &provided,
        inventory: None,
        scope_mode: ScopeMode::Strict,
        limits: Limits::default(),
        spent: Default::default(),
    };
    let describe = |step: &ContextStep| match step {
        ContextStep::Line(line) => format!("line {}", line.message),
        ContextStep::File { file, kind, .. } => format!("file {file} {kind:?}"),
    };
    let whole: Vec<String> = context_plan(&input).iter().map(describe).collect();
    // Each folder's skipped entries are logged before its files; a folder inside a filter's folder is a step.
    let at = |prefix: &str| whole.iter().position(|s| s.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}"));
    assert!(at("line Skipping `config_contexts/.gitkeep`") < at("file a.json"), "{whole:#?}");
    assert!(at("line Found \"roles\" directory") < at("file edge.yaml"), "{whole:#?}");
    assert!(at("file edge.yaml") < at("file inner Dir"), "{whole:#?}");
    assert!(at("line Skipping `config_contexts/devices/link.json`") < at("file d1.json"), "{whole:#?}");

    let mut taken = Vec::new();
    let all = context_plan_each(&input, &t, &mut |step| {
        taken.push(describe(&step));
        true
    });
    assert!(matches!(all, Ok(true)));
    assert_eq!(taken, whole);
    for stop in 1..whole.len() {
        let mut count = 0;
        let finished = context_plan_each(&input, &t, &mut |_| {
            count += 1;
            count < stop
        });
        assert!(matches!(finished, Ok(false)), "stopped at step {stop}");
        assert_eq!(count, stop);
    }
}
