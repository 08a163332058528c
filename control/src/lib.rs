//! Ficus control plane: a durable versioned config store, push streams to sidecars with
//! ACK/NACK, the mesh certificate authority, and the HTTP API `ficusctl` uses.
//!
//! # Layout
//! - [`store`] — versions in an embedded redb database under `--data`.
//! - [`apply`] — apply/delete/rollback: merge, validate with `ficus-config`, commit, publish.
//! - [`api`] — the HTTP API (`/v1/...`), `/metrics`, `/live`, `/ready`.
//! - [`grpc`] — the `--grpc` port: TLS, HTTP/2, routing to [`push`] and [`sign`].
//! - [`push`] — gRPC push streams (`ficus.v1.ConfigDiscovery/Subscribe`).
//! - [`sign`] — certificate signing (`ficus.v1.Certificates/Sign`).
//! - [`ca`] — the CA's files under `--data` and the control plane's own certificate.
//! - [`auth`] — bearer tokens: join tokens for signing, admin tokens for the API.
//! - [`inject`] — sidecar injection into Kubernetes manifests (`ficusctl inject`, webhook).
//! - [`webhook`] — the mutating admission webhook (`--webhook`) serving [`inject`].
//! - [`kubernetes`] — CRDs generated from the raw config types, the kube-rs client, the
//!   TokenReview authenticator, Kubernetes objects → config translation, the watches.
//! - [`registry`] — connected sidecars and their ACK/NACK state.
//! - [`scope`] — which documents each sidecar receives.
//! - [`state`] — what the tasks share; [`metrics`] — Prometheus metrics; [`listen`] —
//!   binding with IPv6 companions, accepting with back-off.
#![forbid(unsafe_code)]

pub mod admin_tls;
pub mod api;
pub mod apply;
pub mod auth;
pub mod ca;
pub mod grpc;
pub mod inject;
pub mod kubernetes;
pub mod listen;
pub mod metrics;
pub mod push;
pub mod registry;
pub mod scope;
pub mod sign;
pub mod state;
pub mod store;
pub mod webhook;
