//! Flow control between the poll thread and the pipeline: how many fetched records of one
//! partition the pipeline may hold before the poll thread stops taking more.
//!
//! Each assigned partition is read from its own librdkafka queue. The poll thread takes a
//! record from that queue only while the partition's [`PartitionRoom`] has room, and hands the
//! record to the pipeline together with a [`BufferSlot`]. The pipeline drops the slot when the
//! record leaves its buffer (dispatched to the handler, or discarded), which frees the room.
//! Records the pipeline has no room for stay in librdkafka's queue, and librdkafka stops
//! fetching the partition once that queue reaches `queued.max.messages.kbytes`.
//!
//! This bound replaces pausing the partition when the buffer is full: a pause makes librdkafka
//! discard the partition's prefetched records and fetch them again after the resume, while
//! here nothing fetched is thrown away.
//!
//! Invariants: a slot frees its room exactly once, on drop, whatever path the record takes
//! through the pipeline. The poll thread is woken whenever a partition that was full drains to
//! half its limit, so a full partition does not wait for the poll thread's idle timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

/// Wakes the poll thread when it has new work: records in a partition queue, events in the
/// consumer queue, or room freed in a full partition.
///
/// Built before the poll thread exists, because librdkafka's queue callbacks are installed
/// before the thread starts. Wake-ups before [`PollWakeup::register`] are not needed, because
/// the thread polls every queue once when it starts.
#[derive(Debug, Default)]
pub(crate) struct PollWakeup {
    thread: OnceLock<Thread>,
}

impl PollWakeup {
    /// Records the calling thread as the one to wake.
    pub(crate) fn register(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Wakes the poll thread, or makes its next park return at once. Called from librdkafka's
    /// threads when a queue turns non-empty, and cheap when the thread is running (one atomic
    /// swap).
    pub(crate) fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// The buffer room of one partition, for one assignment of it.
#[derive(Debug)]
pub(crate) struct PartitionRoom {
    /// Records handed to the pipeline whose slot is not dropped yet.
    in_pipeline: AtomicUsize,
    /// `SCC_PARTITION_BUFFER`.
    limit: usize,
    wakeup: Arc<PollWakeup>,
}

impl PartitionRoom {
    pub(crate) fn new(limit: usize, wakeup: Arc<PollWakeup>) -> Arc<PartitionRoom> {
        Arc::new(PartitionRoom { in_pipeline: AtomicUsize::new(0), limit: limit.max(1), wakeup })
    }

    /// Returns how many more records the pipeline may take now.
    pub(crate) fn available(&self) -> usize {
        self.limit.saturating_sub(self.in_pipeline.load(Ordering::Acquire))
    }

    /// Takes room for one record; the room is freed when the returned slot is dropped.
    pub(crate) fn take(self: &Arc<Self>) -> BufferSlot {
        self.in_pipeline.fetch_add(1, Ordering::AcqRel);
        BufferSlot { room: self.clone() }
    }

    fn free(&self) {
        let before = self.in_pipeline.fetch_sub(1, Ordering::AcqRel);
        // Waking at half the limit, rather than on every freed slot, lets the poll thread take
        // a run of records at once instead of one record per wake-up.
        if before == self.limit / 2 + 1 {
            self.wakeup.wake();
        }
    }
}

/// The room one fetched record takes in the pipeline's buffer of its partition, freed when
/// dropped.
#[derive(Debug)]
pub struct BufferSlot {
    room: Arc<PartitionRoom>,
}

impl Drop for BufferSlot {
    fn drop(&mut self) {
        self.room.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_take_and_free_room() {
        let room = PartitionRoom::new(4, Arc::default());
        assert_eq!(room.available(), 4);
        let slots: Vec<BufferSlot> = (0..4).map(|_| room.take()).collect();
        assert_eq!(room.available(), 0);
        drop(slots);
        assert_eq!(room.available(), 4);
    }

    #[test]
    fn draining_to_half_wakes_the_poll_thread() {
        let wakeup = Arc::new(PollWakeup::default());
        wakeup.register();
        let room = PartitionRoom::new(4, wakeup);
        let mut slots: Vec<BufferSlot> = (0..4).map(|_| room.take()).collect();
        // The wake-up is an unpark of this thread: the next park returns at once.
        slots.truncate(3);
        slots.truncate(2);
        let started = std::time::Instant::now();
        std::thread::park_timeout(std::time::Duration::from_secs(30));
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the drain to half did not wake the thread");
        assert_eq!(room.available(), 2);
    }
}
