//! Calls: the call record model, the rules that derive a record from what is known of a
//! call (shared by the ARI tracker and the CEL fold), the tracker that folds ARI events into
//! call records, the writer that stores them without ever blocking the event reader, and
//! their SQL.

pub mod ingest;
pub mod labels;
pub mod model;
pub mod params;
pub mod retention;
pub mod rules;
pub mod stats;
pub mod store;
pub mod tracker;
pub mod writer;

pub use model::{CallRecord, CallState, CallStatus, Direction, Source};
