//! A repository synced end to end: create, new commits, tags, commits, transports and failures.

use anyhow::Result;
use clap::Parser;
use gitfleet_producer::cli::{self, Cli};
use tokio_util::sync::CancellationToken;

use crate::support::git::{Remote, git_daemon, git_http};
use crate::support::{TestEnv, assert_log};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_sync_follows_the_branch_head() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    let first = remote.commit("first", &[("README.md", "one")])?;
    let name = format!("Data {}", env.id);

    let view = env.wait_job(env.create(&name, &remote.file_url(), "main").await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.name, "Git Repository: Sync");
    let repo = env.repo(view.repository_id.unwrap()).await?;
    assert_eq!(repo.head_str(), first);
    assert_eq!(repo.applied_version, 1);
    // date_done is when the outcome was committed: after every log line, not at the transaction's start.
    let last_line = view.logs.iter().map(|l| l.created).max().unwrap();
    assert!(view.date_done.unwrap() >= last_line, "done {:?} before the last line {last_line:?}", view.date_done);

    // The log catalogue of spec f.3, as far as it applies before data types exist.
    assert_log(&view, "info", "initialization", "Running job");
    assert_log(&view, "info", "run", &format!("Creating/refreshing local copy of Git repository \"{name}\"..."));
    assert_log(&view, "info", "ensure_git_repository", "Repository successfully refreshed");
    assert_log(
        &view,
        "info",
        "ensure_git_repository",
        &format!("{name}: the current Git repository hash is \"{first}\""),
    );
    assert_log(&view, "info", "main", &format!("Refreshing data provided by {name}..."));
    for data_type in ["config context schemas", "config contexts", "jobs", "export templates", "graphql queries"] {
        assert_log(&view, "info", "main", &format!("Refreshing {data_type}..."));
    }
    assert_log(&view, "info", "main", &format!("Data refresh from {name} complete!"));
    assert_log(&view, "success", "post_run", "Job completed");
    assert_eq!((view.info_log_count, view.success_log_count, view.error_log_count), (13, 1, 0));
    assert!(view.date_started.is_some() && view.date_done.is_some());

    // The mirror is bare: objects and refs, no work tree.
    let mirror = env.git_root().join(&repo.slug);
    assert!(mirror.join("objects").is_dir() && !mirror.join(".git").exists() && !mirror.join("README.md").exists());

    let second = remote.commit("second", &[("README.md", "two")])?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(env.repo(repo.id).await?.head_str(), second);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_branch_and_empty_remote_fail_with_nautobots_messages() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("first", &[("README.md", "one")])?;
    let empty = Remote::new(env.tmp.path(), "empty")?;

    let missing = format!("Missing {}", env.id);
    let view = env.wait_job(env.create(&missing, &remote.file_url(), "does-not-exist").await?).await?;
    assert_eq!(view.status, "FAILURE");
    let expected = "does-not-exist does not appear to be an existing branch, tag, or possible commit hash. Please \
                    check your upstream repository and the data you are using.";
    assert_log(&view, "error", "ensure_git_repository", expected);
    assert_log(&view, "info", "main", "Changes to database records have been reverted.");
    let result = view.result.clone().unwrap();
    assert_eq!(result["exc_type"], "BranchDoesNotExist");
    assert_eq!(result["exc_message"], expected);
    assert_eq!(view.error_log_count, 1);
    assert_eq!(env.repo(view.repository_id.unwrap()).await?.head_str(), "", "a failed sync sets no head");

    let view = env.wait_job(env.create(&format!("Empty {}", env.id), &empty.file_url(), "main").await?).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(
        &view,
        "error",
        "ensure_git_repository",
        "Please create branch 'main' in upstream and try again. If this is a new repo, please add a commit before \
         syncing.",
    );

    // `producer job-result show` exits 1 on FAILURE and prints the log.
    let args = [
        "producer",
        "--database-url",
        &env.database.url,
        "--database-schema",
        &env.database.schema,
        "job-result",
        "show",
        &view.id.to_string(),
        "--wait",
    ];
    let mut out = Vec::new();
    let code = cli::run(Cli::parse_from(args), &env.pool, CancellationToken::new(), &mut out).await?;
    let text = String::from_utf8(out)?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("status:     FAILURE") && text.contains("If this is a new repo"), "{text}");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_commit_hashes_as_branch() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    let tagged = remote.commit("first", &[("a.txt", "1")])?;
    remote.tag("valid-files")?;
    let tip = remote.commit("second", &[("a.txt", "2")])?;
    let url = remote.file_url();
    let id = &env.id;

    let cases = [
        ("valid-files", tagged.as_str(), "Tag"),
        (&tagged[..7], tagged.as_str(), "Commit"),
        (&tagged[..4], tagged.as_str(), "Commit"),
        (tagged.as_str(), tagged.as_str(), "Commit"),
        ("main", tip.as_str(), "Branch"),
    ];
    for (n, (branch, head, kind)) in cases.iter().enumerate() {
        let view = env.wait_job(env.create(&format!("Case {n} {id}"), &url, branch).await?).await?;
        assert_eq!(view.status, "SUCCESS", "{branch}: {:#?}", view.logs);
        let result = view.result.unwrap();
        assert_eq!(
            (result["current_head"].as_str(), result["ref_kind"].as_str()),
            (Some(*head), Some(*kind)),
            "{branch}"
        );
        assert_eq!(env.repo(view.repository_id.unwrap()).await?.head_str(), *head);
    }

    // One to three hex characters are never a commit, even when a commit starts with them.
    for short in [&tagged[..1], &tagged[..2], &tagged[..3]] {
        let view = env.wait_job(env.create(&format!("Short {short} {id}"), &url, short).await?).await?;
        assert_eq!(view.status, "FAILURE", "{short}");
        assert_log(
            &view,
            "error",
            "ensure_git_repository",
            &format!("{short} does not appear to be an existing branch"),
        );
        assert_eq!(view.result.unwrap()["exc_type"], "BranchDoesNotExist");
    }
    // Four or more hex characters that match nothing: git's own error, as Nautobot propagates it.
    let view = env.wait_job(env.create(&format!("Unknown {id}"), &url, "0000abcd").await?).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(&view, "error", "ensure_git_repository", "pathspec '0000abcd' did not match any file(s) known to git");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_and_http_remotes() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "data")?;
    let head = remote.commit("first", &[("config_contexts/a.yaml", "x: 1")])?;
    let daemon = git_daemon(&served).await?;
    let http = git_http(&served, &env.tmp.path().join("lighttpd")).await?;

    let urls =
        [format!("git://127.0.0.1:{}/data.git", daemon.port), format!("http://127.0.0.1:{}/git/data.git", http.port)];
    for (n, url) in urls.iter().enumerate() {
        let view = env.wait_job(env.create(&format!("Transport {n} {}", env.id), url, "main").await?).await?;
        assert_eq!(view.status, "SUCCESS", "{url}: {:#?}", view.logs);
        assert_eq!(env.repo(view.repository_id.unwrap()).await?.head_str(), head, "{url}");
    }
    // A new commit over the same transports: an incremental fetch into the existing mirrors.
    let next = remote.commit("second", &[("config_contexts/a.yaml", "x: 2")])?;
    for n in 0..urls.len() {
        let view = env.wait_job(env.sync(&format!("Transport {n} {}", env.id)).await?).await?;
        assert_eq!(view.status, "SUCCESS");
        assert_eq!(view.result.unwrap()["current_head"], next.as_str());
    }
    drop((daemon, http));
    env.teardown().await
}

/// Spec b.9: at start-up a worker removes mirrors of repositories that no longer exist, and keeps the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_mirrors_are_removed_at_start_up() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    remote.commit("first", &[("README.md", "one")])?;
    let view = env.wait_job(env.create(&format!("Kept {}", env.id), &remote.file_url(), "main").await?).await?;
    assert_eq!(view.status, "SUCCESS");
    let kept = env.git_root().join(env.repo(view.repository_id.unwrap()).await?.slug);
    let orphan = env.git_root().join("no_such_repository");
    std::fs::create_dir_all(orphan.join("objects"))?;
    env.start_worker("restarted");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while orphan.exists() {
        assert!(std::time::Instant::now() < deadline, "orphan mirror not removed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(kept.is_dir(), "a live repository's mirror stays");
    env.teardown().await
}

/// A repository whose mirror would pass the configured size fails with a clear message, and leaves no mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_over_the_size_limit_fails_the_sync() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.max_mirror_bytes = 40_000;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "big")?;
    let noise = crate::support::noise(0x2545_f491_4f6c_dd1d_u64, 10_000);
    remote.commit("big", &[("blob.txt", &noise)])?;
    let view = env.wait_job(env.create(&format!("Big {}", env.id), &remote.file_url(), "main").await?).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(&view, "error", "ensure_git_repository", "over the limit of 40000 bytes (GITFLEET_MAX_MIRROR_BYTES)");
    assert_eq!(view.result.unwrap()["exc_type"], "MirrorTooLarge");
    let slug = env.repo(view.repository_id.unwrap()).await?.slug;
    assert!(!env.git_root().join(slug).exists());
    env.teardown().await
}

/// A server that accepts connections and never answers: the sync is cut off at the repository's git timeout and
/// reported, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_hits_the_repository_timeout() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    // Accepts and holds connections, silently, until the test ends.
    let (port, server) = crate::support::silent_server().await?;
    // Over HTTP (libgit2's transport) and git:// (the worker's own).
    for scheme in ["http", "git"] {
        let new = gitfleet_producer::commands::NewRepo {
            name: format!("Stalled {scheme} {}", env.id),
            remote_url: format!("{scheme}://127.0.0.1:{port}/stalled.git"),
            git_timeout_secs: Some(2),
            ..Default::default()
        };
        let job = gitfleet_producer::commands::create(&env.pool, new, gitfleet_shared::event::RequestedBy::cli())
            .await?
            .job_result_id()
            .unwrap();
        let view = env.wait_job(job).await?;
        assert_eq!(view.status, "FAILURE", "{scheme}");
        assert_log(&view, "error", "ensure_git_repository", "Fetching from the remote timed out after 2 seconds");
        assert_eq!(view.result.clone().unwrap()["exc_type"], "TimeoutError");
        let took = view.date_done.unwrap() - view.date_started.unwrap();
        assert!(took.num_milliseconds() >= 2000 && took.num_seconds() < 10, "{scheme}: cut off at the timeout: {took}");
    }
    server.abort();
    env.teardown().await
}

/// A push event whose target commit is already live needs no fetch: it succeeds even with the remote gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_commit_that_is_already_live_needs_no_fetch() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let remote = Remote::new(env.tmp.path(), "data")?;
    let head = remote.commit("first", &[("README.md", "one")])?;
    let name = format!("Pushed {}", env.id);
    assert_eq!(env.wait_job(env.create(&name, &remote.file_url(), "main").await?).await?.status, "SUCCESS");
    std::fs::rename(&remote.bare, env.tmp.path().join("moved-away.git"))?;

    let target = gitfleet_shared::repo::CommitId::parse(head.clone())?;
    let job = gitfleet_producer::commands::sync(
        &env.pool,
        &name,
        gitfleet_shared::event::EventKind::Sync,
        Some(target),
        gitfleet_shared::event::RequestedBy::parse("webhook:git.example.net")?,
    )
    .await?
    .job_result_id()
    .unwrap();
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_log(&view, "info", "main", "nothing to fetch or reload");
    assert_eq!(view.result.unwrap()["fetched"], false);

    // Without a target commit the worker must ask the remote, which is gone now.
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "FAILURE");
    env.teardown().await
}
