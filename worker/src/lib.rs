//! gitfleet worker: stateless and run in any number. It consumes repository events, takes the fleet-wide
//! per-repository lock, fetches into a bare mirror with git2, and records the outcome as a JobResult with its log
//! entries. Start it with [`consumer::run`], which takes its shutdown trigger so tests can drive it.
#![deny(unsafe_code)]

pub mod check;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod fleet;
pub mod git;
pub mod git_cache;
pub mod git_protocol;
pub mod job;
pub mod known_hosts;
pub mod lock;
pub mod metrics;
pub mod reconcile;
pub use gitfleet_infra::secrets;
pub mod storage;

pub use config::WorkerSettings;
pub use consumer::{Parts, run, run_with};
