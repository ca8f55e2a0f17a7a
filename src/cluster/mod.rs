//! Coordination of pbxbridge replicas over the PostgreSQL they share, with PostgreSQL's own
//! primitives and no cluster protocol of ours: advisory-lock leases choose the one replica
//! that does a job which must run once (consuming a node's ARI, the provisioner, the
//! hosted-PBX sync loops), and `LISTEN/NOTIFY` carries the live events from that replica to
//! the others. On SQLite there is one process, which holds every lease.

pub mod lease;
pub mod store;
