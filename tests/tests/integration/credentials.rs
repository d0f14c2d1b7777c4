//! Secrets groups: credentials only through git2's callback, failing fast and never written anywhere.

use anyhow::Result;
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::RequestedBy;

use crate::support::git::{Remote, git_http_with_auth};
use crate::support::{TestEnv, assert_log};

const TOKEN: &str = "tok3n-s3cr3t-value-0042";
/// A GitHub-style token, sent alone as the user name.
const GITHUB_TOKEN: &str = "ghp_t0ken0nly0042";
/// A GitLab token, sent with the user `oauth2`.
const GITLAB_TOKEN: &str = "glpat-0auth2-0042";

fn group(env: &TestEnv, name: &str, username: &str, token: &str) -> Result<()> {
    let dir = env.tmp.path().join("secrets").join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("username"), format!("{username}\n"))?;
    std::fs::write(dir.join("token"), format!("{token}\n"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_http_remote_with_secrets_groups() -> Result<()> {
    let mut env = TestEnv::new().await?;
    group(&env, "private-git", "alice", TOKEN)?;
    group(&env, "wrong-token", "alice", "not-the-token")?;
    group(&env, "gitlab", "oauth2", GITLAB_TOKEN)?;
    let github = env.tmp.path().join("secrets").join("github");
    std::fs::create_dir_all(&github)?;
    std::fs::write(github.join("token"), GITHUB_TOKEN)?;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "private")?;
    let head = remote.commit("first", &[("README.md", "private")])?;
    let users = [("alice", TOKEN), ("oauth2", GITLAB_TOKEN), (GITHUB_TOKEN, "")];
    let http = git_http_with_auth(&served, &env.tmp.path().join("lighttpd"), &users).await?;
    env.start_fleet(1);
    let url = format!("http://127.0.0.1:{}/git/private.git", http.port);

    let create = |name: &str, group: Option<&str>| NewRepo {
        name: format!("{name} {}", env.id),
        remote_url: url.clone(),
        secrets_group: group.map(str::to_owned),
        ..NewRepo::default()
    };
    let mut jobs = Vec::new();
    for (name, group) in [
        ("Good", Some("private-git")),
        ("Anonymous", None),
        ("Wrong", Some("wrong-token")),
        ("Missing", Some("no-such-group")),
        ("GitHub", Some("github")),
        ("GitLab", Some("gitlab")),
    ] {
        jobs.push(commands::create(&env.pool, create(name, group), RequestedBy::cli()).await?.job_result_id().unwrap());
    }
    let good = env.wait_job(jobs[0]).await?;
    assert_eq!(good.status, "SUCCESS", "{:#?}", good.logs);
    assert_eq!(good.result.clone().unwrap()["current_head"], head.as_str());

    let anonymous = env.wait_job(jobs[1]).await?;
    assert_eq!(anonymous.status, "FAILURE");
    assert_log(&anonymous, "error", "ensure_git_repository", "authentication required");
    let wrong = env.wait_job(jobs[2]).await?;
    assert_eq!(wrong.status, "FAILURE");
    assert_log(&wrong, "error", "ensure_git_repository", "authentication failed");
    let missing = env.wait_job(jobs[3]).await?;
    assert_eq!(missing.status, "FAILURE");
    assert_log(
        &missing,
        "error",
        "ensure_git_repository",
        "The secrets_group \"no-such-group\" is not configured on this worker: set GITFLEET_SECRETS_NO_SUCH_GROUP_TOKEN",
    );
    assert_eq!(missing.result.clone().unwrap()["exc_type"], "SecretError");
    // Provider conventions: a GitHub token alone (as the user name), a GitLab token with the user `oauth2`.
    for job in &jobs[4..] {
        let view = env.wait_job(*job).await?;
        assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    }
    for view in [&anonymous, &wrong, &missing] {
        let (started, done) = (view.date_started.unwrap(), view.date_done.unwrap());
        assert!((done - started).num_seconds() < 10, "failed fast");
    }

    // The token is nowhere: not in the mirrors, not in any JobResult or log entry, not in the outbox.
    for (entry, bytes) in read_all(&env.git_root())? {
        for secret in [TOKEN, GITHUB_TOKEN, GITLAB_TOKEN] {
            assert!(!contains(&bytes, secret.as_bytes()), "token found in {}", entry.display());
        }
    }
    let stored = everything_stored(&env).await?;
    for secret in [TOKEN, "not-the-token", GITHUB_TOKEN, GITLAB_TOKEN] {
        assert!(!stored.contains(secret), "a token reached the database");
    }
    drop(http);
    env.teardown().await
}

/// Every text the worker stored: log entries, JobResults, the outbox and remote URLs.
pub(crate) async fn everything_stored(env: &TestEnv) -> Result<String> {
    let client = env.pool.get().await?;
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT string_agg(message, ' ') FROM job_log_entry), '') ||
                    coalesce((SELECT string_agg(coalesce(result::text, '') || coalesce(traceback, ''), ' ') FROM job_result), '') ||
                    coalesce((SELECT string_agg(payload::text, ' ') FROM outbox), '') ||
                    coalesce((SELECT string_agg(remote_url, ' ') FROM git_repository), '')",
            &[],
        )
        .await?
        .get(0))
}

/// Every file under `dir` with its bytes, but those gone since the walk found them: the artifact a sync builds
/// after its JobResult is written to a temporary file beside the mirrors and removed once stored.
pub(crate) fn read_all(dir: &std::path::Path) -> Result<Vec<(std::path::PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for path in walk(dir) {
        match std::fs::read(&path) {
            Ok(bytes) => out.push((path, bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(out)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A self-signed HTTPS remote: refused by default with a certificate error; accepted with `GIT_SSL_NO_VERIFY=1`;
/// accepted properly with a CA bundle that issued it, and refused with one that did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_https_remote() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "tls")?;
    let head = remote.commit("first", &[("README.md", "tls")])?;
    let (cert, key) = crate::support::git::self_signed(&tmp.path().join("pki"))?;
    let (other_cert, _) = crate::support::git::self_signed(&tmp.path().join("other-pki"))?;
    let https =
        crate::support::git::git_http_server(&served, &tmp.path().join("lighttpd"), &[], Some((&cert, &key))).await?;
    let url = format!("https://127.0.0.1:{}/git/tls.git", https.port);

    let cases: [(bool, Option<&std::path::Path>, Option<&str>); 4] = [
        (false, None, Some("certificate")),
        (true, None, None),
        (false, Some(&cert), None),
        (false, Some(&other_cert), Some("not issued by the configured CA bundle")),
    ];
    for (no_verify, bundle, failure) in cases {
        let mut env = TestEnv::new().await?;
        env.ssl_no_verify = no_verify;
        env.ca_bundle = bundle.map(std::path::Path::to_owned);
        env.start_fleet(1);
        let view = env.wait_job(env.create(&format!("TLS {}", env.id), &url, "main").await?).await?;
        match failure {
            None => {
                assert_eq!(view.status, "SUCCESS", "{no_verify} {bundle:?}: {:#?}", view.logs);
                assert_eq!(view.result.clone().unwrap()["current_head"], head.as_str());
            }
            Some(needle) => {
                assert_eq!(view.status, "FAILURE", "{no_verify} {bundle:?}");
                assert_log(&view, "error", "ensure_git_repository", needle);
            }
        }
        env.teardown().await?;
    }
    drop(https);
    Ok(())
}
