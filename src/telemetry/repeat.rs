//! Rate limiting for log lines that an outage repeats many times a second, such as "all
//! brokers are down": the first line of a kind is written, then at most one per interval, which
//! carries how many were left out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tracks, per kind of line, when it was last written and how many were left out since.
#[derive(Debug)]
pub struct RepeatLimiter {
    interval: Duration,
    kinds: HashMap<String, (Instant, u64)>,
}

impl RepeatLimiter {
    pub fn new(interval: Duration) -> RepeatLimiter {
        RepeatLimiter { interval, kinds: HashMap::new() }
    }

    /// Returns `Some(left_out)` when a line of this kind should be written now, with the number
    /// of lines of the kind left out since the last one written; `None` when it should be left
    /// out.
    pub fn admit(&mut self, kind: &str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((last, left_out)) if now.saturating_duration_since(*last) < self.interval => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                *last = now;
                Some(std::mem::take(left_out))
            }
            None => {
                self.kinds.insert(kind.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_interval_are_counted() {
        let mut limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.admit("down", t0), Some(0));
        assert_eq!(limiter.admit("down", t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit("down", t0 + Duration::from_secs(2)), None);
        assert_eq!(limiter.admit("other", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(limiter.admit("down", t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(limiter.admit("down", t0 + Duration::from_secs(12)), None);
    }
}
