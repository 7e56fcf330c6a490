//! Dispatch: which fetched message may be handed to a worker next.

pub mod scheduler;

pub use scheduler::{LaneId, LaneKey, Scheduler};
