//! Config context schemas (spec c.2): `config_context_schemas/<file>`, a dict or a list of dicts each.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{DataType, LoadInput, Loaded, Log, data_files, django, metadata, parse_file};

pub const GROUPING: &str = "config context schemas";

/// Nautobot's rule for schemas: context data is always an object, so the schema must describe one.
const OBJECT_SHAPE: &str = "Nautobot only supports context data in the form of an object and thus the JSON schema \
                            must be of type object and specify a set of properties.";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextSchema {
    pub name: String,
    pub description: String,
    pub data_schema: Value,
    #[serde(skip)]
    pub file: String,
}

pub(super) struct Schemas;

impl DataType for Schemas {
    fn identifier(&self) -> &'static str {
        "extras.configcontextschema"
    }
    fn name(&self) -> &'static str {
        "config context schemas"
    }
    fn weight(&self) -> u32 {
        100
    }
    fn folder(&self) -> &'static str {
        "config_context_schemas"
    }
    fn records(&self) -> super::Records {
        super::Records::ConfigContextSchemas
    }

    fn load(&self, input: &LoadInput<'_>, out: &mut Loaded) {
        let dir = "config_context_schemas";
        let mut log = Log { out: &mut out.logs, grouping: GROUPING };
        if !input.tree.is_dir(dir) {
            return;
        }
        for (file, _) in data_files(input.tree, dir, &mut log, false) {
            // Nautobot logs the repr of a one-element tuple here (spec h.9); we log the message itself.
            log.info(format!("Loading config context schema from `{file}`"));
            let result = parse_file(input, &format!("{dir}/{file}")).and_then(|data| match data {
                Value::Object(map) => import(&map, &file).map(|s| vec![s]),
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::Object(map) => import(map, &file),
                        _ => Err("each item in list data must be a dict".to_owned()),
                    })
                    .collect(),
                _ => Err("data must be a dict or a list of dicts".to_owned()),
            });
            match result {
                Ok(schemas) => {
                    for schema in schemas {
                        out.config_context_schemas.push(schema);
                    }
                }
                Err(e) => log.error(format!("Error in loading config context schema data from `{file}`: {e}")),
            }
        }
        // A later definition of the same name in this repository wins, as in Nautobot.
        super::dedupe_keep_last(&mut out.config_context_schemas, |s| s.name.clone());
    }
}

fn import(data: &Map<String, Value>, file: &str) -> Result<ContextSchema, String> {
    let (meta, name) = metadata(data)?;
    let Some(data_schema) = data.get("data_schema") else {
        return Err("data is missing the required `data_schema` key.".to_owned());
    };
    validate(data_schema)?;
    let description = meta.get("description").map_or(Ok(String::new()), |d| django::text("description", d))?;
    Ok(ContextSchema { name, description, data_schema: data_schema.clone(), file: file.to_owned() })
}

/// `ConfigContextSchema.clean()`: a valid JSON Schema Draft 7 document describing an object with properties.
pub fn validate(data_schema: &Value) -> Result<(), String> {
    if let Err(err) = jsonschema::draft7::meta::validate(data_schema) {
        return Err(format!("data_schema: {err}"));
    }
    let object_shaped =
        data_schema.get("type").and_then(Value::as_str) == Some("object") && data_schema.get("properties").is_some();
    if object_shaped { Ok(()) } else { Err(format!("data_schema: {OBJECT_SHAPE}")) }
}

/// How config context data that does not match its linked schema is reported. Nautobot's loader does not check
/// it at all; gitfleet warns by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaEnforcement {
    /// Not checked (as Nautobot).
    Off,
    /// A warning naming the file and the first violations.
    #[default]
    Warn,
    /// The same as an error, which fails the sync.
    Error,
}

impl SchemaEnforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for SchemaEnforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SchemaEnforcement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "warn" | "warning" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            other => Err(format!("'{other}' is not one of off, warn, error")),
        }
    }
}

/// At most this many violations are named in one line.
const SHOWN_VIOLATIONS: usize = 3;

/// Checks config context data against the schemas the contexts link to, compiling each schema once.
pub struct DataChecker {
    enforcement: SchemaEnforcement,
    compiled: std::collections::HashMap<String, Option<jsonschema::Validator>>,
}

impl DataChecker {
    pub fn new(enforcement: SchemaEnforcement) -> Self {
        Self { enforcement, compiled: std::collections::HashMap::new() }
    }

    /// The line for a context whose data violates its schema `schema` (named `schema_name`): the file and the
    /// first violations, each at its JSON pointer. `None` when the data matches or checking is off.
    pub fn check(
        &mut self,
        context: &super::ConfigContext,
        schema_name: &str,
        schema: &Value,
    ) -> Option<crate::job_result::LogEntry> {
        if self.enforcement == SchemaEnforcement::Off {
            return None;
        }
        // Schemas were checked as Draft 7 when they were loaded; one that still does not compile checks nothing.
        let validator = self
            .compiled
            .entry(schema_name.to_owned())
            .or_insert_with(|| jsonschema::draft7::new(schema).ok())
            .as_ref()?;
        let data = context.data.value();
        let mut violations = validator.iter_errors(&data);
        let shown: Vec<String> = violations
            .by_ref()
            .take(SHOWN_VIOLATIONS)
            .map(|e| {
                let at = e.instance_path().as_str();
                format!("at `{}`: {e}", if at.is_empty() { "/" } else { at })
            })
            .collect();
        if shown.is_empty() {
            return None;
        }
        let more = violations.count();
        let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        let message = format!(
            "Config context `{}` from `{}` does not match its schema `{schema_name}`: {}{tail}",
            context.name,
            context.file,
            shown.join("; ")
        );
        let level = match self.enforcement {
            SchemaEnforcement::Error => crate::job_result::LogLevel::Error,
            _ => crate::job_result::LogLevel::Warning,
        };
        Some(crate::job_result::LogEntry::new(level, super::config_context::GROUPING, message).about(&context.name))
    }
}
