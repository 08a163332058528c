//! Kubernetes: the CustomResourceDefinitions of Ficus's own kinds, generated from the raw
//! config types so that the schema the API server checks and the one Ficus parses cannot
//! drift apart.
//!
//! The control plane does not watch an API server yet (see README, limits). What is built is
//! pure — objects in, objects out — except the thin TokenReview client.
//!
//! # Layout
//! - [`api`] — the thin HTTPS client of the API server (in-cluster address, CA and token).
//! - [`crd`] — the CRDs of Mesh, Backend, TrafficPolicy and AuthorizationPolicy
//!   (`deploy/crds/`), with their OpenAPI v3 schemas made structural.
//! - [`token_review`] — sidecars' projected service-account tokens checked with the API
//!   server's TokenReview, behind [`crate::auth::join::TokenAuthenticator`].
//! - [`translate`] — Services, EndpointSlices, HTTPRoutes and Ficus objects → the validated
//!   config snapshot.

pub mod api;
pub mod crd;
pub mod token_review;
pub mod translate;
