//! Process logs: human-readable by default, JSON lines with `GITFLEET_LOG_FORMAT=json`; filter with `GITFLEET_LOG`
//! (the `RUST_LOG` syntax, default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("GITFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("GITFLEET_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second call (tests start several components in one process) keeps the first subscriber.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
