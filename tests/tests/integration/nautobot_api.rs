//! The Nautobot-compatible endpoints with the client users have: `pynautobot` (PyPI, installed by
//! `make test-deps`) runs a script an automation team would run against Nautobot, against `producer serve`.

use std::process::Command;

use anyhow::{Context, Result};
use gitfleet_producer::tokens::{self, Scope};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::git::Remote;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pynautobot_creates_syncs_and_reads_the_job_result() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let base = env.start_api().await?;
    let token = tokens::create(&env.pool, "automation", &[Scope::Write]).await?.context("token")?;
    let remote = Remote::new(env.tmp.path(), "nb")?;
    let head = remote.commit("one", &[("config_contexts/a.yaml", "_metadata: {name: NB}\nx: 1\n")])?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/clients/pynautobot_client.py");
    let (base_for_child, token_for_child, url) = (base.clone(), token.clone(), remote.file_url());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("GITFLEET_URL", base_for_child)
            .env("GITFLEET_TOKEN", token_for_child)
            .env("GITFLEET_REMOTE", url)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pynautobot script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(seen["status"], "SUCCESS", "{seen}");
    assert_eq!(seen["current_head"], json!(head));
    let messages = seen["messages"].as_array().context("messages")?;
    // The create's own sync may have loaded the commit first; then this one finds it up to date.
    assert!(
        messages.iter().any(|m| m == "Successfully created config context"
            || m.as_str().is_some_and(|m| m.contains("is already up to date"))),
        "{seen}"
    );
    assert!(messages.iter().any(|m| m == "Job completed"), "{seen}");

    // Shapes a client relies on, and Nautobot's refusals.
    let http = reqwest::Client::new();
    // The script's delete is recorded at once and applied by a worker: the repository goes once its records are.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page: Value = http
            .get(format!("{base}/api/extras/git-repositories/?limit=1"))
            .header("Authorization", format!("Token {token}"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(page["previous"], Value::Null);
        if page["count"] == json!(0) {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the delete was not applied: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let response = http.get(format!("{base}/api/extras/git-repositories/")).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = http
        .get(format!("{base}/api/extras/job-logs/"))
        .header("Authorization", format!("Token {token}"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "job logs are listed per JobResult");
    let response = http
        .post(format!("{base}/api/extras/git-repositories/"))
        .header("Authorization", format!("Token {token}"))
        .json(&json!({"name": "No URL"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await?["remote_url"], json!(["This field is required."]));
    env.teardown().await
}
