//! Asterisk Manager Interface client (TCP, CRLF `Key: Value` blocks): the wire format in
//! [`proto`], the connection task and typed actions (`PJSIPShowEndpoint`,
//! `PJSIPShowContacts`, `PJSIPShowEndpoints`, `Reload`) in [`client`].

pub mod client;
pub mod proto;

pub use client::{
    AmiClient, AmiConfig, AmiConnection, AmiError, AmiState, Contact, EndpointDetail, Reply,
};
pub use proto::Message;
