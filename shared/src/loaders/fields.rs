//! What the database will take: Nautobot's field lengths (the columns of gitfleet's tables have the same ones) and
//! no NUL character in any text or JSON string (PostgreSQL stores neither). Every record a load yields is checked
//! here, so a value the database would refuse is an error naming its file in `worker check` and in a sync alike,
//! with Django's messages, instead of a database error at commit time.

use serde_json::Value;

use super::{Loaded, config_context, export_template, graphql_query, job, schema};
use crate::job_result::LogEntry;

/// Longest `name`, `description` and most other text fields (Nautobot's `CHARFIELD_MAX_LENGTH`).
pub const CHARFIELD: usize = 255;
/// Longest Job `name`, `module_name` and `job_class_name`, and an export template's content type.
pub const SHORT: usize = 100;

/// Django's `MaxLengthValidator` message.
fn too_long(field: &str, value: &str, max: usize) -> Option<String> {
    let n = value.chars().count();
    (n > max).then(|| format!("{field}: Ensure this value has at most {max} characters (it has {n})."))
}

/// Django's `ProhibitNullCharactersValidator` message.
fn nul(field: &str, value: &str) -> Option<String> {
    value.contains('\0').then(|| format!("{field}: Null characters are not allowed."))
}

fn text(field: &str, value: &str, max: usize) -> Option<String> {
    too_long(field, value, max).or_else(|| nul(field, value))
}

/// The path of the first string or key holding a NUL character in a JSON value. The walk allocates nothing; only a
/// value that holds one is walked again to name where.
fn nul_in_json(field: &str, value: &Value) -> Option<String> {
    fn has_nul(value: &Value) -> bool {
        let mut stack = vec![value];
        while let Some(value) = stack.pop() {
            match value {
                Value::String(s) if s.contains('\0') => return true,
                Value::Array(items) => stack.extend(items),
                Value::Object(map) => {
                    if map.keys().any(|k| k.contains('\0')) {
                        return true;
                    }
                    stack.extend(map.values());
                }
                _ => {}
            }
        }
        false
    }
    if !has_nul(value) {
        return None;
    }
    let mut stack = vec![(field.to_owned(), value)];
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::String(s) if s.contains('\0') => return Some(format!("{path}: Null characters are not allowed.")),
            Value::Array(items) => stack.extend(items.iter().enumerate().map(|(i, v)| (format!("{path}[{i}]"), v))),
            Value::Object(map) => {
                for (k, v) in map {
                    if k.contains('\0') {
                        return Some(format!("{path}: Null characters are not allowed (in a key)."));
                    }
                    stack.push((format!("{path}.{k}"), v));
                }
            }
            _ => {}
        }
    }
    None
}

/// Keeps the records of `items` that pass `problem`, logging an error for each one that does not.
fn keep<T>(items: &mut Vec<T>, from: usize, logs: &mut Vec<LogEntry>, problem: impl Fn(&T) -> Option<String>) {
    let mut index = 0;
    items.retain(|item| {
        index += 1;
        if index <= from {
            return true;
        }
        match problem(item) {
            Some(message) => {
                logs.push(LogEntry::error("", message));
                false
            }
            None => true,
        }
    });
}

/// Why the database would refuse a config context, as the error line's message (`None`: it takes it).
pub fn context_problem(c: &config_context::ConfigContext) -> Option<String> {
    let problem = text("_metadata.name", &c.name, CHARFIELD)
        .or_else(|| text("_metadata.description", &c.description, CHARFIELD))
        .or_else(|| nul_in_json("data", &c.data.value()))
        .or_else(|| c.scope.iter().find_map(|(filter, lookups)| lookups.iter().find_map(|l| nul_in_json(filter, l))))?;
    Some(format!("Error in loading config context data from `{}`: {problem}", c.file))
}

/// Why the database would refuse a local context, as the error line's message (`None`: it takes it).
pub fn local_problem(l: &config_context::LocalContext) -> Option<String> {
    let problem = text("name", &l.name, CHARFIELD).or_else(|| nul_in_json("data", &l.data.value()))?;
    Some(format!("Error in loading local config context from `{}/{}`: {problem}", l.kind, l.name))
}

/// How many records of each list existed before a type loaded.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Marks([usize; 7]);

impl Marks {
    pub fn of(out: &Loaded) -> Self {
        Self([
            out.config_context_schemas.len(),
            out.config_contexts.len(),
            out.local_contexts.len(),
            out.export_templates.len(),
            out.graphql_queries.len(),
            out.jobs.len(),
            out.extensions.values().map(Vec::len).sum(),
        ])
    }
}

/// Checks the records a type added since `marks`; refused ones are removed and logged as errors.
pub(super) fn check(identifier: &str, out: &mut Loaded, marks: Marks) {
    let mut errors = Vec::new();
    let [schemas, contexts, locals, templates, queries, jobs, _] = marks.0;
    keep(&mut out.config_context_schemas, schemas, &mut errors, |s| {
        let problem = text("_metadata.name", &s.name, CHARFIELD)
            .or_else(|| text("_metadata.description", &s.description, CHARFIELD))
            .or_else(|| nul_in_json("data_schema", &s.data_schema))?;
        Some(format!("Error in loading config context schema data from `{}`: {problem}", s.file))
    });
    keep(&mut out.config_contexts, contexts, &mut errors, context_problem);
    keep(&mut out.local_contexts, locals, &mut errors, local_problem);
    keep(&mut out.export_templates, templates, &mut errors, |t| {
        let problem = text("name", &t.name, CHARFIELD)
            .or_else(|| text("content_type", &t.content_type, SHORT))
            .or_else(|| text("mime_type", &t.mime_type, CHARFIELD))
            .or_else(|| text("file_extension", &t.file_extension, CHARFIELD))
            .or_else(|| nul("template_code", &t.template_code))?;
        Some(format!("Error in loading export template `{}` ({}): {problem}", t.name, t.content_type))
    });
    keep(&mut out.graphql_queries, queries, &mut errors, |q| {
        let problem = text("name", &q.name, CHARFIELD).or_else(|| nul("query", &q.query))?;
        Some(format!("Error in loading GraphQL query from `{}`: {problem}", q.file))
    });
    keep(&mut out.jobs, jobs, &mut errors, |j| {
        let problem = text("job_class_name", &j.job_class_name, SHORT)
            .or_else(|| text("name", &j.name, SHORT))
            .or_else(|| text("grouping", &j.grouping, CHARFIELD))
            .or_else(|| nul("description", &j.description))?;
        Some(format!("Error in loading Jobs from Git repository: {}.{}: {problem}", j.module_name, j.job_class_name))
    });
    if let Some(records) = out.extensions.get_mut(identifier) {
        // Extension records are appended per type, so every record of this identifier is new.
        keep(records, 0, &mut errors, |r| {
            let problem = text("key", &r.key, CHARFIELD).or_else(|| nul_in_json("data", &r.data))?;
            Some(format!("Error in loading `{}`: {problem}", r.key))
        });
    }
    let grouping = match identifier {
        "extras.configcontextschema" => schema::GROUPING,
        "extras.configcontext" => config_context::GROUPING,
        "extras.exporttemplate" => export_template::GROUPING,
        "extras.graphqlquery" => graphql_query::GROUPING,
        "extras.job" => job::GROUPING,
        _ => identifier,
    };
    for mut entry in errors {
        entry.grouping = grouping.to_owned();
        out.logs.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_djangos() {
        assert_eq!(
            too_long("name", &"é".repeat(256), CHARFIELD).as_deref(),
            Some("name: Ensure this value has at most 255 characters (it has 256).")
        );
        assert_eq!(too_long("name", &"é".repeat(255), CHARFIELD), None, "characters, not bytes");
        assert_eq!(nul("description", "a\0b").as_deref(), Some("description: Null characters are not allowed."));
        assert_eq!(
            nul_in_json("data", &json!({"a": [1, {"b": "x\u{0}"}]})).as_deref(),
            Some("data.a[1].b: Null characters are not allowed.")
        );
        assert_eq!(nul_in_json("data", &json!({"a": [1, {"b": "x"}]})), None);
    }
}
