//! What Django's field preparation makes of a value. Nautobot's loaders set fields from the parsed YAML and save
//! without full validation, so a field holds what `get_prep_value` turns the value into: an integer field takes
//! `int(value)` (a quoted `"50"` is 50), a text field takes `str(value)` (`True` is `"True"`), a boolean field
//! takes Django's spellings. Where Django (or Python under it) raises, the message here is the one it gives;
//! `None` in a column that cannot be null fails as PostgreSQL refuses it.

use serde_json::Value;

use crate::py;

/// PostgreSQL's refusal of `None` in a `NOT NULL` column, which is where Django sends it.
fn not_null(field: &str) -> String {
    format!("null value in column \"{field}\" violates not-null constraint")
}

/// `IntegerField.get_prep_value`: `int(value)`, with Django's message when Python refuses.
pub fn integer(field: &str, value: &Value) -> Result<i128, String> {
    let refused = || format!("Field '{field}' expected a number but got {}.", py::repr(value));
    match value {
        Value::Null => Err(not_null(field)),
        Value::Bool(b) => Ok(i128::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                // int() of a float truncates toward zero.
                let f = n.as_f64().ok_or_else(refused)?.trunc();
                if f.abs() < 1e38 {
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(f as i128)
                } else {
                    Err(format!("Field '{field}' expected a number in range but got {}.", py::repr(value)))
                }
            }
        }
        Value::String(s) => int_literal(s).ok_or_else(refused),
        Value::Array(_) | Value::Object(_) => Err(refused()),
    }
}

/// Python's `int(str)` in base 10: surrounding whitespace, a sign, digits with single underscores between them.
fn int_literal(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let mut n: i128 = 0;
    for c in digits.chars().filter(|c| *c != '_') {
        let d = c.to_digit(10)?;
        n = n.checked_mul(10)?.checked_add(i128::from(d))?;
    }
    Some(if negative { -n } else { n })
}

/// `BooleanField.to_python`: `True`, `False`, the numbers equal to them, and the strings `t`, `True`, `1`, `f`,
/// `False`, `0`. Anything else is Django's `ValidationError`, which Python prints as a list of its messages.
pub fn boolean(field: &str, value: &Value) -> Result<bool, String> {
    match value {
        Value::Null => Err(not_null(field)),
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) if matches!(s.as_str(), "t" | "True" | "1") => Ok(true),
        Value::String(s) if matches!(s.as_str(), "f" | "False" | "0") => Ok(false),
        other => {
            let message = format!("“{}” value must be either True or False.", py::str_of(other));
            Err(format!("[{}]", py::str_repr(&message)))
        }
    }
}

/// `CharField.to_python`: a string is kept, anything else becomes `str(value)`.
pub fn text(field: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::Null => Err(not_null(field)),
        other => Ok(py::str_of(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_fields_take_int_of_the_value() {
        for (value, n) in [
            (json!(50), 50),
            (json!("50"), 50),
            (json!(" +7 "), 7),
            (json!("1_000"), 1000),
            (json!("007"), 7),
            (json!("-3"), -3),
            (json!(true), 1),
            (json!(1.9), 1),
            (json!(-1.9), -1),
        ] {
            assert_eq!(integer("weight", &value), Ok(n), "{value}");
        }
        for (value, message) in [
            (json!("abc"), "Field 'weight' expected a number but got 'abc'."),
            (json!("1.5"), "Field 'weight' expected a number but got '1.5'."),
            (json!("1__0"), "Field 'weight' expected a number but got '1__0'."),
            (json!(""), "Field 'weight' expected a number but got ''."),
            (json!([1, 2]), "Field 'weight' expected a number but got [1, 2]."),
            (json!({"a": 1}), "Field 'weight' expected a number but got {'a': 1}."),
            (json!(null), "null value in column \"weight\" violates not-null constraint"),
        ] {
            assert_eq!(integer("weight", &value), Err(message.to_owned()), "{value}");
        }
    }

    #[test]
    fn boolean_fields_take_djangos_spellings() {
        for (value, b) in [
            (json!(true), true),
            (json!(1), true),
            (json!(1.0), true),
            (json!("t"), true),
            (json!("True"), true),
            (json!("1"), true),
            (json!(false), false),
            (json!(0), false),
            (json!("f"), false),
            (json!("False"), false),
            (json!("0"), false),
        ] {
            assert_eq!(boolean("is_active", &value), Ok(b), "{value}");
        }
        assert_eq!(boolean("is_active", &json!("yes")), Err("['“yes” value must be either True or False.']".into()));
        assert_eq!(boolean("is_active", &json!("true")), Err("['“true” value must be either True or False.']".into()));
        assert_eq!(boolean("is_active", &json!(2)), Err("['“2” value must be either True or False.']".into()));
    }

    #[test]
    fn text_fields_take_str_of_the_value() {
        assert_eq!(text("description", &json!(750)).as_deref(), Ok("750"));
        assert_eq!(text("description", &json!(true)).as_deref(), Ok("True"));
        assert_eq!(text("description", &json!(2.5)).as_deref(), Ok("2.5"));
        assert_eq!(text("description", &json!(["a", 1])).as_deref(), Ok("['a', 1]"));
        assert_eq!(text("description", &json!("kept")).as_deref(), Ok("kept"));
        assert!(text("description", &json!(null)).is_err());
    }
}
