//! Retry policies, with backon.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Waiting for a service to come up: exponential from 100 ms to 2 s between tries, with jitter, for `wait` in all.
pub fn until_ready(wait: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(wait))
        .with_max_times(usize::MAX)
        .with_jitter()
}
