//! The one scheduler of the hosted-PBX loops (history syncs and active-call pollers of both
//! adapters): run a job now, then every `every` plus a random jitter; after a failure the
//! next try comes after a backoff from the project's one retry policy
//! ([`crate::retry::exponential`], `retry_min` doubling up to `retry_max`, with its own
//! jitter), reset by the next success. A failing streak is logged once when it starts
//! (then at debug level) and once when it ends. Stops when `cancel` fires, also mid-job.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Timing of one loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Time between runs after a success.
    pub every: Duration,
    /// Largest random extra added to `every` (spreads runs of many daemons).
    pub jitter: Duration,
    /// First delay after a failure.
    pub retry_min: Duration,
    /// Largest delay after failures.
    pub retry_max: Duration,
}

impl Schedule {
    /// A history sync: every `every` (jitter up to a tenth of it, at most 30 s); after a
    /// failure, `retry_min` doubling up to `every`.
    pub fn sync(every: Duration, retry_min: Duration) -> Self {
        Schedule {
            every,
            jitter: (every / 10).min(Duration::from_secs(30)),
            retry_min: retry_min.min(every),
            retry_max: every,
        }
    }

    /// A poller: every `every` (no jitter: live calls should be on time); after a failure,
    /// `every` doubling up to a minute (or `every` when that is longer).
    pub fn poll(every: Duration) -> Self {
        Schedule {
            every,
            jitter: Duration::ZERO,
            retry_min: every,
            retry_max: every.max(Duration::from_secs(60)),
        }
    }

    /// The delay after a success: `every` plus up to `jitter`.
    pub fn next_after_success(&self) -> Duration {
        let extra = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            let ms = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(rand::rng().random_range(0..=ms))
        };
        self.every.saturating_add(extra)
    }
}

/// Runs `job` on `schedule` until `cancel` (see the module doc). `name` names the loop in
/// log lines (e.g. `Kerio history sync`).
pub async fn run<F, Fut, E>(name: &str, schedule: Schedule, cancel: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let new_backoff = || {
        crate::retry::exponential(
            schedule.retry_min,
            schedule.retry_max.max(schedule.retry_min),
        )
        .build()
    };
    let mut backoff = new_backoff();
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = job() => r,
        };
        let delay = match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("{name}: works again after {failures} failures");
                    backoff = new_backoff();
                }
                failures = 0;
                schedule.next_after_success()
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let d = backoff.next().unwrap_or(schedule.retry_max);
                if failures == 1 {
                    tracing::warn!("{name} failed: {e}; next try in {} ms", d.as_millis());
                } else {
                    tracing::debug!(
                        "{name} failed again ({failures}): {e}; next try in {} ms",
                        d.as_millis()
                    );
                }
                d
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn sync_schedule_backs_off_then_resets() {
        let s = Schedule {
            every: Duration::from_secs(100),
            jitter: Duration::ZERO,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(100),
        };
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let n = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let (r, c) = (runs.clone(), n.clone());
        let task = tokio::spawn(run("test", s, cancel.clone(), move || {
            let (r, c) = (r.clone(), c.clone());
            async move {
                r.lock().unwrap().push(tokio::time::Instant::now());
                // Fails three times, then works.
                if c.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err("down")
                } else {
                    Ok(())
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(250)).await;
        cancel.cancel();
        task.await.unwrap();
        let runs = runs.lock().unwrap();
        let gaps: Vec<u64> = runs.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        // Backoff 1..2 s, 2..4 s, 4..8 s, then the interval.
        assert!(gaps.len() >= 4, "{gaps:?}");
        assert!((1..=2).contains(&gaps[0]), "{gaps:?}");
        assert!((2..=4).contains(&gaps[1]), "{gaps:?}");
        assert!((4..=8).contains(&gaps[2]), "{gaps:?}");
        assert_eq!(gaps[3], 100, "{gaps:?}");
    }
}
