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

/// The client certificate a TLS connection presented and the handshake verified against
/// `tls.client_ca_file` (inserted at the edge on every request of that connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// SHA-256 of the leaf certificate's DER.
    pub sha256: [u8; 32],
    /// Its subject common name.
    pub common_name: Option<String>,
    /// Its DNS and URI subject alternative names.
    pub alt_names: Vec<String>,
}

impl PeerCertificate {
    /// The names it carries: the CN first, then the SANs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .iter()
            .map(String::as_str)
            .chain(self.alt_names.iter().map(String::as_str))
    }
}
