//! The loaders on whole trees, through `worker check`: our own rewrite of Nautobot's conformance fixture
//! (`tests/fixtures/nautobot`) and repositories written the way Nautobot users write them (`tests/fixtures/realworld`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gitfleet_shared::inventory::Inventory;
use gitfleet_shared::job_result::LogLevel;
use gitfleet_shared::loaders::{Registry, SchemaEnforcement, ScopeMode};
use gitfleet_shared::tree::RepoTree;
use gitfleet_shared::yaml::Limits;
use gitfleet_worker::check::{self, CheckArgs, Format, Mode, Report, check_tree, read_dir_into, read_inventory};
use serde_json::{Value, json};

fn own_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// One commit of the Nautobot fixture repository (`01-valid-files` or `02-invalid-files`).
fn nautobot_tree(tag_dir: &str) -> RepoTree {
    let mut tree = RepoTree::new();
    read_dir_into(&mut tree, &own_fixtures().join("nautobot").join(tag_dir)).unwrap();
    tree
}

fn inventory() -> Inventory {
    read_inventory(&own_fixtures().join("nautobot-inventory.json")).unwrap()
}

const ALL: &[&str] = &[
    "extras.configcontextschema",
    "extras.configcontext",
    "extras.job",
    "extras.exporttemplate",
    "extras.graphqlquery",
    "data_validation.data_compliance_rule",
    "example_app.textfile",
];

fn run(tree: &RepoTree, inventory: Option<&Inventory>) -> Report {
    let provides = ALL.iter().map(|s| (*s).to_owned()).collect();
    check_tree(
        tree,
        &Registry::with_builtins(),
        "Test Git Repository",
        "test_git_repo",
        Some(provides),
        inventory,
        ScopeMode::Strict,
        Limits::default(),
        SchemaEnforcement::Warn,
    )
}

fn schema_validator() -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/check-output.schema.json"));
    jsonschema::draft7::new(&serde_json::from_str(&text.unwrap()).unwrap()).unwrap()
}

fn assert_schema_valid(report: &Report) {
    let value = report.to_json();
    let errors: Vec<String> = schema_validator().iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

/// Conformance 1.3 (the first half): valid-files loads exactly the records the tests list.
#[test]
fn valid_files_load_exactly_the_listed_records() {
    let inventory = inventory();
    let report = run(&nautobot_tree("01-valid-files"), Some(&inventory));
    assert!(!report.failed(), "{:#?}", report.logs);
    assert_schema_valid(&report);
    let json = report.to_json();

    let schema_file =
        std::fs::read(own_fixtures().join("nautobot/01-valid-files/config_context_schemas/schema-1.yaml"));
    let parsed = gitfleet_shared::yaml::load(&schema_file.unwrap(), &Limits::default()).unwrap();
    assert_eq!(
        json["config_context_schemas"],
        json!([{
            "name": "Config Context Schema 1",
            "description": "Schema for defining first names, last names, and ages.",
            "data_schema": parsed["data_schema"],
        }])
    );
    assert_eq!(
        json["config_contexts"],
        json!([
            {
                "name": "Frobozz 1000 NTP servers", "weight": 1500,
                "description": "NTP servers for Frobozz 1000 devices **only**", "is_active": true,
                "config_context_schema": "Config Context Schema 1",
                "data": {"ntp-servers": ["172.16.10.22", "172.16.10.33"]},
                "scope": {"device_types": [{"model": "Frobozz 1000"}]},
            },
            {
                "name": "Location context", "weight": 1000, "description": "", "is_active": false,
                "config_context_schema": null, "data": {"domain_name": "example.com"},
                "scope": {"locations": [{"name": "Test Location"}]},
            },
        ])
    );
    let contexts = &report.loaded.config_contexts;
    assert_eq!(contexts[0].resolved["device_types"], vec!["dt-frobozz".to_owned()]);
    assert_eq!(contexts[1].resolved["locations"], vec!["loc-test".to_owned()]);
    assert_eq!(
        json["local_contexts"],
        json!([{"kind": "devices", "name": "test-device", "data": {"dns-servers": ["8.8.8.8"]}}])
    );
    assert_eq!(report.loaded.local_contexts[0].target.as_deref(), Some("dev-test"));

    let templates: Vec<(String, String, String, String)> = report
        .loaded
        .export_templates
        .iter()
        .map(|t| (t.content_type.clone(), t.name.clone(), t.mime_type.clone(), t.file_extension.clone()))
        .collect();
    let expected = [
        ("dcim.device", "template.j2", "text/plain", "j2"),
        ("dcim.device", "template2.html", "text/html", "html"),
        ("ipam.vlan", "template.j2", "text/plain", "j2"),
    ]
    .map(|(a, b, c, d)| (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned()));
    assert_eq!(templates, expected);
    let queries: Vec<&str> = report.loaded.graphql_queries.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(queries, ["device_interfaces", "device_names"]);

    let jobs: Vec<(&str, &str, &str, bool)> = report
        .loaded
        .jobs
        .iter()
        .map(|j| (j.module_name.as_str(), j.job_class_name.as_str(), j.name.as_str(), j.installed))
        .collect();
    assert_eq!(
        jobs,
        [
            ("test_git_repo.jobs.my_job", "MyJob", "MyJob", true),
            ("test_git_repo.jobs.my_job", "MyJobButtonReceiver", "MyJobButtonReceiver", true),
            ("test_git_repo.jobs.my_job", "MyJobHookReceiver", "MyJobHookReceiver", true),
        ]
    );
    assert_eq!(report.loaded.jobs[1].flags["is_job_button_receiver"], json!(true));
    assert_eq!(report.loaded.jobs[2].flags["is_job_hook_receiver"], json!(true));
    let last = report.logs.last().unwrap();
    assert_eq!(last.message, "Data refresh from Test Git Repository complete!");
}

/// Conformance 1.4: invalid-files fails with each asserted entry exactly once, at its level and grouping.
#[test]
fn invalid_files_fail_with_each_asserted_message_once() {
    let inventory = inventory();
    let report = run(&nautobot_tree("02-invalid-files"), Some(&inventory));
    assert!(report.failed());
    assert_schema_valid(&report);
    let expected = [
        (LogLevel::Warning, "config contexts", "Found \"devices\" directory in the repository root"),
        (LogLevel::Warning, "export templates", "Found \"dcim\" directory in the repository root"),
        (LogLevel::Warning, "export templates", "Skipping `dcim.nosuchmodel` as it isn't a known content type"),
        (LogLevel::Warning, "export templates", "Skipping `nosuchapp.device` as it isn't a known content type"),
        (
            LogLevel::Error,
            "config context schemas",
            "Error in loading config context schema data from `badschema1.json`",
        ),
        (
            LogLevel::Error,
            "config context schemas",
            "Error in loading config context schema data from `badschema2.json`: data is missing the required `_metadata` key",
        ),
        (LogLevel::Error, "config contexts", "Error in loading config context data from `badcontext1.json`"),
        (
            LogLevel::Error,
            "config contexts",
            "Error in loading config context data from `badcontext2.json`: data is missing the required `_metadata` key",
        ),
        (
            LogLevel::Error,
            "config contexts",
            "Error in loading config context data from `badcontext3.json`: data `_metadata` is missing the required `name` key",
        ),
        (
            LogLevel::Error,
            "local config contexts",
            "Error in loading local config context from `devices/nosuchdevice.json`: record not found",
        ),
        (LogLevel::Error, "jobs", "Error in loading Jobs from Git repository: "),
        (
            LogLevel::Error,
            "graphql queries",
            "Error processing GraphQL query file 'bad_device_names.gql': Syntax Error: Expected Name, found '}'",
        ),
        (LogLevel::Error, "main", "Failed to refresh data provided by Test Git Repository. Please see logs."),
    ];
    for (level, grouping, needle) in expected {
        let found = report
            .logs
            .iter()
            .filter(|l| l.level == level && l.grouping == grouping && l.message.contains(needle))
            .count();
        assert_eq!(found, 1, "{level} / {grouping} / {needle}: {:#?}", report.logs);
    }
    // Nothing in the invalid tree would be loaded.
    let l = &report.loaded;
    assert!(l.config_context_schemas.is_empty() && l.config_contexts.is_empty() && l.jobs.is_empty());
    assert!(l.export_templates.is_empty() && l.graphql_queries.is_empty());
}

/// A repository that provides jobs and has no `jobs` module fails (Nautobot's "empty repository" case).
#[test]
fn empty_repo_with_jobs_provided() {
    let tree = RepoTree::new();
    let report = run(&tree, None);
    assert!(report.failed());
    let no_jobs = report.logs.iter().find(|l| l.grouping == "jobs").unwrap();
    assert_eq!(no_jobs.level, LogLevel::Error);
    assert!(no_jobs.message.contains("No `jobs` submodule found"), "{}", no_jobs.message);
}

/// Repositories written as Nautobot users write them load with the outcome Nautobot gives.
#[test]
fn repositories_written_for_nautobot() {
    let root = own_fixtures().join("realworld");
    let sp_lab_inventory = read_inventory(&own_fixtures().join("sp-lab-inventory.json")).unwrap();
    // Folder, inventory, whether it syncs, counts (schemas, contexts, local contexts, queries), log needles.
    type Case<'a> = (&'a str, Option<&'a Inventory>, bool, [usize; 4], &'a [&'a str]);
    let cases: [Case<'_>; 3] = [
        // `_metadata` without `name` fails the whole sync.
        (
            "workshop",
            None,
            false,
            [1, 1, 1, 0],
            &[
                "Error in loading config context data from `ip_sla.yml`: data `_metadata` is missing the required `name` key.",
            ],
        ),
        // jobs/ holds only templates and the root has no __init__.py: the "No jobs were registered" warning, no
        // failure; implicit location contexts, local contexts with `_metadata` kept as data.
        (
            "sp-lab",
            Some(&sp_lab_inventory),
            true,
            [2, 5, 2, 1],
            &["No jobs were registered on loading the `sp_lab.jobs` submodule."],
        ),
        ("sp-lab", None, true, [2, 5, 2, 1], &[]),
    ];
    for (dir, inventory, success, [schemas, contexts, locals, queries], needles) in cases {
        let tree = check::read_dir_tree(&root.join(dir)).unwrap();
        let registry = Registry::with_builtins();
        let slug = gitfleet_shared::repo::slugify_dashes_to_underscores(dir);
        let report = check_tree(
            &tree,
            &registry,
            dir,
            &slug,
            None,
            inventory,
            ScopeMode::Strict,
            Limits::default(),
            SchemaEnforcement::Warn,
        );
        assert_eq!(!report.failed(), success, "{dir}: {:#?}", report.logs);
        assert_schema_valid(&report);
        let l = &report.loaded;
        let counts =
            [l.config_context_schemas.len(), l.config_contexts.len(), l.local_contexts.len(), l.graphql_queries.len()];
        assert_eq!(counts, [schemas, contexts, locals, queries], "{dir}");
        for needle in needles {
            assert!(report.logs.iter().any(|e| e.message.contains(needle)), "{dir}: no log with {needle:?}");
        }
        assert!(
            !report.logs.iter().any(|l| l.message.contains("does not match its schema")),
            "{dir}: {:#?}",
            report.logs
        );
    }
    let tree = check::read_dir_tree(&root.join("sp-lab")).unwrap();
    let report = check_tree(
        &tree,
        &Registry::with_builtins(),
        "sp-lab",
        "sp_lab",
        None,
        Some(&sp_lab_inventory),
        ScopeMode::Strict,
        Limits::default(),
        SchemaEnforcement::Warn,
    );
    let dc_a = report.loaded.config_contexts.iter().find(|c| c.name == "DC-A Overlay").unwrap();
    assert_eq!(dc_a.scope["locations"], vec![json!({"name": "DC-A"}), json!({"name": "DC-A"})], "written and implied");
    assert_eq!(dc_a.resolved["locations"], ["loc-dc-a", "loc-dc-a"]);
    let spe1 = &report.loaded.local_contexts[0];
    assert_eq!(spe1.data.value()["_metadata"]["name"], "SPE1 VRFs", "a local context's _metadata is data");
}

/// A slug used as an implicit location file's name matches no location named that way: strict mode fails it.
#[test]
fn an_implicit_file_named_by_slug_matches_nothing() {
    let mut tree = check::read_dir_tree(&own_fixtures().join("realworld/sp-lab")).unwrap();
    tree.add_file("config_contexts/locations/dc_a.yaml", b"_metadata: {name: Slug named}\nx: 1\n".to_vec(), None)
        .unwrap();
    let inventory = read_inventory(&own_fixtures().join("sp-lab-inventory.json")).unwrap();
    let report = check_tree(
        &tree,
        &Registry::with_builtins(),
        "sp-lab",
        "sp_lab",
        None,
        Some(&inventory),
        ScopeMode::Strict,
        Limits::default(),
        SchemaEnforcement::Warn,
    );
    assert!(report.failed());
    assert!(report.logs.iter().any(|l| l.message
        == "Error in loading config context data from `dc_a.yaml`: No matching Location found for {'name': 'dc_a'}; unable to create/update context Slug named"), "{:#?}", report.logs);
}

/// `--schema-enforcement error` makes context data that violates its schema fail the check.
#[test]
fn schema_enforcement_error_fails_the_check() {
    let mut tree = check::read_dir_tree(&own_fixtures().join("realworld/sp-lab")).unwrap();
    tree.add_file(
        "config_contexts/bad.yaml",
        b"_metadata: {name: Bad, config_context_schema: Routing Properties}\nospf: {process_id: 0}\n".to_vec(),
        None,
    )
    .unwrap();
    let run = |enforcement| {
        check_tree(
            &tree,
            &Registry::with_builtins(),
            "sp-lab",
            "sp_lab",
            None,
            None,
            ScopeMode::Strict,
            Limits::default(),
            enforcement,
        )
    };
    let warned = run(SchemaEnforcement::Warn);
    assert!(!warned.failed());
    let line = warned.logs.iter().find(|l| l.message.contains("does not match its schema")).unwrap();
    assert_eq!((line.level, line.grouping.as_str()), (LogLevel::Warning, "config contexts"));
    assert_eq!(
        line.message,
        "Config context `Bad` from `bad.yaml` does not match its schema `Routing Properties`: at `/ospf/process_id`: 0 is less than the minimum of 1"
    );
    let failed = run(SchemaEnforcement::Error);
    assert!(failed.failed());
    assert!(failed.logs.iter().any(|l| l.level == LogLevel::Error && l.message == line.message));
}

#[test]
fn the_command_exits_1_on_errors_and_prints_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = tmp.path().join("valid");
    copy_dir(&own_fixtures().join("nautobot/01-valid-files"), &valid);
    let args = |path: &Path, format| CheckArgs {
        path: path.to_owned(),
        name: Some("Test Git Repository".into()),
        provides: None,
        inventory: Some(own_fixtures().join("nautobot-inventory.json")),
        scope_mode: Mode::Strict,
        schema_enforcement: SchemaEnforcement::Warn,
        max_file_bytes: Limits::default().max_bytes,
        max_document_bytes: Limits::default().max_expanded_bytes,
        max_record_bytes: Limits::default().max_record_bytes,
        format,
    };
    let mut out = Vec::new();
    assert_eq!(check::run(args(&valid, Format::Json), &mut out).unwrap(), 0);
    let json: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["status"], "SUCCESS");
    assert!(schema_validator().is_valid(&json));
    assert_eq!(json["jobs"][0]["module_name"], "test_git_repository.jobs.my_job", "slug from --name");

    let invalid = tmp.path().join("invalid");
    copy_dir(&own_fixtures().join("nautobot/02-invalid-files"), &invalid);
    let mut out = Vec::new();
    assert_eq!(check::run(args(&invalid, Format::Text), &mut out).unwrap(), 1);
    let text = String::from_utf8(out).unwrap();
    assert!(text.trim_end().ends_with("FAILURE"), "{text}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
