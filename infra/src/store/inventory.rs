//! The scope inventory table: objects of the source of truth that context scopes resolve against.

use gitfleet_shared::inventory::{Inventory, ScopeObject};

use super::GenericClient;

/// Loads the whole inventory.
pub async fn load(db: &impl GenericClient) -> Result<Inventory, tokio_postgres::Error> {
    let rows = db.query("SELECT kind, object_id, fields FROM scope_object", &[]).await?;
    Ok(Inventory::new(rows.iter().map(|r| {
        let fields: serde_json::Value = r.get(2);
        ScopeObject { kind: r.get(0), id: Some(r.get(1)), fields: fields.as_object().cloned().unwrap_or_default() }
    })))
}

/// How many objects of each kind the inventory holds, by kind.
pub async fn count_by_kind(db: &impl GenericClient) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let rows = db.query("SELECT kind, count(*) FROM scope_object GROUP BY kind ORDER BY kind", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A stamp that changes whenever the inventory does (count and last update), part of a sync's fingerprint.
pub async fn stamp(db: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    Ok(db
        .query_one("SELECT count(*)::text || '@' || coalesce(max(updated)::text, '-') FROM scope_object", &[])
        .await?
        .get(0))
}

/// The key an object is stored under: its id, or else its kind's natural key (`name`, `model`) from the fields.
pub fn object_key(object: &ScopeObject) -> Option<String> {
    if let Some(id) = &object.id {
        return Some(id.clone());
    }
    ["name", "model", "slug"]
        .iter()
        .find_map(|k| object.fields.get(*k).and_then(|v| v.as_str()).map(|v| format!("{}:{v}", object.kind)))
}

/// Upserts objects by (kind, key); with `replace`, first removes every object of the kinds being imported.
pub async fn import(db: &impl GenericClient, objects: &[ScopeObject], replace: bool) -> Result<u64, ImportError> {
    // Every object is checked before anything is written: a file with one bad object imports nothing.
    let known = gitfleet_shared::inventory::KINDS;
    for (n, object) in objects.iter().enumerate() {
        if object.kind.is_empty() {
            return Err(ImportError::Invalid(format!("object {n}: `kind` must not be empty")));
        }
        if !known.contains(&object.kind.as_str()) {
            return Err(ImportError::Invalid(format!(
                "object {n}: unknown kind `{}`; the kinds are {}",
                gitfleet_shared::sanitize::printable(&object.kind),
                known.join(", ")
            )));
        }
    }
    if replace {
        let mut kinds: Vec<&str> = objects.iter().map(|o| o.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        db.execute("DELETE FROM scope_object WHERE kind = ANY($1)", &[&kinds]).await?;
    }
    let mut count = 0;
    for (n, object) in objects.iter().enumerate() {
        let Some(key) = object_key(object) else {
            return Err(ImportError::Invalid(format!(
                "object {n} ({}): give it an `id`, or a `name`, `model` or `slug` field",
                object.kind
            )));
        };
        let fields = serde_json::Value::Object(object.fields.clone());
        count += db
            .execute(
                "INSERT INTO scope_object (kind, object_id, fields) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, object_id) DO UPDATE SET fields = EXCLUDED.fields, updated = now()",
                &[&object.kind, &key, &fields],
            )
            .await?;
    }
    Ok(count)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}
