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
