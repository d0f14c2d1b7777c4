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
pub mod git_tree;
pub mod git_unpack;
pub mod job;
pub mod known_hosts;
pub mod lock;
pub mod metrics;
pub mod reconcile;
pub use gitfleet_infra::secrets;
pub mod storage;

pub use config::WorkerSettings;
pub use consumer::{Parts, run, run_with};
/// The allocator the worker's binaries run with (`#[global_allocator]`): mimalloc. A large sync allocates and frees
/// small strings and JSON values by the million on several threads at once; with it, the first sync of 100,000
/// files took 7.4 to 8.8 s instead of 11 to 12.5 s with glibc's allocator (BENCHMARKS.md, "Large repositories").
/// The worker runs it with options that give memory back at once (see [`cli::main`]).
pub use mimalloc::MiMalloc as Allocator;
