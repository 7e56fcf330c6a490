//! Per-partition commit tracker: the record of fetched offsets, which of them are finished, and
//! the next offset that may be committed.
//!
//! Invariants:
//! - The committable offset is the last finished offset of the contiguous finished prefix of
//!   the fetched offsets, plus one. It never passes a fetched offset that is not finished.
//! - Only offsets actually fetched are tracked, in fetch order. Compaction and transaction
//!   markers leave gaps, so the tracker never assumes that `offset + 1` was fetched.
//! - The committable offset never decreases, and [`CommitTracker::commit_candidate`] never
//!   returns an offset at or below the last committed one.
//!
//! Cost: `track` is O(1), `finish` is O(log n) in the number of pending offsets, and the
//! contiguous prefix is popped in amortised O(1) per offset.

use std::collections::VecDeque;

/// A misuse of the tracker; the pipeline logs it and keeps the message uncommitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("offset {offset} was fetched after offset {last}; offsets must increase within one assignment")]
    NotIncreasing { offset: i64, last: i64 },
    #[error("offset {0} is not pending in this partition")]
    NotPending(i64),
}

/// The commit state of one partition.
#[derive(Debug, Default, Clone)]
pub struct CommitTracker {
    /// Fetched offsets not yet popped from the contiguous finished prefix, in fetch order,
    /// with whether each is finished.
    pending: VecDeque<(i64, bool)>,
    last_fetched: Option<i64>,
    /// Next offset to commit: the last popped finished offset plus one.
    committable: Option<i64>,
    committed: Option<i64>,
}

impl CommitTracker {
    pub fn new() -> CommitTracker {
        CommitTracker::default()
    }

    /// Records a fetched offset; it must be above every offset tracked so far.
    pub fn track(&mut self, offset: i64) -> Result<(), TrackError> {
        if let Some(last) = self.last_fetched
            && offset <= last
        {
            return Err(TrackError::NotIncreasing { offset, last });
        }
        self.last_fetched = Some(offset);
        self.pending.push_back((offset, false));
        Ok(())
    }

    /// Marks a tracked offset as finished (succeeded or classified non-pausing) and advances
    /// the committable offset over the contiguous finished prefix.
    pub fn finish(&mut self, offset: i64) -> Result<(), TrackError> {
        let index = self
            .pending
            .binary_search_by_key(&offset, |(pending, _)| *pending)
            .map_err(|_| TrackError::NotPending(offset))?;
        self.pending[index].1 = true;

        while let Some(&(front, true)) = self.pending.front() {
            self.pending.pop_front();
            self.committable = Some(front + 1);
        }
        Ok(())
    }

    /// Returns the next offset that may be committed, if any offset has finished.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Returns the committable offset when it is above the last committed one.
    pub fn commit_candidate(&self) -> Option<i64> {
        match (self.committable, self.committed) {
            (Some(next), Some(done)) if next <= done => None,
            (next, _) => next,
        }
    }

    /// Records that `offset` was committed; an older offset than the last recorded is ignored.
    pub fn mark_committed(&mut self, offset: i64) {
        self.committed = Some(self.committed.map_or(offset, |done| done.max(offset)));
    }

    pub fn committed(&self) -> Option<i64> {
        self.committed
    }

    /// Fetched offsets that are not yet covered by the committable offset.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_completion_waits_for_slow_offset() {
        let mut tracker = CommitTracker::new();
        for offset in 1..=3 {
            tracker.track(offset).unwrap();
        }
        tracker.finish(1).unwrap();
        tracker.finish(3).unwrap();
        assert_eq!(tracker.committable(), Some(2));

        tracker.finish(2).unwrap();
        assert_eq!(tracker.committable(), Some(4));
    }

    #[test]
    fn gapped_offsets_still_advance() {
        let mut tracker = CommitTracker::new();
        for offset in [5, 7, 10, 11, 20] {
            tracker.track(offset).unwrap();
        }
        tracker.finish(7).unwrap();
        assert_eq!(tracker.committable(), None);
        tracker.finish(5).unwrap();
        assert_eq!(tracker.committable(), Some(8));
        tracker.finish(11).unwrap();
        tracker.finish(10).unwrap();
        assert_eq!(tracker.committable(), Some(12));
        tracker.finish(20).unwrap();
        assert_eq!(tracker.committable(), Some(21));
        assert_eq!(tracker.pending_len(), 0);
    }

    #[test]
    fn non_increasing_offset_is_rejected() {
        let mut tracker = CommitTracker::new();
        tracker.track(4).unwrap();
        assert_eq!(tracker.track(4), Err(TrackError::NotIncreasing { offset: 4, last: 4 }));
        assert_eq!(tracker.track(2), Err(TrackError::NotIncreasing { offset: 2, last: 4 }));
    }

    #[test]
    fn unknown_offset_is_rejected() {
        let mut tracker = CommitTracker::new();
        tracker.track(4).unwrap();
        assert_eq!(tracker.finish(5), Err(TrackError::NotPending(5)));
    }

    #[test]
    fn commit_candidate_skips_committed_offsets() {
        let mut tracker = CommitTracker::new();
        tracker.track(0).unwrap();
        tracker.finish(0).unwrap();
        assert_eq!(tracker.commit_candidate(), Some(1));
        tracker.mark_committed(1);
        assert_eq!(tracker.commit_candidate(), None);
        tracker.mark_committed(0);
        assert_eq!(tracker.committed(), Some(1));
    }

    proptest! {
        /// For any gapped offset sequence and any completion order, the committable offset
        /// never passes an unfinished offset and never decreases.
        #[test]
        fn committable_never_passes_unfinished(
            gaps in prop::collection::vec(1i64..4, 1..60),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let mut offsets = Vec::new();
            let mut next = 0i64;
            for gap in &gaps {
                offsets.push(next);
                next += gap;
            }
            let mut tracker = CommitTracker::new();
            for offset in &offsets {
                tracker.track(*offset).unwrap();
            }

            let mut unfinished: Vec<i64> = offsets.clone();
            let mut previous = None;
            for index in order {
                if unfinished.is_empty() {
                    break;
                }
                let offset = unfinished.remove(index.index(unfinished.len()));
                tracker.finish(offset).unwrap();

                let committable = tracker.committable();
                prop_assert!(committable >= previous);
                if let (Some(limit), Some(lowest)) = (committable, unfinished.iter().min()) {
                    prop_assert!(limit <= *lowest);
                }
                previous = committable;
            }
            if unfinished.is_empty() {
                prop_assert_eq!(tracker.committable(), offsets.last().map(|last| last + 1));
            }
        }
    }
}
