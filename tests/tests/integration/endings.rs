//! Every way a sync can fail ends through one place: the JobResult ends FAILURE with its exception type, the error
//! line is followed by "Changes to database records have been reverted." where records could have been touched,
//! `current_head` and the records stay as they were, and `repo.sync_failed` goes out on the notifications
//! exchange. One table, one case per failure kind; and a panic inside a job is one of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::RequestedBy;
use gitfleet_shared::loaders::{DataType, LoadInput, Loaded, Registry};
use lapin::options::BasicAckOptions;
use uuid::Uuid;

use crate::support::TestEnv;
use crate::support::git::{Remote, git_http_with_auth};

/// A test-only extension whose `folder` panics: it loads fine, then the job panics when it stores the files.
struct PanicsWhenStored;

impl DataType for PanicsWhenStored {
    fn identifier(&self) -> &'static str {
        "test.panics"
    }
    fn name(&self) -> &'static str {
        "panicking test type"
    }
    fn folder(&self) -> &'static str {
        panic!("a bug in an extension")
    }
    fn load(&self, _input: &LoadInput<'_>, _out: &mut Loaded) {}
}

const REVERTED: &str = "Changes to database records have been reverted.";

/// One failure kind: the JobResult to look at, what it must say, and the repository whose state must not move.
struct Case {
    kind: &'static str,
    job: Uuid,
    repository: String,
    exc_type: &'static str,
    /// The error line's grouping and a part of its message.
    error: (&'static str, &'static str),
    reverted: bool,
    /// The live head before the failing sync ("" when it never synced).
    head_before: String,
    /// Config contexts the repository owned before.
    records_before: i64,
}

async fn create(
    env: &TestEnv,
    name: &str,
    url: &str,
    provides: &[&str],
    edit: impl FnOnce(&mut NewRepo),
) -> Result<Uuid> {
    let mut new = NewRepo {
        name: format!("{name} {}", env.id),
        remote_url: url.to_owned(),
        provided_contents: provides.iter().map(|p| (*p).to_owned()).collect(),
        ..NewRepo::default()
    };
    edit(&mut new);
    commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().context("accepted")
}

async fn owned_contexts(env: &TestEnv, repository: &str) -> Result<(String, i64)> {
    let client = env.pool.get().await?;
    let row = client
        .query_one(
            "SELECT r.current_head, (SELECT count(*) FROM config_context c WHERE c.owner_repository_id = r.id)
             FROM git_repository r WHERE r.name = $1",
            &[&repository],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_of_a_sync_ends_the_same_way() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.max_mirror_bytes = 60_000;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let context = |name: &str| format!("_metadata:\n  name: {name}\nv: 1\n");
    let cc = ["extras.configcontext"];

    // The notifications, tapped before anything runs.
    let (connection, mut notifications) = crate::support::tap(&env, &env.topology().notifications).await?;

    // Secrets groups are read when the worker starts.
    let dir = env.tmp.path().join("secrets").join("wrong");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("username"), "alice")?;
    std::fs::write(dir.join("token"), "not-the-token")?;
    let mut registry = Registry::with_builtins();
    registry.register(Box::new(PanicsWhenStored));
    env.start_worker_with("endings", registry);
    env.start_relay();
    let mut cases = Vec::new();
    let name = |kind: &str| format!("{kind} {}", env.id);

    // Fetch failures.
    let plain = Remote::new(&served, "plain")?;
    plain.commit("first", &[("config_contexts/a.yaml", &context("plain-a"))])?;
    let job = create(&env, "Branch", &plain.file_url(), &cc, |n| n.branch = Some("nope".into())).await?;
    cases.push((
        "branch missing",
        job,
        name("Branch"),
        "BranchDoesNotExist",
        ("ensure_git_repository", "does not appear"),
        true,
    ));

    let http = git_http_with_auth(&served, &env.tmp.path().join("lighttpd"), &[("alice", "the-token")]).await?;
    let url = format!("http://127.0.0.1:{}/git/plain.git", http.port);
    let job = create(&env, "Refused", &url, &cc, |n| n.secrets_group = Some("wrong".into())).await?;
    cases.push((
        "credentials refused",
        job,
        name("Refused"),
        "GitCommandError",
        ("ensure_git_repository", "authentication failed"),
        true,
    ));

    // Accepts and holds connections, silently, until the test ends.
    let (stalled, holder) = crate::support::silent_server().await?;
    let url = format!("http://127.0.0.1:{stalled}/stalled.git");
    let job = create(&env, "Timeout", &url, &cc, |n| n.git_timeout_secs = Some(2)).await?;
    cases.push(("fetch timeout", job, name("Timeout"), "TimeoutError", ("ensure_git_repository", "timed out"), true));

    let big = Remote::new(&served, "big")?;
    let noise = crate::support::noise(0x2545_f491_4f6c_dd1d_u64, 10_000);
    big.commit("big", &[("blob.txt", &noise)])?;
    let job = create(&env, "Big", &big.file_url(), &cc, |_| {}).await?;
    cases.push((
        "mirror too large",
        job,
        name("Big"),
        "MirrorTooLarge",
        ("ensure_git_repository", "GITFLEET_MAX_MIRROR_BYTES"),
        true,
    ));

    // A tree that cannot be read: a synced repository whose mirror lost a blob, reloaded after an inventory change.
    let tree = Remote::new(&served, "tree")?;
    let tree_head = tree.commit("first", &[("config_contexts/a.yaml", &context("tree-a"))])?;
    let synced = create(&env, "Tree", &tree.file_url(), &cc, |_| {}).await?;
    assert_eq!(env.wait_job(synced).await?.status, "SUCCESS");
    let blob = crate::support::git::git(&tree.work, &["rev-parse", "HEAD:config_contexts/a.yaml"])?;
    let loose = env.git_root().join(format!("tree_{}", env.id)).join("objects").join(&blob[..2]).join(&blob[2..]);
    std::fs::remove_file(&loose).with_context(|| format!("the mirror's loose blob {}", loose.display()))?;
    let stamp = gitfleet_shared::inventory::ScopeObject {
        kind: "tag".into(),
        id: Some(format!("tag-{}", env.id)),
        fields: serde_json::Map::from_iter([("name".to_owned(), serde_json::json!("changed"))]),
    };
    gitfleet_infra::store::inventory::import(&**env.pool.get().await?, &[stamp], false).await?;
    let job = env.sync(&name("Tree")).await?;
    cases.push((
        "unreadable tree",
        job,
        name("Tree"),
        "GitCommandError",
        ("ensure_git_repository", "object not found"),
        false,
    ));

    // Load and reconcile failures.
    let broken = Remote::new(&served, "broken")?;
    broken.commit("broken", &[("config_contexts/bad.yaml", "a: [1, 2\n")])?;
    let job = create(&env, "Loader", &broken.file_url(), &cc, |_| {}).await?;
    cases.push((
        "loader error",
        job,
        name("Loader"),
        "RuntimeError",
        ("main", "Failed to refresh data provided by"),
        true,
    ));

    let first = Remote::new(&served, "first")?;
    first.commit("first", &[("config_contexts/shared.yaml", &context(&format!("shared-{}", env.id)))])?;
    let owner = create(&env, "Owner", &first.file_url(), &cc, |_| {}).await?;
    assert_eq!(env.wait_job(owner).await?.status, "SUCCESS");
    let second = Remote::new(&served, "second")?;
    second.commit("second", &[("config_contexts/shared.yaml", &context(&format!("shared-{}", env.id)))])?;
    let job = create(&env, "Clash", &second.file_url(), &cc, |_| {}).await?;
    cases.push((
        "reconcile clash",
        job,
        name("Clash"),
        "RuntimeError",
        ("main", "Failed to refresh data provided by"),
        true,
    ));

    // Storage failures: a directory where a file must go is refused by the filesystem store.
    let storage = env.tmp.path().join("storage").join("default").join("git");
    let before = Remote::new(&served, "before")?;
    let head = before.commit("first", &[("config_contexts/a.yaml", &context("before-a"))])?;
    std::fs::create_dir_all(storage.join(format!("before_{}", env.id)).join(&head).join("manifest.json"))?;
    let job = create(&env, "Before", &before.file_url(), &cc, |_| {}).await?;
    cases.push((
        "storage refused before the transaction",
        job,
        name("Before"),
        "StorageError",
        ("main", "Could not store the files of"),
        true,
    ));

    let after = Remote::new(&served, "after")?;
    after.commit("first", &[("config_contexts/a.yaml", &context("after-a"))])?;
    std::fs::create_dir_all(storage.join(format!("after_{}", env.id)).join("current.json"))?;
    let job = create(&env, "After", &after.file_url(), &cc, |_| {}).await?;
    cases.push((
        "storage refused after the reconcile",
        job,
        name("After"),
        "StorageError",
        ("main", "Could not store the files of"),
        true,
    ));

    // The commit itself refused: a deferred constraint checked only at COMMIT.
    let client = env.pool.get().await?;
    client
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = '23514'; END $$;
             CREATE CONSTRAINT TRIGGER refuse_commit AFTER UPDATE ON git_repository
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'Commit {}')
             EXECUTE FUNCTION refuse_commit();",
            env.id
        ))
        .await?;
    let commit = Remote::new(&served, "commit")?;
    commit.commit("first", &[("config_contexts/a.yaml", &context("commit-a"))])?;
    let job = create(&env, "Commit", &commit.file_url(), &cc, |_| {}).await?;
    cases.push(("commit failure", job, name("Commit"), "IntegrityError", ("main", "refused at commit"), true));

    // A panic inside the job.
    let panics = Remote::new(&served, "panics")?;
    panics.commit("first", &[("config_contexts/a.yaml", &context("panics-a"))])?;
    let job = create(&env, "Panic", &panics.file_url(), &cc, |_| {}).await?;
    // The producer only offers built-in types; the test type is set on the row before the worker reads it.
    client
        .execute(
            "UPDATE git_repository SET provided_contents = '[\"extras.configcontext\", \"test.panics\"]' WHERE name = $1",
            &[&name("Panic")],
        )
        .await?;
    cases.push(("panic", job, name("Panic"), "WorkerPanic", ("main", "worker panicked: a bug in an extension"), true));

    // Every case: ended FAILURE with its type and lines; the repository unchanged; repo.sync_failed published.
    let mut cases: Vec<Case> = cases
        .into_iter()
        .map(|(kind, job, repository, exc_type, error, reverted)| Case {
            kind,
            job,
            repository,
            exc_type,
            error,
            reverted,
            head_before: String::new(),
            records_before: 0,
        })
        .collect();
    for case in cases.iter_mut().filter(|c| c.kind == "unreadable tree") {
        (case.head_before, case.records_before) = (tree_head.clone(), 1);
    }
    for case in &mut cases {
        let view = env.wait_job(case.job).await?;
        assert_eq!(view.status, "FAILURE", "{}: {:#?}", case.kind, view.logs);
        let result = view.result.clone().unwrap_or_default();
        assert_eq!(result["exc_type"], case.exc_type, "{}: {result}", case.kind);
        let errors: Vec<_> = view.logs.iter().filter(|l| l.level == "error").collect();
        let last_error = errors.last().with_context(|| format!("{}: no error line", case.kind))?;
        assert_eq!(last_error.grouping, case.error.0, "{}: {last_error:?}", case.kind);
        assert!(last_error.message.contains(case.error.1), "{}: {last_error:?}", case.kind);
        let last = view.logs.last().unwrap();
        if case.reverted {
            assert_eq!(last.message, REVERTED, "{}: {:#?}", case.kind, view.logs);
        }
        let (head, records) = owned_contexts(&env, &case.repository).await?;
        assert_eq!((head.as_str(), records), (case.head_before.as_str(), case.records_before), "{}", case.kind);
        assert_eq!(view.logs.iter().filter(|l| l.message == "Running job").count(), 1, "{}: not retried", case.kind);
    }
    // The commit failure put the pointer back: no current.json names the refused commit.
    assert!(!storage.join(format!("commit_{}", env.id)).join("current.json").exists());

    let mut seen: HashMap<Uuid, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cases.iter().any(|c| !seen.contains_key(&c.job)) {
        let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(1), notifications.next()).await else {
            if Instant::now() > deadline {
                bail!(
                    "notifications missing: {:?}",
                    cases.iter().filter(|c| !seen.contains_key(&c.job)).map(|c| c.kind).collect::<Vec<_>>()
                );
            }
            continue;
        };
        let delivery = delivery?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        let body: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        if let Some(id) = body["job_result_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            seen.insert(id, delivery.routing_key.to_string());
        }
    }
    for case in &cases {
        assert_eq!(seen[&case.job], "repo.sync_failed", "{}", case.kind);
    }

    // The worker went on after the panic: the owner syncs again.
    let again = env.wait_job(env.sync(&name("Owner")).await?).await?;
    assert_eq!(again.status, "SUCCESS", "{:#?}", again.logs);
    let _ = connection.close(200, "done".into()).await;
    holder.abort();
    drop((client, http));
    env.teardown().await
}
