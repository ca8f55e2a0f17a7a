//! pbxbridge: a daemon beside an Asterisk 22 PBX that turns ARI events into call records,
//! pushes live call and registration events to a web UI, provisions PJSIP extensions and
//! syncs hosted PBXs (Kerio Operator, Kavkom) into the same calls table.
//!
//! Layout: `ari` (REST client, events WebSocket, typed events), `calls` (tracker, writer,
//! store), `cel` (backfill from Asterisk's Channel Event Log), `live` (event hub), `http`
//! (API), `db` (pool and migrations), `cluster` (coordination of replicas over PostgreSQL:
//! the live relay), `config` (settings), `supervisor` (restarts of the long-running tasks),
//! `app` (wiring of `serve`), `cli` (subcommands). Domain-agnostic,
//! importing nothing from the crate: `metrics` (latency histogram) and `retry` (backoff).

pub mod ami;
pub mod app;
pub mod ari;
pub mod calls;
pub mod cel;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod db;
pub mod extensions;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod retry;
pub mod supervisor;
pub mod sync;
pub mod systemd;
pub mod users;
