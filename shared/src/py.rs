//! Python's spellings of the values a YAML document holds: `str()`, `repr()` and the truth test. Nautobot's
//! loaders hand these values to Django and format them into messages with Python, so a value stored as text or
//! shown in an error reads the way Python writes it (`True`, `None`, `1e+20`, `{'a': [1, 2]}`).

use serde_json::{Number, Value};

/// `str(value)`: a string is itself; everything else is its `repr()`.
pub fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => repr(other),
    }
}

/// `repr(value)`.
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&number_repr(n)),
        Value::String(s) => out.push_str(&str_repr(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&str_repr(k));
                out.push_str(": ");
                write_repr(v, out);
            }
            out.push('}');
        }
    }
}

fn number_repr(n: &Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (None, Some(u), _) => u.to_string(),
        (None, None, Some(f)) => float_repr(f),
        _ => n.to_string(),
    }
}

/// `repr(float)`: the shortest digits that round-trip, in fixed notation for exponents from -4 to 15 and in
/// scientific notation (`1e+16`, `1.5e-07`) outside them; `nan` and `inf` as Python writes them.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".to_owned() } else { "-inf".to_owned() };
    }
    // Rust's `{:?}` switches notation at the same exponents as Python; only the exponent's spelling differs.
    let s = format!("{f:?}");
    let Some((mantissa, exponent)) = s.split_once('e') else { return s };
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// `repr(str)`: single quotes unless the text holds one and no double quote; backslashes, quotes and
/// non-printable characters escaped.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let code = u32::from(c);
                if code < 0x100 {
                    out.push_str(&format!("\\x{code:02x}"));
                } else {
                    out.push_str(&format!("\\u{code:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's truth test: `None`, `False`, zero, and empty strings, lists and mappings are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// The name of a value's Python type, as `type(value)` prints it (`<class 'int'>`).
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn str_and_repr_are_pythons() {
        assert_eq!(str_of(&json!(750)), "750");
        assert_eq!(str_of(&json!(true)), "True");
        assert_eq!(str_of(&json!(null)), "None");
        assert_eq!(str_of(&json!("x")), "x");
        assert_eq!(str_of(&json!(1.5)), "1.5");
        assert_eq!(str_of(&json!(1.0)), "1.0");
        assert_eq!(str_of(&json!([1, "a", {"b": false}])), "[1, 'a', {'b': False}]");
        assert_eq!(repr(&json!("it's")), "\"it's\"");
        assert_eq!(repr(&json!("both ' and \"")), "'both \\' and \"'");
        assert_eq!(repr(&json!("a\u{1b}b\0")), "'a\\x1bb\\x00'");
        assert_eq!(repr(&json!("“yes”")), "'“yes”'", "printable non-ASCII is kept");
    }

    #[test]
    fn floats_are_written_as_python_writes_them() {
        for (f, text) in [
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-07"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-2.5e100, "-2.5e+100"),
            (0.1, "0.1"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(float_repr(f), text, "{f}");
        }
    }

    #[test]
    fn truth_test() {
        for falsy in [json!(null), json!(false), json!(0), json!(0.0), json!(""), json!([]), json!({})] {
            assert!(!truthy(&falsy), "{falsy}");
        }
        for true_ in [json!(true), json!(1), json!(-0.5), json!(" "), json!([0]), json!({"a": null})] {
            assert!(truthy(&true_), "{true_}");
        }
    }
}
