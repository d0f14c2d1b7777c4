//! `worker storage ls`, `worker storage gc` and `worker storage verify`.

use std::io::Write;
use std::time::Duration;

use super::{Storage, StorageSettings};
use crate::WorkerSettings;

/// Prints every stored object (store, key, size) under an optional key prefix.
pub async fn ls(settings: StorageSettings, prefix: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let storage = Storage::new(settings).await;
    let mut seen = Vec::new();
    for store in storage.stores() {
        let backend = storage.backend(&store);
        let name = backend.describe();
        if seen.contains(&name) {
            continue;
        }
        for (key, size) in backend.list_sizes(prefix).await? {
            writeln!(out, "{name}\t{key}\t{size}")?;
        }
        seen.push(name);
    }
    Ok(())
}

/// Removes what deleted repositories kept past the retention, then every blob no manifest references.
pub async fn gc(worker: &WorkerSettings, settings: StorageSettings, out: &mut impl Write) -> anyhow::Result<()> {
    let storage = Storage::new(settings).await;
    let pool = gitfleet_infra::db::connect(&worker.database, Duration::from_secs(10)).await?;
    let client = pool.get().await?;
    let days = i32::try_from(storage.settings.retention_days).unwrap_or(i32::MAX);
    let expired: Vec<String> = client
        .query(
            "SELECT DISTINCT slug FROM git_repository d WHERE d.deleted_at < now() - make_interval(days => $1)
               AND NOT EXISTS (SELECT 1 FROM git_repository l WHERE l.slug = d.slug AND l.deleted_at IS NULL)",
            &[&days],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut removed_objects = 0;
    for slug in &expired {
        removed_objects += storage.remove_repository(slug).await?;
    }
    let (kept, removed) = storage.gc().await?;
    writeln!(
        out,
        "removed {removed_objects} objects of deleted repositories past the retention of {days} days; blobs: {kept} \
         referenced, {removed} removed"
    )?;
    Ok(())
}

/// Checks the live manifests against what each store holds and prints each repository short of blobs. With
/// `repair`, the manifests record what is missing and those repositories' fingerprints are cleared, so their next
/// sync (a poll, a webhook, `producer repo sync`) stores the missing blobs again even at the same commit. Returns
/// how many blobs were missing.
pub async fn verify(
    worker: &WorkerSettings,
    settings: StorageSettings,
    repair: bool,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let storage = Storage::new(settings).await;
    let short = storage.verify(repair).await?;
    let mut missing = 0;
    for (slug, blobs) in &short {
        missing += blobs.len();
        let list: Vec<&str> = blobs.iter().map(String::as_str).collect();
        writeln!(out, "{slug}: {} blobs missing: {}", blobs.len(), list.join(" "))?;
    }
    if repair && !short.is_empty() {
        let pool = gitfleet_infra::db::connect(&worker.database, Duration::from_secs(10)).await?;
        let slugs: Vec<&str> = short.iter().map(|(slug, _)| slug.as_str()).collect();
        let marked = pool
            .get()
            .await?
            .execute(
                "UPDATE git_repository SET applied_fingerprint = '' WHERE slug = ANY($1) AND deleted_at IS NULL",
                &[&slugs],
            )
            .await?;
        writeln!(out, "marked {marked} repositories: their next sync stores the missing blobs again")?;
    }
    writeln!(out, "{missing} blobs missing in {} repositories", short.len())?;
    Ok(missing)
}
