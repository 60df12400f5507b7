//! Request and response extensions that several layers share (a leaf module).
//!
//! Each is inserted by exactly one place and read by the others; extensions owned by a single layer
//! (`Operation`, `Principal`, `Decision`, …) live with that layer.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The client's socket address (inserted at the edge by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The route id of a request, filled in by the classifier for the layers outside it (metrics).
#[derive(Clone, Debug, Default)]
pub struct RouteLabel(pub Arc<OnceLock<&'static str>>);

/// On a response the gateway made itself: its error code (set by the rescue layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// On a request let through by an approval (inserted by the approvals layer, read by the audit
/// intent): which approval, and who approved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalUsed {
    /// The approval id.
    pub id: String,
    /// The clients who approved it.
    pub approvers: Vec<String>,
}
