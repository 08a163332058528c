//! Metrics and logs.
pub mod access_log;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod trace;
