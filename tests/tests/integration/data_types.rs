//! What a sync loads, against Nautobot's own test repository (conformance inventory section 1).

use anyhow::Result;
use gitfleet_producer::commands::{self, NewRepo, RepoChanges};
use gitfleet_shared::event::{EventKind, RequestedBy};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::git::nautobot_fixture;
use crate::support::{TestEnv, assert_log};

const ALL: &[&str] = &[
    "extras.configcontextschema",
    "extras.configcontext",
    "extras.job",
    "extras.exporttemplate",
    "extras.graphqlquery",
    "data_validation.data_compliance_rule",
];

/// The GitTest set-up (0.5): the inventory, and "Test Git Repository" on the fixture remote.
async fn import_inventory(env: &TestEnv) -> Result<()> {
    let client = env.pool.get().await?;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nautobot-inventory.json"))?;
    let value: Value = serde_json::from_str(&text)?;
    let objects: Vec<gitfleet_shared::inventory::ScopeObject> = serde_json::from_value(value["objects"].clone())?;
    gitfleet_infra::store::inventory::import(&**client, &objects, false).await?;
    Ok(())
}

async fn setup(env: &mut TestEnv, branch: &str) -> Result<(String, String, String)> {
    import_inventory(env).await?;
    let remote = nautobot_fixture(env.tmp.path())?;
    // Names and slugs are unique among live repositories in one schema; every test has its own schema.
    let name = "Test Git Repository".to_owned();
    let new = NewRepo {
        name: name.clone(),
        slug: Some("test_git_repo".into()),
        remote_url: remote.file_url(),
        branch: Some(branch.to_owned()),
        provided_contents: ALL.iter().map(|s| (*s).to_owned()).collect(),
        secrets_group: None,
        git_timeout_secs: None,
        sync_interval_secs: None,
    };
    let job = commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap();
    env.start_fleet(1);
    Ok((name, job.to_string(), remote.file_url()))
}

async fn count(env: &TestEnv, sql: &str) -> Result<i64> {
    Ok(env.pool.get().await?.query_one(sql, &[]).await?.get(0))
}

/// Everything `valid-files` loads (the assert_* helpers of GitTest).
async fn assert_valid_data(env: &TestEnv, repo: Uuid) -> Result<()> {
    let client = env.pool.get().await?;
    let row = client
        .query_one(
            "SELECT c.weight, c.description, c.is_active, c.data, c.scope_resolved, s.name FROM config_context c
             LEFT JOIN config_context_schema s ON s.id = c.config_context_schema_id
             WHERE c.name = 'Frobozz 1000 NTP servers' AND c.owner_repository_id = $1",
            &[&repo],
        )
        .await?;
    assert_eq!(row.get::<_, i16>(0), 1500);
    assert_eq!(row.get::<_, String>(1), "NTP servers for Frobozz 1000 devices **only**");
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Value>(3), json!({"ntp-servers": ["172.16.10.22", "172.16.10.33"]}));
    assert_eq!(row.get::<_, Value>(4), json!({"device_types": ["dt-frobozz"]}));
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("Config Context Schema 1"));
    let row = client
        .query_one(
            "SELECT weight, description, is_active, data, scope_resolved, config_context_schema_id IS NULL FROM config_context
             WHERE name = 'Location context' AND owner_repository_id = $1",
            &[&repo],
        )
        .await?;
    assert_eq!((row.get::<_, i16>(0), row.get::<_, String>(1), row.get::<_, bool>(2)), (1000, String::new(), false));
    assert_eq!(row.get::<_, Value>(3), json!({"domain_name": "example.com"}));
    assert_eq!(row.get::<_, Value>(4), json!({"locations": ["loc-test"]}));
    assert!(row.get::<_, bool>(5));
    let local = client
        .query_one("SELECT data, target_object_id, owner_repository_id FROM local_context WHERE kind = 'devices' AND name = 'test-device'", &[])
        .await?;
    assert_eq!(local.get::<_, Value>(0), json!({"dns-servers": ["8.8.8.8"]}));
    assert_eq!(local.get::<_, Option<String>>(1).as_deref(), Some("dev-test"));
    assert_eq!(local.get::<_, Option<Uuid>>(2), Some(repo));
    let templates: Vec<(String, String, String)> = client
        .query(
            "SELECT content_type, name, mime_type FROM export_template WHERE owner_repository_id = $1 ORDER BY 1, 2",
            &[&repo],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [
        ("dcim.device", "template.j2", "text/plain"),
        ("dcim.device", "template2.html", "text/html"),
        ("ipam.vlan", "template.j2", "text/plain"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(templates, expected);
    let queries: Vec<String> = client
        .query("SELECT name FROM graphql_query WHERE owner_repository_id = $1 ORDER BY name", &[&repo])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(queries, ["device_interfaces", "device_names"]);
    let jobs: Vec<(String, String, bool)> = client
        .query("SELECT name, module_name, installed FROM job ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let module = "test_git_repo.jobs.my_job".to_owned();
    assert_eq!(
        jobs,
        [
            ("MyJob".to_owned(), module.clone(), true),
            ("MyJobButtonReceiver".to_owned(), module.clone(), true),
            ("MyJobHookReceiver".to_owned(), module, true),
        ]
    );
    let schema: Value = client
        .query_one("SELECT data_schema FROM config_context_schema WHERE name = 'Config Context Schema 1'", &[])
        .await?
        .get(0);
    assert_eq!(schema["title"], "Person");
    Ok(())
}

/// Conformance 1.3: valid-files, then a re-sync to empty-repo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_data_then_empty_repo() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (name, job, _) = setup(&mut env, "valid-files").await?;
    let view = env.wait_job(job.parse()?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let repo = view.repository_id.unwrap();
    assert_valid_data(&env, repo).await?;
    assert_log(&view, "info", "config context schemas", "Successfully created config context schema");
    assert_log(&view, "info", "config contexts", "Successfully created config context");
    assert_log(&view, "info", "jobs", "Created Job record for test_git_repo.jobs.my_job.MyJob");
    assert_log(&view, "info", "export templates", "Successfully created export template");
    assert_log(&view, "info", "graphql queries", "Successfully created GraphQL query: device_names");

    // The same commit, definition and inventory again: nothing to reload.
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS");
    assert_log(&view, "info", "main", "is already up to date at commit");
    assert_eq!(view.result.clone().unwrap()["up_to_date"], json!(true));

    // The inventory was imported again: the scopes may resolve differently, so everything is reloaded, and the
    // log says nothing changed.
    import_inventory(&env).await?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS");
    assert_log(&view, "info", "config contexts", "No change to config context");
    assert_log(&view, "info", "config context schemas", "No change to config context schema");
    assert_log(&view, "info", "export templates", "No change to export template");
    assert_log(&view, "info", "graphql queries", "No changes to GraphQL query: device_names");
    assert_log(&view, "info", "jobs", "Refreshed Job record for test_git_repo.jobs.my_job.MyJob");

    // empty-repo while still providing jobs: no `jobs` module, so the sync fails as Nautobot's does, even though
    // the last sync had jobs, and everything stays as it was.
    let head_before = env.repo(repo).await?.current_head;
    let changes = RepoChanges { branch: Some("empty-repo".into()), ..RepoChanges::default() };
    let job = commands::update(&env.pool, &name, changes, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    assert_log(&view, "error", "jobs", "No `jobs` submodule found in Git repository Test Git Repository");
    assert_log(&view, "info", "main", "Changes to database records have been reverted.");
    assert_eq!(env.repo(repo).await?.current_head, head_before);
    assert_valid_data(&env, repo).await?;
    assert_eq!(count(&env, "SELECT count(*) FROM job WHERE installed").await?, 3);

    // Jobs no longer provided: the empty tree syncs, contexts and templates gone, local context gone, jobs
    // uninstalled.
    let provides: Vec<String> = ALL.iter().filter(|t| **t != "extras.job").map(|s| (*s).to_owned()).collect();
    let changes = RepoChanges { provided_contents: Some(provides), ..RepoChanges::default() };
    let job = commands::update(&env.pool, &name, changes, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_log(
        &view,
        "warning",
        "config contexts",
        "Deleted config context [Test Git Repository] Frobozz 1000 NTP servers",
    );
    assert_log(&view, "warning", "local config contexts", "Deleted local config context");
    assert_log(&view, "warning", "jobs", "Marking Job record as no longer installed");
    let owned = format!("= '{repo}'");
    assert_eq!(
        count(&env, &format!("SELECT count(*) FROM config_context WHERE owner_repository_id {owned}")).await?,
        0
    );
    assert_eq!(
        count(&env, &format!("SELECT count(*) FROM export_template WHERE owner_repository_id {owned}")).await?,
        0
    );
    assert_eq!(count(&env, "SELECT count(*) FROM local_context").await?, 0);
    assert_eq!(count(&env, "SELECT count(*) FROM job WHERE installed").await?, 0);
    assert_eq!(count(&env, "SELECT count(*) FROM job").await?, 3, "jobs are never deleted");
    env.teardown().await
}

/// Conformance 1.4: invalid-files fails with the asserted entries and nothing stays loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_fails_and_loads_nothing() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (_, job, _) = setup(&mut env, "invalid-files").await?;
    let view = env.wait_job(job.parse()?).await?;
    assert_eq!(view.status, "FAILURE");
    for (level, grouping, needle) in [
        ("warning", "config contexts", "Found \"devices\" directory in the repository root"),
        ("warning", "export templates", "Found \"dcim\" directory in the repository root"),
        ("warning", "export templates", "Skipping `dcim.nosuchmodel` as it isn't a known content type"),
        ("warning", "export templates", "Skipping `nosuchapp.device` as it isn't a known content type"),
        ("error", "config context schemas", "Error in loading config context schema data from `badschema1.json`"),
        ("error", "config context schemas", "`badschema2.json`: data is missing the required `_metadata` key"),
        ("error", "config contexts", "Error in loading config context data from `badcontext1.json`"),
        ("error", "config contexts", "`badcontext2.json`: data is missing the required `_metadata` key"),
        ("error", "config contexts", "`badcontext3.json`: data `_metadata` is missing the required `name` key"),
        ("error", "local config contexts", "`devices/nosuchdevice.json`: record not found"),
        ("error", "jobs", "Error in loading Jobs from Git repository: "),
        (
            "error",
            "graphql queries",
            "Error processing GraphQL query file 'bad_device_names.gql': Syntax Error: Expected Name, found '}'",
        ),
        ("error", "main", "Failed to refresh data provided by Test Git Repository. Please see logs."),
        ("info", "main", "Changes to database records have been reverted."),
    ] {
        let n = view
            .logs
            .iter()
            .filter(|l| l.level == level && l.grouping == grouping && l.message.contains(needle))
            .count();
        assert_eq!(n, 1, "{level}/{grouping}/{needle}: {:#?}", view.logs);
    }
    assert_eq!(
        view.result.clone().unwrap()["exc_message"],
        "Failed to refresh data provided by Test Git Repository. Please see logs."
    );
    for table in ["config_context_schema", "config_context", "export_template", "graphql_query", "job", "local_context"]
    {
        assert_eq!(count(&env, &format!("SELECT count(*) FROM {table}")).await?, 0, "{table}");
    }
    assert_eq!(env.repo(view.repository_id.unwrap()).await?.head_str(), "");
    env.teardown().await
}

/// Conformance 1.6: a failed sync after a good one leaves every record and the head exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_rolls_back_to_the_last_good_state() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (name, job, _) = setup(&mut env, "valid-files").await?;
    let view = env.wait_job(job.parse()?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let repo = view.repository_id.unwrap();
    let good = env.repo(repo).await?.current_head;
    let snapshot = "SELECT (SELECT json_agg(c ORDER BY name) FROM config_context c)::text || \
                    (SELECT json_agg(t ORDER BY name) FROM export_template t)::text || \
                    (SELECT json_agg(j ORDER BY name) FROM job j)::text";
    let before: String = env.pool.get().await?.query_one(snapshot, &[]).await?.get(0);

    let changes = RepoChanges { branch: Some("main".into()), ..RepoChanges::default() };
    let job = commands::update(&env.pool, &name, changes, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "FAILURE");
    assert_eq!(env.repo(repo).await?.current_head, good);
    let after: String = env.pool.get().await?.query_one(snapshot, &[]).await?.get(0);
    assert_eq!(before, after, "every record exactly as it was");
    assert_valid_data(&env, repo).await?;
    env.teardown().await
}

/// Conformance 1.5: deleting the repository removes what it owns and uninstalls its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_owned_records() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (name, job, _) = setup(&mut env, "valid-files").await?;
    assert_eq!(env.wait_job(job.parse()?).await?.status, "SUCCESS");
    let job = commands::delete(&env.pool, &name, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!((view.status.as_str(), view.name.as_str()), ("SUCCESS", "Test Git Repository"));
    for table in ["config_context_schema", "config_context", "export_template", "graphql_query", "local_context"] {
        assert_eq!(count(&env, &format!("SELECT count(*) FROM {table}")).await?, 0, "{table}");
    }
    assert_eq!(count(&env, "SELECT count(*) FROM job WHERE NOT installed AND name = 'MyJob'").await?, 1);
    env.teardown().await
}

/// Conformance 7.14 and 7.6: a second repository's job named like an existing one gets " (2)"; a context named like
/// a record the repository does not own is an error that fails the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_collisions_between_repositories() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (_, job, url) = setup(&mut env, "valid-files").await?;
    assert_eq!(env.wait_job(job.parse()?).await?.status, "SUCCESS");

    // Another repository with the same jobs (another URL string, so the overlap rule allows it).
    let new = NewRepo {
        name: "Second Repository".into(),
        slug: Some("second_repo".into()),
        remote_url: format!("{url}/"),
        branch: Some("valid-files".into()),
        provided_contents: vec!["extras.job".into()],
        secrets_group: None,
        git_timeout_secs: None,
        sync_interval_secs: None,
    };
    let job = commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let client = env.pool.get().await?;
    let row = client.query_one("SELECT name, name_override FROM job WHERE module_name = 'second_repo.jobs.my_job' AND job_class_name = 'MyJob'", &[]).await?;
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, bool>(1)), ("MyJob (2)", true));

    // A context made by hand under a name the repository wants.
    client
        .execute("INSERT INTO config_context (id, name, data) VALUES ($1, 'Taken by hand', '{}')", &[&Uuid::new_v4()])
        .await?;
    drop(client);
    let remote = crate::support::git::Remote::new(env.tmp.path(), "third")?;
    remote.commit("ctx", &[("config_contexts/a.yaml", "_metadata: {name: Taken by hand}\nx: 1\n")])?;
    let new = NewRepo {
        name: "Third Repository".into(),
        remote_url: remote.file_url(),
        provided_contents: vec!["extras.configcontext".into()],
        ..NewRepo::default()
    };
    let job = commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(
        &view,
        "error",
        "config contexts",
        "Error in loading config context data from `a.yaml`: Config context with this Name already exists.",
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM config_context WHERE name = 'Taken by hand' AND owner_repository_id IS NULL")
            .await?,
        1
    );
    env.teardown().await
}

/// Conformance 1.7 and 7.11: a dry-run reports file changes with Nautobot's wording and the record changes a sync
/// would make, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_and_changes_nothing() -> Result<()> {
    let mut env = TestEnv::new().await?;
    import_inventory(&env).await?;
    let remote = nautobot_fixture(env.tmp.path())?;
    // A definition written directly, so no create event syncs it: the dry-run sees a never-synced repository.
    let client = env.pool.get().await?;
    let provided: Vec<String> = ALL.iter().map(|s| (*s).to_owned()).collect();
    let url = remote.file_url();
    let row = gitfleet_infra::store::repository::insert(
        &**client,
        &gitfleet_infra::store::repository::NewRepository {
            id: Uuid::new_v4(),
            name: "Test Git Repository",
            slug: "test_git_repo",
            remote_url: &url,
            branch: "valid-files",
            secrets_group: None,
            provided_contents: &provided,
            git_timeout_secs: None,
            sync_interval_secs: None,
        },
    )
    .await?;
    drop(client);
    env.start_fleet(1);
    let dry_run = || async {
        let id = commands::sync(&env.pool, "Test Git Repository", EventKind::DryRun, None, RequestedBy::cli())
            .await?
            .job_result_id()
            .unwrap();
        env.wait_job(id).await
    };

    let view = dry_run().await?;
    assert_eq!((view.name.as_str(), view.status.as_str()), ("Git Repository: Dry-Run", "SUCCESS"), "{:#?}", view.logs);
    assert_log(&view, "info", "run", "Performing a Dry Run on Git repository \"Test Git Repository\"...");
    assert_log(&view, "info", "git_repository_dry_run", "Fetching from origin");
    let additions: Vec<&str> =
        view.logs.iter().filter(|l| l.message.starts_with("Addition - ")).map(|l| l.message.as_str()).collect();
    let expected = [
        "__init__.py",
        "config_context_schemas/schema-1.yaml",
        "config_contexts/context.yaml",
        "config_contexts/devices/test-device.json",
        "config_contexts/locations/Test Location.json",
        "export_templates/dcim/device/template.j2",
        "export_templates/dcim/device/template2.html",
        "export_templates/ipam/vlan/template.j2",
        "graphql_queries/device_interfaces.gql",
        "graphql_queries/device_names.gql",
        "jobs/__init__.py",
        "jobs/my_job.py",
    ]
    .map(|p| format!("Addition - `{p}`"));
    assert_eq!(additions, expected);
    assert_log(&view, "info", "git_repository_dry_run", "config contexts: 2 to create, 0 to change, 0 to delete");
    assert_log(&view, "info", "git_repository_dry_run", "config context schemas: 1 to create");
    assert_log(&view, "info", "git_repository_dry_run", "jobs: 3 to create");
    assert_log(&view, "info", "git_repository_dry_run", "Repository dry run successful");
    assert_log(&view, "info", "run", "Repository dry run completed in 0 minutes");
    for table in ["config_context_schema", "config_context", "export_template", "graphql_query", "job", "local_context"]
    {
        assert_eq!(
            count(&env, &format!("SELECT count(*) FROM {table}")).await?,
            0,
            "{table}: a dry-run writes nothing"
        );
    }
    assert_eq!(env.repo(row.id).await?.head_str(), "");

    // Synced and unchanged upstream: no file changes, no record changes.
    let sync = env.wait_job(env.sync("Test Git Repository").await?).await?;
    assert_eq!(sync.status, "SUCCESS");
    let head = env.repo(row.id).await?.current_head;
    let view = dry_run().await?;
    assert_eq!(view.status, "SUCCESS");
    assert_log(&view, "info", "git_repository_dry_run", "Repository has no changes");
    assert_log(&view, "info", "git_repository_dry_run", "No records would change");

    // Pointed at the empty commit while still providing jobs (written directly, no sync): the sync would fail on
    // the missing `jobs` module, and the dry-run says so.
    env.pool.get().await?.execute("UPDATE git_repository SET branch = 'empty-repo' WHERE id = $1", &[&row.id]).await?;
    let view = dry_run().await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    assert_log(&view, "error", "jobs", "No `jobs` submodule found in Git repository Test Git Repository");

    // Without jobs: deletions reported, nothing deleted.
    env.pool
        .get()
        .await?
        .execute(
            "UPDATE git_repository SET provided_contents = provided_contents - 'extras.job' WHERE id = $1",
            &[&row.id],
        )
        .await?;
    let view = dry_run().await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_log(&view, "info", "git_repository_dry_run", "Deletion - `config_contexts/context.yaml`");
    // Two contexts and the device's local context.
    assert_log(&view, "info", "git_repository_dry_run", "config contexts: 0 to create, 0 to change, 3 to delete");
    assert_eq!(count(&env, "SELECT count(*) FROM config_context").await?, 2, "still there");
    assert_eq!(env.repo(row.id).await?.current_head, head);
    env.teardown().await
}
