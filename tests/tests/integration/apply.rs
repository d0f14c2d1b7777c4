//! `producer apply -f repositories.yaml` and `PUT /api/v1/repositories`: the live definitions made to match a list,
//! all or nothing, idempotent, with a dry run that changes nothing.

use anyhow::{Context, Result};
use clap::Parser;
use gitfleet_producer::cli::{self, Cli};
use tokio_util::sync::CancellationToken;

use crate::support::TestEnv;

/// Runs `producer apply -f FILE` with `extra` flags; returns the exit code and what it printed.
async fn apply(env: &TestEnv, yaml: &str, extra: &[&str]) -> Result<(i32, String)> {
    let file = env.tmp.path().join(format!("repositories-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, yaml)?;
    let file = file.to_str().context("path")?.to_owned();
    let base = ["producer", "--database-url", &env.database.url, "--database-schema", &env.database.schema];
    let args: Vec<&str> = base.iter().copied().chain(["apply", "-f", &file]).chain(extra.iter().copied()).collect();
    let mut out = Vec::new();
    let code = cli::run(Cli::parse_from(&args), &env.pool, CancellationToken::new(), &mut out).await?;
    Ok((code, String::from_utf8(out)?))
}

async fn count(env: &TestEnv, sql: &str) -> Result<i64> {
    Ok(env.pool.get().await?.query_one(sql, &[]).await?.get(0))
}

async fn live(env: &TestEnv) -> Result<Vec<(String, String, Option<i32>)>> {
    let client = env.pool.get().await?;
    let rows = client
        .query(
            "SELECT name, branch, sync_interval_secs FROM git_repository WHERE deleted_at IS NULL ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

fn file(entries: &[(&str, &str, &str)]) -> String {
    let mut out = String::from("# repositories, as they should be\n");
    for (name, branch, interval) in entries {
        out.push_str(&format!(
            "- name: {name}\n  remote_url: https://git.example.com/{}.git\n  branch: {branch}\n  provided_contents: \
             [extras.configcontext]\n  sync_interval: {interval}\n  git_timeout: 60\n",
            name.to_lowercase().replace(' ', "-")
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_updates_prunes_is_idempotent_refuses_an_invalid_file_whole_and_diff_changes_nothing()
-> Result<()> {
    let env = TestEnv::new().await?;
    let events = "SELECT count(*) FROM outbox";

    let first = file(&[("Alpha", "main", "5m"), ("Beta", "main", "1h")]);
    let (code, printed) = apply(&env, &first, &[]).await?;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("created Alpha (JobResult ") && printed.contains("created Beta"), "{printed}");
    assert_eq!(
        live(&env).await?,
        vec![("Alpha".into(), "main".into(), Some(300)), ("Beta".into(), "main".into(), Some(3600))]
    );
    assert_eq!(count(&env, events).await?, 2, "one create event each");

    // The same file again: nothing to do, no event.
    let (code, printed) = apply(&env, &first, &[]).await?;
    assert_eq!((code, printed.trim()), (0, "2 unchanged"));
    assert_eq!(count(&env, events).await?, 2);

    // A dry run of a changed file says what it would do and changes nothing.
    let second = file(&[("Alpha", "main", "10m"), ("Beta", "release", "1h"), ("Gamma", "main", "30s")]);
    let (code, printed) = apply(&env, &second, &["--diff"]).await?;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("would update Alpha: sync_interval"), "{printed}");
    assert!(printed.contains("would update Beta: branch"), "{printed}");
    assert!(printed.contains("would create Gamma") && !printed.contains("JobResult"), "{printed}");
    assert!(printed.contains("nothing applied (--diff)"), "{printed}");
    assert_eq!(live(&env).await?.len(), 2);
    assert_eq!(count(&env, events).await?, 2);

    let (code, printed) = apply(&env, &second, &[]).await?;
    assert_eq!(code, 0, "{printed}");
    assert_eq!(
        live(&env).await?,
        vec![
            ("Alpha".into(), "main".into(), Some(600)),
            ("Beta".into(), "release".into(), Some(3600)),
            ("Gamma".into(), "main".into(), Some(30))
        ]
    );
    assert_eq!(count(&env, events).await?, 5, "two updates and a create: one event each");

    // One bad entry refuses the whole file, naming each entry and field; nothing is applied.
    let bad = format!(
        "{}- name: Delta\n  remote_url: not a url\n- name: Epsilon\n  remote_url: https://h/e.git\n  colour: red\n\
         - name: Zeta\n  remote_url: https://h/z.git\n  sync_interval: 2s\n",
        file(&[("Alpha", "main", "15m")])
    );
    let (code, _) = apply(&env, &bad, &[]).await?;
    assert_eq!(code, 2);
    let typo = format!(
        "{}- name: Delta\n  remote_url: not a url\n- name: Zeta\n  remote_url: https://h/z.git\n  sync_interval: 2s\n",
        file(&[("Alpha", "main", "15m")])
    );
    let (code, _) = apply(&env, &typo, &[]).await?;
    assert_eq!(code, 2);
    assert_eq!(live(&env).await?.len(), 3);
    assert_eq!(live(&env).await?[0].2, Some(600), "the valid entry of a refused file is not applied either");
    assert_eq!(count(&env, events).await?, 5);
    let refusal = gitfleet_producer::apply::parse_file(bad.as_bytes()).err().context("refused")?.to_string();
    assert!(refusal.contains("repositories[2] (Epsilon): unknown field `colour`"), "{refusal}");
    let entries = gitfleet_producer::apply::parse_file(typo.as_bytes())?;
    let refusal = gitfleet_producer::apply::apply(
        &env.pool,
        entries,
        gitfleet_producer::apply::ApplyOptions::default(),
        &gitfleet_shared::event::RequestedBy::cli(),
    )
    .await
    .err()
    .context("refused")?
    .to_string();
    assert!(refusal.contains("repositories[1] (Delta).remote_url: "), "{refusal}");
    assert!(refusal.contains("repositories[2] (Zeta).sync_interval: The sync interval must be between"), "{refusal}");

    // Without --prune what the file leaves out stays; with it, it is deleted.
    let only_alpha = file(&[("Alpha", "main", "10m")]);
    let (code, printed) = apply(&env, &only_alpha, &[]).await?;
    assert_eq!((code, printed.trim()), (0, "1 unchanged"));
    let (code, printed) = apply(&env, &only_alpha, &["--prune", "--diff"]).await?;
    assert!(code == 0 && printed.contains("would delete Beta") && printed.contains("would delete Gamma"), "{printed}");
    assert_eq!(live(&env).await?.len(), 3);
    let (code, printed) = apply(&env, &only_alpha, &["--prune"]).await?;
    assert!(code == 0 && printed.contains("deleted Beta (JobResult "), "{printed}");
    // A delete is an event, as `repo delete` records it (a worker removes the records and the definition).
    assert_eq!(count(&env, "SELECT count(*) FROM outbox WHERE routing_key = 'repo.delete'").await?, 2);
    let (code, printed) = apply(&env, &only_alpha, &["--prune"]).await?;
    assert_eq!((code, printed.trim()), (0, "1 unchanged"), "the deletes already asked for are not asked again");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_repositories_applies_a_list_through_the_api() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.start_api().await?;
    let token = gitfleet_producer::tokens::create(&env.pool, "apply", &[gitfleet_producer::tokens::Scope::Write])
        .await?
        .context("token")?;
    let http = reqwest::Client::new();
    let list = serde_json::json!([
        {"name": "One", "remote_url": "https://git.example.com/one.git", "sync_interval": "5m"},
        {"name": "Two", "remote_url": "https://git.example.com/two.git", "branch": "dev"},
    ]);
    let put = |query: &'static str, body: serde_json::Value| {
        http.put(format!("{base}/api/v1/repositories{query}")).bearer_auth(&token).json(&body).send()
    };
    let dry: serde_json::Value = put("?dry_run=true", list.clone()).await?.error_for_status()?.json().await?;
    assert_eq!(dry["created"].as_array().map(Vec::len), Some(2), "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert!(live(&env).await?.is_empty(), "a dry run changes nothing");
    let done: serde_json::Value = put("", list.clone()).await?.error_for_status()?.json().await?;
    assert!(done["created"][0]["job_result_id"].is_string(), "{done}");
    let again: serde_json::Value = put("", list).await?.error_for_status()?.json().await?;
    assert_eq!(again["unchanged"], serde_json::json!(["One", "Two"]), "{again}");
    let response = put("?prune=true", serde_json::json!([{"name": "One", "remote_url": "nope"}])).await?;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await?;
    assert!(body["repositories[0] (One).remote_url"].is_array(), "{body}");
    assert_eq!(live(&env).await?.len(), 2, "a refused list prunes nothing");
    let pruned: serde_json::Value = put(
        "?prune=true",
        serde_json::json!([{"name": "One", "remote_url": "https://git.example.com/one.git", "sync_interval": "5m"}]),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    assert_eq!(pruned["deleted"][0]["name"], "Two", "{pruned}");
    env.teardown().await
}
