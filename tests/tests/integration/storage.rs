//! Storage (ARCHITECTURE section 6) against a real S3-compatible server (moto, `make services`) and the
//! filesystem backend: layout, content addressing, per-type buckets and ACLs, multipart, the credential chain,
//! an outage mid-sync, delete with and without retention, and gc.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use gitfleet_infra::store::job_result::JobResultView;
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::RequestedBy;
use gitfleet_worker::storage::{Storage, StorageSettings};
use serde_json::Value;

use crate::support::git::{Remote, counting_http_proxy, switch_proxy};
use crate::support::{TestEnv, assert_log};

fn s3_port() -> u16 {
    std::env::var("GITFLEET_TEST_S3_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5000)
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// S3 settings for the test server through `port`, with a public default bucket and a private one for jobs.
fn s3_settings(env: &TestEnv, port: u16, bucket: &str, jobs_bucket: &str) -> Result<StorageSettings> {
    Ok(StorageSettings::from_vars(vars(&[
        ("AWS_STORAGE_BUCKET_NAME", bucket.to_owned()),
        ("AWS_LOCATION", "nautobot/".to_owned()),
        ("AWS_S3_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_S3_REGION_NAME", "us-east-1".to_owned()),
        ("AWS_S3_ADDRESSING_STYLE", "path".to_owned()),
        ("AWS_S3_ACCESS_KEY_ID", "test-key".to_owned()),
        ("AWS_S3_SECRET_ACCESS_KEY", "test-secret".to_owned()),
        ("AWS_DEFAULT_ACL", "public-read".to_owned()),
        ("AWS_MAX_ATTEMPTS", "2".to_owned()),
        (
            "GITFLEET_STORAGES",
            format!(
                r#"{{"extras.job": {{"bucket_name": "{jobs_bucket}", "default_acl": "private", "upload_to": "software_images"}}}}"#
            ),
        ),
        ("GITFLEET_STORAGE_MULTIPART_THRESHOLD", (5 * 1024 * 1024).to_string()),
        ("GITFLEET_STORAGE_ROOT", env.tmp.path().join("unused").display().to_string()),
    ]))?)
}

async fn raw_client(env: &TestEnv) -> Result<Client> {
    let settings = s3_settings(env, s3_port(), "x", "y")?;
    Ok(gitfleet_worker::storage::backend::s3_client(settings.s3.as_ref().unwrap()).await)
}

/// A repository with two config contexts, an export template and a jobs package carrying a 6 MiB binary.
fn data_remote(env: &TestEnv) -> Result<Remote> {
    let remote = Remote::new(env.tmp.path(), "stored")?;
    let big: String = (0..6 * 1024 * 1024 / 16).map(|n| format!("{n:015x}\n")).collect();
    remote.commit(
        "data",
        &[
            ("config_contexts/ntp.yaml", "---\n_metadata:\n  name: ntp\n  weight: 100\nntp: [10.0.0.1]\n"),
            ("config_contexts/dns.yaml", "---\n_metadata:\n  name: dns\n  weight: 100\ndns: [10.0.0.53]\n"),
            ("export_templates/dcim/device/inventory.j2", "{% for d in queryset %}{{ d.name }}\n{% endfor %}\n"),
            ("__init__.py", ""),
            ("jobs/__init__.py", ""),
            ("jobs/firmware.bin", &big),
        ],
    )?;
    Ok(remote)
}

/// Creates a repository on `remote` providing `provided` and waits for its first sync.
async fn create_and_wait(
    env: &TestEnv,
    name: &str,
    remote: &Remote,
    provided: Vec<String>,
) -> Result<gitfleet_infra::store::job_result::JobResultView> {
    let new = NewRepo {
        name: name.to_owned(),
        remote_url: remote.file_url(),
        provided_contents: provided,
        ..NewRepo::default()
    };
    env.wait_job(crate::support::accepted(commands::create(&env.pool, new, RequestedBy::cli()).await?)?).await
}

fn provided() -> Vec<String> {
    ["extras.configcontext", "extras.exporttemplate", "extras.job"].map(str::to_owned).to_vec()
}

async fn keys(storage: &Storage, bucket_store: usize) -> Result<BTreeSet<String>> {
    let stores = storage.stores();
    Ok(storage.backend(&stores[bucket_store]).list("").await?.into_iter().collect())
}

/// The same assertions on either backend: layout, digests, a one-file change, delete and gc. Returns the slug.
/// `requests`: what the S3 server was sent (through a counting proxy), for the request count of the second sync.
async fn layout_and_increments(
    env: &mut TestEnv,
    settings: StorageSettings,
    requests: Option<&std::sync::Mutex<Vec<String>>>,
) -> Result<(String, Storage)> {
    env.storage = settings.clone();
    let storage = Storage::new(settings).await;
    let remote = data_remote(env)?;
    let name = format!("Stored {}", env.id);
    let new = NewRepo {
        name: name.clone(),
        remote_url: remote.file_url(),
        provided_contents: provided(),
        ..NewRepo::default()
    };
    let job = crate::support::accepted(commands::create(&env.pool, new, RequestedBy::cli()).await?)?;
    // A line in the log before a worker runs the job, as an earlier try of a redelivered job leaves: the report
    // cannot come from the run's own copy of its lines, and reads the log back from the database.
    let before = gitfleet_shared::job_result::LogEntry::warning("main", "a line from an earlier try");
    gitfleet_infra::store::job_result::log(&**env.pool.get().await?, job, &before).await?;
    env.start_fleet(1);
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let result = view.result.clone().unwrap();
    let head = result["current_head"].as_str().unwrap().to_owned();
    let repo = env.repo(view.repository_id.unwrap()).await?;
    let slug = repo.slug.clone();
    let stores = storage.stores();
    let backend = storage.backend(&stores[0]);
    // The artifacts are built after the sync: the pointers name them once they are complete.
    let current = wait_artifact(&backend, &format!("nautobot/git/{slug}/current.json"), &head).await?;
    wait_artifact(&storage.backend(&stores[1]), &format!("nautobot/software_images/{slug}/current.json"), &head)
        .await?;

    // Default store: 3 blobs (2 contexts, 1 template), manifest, artifact, pointer, report.
    let default = keys(&storage, 0).await?;
    let blobs: Vec<&String> = default.iter().filter(|k| k.starts_with("nautobot/git/blobs/")).collect();
    assert_eq!(blobs.len(), 3, "{default:#?}");
    for expected in [
        format!("nautobot/git/{slug}/{head}/manifest.json"),
        format!("nautobot/git/{slug}/{head}/artifact.tar.gz"),
        format!("nautobot/git/{slug}/current.json"),
        format!("nautobot/reports/{}.json", view.id),
    ] {
        assert!(default.contains(&expected), "{expected} missing from {default:#?}");
    }
    // Jobs store: their own bucket (or folder) and upload_to.
    let jobs = keys(&storage, 1).await?;
    assert_eq!(jobs.iter().filter(|k| k.starts_with("nautobot/software_images/blobs/")).count(), 2, "{jobs:#?}");
    assert!(jobs.contains(&format!("nautobot/software_images/{slug}/current.json")));

    // The artifact's digest matches the pointer and the database.
    let artifact = backend.get(current["artifact"].as_str().unwrap()).await?.unwrap();
    let digest: String = openssl::sha::sha256(&artifact).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(current["sha256"], digest.as_str());
    // The database records the digest right after the pointer names it (the same holding of the lock).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let recorded = loop {
        let client = env.pool.get().await?;
        let recorded: Value =
            client.query_one("SELECT artifacts FROM git_repository WHERE id = $1", &[&repo.id]).await?.get(0);
        if recorded[0]["sha256"].is_string() || std::time::Instant::now() > deadline {
            break recorded;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(recorded[0]["sha256"], digest.as_str(), "{recorded}");
    assert_eq!(recorded[0]["artifact"], current["artifact"]);
    assert!(result["artifacts"][0]["sha256"].is_null(), "the JobResult ends before its artifact is built");
    assert_eq!(result["artifacts"][0]["manifest_from_live"], false, "a first sync lists every file");
    assert_eq!(result["report"], format!("nautobot/reports/{}.json", view.id));
    // The report holds every log line of the sync, in order (read back from the log a page at a time).
    let report = report_matches_log(&backend, &view).await?;
    assert_eq!((&report["commit"], &report["job_result_id"]), (&serde_json::json!(head), &serde_json::json!(view.id)));
    assert!(view.logs.len() > 8, "the report spans pages: {}", view.logs.len());
    assert_eq!(view.logs[0].message, "a line from an earlier try");
    let manifest: Value = serde_json::from_slice(&backend.get(current["manifest"].as_str().unwrap()).await?.unwrap())?;
    assert_eq!(manifest["files"], 3);
    let listed = storage.manifest_files(&stores[0], &manifest).await?;
    let paths: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths.len(), 3, "{manifest}");
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "sorted by path: {paths:?}");
    assert!(listed.iter().all(|f| f.key.ends_with(&f.blob) && f.sha256.len() == 64), "{listed:?}");
    assert_eq!(manifest["folders"], serde_json::json!(["config_contexts", "export_templates"]));

    // One file changed: exactly one new blob, plus the new commit's manifest and artifact and the report.
    if let Some(requests) = requests {
        requests.lock().unwrap().clear();
    }
    let second = remote.commit(
        "dns moves",
        &[("config_contexts/dns.yaml", "---\n_metadata:\n  name: dns\n  weight: 100\ndns: [10.0.0.54]\n")],
    )?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let sent_by_sync = requests.map(|r| r.lock().unwrap().clone());
    wait_artifact(&backend, &format!("nautobot/git/{slug}/current.json"), &second).await?;
    let after = keys(&storage, 0).await?;
    let added: BTreeSet<&String> = after.difference(&default).collect();
    let expected: BTreeSet<String> = [
        format!("nautobot/git/{slug}/{second}/manifest.json"),
        format!("nautobot/git/{slug}/{second}/artifact.tar.gz"),
        format!("nautobot/reports/{}.json", view.id),
    ]
    .into();
    let new_blobs: Vec<&&String> = added.iter().filter(|k| k.starts_with("nautobot/git/blobs/")).collect();
    assert_eq!(new_blobs.len(), 1, "{added:#?}");
    let new_parts = added.iter().filter(|k| k.starts_with(&format!("nautobot/git/{slug}/manifest-parts/"))).count();
    assert_eq!(new_parts, 1, "the part the change falls in: {added:#?}");
    assert_eq!(added.len(), 5, "{added:#?}");
    assert!(expected.iter().all(|k| added.contains(k)), "{added:#?}");
    if let Some(sent) = sent_by_sync {
        // The live manifest says which blobs are stored: only the changed file's blob is sent, unasked (it is
        // small), and nothing is listed.
        let blob = |method: &str| sent.iter().filter(|r| r.starts_with(method) && r.contains("/blobs/")).count();
        assert_eq!((blob("HEAD "), blob("PUT ")), (0, 1), "{sent:#?}");
        assert!(!sent.iter().any(|r| r.contains("list-type")), "{sent:#?}");
    }
    let result = view.result.clone().unwrap();
    // This report comes from the run's copy of its lines: the same lines.
    assert_eq!(report_matches_log(&backend, &view).await?["commit"], second.as_str());
    assert_eq!(result["artifacts"][0]["manifest_from_live"], true, "the live manifest plus the change");
    assert_eq!(result["artifacts"][0]["uploaded_blobs"], 1);
    assert_eq!(result["artifacts"][1]["uploaded_blobs"], 0, "the unchanged job files are not uploaded again");
    let current: Value =
        serde_json::from_slice(&backend.get(&format!("nautobot/git/{slug}/current.json")).await?.unwrap())?;
    assert_eq!(current["commit"], second.as_str());
    Ok((slug, storage))
}

/// The sync report of `view`: its lines are the JobResult's log, level, grouping, message and object, in order.
async fn report_matches_log(backend: &gitfleet_worker::storage::Backend, view: &JobResultView) -> Result<Value> {
    let key = view.result.as_ref().and_then(|r| r["report"].as_str()).context("a report")?;
    let report: Value = serde_json::from_slice(&backend.get(key).await?.context("the report")?)?;
    let lines: Vec<[&str; 4]> = report["log"]
        .as_array()
        .context("the report's log")?
        .iter()
        .map(|l| ["level", "grouping", "message", "object"].map(|k| l[k].as_str().unwrap_or("?")))
        .collect();
    let logged: Vec<[&str; 4]> =
        view.logs.iter().map(|l| [&*l.level, &*l.grouping, &*l.message, &*l.log_object]).collect();
    assert_eq!(lines, logged);
    Ok(report)
}

/// A blob removed behind gitfleet's back, and another cut short (as a write a crash interrupted leaves it):
/// `verify` finds both (exit 1 in the CLI), `--repair` marks the repository, and its next sync stores both again
/// whole at the same commit, without a new commit or a full listing.
async fn repair_a_removed_blob(env: &TestEnv, storage: &Storage, root: &std::path::Path, slug: &str) -> Result<()> {
    use gitfleet_worker::storage::commands::verify;
    let backend = storage.backend(&storage.stores()[0]);
    let current: Value =
        serde_json::from_slice(&backend.get(&format!("nautobot/git/{slug}/current.json")).await?.unwrap())?;
    let manifest: Value = serde_json::from_slice(&backend.get(current["manifest"].as_str().unwrap()).await?.unwrap())?;
    let listed = storage.manifest_files(&storage.stores()[0], &manifest).await?;
    let (key, blob) = (listed[0].key.as_str(), listed[0].blob.as_str());
    std::fs::remove_file(root.join("default").join(key))?;
    let short = listed.iter().find(|f| f.blob != blob && f.size > 1).context("a second blob")?;
    let whole = backend.get(&short.key).await?.context("the second blob")?;
    std::fs::write(root.join("default").join(&short.key), &whole[..whole.len() / 2])?;
    let worker = env.worker_settings("verify");
    let mut out = Vec::new();
    assert_eq!(verify(&worker, storage.settings.clone(), false, &mut out).await?, 2, "blobs missing");
    let printed = String::from_utf8(out)?;
    let mut both = [blob, short.blob.as_str()];
    both.sort_unstable();
    assert!(printed.contains(&format!("{slug}: 2 blobs missing: {} {}", both[0], both[1])), "{printed}");
    let view = env.wait_job(env.sync(&format!("Stored {}", env.id)).await?).await?;
    assert_log(&view, "info", "main", "already up to date");
    assert!(backend.get(key).await?.is_none(), "verify alone changes nothing");

    let mut out = Vec::new();
    assert_eq!(verify(&worker, storage.settings.clone(), true, &mut out).await?, 2);
    assert!(String::from_utf8(out)?.contains("marked 1 repositories"));
    let view = env.wait_job(env.sync(&format!("Stored {}", env.id)).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let result = view.result.clone().unwrap();
    assert_eq!(result["artifacts"][0]["uploaded_blobs"], 2, "{result}");
    assert_eq!(result["artifacts"][0]["manifest_from_live"], true, "{result}");
    assert!(backend.get(key).await?.is_some(), "the next sync stored the blob again");
    assert_eq!(backend.get(&short.key).await?, Some(whole), "the short blob was replaced whole");
    let commit = current["commit"].as_str().unwrap();
    wait_artifact(&backend, &format!("nautobot/git/{slug}/current.json"), commit).await?;
    let mut out = Vec::new();
    assert_eq!(verify(&worker, storage.settings.clone(), false, &mut out).await?, 0);
    Ok(())
}

/// A worker that stopped while building an artifact leaves it unnamed: the repository's next sync, though it
/// finds the live commit up to date, builds and names it.
async fn an_artifact_never_named_is_built_by_the_next_sync(env: &TestEnv, storage: &Storage, slug: &str) -> Result<()> {
    let backend = storage.backend(&storage.stores()[0]);
    let key = format!("nautobot/git/{slug}/current.json");
    let mut current: Value = serde_json::from_slice(&backend.get(&key).await?.unwrap())?;
    let (artifact, commit) = (current["artifact"].as_str().unwrap().to_owned(), current["commit"].clone());
    backend.delete(&artifact).await?;
    current["artifact"] = Value::Null;
    current["sha256"] = Value::Null;
    backend.put(&key, serde_json::to_vec(&current)?, "application/json", None, u64::MAX).await?;
    env.pool
        .get()
        .await?
        .execute(
            "UPDATE git_repository SET artifacts = (SELECT jsonb_agg(a || '{\"sha256\": null}')
                                                      FROM jsonb_array_elements(artifacts) a)
              WHERE slug = $1 AND deleted_at IS NULL",
            &[&slug],
        )
        .await?;
    let view = env.wait_job(env.sync(&format!("Stored {}", env.id)).await?).await?;
    assert_log(&view, "info", "main", "already up to date");
    let current = wait_artifact(&backend, &key, commit.as_str().unwrap()).await?;
    assert_eq!(current["artifact"], artifact.as_str());
    assert!(backend.get(&artifact).await?.is_some(), "the artifact was built again");
    Ok(())
}

/// Waits (bounded) until the pointer names `commit` and an artifact for it; returns the pointer.
async fn wait_artifact(backend: &gitfleet_worker::storage::Backend, key: &str, commit: &str) -> Result<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let current: Value = serde_json::from_slice(&backend.get(key).await?.unwrap_or_default()).unwrap_or_default();
        assert_eq!(current["commit"], commit, "{key}: {current}");
        if current["artifact"].is_string() {
            assert!(current["artifact"].as_str().unwrap().contains(commit), "{current}");
            return Ok(current);
        }
        assert!(current["artifact"].is_null() && current["sha256"].is_null(), "{current}");
        assert!(std::time::Instant::now() < deadline, "no artifact named in {key} after 30 s: {current}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Delete without retention removes the repository's objects from every store (blobs stay for gc); gc then
/// removes the blobs no manifest references.
async fn delete_and_gc(env: &TestEnv, storage: &Storage, slug: &str) -> Result<()> {
    let name = format!("Stored {}", env.id);
    let view =
        env.wait_job(crate::support::accepted(commands::delete(&env.pool, &name, RequestedBy::cli()).await?)?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_log(&view, "info", "main", "stored objects of");
    for store in 0..2 {
        let left = keys(storage, store).await?;
        assert!(left.iter().all(|k| !k.contains(&format!("/{slug}/"))), "{left:#?}");
        assert!(left.iter().any(|k| k.contains("/blobs/")), "blobs stay until gc");
    }
    let (kept, removed) = storage.gc().await?;
    assert_eq!((kept, removed), (0, 6), "3 + 1 default blobs and 2 job blobs");
    for store in 0..2 {
        assert!(keys(storage, store).await?.iter().all(|k| !k.contains("/blobs/")));
    }
    Ok(())
}

/// A multipart upload stopped half way (its sync ended, as when the records fail while storage is staged beside
/// them) is aborted: no parts stay behind in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_stopped_half_way_leaves_no_parts() -> Result<()> {
    let env = TestEnv::new().await?;
    let client = raw_client(&env).await?;
    let bucket = format!("stopped-{}", env.id);
    create_buckets(&client, &[&bucket]).await?;
    let settings = s3_settings(&env, s3_port(), &bucket, &bucket)?;
    let storage = Storage::new(settings.clone()).await;
    let backend = storage.backend(&settings.default);
    let uploads =
        async || -> Result<usize> { Ok(client.list_multipart_uploads().bucket(&bucket).send().await?.uploads().len()) };
    // A part is up only once the worker holds the upload's id (an upload stopped before its creation is answered
    // cannot be named, hence aborted: a bucket's lifecycle rule is what removes those).
    let parts_up = async || -> Result<usize> {
        let listed = client.list_multipart_uploads().bucket(&bucket).send().await?;
        let Some(upload) = listed.uploads().first() else { return Ok(0) };
        let (key, id) = (upload.key().unwrap_or_default(), upload.upload_id().unwrap_or_default());
        Ok(client.list_parts().bucket(&bucket).key(key).upload_id(id).send().await?.parts().len())
    };
    let body: Vec<u8> = (0..48 * 1024 * 1024).map(|n: u32| (n % 251) as u8).collect();
    {
        let put = backend.put("nautobot/big.bin", body, "application/octet-stream", None, 5 * 1024 * 1024);
        tokio::pin!(put);
        // Until a part of the upload is in the bucket (up to a deadline), then stop it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            tokio::select! {
                done = &mut put => anyhow::bail!("the upload ended before it could be stopped: {done:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                    if parts_up().await? > 0 {
                        break;
                    }
                    anyhow::ensure!(std::time::Instant::now() < deadline, "the upload never began");
                }
            }
        }
        // The upload is under way: dropping it here stops it.
    }
    // The abort runs in the background: wait for it, up to a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while uploads().await? > 0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the stopped upload's parts are still in the bucket");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn create_buckets(client: &Client, names: &[&str]) -> Result<()> {
    for name in names {
        client.create_bucket().bucket(*name).send().await?;
    }
    Ok(())
}

async fn public_read(client: &Client, bucket: &str, key: &str) -> Result<bool> {
    let acl = client.get_object_acl().bucket(bucket).key(key).send().await?;
    Ok(acl.grants().iter().any(|g| {
        g.grantee().and_then(|g| g.uri()).is_some_and(|uri| uri.ends_with("/global/AllUsers"))
            && g.permission().is_some_and(|p| p.as_str() == "READ")
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_layout_increments_acls_multipart_delete_and_gc() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let client = raw_client(&env).await?;
    let (bucket, jobs_bucket) = (format!("gf-{}", env.id), format!("gf-{}-jobs", env.id));
    create_buckets(&client, &[&bucket, &jobs_bucket]).await?;
    // The workers reach S3 through a proxy that records every request.
    let (port, requests, proxy) = counting_http_proxy(s3_port()).await?;
    let settings = s3_settings(&env, port, &bucket, &jobs_bucket)?;
    let (slug, storage) = layout_and_increments(&mut env, settings, Some(&requests)).await?;

    // ACLs as sent: public-read on the default bucket, private in the jobs bucket.
    let default_blob = keys(&storage, 0).await?.into_iter().find(|k| k.contains("/blobs/")).unwrap();
    assert!(public_read(&client, &bucket, &default_blob).await?, "default ACL public-read");
    let job_blobs: Vec<String> = keys(&storage, 1).await?.into_iter().filter(|k| k.contains("/blobs/")).collect();
    for key in &job_blobs {
        assert!(!public_read(&client, &jobs_bucket, key).await?, "jobs are private");
    }
    // The 6 MiB file went up in parts (an ETag of a multipart upload ends in -<parts>).
    let mut multipart = 0;
    for key in &job_blobs {
        let head = client.head_object().bucket(&jobs_bucket).key(key).send().await?;
        if head.content_length().unwrap_or(0) > 5 * 1024 * 1024 {
            assert!(head.e_tag().unwrap_or_default().contains("-2"), "{:?}", head.e_tag());
            multipart += 1;
        }
    }
    assert_eq!(multipart, 1);
    delete_and_gc(&env, &storage, &slug).await?;
    proxy.abort();
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_backend_has_the_same_layout() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let root = env.tmp.path().join("files");
    let settings = StorageSettings::from_vars(vars(&[
        ("AWS_LOCATION", "nautobot".to_owned()),
        ("GITFLEET_STORAGE_ROOT", root.display().to_string()),
        ("GITFLEET_STORAGES", r#"{"extras.job": {"bucket_name": "jobs", "upload_to": "software_images"}}"#.to_owned()),
    ]))?;
    let (slug, storage) = layout_and_increments(&mut env, settings, None).await?;
    assert!(root.join(format!("default/nautobot/git/{slug}/current.json")).is_file());
    assert!(
        root.join(format!("jobs/nautobot/software_images/{slug}/current.json")).is_file(),
        "an override's bucket is a folder"
    );
    repair_a_removed_blob(&env, &storage, &root, &slug).await?;
    an_artifact_never_named_is_built_by_the_next_sync(&env, &storage, &slug).await?;
    delete_and_gc(&env, &storage, &slug).await?;
    env.teardown().await
}

/// S3 goes away mid-sync: the sync fails (after its retries and the delivery limit) and the previous commit stays
/// live in PostgreSQL and in S3; when S3 is back, the next sync succeeds. Retention keeps a deleted repository's
/// objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_keeps_the_last_good_state_and_retention_keeps_objects() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let client = raw_client(&env).await?;
    let (bucket, jobs_bucket) = (format!("gf-{}", env.id), format!("gf-{}-jobs", env.id));
    create_buckets(&client, &[&bucket, &jobs_bucket]).await?;
    let (port, down, proxy) = switch_proxy(s3_port()).await?;
    let mut settings = s3_settings(&env, port, &bucket, &jobs_bucket)?;
    settings.retention_days = 7;
    env.storage = settings.clone();
    let remote = Remote::new(env.tmp.path(), "outage")?;
    let first =
        remote.commit("one", &[("config_contexts/a.yaml", "---\n_metadata:\n  name: a\n  weight: 1\nv: 1\n")])?;
    env.start_fleet(1);
    let name = format!("Outage {}", env.id);
    let view = create_and_wait(&env, &name, &remote, vec!["extras.configcontext".into()]).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let slug = env.repo(view.repository_id.unwrap()).await?.slug;
    let pointer = format!("nautobot/git/{slug}/current.json");
    let read_pointer = || async {
        let body = client.get_object().bucket(&bucket).key(&pointer).send().await?.body.collect().await?.into_bytes();
        Ok::<Value, anyhow::Error>(serde_json::from_slice(&body)?)
    };

    down.send(true)?;
    let second =
        remote.commit("two", &[("config_contexts/a.yaml", "---\n_metadata:\n  name: a\n  weight: 1\nv: 2\n")])?;
    let failed = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(failed.status, "FAILURE");
    let message = failed.result.clone().unwrap()["exc_message"].as_str().unwrap().to_owned();
    assert!(message.contains("storage unavailable"), "{message}");
    let repo = env.repo(view.repository_id.unwrap()).await?;
    assert_eq!(repo.head_str(), first, "the previous commit stays live in PostgreSQL");
    assert_eq!(read_pointer().await?["commit"], first.as_str(), "and in S3");

    down.send(false)?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(read_pointer().await?["commit"], second.as_str());

    // Retention: the deleted repository's objects stay.
    let deleted =
        env.wait_job(crate::support::accepted(commands::delete(&env.pool, &name, RequestedBy::cli()).await?)?).await?;
    assert_log(&deleted, "info", "main", "are kept for 7 days");
    assert_eq!(read_pointer().await?["commit"], second.as_str());
    // `worker storage gc` within the retention keeps them; once the deletion is older than it, removes them.
    let worker = env.worker_settings("gc");
    let gc_storage = StorageSettings { retention_days: 7, ..s3_settings(&env, s3_port(), &bucket, &jobs_bucket)? };
    let mut out = Vec::new();
    gitfleet_worker::storage::commands::gc(&worker, gc_storage.clone(), &mut out).await?;
    assert!(String::from_utf8_lossy(&out).starts_with("removed 0 objects"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(read_pointer().await?["commit"], second.as_str());
    let client_db = env.pool.get().await?;
    client_db
        .execute("UPDATE git_repository SET deleted_at = now() - interval '8 days' WHERE slug = $1", &[&slug])
        .await?;
    drop(client_db);
    let mut out = Vec::new();
    gitfleet_worker::storage::commands::gc(&worker, gc_storage, &mut out).await?;
    let printed = String::from_utf8_lossy(&out).into_owned();
    assert!(printed.contains("blobs: 0 referenced, 2 removed"), "{printed}");
    assert!(read_pointer().await.is_err(), "the pointer is gone after the retention");
    proxy.abort();
    env.teardown().await
}

/// No keys in the settings: the standard AWS chain finds them in the environment of a worker process; without
/// them the sync fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_credentials_from_the_environment_chain() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let client = raw_client(&env).await?;
    let bucket = format!("gf-{}", env.id);
    create_buckets(&client, &[&bucket]).await?;
    let remote = Remote::new(env.tmp.path(), "chain")?;
    remote.commit("one", &[("config_contexts/a.yaml", "---\n_metadata:\n  name: a\n  weight: 1\nv: 1\n")])?;
    env.amqp.delivery_limit = 1;
    env.start_relay();
    let common = |with_keys: bool| {
        let mut vars = vec![
            ("AWS_STORAGE_BUCKET_NAME", bucket.clone()),
            ("AWS_S3_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3_port())),
            ("AWS_S3_REGION_NAME", "us-east-1".to_owned()),
            ("AWS_S3_ADDRESSING_STYLE", "path".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_CONFIG_FILE", "/nonexistent".to_owned()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_owned()),
            ("AWS_MAX_ATTEMPTS", "1".to_owned()),
            ("GITFLEET_TRANSIENT_RETRIES", "1".to_owned()),
        ];
        if with_keys {
            vars.push(("AWS_ACCESS_KEY_ID", "chain-key".to_owned()));
            vars.push(("AWS_SECRET_ACCESS_KEY", "chain-secret".to_owned()));
        }
        vars
    };
    let mut worker = env.spawn_worker_process("chain", &common(true))?;
    let name = format!("Chain {}", env.id);
    let view = create_and_wait(&env, &name, &remote, vec!["extras.configcontext".into()]).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let slug = env.repo(view.repository_id.unwrap()).await?.slug;
    client.head_object().bucket(&bucket).key(format!("git/{slug}/current.json")).send().await?;
    worker.kill();

    let _keyless = env.spawn_worker_process("keyless", &common(false))?;
    remote.commit("two", &[("config_contexts/a.yaml", "---\n_metadata:\n  name: a\n  weight: 1\nv: 2\n")])?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "FAILURE", "{:#?}", view.logs);
    let message = view.result.clone().unwrap()["exc_message"].as_str().unwrap_or_default().to_owned();
    assert!(message.to_lowercase().contains("credential"), "{message}");
    env.teardown().await
}

/// A worker that stores somewhere else re-stores the live commit at the next sync, even with nothing new in git.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_storage_gets_the_live_commit_at_the_next_sync() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let remote = Remote::new(env.tmp.path(), "moved")?;
    let head =
        remote.commit("one", &[("config_contexts/a.yaml", "---\n_metadata:\n  name: a\n  weight: 1\nv: 1\n")])?;
    env.start_relay();
    let (first, second) = (env.tmp.path().join("first"), env.tmp.path().join("second"));
    let mut worker = env.spawn_worker_process("first", &[("GITFLEET_STORAGE_ROOT", first.display().to_string())])?;
    let name = format!("Moved {}", env.id);
    let view = create_and_wait(&env, &name, &remote, vec!["extras.configcontext".into()]).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let slug = env.repo(view.repository_id.unwrap()).await?.slug;
    let pointer = |root: &std::path::Path| root.join(format!("default/git/{slug}/current.json"));
    assert!(pointer(&first).is_file());
    worker.kill();

    let _moved = env.spawn_worker_process("second", &[("GITFLEET_STORAGE_ROOT", second.display().to_string())])?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let current: Value = serde_json::from_slice(&std::fs::read(pointer(&second))?)?;
    assert_eq!(current["commit"], head.as_str());
    env.teardown().await
}

/// An S3 endpoint that accepts connections and never answers: each request attempt is cut at
/// `GITFLEET_STORAGE_TIMEOUT_SECS` and the fault is transient (retried through the schedule), so a hung endpoint
/// never holds a sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_s3_endpoint_is_a_transient_fault_after_the_timeout() -> Result<()> {
    // Accepts and holds connections, silently, until the test ends.
    let (port, holder) = crate::support::silent_server().await?;
    let settings = StorageSettings::from_vars(vars(&[
        ("AWS_STORAGE_BUCKET_NAME", "hung".into()),
        ("AWS_S3_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_S3_REGION_NAME", "us-east-1".into()),
        ("AWS_S3_ADDRESSING_STYLE", "path".into()),
        ("AWS_S3_ACCESS_KEY_ID", "test".into()),
        ("AWS_S3_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_MAX_ATTEMPTS", "2".into()),
        ("GITFLEET_STORAGE_TIMEOUT_SECS", "1".into()),
    ]))?;
    let storage = Storage::new(settings).await;
    let started = std::time::Instant::now();
    let report = tempfile::NamedTempFile::new()?;
    std::fs::write(report.path(), b"{}")?;
    let put = storage.put_report(uuid::Uuid::new_v4(), report.path());
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), put).await?.expect_err("no answer");
    let took = started.elapsed();
    assert!(err.is_transient(), "{err}");
    assert!(took < std::time::Duration::from_secs(10), "cut at the timeout, not hung: {took:?}");
    // Without the setting the default applies; a zero is refused.
    let zero = StorageSettings::from_vars(vars(&[
        ("AWS_STORAGE_BUCKET_NAME", "hung".into()),
        ("GITFLEET_STORAGE_TIMEOUT_SECS", "0".into()),
    ]));
    assert!(zero.is_err());
    holder.abort();
    Ok(())
}
