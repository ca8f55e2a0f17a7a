//! A `pbxbridge serve` replica for the multi-replica tests and the cluster benchmark: the
//! real binary, on a free port, with `ASTERISK_NODES`, `REPLICA_ID` and one API token,
//! logging to `DIR/ID.log`; killed (SIGKILL) when dropped.
//!
//! Shared by the integration tests and `benches/cluster.rs` (included with `#[path]`), so it
//! uses only the standard library and no other test module.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The API token every replica accepts.
pub const TOKEN: &str = "cluster-token";

/// A running replica.
pub struct Replica {
    /// Its `REPLICA_ID`.
    pub id: &'static str,
    /// The process.
    pub child: Child,
    /// Where its API listens (127.0.0.1).
    pub port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts replica `id` of `pbxbridge serve` on `db_url` with the nodes `nodes`
/// (`ASTERISK_NODES`), working in `dir`, with `extra` environment variables (e.g.
/// `PJSIP_MODE`, `RUST_LOG`; default log level `info`).
pub fn spawn(
    db_url: &str,
    nodes: &str,
    id: &'static str,
    dir: &Path,
    extra: &[(&str, &str)],
) -> Replica {
    let port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))
        .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_pbxbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .env("DATABASE_URL", db_url)
        .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("ASTERISK_NODES", nodes)
        .env("REPLICA_ID", id)
        .env("API_TOKENS", TOKEN)
        .env(
            "PJSIP_INCLUDE_PATH",
            dir.join(format!("{id}-pjsip.conf")).to_str().unwrap(),
        )
        .env("RUST_LOG", "info");
    for (k, v) in extra {
        c.env(k, v);
    }
    let child = c
        .arg("serve")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Replica { id, child, port }
}
