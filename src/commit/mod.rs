//! Offset commit bookkeeping.
//!
//! [`tracker::CommitTracker`] decides, per partition, which offset may be committed; the
//! pipeline sends those offsets to Kafka.

pub mod tracker;

pub use tracker::{CommitTracker, TrackError};
