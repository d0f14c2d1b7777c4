//! Integration tests against real PostgreSQL, RabbitMQ and git remotes (`make services` starts them).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod api;
mod apply;
mod browser;
mod conformance;
mod contract;
mod credentials;
mod data_types;
mod delete;
mod deploy;
mod endings;
mod faults;
mod fleet;
mod hooks;
mod housekeeping;
mod incremental;
mod nautobot_api;
mod observability;
mod polling;
#[cfg(feature = "shared-fixtures")]
mod shared_fixtures;
mod shutdown;
mod storage;
mod support;
mod sync;
mod transport;
mod ui;
mod validation;
