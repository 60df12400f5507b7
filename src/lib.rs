//! tl-gateway: a policy-enforcing, auditing HTTP gateway in front of the TwelveLabs v1.3 API.
//!
//! The request path is a tower `Service` stack, one module per concern (see `server::build_stack`):
//! request id → trace → metrics → rescue → in-flight limit → classify → authenticate → audit →
//! rate limit → policy → guards → audit intent → credentials → forward.
//! Data passes between layers as typed request extensions (`Operation`, `Principal`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod body;
pub mod classify;
pub mod cli;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod emulator;
pub mod error;
pub mod forward;
pub mod fragment;
pub mod guards;
pub mod headers;
pub mod metrics;
pub mod overload;
pub mod policy;
pub mod ratelimit;
pub mod reload;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod workers;
