//! Reconciles what a load produced with what the repository owns in PostgreSQL, inside the sync's transaction on
//! the lock's connection (spec c.1): create what is new, update what changed, log "no change" for the rest, delete
//! (or, for jobs, uninstall) what is gone. Global uniqueness clashes with records the repository does not own are
//! checked before writing, so they become error entries (which fail the sync) instead of aborting the transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use gitfleet_shared::job_result::{LogEntry, LogLevel};
use gitfleet_shared::loaders::{
    DataChecker, DataType, Loaded, Records, SchemaEnforcement, unique_job_name as unique_name,
};
use serde_json::{Value, json};
use tokio_postgres::GenericClient;
use uuid::Uuid;

type Db = tokio_postgres::Error;

/// The repository whose records are being reconciled.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub slug: &'a str,
}

impl Owner<'_> {
    fn display(&self, record: &str) -> String {
        format!("[{}] {record}", self.name)
    }
}

/// What reconciling did to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Refreshed,
    Unchanged,
    /// Deleted (a Job is never deleted: marked as no longer installed, it is refreshed).
    Deleted,
    /// Refused (a name another repository owns, a schema that does not exist): an error that fails the sync.
    Rejected,
    /// Reconciled, with a warning or error about it (context data that does not match its schema).
    Warned,
}

/// One record's outcome: its data type, the record, what happened, and its log line, rendered from these by the
/// type's [`Wording`] (or, for a rejection, the error itself).
#[derive(Debug, Clone)]
pub struct Change {
    pub data_type: &'static str,
    /// The record as the line names it (a name, a class path, `content type: name`).
    pub record: String,
    pub kind: ChangeKind,
    pub line: LogEntry,
}

/// One line template: its level, its message (`{record}` and `{object}` are filled in) and whether the line's log
/// object is the record as shown (`[repository] name`).
#[derive(Debug, Clone, Copy)]
struct Line {
    level: LogLevel,
    message: &'static str,
    about: bool,
}

const fn info(message: &'static str, about: bool) -> Line {
    Line { level: LogLevel::Info, message, about }
}

const fn warning(message: &'static str, about: bool) -> Line {
    Line { level: LogLevel::Warning, message, about }
}

/// How a data type's record outcomes read in the log: Nautobot's own wording, per outcome.
#[derive(Debug, Clone, Copy)]
struct Wording {
    grouping: &'static str,
    created: Line,
    refreshed: Line,
    unchanged: Line,
    deleted: Line,
}

const SCHEMAS: Wording = Wording {
    grouping: "config context schemas",
    created: info("Successfully created config context schema", true),
    refreshed: info("Successfully refreshed config context schema", true),
    unchanged: info("No change to config context schema", true),
    deleted: warning("Deleted config context schema {object}", false),
};
const CONTEXTS: Wording = Wording {
    grouping: "config contexts",
    created: info("Successfully created config context", true),
    refreshed: info("Successfully refreshed config context", true),
    unchanged: info("No change to config context", true),
    deleted: warning("Deleted config context {object}", false),
};
/// Local contexts are only ever deleted by a sync (their data lives on the device or virtual machine).
const LOCAL_CONTEXTS: Wording =
    Wording { grouping: "local config contexts", deleted: warning("Deleted local config context", true), ..CONTEXTS };
/// A Job is rewritten at every sync (counted as unchanged) and never deleted: no longer provided, it is marked
/// uninstalled (counted as a change).
const JOBS: Wording = Wording {
    grouping: "jobs",
    created: info("Created Job record for {record}", true),
    refreshed: warning("Marking Job record as no longer installed", true),
    unchanged: info("Refreshed Job record for {record}", true),
    deleted: warning("Marking Job record as no longer installed", true),
};
const EXPORT_TEMPLATES: Wording = Wording {
    grouping: "export templates",
    created: info("Successfully created export template", true),
    refreshed: info("Successfully refreshed export template", true),
    unchanged: info("No change to export template", true),
    deleted: warning("Deleted export template {object}", false),
};
const GRAPHQL_QUERIES: Wording = Wording {
    grouping: "graphql queries",
    created: info("Successfully created GraphQL query: {record}", false),
    refreshed: info("Successfully updated GraphQL query: {record}", false),
    unchanged: info("No changes to GraphQL query: {record}", false),
    deleted: warning("Deleted GraphQL query: {record}", false),
};

/// Where a reconcile hands its changes as it goes, in batches (so a type of 100,000 records never holds all of their
/// lines): whatever receives them writes them in order. Without one, every change is returned at the end.
pub type ChangeSink = tokio::sync::mpsc::Sender<Vec<Change>>;

/// Changes handed on at a time, and the records reconciled per statement.
const CHUNK: usize = 1000;

/// The changes of one data type, in the order they happened.
struct Changes<'s> {
    data_type: &'static str,
    list: Vec<Change>,
    sink: Option<&'s ChangeSink>,
}

impl<'s> Changes<'s> {
    fn new(data_type: &'static str, sink: Option<&'s ChangeSink>) -> Self {
        Self { data_type, list: Vec::new(), sink }
    }

    /// Hands the changes recorded so far to the sink, if there is one. When the sink's receiver is gone (its
    /// writer failed, and reports that failure itself), the changes are dropped.
    async fn flush(&mut self) {
        if let Some(sink) = self.sink
            && !self.list.is_empty()
        {
            let _ = sink.send(std::mem::take(&mut self.list)).await;
        }
    }

    /// Records an outcome and renders its line: `record` fills `{record}`, `object` (the record as shown, or the
    /// name the line is about) fills `{object}` and the log object.
    fn record(&mut self, wording: &Wording, kind: ChangeKind, record: &str, object: &str) {
        let line = match kind {
            ChangeKind::Created => wording.created,
            ChangeKind::Refreshed => wording.refreshed,
            ChangeKind::Unchanged => wording.unchanged,
            ChangeKind::Deleted | ChangeKind::Rejected | ChangeKind::Warned => wording.deleted,
        };
        let message = line.message.replace("{record}", record).replace("{object}", object);
        let mut entry = LogEntry::new(line.level, wording.grouping, message);
        if line.about {
            entry = entry.about(object);
        }
        self.list.push(Change { data_type: self.data_type, record: record.to_owned(), kind, line: entry });
    }

    /// Records a refusal: its error line says what was refused and why.
    fn reject(&mut self, record: &str, line: LogEntry) {
        let kind = ChangeKind::Rejected;
        self.list.push(Change { data_type: self.data_type, record: record.to_owned(), kind, line });
    }

    /// Records a warning (or, when enforced, an error) about a record, besides what reconciling did to it.
    fn warn(&mut self, record: &str, line: LogEntry) {
        let kind = ChangeKind::Warned;
        self.list.push(Change { data_type: self.data_type, record: record.to_owned(), kind, line });
    }
}

/// Reconciles one data type with the writer its records need; returns what happened to each record (what it did
/// not hand to `sink` already).
pub async fn reconcile_type(
    db: &impl GenericClient,
    owner: Owner<'_>,
    data_type: &dyn DataType,
    loaded: &Loaded,
    enforcement: SchemaEnforcement,
    sink: Option<&ChangeSink>,
) -> Result<Vec<Change>, Db> {
    let mut changes = Changes::new(data_type.identifier(), sink);
    let logs = &mut changes;
    match data_type.records() {
        Records::ConfigContextSchemas => schemas(db, owner, loaded, logs).await?,
        Records::ConfigContexts => {
            contexts(db, owner, loaded, logs, enforcement, None).await?;
            local_contexts(db, owner, loaded, logs, None).await?;
        }
        Records::Jobs => jobs(db, owner, loaded, logs).await?,
        Records::ExportTemplates => export_templates(db, owner, loaded, logs).await?,
        Records::GraphqlQueries => graphql_queries(db, owner, loaded, logs).await?,
        Records::Nothing => {}
        Records::Extension => extension(db, owner, data_type, data_type.identifier(), loaded, logs).await?,
    }
    Ok(changes.list)
}

/// Which config contexts and local contexts a reconcile covers: the records of the files an incremental sync read
/// (every other record is left as it is).
#[derive(Debug, Clone, Copy)]
pub struct ContextScope<'a> {
    /// Config context names.
    pub names: &'a [String],
    /// Local contexts: `(kind, name)`.
    pub locals: &'a [(String, String)],
}

/// Reconciles only the config contexts and local contexts in `scope`: `loaded` holds the ones that still exist;
/// the rest of the scope is deleted.
pub async fn reconcile_contexts_in(
    db: &impl GenericClient,
    owner: Owner<'_>,
    loaded: &Loaded,
    enforcement: SchemaEnforcement,
    scope: ContextScope<'_>,
) -> Result<Vec<Change>, Db> {
    let mut changes = Changes::new("extras.configcontext", None);
    contexts(db, owner, loaded, &mut changes, enforcement, Some(scope.names)).await?;
    local_contexts(db, owner, loaded, &mut changes, Some(scope.locals)).await?;
    Ok(changes.list)
}

/// Which of `names` some row of `table` already uses (one query for the whole batch, one index probe per name).
///
/// Lookups of the keys a load names are written as a lateral probe per key: with `name = ANY($1)` the planner
/// may scan the table instead, which it does while the sync's own inserts are missing from its statistics, and a
/// full load of 100,000 files then scans a growing table once per batch.
async fn names_taken(db: &impl GenericClient, table: &str, names: &[&str]) -> Result<HashSet<String>, Db> {
    if names.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "SELECT t.name FROM unnest($1::text[]) AS u(name)
         CROSS JOIN LATERAL (SELECT name FROM {table} WHERE name = u.name LIMIT 1) t"
    );
    Ok(db.query(&sql, &[&names]).await?.iter().map(|r| r.get(0)).collect())
}

async fn delete_ids(db: &impl GenericClient, table: &str, ids: &[Uuid]) -> Result<(), Db> {
    if !ids.is_empty() {
        db.execute(&format!("DELETE FROM {table} WHERE id = ANY($1)"), &[&ids]).await?;
    }
    Ok(())
}

async fn schemas(db: &impl GenericClient, owner: Owner<'_>, loaded: &Loaded, logs: &mut Changes<'_>) -> Result<(), Db> {
    const G: &str = "config context schemas";
    let rows = db
        .query(
            "SELECT id, name, description, data_schema FROM config_context_schema WHERE owner_repository_id = $1",
            &[&owner.id],
        )
        .await?;
    let owned: BTreeMap<String, (Uuid, String, Value)> =
        rows.iter().map(|r| (r.get(1), (r.get(0), r.get(2), r.get(3)))).collect();
    let new_names: Vec<&str> =
        loaded.config_context_schemas.iter().map(|s| s.name.as_str()).filter(|n| !owned.contains_key(*n)).collect();
    let taken = names_taken(db, "config_context_schema", &new_names).await?;
    let (mut ids, mut names, mut descriptions, mut schemas_json) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for schema in &loaded.config_context_schemas {
        seen.insert(schema.name.clone());
        let shown = owner.display(&schema.name);
        if let Some((id, description, data_schema)) = owned.get(&schema.name) {
            if *description == schema.description && *data_schema == schema.data_schema {
                logs.record(&SCHEMAS, ChangeKind::Unchanged, &schema.name, &shown);
            } else {
                db.execute(
                    "UPDATE config_context_schema SET description = $2, data_schema = $3, last_updated = now() WHERE id = $1",
                    &[id, &schema.description, &schema.data_schema],
                )
                .await?;
                logs.record(&SCHEMAS, ChangeKind::Refreshed, &schema.name, &shown);
            }
        } else if taken.contains(&schema.name) {
            logs.reject(
                &schema.name,
                LogEntry::error(
                    G,
                    format!(
                        "Error in loading config context schema data from `{}`: Config context schema with this Name \
                     already exists.",
                        schema.file
                    ),
                ),
            );
        } else {
            ids.push(Uuid::new_v4());
            names.push(schema.name.as_str());
            descriptions.push(schema.description.as_str());
            schemas_json.push(schema.data_schema.clone());
            logs.record(&SCHEMAS, ChangeKind::Created, &schema.name, &shown);
        }
    }
    if !ids.is_empty() {
        db.execute(
            "INSERT INTO config_context_schema (id, name, description, data_schema, owner_repository_id)
             SELECT u.id, u.name, u.description, u.data_schema, $5
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS u(id, name, description, data_schema)",
            &[&ids, &names, &descriptions, &schemas_json, &owner.id],
        )
        .await?;
    }
    let mut stale = Vec::new();
    for (name, (id, _, _)) in owned.iter().filter(|(n, _)| !seen.contains(*n)) {
        stale.push(*id);
        logs.record(&SCHEMAS, ChangeKind::Deleted, name, &owner.display(name));
    }
    delete_ids(db, "config_context_schema", &stale).await
}

async fn contexts(
    db: &impl GenericClient,
    owner: Owner<'_>,
    loaded: &Loaded,
    logs: &mut Changes<'_>,
    enforcement: SchemaEnforcement,
    scope: Option<&[String]>,
) -> Result<(), Db> {
    let schemas = linked_schemas(db, &loaded.config_contexts).await?;
    let mut checker = DataChecker::new(enforcement);
    let mut seen: HashSet<&str> = HashSet::with_capacity(loaded.config_contexts.len());
    // A chunk at a time: the rows it names, its inserts in one statement, its lines handed on.
    for chunk in loaded.config_contexts.chunks(CHUNK) {
        seen.extend(chunk.iter().map(|c| c.name.as_str()));
        contexts_chunk(db, owner, chunk, logs, &schemas, &mut checker).await?;
        logs.flush().await;
    }
    let rows = match scope {
        None => {
            let sql = "SELECT id, name FROM config_context WHERE owner_repository_id = $1 ORDER BY name COLLATE \"C\"";
            db.query(sql, &[&owner.id]).await?
        }
        Some(names) => {
            let sql = "SELECT c.id, c.name FROM unnest($2::text[]) AS u(name)
                       CROSS JOIN LATERAL (SELECT id, name FROM config_context
                                           WHERE name = u.name AND owner_repository_id = $1 LIMIT 1) c
                       ORDER BY c.name COLLATE \"C\"";
            db.query(sql, &[&owner.id, &names]).await?
        }
    };
    let mut stale = Vec::new();
    for row in rows.iter().filter(|r| !seen.contains(r.get::<_, &str>(1))) {
        let name: &str = row.get(1);
        stale.push(row.get::<_, Uuid>(0));
        logs.record(&CONTEXTS, ChangeKind::Deleted, name, &owner.display(name));
        if stale.len() % CHUNK == 0 {
            logs.flush().await;
        }
    }
    delete_ids(db, "config_context", &stale).await
}

/// Reconciles one chunk of the loaded config contexts (distinct names) with the rows of the same names.
async fn contexts_chunk(
    db: &impl GenericClient,
    owner: Owner<'_>,
    chunk: &[gitfleet_shared::loaders::ConfigContext],
    logs: &mut Changes<'_>,
    schemas: &BTreeMap<String, (Uuid, Value)>,
    checker: &mut DataChecker,
) -> Result<(), Db> {
    const G: &str = "config contexts";
    let names: Vec<&str> = chunk.iter().map(|c| c.name.as_str()).collect();
    let owned = owned_contexts(db, owner, &names).await?;
    let new_names: Vec<&str> = names.iter().copied().filter(|n| !owned.contains_key(*n)).collect();
    let taken = names_taken(db, "config_context", &new_names).await?;
    let mut insert = Insert::default();
    for context in chunk {
        let shown = owner.display(&context.name);
        let existing = owned.get(&context.name);
        if existing.is_none() && taken.contains(&context.name) {
            let file = &context.file;
            let message = format!(
                "Error in loading config context data from `{file}`: Config context with this Name already exists."
            );
            logs.reject(&context.name, LogEntry::error(G, message));
            continue;
        }
        let current_schema = existing.and_then(|e| e.schema.clone());
        let mut schema_changed = current_schema != context.config_context_schema;
        let linked = context.config_context_schema.as_ref().and_then(|n| schemas.get(n).map(|s| (n, s)));
        let schema_id = linked.map(|(_, (id, _))| *id);
        if let Some((name, (_, data_schema))) = linked
            && let Some(line) = checker.check(context, name, data_schema)
        {
            logs.warn(&context.name, line.about(&shown));
        }
        if let Some(name) = &context.config_context_schema
            && schema_id.is_none()
            && schema_changed
        {
            logs.reject(
                &context.name,
                LogEntry::error(G, format!("ConfigContextSchema {name} does not exist.")).about(&shown),
            );
            schema_changed = false;
        }
        let weight = i16::try_from(context.weight).unwrap_or(i16::MAX);
        let scope = json!(context.scope);
        let resolved = json!(context.resolved);
        match existing {
            Some(row) if !schema_changed && row.same_as(context, weight, &scope, &resolved) => {
                logs.record(&CONTEXTS, ChangeKind::Unchanged, &context.name, &shown);
            }
            Some(row) => {
                let data = context.data.value();
                let fields: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
                    [&row.id, &weight, &context.description, &context.is_active, &data, &scope, &resolved, &schema_id];
                update_context(db, &fields).await?;
                logs.record(&CONTEXTS, ChangeKind::Refreshed, &context.name, &shown);
            }
            None => {
                insert.push(context, weight, [scope, resolved], schema_id);
                logs.record(&CONTEXTS, ChangeKind::Created, &context.name, &shown);
            }
        }
    }
    insert_contexts(db, owner, &insert).await
}

/// Schema links are looked up by name, globally, among every repository's schemas as this transaction sees them
/// (this repository's were reconciled just before): one query for all of them, with the schemas themselves, which
/// the contexts' data is checked against.
async fn linked_schemas(
    db: &impl GenericClient,
    contexts: &[gitfleet_shared::loaders::ConfigContext],
) -> Result<BTreeMap<String, (Uuid, Value)>, Db> {
    let mut names: Vec<&str> = contexts.iter().filter_map(|c| c.config_context_schema.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows =
        db.query("SELECT name, id, data_schema FROM config_context_schema WHERE name = ANY($1)", &[&names]).await?;
    Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect())
}

/// Rewrites a config context: id, weight, description, is_active, data, scope, resolved scope, schema id.
async fn update_context(
    db: &impl GenericClient,
    fields: &[&(dyn tokio_postgres::types::ToSql + Sync); 8],
) -> Result<(), Db> {
    db.execute(
        "UPDATE config_context SET weight = $2, description = $3, is_active = $4, data = $5, scope = $6,
             scope_resolved = $7, config_context_schema_id = $8, last_updated = now() WHERE id = $1",
        fields,
    )
    .await?;
    Ok(())
}

/// A config context as the database holds it: its id, the fields a sync compares, and its schema's name.
struct ContextRow {
    id: Uuid,
    fields: (i16, String, bool, Value, Value, Value),
    schema: Option<String>,
}

impl ContextRow {
    fn same_as(
        &self,
        context: &gitfleet_shared::loaders::ConfigContext,
        weight: i16,
        scope: &Value,
        resolved: &Value,
    ) -> bool {
        let (w, description, active, data, s, r) = &self.fields;
        *w == weight
            && *description == context.description
            && *active == context.is_active
            && context.data == *data
            && s == scope
            && r == resolved
    }
}

/// The config contexts the repository owns among `names`, by name.
async fn owned_contexts(
    db: &impl GenericClient,
    owner: Owner<'_>,
    names: &[&str],
) -> Result<BTreeMap<String, ContextRow>, Db> {
    let rows = db
        .query(
            "SELECT c.id, c.name, c.weight, c.description, c.is_active, s.name, c.data, c.scope, c.scope_resolved
             FROM unnest($2::text[]) AS u(name)
             CROSS JOIN LATERAL (SELECT * FROM config_context WHERE name = u.name AND owner_repository_id = $1 LIMIT 1) c
             LEFT JOIN config_context_schema s ON s.id = c.config_context_schema_id",
            &[&owner.id, &names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let row = ContextRow {
                id: r.get(0),
                fields: (r.get(2), r.get(3), r.get(4), r.get(6), r.get(7), r.get(8)),
                schema: r.get(5),
            };
            (r.get::<_, String>(1), row)
        })
        .collect())
}

/// New config contexts, column by column, written in one statement.
#[derive(Default)]
struct Insert<'a> {
    ids: Vec<Uuid>,
    names: Vec<&'a str>,
    weights: Vec<i16>,
    descriptions: Vec<&'a str>,
    active: Vec<bool>,
    data: Vec<Value>,
    scope: Vec<Value>,
    resolved: Vec<Value>,
    schema: Vec<Option<Uuid>>,
}

impl<'a> Insert<'a> {
    fn push(
        &mut self,
        context: &'a gitfleet_shared::loaders::ConfigContext,
        weight: i16,
        [scope, resolved]: [Value; 2],
        schema: Option<Uuid>,
    ) {
        self.ids.push(Uuid::new_v4());
        self.names.push(&context.name);
        self.weights.push(weight);
        self.descriptions.push(&context.description);
        self.active.push(context.is_active);
        self.data.push(context.data.value());
        self.scope.push(scope);
        self.resolved.push(resolved);
        self.schema.push(schema);
    }
}

async fn insert_contexts(db: &impl GenericClient, owner: Owner<'_>, insert: &Insert<'_>) -> Result<(), Db> {
    if !insert.ids.is_empty() {
        db.execute(
            "INSERT INTO config_context (id, name, weight, description, is_active, data, scope, scope_resolved,
             config_context_schema_id, owner_repository_id)
         SELECT u.*, $10 FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::bool[], $6::jsonb[],
             $7::jsonb[], $8::jsonb[], $9::uuid[])
             AS u(id, name, weight, description, is_active, data, scope, scope_resolved, schema_id)",
            &[
                &insert.ids,
                &insert.names,
                &insert.weights,
                &insert.descriptions,
                &insert.active,
                &insert.data,
                &insert.scope,
                &insert.resolved,
                &insert.schema,
                &owner.id,
            ],
        )
        .await?;
    }
    Ok(())
}

async fn local_contexts(
    db: &impl GenericClient,
    owner: Owner<'_>,
    loaded: &Loaded,
    logs: &mut Changes<'_>,
    scope: Option<&[(String, String)]>,
) -> Result<(), Db> {
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(loaded.local_contexts.len());
    for chunk in loaded.local_contexts.chunks(CHUNK) {
        seen.extend(chunk.iter().map(|l| (l.kind, l.name.as_str())));
        local_chunk(db, owner, chunk).await?;
    }
    let (kinds, names): (Vec<&str>, Vec<&str>) =
        scope.unwrap_or_default().iter().map(|(k, n)| (k.as_str(), n.as_str())).unzip();
    let owned = match scope {
        None => {
            db.query(
                "SELECT kind, name FROM local_context WHERE owner_repository_id = $1 ORDER BY kind, name COLLATE \"C\"",
                &[&owner.id],
            )
            .await?
        }
        Some(_) => {
            db.query(
                "SELECT l.kind, l.name FROM local_context l JOIN unnest($2::text[], $3::text[]) AS u(kind, name)
                 ON l.kind = u.kind AND l.name = u.name WHERE l.owner_repository_id = $1
                 ORDER BY l.kind, l.name COLLATE \"C\"",
                &[&owner.id, &kinds, &names],
            )
            .await?
        }
    };
    let (mut stale_kinds, mut stale_names) = (Vec::new(), Vec::new());
    for row in &owned {
        let key: (&str, &str) = (row.get(0), row.get(1));
        if !seen.contains(&key) {
            stale_kinds.push(key.0);
            stale_names.push(key.1);
            logs.record(&LOCAL_CONTEXTS, ChangeKind::Deleted, key.1, key.1);
            if stale_names.len() % CHUNK == 0 {
                logs.flush().await;
            }
        }
    }
    if !stale_names.is_empty() {
        db.execute(
            "DELETE FROM local_context l USING unnest($1::text[], $2::text[]) AS u(kind, name)
             WHERE l.kind = u.kind AND l.name = u.name",
            &[&stale_kinds, &stale_names],
        )
        .await?;
    }
    Ok(())
}

/// Writes the local contexts of one chunk (distinct keys) that are new or changed, in one statement; one owned by
/// another repository is left as it is.
async fn local_chunk(
    db: &impl GenericClient,
    owner: Owner<'_>,
    chunk: &[gitfleet_shared::loaders::LocalContext],
) -> Result<(), Db> {
    let (kinds, names): (Vec<&str>, Vec<&str>) = chunk.iter().map(|l| (l.kind, l.name.as_str())).unzip();
    let rows = db
        .query(
            "SELECT l.kind, l.name, l.owner_repository_id, l.data, l.target_object_id
             FROM unnest($1::text[], $2::text[]) AS u(kind, name)
             CROSS JOIN LATERAL (SELECT * FROM local_context WHERE kind = u.kind AND name = u.name LIMIT 1) l",
            &[&kinds, &names],
        )
        .await?;
    // (kind, name) -> (owner, data, target)
    type Current = (Option<Uuid>, Option<Value>, Option<String>);
    let mut current: HashMap<(&str, &str), Current> = HashMap::new();
    for row in &rows {
        current.insert((row.get(0), row.get(1)), (row.get(2), row.get(3), row.get(4)));
    }
    let mut write = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for local in chunk {
        if let Some((current_owner, data, target)) = current.get(&(local.kind, local.name.as_str())) {
            if current_owner.is_some_and(|o| o != owner.id) {
                // Nautobot reports this to its process log only, and the sync goes on (spec c.3.3, h.10).
                tracing::error!(
                    kind = local.kind,
                    name = %local.name,
                    "DATA CONFLICT: Local context data is owned by another owner, {}",
                    current_owner.map(|o| o.to_string()).unwrap_or_default()
                );
                continue;
            }
            if *current_owner == Some(owner.id)
                && data.as_ref().is_some_and(|d| local.data == *d)
                && *target == local.target
            {
                continue;
            }
        }
        write.0.push(local.kind);
        write.1.push(local.name.as_str());
        write.2.push(local.target.as_deref());
        write.3.push(local.data.value());
    }
    if !write.0.is_empty() {
        db.execute(
            "INSERT INTO local_context (kind, name, target_object_id, data, owner_repository_id)
             SELECT u.kind, u.name, u.target, u.data, $5
             FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS u(kind, name, target, data)
             ON CONFLICT (kind, name) DO UPDATE SET target_object_id = EXCLUDED.target_object_id, data = EXCLUDED.data,
                 owner_repository_id = EXCLUDED.owner_repository_id, last_updated = now()",
            &[&write.0, &write.1, &write.2, &write.3, &owner.id],
        )
        .await?;
    }
    Ok(())
}

/// Jobs, as Nautobot's `refresh_job_model_from_job_class`: a job's name follows its `Meta.name` unless the name
/// had to be made unique (another job holds it), in which case the job keeps the name it has from then on
/// (`name_override`, sticky) while its other fields follow the code.
async fn jobs(db: &impl GenericClient, owner: Owner<'_>, loaded: &Loaded, logs: &mut Changes<'_>) -> Result<(), Db> {
    let prefix = format!("{}.%", owner.slug.replace('_', "\\_"));
    let rows = db
        .query(
            "SELECT id, module_name, job_class_name, name, installed, name_override FROM job WHERE module_name LIKE $1",
            &[&prefix],
        )
        .await?;
    let mut all_names: HashSet<String> =
        db.query("SELECT name FROM job", &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut seen = HashSet::new();
    for job in &loaded.jobs {
        let class_path = format!("{}.{}", job.module_name, job.job_class_name);
        seen.insert((job.module_name.clone(), job.job_class_name.clone()));
        let flags = Value::Object(job.flags.clone());
        let existing = rows
            .iter()
            .find(|r| r.get::<_, String>(1) == job.module_name && r.get::<_, String>(2) == job.job_class_name);
        let own_name: Option<String> = existing.map(|r| r.get(3));
        let unique = unique_name(&job.meta_name, |n| all_names.contains(n) && own_name.as_deref() != Some(n));
        if unique != job.meta_name {
            tracing::warn!(job = %class_path, "Job name \"{}\" is not unique, changing to \"{unique}\"", job.meta_name);
        }
        if let (Some(row), Some(current)) = (existing, own_name) {
            let id: Uuid = row.get(0);
            let name_override = row.get::<_, bool>(5) || unique != job.meta_name;
            let name = if name_override { current.clone() } else { job.meta_name.clone() };
            db.execute(
                "UPDATE job SET grouping = $2, name = $3, name_override = $4, description = $5, flags = $6,
                     installed = true, owner_repository_id = $7, last_updated = now() WHERE id = $1",
                &[&id, &job.grouping, &name, &name_override, &job.description, &flags, &owner.id],
            )
            .await?;
            all_names.remove(&current);
            // Rewritten at every sync, as Nautobot does: counted as unchanged (a dry-run has nothing to report).
            logs.record(&JOBS, ChangeKind::Unchanged, &class_path, &name);
            all_names.insert(name);
        } else {
            db.execute(
                "INSERT INTO job (id, module_name, job_class_name, grouping, name, name_override, description, flags,
                     owner_repository_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &Uuid::new_v4(),
                    &job.module_name,
                    &job.job_class_name,
                    &job.grouping,
                    &unique,
                    &(unique != job.meta_name),
                    &job.description,
                    &flags,
                    &owner.id,
                ],
            )
            .await?;
            logs.record(&JOBS, ChangeKind::Created, &class_path, &unique);
            all_names.insert(unique);
        }
    }
    for row in &rows {
        let key: (String, String) = (row.get(1), row.get(2));
        let installed: bool = row.get(4);
        if installed && !seen.contains(&key) {
            let id: Uuid = row.get(0);
            db.execute("UPDATE job SET installed = false, enabled = false, last_updated = now() WHERE id = $1", &[&id])
                .await?;
            let class_path = format!("{}.{}", key.0, key.1);
            logs.record(&JOBS, ChangeKind::Refreshed, &class_path, &row.get::<_, String>(3));
        }
    }
    Ok(())
}

async fn export_templates(
    db: &impl GenericClient,
    owner: Owner<'_>,
    loaded: &Loaded,
    logs: &mut Changes<'_>,
) -> Result<(), Db> {
    const G: &str = "export templates";
    let rows = db
        .query(
            "SELECT id, content_type, name, mime_type, file_extension, template_code FROM export_template
             WHERE owner_repository_id = $1",
            &[&owner.id],
        )
        .await?;
    let owned: BTreeMap<(String, String), (Uuid, String, String, String)> =
        rows.iter().map(|r| ((r.get(1), r.get(2)), (r.get(0), r.get(3), r.get(4), r.get(5)))).collect();
    let new_keys: Vec<String> = loaded
        .export_templates
        .iter()
        .filter(|t| !owned.contains_key(&(t.content_type.clone(), t.name.clone())))
        .map(|t| format!("{}/{}", t.content_type, t.name))
        .collect();
    let taken = templates_taken(db, &new_keys).await?;
    let mut seen = HashSet::new();
    for t in &loaded.export_templates {
        let key = (t.content_type.clone(), t.name.clone());
        seen.insert(key.clone());
        let key_text = format!("{}: {}", t.content_type, t.name);
        let shown = owner.display(&key_text);
        match owned.get(&key) {
            Some((_, mime, ext, code))
                if *mime == t.mime_type && *ext == t.file_extension && *code == t.template_code =>
            {
                logs.record(&EXPORT_TEMPLATES, ChangeKind::Unchanged, &key_text, &shown);
            }
            Some((id, ..)) => {
                db.execute(
                    "UPDATE export_template SET mime_type = $2, file_extension = $3, template_code = $4, last_updated = now()
                     WHERE id = $1",
                    &[id, &t.mime_type, &t.file_extension, &t.template_code],
                )
                .await?;
                logs.record(&EXPORT_TEMPLATES, ChangeKind::Refreshed, &key_text, &shown);
            }
            None => {
                if taken.contains(&format!("{}/{}", t.content_type, t.name)) {
                    logs.reject(&key_text, LogEntry::error(
                        G,
                        format!(
                            "Error in loading export template `{}/{}`: Export template with this Content type and Name \
                             already exists.",
                            t.content_type, t.name
                        ),
                    ));
                    continue;
                }
                let row = [&t.content_type, &t.name, &t.mime_type, &t.file_extension, &t.template_code];
                db.execute(
                    "INSERT INTO export_template (id, content_type, name, mime_type, file_extension, template_code,
                         owner_repository_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&Uuid::new_v4(), row[0], row[1], row[2], row[3], row[4], &owner.id],
                )
                .await?;
                logs.record(&EXPORT_TEMPLATES, ChangeKind::Created, &key_text, &shown);
            }
        }
    }
    for ((content_type, name), (id, ..)) in owned.iter().filter(|(k, _)| !seen.contains(*k)) {
        db.execute("DELETE FROM export_template WHERE id = $1", &[id]).await?;
        let key_text = format!("{content_type}: {name}");
        logs.record(&EXPORT_TEMPLATES, ChangeKind::Deleted, &key_text, &owner.display(&key_text));
    }
    Ok(())
}

/// Which of `keys` (`content_type/name`) some export template already uses.
async fn templates_taken(db: &impl GenericClient, keys: &[String]) -> Result<HashSet<String>, Db> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = db
        .query(
            "SELECT content_type || '/' || name FROM export_template WHERE content_type || '/' || name = ANY($1)",
            &[&keys],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn graphql_queries(
    db: &impl GenericClient,
    owner: Owner<'_>,
    loaded: &Loaded,
    logs: &mut Changes<'_>,
) -> Result<(), Db> {
    const G: &str = "graphql queries";
    let rows =
        db.query("SELECT id, name, query FROM graphql_query WHERE owner_repository_id = $1", &[&owner.id]).await?;
    let owned: BTreeMap<String, (Uuid, String)> = rows.iter().map(|r| (r.get(1), (r.get(0), r.get(2)))).collect();
    let new_names: Vec<&str> =
        loaded.graphql_queries.iter().map(|q| q.name.as_str()).filter(|n| !owned.contains_key(*n)).collect();
    let taken = names_taken(db, "graphql_query", &new_names).await?;
    let mut seen = HashSet::new();
    for q in &loaded.graphql_queries {
        seen.insert(q.name.clone());
        let variables = Value::Object(q.variables.clone());
        match owned.get(&q.name) {
            Some((_, query)) if *query == q.query => {
                logs.record(&GRAPHQL_QUERIES, ChangeKind::Unchanged, &q.name, &q.name);
            }
            Some((id, _)) => {
                db.execute(
                    "UPDATE graphql_query SET query = $2, variables = $3, last_updated = now() WHERE id = $1",
                    &[id, &q.query, &variables],
                )
                .await?;
                logs.record(&GRAPHQL_QUERIES, ChangeKind::Refreshed, &q.name, &q.name);
            }
            None if taken.contains(&q.name) => {
                logs.reject(&q.name, LogEntry::error(
                    G,
                    format!(
                        "GraphQL query '{}' already exists. Please rename the query in the repository and try again.",
                        q.name
                    ),
                ));
            }
            None => {
                db.execute(
                    "INSERT INTO graphql_query (id, name, query, variables, owner_repository_id) VALUES ($1, $2, $3, $4, $5)",
                    &[&Uuid::new_v4(), &q.name, &q.query, &variables, &owner.id],
                )
                .await?;
                // Nautobot's "created" line is unreachable (spec h.9); we say what happened.
                logs.record(&GRAPHQL_QUERIES, ChangeKind::Created, &q.name, &q.name);
            }
        }
    }
    for (name, (id, _)) in owned.iter().filter(|(n, _)| !seen.contains(*n)) {
        db.execute("DELETE FROM graphql_query WHERE id = $1", &[id]).await?;
        logs.record(&GRAPHQL_QUERIES, ChangeKind::Deleted, name, name);
    }
    Ok(())
}

async fn extension(
    db: &impl GenericClient,
    owner: Owner<'_>,
    data_type: &dyn DataType,
    identifier: &str,
    loaded: &Loaded,
    logs: &mut Changes<'_>,
) -> Result<(), Db> {
    let records = loaded.extensions.get(identifier).map(Vec::as_slice).unwrap_or_default();
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    for record in records {
        db.execute(
            "INSERT INTO extension_record (repository_id, data_type, key, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repository_id, data_type, key) DO UPDATE SET data = EXCLUDED.data, last_updated = now()
             WHERE extension_record.data IS DISTINCT FROM EXCLUDED.data",
            &[&owner.id, &identifier, &record.key, &record.data],
        )
        .await?;
    }
    let gone = db
        .query(
            "DELETE FROM extension_record WHERE repository_id = $1 AND data_type = $2 AND NOT (key = ANY($3)) RETURNING key",
            &[&owner.id, &identifier, &keys],
        )
        .await?;
    for row in gone {
        // An extension's wording: its name is its grouping.
        let key: String = row.get(0);
        let wording = Wording {
            grouping: data_type.name(),
            deleted: warning("Deleted {object} record {record}", false),
            ..EXPORT_TEMPLATES
        };
        logs.record(&wording, ChangeKind::Deleted, &key, data_type.name());
    }
    Ok(())
}

/// Config contexts and local contexts staged in temporary tables of the sync's transaction as a full load reads
/// them, a batch of files at a time, every definition with its place in processing order (`seq`) and, when the
/// database would refuse it, why. Reconciling then reads the winning definition of each name (the last one in
/// processing order) a chunk at a time: the worker never holds every record of a large repository.
pub mod staged {
    use gitfleet_shared::job_result::LogEntry;
    use gitfleet_shared::json_text::JsonText;
    use gitfleet_shared::loaders::{ConfigContext, LocalContext, SchemaEnforcement};
    use tokio_postgres::GenericClient;

    use super::{CHUNK, CONTEXTS, Change, ChangeKind, ChangeSink, Changes, Db, LOCAL_CONTEXTS, Owner};

    /// Creates the staging tables; they go with the transaction.
    pub async fn create(db: &impl GenericClient) -> Result<(), Db> {
        db.batch_execute(
            "CREATE TEMP TABLE gitfleet_stage_context (
                 seq bigint NOT NULL, name text COLLATE \"C\" NOT NULL, weight int8 NOT NULL, description text NOT NULL,
                 is_active bool NOT NULL, schema text, data text NOT NULL, scope text NOT NULL, resolved text NOT NULL,
                 file text NOT NULL, problem text
             ) ON COMMIT DROP;
             CREATE INDEX ON gitfleet_stage_context (name, seq DESC);
             CREATE TEMP TABLE gitfleet_stage_local (
                 seq bigint NOT NULL, kind text COLLATE \"C\" NOT NULL, name text COLLATE \"C\" NOT NULL,
                 data text NOT NULL, target text, problem text
             ) ON COMMIT DROP;
             CREATE INDEX ON gitfleet_stage_local (kind, name, seq DESC);",
        )
        .await
    }

    /// One config context definition to stage: its place in processing order and, if any, the database's refusal.
    pub type ContextRow<'a> = (i64, &'a ConfigContext, Option<&'a str>);
    /// One local context definition to stage.
    pub type LocalRow<'a> = (i64, &'a LocalContext, Option<&'a str>);

    /// Stages a batch of definitions, one statement per table.
    pub async fn add(db: &impl GenericClient, contexts: &[ContextRow<'_>], locals: &[LocalRow<'_>]) -> Result<(), Db> {
        if !contexts.is_empty() {
            let mut columns = ContextColumns::default();
            for (seq, context, problem) in contexts {
                columns.push(*seq, context, *problem);
            }
            let c = &columns;
            db.execute(
                "INSERT INTO gitfleet_stage_context
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::bool[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])",
                &[
                    &c.seq,
                    &c.name,
                    &c.weight,
                    &c.description,
                    &c.active,
                    &c.schema,
                    &c.data,
                    &c.scope,
                    &c.resolved,
                    &c.file,
                    &c.problem,
                ],
            )
            .await?;
        }
        if !locals.is_empty() {
            let seq: Vec<i64> = locals.iter().map(|l| l.0).collect();
            let kind: Vec<&str> = locals.iter().map(|l| l.1.kind).collect();
            let name: Vec<&str> = locals.iter().map(|l| l.1.name.as_str()).collect();
            let data: Vec<String> = locals.iter().map(|l| l.1.data.text().into_owned()).collect();
            let target: Vec<Option<&str>> = locals.iter().map(|l| l.1.target.as_deref()).collect();
            let problem: Vec<Option<&str>> = locals.iter().map(|l| l.2).collect();
            db.execute(
                "INSERT INTO gitfleet_stage_local
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])",
                &[&seq, &kind, &name, &data, &target, &problem],
            )
            .await?;
        }
        Ok(())
    }

    #[derive(Default)]
    struct ContextColumns<'a> {
        seq: Vec<i64>,
        name: Vec<&'a str>,
        weight: Vec<i64>,
        description: Vec<&'a str>,
        active: Vec<bool>,
        schema: Vec<Option<&'a str>>,
        data: Vec<String>,
        scope: Vec<String>,
        resolved: Vec<String>,
        file: Vec<&'a str>,
        problem: Vec<Option<&'a str>>,
    }

    impl<'a> ContextColumns<'a> {
        fn push(&mut self, seq: i64, c: &'a ConfigContext, problem: Option<&'a str>) {
            self.seq.push(seq);
            self.name.push(&c.name);
            self.weight.push(c.weight);
            self.description.push(&c.description);
            self.active.push(c.is_active);
            self.schema.push(c.config_context_schema.as_deref());
            self.data.push(c.data.text().into_owned());
            self.scope.push(serde_json::to_string(&c.scope).unwrap_or_default());
            self.resolved.push(serde_json::to_string(&c.resolved).unwrap_or_default());
            self.file.push(&c.file);
            self.problem.push(problem);
        }
    }

    /// The winning definitions the database would refuse: their error lines (as a load logs them, config contexts
    /// in the order their names first appear, then local contexts in the order of their last definition), and
    /// their keys, which reconciling treats as not loaded.
    #[derive(Debug, Default)]
    pub struct Refused {
        pub lines: Vec<LogEntry>,
        names: Vec<String>,
        locals: (Vec<String>, Vec<String>),
    }

    /// What the staged definitions' winners that the database would refuse are (`any`: whether a staged row has
    /// a problem at all; without one there is nothing to look up).
    pub async fn refused(db: &impl GenericClient, any: bool) -> Result<Refused, Db> {
        let mut out = Refused::default();
        if !any {
            return Ok(out);
        }
        let rows = db
            .query(
                "SELECT w.name, w.problem
                 FROM (SELECT DISTINCT ON (name) name, problem FROM gitfleet_stage_context ORDER BY name, seq DESC) w
                 JOIN (SELECT name, min(seq) AS first FROM gitfleet_stage_context GROUP BY name) f USING (name)
                 WHERE w.problem IS NOT NULL ORDER BY f.first",
                &[],
            )
            .await?;
        for row in rows {
            out.names.push(row.get(0));
            out.lines.push(LogEntry::error(gitfleet_shared::loaders::CONTEXTS_GROUPING, row.get::<_, &str>(1)));
        }
        let rows = db
            .query(
                "SELECT kind, name, problem FROM (SELECT DISTINCT ON (kind, name) kind, name, problem, seq
                     FROM gitfleet_stage_local ORDER BY kind, name, seq DESC) w
                 WHERE problem IS NOT NULL ORDER BY seq",
                &[],
            )
            .await?;
        for row in rows {
            out.locals.0.push(row.get(0));
            out.locals.1.push(row.get(1));
            out.lines.push(LogEntry::error(gitfleet_shared::loaders::CONTEXTS_GROUPING, row.get::<_, &str>(2)));
        }
        Ok(out)
    }

    /// Reconciles the staged config contexts and local contexts as [`super::reconcile_type`] reconciles a load's:
    /// each name's winning definition, a chunk at a time in name order, then every owned record no definition
    /// names (or whose winner was refused) deleted, in name order.
    pub async fn reconcile(
        db: &impl GenericClient,
        owner: Owner<'_>,
        enforcement: SchemaEnforcement,
        refused: &Refused,
        sink: Option<&ChangeSink>,
    ) -> Result<Vec<Change>, Db> {
        // Temporary tables have no statistics until asked: without them the planner would sort the whole stage
        // for every chunk instead of walking its index.
        db.batch_execute("ANALYZE gitfleet_stage_context, gitfleet_stage_local").await?;
        let mut logs = Changes::new("extras.configcontext", sink);
        contexts(db, owner, enforcement, refused, &mut logs).await?;
        locals(db, owner, refused, &mut logs).await?;
        Ok(logs.list)
    }

    async fn contexts(
        db: &impl GenericClient,
        owner: Owner<'_>,
        enforcement: SchemaEnforcement,
        refused: &Refused,
        logs: &mut Changes<'_>,
    ) -> Result<(), Db> {
        let mut checker = gitfleet_shared::loaders::DataChecker::new(enforcement);
        let limit = i64::try_from(CHUNK).unwrap_or(i64::MAX);
        // Pages by name: `None` before the first.
        let mut after: Option<String> = None;
        loop {
            let rows = db
                .query(
                    "SELECT DISTINCT ON (name) name, weight, description, is_active, schema, data, scope, resolved,
                         file, problem IS NOT NULL
                     FROM gitfleet_stage_context WHERE $1::text IS NULL OR name > $1
                     ORDER BY name, seq DESC LIMIT $2",
                    &[&after, &limit],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.get(0));
            let full = rows.len() == CHUNK;
            let chunk: Vec<ConfigContext> = rows.into_iter().filter(|r| !r.get::<_, bool>(9)).map(context).collect();
            let schemas = super::linked_schemas(db, &chunk).await?;
            super::contexts_chunk(db, owner, &chunk, logs, &schemas, &mut checker).await?;
            logs.flush().await;
            if !full {
                break;
            }
        }
        let mut after: Option<String> = None;
        loop {
            let rows = db
                .query(
                    "SELECT c.id, c.name::text FROM config_context c
                     WHERE c.owner_repository_id = $1 AND ($2::text IS NULL OR c.name COLLATE \"C\" > $2)
                         AND (NOT EXISTS (SELECT 1 FROM gitfleet_stage_context s WHERE s.name = c.name COLLATE \"C\")
                              OR c.name = ANY($3))
                     ORDER BY c.name COLLATE \"C\" LIMIT $4",
                    &[&owner.id, &after, &refused.names, &limit],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.get(1));
            let mut stale = Vec::with_capacity(rows.len());
            for row in &rows {
                let name: &str = row.get(1);
                stale.push(row.get::<_, uuid::Uuid>(0));
                logs.record(&CONTEXTS, ChangeKind::Deleted, name, &owner.display(name));
            }
            super::delete_ids(db, "config_context", &stale).await?;
            logs.flush().await;
            if rows.len() < CHUNK {
                break;
            }
        }
        Ok(())
    }

    fn context(row: tokio_postgres::Row) -> ConfigContext {
        ConfigContext {
            name: row.get(0),
            weight: row.get(1),
            description: row.get(2),
            is_active: row.get(3),
            config_context_schema: row.get(4),
            data: JsonText::from_rendered(row.get(5)),
            scope: serde_json::from_str(row.get(6)).unwrap_or_default(),
            resolved: serde_json::from_str(row.get(7)).unwrap_or_default(),
            file: row.get(8),
        }
    }

    async fn locals(
        db: &impl GenericClient,
        owner: Owner<'_>,
        refused: &Refused,
        logs: &mut Changes<'_>,
    ) -> Result<(), Db> {
        let limit = i64::try_from(CHUNK).unwrap_or(i64::MAX);
        let (mut kind, mut name) = (String::new(), String::new());
        loop {
            let rows = db
                .query(
                    "SELECT DISTINCT ON (kind, name) kind, name, data, target, problem IS NOT NULL
                     FROM gitfleet_stage_local WHERE (kind, name) > ($1, $2) ORDER BY kind, name, seq DESC LIMIT $3",
                    &[&kind, &name, &limit],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            (kind, name) = (last.get(0), last.get(1));
            let full = rows.len() == CHUNK;
            let chunk: Vec<LocalContext> = rows
                .into_iter()
                .filter(|r| !r.get::<_, bool>(4))
                .filter_map(|r| {
                    let kind = gitfleet_shared::inventory::LOCAL_KINDS.iter().find(|k| k.0 == r.get::<_, &str>(0))?.0;
                    Some(LocalContext {
                        kind,
                        name: r.get(1),
                        data: JsonText::from_rendered(r.get(2)),
                        target: r.get(3),
                    })
                })
                .collect();
            super::local_chunk(db, owner, &chunk).await?;
            if !full {
                break;
            }
        }
        let (mut kind, mut name) = (String::new(), String::new());
        loop {
            let rows = db
                .query(
                    "SELECT l.kind::text, l.name::text FROM local_context l
                     WHERE l.owner_repository_id = $1 AND (l.kind COLLATE \"C\", l.name COLLATE \"C\") > ($2, $3)
                         AND (NOT EXISTS (SELECT 1 FROM gitfleet_stage_local s
                                          WHERE s.kind = l.kind COLLATE \"C\" AND s.name = l.name COLLATE \"C\")
                              OR (l.kind, l.name) IN (SELECT * FROM unnest($4::text[], $5::text[])))
                     ORDER BY l.kind COLLATE \"C\", l.name COLLATE \"C\" LIMIT $6",
                    &[&owner.id, &kind, &name, &refused.locals.0, &refused.locals.1, &limit],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            (kind, name) = (last.get(0), last.get(1));
            let (mut kinds, mut names) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
            for row in &rows {
                let (k, n): (&str, &str) = (row.get(0), row.get(1));
                logs.record(&LOCAL_CONTEXTS, ChangeKind::Deleted, n, n);
                kinds.push(k);
                names.push(n);
            }
            db.execute(
                "DELETE FROM local_context l USING unnest($1::text[], $2::text[]) AS u(kind, name)
                 WHERE l.kind = u.kind AND l.name = u.name",
                &[&kinds, &names],
            )
            .await?;
            logs.flush().await;
            if rows.len() < CHUNK {
                break;
            }
        }
        Ok(())
    }
}
