//! gitfleet's pure core: the event contract, the repository definition rules, JobResult vocabulary and the
//! sanitizer. Nothing in this crate does I/O or needs an async runtime, so every rule here is unit-tested in
//! isolation and shared verbatim by the producer, the worker and `worker check`.
#![forbid(unsafe_code)]

pub mod event;
pub mod graphql;
pub mod inventory;
pub mod job_result;
pub mod loaders;
pub mod python;
pub mod repo;
pub mod sanitize;
pub mod tree;
pub mod yaml;
