//! The scope inventory: the objects config context scopes and local contexts point at (locations, roles, devices,
//! ...), imported from the source of truth as `kind` + fields. Lookups are the mappings written under
//! `_metadata.<filter>` in a repository, such as `{"name": "Berlin"}` or `{"model": "Frobozz 1000"}`.
//!
//! Supported lookups: equality on a field (`name`, `model`, `slug`, `network_driver`, ...), `__` traversal into
//! nested objects (`parent__name`, `manufacturer__name`), and the `__iexact` suffix. Anything else is refused with
//! a clear error instead of being guessed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// The 12 scope filters of a config context (spec c.3.2), in processing order, with the model each resolves to
/// and the inventory `kind` that holds those objects.
pub const FILTERS: &[(&str, &str, &str)] = &[
    ("locations", "Location", "location"),
    ("device_types", "DeviceType", "device_type"),
    ("device_families", "DeviceFamily", "device_family"),
    ("roles", "Role", "role"),
    ("platforms", "Platform", "platform"),
    ("cluster_groups", "ClusterGroup", "cluster_group"),
    ("clusters", "Cluster", "cluster"),
    ("tenant_groups", "TenantGroup", "tenant_group"),
    ("tenants", "Tenant", "tenant"),
    ("tags", "Tag", "tag"),
    ("dynamic_groups", "DynamicGroup", "dynamic_group"),
    ("device_redundancy_groups", "DeviceRedundancyGroup", "device_redundancy_group"),
];

/// Local context targets: folder under `config_contexts/`, inventory kind.
pub const LOCAL_KINDS: &[(&str, &str)] = &[("devices", "device"), ("virtual_machines", "virtual_machine")];

/// Every kind an inventory object may have: the scope filters' kinds, then the local context targets'.
pub const KINDS: &[&str] = &[
    "location",
    "device_type",
    "device_family",
    "role",
    "platform",
    "cluster_group",
    "cluster",
    "tenant_group",
    "tenant",
    "tag",
    "dynamic_group",
    "device_redundancy_group",
    "device",
    "virtual_machine",
];

/// Reads an inventory file's text: a JSON list of `{kind, id?, fields}`, or `{"objects": [...]}`. `worker check`
/// and `producer inventory import` read the same format.
pub fn parse_objects(text: &str) -> Result<Vec<ScopeObject>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = match value {
        Value::Object(mut map) => map.remove("objects").unwrap_or(Value::Array(Vec::new())),
        other => other,
    };
    serde_json::from_value(list).map_err(|e| format!("expected a list of {{kind, id?, fields}}: {e}"))
}

/// One object of the source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeObject {
    pub kind: String,
    /// Stable identity in the source of truth (e.g. Nautobot's UUID); optional.
    #[serde(default)]
    pub id: Option<String>,
    pub fields: Map<String, Value>,
}

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    by_kind: HashMap<String, Vec<ScopeObject>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LookupError {
    #[error("a lookup must be a mapping of field to value, got {0}")]
    NotAMapping(String),
    #[error("Unsupported lookup '{0}': use field equality, '__' traversal or '__iexact'")]
    Unsupported(String),
}

impl Inventory {
    pub fn new(objects: impl IntoIterator<Item = ScopeObject>) -> Self {
        let mut by_kind: HashMap<String, Vec<ScopeObject>> = HashMap::new();
        for object in objects {
            by_kind.entry(object.kind.clone()).or_default().push(object);
        }
        Self { by_kind }
    }

    pub fn len(&self) -> usize {
        self.by_kind.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object of `kind` that matches the lookup.
    pub fn find(&self, kind: &str, lookup: &Value) -> Result<Vec<&ScopeObject>, LookupError> {
        let Value::Object(criteria) = lookup else { return Err(LookupError::NotAMapping(python_repr(lookup))) };
        for key in criteria.keys() {
            let mut parts: Vec<&str> = key.split("__").collect();
            if parts.last() == Some(&"iexact") {
                parts.pop();
            }
            if parts.is_empty() || parts.iter().any(|p| p.is_empty() || RESERVED_SUFFIXES.contains(p)) {
                return Err(LookupError::Unsupported(key.clone()));
            }
        }
        let objects = self.by_kind.get(kind).map(Vec::as_slice).unwrap_or_default();
        Ok(objects.iter().filter(|o| criteria.iter().all(|(k, v)| matches(&o.fields, k, v))).collect())
    }
}

/// Django lookup suffixes we do not implement; naming one is an error rather than a field traversal.
const RESERVED_SUFFIXES: &[&str] = &[
    "exact",
    "contains",
    "icontains",
    "in",
    "gt",
    "gte",
    "lt",
    "lte",
    "startswith",
    "istartswith",
    "endswith",
    "iendswith",
    "range",
    "isnull",
    "regex",
    "iregex",
];

fn matches(fields: &Map<String, Value>, key: &str, expected: &Value) -> bool {
    let (path, case_insensitive) = match key.strip_suffix("__iexact") {
        Some(path) => (path, true),
        None => (key, false),
    };
    match (field_at(fields, path), case_insensitive) {
        (Some(Value::String(a)), true) => expected.as_str().is_some_and(|b| a.to_lowercase() == b.to_lowercase()),
        (Some(actual), false) => actual == expected,
        _ => false,
    }
}

/// Follows `parent__name` into nested objects.
fn field_at<'a>(fields: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split("__");
    let mut current = fields.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Python's `repr()` of a JSON value, for messages such as `No matching Tenant found for {'name': 'x'}`.
pub use crate::py::repr as python_repr;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(kind: &str, fields: Value) -> ScopeObject {
        ScopeObject { kind: kind.into(), id: None, fields: fields.as_object().unwrap().clone() }
    }

    fn inventory() -> Inventory {
        Inventory::new([
            object("location", json!({"name": "DC1", "parent": {"name": "Berlin"}})),
            object("location", json!({"name": "DC1", "parent": {"name": "Paris"}})),
            object("device_type", json!({"model": "Frobozz 1000", "manufacturer": {"name": "Acme"}})),
            object("platform", json!({"name": "Arista EOS", "network_driver": "arista_eos"})),
        ])
    }

    #[test]
    fn lookups() {
        let inv = inventory();
        assert_eq!(inv.find("location", &json!({"name": "DC1"})).unwrap().len(), 2);
        assert_eq!(inv.find("location", &json!({"name": "DC1", "parent__name": "Berlin"})).unwrap().len(), 1);
        assert_eq!(inv.find("device_type", &json!({"model": "Frobozz 1000"})).unwrap().len(), 1);
        assert_eq!(inv.find("device_type", &json!({"manufacturer__name": "Acme"})).unwrap().len(), 1);
        assert_eq!(inv.find("platform", &json!({"network_driver": "arista_eos"})).unwrap().len(), 1);
        assert_eq!(inv.find("platform", &json!({"name__iexact": "arista eos"})).unwrap().len(), 1);
        assert_eq!(inv.find("platform", &json!({"name": "arista eos"})).unwrap().len(), 0, "case-sensitive");
        assert_eq!(inv.find("location", &json!({"parent": "Berlin"})).unwrap().len(), 0);
        assert_eq!(inv.find("tenant", &json!({"name": "x"})).unwrap().len(), 0);
        assert!(matches!(inv.find("location", &json!({"name__in": ["a"]})), Err(LookupError::Unsupported(_))));
        assert!(matches!(inv.find("location", &json!("DC1")), Err(LookupError::NotAMapping(_))));
    }

    #[test]
    fn python_reprs() {
        assert_eq!(python_repr(&json!({"name": "Test Location"})), "{'name': 'Test Location'}");
        assert_eq!(python_repr(&json!({"a": [1, true, null], "b": "it's"})), "{'a': [1, True, None], 'b': \"it's\"}");
    }

    #[test]
    fn kinds_are_the_filters_and_local_targets() {
        let expected: Vec<&str> = FILTERS.iter().map(|f| f.2).chain(LOCAL_KINDS.iter().map(|l| l.1)).collect();
        assert_eq!(KINDS, expected.as_slice());
    }
}
