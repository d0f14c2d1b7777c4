//! JobResult statuses and JobLogEntry levels (spec f.1, f.2), and the log lines the sync pipeline writes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sanitize::sanitize;

/// Celery state names, stored verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Received,
    Started,
    Success,
    Failure,
    Revoked,
    Rejected,
    Retry,
    Ignored,
}

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        Self::Pending,
        Self::Received,
        Self::Started,
        Self::Success,
        Self::Failure,
        Self::Revoked,
        Self::Rejected,
        Self::Retry,
        Self::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Received => "RECEIVED",
            Self::Started => "STARTED",
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Revoked => "REVOKED",
            Self::Rejected => "REJECTED",
            Self::Retry => "RETRY",
            Self::Ignored => "IGNORED",
        }
    }

    /// READY states: the result will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {what} '{value}'")]
pub struct UnknownName {
    what: &'static str,
    value: String,
}

impl FromStr for JobStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownName { what: "status", value: s.to_owned() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Success,
    Warning,
    Failure,
    Error,
    Critical,
}

impl LogLevel {
    pub const ALL: [LogLevel; 7] =
        [Self::Debug, Self::Info, Self::Success, Self::Warning, Self::Failure, Self::Error, Self::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Failure => "failure",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| UnknownName { what: "log level", value: s.to_owned() })
    }
}

/// Per-level counts kept on the JobResult (`error_log_count` counts failure, error and critical).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCounts {
    pub debug: i32,
    pub success: i32,
    pub info: i32,
    pub warning: i32,
    pub error: i32,
}

impl LogCounts {
    pub fn add(&mut self, level: LogLevel) {
        match level {
            LogLevel::Debug => self.debug += 1,
            LogLevel::Info => self.info += 1,
            LogLevel::Success => self.success += 1,
            LogLevel::Warning => self.warning += 1,
            LogLevel::Failure | LogLevel::Error | LogLevel::Critical => self.error += 1,
        }
    }
}

/// Groupings the git pipeline uses (spec f.3).
pub mod grouping {
    pub const INITIALIZATION: &str = "initialization";
    pub const RUN: &str = "run";
    pub const ENSURE: &str = "ensure_git_repository";
    pub const MAIN: &str = "main";
    pub const POST_RUN: &str = "post_run";
}

/// One JobLogEntry before it is stored. The message is sanitized when the entry is made, so no code path can store
/// an unsanitized one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub level: LogLevel,
    pub grouping: String,
    pub message: String,
    pub log_object: String,
}

impl LogEntry {
    pub fn new(level: LogLevel, grouping: &str, message: impl AsRef<str>) -> Self {
        let mut grouping = grouping.to_owned();
        truncate_chars(&mut grouping, 100);
        Self { level, grouping, message: sanitize(message.as_ref()), log_object: String::new() }
    }

    pub fn info(grouping: &str, message: impl AsRef<str>) -> Self {
        Self::new(LogLevel::Info, grouping, message)
    }

    pub fn warning(grouping: &str, message: impl AsRef<str>) -> Self {
        Self::new(LogLevel::Warning, grouping, message)
    }

    pub fn error(grouping: &str, message: impl AsRef<str>) -> Self {
        Self::new(LogLevel::Error, grouping, message)
    }

    pub fn success(grouping: &str, message: impl AsRef<str>) -> Self {
        Self::new(LogLevel::Success, grouping, message)
    }

    /// Names the object the entry is about (`str(obj)` in Nautobot), truncated to 200 characters.
    pub fn about(mut self, object: impl Into<String>) -> Self {
        self.log_object = object.into();
        truncate_chars(&mut self.log_object, 200);
        self
    }
}

fn truncate_chars(value: &mut String, max: usize) {
    if let Some((index, _)) = value.char_indices().nth(max) {
        value.truncate(index);
    }
}

/// What a JobResult is called, and its task name, per event kind (spec b.1, b.8).
pub const SYNC_JOB_NAME: &str = "Git Repository: Sync";
pub const SYNC_TASK_NAME: &str = "gitfleet.GitRepositorySync";
pub const DRY_RUN_JOB_NAME: &str = "Git Repository: Dry-Run";
pub const DRY_RUN_TASK_NAME: &str = "gitfleet.GitRepositoryDryRun";
pub const DELETE_TASK_NAME: &str = "gitfleet.GitRepositoryDelete";

/// Nautobot's duration text: `"{m} minutes, {s:.2f} seconds"`.
pub fn format_duration(duration: std::time::Duration) -> String {
    let total = duration.as_secs_f64();
    let minutes = (total / 60.0).floor();
    format!("{} minutes, {:.2} seconds", minutes as u64, total - minutes * 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_terminal_set() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
        }
        let terminal: Vec<_> = JobStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [JobStatus::Success, JobStatus::Failure, JobStatus::Revoked]);
    }

    #[test]
    fn error_count_includes_failure_and_critical() {
        let mut counts = LogCounts::default();
        for level in LogLevel::ALL {
            counts.add(level);
        }
        assert_eq!(counts, LogCounts { debug: 1, success: 1, info: 1, warning: 1, error: 3 });
    }

    #[test]
    fn entries_are_sanitized_and_truncated() {
        let entry = LogEntry::error("x".repeat(150).as_str(), "fetch https://bob:hunter2@host/r.git failed");
        assert_eq!(entry.grouping.len(), 100);
        assert_eq!(entry.message, "fetch https://(redacted)@host/r.git failed");
    }

    #[test]
    fn duration_text() {
        assert_eq!(format_duration(std::time::Duration::from_millis(61_500)), "1 minutes, 1.50 seconds");
    }
}
