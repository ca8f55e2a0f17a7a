//! Integration tests: one binary (faster to link), one module per area.

mod calls_api;
mod calls_e2e;
mod cli;
mod fake_asterisk;
mod kavkom;
mod kerio;
mod live;
mod support;
mod users;
