//! The web UI at `/ui/` over HTTP against `producer serve` on the real services: signing in with a token, the
//! session cookie, CSRF on every form, what each scope sees and may post, and the pages a sync goes through.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitfleet_producer::tokens::{self, Scope};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::support::git::Remote;
use crate::support::{TestEnv, path_segment};

/// A client that follows no redirect, so the test sees each answer.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in with `token`; the session cookie (`name=value`).
async fn sign_in(base: &str, token: &str) -> Result<String> {
    let response =
        client().post(format!("{base}/ui/sign-in")).form(&[("token", token), ("next", "/ui/fleet")]).send().await?;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/ui/fleet", "back where the person was going");
    let set = response.headers()[SET_COOKIE].to_str()?.to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui/"), "{set}");
    Ok(set.split(';').next().context("cookie")?.to_owned())
}

async fn page(base: &str, cookie: &str, path: &str) -> Result<(StatusCode, String)> {
    let response = client().get(format!("{base}{path}")).header(COOKIE, cookie).send().await?;
    Ok((response.status(), response.text().await?))
}

/// The CSRF token in a page's forms.
fn csrf(html: &str) -> Result<String> {
    let at = html.find(r#"name="csrf" value=""#).context("no CSRF field on the page")?;
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    Ok(rest[..rest.find('"').context("unterminated value")?].to_owned())
}

async fn post(base: &str, cookie: &str, path: &str, csrf: &str) -> Result<reqwest::Response> {
    Ok(client().post(format!("{base}{path}")).header(COOKIE, cookie).form(&[("csrf", csrf)]).send().await?)
}

/// Follows a JobResult page (as the page's own reload does) until it shows a terminal status.
async fn until_done(base: &str, cookie: &str, path: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, html) = page(base, cookie, path).await?;
        assert_eq!(status, StatusCode::OK);
        if html.contains(">SUCCESS<") || html.contains(">FAILURE<") {
            assert!(!html.contains("http-equiv=\"refresh\""), "a finished job's page stops reloading");
            return Ok(html);
        }
        assert!(html.contains("http-equiv=\"refresh\""), "a running job's page reloads itself");
        if Instant::now() > deadline {
            bail!("{path} not terminal after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_signs_in_shows_a_sync_and_keeps_each_scope_to_its_rights() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let base = env.start_api().await?;
    let writer = tokens::create(&env.pool, "writer", &[Scope::Write]).await?.context("token")?;
    let reader = tokens::create(&env.pool, "reader", &[Scope::Read]).await?.context("token")?;
    let admin = tokens::create(&env.pool, "admin", &[Scope::Admin]).await?.context("token")?;

    // Not signed in: every page sends the person to sign in, and back afterwards.
    let response = client().get(format!("{base}/ui/repositories")).send().await?;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/ui/sign-in?next=%2Fui%2Frepositories");
    let form = client().get(format!("{base}/ui/sign-in")).send().await?.text().await?;
    assert!(form.contains(r#"<label for="token">API token</label>"#), "{form}");
    let refused = client().post(format!("{base}/ui/sign-in")).form(&[("token", "gft_nope")]).send().await?;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.text().await?.contains("not a live gitfleet token"));
    // Behind a TLS-terminating proxy the cookie is Secure; no open redirect out of the UI.
    let secure = client()
        .post(format!("{base}/ui/sign-in"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", writer.as_str()), ("next", "https://evil.example/")])
        .send()
        .await?;
    assert!(secure.headers()[SET_COOKIE].to_str()?.ends_with("; Secure"));
    assert_eq!(secure.headers()[LOCATION], "/ui/repositories");

    // A repository synced by the fleet.
    let remote = Remote::new(env.tmp.path(), "data")?;
    let head = remote.commit(
        "first",
        &[(
            "config_contexts/ntp.json",
            r#"{"_metadata": {"name": "ntp-servers", "weight": 1000}, "ntp": ["10.0.0.1"]}"#,
        )],
    )?;
    let name = format!("UI <data> {}", env.id);
    let new = gitfleet_producer::commands::NewRepo {
        name: name.clone(),
        remote_url: remote.file_url(),
        provided_contents: vec!["extras.configcontext".into()],
        ..Default::default()
    };
    let outcome =
        gitfleet_producer::commands::create(&env.pool, new, gitfleet_shared::event::RequestedBy::cli()).await?;
    let created = env.wait_job(outcome.job_result_id().context("accepted")?).await?;
    assert_eq!(created.status, "SUCCESS", "{:#?}", created.logs);

    let write = sign_in(&base, &writer).await?;
    let (status, list) = page(&base, &write, "/ui/repositories").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("UI &lt;data&gt;"), "names are escaped: {list}");
    assert!(list.contains(&head[..10]) && list.contains(">SUCCESS<") && list.contains("1 contexts"), "{list}");
    let (_, filtered) = page(&base, &write, "/ui/repositories?q=no-such-repo&sort=status").await?;
    assert!(filtered.contains("No live repository matches."));

    let repo_path = format!("/ui/repositories/{}", path_segment(&name));
    let (status, repo) = page(&base, &write, &repo_path).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(repo.contains(">Sync</button>") && repo.contains(">Dry-run</button>") && repo.contains(">Delete</a>"));
    assert!(repo.contains("config_contexts: 1") && repo.contains("ntp-servers"), "{repo}");
    let (_, record) = page(&base, &write, &format!("{repo_path}/records/config_contexts/0")).await?;
    assert!(record.contains("10.0.0.1") && record.contains("<pre"), "the context data, pretty-printed: {record}");
    let token = csrf(&repo)?;

    // CSRF: a form without the session's token is refused, and records nothing.
    let forged = post(&base, &write, &format!("{repo_path}/sync"), "0".repeat(64).as_str()).await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.text().await?.contains("CSRF"));
    let other_session = sign_in(&base, &writer).await?;
    let (_, other) = page(&base, &other_session, &repo_path).await?;
    assert_ne!(csrf(&other)?, token, "each session has its own CSRF token");
    assert_eq!(
        post(&base, &write, &format!("{repo_path}/sync"), &csrf(&other)?).await?.status(),
        StatusCode::FORBIDDEN
    );

    // Sync with one click: the JobResult page follows it to SUCCESS and shows its log.
    remote.commit(
        "second",
        &[("config_contexts/dns.json", r#"{"_metadata": {"name": "dns", "weight": 1000}, "dns": ["10.0.0.53"]}"#)],
    )?;
    let synced = post(&base, &write, &format!("{repo_path}/sync"), &token).await?;
    assert_eq!(synced.status(), StatusCode::SEE_OTHER);
    let job_path = synced.headers()[LOCATION].to_str()?.to_owned();
    assert!(job_path.starts_with("/ui/job-results/"), "{job_path}");
    let job = until_done(&base, &write, &job_path).await?;
    assert!(job.contains(">SUCCESS<") && job.contains("<th scope=\"col\">Grouping</th>"), "{job}");
    assert!(job.contains("dns.json"), "the log names the changed file: {job}");
    assert!(job.contains("<time datetime="), "times carry their UTC value");
    let (_, errors_only) = page(&base, &write, &format!("{job_path}?level=error")).await?;
    assert!(errors_only.contains("0 entries at level error"), "{errors_only}");

    // The create form: a refused definition comes back with the API's messages next to their fields.
    let (status, form) = page(&base, &write, "/ui/new-repository").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(form.contains(r#"<label for="remote_url">Remote URL</label>"#) && form.contains(r#"value="extras.job""#));
    let bad = [
        ("csrf", token.as_str()),
        ("name", name.as_str()),
        ("remote_url", "ftp://example.com/x.git"),
        ("branch", "main"),
        ("provided_contents", "extras.nothing"),
        ("sync_interval", "2s"),
    ];
    let refused = client().post(format!("{base}/ui/new-repository")).header(COOKIE, &write).form(&bad).send().await?;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = refused.text().await?;
    let expected = match gitfleet_producer::commands::create(
        &env.pool,
        gitfleet_producer::commands::NewRepo {
            name: name.clone(),
            remote_url: "ftp://example.com/x.git".into(),
            branch: Some("main".into()),
            provided_contents: vec!["extras.nothing".into()],
            ..Default::default()
        },
        gitfleet_shared::event::RequestedBy::cli(),
    )
    .await
    {
        Err(gitfleet_producer::commands::CommandError::Invalid(errors)) => errors,
        other => bail!("the command accepted what the form refused: {other:?}"),
    };
    for error in &expected {
        let field = error.field.unwrap_or("non_field_errors");
        let escaped =
            error.message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        assert!(refused.contains(&escaped), "{field}: {} not shown in {refused}", error.message);
    }
    assert!(
        refused.contains(r#"id="remote_url-errors""#) && refused.contains(r#"id="sync_interval-errors""#),
        "{refused}"
    );
    assert!(refused.contains(r#"value="ftp://example.com/x.git""#), "the form keeps what was typed");
    let other_remote = Remote::new(env.tmp.path(), "other")?;
    other_remote.commit("first", &[("README.md", "hello")])?;
    let second = format!("UI second {}", env.id);
    let other_url = other_remote.file_url();
    let good = [
        ("csrf", token.as_str()),
        ("name", second.as_str()),
        ("remote_url", other_url.as_str()),
        ("branch", "main"),
        ("sync_interval", "5m"),
    ];
    let created = client().post(format!("{base}/ui/new-repository")).header(COOKIE, &write).form(&good).send().await?;
    assert_eq!(created.status(), StatusCode::SEE_OTHER);
    let created_job = created.headers()[LOCATION].to_str()?.to_owned();
    assert!(until_done(&base, &write, &created_job).await?.contains(">SUCCESS<"));
    // The edit form holds the definition; a change records an update.
    let edit_path = format!("/ui/repositories/{}/edit", path_segment(&second));
    let (_, edit) = page(&base, &write, &edit_path).await?;
    assert!(
        edit.contains(r#"value="5m""#) && edit.contains(&format!(r#"value="{}""#, other_remote.file_url())),
        "{edit}"
    );
    let changed = [
        ("csrf", token.as_str()),
        ("name", second.as_str()),
        ("remote_url", other_url.as_str()),
        ("branch", "main"),
        ("sync_interval", ""),
    ];
    let updated = client().post(format!("{base}{edit_path}")).header(COOKIE, &write).form(&changed).send().await?;
    assert_eq!(updated.status(), StatusCode::SEE_OTHER);
    assert!(until_done(&base, &write, updated.headers()[LOCATION].to_str()?).await?.contains(">SUCCESS<"));
    let repo = env
        .repo(
            env.job(uuid::Uuid::parse_str(created_job.trim_start_matches("/ui/job-results/"))?)
                .await?
                .repository_id
                .context("repo")?,
        )
        .await?;
    assert_eq!(repo.sync_interval_secs, None, "polling stopped");

    // A read-only session sees no write button, and a post is refused even with its own CSRF token.
    let read = sign_in(&base, &reader).await?;
    let (_, seen) = page(&base, &read, &repo_path).await?;
    assert!(!seen.contains(">Sync</button>") && !seen.contains(">Delete</a>"), "{seen}");
    let read_csrf = csrf(&seen)?;
    let refused = post(&base, &read, &format!("{repo_path}/sync"), &read_csrf).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await?.contains("needs write"));
    assert_eq!(page(&base, &read, &format!("{repo_path}/delete")).await?.0, StatusCode::FORBIDDEN);
    assert!(!page(&base, &read, "/ui/repositories").await?.1.contains("New repository"));
    assert_eq!(page(&base, &read, "/ui/new-repository").await?.0, StatusCode::FORBIDDEN);

    // The fleet page: the worker, and a dead letter that only an admin may replay.
    let event_id = crate::support::dead_letter_last_event(&env).await?;
    let (_, fleet) = page(&base, &read, "/ui/fleet").await?;
    assert!(fleet.contains("delivery limit reached") && fleet.contains("Workers seen in the last hour"), "{fleet}");
    assert!(!fleet.contains(">Replay</button>"), "replay needs admin");
    assert!(fleet.contains("<td>work</td>") && fleet.contains("<td>dead</td>"), "the queues: {fleet}");
    assert!(!fleet.contains("cannot be read"), "{fleet}");
    let admin_session = sign_in(&base, &admin).await?;
    let (_, fleet) = page(&base, &admin_session, "/ui/fleet").await?;
    let id: i64 = {
        let at = fleet.find("/ui/dead-letters/").context("a replay form")? + "/ui/dead-letters/".len();
        fleet[at..at + fleet[at..].find('/').context("id")?].parse()?
    };
    let replayed = post(&base, &admin_session, &format!("/ui/dead-letters/{id}/replay"), &csrf(&fleet)?).await?;
    assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
    assert_eq!(replayed.headers()[LOCATION].to_str()?, format!("/ui/job-results/{event_id}"));
    until_done(&base, &admin_session, &format!("/ui/job-results/{event_id}")).await?;

    // A long list comes a page at a time.
    let db = env.pool.get().await?;
    db.batch_execute(
        "INSERT INTO git_repository (id, name, slug, remote_url)
         SELECT gen_random_uuid(), 'Bulk ' || lpad(i::text, 3, '0'), 'bulk_' || i, 'https://example.com/r' || i || '.git'
           FROM generate_series(1, 150) AS i",
    )
    .await?;
    drop(db);
    let (_, first) = page(&base, &admin_session, "/ui/repositories?q=Bulk").await?;
    assert!(first.contains("Repositories 1 to 100") && first.contains("Bulk 100") && !first.contains("Bulk 101"));
    assert!(first.contains(">Next page<") && !first.contains(">Previous page<"), "{first}");
    let (_, second) = page(&base, &admin_session, "/ui/repositories?q=Bulk&sort=name&page=2").await?;
    assert!(
        second.contains("Repositories 101 to 150") && second.contains("Bulk 150") && !second.contains(">Next page<")
    );

    // Signing out ends the session; revoking a token ends its sessions.
    assert_eq!(post(&base, &write, "/ui/sign-out", &token).await?.status(), StatusCode::SEE_OTHER);
    assert_eq!(page(&base, &write, "/ui/repositories").await?.0, StatusCode::SEE_OTHER);
    let client_db = env.pool.get().await?;
    gitfleet_infra::store::token::revoke(&**client_db, "reader").await?;
    drop(client_db);
    assert_eq!(page(&base, &read, "/ui/repositories").await?.0, StatusCode::SEE_OTHER);
    env.teardown().await
}
