//! Integration tests: one binary (faster to link), one module per area.

mod ami;
mod extensions;
mod fakes;
mod support;
