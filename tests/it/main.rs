//! Integration tests: one binary (faster to link), one module per area.

mod ami;
mod calls_api;
mod calls_e2e;
mod cel;
mod cli;
mod extensions;
mod fake_asterisk;
mod fakes;
mod kavkom;
mod kerio;
mod live;
mod support;
mod users;
