//! The event contract (ARCHITECTURE section 2): what the producer publishes and a worker consumes.
//!
//! `schemas/event.schema.json` is the published form of these types; `tests/event_schema.rs` proves the two agree.
//! Unknown fields are refused: a new field is a new `schema` version, so an old worker dead-letters what it cannot
//! understand instead of half-applying it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::repo::{Branch, CommitId, RemoteUrl, RepoName, RepoSlug};

/// The only contract version this build speaks.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub schema: SchemaVersion,
    /// Equals the JobResult id: the idempotency key.
    pub event_id: Uuid,
    pub kind: EventKind,
    pub repository: RepositoryRef,
    /// Per repository, strictly increasing with every definition change.
    pub version: Version,
    /// From a push webhook: lets a worker skip a fetch it does not need. Required, may be null.
    #[serde(deserialize_with = "Option::deserialize")]
    pub target_commit: Option<CommitId>,
    pub requested_at: DateTime<Utc>,
    pub requested_by: RequestedBy,
}

/// The definition as it was when the event was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryRef {
    pub id: Uuid,
    pub name: RepoName,
    /// Checked for shape only: a slug's reserved-name rules apply when it is created, not when it is read back.
    pub slug: SlugRef,
    pub remote_url: RemoteUrl,
    pub branch: Branch,
    pub provided_contents: Vec<String>,
    /// Required, may be null.
    #[serde(deserialize_with = "Option::deserialize")]
    pub secrets_group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Create,
    Update,
    Delete,
    Sync,
    DryRun,
    /// From the scheduler, for a repository with a `sync_interval`: the worker asks the remote for the branch's tip
    /// and, only when it differs from the live commit, runs the sync of that commit (a poll that finds nothing new
    /// makes no JobResult).
    Poll,
}

impl EventKind {
    /// The JobResult's `name` and `task_name` for an event of this kind about `repository_name` (a delete's
    /// JobResult is named after the repository, as Nautobot's).
    pub fn job_names(self, repository_name: &str) -> (String, &'static str) {
        use crate::job_result::{DELETE_TASK_NAME, DRY_RUN_JOB_NAME, DRY_RUN_TASK_NAME, SYNC_JOB_NAME, SYNC_TASK_NAME};
        match self {
            Self::Delete => (repository_name.to_owned(), DELETE_TASK_NAME),
            Self::DryRun => (DRY_RUN_JOB_NAME.to_owned(), DRY_RUN_TASK_NAME),
            Self::Create | Self::Update | Self::Sync | Self::Poll => (SYNC_JOB_NAME.to_owned(), SYNC_TASK_NAME),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Sync => "sync",
            Self::DryRun => "dry_run",
            Self::Poll => "poll",
        }
    }

    /// The AMQP routing key the event is published with.
    pub fn routing_key(self) -> String {
        format!("repo.{}", self.as_str())
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct SchemaVersion;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unsupported event schema {0}: this worker speaks schema {SCHEMA_VERSION}")]
pub struct SchemaVersionError(u32);

impl TryFrom<u32> for SchemaVersion {
    type Error = SchemaVersionError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        if value == SCHEMA_VERSION { Ok(Self) } else { Err(SchemaVersionError(value)) }
    }
}

impl From<SchemaVersion> for u32 {
    fn from(_: SchemaVersion) -> Self {
        SCHEMA_VERSION
    }
}

/// A definition version: starts at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Version(i64);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("version must be at least 1, got {0}")]
pub struct VersionError(i64);

impl Version {
    pub fn new(value: i64) -> Result<Self, VersionError> {
        if value >= 1 { Ok(Self(value)) } else { Err(VersionError(value)) }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Version {
    type Error = VersionError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Version> for i64 {
    fn from(value: Version) -> Self {
        value.0
    }
}

/// The shape of a stored slug: a Python identifier made of ASCII letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SlugRef(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid slug '{0}': must be an ASCII identifier of at most 255 characters")]
pub struct SlugRefError(String);

impl SlugRef {
    pub fn parse(value: impl Into<String>) -> Result<Self, SlugRefError> {
        let value = value.into();
        let mut chars = value.chars();
        let ok = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
            && value.len() <= crate::repo::MAX_FIELD_LEN;
        if ok { Ok(Self(value)) } else { Err(SlugRefError(value)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<RepoSlug> for SlugRef {
    fn from(value: RepoSlug) -> Self {
        Self(value.into())
    }
}

impl TryFrom<String> for SlugRef {
    type Error = SlugRefError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<SlugRef> for String {
    fn from(value: SlugRef) -> Self {
        value.0
    }
}

impl fmt::Display for SlugRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who asked: `cli`, `api:<user>`, `webhook:<host>` or `poll` (the scheduler, for a repository's `sync_interval`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestedBy(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid requested_by '{0}': must be cli, api:<user> or webhook:<host>")]
pub struct RequestedByError(String);

impl RequestedBy {
    pub fn cli() -> Self {
        Self("cli".to_owned())
    }

    pub fn parse(value: impl Into<String>) -> Result<Self, RequestedByError> {
        let value = value.into();
        let ok = value == "cli"
            || value == "poll"
            || ["api:", "webhook:"]
                .iter()
                .any(|prefix| value.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty() && rest.len() <= 200));
        if ok { Ok(Self(value)) } else { Err(RequestedByError(value)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestedBy {
    type Error = RequestedByError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<RequestedBy> for String {
    fn from(value: RequestedBy) -> Self {
        value.0
    }
}

/// Why a message could not be read as an [`Event`]; becomes the dead-letter reason.
#[derive(Debug, Error)]
#[error("malformed event: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl Event {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_by_forms() {
        assert!(RequestedBy::parse("cli").is_ok());
        assert!(RequestedBy::parse("poll").is_ok());
        assert!(RequestedBy::parse("api:alice").is_ok());
        assert!(RequestedBy::parse("webhook:github.com").is_ok());
        assert!(RequestedBy::parse("api:").is_err());
        assert!(RequestedBy::parse("someone").is_err());
    }

    #[test]
    fn kinds_route_by_name() {
        assert_eq!(EventKind::DryRun.routing_key(), "repo.dry_run");
    }
}
