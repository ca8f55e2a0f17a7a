//! Integration tests: one binary (faster to link), one module per area.

mod support;
mod kavkom;
