//! HTTP proxying: the outbound and inbound request handlers and what they share.
pub mod error;
pub mod filters;
pub mod forward;
pub mod guard;
pub mod headers;
pub mod inbound;
pub mod mesh_timeout;
pub mod mirror;
pub mod outbound;
pub mod retrying;
