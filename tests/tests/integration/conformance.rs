//! Nautobot's reading rules through the whole fleet: what the database ends up holding for repositories written
//! for Nautobot (Django's field preparation, Python's text reads, Job renames across syncs), and that what a sync
//! stores is what `worker check` loads from the same commit.

use std::path::Path;

use anyhow::{Context, Result};
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_producer::records::{self, RecordsArgs};
use gitfleet_shared::event::RequestedBy;
use gitfleet_shared::inventory::Inventory;
use gitfleet_shared::loaders::{Registry, SchemaEnforcement, ScopeMode};
use gitfleet_shared::yaml::Limits;
use gitfleet_worker::check::{check_tree, read_dir_tree, read_inventory};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::git::{Remote, remote_of_folder};
use crate::support::{TestEnv, accepted, assert_log};

/// Defines a repository providing `provides` on `remote_url` and returns its first sync's JobResult.
pub async fn create(env: &TestEnv, name: &str, remote_url: &str, provides: &[&str]) -> Result<Uuid> {
    let new = NewRepo {
        name: name.to_owned(),
        remote_url: remote_url.to_owned(),
        branch: Some("main".into()),
        provided_contents: provides.iter().map(|s| (*s).to_owned()).collect(),
        ..NewRepo::default()
    };
    accepted(commands::create(&env.pool, new, RequestedBy::cli()).await?)
}

/// `producer repo records --name N --format json`, parsed.
pub async fn records_json(env: &TestEnv, name: &str) -> Result<Value> {
    let mut out = Vec::new();
    let args = RecordsArgs { name: name.to_owned(), data_type: None, format: gitfleet_infra::settings::Format::Json };
    let code = records::run(&env.pool, args, &mut out).await?;
    anyhow::ensure!(code == 0, "repo records exited {code}");
    Ok(serde_json::from_slice(&out)?)
}

/// `worker check` of a folder as the sync of `name` providing `provides` would load it.
pub fn check_json(dir: &Path, name: &str, provides: &[&str], inventory: Option<&Inventory>) -> Result<Value> {
    let tree = read_dir_tree(dir)?;
    let slug = gitfleet_shared::repo::slugify_dashes_to_underscores(name);
    let report = check_tree(
        &tree,
        &Registry::with_builtins(),
        name,
        &slug,
        Some(provides.iter().map(|s| (*s).to_owned()).collect()),
        inventory,
        ScopeMode::Strict,
        Limits::default(),
        SchemaEnforcement::Warn,
    );
    Ok(report.to_json())
}

/// The record lists of a check or records document (without its status, log and commit).
pub fn record_lists(document: &Value) -> Value {
    let mut lists = document.clone();
    if let Value::Object(map) = &mut lists {
        for key in ["status", "logs", "commit"] {
            map.remove(key);
        }
    }
    lists
}

fn job_module(meta_name: &str, description: &str) -> String {
    format!(
        "from nautobot.apps.jobs import Job, register_jobs\n\n\nclass Sharing(Job):\n    class Meta:\n        \
         name = \"{meta_name}\"\n        description = \"{description}\"\n\n\nregister_jobs(Sharing)\n"
    )
}

async fn job_rows(env: &TestEnv, like: &str) -> Result<Vec<(String, String, bool, String)>> {
    let rows = env
        .pool
        .get()
        .await?
        .query(
            "SELECT job_class_name, name, name_override, description FROM job WHERE module_name LIKE $1 ORDER BY 1",
            &[&like],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
}

/// A job follows its `Meta.name` across syncs; a name made unique with ` (2)` is kept from then on (Nautobot's
/// sticky `name_override`) while the job's other fields follow the code; `worker check` names jobs as a sync does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_renames_and_sticky_suffixes() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let first = Remote::new(env.tmp.path(), "first")?;
    first.commit("jobs", &[("__init__.py", ""), ("jobs/__init__.py", &job_module("Shared", "one"))])?;
    let second = Remote::new(env.tmp.path(), "second")?;
    second.commit("jobs", &[("__init__.py", ""), ("jobs/__init__.py", &job_module("Shared", "two"))])?;
    let job = create(&env, "First", &first.file_url(), &["extras.job"]).await?;
    assert_eq!(env.wait_job(job).await?.status, "SUCCESS");
    let job = create(&env, "Second", &second.file_url(), &["extras.job"]).await?;
    assert_eq!(env.wait_job(job).await?.status, "SUCCESS");
    let row = |name: &str, over: bool, description: &str| {
        vec![("Sharing".to_owned(), name.to_owned(), over, description.to_owned())]
    };
    assert_eq!(job_rows(&env, "first.%").await?, row("Shared", false, "one"));
    assert_eq!(job_rows(&env, "second.%").await?, row("Shared (2)", true, "two"));

    // First's job is renamed in its code: the next sync renames the record.
    first.commit("rename", &[("jobs/__init__.py", &job_module("Renamed", "one"))])?;
    assert_eq!(env.wait_job(env.sync("First").await?).await?.status, "SUCCESS");
    assert_eq!(job_rows(&env, "first.%").await?, row("Renamed", false, "one"));

    // "Shared" is free now, but Second's job keeps the name it was given; its description follows the code.
    second.commit("describe", &[("jobs/__init__.py", &job_module("Shared", "three"))])?;
    assert_eq!(env.wait_job(env.sync("Second").await?).await?.status, "SUCCESS");
    assert_eq!(job_rows(&env, "second.%").await?, row("Shared (2)", true, "three"));

    // Two jobs of one repository asking for one name: check and sync agree on the suffix.
    let pair = Remote::new(env.tmp.path(), "pair")?;
    let module = "from nautobot.apps.jobs import Job, register_jobs\n\n\nclass A(Job):\n    class Meta:\n        \
                  name = \"Pair\"\n\n\nclass B(Job):\n    class Meta:\n        name = \"Pair\"\n\n\nregister_jobs(A, B)\n";
    pair.commit("pair", &[("__init__.py", ""), ("jobs/__init__.py", module)])?;
    let job = create(&env, "Pair", &pair.file_url(), &["extras.job"]).await?;
    assert_eq!(env.wait_job(job).await?.status, "SUCCESS");
    let records = records_json(&env, "Pair").await?;
    let checked = check_json(&pair.work, "Pair", &["extras.job"], None)?;
    assert_eq!(record_lists(&records)["jobs"], record_lists(&checked)["jobs"]);
    let names: Vec<&str> =
        records["jobs"].as_array().context("jobs")?.iter().filter_map(|j| j["name"].as_str()).collect();
    assert_eq!(names, ["Pair", "Pair (2)"]);
    env.teardown().await
}

/// What Django stores for values Nautobot users write: a quoted weight is a number, a number in a text field is
/// its text, an empty schema name links nothing, a template saved with Windows line ends is stored with `\n`; and
/// context data that does not match its schema is reported with a warning, the sync going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_field_rules_through_the_fleet() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "rules")?;
    remote.commit(
        "rules",
        &[
            ("config_contexts/quoted.yaml", "_metadata: {name: Quoted, weight: \"50\", description: 12:30}\nx: 1\n"),
            ("config_contexts/no_schema.yaml", "_metadata: {name: No schema, config_context_schema: \"\"}\ny: 2\n"),
            ("config_contexts/yes_and_one.yaml", "_metadata: {name: Keys}\nyes: a\n1: b\n"),
            (
                "config_context_schemas/ntp.yaml",
                "_metadata: {name: NTP}\ndata_schema: {type: object, properties: {ntp: {type: array, items: {type: string}}}}\n",
            ),
            ("config_contexts/bad_ntp.yaml", "_metadata: {name: Bad NTP, config_context_schema: NTP}\nntp: [1]\n"),
            ("export_templates/dcim/device/crlf.j2", "{% for d in queryset %}\r\n{{ d.name }}\r\n{% endfor %}\r\n"),
        ],
    )?;
    let provides = ["extras.configcontextschema", "extras.configcontext", "extras.exporttemplate"];
    let view = env.wait_job(create(&env, "Rules", &remote.file_url(), &provides).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_log(
        &view,
        "warning",
        "config contexts",
        "Config context `Bad NTP` from `bad_ntp.yaml` does not match its schema `NTP`: at `/ntp/0`: 1 is not of type \"string\"",
    );
    let client = env.pool.get().await?;
    let row = client.query_one("SELECT weight, description FROM config_context WHERE name = 'Quoted'", &[]).await?;
    assert_eq!((row.get::<_, i16>(0), row.get::<_, String>(1)), (50, "750".to_owned()));
    let schema: Option<Uuid> = client
        .query_one("SELECT config_context_schema_id FROM config_context WHERE name = 'No schema'", &[])
        .await?
        .get(0);
    assert_eq!(schema, None);
    let data: Value = client.query_one("SELECT data FROM config_context WHERE name = 'Keys'", &[]).await?.get(0);
    assert_eq!(data, json!({"true": "b"}), "yes and 1 are one key in Python");
    let code: String =
        client.query_one("SELECT template_code FROM export_template WHERE name = 'crlf.j2'", &[]).await?.get(0);
    assert_eq!(code, "{% for d in queryset %}\n{{ d.name }}\n{% endfor %}\n");
    drop(client);

    // What the sync stored is what `worker check` loads from the same commit.
    let records = records_json(&env, "Rules").await?;
    assert_eq!(records["commit"], json!(env.repo(view.repository_id.context("repo")?).await?.head_str()));
    assert_eq!(record_lists(&records), record_lists(&check_json(&remote.work, "Rules", &provides, None)?));
    env.teardown().await
}

/// `GITFLEET_SCHEMA_ENFORCEMENT=error`: context data that does not match its schema fails the sync, and nothing
/// of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_enforcement_error_fails_the_sync() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.schema_enforcement = SchemaEnforcement::Error;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "enforced")?;
    remote.commit(
        "bad",
        &[
            (
                "config_context_schemas/ntp.yaml",
                "_metadata: {name: NTP}\ndata_schema: {type: object, properties: {ntp: {type: array, items: {type: string}}}}\n",
            ),
            ("config_contexts/bad_ntp.yaml", "_metadata: {name: Bad NTP, config_context_schema: NTP}\nntp: [1]\n"),
        ],
    )?;
    let provides = ["extras.configcontextschema", "extras.configcontext"];
    let view = env.wait_job(create(&env, "Enforced", &remote.file_url(), &provides).await?).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    assert_log(&view, "error", "config contexts", "does not match its schema `NTP`");
    let count: i64 = env.pool.get().await?.query_one("SELECT count(*) FROM config_context", &[]).await?.get(0);
    assert_eq!(count, 0);
    env.teardown().await
}

/// Our rewrite of Nautobot's fixture repository and a repository written as Nautobot users write them: the records
/// a sync through the fleet stores equal what `worker check` loads from the same commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_sync_equal_the_check_of_its_commit() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let inventory_file = fixtures.join("sp-lab-inventory.json");
    let objects = gitfleet_shared::inventory::parse_objects(&std::fs::read_to_string(&inventory_file)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = env.pool.get().await?;
    gitfleet_infra::store::inventory::import(&**client, &objects, false).await?;
    drop(client);
    let inventory = read_inventory(&inventory_file)?;
    let (remote, _) = remote_of_folder(env.tmp.path(), "sp-lab", &fixtures.join("realworld/sp-lab"))?;
    let provides = ["extras.configcontextschema", "extras.configcontext", "extras.graphqlquery", "extras.job"];
    let view = env.wait_job(create(&env, "sp-lab", &remote.file_url(), &provides).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let records = records_json(&env, "sp-lab").await?;
    let checked = check_json(&remote.work, "sp-lab", &provides, Some(&inventory))?;
    assert_eq!(record_lists(&records), record_lists(&checked));
    assert_eq!(records["config_contexts"].as_array().map(Vec::len), Some(5));

    // Nautobot's fixture repository at `valid-files`, with its inventory.
    let text = std::fs::read_to_string(fixtures.join("nautobot-inventory.json"))?;
    let objects = gitfleet_shared::inventory::parse_objects(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    gitfleet_infra::store::inventory::import(&**env.pool.get().await?, &objects, false).await?;
    let remote = crate::support::git::nautobot_fixture(env.tmp.path())?;
    let provides = [
        "extras.configcontextschema",
        "extras.configcontext",
        "extras.job",
        "extras.exporttemplate",
        "extras.graphqlquery",
    ];
    let new = NewRepo {
        name: "Test Git Repository".into(),
        remote_url: remote.file_url(),
        branch: Some("valid-files".into()),
        provided_contents: provides.iter().map(|s| (*s).to_owned()).collect(),
        ..NewRepo::default()
    };
    let view = env.wait_job(accepted(commands::create(&env.pool, new, RequestedBy::cli()).await?)?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let records = records_json(&env, "Test Git Repository").await?;
    let inventory = read_inventory(&fixtures.join("nautobot-inventory.json"))?;
    let checked =
        check_json(&fixtures.join("nautobot/01-valid-files"), "Test Git Repository", &provides, Some(&inventory))?;
    assert_eq!(record_lists(&records), record_lists(&checked));
    env.teardown().await
}

/// `producer repo records`: one data type with `--type`, a text form for people, exit 2 for an unknown repository
/// or data type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_command_filters_and_refuses() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "typed")?;
    remote.commit(
        "two types",
        &[
            ("config_contexts/a.yaml", "_metadata: {name: Alpha}\nx: 1\n"),
            ("graphql_queries/q.gql", "{ devices { name } }\n"),
        ],
    )?;
    let view = env
        .wait_job(create(&env, "Typed", &remote.file_url(), &["extras.configcontext", "extras.graphqlquery"]).await?)
        .await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let run = |name: &str, data_type: Option<&str>, format| {
        let args = RecordsArgs { name: name.to_owned(), data_type: data_type.map(str::to_owned), format };
        let pool = env.pool.clone();
        async move {
            let mut out = Vec::new();
            let code = records::run(&pool, args, &mut out).await?;
            anyhow::Ok((code, String::from_utf8(out)?))
        }
    };
    use gitfleet_infra::settings::Format;
    let (code, json) = run("Typed", Some("extras.graphqlquery"), Format::Json).await?;
    let json: Value = serde_json::from_str(&json)?;
    assert_eq!(code, 0);
    assert_eq!(json["graphql_queries"][0]["name"], "q");
    assert_eq!(json["config_contexts"], json!([]), "other types are left out");
    let (code, text) = run("Typed", None, Format::Text).await?;
    assert_eq!(code, 0);
    assert!(
        text.contains("config contexts (1)\n  Alpha (weight 1000)") && text.contains("graphql queries (1)\n  q"),
        "{text}"
    );
    assert_eq!(run("Typed", Some("extras.nosuch"), Format::Json).await?.0, 2);
    assert_eq!(run("Nobody", None, Format::Json).await?.0, 2);
    env.teardown().await
}
