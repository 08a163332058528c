//! I/O bounds and listeners the sidecar and the control plane share.
//!
//! - [`stall`] — `WriteStall`: writes to a peer that takes no bytes fail after a limit, and
//!   `StallBounded`, a stream whose writes are bounded so.
//! - [`listen`] — the IPv6 companion of an IPv4 listener (`[::]` beside `0.0.0.0`, `[::1]`
//!   beside `127.0.0.1`), and `Listeners`, which accepts from both as one.
//! - [`signal`] — catching a Unix signal whose handler may fail to install, and what SIGTERM
//!   and SIGINT do during start-up.
//! - [`wall`] — waiting until a wall-clock time (certificate renewal) that a suspended host
//!   does not stretch.
#![forbid(unsafe_code)]

pub mod listen;
pub mod signal;
pub mod stall;
pub mod wall;
