//! The I/O building blocks the producer and the worker share: typed settings, the PostgreSQL pool with its
//! embedded migrations and queries, the RabbitMQ topology and publisher, and telemetry set-up.
//!
//! `gitfleet-shared` stays pure; everything that talks to a server lives here or in the binaries.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod db;
pub mod metrics;
pub mod migrate;
pub mod retry;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;
