//! `/hooks/{provider}` over real HTTP: each provider's signature scheme computed here with its documented algorithm
//! over payloads shaped like its documented examples; a GitHub push that ends in a worker's SUCCESS at the pushed
//! commit; redeliveries, bad signatures, oversized bodies and floods refused as they should be.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::git::{Remote, git_daemon};
use crate::support::{TestEnv, accepted};

const SECRET: &str = "It's a Secret to Everybody";

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Writes the shared webhook secret where `start_api` reads secrets groups (`<dir>/webhooks/token`).
fn write_secret(env: &TestEnv) -> Result<()> {
    let dir = env.tmp.path().join("secrets/webhooks");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), format!("{SECRET}\n"))?;
    Ok(())
}

async fn github(http: &Client, base: &str, event: &str, delivery: &str, body: &Value) -> Result<(StatusCode, Value)> {
    let bytes = serde_json::to_vec(body)?;
    let response = http
        .post(format!("{base}/hooks/github"))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", format!("sha256={}", hmac_hex(SECRET, &bytes)))
        .header("Content-Type", "application/json")
        .body(bytes)
        .send()
        .await?;
    Ok((response.status(), response.json().await.unwrap_or(Value::Null)))
}

fn github_push(clone_url: &str, branch: &str, after: &str) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"), "before": "0".repeat(40), "after": after, "created": false,
        "deleted": false, "forced": false,
        "repository": {"id": 1, "name": "hooked", "full_name": "acme/hooked", "clone_url": clone_url,
            "ssh_url": "git@github.example:acme/hooked.git", "html_url": "https://github.example/acme/hooked"},
        "pusher": {"name": "octocat"}, "head_commit": {"id": after, "message": "change"},
    })
}

async fn job_count(env: &TestEnv) -> Result<i64> {
    Ok(env.pool.get().await?.query_one("SELECT count(*) FROM job_result", &[]).await?.get(0))
}

/// GitHub: ping, a push to a loopback remote synced by a worker at the pushed commit, its redelivery a no-op, a
/// push nothing follows, a deleted branch; bad, missing and other secrets' signatures 401; an unknown provider 404;
/// a body over 5 MiB 413; every delivery listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_push_syncs_the_pushed_commit() -> Result<()> {
    let mut env = TestEnv::new().await?;
    write_secret(&env)?;
    env.start_fleet(1);
    let base = env.start_api().await?;
    let http = Client::builder().timeout(Duration::from_secs(30)).build()?;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "hooked")?;
    remote.commit("first", &[("config_contexts/a.yaml", "_metadata: {name: A}\nx: 1\n")])?;
    let daemon = git_daemon(&served).await?;
    let url = format!("git://127.0.0.1:{}/hooked.git", daemon.port);
    let first = env.create("Hooked", &url, "main").await?;
    assert_eq!(env.wait_job(first).await?.status, "SUCCESS");

    let (status, body) =
        github(&http, &base, "ping", "d-ping", &json!({"zen": "Keep it logically awesome.", "hook_id": 1})).await?;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::OK, Some("pong")));

    let head = remote.commit("second", &[("config_contexts/a.yaml", "_metadata: {name: A}\nx: 2\n")])?;
    // The payload names the repository by another form of its URL (without `.git`).
    let push = github_push(&format!("git://127.0.0.1:{}/hooked", daemon.port), "main", &head);
    let (status, body) = github(&http, &base, "push", "d-1", &push).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["matched"], json!(["Hooked"]));
    let job: Uuid = body["job_result_ids"][0].as_str().context("a JobResult")?.parse()?;
    let view = env.wait_job(job).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.requested_by.as_deref(), Some("webhook:github"));
    assert_eq!(env.repo(view.repository_id.context("repo")?).await?.head_str(), head);

    let before = job_count(&env).await?;
    let (status, body) = github(&http, &base, "push", "d-1", &push).await?;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::OK, Some("delivery already processed")));
    assert_eq!(job_count(&env).await?, before, "a redelivery records nothing");
    let (status, body) = github(&http, &base, "push", "d-2", &github_push(&url, "develop", &head)).await?;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::ACCEPTED, Some("no repository matched")));
    let mut deleted = github_push(&url, "main", &"0".repeat(40));
    deleted["deleted"] = json!(true);
    let (status, body) = github(&http, &base, "push", "d-3", &deleted).await?;
    assert_eq!((status, body["matched"].clone()), (StatusCode::ACCEPTED, json!([])), "{body}");

    let bytes = serde_json::to_vec(&push)?;
    for signature in
        [None, Some("sha256=00".to_owned()), Some(format!("sha256={}", hmac_hex("another secret", &bytes)))]
    {
        let mut request =
            http.post(format!("{base}/hooks/github")).header("X-GitHub-Event", "push").body(bytes.clone());
        if let Some(s) = signature {
            request = request.header("X-Hub-Signature-256", s);
        }
        let response = request.send().await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await?;
        assert!(!body.to_string().contains("signature"), "a refusal says nothing more: {body}");
    }
    assert_eq!(http.post(format!("{base}/hooks/svn")).body("{}").send().await?.status(), StatusCode::NOT_FOUND);
    let huge = vec![b' '; 6 * 1024 * 1024];
    let response = http.post(format!("{base}/hooks/github")).header("X-GitHub-Event", "push").body(huge).send().await?;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let token =
        gitfleet_producer::tokens::create(&env.pool, "viewer", &[gitfleet_producer::tokens::Scope::Read]).await?;
    let listed: Value = http
        .get(format!("{base}/api/v1/webhook-deliveries"))
        .bearer_auth(token.context("token")?)
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<&str> =
        listed.as_array().context("a list")?.iter().filter_map(|d| d["delivery_id"].as_str()).collect();
    assert_eq!(ids, ["d-3", "d-2", "d-1", "d-ping"], "each delivery recorded once, newest first");
    assert_eq!(listed[2]["job_result_ids"], json!([job.to_string()]));
    drop(daemon);
    env.teardown().await
}

/// GitLab's secret token, Gitea's and Bitbucket Cloud's signatures and the generic endpoint, each with its own
/// secrets group when one is configured; a tag push syncs the repositories that follow the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_signs_its_own_way() -> Result<()> {
    let mut env = TestEnv::new().await?;
    write_secret(&env)?;
    let base = env.start_api().await?;
    let http = Client::new();
    let remote = Remote::new(env.tmp.path(), "multi")?;
    let head = remote.commit("one", &[("README.md", "x")])?;
    remote.tag("v1")?;
    let url = remote.file_url();
    accepted(
        gitfleet_producer::commands::create(
            &env.pool,
            gitfleet_producer::commands::NewRepo { name: "Main".into(), remote_url: url.clone(), ..Default::default() },
            gitfleet_shared::event::RequestedBy::cli(),
        )
        .await?,
    )?;
    accepted(
        gitfleet_producer::commands::create(
            &env.pool,
            gitfleet_producer::commands::NewRepo {
                name: "Tagged".into(),
                remote_url: format!("{url}/"),
                branch: Some("v1".into()),
                ..Default::default()
            },
            gitfleet_shared::event::RequestedBy::cli(),
        )
        .await?,
    )?;
    let send = |path: &str, headers: Vec<(&str, String)>, body: Value| {
        let mut request = http.post(format!("{base}{path}")).header("Content-Type", "application/json");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        async move {
            let response = request.body(bytes).send().await?;
            anyhow::Ok((response.status(), response.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };

    let gitlab = json!({"object_kind": "push", "ref": "refs/heads/main", "checkout_sha": head, "after": head,
        "project": {"name": "multi", "git_http_url": url, "git_ssh_url": "git@gitlab.example:g/multi.git"}});
    let headers = vec![("X-Gitlab-Event", "Push Hook".to_owned()), ("X-Gitlab-Token", SECRET.to_owned())];
    let (status, body) = send("/hooks/gitlab", headers, gitlab.clone()).await?;
    assert_eq!((status, body["matched"].clone()), (StatusCode::ACCEPTED, json!(["Main"])), "{body}");
    let headers = vec![("X-Gitlab-Event", "Push Hook".to_owned()), ("X-Gitlab-Token", "wrong".to_owned())];
    assert_eq!(send("/hooks/gitlab", headers, gitlab).await?.0, StatusCode::UNAUTHORIZED);

    let tag = json!({"object_kind": "tag_push", "ref": "refs/tags/v1", "checkout_sha": head,
        "project": {"git_http_url": url}});
    let headers = vec![("X-Gitlab-Event", "Tag Push Hook".to_owned()), ("X-Gitlab-Token", SECRET.to_owned())];
    let (status, body) = send("/hooks/gitlab", headers, tag).await?;
    assert_eq!((status, body["matched"].clone()), (StatusCode::ACCEPTED, json!(["Tagged"])), "{body}");

    let gitea = json!({"ref": "refs/heads/main", "after": head, "repository": {"clone_url": url}});
    let signature = hmac_hex(SECRET, &serde_json::to_vec(&gitea)?);
    let headers = vec![
        ("X-Gitea-Event", "push".to_owned()),
        ("X-Gitea-Delivery", "g-1".to_owned()),
        ("X-Gitea-Signature", signature),
    ];
    let (status, body) = send("/hooks/gitea", headers, gitea).await?;
    assert_eq!((status, body["matched"].clone()), (StatusCode::ACCEPTED, json!(["Main"])), "{body}");

    // Bitbucket names the repository by its web link: a repository defined by that URL matches.
    let bitbucket_url = "https://bitbucket.org/team/multi.git";
    accepted(
        gitfleet_producer::commands::create(
            &env.pool,
            gitfleet_producer::commands::NewRepo {
                name: "Cloud".into(),
                remote_url: bitbucket_url.into(),
                ..Default::default()
            },
            gitfleet_shared::event::RequestedBy::cli(),
        )
        .await?,
    )?;
    let bitbucket = json!({"push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": head}},
        "old": {"type": "branch", "name": "main"}}]},
        "repository": {"full_name": "team/multi", "links": {"html": {"href": "https://bitbucket.org/team/multi"}}}});
    // Bitbucket's own group, named by GITFLEET_WEBHOOK_BITBUCKET_SECRETS_GROUP, would override the shared one;
    // without it the shared secret applies.
    let signature = format!("sha256={}", hmac_hex(SECRET, &serde_json::to_vec(&bitbucket)?));
    let headers = vec![
        ("X-Event-Key", "repo:push".to_owned()),
        ("X-Request-UUID", "b-1".to_owned()),
        ("X-Hub-Signature", signature),
    ];
    let (status, body) = send("/hooks/bitbucket", headers, bitbucket).await?;
    assert_eq!((status, body["matched"].clone()), (StatusCode::ACCEPTED, json!(["Cloud"])), "{body}");

    let generic = json!({"remote_url": url, "branch": "main", "commit": head});
    let signature = format!("sha256={}", hmac_hex(SECRET, &serde_json::to_vec(&generic)?));
    let headers = vec![("X-Gitfleet-Delivery", "ci-42".to_owned()), ("X-Gitfleet-Signature", signature)];
    let (status, body) = send("/hooks/generic", headers.clone(), generic.clone()).await?;
    assert_eq!((status, body["matched"].clone()), (StatusCode::ACCEPTED, json!(["Main"])), "{body}");
    assert_eq!(send("/hooks/generic", headers, generic).await?.0, StatusCode::OK, "a replay of ci-42");
    env.teardown().await
}

/// A source that sends faster than the configured rate is answered 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_is_limited() -> Result<()> {
    let mut env = TestEnv::new().await?;
    write_secret(&env)?;
    let settings = gitfleet_producer::api::hooks::HookSettings {
        secrets_group: "webhooks".into(),
        secrets_dir: Some(env.tmp.path().join("secrets")),
        rate: 1,
    };
    let base = env.start_api_with(settings).await?;
    let http = Client::new();
    let mut statuses = Vec::new();
    for n in 0..4 {
        let push = github_push("https://github.example/acme/none.git", "main", &"a".repeat(40));
        statuses.push(github(&http, &base, "push", &format!("flood-{n}"), &push).await?.0);
    }
    assert_eq!(&statuses[..2], [StatusCode::ACCEPTED, StatusCode::ACCEPTED], "a burst of twice the rate passes");
    assert!(statuses[2..].contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    env.teardown().await
}

/// 200 signed deliveries for one repository at once coalesce into at most 3 fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_deliveries_costs_at_most_3_fetches() -> Result<()> {
    let mut env = TestEnv::new().await?;
    write_secret(&env)?;
    env.start_fleet(2);
    let base = env.start_api().await?;
    let remote = Remote::new(env.tmp.path(), "busy")?;
    remote.commit("one", &[("README.md", "1")])?;
    let url = remote.file_url();
    assert_eq!(env.wait_job(env.create("Busy", &url, "main").await?).await?.status, "SUCCESS");
    let head = remote.commit("two", &[("README.md", "2")])?;
    let http = Client::new();
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..200 {
        let (http, base, push) = (http.clone(), base.clone(), github_push(&url, "main", &head));
        sends.spawn(async move { github(&http, &base, "push", &format!("burst-{n}"), &push).await });
    }
    let mut jobs = Vec::new();
    while let Some(sent) = sends.join_next().await {
        let (status, body) = sent??;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        jobs.push(body["job_result_ids"][0].as_str().context("a JobResult")?.parse::<Uuid>()?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let fetched = loop {
        let rows = env
            .pool
            .get()
            .await?
            .query("SELECT result FROM job_result WHERE id = ANY($1) AND status = 'SUCCESS'", &[&jobs])
            .await?;
        if rows.len() == jobs.len() {
            break rows
                .iter()
                .filter(|r| r.get::<_, Option<Value>>(0).is_none_or(|v| v.get("coalesced").is_none()))
                .count();
        }
        anyhow::ensure!(Instant::now() < deadline, "only {} of 200 syncs ended", rows.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!((1..=3).contains(&fetched), "{fetched} of 200 syncs fetched");

    // One delivery sent 20 times at once (a host retrying while the first is in flight): recorded once.
    let before = job_count(&env).await?;
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, base, push) = (http.clone(), base.clone(), github_push(&url, "main", &head));
        copies.spawn(async move { github(&http, &base, "push", "the-same-one", &push).await });
    }
    let mut statuses = Vec::new();
    while let Some(sent) = copies.join_next().await {
        statuses.push(sent??.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 19, "{statuses:?}");
    assert_eq!(job_count(&env).await?, before + 1);
    env.teardown().await
}
