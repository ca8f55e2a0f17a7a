//! The systemd service-manager protocol (`sd_notify`, through the `sd-notify` crate), for
//! `Type=notify` units: `READY=1` once the database is migrated and the API listens,
//! `WATCHDOG=1` pings while the supervisor runs, `STOPPING=1` at shutdown. Every call is a
//! no-op when `NOTIFY_SOCKET` is unset (pm2, a terminal, the tests that run in-process).

use std::net::SocketAddr;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells the service manager that the daemon is ready (`READY=1`) and where the API listens
/// (`STATUS=API listening on ADDR`). A failed send is logged, never fatal.
pub fn ready(api: SocketAddr) {
    let status = format!("API listening on {api}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells the service manager that the daemon is stopping (`STOPPING=1`).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The watchdog interval the service manager asked for (`WATCHDOG_USEC`, for this process
/// when `WATCHDOG_PID` is set), `None` when the unit has no `WatchdogSec=`.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Sends `WATCHDOG=1` every `interval / 2` until `cancel` fires. Runs as a supervised task:
/// when the runtime stalls or the task dies for good, the pings stop and systemd restarts
/// the service (`WatchdogSec=`).
pub async fn watchdog(interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify to NOTIFY_SOCKET failed");
    }
}
