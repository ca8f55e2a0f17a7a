//! Single-use WebSocket tickets: a browser cannot set an `Authorization` header on a
//! WebSocket or EventSource request, and a token in the URL lands in proxy access logs.
//! So an authenticated caller trades its token for a ticket (`POST /auth/ws-ticket`): an
//! opaque random string (64 hex digits, 256 bits) valid [`TICKET_TTL`] (30 s) and for one
//! use only, which `/ws?ticket=` or `/events?ticket=` redeems for the token it stands for.
//!
//! Tickets live in memory only (a restart voids them, which costs a browser one more
//! request). The store is bounded: expired tickets are pruned on every issue, and past
//! [`MAX_TICKETS`] live tickets a new one is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

/// How long a ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Live tickets held at most (a burst past this is refused, not queued).
pub const MAX_TICKETS: usize = 10_000;

/// The ticket store was full.
#[derive(Debug, thiserror::Error)]
#[error("too many WebSocket tickets outstanding; retry in a few seconds")]
pub struct TooManyTickets;

struct Entry {
    token: String,
    expires: Instant,
}

/// Outstanding tickets: ticket → the bearer token it stands for (never logged).
#[derive(Default)]
pub struct Tickets {
    map: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Tickets").field("outstanding", &n).finish()
    }
}

impl Tickets {
    /// A new ticket for `token`, valid [`TICKET_TTL`] from `now`.
    ///
    /// Errors: [`MAX_TICKETS`] unexpired tickets are outstanding.
    pub fn issue(&self, token: &str, now: Instant) -> Result<String, TooManyTickets> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let ticket = hex::encode(bytes);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.expires > now);
        if map.len() >= MAX_TICKETS {
            return Err(TooManyTickets);
        }
        map.insert(
            ticket.clone(),
            Entry {
                token: token.to_string(),
                expires: now + TICKET_TTL,
            },
        );
        Ok(ticket)
    }

    /// The token `ticket` stands for, when it exists and has not expired at `now`. The
    /// ticket is spent either way: a second redemption gets None.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(ticket)
            .filter(|e| e.expires > now)
            .map(|e| e.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_and_expires() {
        let t = Tickets::default();
        let now = Instant::now();
        let a = t.issue("tok-a", now).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(t.redeem(&a, now).as_deref(), Some("tok-a"));
        assert_eq!(t.redeem(&a, now), None);
        let b = t.issue("tok-b", now).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.redeem(&b, now + TICKET_TTL), None);
        assert_eq!(t.redeem("nope", now), None);
    }
}
