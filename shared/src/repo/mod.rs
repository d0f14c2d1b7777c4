//! The repository definition and its validation rules (spec section a).
//!
//! Each rule lives in a newtype that can only hold a valid value ("parse, don't validate"): a [`Branch`] never
//! starts with `-`, a [`RepoSlug`] is always importable as a Python package, and so on. The error messages are the
//! ones Nautobot shows, byte for byte where its tests assert them.

mod interval;
mod slug;
mod url;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::interval::{
    MAX_SYNC_INTERVAL_SECS, MIN_SYNC_INTERVAL_SECS, check_sync_interval, format_sync_interval, parse_sync_interval,
};
pub use self::slug::{RepoSlug, SlugError, slugify_dashes_to_underscores};
pub use self::url::{RemoteUrl, RemoteUrlError};

/// Maximum length of the varchar(255) fields (`name`, `slug`, `remote_url`, `branch`).
pub const MAX_FIELD_LEN: usize = 255;

/// A validation failure, addressed to one field of the definition or to the whole record (`field == None`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: Option<&'static str>,
    pub message: String,
    /// The value is taken by another live record (a unique name or slug), not invalid in itself.
    pub conflict: bool,
}

impl FieldError {
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self { field: Some(field), message: message.into(), conflict: false }
    }

    pub fn record(message: impl Into<String>) -> Self {
        Self { field: None, message: message.into(), conflict: false }
    }

    /// A field whose value another live record already has.
    pub fn taken(field: &'static str, message: impl Into<String>) -> Self {
        Self { conflict: true, ..Self::field(field, message) }
    }
}

/// The display name of a repository: required, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(value: impl Into<String>) -> Result<Self, FieldError> {
        let value = value.into();
        if value.trim().is_empty() {
            return Err(FieldError::field("name", "This field is required."));
        }
        if value.chars().count() > MAX_FIELD_LEN {
            return Err(FieldError::field(
                "name",
                format!("Ensure this field has no more than {MAX_FIELD_LEN} characters."),
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepoName {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<RepoName> for String {
    fn from(value: RepoName) -> Self {
        value.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a git ref string was refused (spec a.3 step 2, b.3 step 1). The texts are asserted by Nautobot's tests.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RefError {
    #[error("{what} must be a non-empty string")]
    Empty { what: &'static str },
    #[error("Invalid {what} '{value}': must not contain whitespace")]
    Whitespace { what: &'static str, value: String },
    #[error("Invalid {what} '{value}': must not start with '-'")]
    LeadingDash { what: &'static str, value: String },
    #[error("Invalid {what} '{value}': must be at most {MAX_FIELD_LEN} characters")]
    TooLong { what: &'static str, value: String },
}

/// The ref rules shared by `branch` and a pinned commit: non-empty, no whitespace anywhere, no leading `-` (so the
/// value can never be read as a git option).
pub fn check_ref(what: &'static str, value: &str) -> Result<(), RefError> {
    if value.is_empty() {
        return Err(RefError::Empty { what });
    }
    if value.chars().any(char::is_whitespace) {
        return Err(RefError::Whitespace { what, value: value.to_owned() });
    }
    if value.starts_with('-') {
        return Err(RefError::LeadingDash { what, value: value.to_owned() });
    }
    if value.len() > MAX_FIELD_LEN {
        return Err(RefError::TooLong { what, value: value.to_owned() });
    }
    Ok(())
}

/// What `branch` holds: a branch name, a tag name or an (abbreviated) commit hash. Which one is decided against the
/// remote at sync time (spec b.4); this type only guarantees the ref rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Branch(String);

impl Branch {
    pub fn parse(value: impl Into<String>) -> Result<Self, RefError> {
        let value = value.into();
        check_ref("branch", &value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// At least 4 characters, all hex digits: may name a commit (spec b.4 step 5). `a`, `ab` and `abc` never do.
    pub fn may_be_commit(&self) -> bool {
        self.0.len() >= 4 && self.0.chars().all(|c| c.is_ascii_hexdigit())
    }
}

impl Default for Branch {
    fn default() -> Self {
        Self("main".to_owned())
    }
}

impl TryFrom<String> for Branch {
    type Error = RefError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Branch> for String {
    fn from(value: Branch) -> Self {
        value.0
    }
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit id as git prints it: 40 lowercase hex digits (SHA-1) or 64 (SHA-256 repositories).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitId(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Invalid commit id '{0}': must be 40 or 64 lowercase hexadecimal characters")]
pub struct CommitIdError(pub String);

impl CommitId {
    pub fn parse(value: impl Into<String>) -> Result<Self, CommitIdError> {
        let value = value.into();
        let hex = value.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if hex && (value.len() == 40 || value.len() == 64) { Ok(Self(value)) } else { Err(CommitIdError(value)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CommitId {
    type Error = CommitIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<CommitId> for String {
    fn from(value: CommitId) -> Self {
        value.0
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data type a repository can provide (spec c.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentType {
    pub identifier: &'static str,
    pub name: &'static str,
    pub weight: u32,
}

/// The content types Nautobot registers for Git repositories, in refresh order (weight, then name).
pub const BUILTIN_CONTENT_TYPES: &[ContentType] = &[
    ContentType { identifier: "extras.configcontextschema", name: "config context schemas", weight: 100 },
    ContentType { identifier: "extras.configcontext", name: "config contexts", weight: 200 },
    ContentType { identifier: "extras.job", name: "jobs", weight: 300 },
    ContentType { identifier: "extras.exporttemplate", name: "export templates", weight: 400 },
    ContentType { identifier: "extras.graphqlquery", name: "graphql queries", weight: 400 },
    ContentType { identifier: "data_validation.data_compliance_rule", name: "data compliance rules", weight: 1000 },
];

/// Checks `provided_contents` against the known identifiers, as the REST serializer's choice field does, and drops
/// duplicates while keeping the given order.
pub fn parse_provided_contents<'a>(
    values: impl IntoIterator<Item = &'a str>,
    known: &[ContentType],
) -> Result<Vec<String>, FieldError> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        if !known.iter().any(|c| c.identifier == value) {
            return Err(FieldError::field("provided_contents", format!("\"{value}\" is not a valid choice.")));
        }
        if !out.iter().any(|v| v == value) {
            out.push(value.to_owned());
        }
    }
    Ok(out)
}

/// Another live definition, as far as the overlap rule needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct OtherRepository<'a> {
    pub remote_url: &'a str,
    pub provided_contents: &'a [String],
}

/// The overlap rule (spec a.3 step 7): no two repositories with exactly the same `remote_url` (string equality, no
/// normalization) may provide a common content type. A repository that provides nothing never conflicts.
pub fn check_overlap<'a>(
    remote_url: &str,
    provided_contents: &[String],
    others: impl IntoIterator<Item = OtherRepository<'a>>,
) -> Result<(), FieldError> {
    if provided_contents.is_empty() {
        return Ok(());
    }
    let clash = others.into_iter().any(|other| {
        other.remote_url == remote_url && other.provided_contents.iter().any(|c| provided_contents.contains(c))
    });
    if clash {
        Err(FieldError::record(format!(
            "Another Git repository already configured for remote URL {remote_url} provides contents overlapping \
             with this repository."
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_rules_have_nautobots_messages() {
        assert_eq!(Branch::parse("").unwrap_err().to_string(), "branch must be a non-empty string");
        for bad in [" main", "main\n", "ma in", "\tmain"] {
            let msg = Branch::parse(bad).unwrap_err().to_string();
            assert_eq!(msg, format!("Invalid branch '{bad}': must not contain whitespace"));
        }
        for bad in ["--orphan", "-h", "--upload-pack=evil"] {
            let msg = Branch::parse(bad).unwrap_err().to_string();
            assert_eq!(msg, format!("Invalid branch '{bad}': must not start with '-'"));
        }
        for good in ["main", "valid-files", "feature/x", "a", "0123abcd"] {
            assert!(Branch::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn short_hex_is_never_a_commit() {
        for (value, commit) in [("a", false), ("ab", false), ("abc", false), ("abcd", true), ("abcg", false)] {
            assert_eq!(Branch::parse(value).unwrap().may_be_commit(), commit, "{value}");
        }
        assert!(Branch::parse("DEADBEEF").unwrap().may_be_commit());
    }

    #[test]
    fn commit_ids_are_full_lowercase_hex() {
        assert!(CommitId::parse("a".repeat(40)).is_ok());
        assert!(CommitId::parse("a".repeat(64)).is_ok());
        assert!(CommitId::parse("A".repeat(40)).is_err());
        assert!(CommitId::parse("a".repeat(39)).is_err());
    }

    #[test]
    fn overlap_rule_matches_nautobot() {
        let job = vec!["extras.job".to_owned()];
        let ctx = vec!["extras.configcontext".to_owned()];
        let url = "http://localhost/duplicates.git";
        let existing = [OtherRepository { remote_url: url, provided_contents: &job }];
        assert!(check_overlap(url, &ctx, existing).is_ok(), "disjoint contents on one URL are allowed");
        let err = check_overlap(url, &job, existing).unwrap_err();
        assert_eq!(
            err.message,
            "Another Git repository already configured for remote URL http://localhost/duplicates.git provides \
             contents overlapping with this repository."
        );
        assert!(check_overlap("http://localhost/duplicates", &job, existing).is_ok(), "no URL normalization");
        assert!(check_overlap(url, &[], existing).is_ok(), "empty provided_contents never conflicts");
    }

    #[test]
    fn provided_contents_are_checked_and_deduplicated() {
        let parsed = parse_provided_contents(["extras.job", "extras.job"], BUILTIN_CONTENT_TYPES).unwrap();
        assert_eq!(parsed, vec!["extras.job".to_owned()]);
        let err = parse_provided_contents(["extras.nope"], BUILTIN_CONTENT_TYPES).unwrap_err();
        assert_eq!(err.message, "\"extras.nope\" is not a valid choice.");
    }
}
