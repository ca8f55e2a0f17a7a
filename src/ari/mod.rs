//! Asterisk REST Interface: the REST client, the typed models and events, the events
//! WebSocket with its reconnect policy, and the Stasis hand-back.

pub mod capture;
pub mod client;
pub mod events;
pub mod models;
pub mod stasis;
pub mod stream;

pub use client::{AriClient, AriError};
pub use events::Event;
