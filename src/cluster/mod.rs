//! Coordination of `pbxbridge serve` replicas over PostgreSQL: several replicas share one
//! database, exactly one of them consumes ARI for each Asterisk node, and every one serves
//! the API and live events. [`relay`] carries live call and registration events, and small
//! cluster-wide signals ("extensions changed"), between replicas with PostgreSQL
//! `LISTEN`/`NOTIFY`. SQLite is single-process and has no cluster (see
//! [`crate::db::ProcessLock`]).

pub mod relay;
