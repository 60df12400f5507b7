//! Request and response extensions that several layers share (a leaf module).
//!
//! Each is inserted by exactly one place and read by the others; extensions owned by a single layer
//! (`Operation`, `Principal`, `Decision`, …) live with that layer.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// What the edge knows about a request and what inner layers learn about it for the layers
/// outside them: the client's socket address (set by the server at the edge) and the request's
/// route id (filled in by the classifier or the gateway's own API, read by metrics once the
/// response is there). One shared allocation per request; clones share it.
#[derive(Clone, Debug, Default)]
pub struct RequestScope(Arc<Scope>);

#[derive(Debug, Default)]
struct Scope {
    client_addr: Option<SocketAddr>,
    route: OnceLock<&'static str>,
}

impl RequestScope {
    /// The scope of a request from `client_addr`.
    pub fn new(client_addr: SocketAddr) -> Self {
        RequestScope(Arc::new(Scope {
            client_addr: Some(client_addr),
            route: OnceLock::new(),
        }))
    }

    /// The client's socket address, when the request came through a listener.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.0.client_addr
    }

    /// Record the request's route id (the first one recorded stays).
    pub fn set_route(&self, id: &'static str) {
        let _ = self.0.route.set(id);
    }

    /// The route id, once known.
    pub fn route(&self) -> Option<&'static str> {
        self.0.route.get().copied()
    }
}

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
