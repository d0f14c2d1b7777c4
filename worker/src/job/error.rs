//! How a stage of a job can fail: transiently (tried again, then the event waits in a retry queue) or for good
//! (the job ends FAILURE with an exception type, a message and the grouping its error line goes under).

use std::borrow::Cow;

use gitfleet_shared::job_result::grouping;
use thiserror::Error;

use crate::lock::LockError;

/// Faults that may pass (database or broker trouble, a remote or a store out of reach).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransientError {
    #[error("database: {0}")]
    Db(#[source] tokio_postgres::Error),
    #[error("database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("git worker thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A network fault reaching the remote (connection refused or reset, a 5xx answer).
    #[error("fetching from the remote: {0}")]
    Git(String),
    /// Storage unreachable or answering 5xx.
    #[error("storage: {0}")]
    Storage(String),
    /// The mirror could not be read while storing its files (local I/O).
    #[error("reading the provided files from the mirror: {0}")]
    Mirror(#[source] crate::git::GitError),
}

/// A failure that ends the job: what the JobResult records and the error line says.
#[derive(Debug)]
pub struct Failure {
    /// The exception class Nautobot would name (`BranchDoesNotExist`, `IntegrityError`, ...).
    pub exc_type: Cow<'static, str>,
    /// The message of the error line and of the JobResult's `result`.
    pub message: String,
    /// The grouping of the error line.
    pub grouping: &'static str,
    /// Whether the job had begun changing records when it failed ("Changes to database records have been
    /// reverted." follows the error line).
    pub reverted: bool,
    /// Lines written after the error (and the reverted line), before the JobResult ends.
    pub epilogue: Vec<gitfleet_shared::job_result::LogEntry>,
}

impl Failure {
    pub fn new(exc_type: impl Into<Cow<'static, str>>, message: impl Into<String>, grouping: &'static str) -> Self {
        Self { exc_type: exc_type.into(), message: message.into(), grouping, reverted: false, epilogue: Vec::new() }
    }

    /// The job had begun changing records: they were rolled back.
    pub fn reverted(mut self) -> Self {
        self.reverted = true;
        self
    }
}

/// Why a stage stopped.
#[derive(Debug, Error)]
pub enum StepError {
    /// Tried again inside the delivery, then through the retry schedule.
    #[error(transparent)]
    Transient(#[from] TransientError),
    /// The job ends FAILURE.
    #[error("{}: {}", .0.exc_type, .0.message)]
    Failed(Failure),
}

/// A stage's result.
pub type Step<T> = Result<T, StepError>;

impl StepError {
    /// A refusal by PostgreSQL while saving `what`, or a transient database fault.
    pub fn db(what: &str, err: tokio_postgres::Error) -> Self {
        if is_permanent(&err) {
            let message = format!("The database refused {what}: {}", server_message(&err));
            Self::Failed(Failure::new(refusal_type(&err), message, grouping::MAIN).reverted())
        } else {
            Self::Transient(TransientError::Db(err))
        }
    }
}

impl From<tokio_postgres::Error> for StepError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::db("records", err)
    }
}

impl From<deadpool_postgres::PoolError> for StepError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Transient(err.into())
    }
}

impl From<tokio::task::JoinError> for StepError {
    /// A panic on a blocking thread (a loader, a git read) fails the job as a panic in the job itself does; a
    /// cancelled thread is transient.
    fn from(err: tokio::task::JoinError) -> Self {
        if err.is_panic() {
            return panicked(&*err.into_panic());
        }
        Self::Transient(err.into())
    }
}

/// A panic inside a job (a loader's or an extension's bug): the job fails with "worker panicked: ..." (sanitized
/// when it is recorded), its transaction was rolled back when the panic dropped it, and the worker goes on.
pub fn panicked(payload: &(dyn std::any::Any + Send)) -> StepError {
    let message = format!("worker panicked: {}", gitfleet_shared::panic_message(payload));
    tracing::error!(%message, "a job panicked");
    StepError::Failed(Failure::new("WorkerPanic", message, grouping::MAIN).reverted())
}

impl From<LockError> for StepError {
    fn from(err: LockError) -> Self {
        Self::Transient(err.into())
    }
}

impl From<tokio_postgres::Error> for TransientError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(err)
    }
}

/// Whether PostgreSQL refused the statement itself (retrying sends the same data and is refused the same way):
/// SQLSTATE classes of data, integrity, syntax and limit errors. Connection, serialization and resource errors
/// (08, 40, 53, 57) stay transient.
pub fn is_permanent(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|state| matches!(&state.code()[..2], "0A" | "21" | "22" | "23" | "42" | "44" | "54"))
}

/// The server's own words for a refusal: message, detail and column, without the driver's "db error" prefix.
fn server_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_owned();
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" ({detail})"));
            }
            if let Some(column) = db.column() {
                message.push_str(&format!(" [column {column}]"));
            }
            message
        }
        None => err.to_string(),
    }
}

/// Django's exception class for a PostgreSQL error class.
fn refusal_type(err: &tokio_postgres::Error) -> &'static str {
    match err.code().map(|c| &c.code()[..2]) {
        Some("22") => "DataError",
        Some("23") => "IntegrityError",
        Some("42") => "ProgrammingError",
        _ => "DatabaseError",
    }
}
