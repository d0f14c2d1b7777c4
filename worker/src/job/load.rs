//! Load: the commit's tree read from the mirror and every registered data type loaded from it (pure, off the
//! reactor), with what the database adds (the inventory, whether the repository had jobs).

use gitfleet_infra::store::inventory;
use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::inventory::Inventory;
use gitfleet_shared::job_result::grouping;
use gitfleet_shared::loaders::{LoadInput, Loaded};

use super::JobContext;
use super::error::{Failure, Step, StepError};
use crate::git::Mirror;

/// What a load needs from the database besides the tree.
pub(super) struct LoadContext {
    pub inventory: std::sync::Arc<Inventory>,
    /// Changes whenever the inventory does: part of the fingerprint.
    pub inventory_stamp: String,
}

pub(super) async fn context(ctx: &JobContext) -> Step<LoadContext> {
    let client = ctx.pool.get().await?;
    Ok(LoadContext {
        inventory: std::sync::Arc::new(inventory::load(&**client).await?),
        inventory_stamp: inventory::stamp(&**client).await?,
    })
}

/// The inventory stamp alone (coalescing needs only the fingerprint).
pub(super) async fn inventory_stamp(ctx: &JobContext) -> Step<String> {
    let client = ctx.pool.get().await?;
    Ok(inventory::stamp(&**client).await?)
}

/// What a load of `repo`'s files in `tree` takes, its budget untouched.
pub(super) fn input<'a>(
    tree: &'a gitfleet_shared::tree::RepoTree,
    repo: &'a RepositoryRow,
    inventory: &'a Inventory,
    (limits, scope_mode): (gitfleet_shared::yaml::Limits, gitfleet_shared::loaders::ScopeMode),
) -> LoadInput<'a> {
    LoadInput {
        tree,
        repo_name: &repo.name,
        slug: &repo.slug,
        provided: &repo.provided_contents,
        inventory: Some(inventory),
        scope_mode,
        limits,
        spent: Default::default(),
    }
}

/// Reads the commit's tree and runs every registered loader on it, off the reactor, holding all of it (a dry run;
/// a sync streams its full loads). A tree that cannot be read fails the job under `ensure_git_repository`.
pub(super) async fn load_commit(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: Mirror,
    head: &str,
    context: &LoadContext,
) -> Step<Loaded> {
    let (registry, repo, limits, mode, head) =
        (ctx.registry.clone(), repo.clone(), ctx.limits, ctx.scope_mode, head.to_owned());
    let inventory = context.inventory.clone();
    let span = tracing::Span::current();
    let loaded = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let tree = tracing::info_span!("tree read").in_scope(|| mirror.read_tree(&head, limits.max_bytes))?;
            let input = input(&tree, &repo, &inventory, (limits, mode));
            Ok::<_, crate::git::GitError>(registry.load(&input))
        })
    })
    .await?;
    loaded.map_err(|err| StepError::Failed(Failure::new(err.exc_type(), err.to_string(), grouping::ENSURE)))
}
