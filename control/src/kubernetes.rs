//! Kubernetes: the CustomResourceDefinitions of Ficus's own kinds, generated from the raw
//! config types so that the schema the API server checks and the one Ficus parses cannot
//! drift apart.
//!
//! Everything but [`api`] and the loops of [`watch`] is pure — objects in, objects out — and
//! tested on real object JSON; no API server can run where Ficus is tested (README, limits).
//!
//! # Layout
//! - [`api`] — the thin HTTPS client of the API server (in-cluster address, CA and token).
//! - [`crd`] — the CRDs of Mesh, Backend, TrafficPolicy and AuthorizationPolicy
//!   (`deploy/crds/`), with their OpenAPI v3 schemas made structural.
//! - [`token_review`] — sidecars' projected service-account tokens checked with the API
//!   server's TokenReview, behind [`crate::auth::join::TokenAuthenticator`].
//! - [`translate`] — Services, EndpointSlices, HTTPRoutes and Ficus objects → the validated
//!   config snapshot.
//! - [`watch`] — `--kubernetes`: list and watch the cluster, commit what it translates to.

pub mod api;
pub mod crd;
pub mod token_review;
pub mod translate;
pub mod watch;
