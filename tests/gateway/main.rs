//! Integration tests of the whole stack: the gateway on port 0 in front of loopback upstreams.

mod approvals;
mod audit;
mod cli;
mod corpus;
mod deploy;
mod errors;
mod faults;
mod forwarding;
mod frameworks;
mod gateway_api;
mod hardening;
mod keys;
mod keys_api;
mod keys_cli;
mod process;
mod properties;
mod protection;
mod ratelimit;
mod reload;
mod sdk;
mod state;
mod store;
mod support;
mod tls;
mod ui;
mod upstream_pool;
