//! The one retry policy of the daemon: exponential backoff with jitter (`backon`).
//!
//! Every loop that waits before trying again (the ARI events connection and its resync, the
//! AMI connection, the call writer, the supervisor's restarts, the Kerio and Kavkom clients)
//! builds its delays here, each with its own first and largest delay. Domain-agnostic: imports nothing from the crate.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Exponential backoff from `min`, doubling, capped at `max`, with jitter (each delay gets a
/// random extra of up to as much again, so a delay is at most `2 * max`), never giving up.
///
/// Use the builder as a `backon` policy (`.retry(exponential(min, max))`), or call
/// `.build()` (`backon::BackoffBuilder`) for an endless iterator of delays. A caller that must
/// give up after some attempts adds `.with_max_times(n)`.
pub fn exponential(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn delays_double_up_to_max_with_jitter_and_never_end() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let delays: Vec<Duration> = exponential(min, max).build().take(50).collect();
        assert_eq!(delays.len(), 50);
        for (n, d) in delays.iter().enumerate() {
            let base = (min * 2u32.pow(n.min(10) as u32)).min(max);
            assert!(*d >= base && *d <= base * 2, "delay {n}: {d:?} vs {base:?}");
        }
    }
}
