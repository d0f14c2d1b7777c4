//! The records a repository owns, read back as the loaders' types, so they print in the shape of
//! `worker check --format json` (`producer repo records`).

use std::collections::BTreeMap;

use gitfleet_shared::inventory::LOCAL_KINDS;
use gitfleet_shared::loaders::{
    ConfigContext, ContextSchema, ExportTemplate, ExtensionRecord, GraphqlQuery, JobRecord, Loaded, LocalContext,
};
use serde_json::{Map, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

type Db = tokio_postgres::Error;

/// Everything the repository (`id`, with `slug` naming its job modules) owns, sorted as a load sorts it.
/// `extension_types` are the extension data types it provides: each gets its list, empty or not.
pub async fn owned(db: &impl GenericClient, id: Uuid, slug: &str, extension_types: &[&str]) -> Result<Loaded, Db> {
    let mut loaded = Loaded {
        config_context_schemas: schemas(db, id).await?,
        config_contexts: contexts(db, id).await?,
        local_contexts: local_contexts(db, id).await?,
        export_templates: export_templates(db, id).await?,
        graphql_queries: graphql_queries(db, id).await?,
        jobs: jobs(db, slug).await?,
        ..Loaded::default()
    };
    for identifier in extension_types {
        loaded.extensions.insert((*identifier).to_owned(), Vec::new());
    }
    let rows = db.query("SELECT data_type, key, data FROM extension_record WHERE repository_id = $1", &[&id]).await?;
    for row in rows {
        let record = ExtensionRecord { key: row.get(1), data: row.get(2) };
        loaded.extensions.entry(row.get(0)).or_default().push(record);
    }
    loaded.sort();
    Ok(loaded)
}

async fn schemas(db: &impl GenericClient, id: Uuid) -> Result<Vec<ContextSchema>, Db> {
    let rows = db
        .query(
            "SELECT name, description, data_schema FROM config_context_schema WHERE owner_repository_id = $1",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ContextSchema { name: r.get(0), description: r.get(1), data_schema: r.get(2), file: String::new() })
        .collect())
}

async fn contexts(db: &impl GenericClient, id: Uuid) -> Result<Vec<ConfigContext>, Db> {
    let rows = db
        .query(
            "SELECT c.name, c.weight, c.description, c.is_active, s.name, c.data, c.scope, c.scope_resolved
             FROM config_context c LEFT JOIN config_context_schema s ON s.id = c.config_context_schema_id
             WHERE c.owner_repository_id = $1",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ConfigContext {
            name: r.get(0),
            weight: i64::from(r.get::<_, i16>(1)),
            description: r.get(2),
            is_active: r.get(3),
            config_context_schema: r.get(4),
            data: r.get::<_, Value>(5).into(),
            scope: lists(r.get(6)),
            resolved: lists(r.get(7))
                .into_iter()
                .map(|(k, v)| (k, v.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect()))
                .collect(),
            file: String::new(),
        })
        .collect())
}

/// A stored `{filter: [..]}` object as the loader's map of lists.
fn lists(value: Value) -> BTreeMap<String, Vec<Value>> {
    match value {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::Array(items) => (k, items),
                other => (k, vec![other]),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

async fn local_contexts(db: &impl GenericClient, id: Uuid) -> Result<Vec<LocalContext>, Db> {
    let rows = db
        .query("SELECT kind, name, data, target_object_id FROM local_context WHERE owner_repository_id = $1", &[&id])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let stored: String = r.get(0);
            let (kind, _) = LOCAL_KINDS.iter().find(|(k, _)| *k == stored)?;
            Some(LocalContext {
                kind,
                name: r.get(1),
                data: r.get::<_, Option<Value>>(2).unwrap_or(Value::Null).into(),
                target: r.get(3),
            })
        })
        .collect())
}

async fn export_templates(db: &impl GenericClient, id: Uuid) -> Result<Vec<ExportTemplate>, Db> {
    let rows = db
        .query(
            "SELECT content_type, name, mime_type, file_extension, template_code FROM export_template
             WHERE owner_repository_id = $1",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ExportTemplate {
            content_type: r.get(0),
            name: r.get(1),
            mime_type: r.get(2),
            file_extension: r.get(3),
            template_code: r.get(4),
        })
        .collect())
}

async fn graphql_queries(db: &impl GenericClient, id: Uuid) -> Result<Vec<GraphqlQuery>, Db> {
    let rows =
        db.query("SELECT name, query, variables FROM graphql_query WHERE owner_repository_id = $1", &[&id]).await?;
    Ok(rows
        .iter()
        .map(|r| GraphqlQuery {
            name: r.get(0),
            query: r.get(1),
            variables: match r.get(2) {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            file: String::new(),
        })
        .collect())
}

/// A repository's jobs are those of its modules (`<slug>.*`), installed or not: a sync never deletes one.
async fn jobs(db: &impl GenericClient, slug: &str) -> Result<Vec<JobRecord>, Db> {
    let prefix = format!("{}.%", slug.replace('_', "\\_"));
    let rows = db
        .query(
            "SELECT module_name, job_class_name, grouping, name, description, installed, flags FROM job
             WHERE module_name LIKE $1",
            &[&prefix],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| JobRecord {
            module_name: r.get(0),
            job_class_name: r.get(1),
            grouping: r.get(2),
            meta_name: r.get(3),
            name: r.get(3),
            description: r.get(4),
            installed: r.get(5),
            flags: match r.get(6) {
                Value::Object(map) => map,
                _ => Map::new(),
            },
        })
        .collect())
}
