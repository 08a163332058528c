//! Kubernetes: the CustomResourceDefinitions of Ficus's own kinds (generated from the raw
//! config types so that the schema the API server checks and the one Ficus parses cannot
//! drift apart), TokenReview authentication, and the cluster as the source of truth.
//!
//! The API server is reached with kube-rs ([`client`]); everything else here but the loops of
//! [`watch`] is pure — objects in, objects out — and tested on real object JSON; no API
//! server can run where Ficus is tested (README, limits), so the kube-rs client is tested
//! against a stand-in HTTPS API server.
//!
//! # Layout
//! - [`client`] — kube-rs's client, configured in-cluster (or from `KUBECONFIG`).
//! - [`crd`] — the CRDs of Mesh, Backend, TrafficPolicy and AuthorizationPolicy
//!   (`deploy/crds/`), with their OpenAPI v3 schemas made structural.
//! - [`token_review`] — sidecars' projected service-account tokens checked with the API
//!   server's TokenReview, behind [`crate::auth::join::TokenAuthenticator`].
//! - [`translate`] — Services, EndpointSlices, HTTPRoutes and Ficus objects → the validated
//!   config snapshot; objects that do not validate are left out, unless one is the Mesh or
//!   an AuthorizationPolicy (those refuse the whole snapshot).
//! - [`watch`] — `--kubernetes`: kube-rs watchers over the cluster, commit what it translates
//!   to.

pub mod client;
pub mod crd;
pub mod token_review;
pub mod translate;
pub mod watch;
