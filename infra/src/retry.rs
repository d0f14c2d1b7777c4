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

/// Transient faults inside one attempt: `tries` in all, exponential from 200 ms to 2 s between them, with jitter.
pub fn transient(tries: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(tries.saturating_sub(1))
        .with_jitter()
}

/// Runs `session` until it ends cleanly or `shutdown` fires; after each failure (a lost broker connection, say) it
/// waits, from `first` doubling up to 5 s, and runs it again.
pub async fn reconnecting<F, Fut>(
    what: &str,
    first: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut backoff = first;
    while !shutdown.is_cancelled() {
        match session().await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "{what} interrupted; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
