//! Exponential backoff with full jitter for retry probes.
//!
//! The delay before attempt `n` (1-based) is drawn uniformly from `[0, min(max, base * 2^(n-1))]`.
//! Full jitter spreads the retries of many sidecars that lost the same downstream at the same
//! moment, so they do not hit it again in lockstep. The random source is seedable so that tests
//! can reproduce a sequence.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// Creates a backoff whose first delay is at most `base` and whose delays never exceed
    /// `max`. `max` below `base` is raised to `base`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(base, max, SmallRng::from_os_rng())
    }

    /// Creates a backoff whose jitter sequence is fixed by `seed`.
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff::with_rng(base, max, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(base: Duration, max: Duration, rng: SmallRng) -> Backoff {
        Backoff { base, max: max.max(base), rng }
    }

    /// The upper bound of the delay before `attempt` (1-based): `min(max, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        self.base.saturating_mul(1u32 << exponent.min(31)).min(self.max)
    }

    /// Draws the delay before `attempt` (1-based), uniformly from zero to its ceiling.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_until_max() {
        let backoff = Backoff::new(ms(500), ms(10_000));
        let ceilings: Vec<u128> = (1..=8).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn ceiling_survives_huge_attempts() {
        let backoff = Backoff::new(ms(500), ms(10_000));
        assert_eq!(backoff.ceiling(u32::MAX), ms(10_000));
    }

    #[test]
    fn delays_stay_within_ceiling() {
        let mut backoff = Backoff::with_seed(ms(100), ms(3_000), 7);
        for attempt in 1..=50 {
            let delay = backoff.delay(attempt);
            assert!(delay <= backoff.ceiling(attempt), "attempt {attempt}: {delay:?}");
        }
    }

    #[test]
    fn delays_spread_over_whole_range() {
        let mut backoff = Backoff::with_seed(ms(1_000), ms(1_000), 42);
        let delays: Vec<Duration> = (0..1_000).map(|_| backoff.delay(1)).collect();
        let below_quarter = delays.iter().filter(|d| **d < ms(250)).count();
        let above_three_quarters = delays.iter().filter(|d| **d > ms(750)).count();
        assert!(below_quarter > 150, "{below_quarter}");
        assert!(above_three_quarters > 150, "{above_three_quarters}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Backoff::with_seed(ms(500), ms(10_000), 9);
        let mut b = Backoff::with_seed(ms(500), ms(10_000), 9);
        for attempt in 1..=10 {
            assert_eq!(a.delay(attempt), b.delay(attempt));
        }
    }
}
