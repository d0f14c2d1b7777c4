//! One safe loader for YAML and JSON files, with PyYAML's YAML 1.1 rules (Nautobot reads both with
//! `yaml.safe_load`), producing the JSON value Nautobot would store.
//!
//! The parser (saphyr) gives events; the scalar resolution, merge keys, tags and key conversion here follow
//! PyYAML's `SafeLoader` and then Django's `DjangoJSONEncoder`: `yes`/`no`/`on`/`off` are booleans, `0777` is octal,
//! `1:30` is the base-60 integer 90, `2026-11-22` becomes the string `"2026-11-22"`, a `True` key becomes `"true"`.
//! Where PyYAML would build something JSON cannot hold (infinity, a recursive structure, a `!!binary` value) the
//! file is refused with an error, as storing it in Nautobot would fail too. Aliases are expanded under a budget,
//! so an alias bomb is refused in bounded memory instead of exhausting it.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Tag};
use serde_json::{Map, Number, Value};
use thiserror::Error;

/// Bounds on what one file may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file read, in bytes.
    pub max_bytes: usize,
    /// Most values a document may expand to once aliases are followed.
    pub max_nodes: usize,
    /// Deepest nesting of sequences and mappings. Records are stored as PostgreSQL JSON and read back with
    /// serde_json, which refuses more than 127 levels: a deeper record would fail every later sync.
    pub max_depth: usize,
    /// Most bytes of keys and scalars a document may expand to once aliases are followed (a 1 MiB string aliased a
    /// thousand times is 1 GiB in memory, though the file is 1 MiB).
    pub max_expanded_bytes: usize,
    /// Largest JSON a parsed document may serialize to: a stored record (context data, a schema) is part of one
    /// document, so none reaches the database larger than this.
    pub max_record_bytes: usize,
    /// Most bytes of JSON all the documents of one load may add up to (what `worker check` and a dry run hold in
    /// memory at once; a sync streams its files but keeps the same limit).
    pub max_load_bytes: usize,
    /// Largest Python module read, in bytes (a syntax tree takes up to about 100 times its source).
    pub max_python_bytes: usize,
    /// Most tokens all the Python modules of one load may have together (their trees are kept until jobs resolve).
    pub max_python_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_nodes: 1_000_000,
            max_depth: 126,
            max_expanded_bytes: 64 * 1024 * 1024,
            max_record_bytes: 16 * 1024 * 1024,
            max_load_bytes: 256 * 1024 * 1024,
            max_python_bytes: 2 * 1024 * 1024,
            max_python_tokens: 2_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum YamlError {
    #[error("file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("file is not valid UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("{info} (line {line}, column {column})")]
    Syntax { info: String, line: usize, column: usize },
    #[error("expected a single document in the stream, but found another document (line {line})")]
    MultipleDocuments { line: usize },
    #[error("found undefined alias (line {line})")]
    UndefinedAlias { line: usize },
    #[error("document expands to more than {0} values once aliases are followed (an alias bomb?)")]
    TooManyNodes(usize),
    #[error("document expands to more than {0} bytes once aliases are followed (an alias bomb?)")]
    TooManyBytes(usize),
    #[error("document is {size} bytes as JSON, over the limit of {limit} bytes for one record")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("document nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("recursive alias: a node refers to itself, which JSON cannot hold")]
    Recursive,
    #[error("could not determine a constructor for the tag '{0}'")]
    UnknownTag(String),
    #[error("invalid value for tag '{tag}': '{value}'")]
    BadTaggedValue { tag: String, value: String },
    #[error("found unhashable key (a {0} cannot be a mapping key)")]
    UnhashableKey(&'static str),
    #[error("keys must be str, int, float, bool or None, not {0}")]
    BadKey(&'static str),
    #[error("expected a mapping or list of mappings for merging")]
    BadMerge,
    #[error("number {0} cannot be stored as JSON")]
    BadNumber(String),
}

/// Parses one file's bytes: UTF-8, at most one document, YAML 1.1 scalars. An empty file is `null`.
pub fn load(bytes: &[u8], limits: &Limits) -> Result<Value, YamlError> {
    load_sized(bytes, limits).map(|(value, _)| value)
}

/// The same, with an estimate of the value's size as JSON (the bytes of its scalars and keys plus a few per value):
/// what a load's budget counts.
pub fn load_sized(bytes: &[u8], limits: &Limits) -> Result<(Value, usize), YamlError> {
    if bytes.len() > limits.max_bytes {
        return Err(YamlError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| YamlError::NotUtf8(e.valid_up_to()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut composer = Composer::default();
    let Some(root) = composer.compose(text)? else { return Ok((Value::Null, 4)) };
    let mut builder =
        Builder { nodes: &composer.nodes, limits, count: 0, bytes: 0, active: vec![false; composer.nodes.len()] };
    let value = builder.value(root, 0)?;
    let estimate = builder.bytes;
    drop(composer);
    // Escaping at most sextuples a character (`\u0001`): below that bound the exact size need not be counted.
    if estimate.saturating_mul(6) > limits.max_record_bytes {
        let size = json_size(&value);
        if size > limits.max_record_bytes {
            return Err(YamlError::RecordTooLarge { size, limit: limits.max_record_bytes });
        }
    }
    Ok((value, estimate))
}

/// The length of a value's compact JSON text, counted without building it.
pub fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A node of the composed document; aliases point at the anchored node's index.
#[derive(Debug)]
enum Node {
    Scalar { value: String, style: ScalarStyle, tag: Option<Tag> },
    Sequence { items: Vec<usize>, tag: Option<Tag> },
    Mapping { pairs: Vec<(usize, usize)>, tag: Option<Tag> },
    Alias(usize),
}

#[derive(Default)]
struct Composer {
    nodes: Vec<Node>,
    anchors: HashMap<usize, usize>,
}

enum Open {
    Sequence(usize),
    Mapping(usize, Option<usize>),
}

fn syntax(err: &ScanError) -> YamlError {
    YamlError::Syntax { info: err.info().to_owned(), line: err.marker().line(), column: err.marker().col() + 1 }
}

impl Composer {
    fn compose(&mut self, text: &str) -> Result<Option<usize>, YamlError> {
        let mut stack: Vec<Open> = Vec::new();
        let mut root = None;
        let mut documents = 0;
        for event in Parser::new_from_str(text) {
            let (event, span) = event.map_err(|e| syntax(&e))?;
            let node = match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(YamlError::MultipleDocuments { line: span.start.line() });
                    }
                    continue;
                }
                Event::Scalar(value, style, anchor, tag) => {
                    let id =
                        self.push(Node::Scalar { value: value.into_owned(), style, tag: tag.map(|t| t.into_owned()) });
                    self.anchor(anchor, id);
                    id
                }
                Event::Alias(anchor) => {
                    let target =
                        *self.anchors.get(&anchor).ok_or(YamlError::UndefinedAlias { line: span.start.line() })?;
                    self.push(Node::Alias(target))
                }
                Event::SequenceStart(anchor, tag) => {
                    let id = self.push(Node::Sequence { items: Vec::new(), tag: tag.map(|t| t.into_owned()) });
                    self.anchor(anchor, id);
                    stack.push(Open::Sequence(id));
                    continue;
                }
                Event::MappingStart(anchor, tag) => {
                    let id = self.push(Node::Mapping { pairs: Vec::new(), tag: tag.map(|t| t.into_owned()) });
                    self.anchor(anchor, id);
                    stack.push(Open::Mapping(id, None));
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                    Some(Open::Sequence(id) | Open::Mapping(id, _)) => id,
                    None => continue,
                },
                Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
            };
            match stack.last_mut() {
                None => root = Some(node),
                Some(Open::Sequence(parent)) => {
                    if let Node::Sequence { items, .. } = &mut self.nodes[*parent] {
                        items.push(node);
                    }
                }
                Some(Open::Mapping(parent, key)) => match key.take() {
                    None => *key = Some(node),
                    Some(k) => {
                        if let Node::Mapping { pairs, .. } = &mut self.nodes[*parent] {
                            pairs.push((k, node));
                        }
                    }
                },
            }
        }
        Ok(root)
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn anchor(&mut self, anchor: usize, id: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, id);
        }
    }
}

struct Builder<'a> {
    nodes: &'a [Node],
    limits: &'a Limits,
    count: usize,
    /// Bytes of scalars and keys built so far, aliases expanded.
    bytes: usize,
    active: Vec<bool>,
}

/// A constructed scalar before it becomes JSON: keys need to know what it was.
enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Date(String),
}

const CORE: &str = "tag:yaml.org,2002:";

fn tag_name(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() { format!("{CORE}{}", tag.suffix) } else { format!("{}{}", tag.handle, tag.suffix) }
}

impl Builder<'_> {
    fn value(&mut self, id: usize, depth: usize) -> Result<Value, YamlError> {
        self.count += 1;
        if self.count > self.limits.max_nodes {
            return Err(YamlError::TooManyNodes(self.limits.max_nodes));
        }
        if depth > self.limits.max_depth {
            return Err(YamlError::TooDeep(self.limits.max_depth));
        }
        if let Node::Scalar { value, .. } = &self.nodes[id] {
            // Counted before the value is copied, so an aliased string costs nothing past the budget.
            self.spend(value.len())?;
        }
        match &self.nodes[id] {
            Node::Alias(target) => {
                let target = *target;
                if self.active[target] {
                    return Err(YamlError::Recursive);
                }
                self.value(target, depth)
            }
            Node::Scalar { .. } => scalar_to_json(self.scalar(id)?),
            Node::Sequence { items, tag } => {
                check_collection_tag(tag.as_ref(), "seq")?;
                self.active[id] = true;
                let mut out = Vec::with_capacity(items.len());
                for &item in items {
                    out.push(self.value(item, depth + 1)?);
                }
                self.active[id] = false;
                Ok(Value::Array(out))
            }
            Node::Mapping { tag, .. } => {
                check_collection_tag(tag.as_ref(), "map")?;
                self.active[id] = true;
                let mut dict = PyDict::default();
                self.fill_mapping(id, &mut dict, depth)?;
                self.active[id] = false;
                Ok(Value::Object(dict.into_json()))
            }
        }
    }

    /// PyYAML's `flatten_mapping`: merged pairs first (earlier merge sources win over later ones), then the
    /// mapping's own pairs, which win over everything merged. Keys are a Python dict's: equal keys are one key.
    fn fill_mapping(&mut self, id: usize, dict: &mut PyDict, depth: usize) -> Result<(), YamlError> {
        let Node::Mapping { pairs, .. } = &self.nodes[self.resolve(id)] else { return Err(YamlError::BadMerge) };
        let mut merges = Vec::new();
        let mut own = Vec::new();
        for &(k, v) in pairs {
            if self.is_merge_key(k) { merges.push(v) } else { own.push((k, v)) }
        }
        for merge in merges {
            let merge = self.resolve(merge);
            let sources: Vec<usize> = match &self.nodes[merge] {
                Node::Mapping { .. } => vec![merge],
                Node::Sequence { items, .. } => items.iter().map(|&i| self.resolve(i)).collect(),
                _ => return Err(YamlError::BadMerge),
            };
            // A sequence's sources are merged last to first, so the first one's values win.
            for source in sources.into_iter().rev() {
                if !matches!(self.nodes[source], Node::Mapping { .. }) {
                    return Err(YamlError::BadMerge);
                }
                if self.active[source] {
                    return Err(YamlError::Recursive);
                }
                self.active[source] = true;
                // Merging a source's own (deduplicated) dict gives what its flattened pairs would: each key's
                // first spelling, last value and first position are kept.
                let mut part = PyDict::default();
                self.fill_mapping(source, &mut part, depth + 1)?;
                self.active[source] = false;
                dict.extend(part);
            }
        }
        for (k, v) in own {
            let (key, spelling) = self.key(k)?;
            let value = self.value(v, depth + 1)?;
            dict.insert(key, spelling, value);
        }
        Ok(())
    }

    fn resolve(&self, mut id: usize) -> usize {
        while let Node::Alias(target) = self.nodes[id] {
            id = target;
        }
        id
    }

    fn is_merge_key(&self, id: usize) -> bool {
        matches!(&self.nodes[id], Node::Scalar { value, style: ScalarStyle::Plain, tag: None } if value == "<<")
    }

    fn spend(&mut self, bytes: usize) -> Result<(), YamlError> {
        // Each value costs at least a few bytes of JSON (separators, `null`).
        self.bytes = self.bytes.saturating_add(bytes + 4);
        if self.bytes > self.limits.max_expanded_bytes {
            return Err(YamlError::TooManyBytes(self.limits.max_expanded_bytes));
        }
        Ok(())
    }

    /// A mapping key: what Python compares it by, and how `json.dumps` writes it.
    fn key(&mut self, id: usize) -> Result<(PyKey, String), YamlError> {
        let id = self.resolve(id);
        if let Node::Scalar { value, .. } = &self.nodes[id] {
            self.spend(value.len())?;
        }
        match &self.nodes[id] {
            Node::Sequence { .. } => Err(YamlError::UnhashableKey("list")),
            Node::Mapping { .. } => Err(YamlError::UnhashableKey("dict")),
            Node::Alias(_) => Err(YamlError::Recursive),
            Node::Scalar { .. } => Ok(match self.scalar(id)? {
                Scalar::Null => (PyKey::None, "null".to_owned()),
                Scalar::Bool(b) => (PyKey::Number(i128::from(b)), b.to_string()),
                Scalar::Int(i) => (PyKey::Number(i), i.to_string()),
                Scalar::Float(f) => (PyKey::float(f), python_float_repr(f)),
                Scalar::Str(s) => (PyKey::Str(s.clone()), s),
                Scalar::Date(_) => return Err(YamlError::BadKey("date")),
            }),
        }
    }

    fn scalar(&self, id: usize) -> Result<Scalar, YamlError> {
        let Node::Scalar { value, style, tag } = &self.nodes[id] else { return Err(YamlError::BadMerge) };
        let Some(tag) = tag else {
            return Ok(if *style == ScalarStyle::Plain { resolve_plain(value)? } else { Scalar::Str(value.clone()) });
        };
        let name = tag_name(tag);
        if name == "!" {
            // The non-specific tag: a string.
            return Ok(Scalar::Str(value.clone()));
        }
        let bad = || YamlError::BadTaggedValue { tag: name.clone(), value: value.clone() };
        match name.strip_prefix(CORE) {
            Some("str") => Ok(Scalar::Str(value.clone())),
            Some("null") => Ok(Scalar::Null),
            Some("bool") => match bool_value(value) {
                Some(b) => Ok(Scalar::Bool(b)),
                None => Err(bad()),
            },
            Some("int") => int_value(value).map(Scalar::Int).ok_or_else(bad),
            Some("float") => float_value(value).map(Scalar::Float).ok_or_else(bad),
            Some("timestamp") => timestamp_value(value).map(Scalar::Date).ok_or_else(bad),
            _ => Err(YamlError::UnknownTag(name)),
        }
    }
}

/// A key as a Python dict compares it: `True == 1 == 1.0` and `False == 0 == 0.0` are one key; PyYAML builds every
/// `.nan` as the same object, so those are one key too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PyKey {
    None,
    /// Booleans, integers and the floats equal to an integer.
    Number(i128),
    /// Any other float, by its bits.
    Float(u64),
    Nan,
    Str(String),
}

impl PyKey {
    fn float(f: f64) -> Self {
        if f.is_nan() {
            Self::Nan
        } else if f.fract() == 0.0 && f.abs() < 1e38 {
            #[allow(clippy::cast_possible_truncation)]
            Self::Number(f as i128)
        } else {
            Self::Float(f.to_bits())
        }
    }
}

/// A mapping as PyYAML builds it, a Python dict: a key seen again keeps its first spelling and position and takes
/// the new value.
#[derive(Default)]
struct PyDict {
    entries: Vec<(String, Value)>,
    index: HashMap<PyKey, usize>,
}

impl PyDict {
    fn insert(&mut self, key: PyKey, spelling: String, value: Value) {
        match self.index.get(&key) {
            Some(&at) => self.entries[at].1 = value,
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push((spelling, value));
            }
        }
    }

    fn extend(&mut self, other: PyDict) {
        let mut keys: Vec<(usize, PyKey)> = other.index.into_iter().map(|(k, at)| (at, k)).collect();
        keys.sort_unstable_by_key(|(at, _)| *at);
        for ((_, key), (spelling, value)) in keys.into_iter().zip(other.entries) {
            self.insert(key, spelling, value);
        }
    }

    /// The dict as `json.dumps` writes it and PostgreSQL reads it back: keys that are distinct in Python but
    /// written alike (`1` and `"1"`) keep the later value.
    fn into_json(self) -> Map<String, Value> {
        let mut map = Map::new();
        for (spelling, value) in self.entries {
            map.insert(spelling, value);
        }
        map
    }
}

fn check_collection_tag(tag: Option<&Tag>, kind: &str) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if tag_name(t) == "!" => Ok(()),
        Some(t) if t.is_yaml_core_schema() && t.suffix == kind => Ok(()),
        Some(t) => Err(YamlError::UnknownTag(tag_name(t))),
    }
}

fn scalar_to_json(scalar: Scalar) -> Result<Value, YamlError> {
    Ok(match scalar {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Bool(b),
        Scalar::Int(i) => {
            if let Ok(v) = i64::try_from(i) {
                Value::from(v)
            } else if let Ok(v) = u64::try_from(i) {
                Value::from(v)
            } else {
                return Err(YamlError::BadNumber(i.to_string()));
            }
        }
        Scalar::Float(f) => Value::Number(Number::from_f64(f).ok_or_else(|| YamlError::BadNumber(f.to_string()))?),
        Scalar::Str(s) | Scalar::Date(s) => Value::String(s),
    })
}

/// PyYAML's implicit resolvers for plain scalars, tried in its order.
fn resolve_plain(value: &str) -> Result<Scalar, YamlError> {
    if matches!(value, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Scalar::Null);
    }
    if let Some(b) = bool_value(value) {
        return Ok(Scalar::Bool(b));
    }
    if is_int(value) {
        return int_value(value).map(Scalar::Int).ok_or_else(|| YamlError::BadNumber(value.to_owned()));
    }
    if is_float(value) {
        return float_value(value).map(Scalar::Float).ok_or_else(|| YamlError::BadNumber(value.to_owned()));
    }
    if value == "=" {
        // PyYAML resolves `=` to the `value` tag, which the safe constructor cannot build.
        return Err(YamlError::UnknownTag(format!("{CORE}value")));
    }
    if let Some(ts) = timestamp_value(value) {
        return Ok(Scalar::Date(ts));
    }
    Ok(Scalar::Str(value.to_owned()))
}

fn bool_value(value: &str) -> Option<bool> {
    match value {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn split_sign(value: &str) -> (bool, &str) {
    match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    }
}

/// `[-+]?(0b[01_]+|0[0-7_]+|(0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|[1-9][0-9_]*(:[0-5]?[0-9])+)`
fn is_int(value: &str) -> bool {
    let (_, body) = split_sign(value);
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    if let Some(rest) = body.strip_prefix("0b") {
        return all(rest, |c| matches!(c, '0' | '1' | '_'));
    }
    if let Some(rest) = body.strip_prefix("0x") {
        return all(rest, |c| c.is_ascii_hexdigit() || c == '_');
    }
    if body == "0" {
        return true;
    }
    if let Some(rest) = body.strip_prefix('0') {
        return all(rest, |c| matches!(c, '0'..='7' | '_'));
    }
    let mut parts = body.split(':');
    let head = parts.next().unwrap_or("");
    let head_ok = head.starts_with(|c: char| matches!(c, '1'..='9')) && all(head, |c| c.is_ascii_digit() || c == '_');
    head_ok && parts.all(is_sexagesimal_part)
}

fn is_sexagesimal_part(part: &str) -> bool {
    match part.as_bytes() {
        [d] => d.is_ascii_digit(),
        [a, b] => matches!(a, b'0'..=b'5') && b.is_ascii_digit(),
        _ => false,
    }
}

fn int_value(value: &str) -> Option<i128> {
    let cleaned = value.replace('_', "");
    let (negative, body) = split_sign(&cleaned);
    let magnitude = if body == "0" {
        0
    } else if let Some(b) = body.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = body.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if body.len() > 1 && body.starts_with('0') {
        i128::from_str_radix(&body[1..], 8).ok()?
    } else if body.contains(':') {
        body.split(':').try_fold(0i128, |acc, part| Some(acc.checked_mul(60)? + part.parse::<i128>().ok()?))?
    } else {
        body.parse().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// `[-+]?([0-9][0-9_]*)\.[0-9_]*([eE][-+][0-9]+)?|\.[0-9][0-9_]*([eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
/// |[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)`
fn is_float(value: &str) -> bool {
    if matches!(value, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (_, body) = split_sign(value);
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit() || c == '_');
    let exponent_ok = |s: &str| match s.as_bytes() {
        [] => true,
        [b'e' | b'E', b'-' | b'+', rest @ ..] => !rest.is_empty() && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let Some((int_part, frac)) = body.split_once('.') else { return false };
    if int_part.contains(':') {
        let mut parts = int_part.split(':');
        let head = parts.next().unwrap_or("");
        return head.starts_with(|c: char| c.is_ascii_digit())
            && digits(head)
            && parts.all(is_sexagesimal_part)
            && digits(frac);
    }
    let exp_at = frac.find(['e', 'E']).unwrap_or(frac.len());
    let (frac_digits, exp) = frac.split_at(exp_at);
    if int_part.is_empty() {
        // `.5`: only without a sign in PyYAML's pattern.
        return body.len() == value.len()
            && frac_digits.starts_with(|c: char| c.is_ascii_digit())
            && digits(frac_digits)
            && exponent_ok(exp);
    }
    int_part.starts_with(|c: char| c.is_ascii_digit()) && digits(int_part) && digits(frac_digits) && exponent_ok(exp)
}

fn float_value(value: &str) -> Option<f64> {
    let cleaned = value.replace('_', "").to_lowercase();
    let (negative, body) = split_sign(&cleaned);
    let sign = if negative { -1.0 } else { 1.0 };
    if body == ".inf" {
        return Some(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    if body.contains(':') {
        let mut total = 0.0;
        for part in body.split(':') {
            total = total * 60.0 + part.parse::<f64>().ok()?;
        }
        return Some(sign * total);
    }
    let body = if body.starts_with('.') { format!("0{body}") } else { body.to_owned() };
    body.parse::<f64>().ok().map(|f| sign * f)
}

/// PyYAML timestamps, written the way `DjangoJSONEncoder` writes `date` and `datetime` values.
fn timestamp_value(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let is_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if b.len() == 10
        && is_digits(&b[0..4])
        && b[4] == b'-'
        && is_digits(&b[5..7])
        && b[7] == b'-'
        && is_digits(&b[8..10])
    {
        return valid_date(value).then(|| value.to_owned());
    }
    // [0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?([ \t]*(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?
    let (date, rest) = value.split_at(value.find(['T', 't', ' ', '\t'])?);
    let mut ymd = date.split('-');
    let (y, m, d) = (ymd.next()?, ymd.next()?, ymd.next()?);
    if ymd.next().is_some() || y.len() != 4 || !(1..=2).contains(&m.len()) || !(1..=2).contains(&d.len()) {
        return None;
    }
    let rest = rest.strip_prefix(['T', 't']).unwrap_or_else(|| rest.trim_start_matches([' ', '\t']));
    let time_end = rest.find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.')).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':');
    let (h, mi, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !(1..=2).contains(&h.len()) || mi.len() != 2 || s.len() != 2 {
        return None;
    }
    for part in [y, m, d, h, mi, s] {
        if !is_digits(part.as_bytes()) {
            return None;
        }
    }
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let zone = zone.trim_start_matches([' ', '\t']);
    let offset = match zone {
        "" => None,
        "Z" => Some("+00:00".to_owned()),
        z => {
            let (sign, hhmm) = z.split_at(1);
            if sign != "+" && sign != "-" {
                return None;
            }
            let (zh, zm) = hhmm.split_once(':').unwrap_or((hhmm, "00"));
            if !(1..=2).contains(&zh.len()) || zm.len() != 2 || !is_digits(zh.as_bytes()) || !is_digits(zm.as_bytes()) {
                return None;
            }
            Some(format!("{sign}{zh:0>2}:{zm}"))
        }
    };
    let date = format!("{y}-{m:0>2}-{d:0>2}");
    if !valid_date(&date) || h.parse::<u8>().ok()? > 23 || mi.parse::<u8>().ok()? > 59 || s.parse::<u8>().ok()? > 59 {
        return None;
    }
    let micros: String = format!("{fraction:0<6}").chars().take(6).collect();
    // DjangoJSONEncoder: isoformat(), microseconds cut to milliseconds, "+00:00" written as "Z".
    let mut out = format!("{date}T{h:0>2}:{mi}:{s}");
    if micros != "000000" {
        out.push('.');
        out.push_str(&micros[..3]);
    }
    match offset.as_deref() {
        None => {}
        Some("+00:00" | "-00:00") => out.push('Z'),
        Some(o) => out.push_str(o),
    }
    Some(out)
}

fn valid_date(date: &str) -> bool {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
}

/// A float key as `json.dumps` writes it: `repr(float)`, with JavaScript's names for the non-finite values.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() };
    }
    crate::py::float_repr(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn y(text: &str) -> Value {
        load(text.as_bytes(), &Limits::default()).unwrap()
    }

    fn err(text: &str) -> YamlError {
        load(text.as_bytes(), &Limits::default()).unwrap_err()
    }

    #[test]
    fn yaml_1_1_scalars() {
        let doc = y("a: yes\nb: No\nc: on\nd: OFF\ne: y\nf: 0777\ng: 0x1F\nh: 0b101\ni: 1:30\nj: 190:20:30\n\
                     k: 1_000\nl: 09\nm: 1.5\nn: 1e3\no: 1.0e+3\np: .5\nq: ~\nr: null\ns:\nt: '0777'\nu: 12:30:00\n\
                     v: -1:30\nw: +12\nx: 1_0.5\n");
        assert_eq!(
            doc,
            json!({"a": true, "b": false, "c": true, "d": false, "e": "y", "f": 511, "g": 31, "h": 5, "i": 90,
                   "j": 685_230, "k": 1000, "l": "09", "m": 1.5, "n": "1e3", "o": 1000.0, "p": 0.5, "q": null,
                   "r": null, "s": null, "t": "0777", "u": 45000, "v": -90, "w": 12, "x": 10.5})
        );
    }

    #[test]
    fn timestamps_become_django_json_strings() {
        let doc =
            y("a: 2026-11-22\nb: 2026-11-22T06:00:00Z\nc: 2026-11-22 06:00:00.123456 +01:00\nd: 2026-1-2 3:04:05\n\
                     e: 2026-13-01\n");
        assert_eq!(
            doc,
            json!({"a": "2026-11-22", "b": "2026-11-22T06:00:00Z", "c": "2026-11-22T06:00:00.123+01:00",
                   "d": "2026-01-02T03:04:05", "e": "2026-13-01"})
        );
    }

    #[test]
    fn keys_are_written_as_json_dumps_does() {
        assert_eq!(
            y("yes: 1\nno: 0\n~: 3\n1.5: 4\n1.0e+20: 5\n1e20: 6\n"),
            json!({"true": 1, "false": 0, "null": 3, "1.5": 4, "1e+20": 5, "1e20": 6})
        );
        assert_eq!(err("? [a]\n: 1\n"), YamlError::UnhashableKey("list"));
        assert_eq!(err("2026-01-01: x\n"), YamlError::BadKey("date"));
        assert_eq!(y("a: 1\na: 2\n"), json!({"a": 2}), "the last duplicate wins");
    }

    #[test]
    fn keys_equal_in_python_are_one_key() {
        // True == 1 == 1.0 and False == 0: the first key's spelling, the last value.
        assert_eq!(y("yes: a\n1: b\n"), json!({"true": "b"}));
        assert_eq!(y("1: a\ntrue: b\n1.0: c\n"), json!({"1": "c"}));
        assert_eq!(y("0: a\noff: b\n0.0: c\n-0.0: d\n"), json!({"0": "d"}));
        assert_eq!(y("1.5: a\n1.5: b\n"), json!({"1.5": "b"}));
        // Distinct in Python, written alike as JSON: PostgreSQL keeps the later one.
        assert_eq!(y("1: a\n'1': b\n"), json!({"1": "b"}));
        assert_eq!(y("'1': a\n1: b\n"), json!({"1": "b"}));
        // Merge keys: merged pairs come first, so the merged spelling stays and the own value wins.
        assert_eq!(y("base: &b {1: x}\nm: {<<: *b, yes: y}\n")["m"], json!({"1": "y"}));
        assert_eq!(y("a: &a {on: x}\nb: &b {1: y}\nm: {<<: [*a, *b]}\n")["m"], json!({"1": "x"}));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let doc = y("base: &b {x: 1, y: 2}\nother: &o {y: 3, z: 4}\n\
                     one: {<<: *b, y: 9}\nboth: {<<: [*b, *o]}\nlist: &l [1, 2]\ncopy: *l\n");
        assert_eq!(doc["one"], json!({"x": 1, "y": 9}));
        assert_eq!(doc["both"], json!({"x": 1, "y": 2, "z": 4}), "earlier merge sources win");
        assert_eq!(doc["copy"], json!([1, 2]));
        assert_eq!(err("a: {<<: [1]}\n"), YamlError::BadMerge);
        assert!(matches!(err("a: *nope\n"), YamlError::Syntax { .. } | YamlError::UndefinedAlias { .. }));
    }

    #[test]
    fn alias_bomb_is_refused_in_bounded_memory() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for n in 1..12 {
            let p = n - 1;
            text.push_str(&format!(
                "a{n}: &a{n} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert_eq!(err(&text), YamlError::TooManyNodes(Limits::default().max_nodes));
    }

    #[test]
    fn aliased_strings_are_budgeted_by_bytes() {
        // A 1 MiB string aliased 9 x 9 x 9 times: few nodes, hundreds of MiB once expanded.
        let mut text = format!("s: &s \"{}\"\n", "x".repeat(1 << 20));
        text.push_str("a: &a [*s, *s, *s, *s, *s, *s, *s, *s, *s]\n");
        text.push_str("b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
        text.push_str("c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n");
        let limits = Limits::default();
        assert_eq!(load(text.as_bytes(), &limits).unwrap_err(), YamlError::TooManyBytes(limits.max_expanded_bytes));
        // A document within the byte budget but over the record limit is refused too.
        let small = Limits { max_record_bytes: 1024, ..Limits::default() };
        let text = format!("a: \"{}\"\n", "x".repeat(2000));
        assert_eq!(load(text.as_bytes(), &small).unwrap_err(), YamlError::RecordTooLarge { size: 2008, limit: 1024 });
    }

    #[test]
    fn tags() {
        assert_eq!(
            y("a: !!str 0777\nb: !!int '12'\nc: !!float 1\nd: ! 12\ne: !!bool yes\n"),
            json!({"a": "0777", "b": 12, "c": 1.0, "d": "12", "e": true})
        );
        assert_eq!(err("a: !custom x\n"), YamlError::UnknownTag("!custom".into()));
        assert_eq!(err("a: !!binary aGVsbG8=\n"), YamlError::UnknownTag("tag:yaml.org,2002:binary".into()));
        assert_eq!(err("a: =\n"), YamlError::UnknownTag("tag:yaml.org,2002:value".into()));
    }

    #[test]
    fn json_is_yaml() {
        assert_eq!(
            y("{\"a\": [1, 2.5, \"x\", true, null], \"b\": {}}"),
            json!({"a": [1, 2.5, "x", true, null], "b": {}})
        );
    }

    #[test]
    fn what_json_cannot_hold_is_refused() {
        assert!(matches!(err("a: .inf\n"), YamlError::BadNumber(_)));
        assert!(matches!(err("a: 123456789012345678901234567890\n"), YamlError::BadNumber(_)));
        assert!(matches!(err("a: 1\n---\nb: 2\n"), YamlError::MultipleDocuments { .. }));
    }

    #[test]
    fn bytes_and_size() {
        assert_eq!(load(b"", &Limits::default()).unwrap(), Value::Null);
        assert_eq!(load(b"a: \xff\n", &Limits::default()).unwrap_err(), YamlError::NotUtf8(3));
        let limits = Limits { max_bytes: 4, ..Limits::default() };
        assert_eq!(load(b"a: 12345", &limits).unwrap_err(), YamlError::TooLarge { size: 8, limit: 4 });
        assert!(matches!(err("a: [1, 2\n"), YamlError::Syntax { .. }));
    }
}
