//! The health gate: a latch that is open while the handler accepts messages and closed after a
//! pause-eligible failure, until a retry probe succeeds.
//!
//! The gate only records state and time; the pipeline acts on its transitions (pausing and
//! resuming partitions, starting probes). Time is passed in, so the gate is deterministic.

use std::time::Duration;

use tokio::time::Instant;

/// The gate's state and the time it has spent closed.
#[derive(Debug, Default)]
pub struct Gate {
    closed_since: Option<Instant>,
    closed_before: Duration,
    closures: u64,
}

impl Gate {
    pub fn is_open(&self) -> bool {
        self.closed_since.is_none()
    }

    /// Closes the gate; returns false when it was already closed.
    pub fn close(&mut self, now: Instant) -> bool {
        if self.closed_since.is_some() {
            return false;
        }
        self.closed_since = Some(now);
        self.closures += 1;
        true
    }

    /// Opens the gate; returns how long it was closed, or `None` when it was already open.
    pub fn open(&mut self, now: Instant) -> Option<Duration> {
        let since = self.closed_since.take()?;
        let closed_for = now.saturating_duration_since(since);
        self.closed_before += closed_for;
        Some(closed_for)
    }

    /// Total time spent closed, including the current closure.
    pub fn time_closed(&self, now: Instant) -> Duration {
        let current = self.closed_since.map(|since| now.saturating_duration_since(since)).unwrap_or_default();
        self.closed_before + current
    }

    /// How many times the gate has closed.
    pub fn closures(&self) -> u64 {
        self.closures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_starts_open() {
        assert!(Gate::default().is_open());
    }

    #[test]
    fn close_and_open_report_transitions() {
        let mut gate = Gate::default();
        let t0 = Instant::now();
        assert!(gate.close(t0));
        assert!(!gate.close(t0 + Duration::from_secs(1)));
        assert!(!gate.is_open());
        assert_eq!(gate.open(t0 + Duration::from_secs(3)), Some(Duration::from_secs(3)));
        assert_eq!(gate.open(t0 + Duration::from_secs(4)), None);
        assert!(gate.is_open());
    }

    #[test]
    fn time_closed_accumulates() {
        let mut gate = Gate::default();
        let t0 = Instant::now();
        gate.close(t0);
        gate.open(t0 + Duration::from_secs(2));
        gate.close(t0 + Duration::from_secs(10));
        assert_eq!(gate.time_closed(t0 + Duration::from_secs(11)), Duration::from_secs(3));
        assert_eq!(gate.closures(), 2);
    }
}
