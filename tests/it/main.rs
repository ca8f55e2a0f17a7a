//! Integration tests: one binary (faster to link), one module per area.

mod calls_e2e;
mod fake_asterisk;
mod support;
