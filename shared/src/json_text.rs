//! A JSON document held as its compact text while a sync carries it from the load to the database.

use serde::{Serialize, Serializer};
use serde_json::Value;

/// Documents nested deeper than this stay parsed: the text of any shallower one parses back within serde_json's
/// recursion limit (128).
const TEXT_DEPTH: usize = 100;

/// A record's data. A small parsed document costs about ten times its text in maps and strings (a config context of
/// 300 bytes is about 2 KiB as a `Value`), so a load of 100,000 files keeps each as its compact text (keys sorted,
/// as `Value` renders them) and parses it again only where it is checked or compared, a chunk at a time.
#[derive(Clone)]
pub struct JsonText(Repr);

#[derive(Clone)]
enum Repr {
    Text(Box<str>),
    Parsed(Box<Value>),
}

impl JsonText {
    pub fn new(value: Value) -> Self {
        if depth(&value) <= TEXT_DEPTH {
            Self(Repr::Text(value.to_string().into_boxed_str()))
        } else {
            Self(Repr::Parsed(Box::new(value)))
        }
    }

    /// The document, parsed.
    pub fn value(&self) -> Value {
        match &self.0 {
            // The text was rendered from a `Value` no deeper than `TEXT_DEPTH`: it parses.
            Repr::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            Repr::Parsed(value) => (**value).clone(),
        }
    }

    /// The document as compact JSON text (keys sorted).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match &self.0 {
            Repr::Text(text) => std::borrow::Cow::Borrowed(text),
            Repr::Parsed(value) => std::borrow::Cow::Owned(value.to_string()),
        }
    }

    /// A document from text that [`JsonText::text`] gave (a sync stages its records in the database and reads
    /// them back): kept as it is. Any other text is parsed first.
    pub fn from_rendered(text: String) -> Self {
        match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            Ok(_) => Self(Repr::Text(text.into_boxed_str())),
            Err(_) => Self::new(serde_json::from_str(&text).unwrap_or(Value::Null)),
        }
    }

    /// Whether this is the JSON null.
    pub fn is_null(&self) -> bool {
        match &self.0 {
            Repr::Text(text) => &**text == "null",
            Repr::Parsed(value) => value.is_null(),
        }
    }
}

/// How deep `value` nests (a scalar is 0), without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((value, at)) = stack.pop() {
        deepest = deepest.max(at);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, at + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, at + 1))),
            _ => {}
        }
    }
    deepest
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::new(value)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            // Both rendered from a `Value` the same way: equal documents have equal texts.
            (Repr::Text(a), Repr::Text(b)) => a == b,
            _ => self.value() == other.value(),
        }
    }
}

impl PartialEq<Value> for JsonText {
    fn eq(&self, other: &Value) -> bool {
        self.value() == *other
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Text(text) => f.write_str(text),
            Repr::Parsed(value) => write!(f, "{value}"),
        }
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_and_parsed_documents_round_trip() {
        let small = json!({"b": [1, 2.5, "x"], "a": {"c": null}});
        assert_eq!(JsonText::new(small.clone()).value(), small);
        assert!(matches!(JsonText::new(small.clone()).0, Repr::Text(_)));
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let held = JsonText::new(deep.clone());
        assert!(matches!(held.0, Repr::Parsed(_)), "a document past serde_json's recursion limit stays parsed");
        assert_eq!(held.value(), deep);
        assert_eq!(JsonText::new(small.clone()), JsonText::new(small));
        assert_ne!(JsonText::new(json!({"a": 1})), JsonText::new(json!({"a": 1.0})));
        assert!(JsonText::new(Value::Null).is_null());
    }
}
