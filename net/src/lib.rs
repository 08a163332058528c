//! I/O bounds the sidecar and the control plane share.
//!
//! - [`stall`] — `WriteStall`: writes to a peer that takes no bytes fail after a limit, and
//!   `StallBounded`, a stream whose writes are bounded so.
#![forbid(unsafe_code)]

pub mod stall;
