//! Ficus sidecar proxy.
#![forbid(unsafe_code)]
