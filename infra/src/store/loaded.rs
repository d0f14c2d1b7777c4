//! What the last applied load of a repository read, file by file (`loaded_state`, `loaded_file`, `loaded_key`):
//! an incremental sync reads the rows of the files that changed, never all of them. Writes go in batches of
//! [`BATCH`] rows, one statement each.

use serde_json::Value;
use tokio_postgres::GenericClient;
use uuid::Uuid;

type Db = tokio_postgres::Error;

/// Rows per statement when many are written.
pub const BATCH: usize = 2000;

/// The load the live commit's records came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedState {
    pub commit: String,
    /// The sync fingerprint without its commit.
    pub base: String,
    pub doc_bytes: i64,
    pub files: i64,
}

/// One file a load read (or, with an empty path, a data type's lines that belong to no file).
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub data_type: String,
    pub path: String,
    pub blob_id: String,
    pub ord: i32,
    pub keys: Vec<String>,
    /// The file's log lines, as `LogEntry` JSON.
    pub facts: Value,
    pub bytes: i64,
    /// Files this row stands for (1 for a file; for a type's row, the files the type read).
    pub files: i64,
}

pub async fn state(db: &impl GenericClient, repository: Uuid) -> Result<Option<LoadedState>, Db> {
    let row = db
        .query_opt(
            "SELECT commit_sha, base, doc_bytes, files FROM loaded_state WHERE repository_id = $1",
            &[&repository],
        )
        .await?;
    Ok(row.map(|r| LoadedState { commit: r.get(0), base: r.get(1), doc_bytes: r.get(2), files: r.get(3) }))
}

pub async fn set_state(db: &impl GenericClient, repository: Uuid, state: &LoadedState) -> Result<(), Db> {
    db.execute(
        "INSERT INTO loaded_state (repository_id, commit_sha, base, doc_bytes, files) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (repository_id) DO UPDATE SET commit_sha = EXCLUDED.commit_sha, base = EXCLUDED.base,
             doc_bytes = EXCLUDED.doc_bytes, files = EXCLUDED.files",
        &[&repository, &state.commit, &state.base, &state.doc_bytes, &state.files],
    )
    .await?;
    Ok(())
}

/// Drops everything recorded about the repository's loads (a full load or a delete follows).
pub async fn forget(db: &impl GenericClient, repository: Uuid) -> Result<(), Db> {
    db.execute("DELETE FROM loaded_state WHERE repository_id = $1", &[&repository]).await?;
    db.execute("DELETE FROM loaded_file WHERE repository_id = $1", &[&repository]).await?;
    db.execute("DELETE FROM loaded_key WHERE repository_id = $1", &[&repository]).await?;
    Ok(())
}

/// Drops the rows of the given types (files and keys), before they are written again by a reload of those types.
pub async fn forget_types(db: &impl GenericClient, repository: Uuid, types: &[&str]) -> Result<(), Db> {
    if types.is_empty() {
        return Ok(());
    }
    db.execute(
        "DELETE FROM loaded_key k USING loaded_file f
         WHERE k.repository_id = $1 AND f.repository_id = $1 AND f.path = k.path AND f.data_type = ANY($2)",
        &[&repository, &types],
    )
    .await?;
    db.execute("DELETE FROM loaded_file WHERE repository_id = $1 AND data_type = ANY($2)", &[&repository, &types])
        .await?;
    Ok(())
}

/// Drops the rows of these files of one type, and their keys.
pub async fn forget_files(
    db: &impl GenericClient,
    repository: Uuid,
    data_type: &str,
    paths: &[&str],
) -> Result<(), Db> {
    if paths.is_empty() {
        return Ok(());
    }
    db.execute("DELETE FROM loaded_key WHERE repository_id = $1 AND path = ANY($2)", &[&repository, &paths]).await?;
    db.execute(
        "DELETE FROM loaded_file WHERE repository_id = $1 AND data_type = $2 AND path = ANY($3)",
        &[&repository, &data_type, &paths],
    )
    .await?;
    Ok(())
}

/// Writes file rows and their keys, [`BATCH`] rows per statement.
pub async fn insert_files(db: &impl GenericClient, repository: Uuid, rows: &[FileRow]) -> Result<(), Db> {
    for chunk in rows.chunks(BATCH) {
        let types: Vec<&str> = chunk.iter().map(|r| r.data_type.as_str()).collect();
        let paths: Vec<&str> = chunk.iter().map(|r| r.path.as_str()).collect();
        let blobs: Vec<&str> = chunk.iter().map(|r| r.blob_id.as_str()).collect();
        let ords: Vec<i32> = chunk.iter().map(|r| r.ord).collect();
        // A text[][] must be rectangular: the keys go as one JSON array per row.
        let keys: Vec<Value> = chunk.iter().map(|r| Value::from(r.keys.clone())).collect();
        let facts: Vec<&Value> = chunk.iter().map(|r| &r.facts).collect();
        let bytes: Vec<i64> = chunk.iter().map(|r| r.bytes).collect();
        let files: Vec<i64> = chunk.iter().map(|r| r.files).collect();
        db.execute(
            "INSERT INTO loaded_file (repository_id, data_type, path, blob_id, ord, keys, facts, bytes, files)
             SELECT $1, u.t, u.p, u.b, u.o, ARRAY(SELECT jsonb_array_elements_text(u.k)), u.f, u.n, u.c
             FROM unnest($2::text[], $3::text[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[], $8::int8[],
                 $9::int8[]) AS u(t, p, b, o, k, f, n, c)",
            &[&repository, &types, &paths, &blobs, &ords, &keys, &facts, &bytes, &files],
        )
        .await?;
    }
    let mut keys: Vec<(&str, i32, &str)> = Vec::new();
    for row in rows {
        keys.extend(row.keys.iter().map(|k| (k.as_str(), row.ord, row.path.as_str())));
    }
    // A file that defines a key twice holds one row for it.
    keys.sort_unstable();
    keys.dedup();
    for chunk in keys.chunks(BATCH) {
        let (names, ords, paths): (Vec<&str>, Vec<i32>, Vec<&str>) =
            chunk.iter().fold((Vec::new(), Vec::new(), Vec::new()), |(mut k, mut o, mut p), (key, ord, path)| {
                k.push(*key);
                o.push(*ord);
                p.push(*path);
                (k, o, p)
            });
        db.execute(
            "INSERT INTO loaded_key (repository_id, key, ord, path)
             SELECT $1, u.k, u.o, u.p FROM unnest($2::text[], $3::int4[], $4::text[]) AS u(k, o, p)",
            &[&repository, &names, &ords, &paths],
        )
        .await?;
    }
    Ok(())
}

/// The rows of these files of one type, as they were recorded.
pub async fn files(
    db: &impl GenericClient,
    repository: Uuid,
    data_type: &str,
    paths: &[&str],
) -> Result<Vec<FileRow>, Db> {
    let rows = db
        .query(
            "SELECT data_type, path, blob_id, ord, keys, facts, bytes, files FROM loaded_file
             WHERE repository_id = $1 AND data_type = $2 AND path = ANY($3)",
            &[&repository, &data_type, &paths],
        )
        .await?;
    Ok(rows.iter().map(file_row).collect())
}

/// The rows of whole types (the type's own row and its files').
pub async fn type_rows(db: &impl GenericClient, repository: Uuid, types: &[&str]) -> Result<Vec<FileRow>, Db> {
    let rows = db
        .query(
            "SELECT data_type, path, blob_id, ord, keys, facts, bytes, files FROM loaded_file
             WHERE repository_id = $1 AND data_type = ANY($2) ORDER BY data_type, path COLLATE \"C\"",
            &[&repository, &types],
        )
        .await?;
    Ok(rows.iter().map(file_row).collect())
}

/// Bytes and file counts of whole types, summed, without reading their rows.
pub async fn type_totals(db: &impl GenericClient, repository: Uuid, types: &[&str]) -> Result<(i64, i64), Db> {
    let row = db
        .query_one(
            "SELECT COALESCE(sum(bytes), 0)::int8, COALESCE(sum(files), 0)::int8 FROM loaded_file
             WHERE repository_id = $1 AND data_type = ANY($2)",
            &[&repository, &types],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

fn file_row(r: &tokio_postgres::Row) -> FileRow {
    FileRow {
        data_type: r.get(0),
        path: r.get(1),
        blob_id: r.get(2),
        ord: r.get(3),
        keys: r.get(4),
        facts: r.get(5),
        bytes: r.get(6),
        files: r.get(7),
    }
}

/// For each key, the file whose definition wins: the last in processing order (`ord`, then path byte order).
/// Keys no file defines any more are absent.
pub async fn winners(db: &impl GenericClient, repository: Uuid, keys: &[&str]) -> Result<Vec<(String, String)>, Db> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query(
            "SELECT DISTINCT ON (key) key, path FROM loaded_key WHERE repository_id = $1 AND key = ANY($2)
             ORDER BY key, ord DESC, path COLLATE \"C\" DESC",
            &[&repository, &keys],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
