//! Kubernetes: the CustomResourceDefinitions of Ficus's own kinds, generated from the raw
//! config types so that the schema the API server checks and the one Ficus parses cannot
//! drift apart.
//!
//! No Kubernetes client lives here yet: the control plane does not watch an API server (see
//! README, limits). What is built is pure: objects in, objects out.
//!
//! # Layout
//! - [`crd`] — the CRDs of Mesh, Backend, TrafficPolicy and AuthorizationPolicy
//!   (`deploy/crds/`), with their OpenAPI v3 schemas made structural.

pub mod crd;
