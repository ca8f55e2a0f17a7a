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

/// The delays of one loop: after a success `every` plus jitter, after failures the backoff
/// of the retry policy, restarted by the next success.
pub struct Delays {
    schedule: Schedule,
    backoff: backon::ExponentialBackoff,
    failures: u32,
}

impl Delays {
    /// Delays for `schedule`, no failure yet.
    pub fn new(schedule: Schedule) -> Self {
        Delays {
            schedule,
            backoff: Self::backoff(&schedule),
            failures: 0,
        }
    }

    fn backoff(s: &Schedule) -> backon::ExponentialBackoff {
        crate::retry::exponential(s.retry_min, s.retry_max.max(s.retry_min)).build()
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay after a run that succeeded (`ok`) or failed.
    pub fn after(&mut self, ok: bool) -> Duration {
        if ok {
            if self.failures > 0 {
                self.backoff = Self::backoff(&self.schedule);
            }
            self.failures = 0;
            self.schedule.next_after_success()
        } else {
            self.failures = self.failures.saturating_add(1);
            self.backoff.next().unwrap_or(self.schedule.retry_max)
        }
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
    let mut delays = Delays::new(schedule);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = job() => r,
        };
        let delay = match result {
            Ok(()) => {
                let failures = delays.failures();
                if failures > 0 {
                    tracing::info!("{name}: works again after {failures} failures");
                }
                delays.after(true)
            }
            Err(e) => {
                let d = delays.after(false);
                let failures = delays.failures();
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

    #[test]
    fn sync_schedule_backs_off_then_resets() {
        let s = Schedule {
            every: Duration::from_secs(100),
            jitter: Duration::from_secs(5),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(100),
        };
        let mut d = Delays::new(s);
        let secs = |d: Duration| d.as_secs_f64();
        // Backoff 1..2 s, 2..4 s, 4..8 s (jitter of the retry policy), then the interval.
        let a = secs(d.after(false));
        let b = secs(d.after(false));
        let c = secs(d.after(false));
        assert!((1.0..=2.0).contains(&a), "{a}");
        assert!((2.0..=4.0).contains(&b), "{b}");
        assert!((4.0..=8.0).contains(&c), "{c}");
        assert_eq!(d.failures(), 3);
        let ok = secs(d.after(true));
        assert!((100.0..=105.0).contains(&ok), "{ok}");
        assert_eq!(d.failures(), 0);
        // A new streak starts from the first delay again.
        let a = secs(d.after(false));
        assert!((1.0..=2.0).contains(&a), "{a}");
        // Long streaks stay at the cap (with the policy's jitter).
        for _ in 0..50 {
            assert!(d.after(false) <= Duration::from_secs(200));
        }
    }

    #[test]
    fn sync_schedule_presets() {
        let s = Schedule::sync(Duration::from_secs(300), Duration::from_secs(30));
        assert_eq!(
            (s.retry_min, s.retry_max),
            (Duration::from_secs(30), Duration::from_secs(300))
        );
        assert_eq!(s.jitter, Duration::from_secs(30));
        let p = Schedule::poll(Duration::from_secs(2));
        assert_eq!(p.jitter, Duration::ZERO);
        assert_eq!(p.retry_max, Duration::from_secs(60));
    }
}
