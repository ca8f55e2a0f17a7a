//! Limit on failed logins: at most [`MAX_FAILURES`] failures per key (client IP, username)
//! in a sliding window of [`WINDOW`]; past that, logins for the key are refused with the
//! seconds to wait (HTTP 429 `Retry-After`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per key and window.
pub const MAX_FAILURES: usize = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Failure counts per key. Memory is bounded: stale keys are pruned on every use.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// `Some(seconds)` to wait when any key is over the limit at `now`.
    pub fn blocked(&self, keys: &[String], now: Instant) -> Option<u64> {
        let mut map = self.failures.lock().ok()?;
        map.retain(|_, q| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                q.pop_front();
            }
            !q.is_empty()
        });
        keys.iter()
            .filter_map(|k| map.get(k))
            .filter(|q| q.len() >= MAX_FAILURES)
            .filter_map(|q| q.front())
            .map(|first| (WINDOW - now.duration_since(*first)).as_secs().max(1))
            .max()
    }

    /// Records one failure for each key.
    pub fn failed(&self, keys: &[String], now: Instant) {
        if let Ok(mut map) = self.failures.lock() {
            for k in keys {
                map.entry(k.clone()).or_default().push_back(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_block_for_the_rest_of_the_window() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let keys = vec!["ip:1".to_string(), "user:a".to_string()];
        for i in 0..5 {
            assert_eq!(l.blocked(&keys, t0 + Duration::from_secs(i)), None);
            l.failed(&keys, t0 + Duration::from_secs(i));
        }
        let wait = l.blocked(&keys, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, 50);
        assert_eq!(l.blocked(&["user:b".to_string()], t0), None);
        assert_eq!(l.blocked(&keys, t0 + WINDOW + Duration::from_secs(5)), None);
    }
}
