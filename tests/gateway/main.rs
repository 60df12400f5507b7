//! Integration tests of the whole stack: the gateway on port 0 in front of loopback upstreams.

mod cli;
mod errors;
mod forwarding;
mod keys;
mod process;
mod reload;
mod sdk;
mod support;
