//! Integration tests: one binary (faster to link), one module per area.

mod ami;
mod browser;
mod calls_api;
mod calls_e2e;
mod cel;
mod check;
mod cli;
mod console;
mod control;
mod deploy;
mod extensions;
mod fake_ari;
mod fake_asterisk;
mod fakes;
mod kavkom;
mod kerio;
mod link;
mod live;
mod openapi;
mod ops;
mod relay;
mod retention;
mod supervise;
mod support;
mod users;
mod writer;
