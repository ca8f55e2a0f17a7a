//! Asterisk Manager Interface client (TCP, CRLF key/value blocks). Stub: to be built (issue 3).
