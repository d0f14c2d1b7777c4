//! SSH remotes with key authentication and host-key checking, and shallow fetches deepened on demand.

use anyhow::Result;
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::RequestedBy;

use crate::support::git::{Remote, git_daemon, ssh_keygen, ssh_server};
use crate::support::{TestEnv, assert_log};

/// Writes a secrets group folder: `files` are (file name, content).
fn group(env: &TestEnv, name: &str, files: &[(&str, &str)]) -> Result<()> {
    let dir = env.tmp.path().join("secrets").join(name);
    std::fs::create_dir_all(&dir)?;
    for (file, content) in files {
        std::fs::write(dir.join(file), content)?;
    }
    Ok(())
}

async fn slug_of(env: &TestEnv, name: &str) -> Result<String> {
    let client = env.pool.get().await?;
    Ok(client.query_one("SELECT slug FROM git_repository WHERE name = $1", &[&name]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_remote_with_keys_and_known_hosts() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (plain_key, plain_pub) = ssh_keygen(&keys.path().join("plain"), "ed25519", "")?;
    let (locked_key, locked_pub) = ssh_keygen(&keys.path().join("locked"), "rsa", "open sesame")?;
    let (stranger_key, _) = ssh_keygen(&keys.path().join("stranger"), "ed25519", "")?;
    let served = keys.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "private")?;
    remote.commit("first", &[("README.md", "one")])?;
    let head = remote.commit("second", &[("README.md", "two")])?;
    let (sshd, host_line) = ssh_server(&keys.path().join("sshd"), &[&plain_pub, &locked_pub]).await?;
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".to_owned());
    let path = remote.bare.display().to_string();
    let url_with_user = format!("ssh://{user}@127.0.0.1:{}{path}", sshd.port);
    let url_without_user = format!("ssh://127.0.0.1:{}{path}", sshd.port);
    let known_hosts = keys.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{host_line}\n"))?;
    let plain = std::fs::read_to_string(&plain_key)?;
    let locked = std::fs::read_to_string(&locked_key)?;

    // Host key listed: each key form authenticates; a key the server does not know, or no key, fails fast.
    let mut env = TestEnv::new().await?;
    env.known_hosts = Some(known_hosts.clone());
    group(&env, "deploy-key", &[("ssh-privatekey", &plain)])?;
    group(
        &env,
        "locked-key",
        &[("ssh-privatekey", &locked), ("ssh-passphrase", "open sesame\n"), ("username", &user)],
    )?;
    group(&env, "stranger", &[("ssh-privatekey", &std::fs::read_to_string(&stranger_key)?)])?;
    group(&env, "token-only", &[("token", "ghp_not_a_key")])?;
    env.start_fleet(1);
    let cases = [
        ("Plain", url_with_user.as_str(), Some("deploy-key"), None),
        // No user in the URL: the group's `username` is used.
        ("Locked", url_without_user.as_str(), Some("locked-key"), None),
        ("Stranger", url_with_user.as_str(), Some("stranger"), Some("authentication failed")),
        ("Anonymous", url_with_user.as_str(), None, Some("authentication required")),
        ("TokenOnly", url_with_user.as_str(), Some("token-only"), Some("has no SSH private key")),
    ];
    let mut jobs = Vec::new();
    for (name, url, group, _) in cases {
        let new = NewRepo {
            name: format!("{name} {}", env.id),
            remote_url: url.to_owned(),
            secrets_group: group.map(str::to_owned),
            ..NewRepo::default()
        };
        jobs.push(commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap());
    }
    for ((name, _, _, failure), job) in cases.iter().zip(jobs) {
        let view = env.wait_job(job).await?;
        match failure {
            None => {
                assert_eq!(view.status, "SUCCESS", "{name}: {:#?}", view.logs);
                assert_eq!(view.result.clone().unwrap()["current_head"], head.as_str(), "{name}");
            }
            Some(needle) => {
                assert_eq!(view.status, "FAILURE", "{name}");
                assert_log(&view, "error", "ensure_git_repository", needle);
                let (started, done) = (view.date_started.unwrap(), view.date_done.unwrap());
                assert!((done - started).num_seconds() < 10, "{name} failed fast");
            }
        }
    }
    // SSH fetches are shallow too: the mirror holds the tip only.
    let mirror = env.git_root().join(slug_of(&env, &format!("Plain {}", env.id)).await?);
    assert!(mirror.join("shallow").exists(), "the mirror over ssh:// is shallow");
    // No key material or passphrase anywhere the worker writes.
    let key_line = plain.lines().nth(1).unwrap().to_owned();
    let stored = crate::credentials::everything_stored(&env).await?;
    for secret in [key_line.as_str(), "open sesame"] {
        assert!(!stored.contains(secret), "a secret reached the database");
        for (file, bytes) in crate::credentials::read_all(&env.git_root())? {
            assert!(!String::from_utf8_lossy(&bytes).contains(secret), "{}", file.display());
        }
    }
    env.teardown().await?;

    // A different key listed for the host: refused as a possible interception.
    let wrong_hosts = keys.path().join("wrong_known_hosts");
    let (_, other_host) = ssh_keygen(&keys.path().join("other-host"), "ed25519", "")?;
    std::fs::write(&wrong_hosts, format!("[127.0.0.1]:{} {other_host}\n", sshd.port))?;
    // Host not listed at all, then the explicit opt-out (known_hosts None in the test env).
    let empty_hosts = keys.path().join("empty_known_hosts");
    std::fs::write(&empty_hosts, "")?;
    for (hosts, failure) in [
        (Some(wrong_hosts), Some("does not match the key listed in")),
        (Some(empty_hosts), Some("is not in the known hosts file")),
        (None, None),
    ] {
        let mut env = TestEnv::new().await?;
        env.known_hosts = hosts;
        group(&env, "deploy-key", &[("ssh-privatekey", &plain)])?;
        env.start_fleet(1);
        let new = NewRepo {
            name: format!("Hostkey {}", env.id),
            remote_url: url_with_user.clone(),
            secrets_group: Some("deploy-key".to_owned()),
            ..NewRepo::default()
        };
        let view =
            env.wait_job(commands::create(&env.pool, new, RequestedBy::cli()).await?.job_result_id().unwrap()).await?;
        match failure {
            Some(needle) => {
                assert_eq!(view.status, "FAILURE", "{needle}");
                assert_log(&view, "error", "ensure_git_repository", needle);
            }
            None => assert_eq!(view.status, "SUCCESS", "opt-out: {:#?}", view.logs),
        }
        env.teardown().await?;
    }
    drop(sshd);
    Ok(())
}

/// Over git:// a new mirror holds only the tips; a branch pinned to an older commit deepens it to the full history;
/// later fetches of a shallow mirror stay shallow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shallow_fetch_deepened_for_a_pinned_commit() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "history")?;
    let mut commits = Vec::new();
    for n in 0..5 {
        commits.push(remote.commit(&format!("commit {n}"), &[("README.md", &format!("version {n}"))])?);
    }
    let daemon = git_daemon(&served).await?;
    let url = format!("git://127.0.0.1:{}/history.git", daemon.port);
    env.start_fleet(1);

    let tip_name = format!("Tip {}", env.id);
    let view = env.wait_job(env.create(&tip_name, &url, "main").await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let tip_mirror = env.git_root().join(slug_of(&env, &tip_name).await?);
    let shallow = std::fs::read_to_string(tip_mirror.join("shallow"))?;
    assert_eq!(shallow.trim(), commits[4], "only the tip was fetched");
    let object_count = |mirror: &std::path::Path| -> Result<usize> {
        let out = crate::support::git::git(mirror, &["rev-list", "--all"])?;
        Ok(out.lines().count())
    };
    assert_eq!(object_count(&tip_mirror)?, 1);

    // A commit outside the shallow history: the mirror is deepened and the sync lands on it.
    let pinned_name = format!("Pinned {}", env.id);
    let view = env.wait_job(env.create(&pinned_name, &url, &commits[1]).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], commits[1].as_str());
    let pinned_mirror = env.git_root().join(slug_of(&env, &pinned_name).await?);
    assert!(!pinned_mirror.join("shallow").exists(), "deepened to the full history");
    assert_eq!(object_count(&pinned_mirror)?, 5);

    // A new commit: the shallow mirror fetches just the new tip.
    let newest = remote.commit("commit 5", &[("README.md", "version 5")])?;
    let view = env.wait_job(env.sync(&tip_name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], newest.as_str());
    assert!(tip_mirror.join("shallow").exists());
    assert!(object_count(&tip_mirror)? <= 2, "no history beyond the tips was fetched");

    // Nothing new: the ref advertisement says so, and nothing is downloaded (libgit2 alone would ask for the tips
    // again and store an empty pack).
    let packs = |mirror: &std::path::Path| -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(mirror.join("objects/pack"))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        Ok(names)
    };
    let before = packs(&tip_mirror)?;
    let view = env.wait_job(env.sync(&tip_name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["up_to_date"], true);
    assert_eq!(packs(&tip_mirror)?, before, "an unchanged remote downloads nothing");
    // A tag is fetched, and once the remote drops it, pruned: the advertisement alone tells both apart.
    let tags = |mirror: &std::path::Path| crate::support::git::git(mirror, &["tag", "--list"]);
    remote.tag("v5")?;
    let view = env.wait_job(env.sync(&tip_name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(tags(&tip_mirror)?.trim(), "v5");
    crate::support::git::git(&remote.bare, &["tag", "-d", "v5"])?;
    let view = env.wait_job(env.sync(&tip_name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(tags(&tip_mirror)?.trim(), "", "the tag the remote dropped is pruned");

    // A commit that exists nowhere still fails with git's message after the deepening.
    let missing = format!("Missing {}", env.id);
    let view = env.wait_job(env.create(&missing, &url, "abcdef1234").await?).await?;
    assert_eq!(view.status, "FAILURE");
    assert_log(&view, "error", "ensure_git_repository", "did not match any file(s) known to git");
    drop(daemon);
    env.teardown().await
}

/// A mirror that fetches left in more packs than git's `gc --auto` allows is rewritten as one pack before the next
/// fetch: shallow, its history and tags as they were, and the sync goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_many_packs_is_compacted_before_the_next_fetch() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let served = env.tmp.path().join("served");
    std::fs::create_dir_all(&served)?;
    let remote = Remote::new(&served, "packs")?;
    // A first fetch of 100 objects or more is kept as the pack the server sent (fewer are unpacked loose).
    let files = |folder: &str| -> Vec<(String, String)> {
        (0..120).map(|n| (format!("{folder}/{n}.txt"), format!("{folder} {n}"))).collect()
    };
    let first = files("f");
    let mut first: Vec<(&str, &str)> = first.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    first.push(("README.md", "first"));
    remote.commit("first", &first)?;
    remote.tag("v1")?;
    let daemon = git_daemon(&served).await?;
    let url = format!("git://127.0.0.1:{}/packs.git", daemon.port);
    env.start_fleet(1);
    let name = format!("Packs {}", env.id);
    let view = env.wait_job(env.create(&name, &url, "main").await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    let slug = slug_of(&env, &name).await?;
    let mirror = env.git_root().join(&slug);
    let pack_dir = mirror.join("objects/pack");
    // The sync's artifact is built from the mirror after its commit, and a compaction waits while it is: so does
    // the test, until `current.json` names it.
    let current = env.tmp.path().join("storage/default/git").join(&slug).join("current.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read(&current)
        .ok()
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .is_some_and(|current| current["sha256"].is_string())
    {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the first sync's artifact was not named in 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let packs = || -> Result<Vec<std::path::PathBuf>> {
        let mut packs = Vec::new();
        for entry in std::fs::read_dir(&pack_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "pack") {
                packs.push(path);
            }
        }
        packs.sort();
        Ok(packs)
    };
    // As many fetches would leave it: copies of its pack under other names (the same objects in each).
    let first = packs()?;
    assert_eq!(first.len(), 1, "{first:?}");
    for n in 0..gitfleet_worker::git::COMPACT_AT.packs {
        for ext in ["pack", "idx"] {
            std::fs::copy(first[0].with_extension(ext), pack_dir.join(format!("pack-{n:040x}.{ext}")))?;
        }
    }
    assert_eq!(packs()?.len(), gitfleet_worker::git::COMPACT_AT.packs + 1);

    let second = remote.commit("second", &[("README.md", "second")])?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], second.as_str());
    // The fetch brought three objects, unpacked loose as `git fetch` does with fewer than 100: no pack for them.
    assert_eq!(packs()?.len(), 1, "one pack for what the mirror held");
    let loose = || gitfleet_worker::git::Mirror::new(env.git_root(), &slug).loose_objects().len();
    assert_eq!(loose(), 3, "the commit, its tree and the new README");
    assert!(mirror.join("shallow").exists(), "still shallow");
    crate::support::git::git(&mirror, &["fsck", "--connectivity-only", "--no-dangling"])?;
    assert_eq!(crate::support::git::git(&mirror, &["tag", "--list"])?.trim(), "v1");

    // So is a later one.
    let many = files("g");
    let third = remote.commit("third", &many.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect::<Vec<_>>())?;
    let view = env.wait_job(env.sync(&name).await?).await?;
    assert_eq!(view.status, "SUCCESS", "{:#?}", view.logs);
    assert_eq!(view.result.clone().unwrap()["current_head"], third.as_str());
    assert_eq!((packs()?.len(), loose()), (2, 3));
    crate::support::git::git(&mirror, &["fsck", "--connectivity-only", "--no-dangling"])?;
    drop(daemon);
    Ok(())
}
