//! gitfleet's pure core: the event contract, the repository definition rules, JobResult vocabulary and the
//! sanitizer. Nothing in this crate does I/O or needs an async runtime, so every rule here is unit-tested in
//! isolation and shared verbatim by the producer, the worker and `worker check`.
#![forbid(unsafe_code)]

pub mod event;
pub mod graphql;
pub mod inventory;
pub mod job_result;
pub mod json_text;
pub mod loaders;
pub mod py;
pub mod python;
pub mod repo;
pub mod sanitize;
pub mod tree;
pub mod webhook;
pub mod yaml;

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`), or an empty string.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
