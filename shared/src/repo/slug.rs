//! Repository slugs (spec a.2 and a.3 steps 4 to 6).
//!
//! The slug names the mirror under `GIT_ROOT` and is the Python package name of the repository's Jobs, so it must
//! be importable: an identifier that is not a keyword, a builtin module or an installed package.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use unicode_normalization::UnicodeNormalization;

use super::MAX_FIELD_LEN;

/// Why a slug was refused. The `Display` texts are Nautobot's (`Please choose a different slug` is asserted).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SlugError {
    #[error("Enter a valid \"slug\" consisting of letters, numbers, underscores or hyphens.")]
    Characters,
    #[error("Ensure this field has no more than {MAX_FIELD_LEN} characters.")]
    TooLong,
    #[error("Please choose a different slug; '{slug}' is {reason}")]
    Reserved { slug: String, reason: &'static str },
}

/// A slug that is safe to use as a directory name and to import as a Python package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoSlug(String);

impl RepoSlug {
    /// Every rule a new repository's slug must pass (spec a.3 step 6).
    pub fn parse(value: impl Into<String>) -> Result<Self, SlugError> {
        let slug = value.into();
        if slug.is_empty() || !slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(SlugError::Characters);
        }
        if slug.len() > MAX_FIELD_LEN {
            return Err(SlugError::TooLong);
        }
        if let Some(reason) = import_problem(&slug) {
            return Err(SlugError::Reserved { slug, reason });
        }
        Ok(Self(slug))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepoSlug {
    type Error = SlugError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<RepoSlug> for String {
    fn from(value: RepoSlug) -> Self {
        value.0
    }
}

impl fmt::Display for RepoSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Nautobot's `slugify_dashes_to_underscores`: prefix `a` unless the name starts with `[_A-Za-z]`, then Django's
/// `slugify` (ASCII-folded, lowercased, punctuation dropped, runs of whitespace and `-` collapsed to one `-`,
/// leading and trailing `-`/`_` stripped), then every `-` becomes `_`.
pub fn slugify_dashes_to_underscores(name: &str) -> String {
    let mut value = String::with_capacity(name.len() + 1);
    if !name.starts_with(|c: char| c == '_' || c.is_ascii_alphabetic()) {
        value.push('a');
    }
    value.push_str(name);
    django_slugify(&value).replace('-', "_")
}

fn django_slugify(value: &str) -> String {
    // NFKD, then drop what does not fit in ASCII (Python: .encode("ascii", "ignore")).
    let ascii: String = value.nfkd().filter(char::is_ascii).collect::<String>().to_lowercase();
    // Keep word characters, whitespace and '-'; collapse runs of whitespace and '-' into one '-'.
    let mut out = String::with_capacity(ascii.len());
    let mut in_run = false;
    for c in ascii.chars() {
        if c == '-' || is_python_ascii_space(c) {
            if !in_run {
                out.push('-');
                in_run = true;
            }
        } else if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
            in_run = false;
        }
    }
    out.trim_matches(|c| c == '-' || c == '_').to_owned()
}

/// ASCII characters Python's `str.isspace()` (and so `re`'s `\s`) treats as whitespace.
fn is_python_ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' | '\x1c'..='\x1f')
}

/// The reason a slug cannot be imported as its own package, or `None` when it can.
fn import_problem(slug: &str) -> Option<&'static str> {
    let mut chars = slug.chars();
    let starts_well = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
    if !starts_well || !chars.all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Some("not a valid identifier");
    }
    reserved_names().get(slug).copied()
}

fn reserved_names() -> &'static HashMap<&'static str, &'static str> {
    static NAMES: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = HashMap::new();
        let mut reason = "";
        for line in include_str!("python_names.txt").lines() {
            match line {
                "" => {}
                l if l.starts_with('#') => {}
                "[keyword]" => reason = "a reserved keyword",
                "[builtin]" => reason = "a Python builtin",
                "[installed]" => reason = "the name of an installed Python package",
                name => {
                    names.entry(name).or_insert(reason);
                }
            }
        }
        names
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugify_matches_nautobot() {
        assert_eq!(
            slugify_dashes_to_underscores("1 Very-Bad Git_____Repo Name (2)"),
            "a1_very_bad_git_____repo_name_2"
        );
        assert_eq!(slugify_dashes_to_underscores("Test Git Repository"), "test_git_repository");
        assert_eq!(slugify_dashes_to_underscores("_foo"), "foo");
        assert_eq!(slugify_dashes_to_underscores("Núñez  --  Configs!"), "nunez_configs");
        assert_eq!(slugify_dashes_to_underscores("-lead"), "a_lead");
    }

    #[test]
    fn reserved_slugs_are_refused_with_their_reason() {
        let cases = [
            ("nautobot", "the name of an installed Python package"),
            ("tkinter", "the name of an installed Python package"),
            ("sys", "a Python builtin"),
            ("class", "a reserved keyword"),
            ("my_repo-2", "not a valid identifier"),
            ("2fast", "not a valid identifier"),
        ];
        for (slug, reason) in cases {
            let err = RepoSlug::parse(slug).unwrap_err();
            assert_eq!(err, SlugError::Reserved { slug: slug.to_owned(), reason });
            assert!(err.to_string().starts_with("Please choose a different slug; "), "{err}");
        }
        assert_eq!(RepoSlug::parse("no spaces").unwrap_err(), SlugError::Characters);
        assert!(RepoSlug::parse("test_git_repo").is_ok());
    }
}
