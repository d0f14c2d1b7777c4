//! Queries over gitfleet's tables. Every function takes a `GenericClient`, so the caller decides whether it runs
//! inside a transaction (the producer's one-transaction write, the worker's fenced commit) or on its own.

pub mod dead_letter;
pub mod gauges;
pub mod housekeeping;
pub mod inventory;
pub mod job_result;
pub mod loaded;
pub mod outbox;
pub mod records;
pub mod repository;
pub mod token;
pub mod ui_session;
pub mod webhook;

pub use tokio_postgres::GenericClient;
