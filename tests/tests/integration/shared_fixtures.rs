//! `make test-fixtures`: the team's `../shared/fixtures` through the fleet. For Nautobot's own fixture data (with
//! our Python files) and each real repository written for Nautobot, a sync ends as `worker check` of the same
//! commit says, and the records it stores are the ones the check loads.

use std::path::Path;

use anyhow::Result;
use gitfleet_worker::config::ScopeModeArg;

use super::conformance::{check_json, create, record_lists, records_json};
use gitfleet_producer::commands;
use gitfleet_shared::event::RequestedBy;

use crate::support::git::{copy_tree, remote_of_folder};
use crate::support::{TestEnv, accepted};

const PROVIDES: &[&str] = &[
    "extras.configcontextschema",
    "extras.configcontext",
    "extras.job",
    "extras.exporttemplate",
    "extras.graphqlquery",
];

/// The repositories' scopes name objects of their authors' Nautobot; the sync stores them unresolved (lenient) and
/// the check reads them for shape, so both load the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_repositories_sync_as_they_check() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.scope_mode = ScopeModeArg::Lenient;
    env.start_fleet(1);
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    let staging = env.tmp.path().join("staging");
    let mut folders = Vec::new();
    for dir in ["01-valid-files", "02-invalid-files"] {
        let folder = staging.join(format!("nautobot-{dir}"));
        copy_tree(&shared.join("nautobot-git-data").join(dir), &folder)?;
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nautobot").join(dir);
        std::fs::copy(python.join("__init__.py"), folder.join("__init__.py"))?;
        copy_tree(&python.join("jobs"), &folder.join("jobs"))?;
        folders.push((format!("nautobot-{dir}"), folder));
    }
    for entry in std::fs::read_dir(shared.join("realworld"))? {
        let entry = entry?;
        folders.push((entry.file_name().to_string_lossy().replace('@', "-at-"), entry.path()));
    }
    folders.sort();
    for (name, folder) in folders {
        let (remote, _) = remote_of_folder(env.tmp.path(), &name, &folder)?;
        let provides: Vec<&str> = PROVIDES
            .iter()
            .copied()
            .filter(|t| *t != "extras.job" || folder.join("jobs").is_dir() || folder.join("jobs.py").is_file())
            .collect();
        let view = env.wait_job(create(&env, &name, &remote.file_url(), &provides).await?).await?;
        let checked = check_json(&remote.work, &name, &provides, None)?;
        assert_eq!(view.status, checked["status"].as_str().unwrap_or_default(), "{name}: {:#?}", view.logs);
        if view.status == "SUCCESS" {
            let records = records_json(&env, &name).await?;
            assert_eq!(record_lists(&records), record_lists(&checked), "{name}");
        }
        // Record names are unique across repositories, and versions of one repository share them.
        let deleted = commands::delete(&env.pool, &name, RequestedBy::cli()).await?;
        assert_eq!(env.wait_job(accepted(deleted)?).await?.status, "SUCCESS", "{name}");
    }
    env.teardown().await
}
