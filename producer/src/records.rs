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

/// Prints the records; exits 2 for an unknown repository or data type.
pub async fn run(pool: &Pool, args: RecordsArgs, out: &mut impl Write) -> anyhow::Result<i32> {
    let registry = Registry::with_builtins();
    let only = match &args.data_type {
        Some(identifier) => match registry.get(identifier) {
            Some(t) => Some(t),
            None => {
                eprintln!("error: unknown data type '{}' (see `worker data-types`)", printable(identifier));
                return Ok(2);
            }
        },
        None => None,
    };
    let client = pool.get().await?;
    let Some(repo) = repository::find_live_by_name(&**client, &args.name, false).await? else {
        eprintln!("error: no repository named '{}'", printable(&args.name));
        return Ok(2);
    };
    let extension_types: Vec<&str> = registry
        .types()
        .filter(|t| t.records() == Records::Extension && repo.provided_contents.iter().any(|p| p == t.identifier()))
        .map(|t| t.identifier())
        .collect();
    let mut loaded = records::owned(&**client, repo.id, &repo.slug, &extension_types).await?;
    if let Some(data_type) = only {
        loaded.keep_only(data_type);
    }
    let commit = repo.current_head.as_ref().map(|c| c.as_str().to_owned());
    match args.format {
        Format::Json => {
            let mut json = loaded.check_json(false, &[]);
            if let Value::Object(map) = &mut json {
                map.insert("commit".into(), commit.map_or(Value::Null, Value::from));
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
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
