//! gitfleet producer: the front door. It validates repository definitions (spec a.2, a.3), records each change
//! together with a PENDING JobResult and an outbox row in one transaction, and relays the outbox to RabbitMQ with
//! publisher confirms.
#![forbid(unsafe_code)]

pub mod api;
pub mod apply;
pub mod cli;
pub mod commands;
pub mod dead_letters;
pub mod metrics;
pub mod records;
pub mod relay;
pub mod scheduler;
pub mod tokens;
pub mod ui;
