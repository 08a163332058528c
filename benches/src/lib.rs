//! Ficus performance harness.
#![forbid(unsafe_code)]
