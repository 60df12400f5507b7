//! tl-gateway: a policy-enforcing, auditing HTTP gateway in front of the TwelveLabs v1.3 API.
//!
//! The request path is a tower `Service` stack, one module per concern, composed in
//! [`stack::build_stack`]: request id → trace → metrics → rescue → in-flight limit → page →
//! classify → authenticate → audit → per-client cap → policy → protection → recall of a scheduled
//! call → approvals → rate limit → guards → deferred → audit intent → dispatch: the gateway's own API, or credentials → forward. Data passes between layers as typed request extensions (`Operation`,
//! `Principal`, `Decision`). The design of record, with the module map and the dependency rule, is
//! `docs/architecture.md`.
#![forbid(unsafe_code)]

// Leaf modules: what everything shares; they import nothing of the crate.
pub mod ext;
pub mod ids;
pub mod settings;
pub mod units;

// The route table, the shared matcher, bodies and header lists.
pub mod body;
pub mod headers;
pub mod matcher;
pub mod outbound;
pub mod routes;

// The layers of the request path, each owning its settings.
pub mod api;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod classify;
pub mod credentials;
pub mod deferred;
pub mod error;
pub mod forward;
pub mod gate;
pub mod guards;
pub mod keys;
pub mod metrics;
pub mod overload;
pub mod policy;
pub mod ratelimit;
pub mod request_id;
pub mod ui;

// Composition, listeners and process.
pub mod admin;
pub mod cli;
pub mod config;
pub mod connections;
pub mod emulator;
pub mod fragment;
pub mod reload;
pub mod server;
pub mod stack;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod workers;
