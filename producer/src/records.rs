//! `producer repo records`: what a repository has live, in the shape `worker check --format json` prints, so a
//! data repository's CI can compare what a sync stored with what a check of the same commit loads.

use std::io::Write;

use clap::Args;
use deadpool_postgres::Pool;
use gitfleet_infra::settings::Format;
use gitfleet_infra::store::{records, repository};
use gitfleet_shared::loaders::{Loaded, Records, Registry};
use gitfleet_shared::sanitize::printable;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct RecordsArgs {
    /// The repository's name.
    #[arg(long)]
    pub name: String,
    /// Only this data type's records (an identifier of `worker data-types`, e.g. extras.configcontext); the lists
    /// of the other types are printed empty.
    #[arg(long = "type", value_name = "TYPE")]
    pub data_type: Option<String>,
    /// `json`: the `worker check --format json` document (schemas/check-output.schema.json), plus `commit`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Why the records could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("unknown data type '{0}' (see `worker data-types`)")]
    UnknownType(String),
    #[error("no repository named '{0}'")]
    NotFound(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// What the live repository `name` owns (only `data_type`'s records, when given), and its live commit.
pub async fn live(pool: &Pool, name: &str, data_type: Option<&str>) -> Result<(Loaded, Option<String>), RecordsError> {
    let registry = Registry::with_builtins();
    let only = match data_type {
        Some(identifier) => {
            Some(registry.get(identifier).ok_or_else(|| RecordsError::UnknownType(identifier.to_owned()))?)
        }
        None => None,
    };
    let client = pool.get().await?;
    let repo = repository::find_live_by_name(&**client, name, false)
        .await?
        .ok_or_else(|| RecordsError::NotFound(name.to_owned()))?;
    let extension_types: Vec<&str> = registry
        .types()
        .filter(|t| t.records() == Records::Extension && repo.provided_contents.iter().any(|p| p == t.identifier()))
        .map(|t| t.identifier())
        .collect();
    let mut loaded = records::owned(&**client, repo.id, &repo.slug, &extension_types).await?;
    if let Some(data_type) = only {
        loaded.keep_only(data_type);
    }
    Ok((loaded, repo.current_head.as_ref().map(|c| c.as_str().to_owned())))
}

/// The records as `worker check --format json` prints a load, with an empty log and the live `commit`.
pub fn document(loaded: &Loaded, commit: Option<String>) -> Value {
    let mut json = loaded.check_json(false, &[]);
    if let Value::Object(map) = &mut json {
        map.insert("commit".into(), commit.map_or(Value::Null, Value::from));
    }
    json
}

/// Prints the records; exits 2 for an unknown repository or data type.
pub async fn run(pool: &Pool, args: RecordsArgs, out: &mut impl Write) -> anyhow::Result<i32> {
    let (loaded, commit) = match live(pool, &args.name, args.data_type.as_deref()).await {
        Ok(found) => found,
        Err(err @ (RecordsError::UnknownType(_) | RecordsError::NotFound(_))) => {
            eprintln!("error: {}", printable(&err.to_string()));
            return Ok(2);
        }
        Err(other) => return Err(other.into()),
    };
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&document(&loaded, commit))?)?,
        Format::Text => print_text(&loaded, commit.as_deref(), out)?,
    }
    Ok(0)
}

fn print_text(l: &Loaded, commit: Option<&str>, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "commit {}", commit.unwrap_or("- (never synced)"))?;
    let section = |out: &mut dyn Write, title: &str, lines: Vec<String>| -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        writeln!(out, "\n{title} ({})", lines.len())?;
        for line in lines {
            writeln!(out, "  {}", printable(&line))?;
        }
        Ok(())
    };
    section(out, "config context schemas", l.config_context_schemas.iter().map(|s| s.name.clone()).collect())?;
    section(
        out,
        "config contexts",
        l.config_contexts
            .iter()
            .map(|c| {
                let schema = c.config_context_schema.as_deref().map(|s| format!(", schema {s}")).unwrap_or_default();
                let active = if c.is_active { "" } else { ", inactive" };
                format!("{} (weight {}{active}{schema})", c.name, c.weight)
            })
            .collect(),
    )?;
    section(out, "local config contexts", l.local_contexts.iter().map(|c| format!("{}/{}", c.kind, c.name)).collect())?;
    section(
        out,
        "jobs",
        l.jobs
            .iter()
            .map(|j| {
                let installed = if j.installed { "" } else { " (not installed)" };
                format!("{}.{}: {}{installed}", j.module_name, j.job_class_name, j.name)
            })
            .collect(),
    )?;
    section(
        out,
        "export templates",
        l.export_templates.iter().map(|t| format!("{}: {} ({})", t.content_type, t.name, t.mime_type)).collect(),
    )?;
    section(out, "graphql queries", l.graphql_queries.iter().map(|q| q.name.clone()).collect())?;
    for (identifier, records) in &l.extensions {
        section(out, identifier, records.iter().map(|r| r.key.clone()).collect())?;
    }
    Ok(())
}
