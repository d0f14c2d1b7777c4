//! The definition rules (spec a.2, a.3) through the producer, with their exact messages, and the CLI's exit code.

use anyhow::Result;
use clap::Parser;
use gitfleet_producer::cli::{self, Cli};
use gitfleet_producer::commands::{self, CommandError, NewRepo, RepoChanges};
use gitfleet_shared::event::RequestedBy;
use tokio_util::sync::CancellationToken;

use crate::support::{TestEnv, accepted};

fn repo(name: &str, url: &str, provides: &[&str]) -> NewRepo {
    NewRepo {
        name: name.to_owned(),
        remote_url: url.to_owned(),
        provided_contents: provides.iter().map(|s| (*s).to_owned()).collect(),
        ..NewRepo::default()
    }
}

/// The messages of a refused command, as the CLI prints them.
fn refusal(result: Result<gitfleet_producer::commands::Outcome, CommandError>) -> Vec<String> {
    match result {
        Err(CommandError::Invalid(errors)) => errors.into_iter().map(|e| e.message).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_rule() -> Result<()> {
    let env = TestEnv::new().await?;
    let (pool, by) = (&env.pool, RequestedBy::cli);
    let url = format!("http://localhost/duplicates-{}.git", env.id);
    let id = &env.id;
    commands::create(pool, repo(&format!("Jobs {id}"), &url, &["extras.job"]), by()).await?;
    commands::create(pool, repo(&format!("Contexts {id}"), &url, &["extras.configcontext"]), by()).await?;

    let expected = format!(
        "Another Git repository already configured for remote URL {url} provides contents overlapping with this \
         repository."
    );
    let refused =
        commands::create(pool, repo(&format!("More jobs {id}"), &url, &["extras.job", "extras.exporttemplate"]), by())
            .await;
    assert_eq!(refusal(refused), vec![expected.clone()]);
    // Updating the second one into the first one's contents is refused the same way.
    let changes = RepoChanges { provided_contents: Some(vec!["extras.job".into()]), ..RepoChanges::default() };
    assert_eq!(refusal(commands::update(pool, &format!("Contexts {id}"), changes, by()).await), vec![expected]);
    // No URL normalization, and an empty provided_contents never conflicts.
    commands::create(pool, repo(&format!("Slash {id}"), &format!("{url}/"), &["extras.job"]), by()).await?;
    commands::create(pool, repo(&format!("Nothing {id}"), &url, &[]), by()).await?;
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slug_rules() -> Result<()> {
    let env = TestEnv::new().await?;
    let (pool, by) = (&env.pool, RequestedBy::cli);
    let url = format!("http://localhost/slugs-{}.git", env.id);
    let client = pool.get().await?;

    // Generated from the name (spec a.2).
    commands::create(pool, repo("1 Very-Bad Git_____Repo Name (2)", &url, &[]), by()).await?;
    let slug: String = client
        .query_one("SELECT slug FROM git_repository WHERE name = '1 Very-Bad Git_____Repo Name (2)'", &[])
        .await?
        .get(0);
    assert_eq!(slug, "a1_very_bad_git_____repo_name_2");

    // Names that would clobber a Python module.
    assert_eq!(
        refusal(commands::create(pool, repo("sys", &url, &[]), by()).await),
        vec!["Please choose a different slug; 'sys' is a Python builtin"]
    );
    assert_eq!(
        refusal(commands::create(pool, repo("Tkinter", &url, &[]), by()).await),
        vec!["Please choose a different slug; 'tkinter' is the name of an installed Python package"]
    );
    let mut explicit = repo("Anything", &url, &[]);
    explicit.slug = Some("nautobot".into());
    assert_eq!(
        refusal(commands::create(pool, explicit, by()).await),
        vec!["Please choose a different slug; 'nautobot' is the name of an installed Python package"]
    );
    // Two names that slugify alike: AutoSlugField's `-2` is not an identifier (spec h.18).
    commands::create(pool, repo("My Repo", &url, &[]), by()).await?;
    assert_eq!(
        refusal(commands::create(pool, repo("My  Repo!", &url, &[]), by()).await),
        vec!["Please choose a different slug; 'my_repo-2' is not a valid identifier"]
    );
    // Slugs never change.
    let changes = RepoChanges { slug: Some("other_slug".into()), ..RepoChanges::default() };
    assert_eq!(
        refusal(commands::update(pool, "My Repo", changes, by()).await),
        vec!["Slug cannot be changed once set. Current slug is my_repo, requested slug is other_slug"]
    );
    // Names are unique among live repositories.
    let refused = refusal(commands::create(pool, repo("My Repo", &format!("{url}x"), &[]), by()).await);
    assert!(refused.contains(&"Git repository with this Name already exists.".to_owned()), "{refused:?}");
    drop(client);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_and_url_rules_and_the_cli_exit_code() -> Result<()> {
    let env = TestEnv::new().await?;
    let (pool, by) = (&env.pool, RequestedBy::cli);
    let url = format!("http://localhost/branches-{}.git", env.id);
    for (branch, message) in [
        ("", "branch must be a non-empty string".to_owned()),
        (" main", "Invalid branch ' main': must not contain whitespace".to_owned()),
        ("main\n", "Invalid branch 'main\n': must not contain whitespace".to_owned()),
        ("--orphan", "Invalid branch '--orphan': must not start with '-'".to_owned()),
    ] {
        let mut new = repo(&format!("Branch {}", env.id), &url, &[]);
        new.branch = Some(branch.to_owned());
        assert_eq!(refusal(commands::create(pool, new, by()).await), vec![message]);
    }
    let mut bad_url = repo(&format!("Url {}", env.id), "https://user:token@example.com/r.git", &[]);
    bad_url.branch = Some("-x".into());
    assert_eq!(
        refusal(commands::create(pool, bad_url, by()).await),
        vec![
            "The URL must not contain a password or token (in the user part or the query string): put credentials in a secrets group.",
            "Invalid branch '-x': must not start with '-'",
        ]
    );

    // A new branch keeps current_head: it names the commit whose records are live until a new sync succeeds.
    let accepted = commands::create(pool, repo(&format!("Reset {}", env.id), &url, &[]), by()).await?;
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE git_repository SET current_head = repeat('a', 40) WHERE name = $1",
            &[&format!("Reset {}", env.id)],
        )
        .await?;
    let changes = RepoChanges { branch: Some("develop".into()), ..RepoChanges::default() };
    commands::update(pool, &format!("Reset {}", env.id), changes, by()).await?;
    let head: String = client
        .query_one("SELECT current_head FROM git_repository WHERE name = $1", &[&format!("Reset {}", env.id)])
        .await?
        .get(0);
    assert_eq!(head, "a".repeat(40));
    assert!(accepted.job_result_id().is_some());

    // The CLI: validation errors exit 2; an unknown data type too.
    let base = ["producer", "--database-url", &env.database.url, "--database-schema", &env.database.schema];
    for extra in [
        vec!["repo", "create", "--name", "cli", "--remote-url", "file:///tmp/x.git", "--branch=-x"],
        vec!["repo", "create", "--name", "cli", "--remote-url", "file:///tmp/x.git", "--provides", "extras.nope"],
        vec!["repo", "sync", "--name", "no such repository"],
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let code = cli::run(Cli::parse_from(&args), pool, CancellationToken::new(), &mut Vec::new()).await?;
        assert_eq!(code, 2, "{extra:?}");
    }
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "repo",
            "create",
            "--name",
            "cli ok",
            "--remote-url",
            "file:///tmp/x.git",
            "--provides",
            "extras.job,extras.configcontext",
        ])
        .collect();
    let mut out = Vec::new();
    assert_eq!(cli::run(Cli::parse_from(&args), pool, CancellationToken::new(), &mut out).await?, 0);
    let printed = String::from_utf8(out)?;
    assert!(uuid::Uuid::parse_str(printed.trim()).is_ok(), "prints the JobResult id: {printed:?}");
    drop(client);
    env.teardown().await
}

/// Runs the producer CLI on the test's schema; returns the exit code and what it printed.
async fn producer(env: &TestEnv, extra: &[&str]) -> Result<(i32, String)> {
    let base = ["producer", "--database-url", &env.database.url, "--database-schema", &env.database.schema];
    let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
    let mut out = Vec::new();
    let code = cli::run(Cli::parse_from(&args), &env.pool, CancellationToken::new(), &mut out).await?;
    Ok((code, String::from_utf8(out)?))
}

/// Every bad option is refused with its message and exit 2 before anything is written; every registered data type
/// is accepted; names and messages print escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_door_checks() -> Result<()> {
    let env = TestEnv::new().await?;
    let (pool, by) = (&env.pool, RequestedBy::cli);
    let url = format!("file:///tmp/front-{}.git", env.id);
    for timeout in [0, -5, 100_000] {
        let new = NewRepo { git_timeout_secs: Some(timeout), ..repo(&format!("Timeout {}", env.id), &url, &[]) };
        assert_eq!(
            refusal(commands::create(pool, new, by()).await),
            vec!["The git timeout must be between 1 and 86400 seconds (a day)."],
            "{timeout}"
        );
    }
    for query in ["access_token=abc", "private_token=abc", "token=abc"] {
        let new = repo(&format!("Token {}", env.id), &format!("https://git.example.com/r.git?{query}"), &[]);
        let refused = refusal(commands::create(pool, new, by()).await);
        assert!(refused[0].starts_with("The URL must not contain a password or token"), "{refused:?}");
    }
    let name = format!("Cli {}", env.id);
    for extra in [
        vec!["repo", "create", "--name", &name, "--remote-url", &url, "--git-timeout", "0"],
        vec!["repo", "create", "--name", &name, "--remote-url", &url, "--git-timeout=-5"],
        vec!["repo", "create", "--name", &name, "--remote-url", "https://h/r.git?private_token=x"],
    ] {
        assert_eq!(producer(&env, &extra).await?.0, 2, "{extra:?}");
    }
    // Values that are not even of the option's type are refused by the parser itself, also with exit 2.
    for args in [
        vec!["producer", "repo", "create", "--name", "x", "--remote-url", "file:///x.git", "--git-timeout", "soon"],
        vec!["producer", "relay", "--poll-ms", "0"],
        vec!["producer", "--database-pool-size", "0", "repo", "list"],
        vec!["producer", "job-result", "show", "not-a-uuid"],
        vec!["producer", "job-result", "show", &url, "--format", "yaml"],
    ] {
        let err = Cli::try_parse_from(&args).expect_err("refused");
        assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
    }
    let client = pool.get().await?;
    let rows: i64 = client.query_one("SELECT count(*) FROM git_repository", &[]).await?.get(0);
    assert_eq!(rows, 0, "nothing refused was recorded");

    // The producer's choices are the worker's registry, extensions included.
    let (code, _) = producer(
        &env,
        &["repo", "create", "--name", &name, "--remote-url", &url, "--provides", "example_app.textfile"],
    )
    .await?;
    assert_eq!(code, 0);

    // An inventory object of an unknown kind is refused with the list of kinds, and nothing is imported.
    let file = env.tmp.path().join("inventory.json");
    std::fs::write(
        &file,
        r#"[{"kind": "location", "fields": {"name": "A"}}, {"kind": "rack", "fields": {"name": "R1"}}]"#,
    )?;
    assert_eq!(producer(&env, &["inventory", "import", file.to_str().unwrap()]).await?.0, 2);
    let objects: i64 = client.query_one("SELECT count(*) FROM scope_object", &[]).await?.get(0);
    assert_eq!(objects, 0);

    // Control characters from a name or a log message never reach the terminal raw.
    let evil = format!("Evil\u{1b}[31m {}\nforged line", env.id);
    let id = accepted(commands::create(pool, repo(&evil, &format!("{url}x"), &[]), by()).await?)?;
    let (_, listed) = producer(&env, &["repo", "list"]).await?;
    assert!(!listed.contains('\u{1b}') && listed.contains("Evil\\u{1b}[31m"), "{listed:?}");
    assert!(listed.lines().all(|l| !l.starts_with("forged line")), "{listed:?}");
    gitfleet_infra::store::job_result::log(
        &**client,
        id,
        &gitfleet_shared::job_result::LogEntry::error("main", "bad \u{1b}]0;title\u{7}\r\nfile"),
    )
    .await?;
    let (_, shown) = producer(&env, &["job-result", "show", &id.to_string()]).await?;
    assert!(!shown.contains('\u{1b}') && !shown.contains('\r'), "{shown:?}");
    assert!(shown.contains("bad \\u{1b}]0;title\\u{7}\\r\\nfile"), "{shown:?}");
    drop(client);
    env.teardown().await
}

/// A long log is printed a page at a time: `--page` and `--page-size` choose the entries, a trailer line says
/// where the page is, and a page out of range is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_result_show_pages_its_log() -> Result<()> {
    let env = TestEnv::new().await?;
    let url = format!("file:///tmp/paged-{}.git", env.id);
    let id = accepted(
        commands::create(&env.pool, repo(&format!("Paged {}", env.id), &url, &[]), RequestedBy::cli()).await?,
    )?;
    let client = env.pool.get().await?;
    for n in 1..=5 {
        let entry = gitfleet_shared::job_result::LogEntry::info("main", format!("entry number {n}"));
        gitfleet_infra::store::job_result::log(&**client, id, &entry).await?;
    }
    drop(client);
    let id = id.to_string();
    let (code, second) = producer(&env, &["job-result", "show", &id, "--page-size", "2", "--page", "2"]).await?;
    assert_eq!(code, 0, "{second}");
    let shown: Vec<&str> = second.lines().filter(|l| l.contains("entry number")).collect();
    assert_eq!(shown.len(), 2, "{second}");
    assert!(shown[0].ends_with("entry number 3") && shown[1].ends_with("entry number 4"), "{second}");
    assert!(second.contains("log page 2 of 3: entries 3 to 4 of 5; --page 3 for the next"), "{second}");
    let (_, last) = producer(&env, &["job-result", "show", &id, "--page-size", "2", "--page", "3"]).await?;
    assert!(last.contains("entry number 5") && !last.contains("entry number 4"), "{last}");
    assert!(last.contains("log page 3 of 3: entries 5 to 5 of 5") && !last.contains("for the next"), "{last}");
    // The default page holds them all and needs no trailer.
    let (_, all) = producer(&env, &["job-result", "show", &id]).await?;
    assert_eq!(all.lines().filter(|l| l.contains("entry number")).count(), 5, "{all}");
    assert!(!all.contains("log page"), "{all}");
    for bad in [["--page", "0"], ["--page-size", "0"], ["--page-size", "100001"]] {
        let args = ["producer", "job-result", "show", &id, bad[0], bad[1]];
        assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
    }
    env.teardown().await
}
