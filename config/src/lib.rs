//! Ficus config model: YAML documents → raw serde types → validated types.
//!
//! # Layout
//! - [`raw`]: serde mirrors of the YAML documents (`deny_unknown_fields`).
//! - [`model`]: validated types the sidecar and control plane consume.
//! - `validate`: raw → model, collecting every error of a set of files.
//! - `error`: [`Diagnostic`] (file, document, field path, hint), [`ConfigErrors`] and
//!   [`Warning`] (valid, but almost certainly not meant: shadowed route matches).
//! - [`precedence`]: how route matches rank in a service's table, shared with the sidecar.
//! - `duration`: Gateway API durations (`500ms`, `2s`, `1m30s`).
//! - [`spiffe`]: SPIFFE IDs, strictly (the TLS layer's rules, in one place).
//! - [`path`]: request paths in one spelling (decoded unreserved escapes, ambiguity refused).
//! - `load`: reading a file or a directory of `*.yaml`.
//! - [`wire`] (feature `wire`): push-protocol messages and gRPC stubs.
#![forbid(unsafe_code)]

pub mod fuzz;
pub mod model;
pub mod path;
pub mod precedence;
pub mod raw;
pub mod spiffe;

mod duration;
mod error;
mod load;
mod validate;

#[cfg(feature = "wire")]
pub mod wire;

pub use duration::parse_duration;
pub use error::{ConfigErrors, Diagnostic, Warning, MAX_LISTED_ERRORS};
pub use load::{load_path, parse_snapshot, parse_sources, parse_str, Source};
pub use model::*;
pub use validate::is_service_account_name;
