//! `make test-fixtures`: the loaders on the team's `../shared/fixtures` (Nautobot's own conformance data and
//! repositories written by Nautobot users), which a clone of this repository alone does not have.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gitfleet_shared::loaders::{Registry, SchemaEnforcement, ScopeMode};
use gitfleet_shared::tree::RepoTree;
use gitfleet_shared::yaml::Limits;
use gitfleet_worker::check::{self, Report, check_tree, read_dir_into, read_inventory};

fn shared_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn own_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn run(tree: &RepoTree, dir: &str) -> Report {
    let inventory = read_inventory(&own_fixtures().join("nautobot-inventory.json")).unwrap();
    let provides = [
        "extras.configcontextschema",
        "extras.configcontext",
        "extras.job",
        "extras.exporttemplate",
        "extras.graphqlquery",
        "data_validation.data_compliance_rule",
    ];
    let report = check_tree(
        tree,
        &Registry::with_builtins(),
        "Test Git Repository",
        "test_git_repo",
        Some(provides.iter().map(|s| (*s).to_owned()).collect()),
        Some(&inventory),
        ScopeMode::Strict,
        Limits::default(),
        SchemaEnforcement::Warn,
    );
    assert!(!report.logs.is_empty(), "{dir}");
    report
}

/// Our own fixture repository (`tests/fixtures/nautobot`) loads exactly what Nautobot's fixture data does, with our
/// Python files overlaid on Nautobot's data files as its test helper builds the repository: the same records and
/// the same log lines, for both commits.
#[test]
fn our_nautobot_fixture_loads_what_nautobots_does() {
    for dir in ["01-valid-files", "02-invalid-files"] {
        let mut theirs_with_python = RepoTree::new();
        read_dir_into(&mut theirs_with_python, &shared_fixtures().join("nautobot-git-data").join(dir)).unwrap();
        for python in ["__init__.py", "jobs"] {
            let path = own_fixtures().join("nautobot").join(dir).join(python);
            if path.is_dir() {
                theirs_with_python.add_dir("jobs").unwrap();
                for entry in std::fs::read_dir(&path).unwrap() {
                    let entry = entry.unwrap();
                    let name = format!("jobs/{}", entry.file_name().to_string_lossy());
                    theirs_with_python.add_file(&name, std::fs::read(entry.path()).unwrap(), None).unwrap();
                }
            } else {
                theirs_with_python.add_file(python, std::fs::read(&path).unwrap(), None).unwrap();
            }
        }
        let mut ours = RepoTree::new();
        read_dir_into(&mut ours, &own_fixtures().join("nautobot").join(dir)).unwrap();
        let (theirs, ours) = (run(&theirs_with_python, dir), run(&ours, dir));
        assert_eq!(ours.to_json(), theirs.to_json(), "{dir}");
    }
}

/// Every real-world repository loads with the outcome Nautobot gave it.
#[test]
fn real_world_repositories() {
    let root = shared_fixtures().join("realworld");
    let cases: [(&str, bool, [usize; 4], &[&str]); 4] = [
        // `config_contexts/ip_sla.yml` has `_metadata` without `name`: Nautobot fails the whole sync on it.
        (
            "byrn-baker__Nautobot-Workshop",
            false,
            [6, 11, 13, 0],
            &[
                "Error in loading config context data from `ip_sla.yml`: data `_metadata` is missing the required `name` key.",
            ],
        ),
        // jobs/ holds only templates (its Python is not in the fixture) and the root has no __init__.py: the
        // "No jobs were registered" warning, no failure.
        (
            "byrn-baker__blog-sandbox",
            true,
            [2, 9, 0, 0],
            &["No jobs were registered on loading the `byrn_baker__blog_sandbox.jobs` submodule."],
        ),
        // Implicit location contexts and device local contexts with `_metadata` kept as data.
        ("byrn-baker__blog-sandbox@09adccd", true, [3, 10, 3, 0], &[]),
        ("byrn-baker__blog-sandbox@c2c608c", true, [3, 10, 3, 1], &[]),
    ];
    for (dir, success, [schemas, contexts, locals, queries], needles) in cases {
        let tree = check::read_dir_tree(&root.join(dir)).unwrap();
        let registry = Registry::with_builtins();
        let slug = gitfleet_shared::repo::slugify_dashes_to_underscores(dir);
        let report = check_tree(
            &tree,
            &registry,
            dir,
            &slug,
            None,
            None,
            ScopeMode::Strict,
            Limits::default(),
            SchemaEnforcement::Warn,
        );
        assert_eq!(!report.failed(), success, "{dir}: {:#?}", report.logs);
        let l = &report.loaded;
        let counts =
            [l.config_context_schemas.len(), l.config_contexts.len(), l.local_contexts.len(), l.graphql_queries.len()];
        assert_eq!(counts, [schemas, contexts, locals, queries], "{dir}");
        for needle in needles {
            assert!(report.logs.iter().any(|e| e.message.contains(needle)), "{dir}: no log with {needle:?}");
        }
        for c in &l.config_contexts {
            if let Some(schema) = &c.config_context_schema {
                assert!(l.config_context_schemas.iter().any(|s| &s.name == schema), "{dir}: {schema}");
            }
        }
    }
}
