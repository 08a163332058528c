//! Ficus sidecar proxy.
//!
//! # Layout
//! - [`app`] — wiring of runtimes, listeners and tasks; shutdown.
//! - [`cli`] — flags.
//! - [`snapshot`] — the config compiled for the request path, swapped atomically.
//! - [`route`] — route tables, matchers, weighted choice, service names.
//! - [`proxy`] — the outbound and inbound handlers, headers, filters, errors → responses.
//! - [`upstream`] — endpoint connection pools.
//! - [`policy`] — retries and retry budgets, per rule and per Backend.
//! - [`listener`] — accept loops and downstream HTTP connections; [`detect`] — h1 or h2.
//! - [`tcp`] — opaque TCP listeners; [`tunnel`] — byte copying with an idle timeout.
//! - [`transparent`] — iptables-redirected connections; [`redirect`] — the rules themselves.
//! - [`reload`], [`watch`] and [`control`] — the swap, fed by file watching or by pushes.
//! - [`signals`] — SIGHUP (read `--config` again) and SIGUSR1 (reopen the access log).
//! - [`admin`] — the admin server; [`authz`] — inbound AuthorizationPolicy.
//! - [`telemetry`] — metrics and logs.
//! - [`body`], [`drain`], [`state`] — shared plumbing; [`h2_frames`] — HTTP/2 frame
//!   boundaries in bytes read or written.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod body;
pub mod cli;
pub mod clock;
pub mod control;
pub mod deadline;
pub mod detect;
pub mod drain;
pub mod fuzz;
pub mod h2_frames;
pub mod listener;
pub mod mtls;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod reload;
pub mod route;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod transparent;
pub mod tunnel;
pub mod upstream;
pub mod watch;
