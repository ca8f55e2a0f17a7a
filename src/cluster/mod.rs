//! Coordination of `pbxbridge serve` replicas over the PostgreSQL they share, with
//! PostgreSQL's own primitives and no cluster protocol of ours:
//! - [`lease`]: advisory-lock leases choose the one replica that does a job which must run
//!   once (consuming a node's ARI, the provisioner, the hosted-PBX sync loops, retention);
//! - [`relay`]: `LISTEN`/`NOTIFY` carries the live call and registration events from the
//!   replica that has them to the others, and small cluster-wide signals ("extensions
//!   changed");
//! - [`store`]: who holds which lease, for `/health`.
//!
//! SQLite is single-process (see [`crate::db::ProcessLock`]): its one process holds every
//! lease and relays nothing.

pub mod lease;
pub mod relay;
pub mod store;
