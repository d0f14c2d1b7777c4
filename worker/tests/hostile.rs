//! Hostile repository content through the real `worker check` binary: every parser ends in an error naming the
//! file (exit 1), never a crash (an abort would exit 134), whatever the nesting, length or alias expansion.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn write(root: &Path, path: &str, content: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Runs `worker check` on `root`; returns the exit code and the text output.
fn check(root: &Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_worker")).arg("check").arg(root).args(extra).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

fn error_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("error")).collect()
}

#[test]
fn a_job_module_with_a_100000_term_expression_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "__init__.py", "");
    write(tmp.path(), "jobs/__init__.py", &format!("x = {}\n", vec!["1"; 100_000].join("+")));
    let (code, text) = check(tmp.path(), &[]);
    assert_eq!(code, 1, "{text}");
    let errors = error_lines(&text);
    assert!(
        errors.iter().any(|l| l.contains("maximum recursion depth exceeded during compilation (__init__.py)")),
        "{errors:?}"
    );
}

#[test]
fn deep_brackets_in_python_yaml_json_and_graphql_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (open, close) = ("[".repeat(50_000), "]".repeat(50_000));
    write(tmp.path(), "__init__.py", "");
    write(tmp.path(), "jobs/__init__.py", &format!("x = {open}{close}\n"));
    write(tmp.path(), "config_contexts/deep.yaml", &format!("a: {open}{close}\n"));
    write(tmp.path(), "config_contexts/deep.json", &format!("{{\"a\": {open}{close}}}"));
    write(
        tmp.path(),
        "graphql_queries/deep.gql",
        &format!("query {{ {} b {} }}", "a { ".repeat(50_000), "} ".repeat(50_000)),
    );
    let (code, text) = check(tmp.path(), &[]);
    assert_eq!(code, 1, "{text}");
    let errors = error_lines(&text).join("\n");
    assert!(errors.contains("too many nested parentheses (__init__.py, line 1)"), "{errors}");
    assert!(errors.contains("`deep.yaml`"), "{errors}");
    assert!(errors.contains("`deep.json`"), "{errors}");
    assert!(errors.contains("deep.gql") && errors.contains("nests deeper than"), "{errors}");
}

#[test]
fn an_aliased_string_is_budgeted_by_its_expanded_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    // A 1 MiB string aliased 9 x 9 x 9 times: a 1 MiB file that would expand to about 760 MiB.
    let mut bomb = format!("_metadata:\n  name: bomb\ns: &s \"{}\"\n", "x".repeat(1 << 20));
    bomb.push_str("a: &a [*s, *s, *s, *s, *s, *s, *s, *s, *s]\n");
    bomb.push_str("b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
    bomb.push_str("c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n");
    write(tmp.path(), "config_contexts/bomb.yaml", &bomb);
    let (code, text) = check(tmp.path(), &[]);
    assert_eq!(code, 1, "{text}");
    let errors = error_lines(&text).join("\n");
    assert!(
        errors.contains("`bomb.yaml`: document expands to more than 67108864 bytes once aliases are followed"),
        "{errors}"
    );
    // The limit is the worker's setting: a smaller one refuses a smaller document.
    write(tmp.path(), "config_contexts/bomb.yaml", "_metadata:\n  name: small\nv: [aaaa, bbbb, cccc]\n");
    let (code, text) = check(tmp.path(), &["--max-record-bytes", "20"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("over the limit of 20 bytes for one record"), "{text}");
}

#[test]
fn values_the_database_would_refuse_are_reported_with_djangos_messages() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "config_contexts/long.yaml", &format!("_metadata:\n  name: {}\nv: 1\n", "n".repeat(300)));
    write(tmp.path(), "config_contexts/nul.json", r#"{"_metadata": {"name": "nul"}, "v": "a\u0000b"}"#);
    write(
        tmp.path(),
        "config_contexts/desc.yaml",
        &format!("_metadata:\n  name: desc\n  description: {}\nv: 1\n", "d".repeat(256)),
    );
    let (code, text) = check(tmp.path(), &[]);
    assert_eq!(code, 1, "{text}");
    let errors = error_lines(&text).join("\n");
    assert!(
        errors.contains("`long.yaml`: _metadata.name: Ensure this value has at most 255 characters (it has 300)."),
        "{errors}"
    );
    assert!(errors.contains("`nul.json`: data.v: Null characters are not allowed."), "{errors}");
    assert!(errors.contains("`desc.yaml`: _metadata.description: Ensure this value has at most 255"), "{errors}");
}
