//! Fetch: credentials from the worker's secrets groups, the repository's timeout, and the bare mirror.

use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::job_result::grouping;
use gitfleet_shared::repo::Branch;
use gitfleet_shared::sanitize::sanitize;

use super::JobContext;
use super::error::{Failure, Step, StepError, TransientError};
use crate::git::{Checkout, Credentials, GitError, Mirror};
use crate::secrets;

/// A fetch that cannot succeed: the error goes under `ensure_git_repository`, and (as Nautobot's handler does)
/// "Changes to database records have been reverted." follows it.
fn failed(exc_type: &'static str, message: String) -> StepError {
    StepError::Failed(Failure::new(exc_type, message, grouping::ENSURE).reverted())
}

/// The credentials of the repository's secrets group (a missing group or token fails before any network call).
fn credentials<'a>(
    ctx: &'a JobContext,
    repo: &RepositoryRow,
) -> Step<(Option<Credentials>, Option<&'a secrets::SecretsGroup>)> {
    let group = repo.secrets_group.as_deref().map(|name| (name, ctx.secrets.get(name)));
    let credentials = match group {
        None => None,
        Some((name, found)) => {
            let ssh = repo.remote_url.starts_with("ssh://");
            match (secrets::problem(name, found, ssh), found) {
                (None, Some(g)) if ssh => g.ssh_key.as_ref().map(|key| Credentials::SshKey {
                    username: g.username.clone(),
                    private_key: key.expose().to_owned(),
                    passphrase: g.ssh_passphrase.as_ref().map(|p| p.expose().to_owned()),
                }),
                (None, Some(g)) => {
                    g.token.as_ref().map(|token| Credentials::http(g.username.as_deref(), token.expose()))
                }
                (problem, _) => {
                    let message = problem.unwrap_or_else(|| format!("The secrets_group \"{name}\" is unusable."));
                    return Err(failed("SecretError", message));
                }
            }
        }
    };
    Ok((credentials, group.and_then(|(_, g)| g)))
}

/// The repository's mirror with the worker's git settings, and its timeout for one git operation.
fn mirror(ctx: &JobContext, repo: &RepositoryRow) -> (Mirror, std::time::Duration) {
    let mirror = Mirror::new(&ctx.git_root, &repo.slug)
        .with_max_bytes(ctx.max_mirror_bytes)
        .with_tls(ctx.tls.clone())
        .with_host_keys(ctx.host_keys.clone())
        .with_shallow(ctx.shallow);
    let timeout = repo
        .git_timeout_secs
        .and_then(|s| u64::try_from(s).ok())
        .map_or(ctx.git_timeout, std::time::Duration::from_secs);
    (mirror, timeout)
}

/// The commit the remote's branch (or tag) points at now, asked as `git ls-remote` does: the ref advertisement
/// only, nothing fetched. For a pinned commit, the commit itself. The error is the message to record on the
/// repository (secrets redacted).
pub(super) async fn remote_tip(ctx: &JobContext, repo: &RepositoryRow) -> Result<String, String> {
    let (credentials, group) = credentials(ctx, repo).map_err(|e| e.to_string())?;
    let (mirror, timeout) = mirror(ctx, repo);
    let branch = Branch::parse(repo.branch.to_string()).map_err(|e| e.to_string())?;
    let url = repo.remote_url.clone();
    let span = tracing::Span::current();
    let task =
        tokio::task::spawn_blocking(move || span.in_scope(|| mirror.remote_tip(&url, &branch, credentials.as_ref())));
    let asked = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(asked)) => asked,
        Ok(Err(err)) => return Err(format!("the poll stopped unexpectedly: {err}")),
        Err(_) => return Err(format!("the remote did not answer within {} seconds", timeout.as_secs())),
    };
    asked.map_err(|err| sanitize(&secrets::redact(&err.to_string(), group)))
}

/// Credentials from the worker's secrets groups (a missing group or token fails before any network call), then a
/// fetch and ref resolution, off the reactor.
pub(super) async fn fetch(ctx: &JobContext, repo: &RepositoryRow) -> Step<(Mirror, Checkout)> {
    let (credentials, group) = credentials(ctx, repo)?;
    let (mirror, timeout) = mirror(ctx, repo);
    // Held until the last reader of the mirror (the artifact built after the commit, say) lets it go.
    let mirror = mirror.leased_from(&ctx.git_cache);
    // The repository's lock keeps other syncs out of the mirror; an artifact build of an earlier commit may still
    // read it, and then the mirror is compacted at a later sync. Awaited whole, outside the fetch's timeout: a
    // compaction abandoned mid-way would go on under the next sync's fetch.
    if !ctx.artifacts_building.lock().is_ok_and(|b| b.iter().any(|(slug, _)| *slug == repo.slug)) {
        let (mirror, slug, span) = (mirror.clone(), repo.slug.clone(), tracing::Span::current());
        tokio::task::spawn_blocking(move || span.in_scope(|| compact_packs(&mirror, &slug))).await?;
    }
    let fetched = match Branch::parse(repo.branch.clone()) {
        Err(err) => Err(GitError::InvalidRef(err)),
        Ok(branch) => {
            let (mirror, url) = (mirror.clone(), repo.remote_url.clone());
            let span = tracing::Span::current();
            let task = tokio::task::spawn_blocking(move || {
                span.in_scope(|| mirror.fetch_and_checkout_as(&url, &branch, credentials.as_ref()))
            });
            // git2 cannot be interrupted while it waits on a stalled server: the sync gives up here, and libgit2's
            // read timeout (set at start-up) ends the abandoned thread.
            match tokio::time::timeout(timeout, task).await {
                Ok(joined) => joined?,
                Err(_) => {
                    let message = format!(
                        "Fetching from the remote timed out after {} seconds (the repository's git timeout, or \
                         GITFLEET_GIT_TIMEOUT_SECS).",
                        timeout.as_secs()
                    );
                    return Err(failed("TimeoutError", message));
                }
            }
        }
    };
    match fetched {
        Ok(checkout) => Ok((mirror, checkout)),
        Err(err) if err.is_transient() => {
            Err(TransientError::Git(sanitize(&secrets::redact(&err.to_string(), group))).into())
        }
        Err(err) => Err(failed(err.exc_type(), secrets::redact(&err.to_string(), group))),
    }
}

/// Rewrites a mirror that fetches left in more packs or loose objects than [`crate::git::COMPACT_AT`] allows as one
/// pack. A failure is logged and changes nothing: the old packs and objects stay until a compaction succeeds.
fn compact_packs(mirror: &Mirror, slug: &str) {
    let started = std::time::Instant::now();
    match mirror.compact(&crate::git::COMPACT_AT) {
        Ok(None) => {}
        Ok(Some(replaced)) => {
            let took_ms = started.elapsed().as_millis();
            let (packs, loose_objects) = (replaced.packs, replaced.loose_objects);
            tracing::info!(
                slug,
                packs,
                loose_objects,
                took_ms,
                "mirror compacted: its packs and loose objects rewritten as one pack"
            );
        }
        Err(err) => tracing::warn!(slug, error = %err, "could not compact the mirror; it keeps its packs"),
    }
}
