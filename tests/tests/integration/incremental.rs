//! Incremental loading equals a full load: random sequences of changes (files added, modified, deleted and
//! renamed, names that collide, files broken and fixed, scopes changed, schemas changed, a data type switched off
//! and on) are pushed to a repository, which one worker syncs incrementally over `git://` (its small fetches
//! unpacked by the worker); after every step a fresh schema loads the same commit from scratch, fetched by git, and the two must hold the same records, the same per-file facts, the same
//! budget and file counts, and end with the same status and the same error lines.
//!
//! `GITFLEET_INCREMENTAL_CASES` (default 2) sequences of `GITFLEET_INCREMENTAL_STEPS` (default 10) steps each.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use gitfleet_infra::store::job_result::JobResultView;
use gitfleet_producer::commands::{self, NewRepo, RepoChanges};
use gitfleet_shared::event::RequestedBy;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::TestEnv;
use crate::support::git::{Remote, git, git_daemon};

const NAME: &str = "Incremental";
const SLUG: &str = "incremental";
const TYPES: &[&str] = &["extras.configcontextschema", "extras.configcontext", "extras.exporttemplate"];

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: the same sequence for the same seed, printed when a case fails.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

async fn import_inventory(env: &TestEnv) -> Result<()> {
    let objects = json!([
        { "kind": "location", "id": "loc-a", "fields": { "name": "Site A" } },
        { "kind": "location", "id": "loc-b", "fields": { "name": "Site B" } },
        { "kind": "role", "id": "role-edge", "fields": { "name": "edge" } },
        { "kind": "role", "id": "role-core", "fields": { "name": "core" } },
        { "kind": "device", "id": "dev-1", "fields": { "name": "dev-1" } },
        { "kind": "device", "id": "dev-2", "fields": { "name": "dev-2" } },
    ]);
    let objects: Vec<gitfleet_shared::inventory::ScopeObject> = serde_json::from_value(objects)?;
    let client = env.pool.get().await?;
    gitfleet_infra::store::inventory::import(&**client, &objects, false).await?;
    Ok(())
}

/// A random config context document: names from a small set (so files collide), optional scope and schema link.
fn context(rng: &mut Rng) -> String {
    let name = rng.pick(&["alpha", "beta", "gamma", "delta"]);
    let weight = rng.below(3) * 100 + 1000;
    // Rarely a lookup that matches nothing or a schema that may not exist: errors, but not every time.
    let scope = match rng.below(12) {
        0..=3 => "\n  locations: [{name: Site A}]",
        4..=6 => "\n  locations: [{name: Site B}]",
        7 => "\n  locations: [{name: Nowhere}]",
        _ => "",
    };
    let schema = if rng.below(10) == 0 { "\n  config_context_schema: ntp" } else { "" };
    let value = rng.below(1000);
    format!("_metadata:\n  name: {name}\n  weight: {weight}{scope}{schema}\nvalue: {value}\n")
}

fn local(rng: &mut Rng) -> String {
    format!("ntp: [10.0.0.{}]\n", rng.below(9))
}

fn implicit(rng: &mut Rng) -> String {
    format!("_metadata:\n  name: role-{}\nsyslog: {}\n", rng.below(3), rng.below(100))
}

/// One random change to the work tree (a file map, written and committed by the caller); returns what it did.
fn mutate(rng: &mut Rng, files: &mut BTreeMap<String, String>, provided: &mut Vec<String>) -> String {
    // What an earlier step broke is fixed (or deleted) now and then, so that most syncs can succeed.
    let unfixable = |c: &String| c.contains("[unclosed") || c.contains("Nowhere") || c.contains("context_schema: ntp");
    let bad: Vec<String> =
        files.iter().filter(|(p, c)| unfixable(c) || p.contains("dev-3")).map(|(p, _)| p.clone()).collect();
    if !bad.is_empty() && rng.below(3) > 0 {
        let path = rng.pick(&bad).clone();
        if path.contains("/devices/") {
            files.remove(&path);
            return format!("delete {path}");
        }
        files.insert(path.clone(), context(rng));
        return format!("fix {path}");
    }
    let explicit: Vec<String> = files.keys().filter(|p| p.starts_with("config_contexts/c")).cloned().collect();
    match rng.below(13) {
        0..=2 => {
            let path = format!("config_contexts/c{}.yaml", rng.below(6));
            files.insert(path.clone(), context(rng));
            format!("write {path}")
        }
        3 if !explicit.is_empty() => {
            let path = rng.pick(&explicit).clone();
            files.remove(&path);
            format!("delete {path}")
        }
        4 if !explicit.is_empty() => {
            let from = rng.pick(&explicit).clone();
            let to = format!("config_contexts/c{}.json", rng.below(8));
            let body = files.remove(&from).unwrap_or_default();
            // JSON is YAML: the content moves as it is.
            files.insert(to.clone(), body);
            format!("rename {from} -> {to}")
        }
        5 if !explicit.is_empty() => {
            let path = rng.pick(&explicit).clone();
            files.insert(path.clone(), "_metadata: [unclosed\n".into());
            format!("break {path}")
        }
        6 => {
            // dev-3 is not in the inventory: rarely.
            let path =
                format!("config_contexts/devices/dev-{}.yaml", if rng.below(8) == 0 { 3 } else { rng.below(2) + 1 });
            files.insert(path.clone(), local(rng));
            format!("write {path}")
        }
        7 => {
            let path = format!("config_contexts/roles/{}.yaml", rng.pick(&["edge", "core"]));
            if files.remove(&path).is_none() {
                files.insert(path.clone(), implicit(rng));
            }
            format!("toggle {path}")
        }
        8 => {
            let path = "config_context_schemas/ntp.yaml".to_owned();
            if files.remove(&path).is_none() {
                let body = "_metadata:\n  name: ntp\ndata_schema:\n  type: object\n  properties:\n    value: {type: integer}\n";
                files.insert(path.clone(), body.into());
            }
            format!("toggle {path}")
        }
        9 => {
            let path = format!("export_templates/dcim/device/t{}.j2", rng.below(2));
            files.insert(path.clone(), format!("{{{{ obj.name }}}} {}\n", rng.below(50)));
            format!("write {path}")
        }
        10 => {
            let path = "config_contexts/.gitkeep".to_owned();
            if files.remove(&path).is_none() {
                files.insert(path.clone(), String::new());
            }
            format!("toggle {path}")
        }
        11 => {
            let t = "extras.exporttemplate".to_owned();
            if provided.contains(&t) {
                provided.retain(|p| *p != t);
            } else {
                provided.push(t);
            }
            "toggle export templates".to_owned()
        }
        _ => {
            let path = "README.md".to_owned();
            files.insert(path.clone(), format!("readme {}\n", rng.below(1000)));
            format!("write {path}")
        }
    }
}

/// Makes the work tree hold exactly `files`, commits and pushes.
fn commit(remote: &Remote, files: &BTreeMap<String, String>, message: &str) -> Result<String> {
    for entry in std::fs::read_dir(&remote.work)? {
        let entry = entry?;
        if entry.file_name() != ".git" {
            let path = entry.path();
            if path.is_dir() { std::fs::remove_dir_all(path)? } else { std::fs::remove_file(path)? }
        }
    }
    let written: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    remote.commit(message, &written)
}

/// A store's live manifest: its folders, its parts, and their files.
type StoreManifest =
    (Option<Vec<String>>, Vec<gitfleet_worker::storage::PartRef>, Vec<gitfleet_worker::storage::ManifestFile>);

/// What a repository's load left in one schema: records, recorded facts, status and error lines.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: String,
    errors: BTreeSet<(String, String)>,
    records: Value,
    facts: BTreeSet<String>,
    keys: BTreeSet<(String, i32, String)>,
    totals: Option<(i64, i64)>,
    /// Each store's live manifest: the folders it covers, its parts and their files (built from the live one plus
    /// the change in the incremental schema, from a listing of every file in the fresh one).
    manifests: Vec<StoreManifest>,
}

async fn outcome(env: &TestEnv, repo: Uuid, view: &JobResultView) -> Result<Outcome> {
    let client = env.pool.get().await?;
    let errors =
        view.logs.iter().filter(|l| l.level == "error").map(|l| (l.grouping.clone(), l.message.clone())).collect();
    let loaded = gitfleet_infra::store::records::owned(&**client, repo, SLUG, &[]).await?;
    let records = serde_json::to_value(&loaded)?;
    let facts = client
        .query(
            "SELECT data_type, path, blob_id, ord, keys, facts, bytes, files FROM loaded_file WHERE repository_id = $1",
            &[&repo],
        )
        .await?
        .iter()
        .map(|r| {
            let (t, p, b, o, k, f, n, c): (String, String, String, i32, Vec<String>, Value, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7));
            json!([t, p, b, o, k, f, n, c]).to_string()
        })
        .collect();
    let keys = client
        .query("SELECT key, ord, path FROM loaded_key WHERE repository_id = $1", &[&repo])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let totals = client
        .query_opt("SELECT doc_bytes, files FROM loaded_state WHERE repository_id = $1", &[&repo])
        .await?
        .map(|r| (r.get(0), r.get(1)));
    let storage = gitfleet_worker::storage::Storage::new(env.storage.clone()).await;
    let mut manifests = Vec::new();
    for store in storage.stores() {
        let live = storage.live(&store, SLUG, None).await?;
        let files = storage.load_parts(&store, &live.parts).await?.into_iter().flatten().collect();
        manifests.push((live.folders, live.parts, files));
    }
    Ok(Outcome { status: view.status.clone(), errors, records, facts, keys, totals, manifests })
}

/// Creates the repository at `url`, starts a worker and a relay, and waits for the first sync.
async fn create_and_sync(env: &mut TestEnv, url: String, provided: &[String]) -> Result<(Uuid, JobResultView)> {
    let new = NewRepo {
        name: NAME.to_owned(),
        slug: Some(SLUG.to_owned()),
        remote_url: url,
        branch: Some("main".to_owned()),
        provided_contents: provided.to_vec(),
        ..NewRepo::default()
    };
    let job = commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().context("accepted")?;
    env.start_fleet(1);
    let view = env.wait_job(job).await?;
    let client = env.pool.get().await?;
    let repo = gitfleet_infra::store::repository::find_live_by_name(&**client, NAME, false).await?;
    Ok((repo.context("the repository")?.id, view))
}

/// The same commit loaded from scratch in a schema of its own, fetched by git's own `fetch` over `file://` (the
/// syncs it is compared with fetch over `git://`, their small fetches unpacked by the worker).
async fn full_load(remote: &Remote, provided: &[String]) -> Result<Outcome> {
    let mut env = TestEnv::new().await?;
    // Batches of a few files: the repository's files stream through several, as 100,000 files do through 500s.
    env.load_batch_files = 2;
    import_inventory(&env).await?;
    let (repo, view) = create_and_sync(&mut env, remote.file_url(), provided).await?;
    let result = outcome(&env, repo, &view).await;
    env.teardown().await?;
    result
}

async fn run_case(seed: u64, steps: usize) -> Result<(usize, usize)> {
    let mut env = TestEnv::new().await?;
    import_inventory(&env).await?;
    let remote = Remote::new(env.tmp.path(), "incremental")?;
    let daemon = git_daemon(env.tmp.path()).await?;
    let url = format!("git://127.0.0.1:{}/incremental.git", daemon.port);
    let mut rng = Rng(seed);
    let mut files = BTreeMap::new();
    files.insert("config_contexts/c0.yaml".to_owned(), context(&mut rng));
    files.insert("config_contexts/devices/dev-1.yaml".to_owned(), local(&mut rng));
    commit(&remote, &files, "initial")?;
    let mut provided: Vec<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
    let (repo, _) = create_and_sync(&mut env, url, &provided).await?;
    let (mut incremental, mut failures) = (0, 0);
    for step in 0..steps {
        let before = provided.clone();
        let mut done = Vec::new();
        for _ in 0..=rng.below(3) {
            done.push(mutate(&mut rng, &mut files, &mut provided));
        }
        let message = done.join("; ");
        commit(&remote, &files, &message)?;
        let job = if provided == before {
            env.sync(NAME).await?
        } else {
            let changes = RepoChanges { provided_contents: Some(provided.clone()), ..RepoChanges::default() };
            commands::update(&env.pool, NAME, changes, RequestedBy::cli()).await?.job_result_id().context("accepted")?
        };
        let view = env.wait_job(job).await?;
        if view.logs.iter().any(|l| l.message.starts_with("Incremental load:")) {
            incremental += 1;
        }
        if view.status != "SUCCESS" {
            failures += 1;
            if std::env::var_os("GITFLEET_INCREMENTAL_VERBOSE").is_some() {
                let errors: Vec<&str> =
                    view.logs.iter().filter(|l| l.level == "error").map(|l| l.message.as_str()).collect();
                eprintln!("step {step} ({message}) failed: {errors:?}");
            }
        }
        let got = outcome(&env, repo, &view).await?;
        let want = full_load(&remote, &provided).await?;
        if view.status == "SUCCESS" {
            assert_eq!(got, want, "seed {seed}, step {step} ({message}): incremental and full loads differ");
        } else {
            // A failed sync leaves the last good state live; what it reports must be what a full load reports.
            assert_eq!(
                (&got.status, &got.errors),
                (&want.status, &want.errors),
                "seed {seed}, step {step} ({message}): {:#?}",
                view.logs
            );
        }
    }
    git(&remote.work, &["log", "--oneline", "-1"])?;
    env.teardown().await?;
    Ok((incremental, failures))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_syncs_equal_full_loads() -> Result<()> {
    let (cases, steps) = (setting("GITFLEET_INCREMENTAL_CASES", 2), setting("GITFLEET_INCREMENTAL_STEPS", 10));
    let (mut incremental, mut total) = (0, 0);
    for case in 0..cases {
        let seed = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(case as u64 + 1);
        let (inc, failed) = run_case(seed, steps).await?;
        eprintln!("seed {seed:#x}: {steps} steps, {inc} incremental syncs, {failed} failed syncs");
        incremental += inc;
        total += steps;
    }
    // The comparison means something only if most syncs were incremental.
    assert!(incremental * 2 >= total, "only {incremental} of {total} syncs were incremental");
    Ok(())
}

/// The config contexts of a commit that exercise a streamed full load: names defined in several files (across
/// batches), an implicit definition that wins over an explicit one, two local contexts of one device, a dotfile
/// when `dotfile` (adding or removing it makes the next sync load every file), `generated` explicit files after
/// them, and, when `refused`, a last definition the database would refuse.
fn streamed_files(generated: usize, refused: bool, dotfile: bool) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut put = |path: &str, body: String| files.insert(path.to_owned(), body);
    put("config_contexts/a.yaml", "_metadata: {name: alpha, weight: 10}\nv: 1\n".into());
    put("config_contexts/b.yaml", "_metadata: {name: beta}\nv: 2\n".into());
    put("config_contexts/c.yaml", "_metadata: {name: alpha, weight: 20}\nv: 3\n".into());
    put("config_contexts/d.yaml", "- _metadata: {name: gamma}\n  v: 4\n- _metadata: {name: delta}\n  v: 5\n".into());
    if refused {
        let long = "x".repeat(300);
        put("config_contexts/e.yaml", format!("_metadata: {{name: delta, description: {long}}}\nv: 6\n"));
    }
    put("config_contexts/roles/edge.yaml", "_metadata: {name: beta}\nv: 7\n".into());
    put("config_contexts/devices/dev-1.json", "{\"ntp\": [1]}\n".into());
    put("config_contexts/devices/dev-1.yaml", "ntp: [2]\n".into());
    put("config_contexts/devices/dev-2.yaml", "ntp: [3]\n".into());
    if dotfile {
        put("config_contexts/.gitkeep", String::new());
    }
    for n in 0..generated {
        put(&format!("config_contexts/z{n:05}.yaml"), format!("_metadata: {{name: z{n:05}}}\nv: {n}\n"));
    }
    files
}

/// A full load streams config context files a batch at a time and reconciles them 1,000 records at a time: in
/// batches of two files it stores, records and logs exactly what it does in batches of 500 (one here), line for
/// line in order, through a first sync, a sync that fails on a refused last definition, and a sync that deletes
/// more than a thousand records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_load_in_small_batches_equals_one_batch() -> Result<()> {
    let provided: Vec<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
    // A failed sync leaves the first commit live: the last step, too, removes the dotfile it has.
    let steps = [(1100, false, true), (1100, true, false), (3, false, false)];
    let mut runs = Vec::new();
    for batch in [2, 500] {
        let mut env = TestEnv::new().await?;
        env.load_batch_files = batch;
        import_inventory(&env).await?;
        let remote = Remote::new(env.tmp.path(), "batches")?;
        let mut seen = Vec::new();
        let mut repo = None;
        for (step, &(generated, refused, dotfile)) in steps.iter().enumerate() {
            let files = streamed_files(generated, refused, dotfile);
            commit(&remote, &files, &format!("step {step}"))?;
            let view = match repo {
                None => {
                    let (id, view) = create_and_sync(&mut env, remote.file_url(), &provided).await?;
                    repo = Some(id);
                    view
                }
                Some(_) => env.wait_job(env.sync(NAME).await?).await?,
            };
            let full = view.logs.iter().any(|l| l.message.starts_with("Loading every file of"));
            assert!(step == 0 || full, "step {step} loads every file: {:#?}", view.logs);
            let lines: Vec<(String, String, String)> = view
                .logs
                .iter()
                .filter(|l| l.grouping.contains("config context"))
                .map(|l| (l.level.clone(), l.grouping.clone(), l.message.clone()))
                .collect();
            let got = outcome(&env, repo.context("the repository")?, &view).await?;
            seen.push((got, lines));
        }
        env.teardown().await?;
        runs.push(seen);
    }
    let (small, whole) = (&runs[0], &runs[1]);
    for (step, ((got, got_lines), (want, want_lines))) in small.iter().zip(whole).enumerate() {
        assert_eq!(got_lines, want_lines, "step {step}: the log differs with batches of two files");
        assert_eq!(got, want, "step {step}: what is stored differs with batches of two files");
    }
    // What the steps mean: the last definition of a name wins, across batches and sections.
    let (first, _) = &small[0];
    assert_eq!(first.status, "SUCCESS");
    let contexts = first.records["config_contexts"].as_array().context("contexts")?;
    assert_eq!(contexts.len(), 4 + 1100);
    let alpha = contexts.iter().find(|c| c["name"] == "alpha").context("alpha")?;
    assert_eq!((&alpha["weight"], &alpha["data"]["v"]), (&json!(20), &json!(3)));
    let beta = contexts.iter().find(|c| c["name"] == "beta").context("beta")?;
    assert_eq!(beta["data"]["v"], 7, "the implicit file comes after the explicit ones");
    let dev1 = first.records["local_contexts"].as_array().context("locals")?.iter().find(|l| l["name"] == "dev-1");
    assert_eq!(dev1.context("dev-1")?["data"]["ntp"], json!([2]));
    let (second, second_lines) = &small[1];
    assert_eq!(second.status, "FAILURE");
    assert!(second_lines.iter().any(|l| l.0 == "error" && l.2.contains("e.yaml")), "{second_lines:#?}");
    let (third, third_lines) = &small[2];
    assert_eq!(third.status, "SUCCESS");
    let deleted = third_lines.iter().filter(|l| l.2.starts_with("Deleted config context")).count();
    assert_eq!(deleted, 1100 - 3, "the generated contexts no file defines any more");
    assert_eq!(third.records["config_contexts"].as_array().map(Vec::len), Some(4 + 3));
    Ok(())
}
