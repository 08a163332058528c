//! Ficus control plane: a durable versioned config store, push streams to sidecars with
//! ACK/NACK, and the HTTP API `ficusctl` uses.
//!
//! # Layout
//! - [`store`] — versions in an embedded redb database under `--data`.
//! - [`apply`] — apply/delete/rollback: merge, validate with `ficus-config`, commit, publish.
//! - [`api`] — the HTTP API (`/v1/...`), `/metrics`, `/live`, `/ready`.
//! - [`push`] — gRPC push streams (`ficus.v1.ConfigDiscovery/Subscribe`).
//! - [`registry`] — connected sidecars and their ACK/NACK state.
//! - [`scope`] — which documents each sidecar receives.
//! - [`state`] — what the tasks share; [`metrics`] — Prometheus metrics.
#![forbid(unsafe_code)]

pub mod api;
pub mod apply;
pub mod metrics;
pub mod push;
pub mod registry;
pub mod scope;
pub mod state;
pub mod store;
