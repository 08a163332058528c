//! Ficus performance harness: the shared parts of the `loadgen`, `upstream` and `swapdelay` tools.
//!
//! # Layout
//! - [`client`]: one HTTP/1.1 keep-alive client connection on hyper 1.x, every wait bounded.
//! - [`latency`]: an hdrhistogram of microseconds and its summary in milliseconds.
//! - [`duration`]: command-line durations (`15s`, `500ms`, `2m`, or bare seconds).
//!
//! The binaries live in `src/bin/`; `benches/run` drives them and the sidecar, and
//! `benches/README.md` says what each number means.
#![forbid(unsafe_code)]

pub mod client;
pub mod duration;
pub mod latency;
