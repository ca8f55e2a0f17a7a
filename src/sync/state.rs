//! Watermarks of the hosted-PBX syncs (`kerio:history`, `kavkom:history`, ...): the generic
//! helpers now live in [`crate::db::watermark`] (the CEL backfill keeps its watermark there
//! too); re-exported here so existing callers keep working.

pub use crate::db::watermark::{get_watermark, set_watermark};
