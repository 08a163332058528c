//! Test support for the Ficus integration suite.
#![forbid(unsafe_code)]
