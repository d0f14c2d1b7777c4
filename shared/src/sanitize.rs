//! Nautobot's default `SANITIZER_PATTERNS` (spec f.5), applied to every text that reaches a JobResult: log
//! messages, the failure `result` and the traceback.

use std::sync::OnceLock;

use regex::Regex;

const REDACTED: &str = "(redacted)";

fn patterns() -> &'static [(Regex, String); 2] {
    static PATTERNS: OnceLock<[(Regex, String); 2]> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        // Both expressions are constants; a failure to compile them is a bug caught by the unit tests below.
        #[allow(clippy::unwrap_used)]
        let url_userinfo = Regex::new(r"(?i)(https?://)?\S+\s*@").unwrap();
        #[allow(clippy::unwrap_used)]
        let named_secret =
            Regex::new(r#"(?i)(username|password|passwd|pwd|secret|secrets)(["']?(?:\s+is.?|:)?\s+)\S+["']?"#).unwrap();
        [(url_userinfo, format!("${{1}}{REDACTED}@")), (named_secret, format!("${{1}}${{2}}{REDACTED}"))]
    })
}

/// Redacts URL user info (and anything e-mail-like) and values that follow words such as `password`.
pub fn sanitize(text: &str) -> String {
    let mut out = text.to_owned();
    for (pattern, replacement) in patterns() {
        if pattern.is_match(&out) {
            out = pattern.replace_all(&out, replacement.as_str()).into_owned();
        }
    }
    out
}

/// Text as it may be shown on a terminal: control characters (newline, carriage return, ESC and the rest of C0 and
/// C1, DEL) and the bidirectional overrides are written as escapes (`\n`, `\u{1b}`), so a name or message from a
/// repository can neither forge extra lines nor send a terminal escape sequence to an operator.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{printable, sanitize};

    #[test]
    fn strips_url_userinfo() {
        assert_eq!(
            sanitize("fatal: could not read from http://n%C3%BA:1%3A3%40@localhost/git.git"),
            "fatal: could not read from http://(redacted)@localhost/git.git"
        );
        assert_eq!(sanitize("ssh git@example.com:x"), "ssh (redacted)@example.com:x");
    }

    #[test]
    fn strips_named_secrets() {
        assert_eq!(sanitize("password: hunter2"), "password: (redacted)");
        assert_eq!(sanitize("the secret is s3cr3t now"), "the secret is (redacted) now");
        assert_eq!(sanitize("Username \"bob\""), "Username (redacted)");
    }

    #[test]
    fn leaves_plain_text_alone() {
        let text = "main does not appear to be an existing branch, tag, or possible commit hash.";
        assert_eq!(sanitize(text), text);
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert_eq!(printable("plain Zürich"), "plain Zürich");
        assert_eq!(printable("a\nb\x1b[31mred\u{7f}"), "a\\nb\\u{1b}[31mred\\u{7f}");
        assert_eq!(printable("x\u{202e}y\t"), "x\\u{202e}y\\t");
    }
}
