//! Request and response extensions that several layers share (a leaf module).
//!
//! Each is inserted by exactly one place and read by the others ([`RequestScope`] at the edge, each
//! of its fields set by the one layer that owns it); extensions owned by a single layer
//! (`Operation`, `Principal`, `Decision`, …) live with that layer.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

/// Who and what a request is, for logs, errors, metrics and audit: the client's socket address
/// (set by the server at the edge), the request id (set by the request-id layer) and the route
/// id (filled in by the classifier or the gateway's own API, read by metrics once the response
/// is there). One shared allocation per request, inserted once; clones share it.
#[derive(Clone, Debug, Default)]
pub struct RequestScope(Arc<Scope>);

#[derive(Debug, Default)]
struct Scope {
    client_addr: Option<SocketAddr>,
    request_id: OnceLock<RequestId>,
    route: OnceLock<&'static str>,
}

impl RequestScope {
    /// The scope of a request from `client_addr`.
    pub fn new(client_addr: SocketAddr) -> Self {
        RequestScope(Arc::new(Scope {
            client_addr: Some(client_addr),
            request_id: OnceLock::new(),
            route: OnceLock::new(),
        }))
    }

    /// The scope of `req`: the one the edge made, or a new one (without an address) inserted for a
    /// request that came without one (a stack driven directly, as in tests).
    pub fn of<B>(req: &mut http::Request<B>) -> RequestScope {
        if let Some(scope) = req.extensions().get::<RequestScope>() {
            return scope.clone();
        }
        let scope = RequestScope::default();
        req.extensions_mut().insert(scope.clone());
        scope
    }

    /// The client's socket address, when the request came through a listener.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.0.client_addr
    }

    /// Record the request id (the first one recorded stays).
    pub fn set_request_id(&self, id: RequestId) {
        let _ = self.0.request_id.set(id);
    }

    /// The request id, once the request-id layer has set it.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.0.request_id.get()
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

/// On a deferred call replayed by the executor (inserted only by `deferred::executor`, never from
/// the wire: extensions cannot be sent by a client). Authentication takes the requester from the
/// current key snapshot instead of a key; approvals take the approval used when it was scheduled;
/// the deferred layer marks it as forwarding in the store (through `forwarding`) right before the
/// intent record.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The deferred call's id (`dfr_…`).
    pub id: String,
    /// Who asked for it.
    pub requester: String,
    /// This execution's claim on it (the store document must still carry it).
    pub claim: String,
    /// The approval it used when it was scheduled, if any.
    pub approval: Option<ApprovalUsed>,
    /// Set by the deferred layer once the store says it is being forwarded (the executor reads it).
    pub forwarding: Arc<std::sync::atomic::AtomicBool>,
}

/// The client certificate a TLS connection presented and the handshake verified against
/// `tls.client_ca_file` (inserted at the edge on every request of that connection).
///
/// Its names are typed by where they came from, so a subject CN is never compared with a DNS or
/// URI SAN (`clients[].cert_subject` says `CN=`, `DNS:` or `URI:`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerCertificate {
    /// SHA-256 of the leaf certificate's DER.
    pub sha256: [u8; 32],
    /// Its notAfter, Unix seconds (`None` if it could not be read): a request on a connection
    /// whose certificate has since expired is refused.
    pub not_after: Option<i64>,
    /// Its subject common names, in order (empty when any of them could not be read as text).
    pub common_names: Vec<String>,
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Its URI subject alternative names.
    pub uris: Vec<String>,
    /// `false` when it has an extended key usage without clientAuth: it identifies nobody.
    pub client_auth: bool,
}

/// A request's id (set by the request-id layer in the [`RequestScope`]). Held as the header value
/// it is sent and echoed as, so the request, the response and every record share one buffer
/// (cloning it allocates nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Longest client-supplied id that is propagated.
    pub const MAX_LEN: usize = 128;

    /// A fresh random id (32 hex digits).
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let value: u128 = rand::random();
        let mut digits = [0u8; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((value >> (4 * (31 - i))) & 0xf) as usize];
        }
        // One allocation, shared by every clone.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits))
            .expect("hex digits are a valid header value");
        RequestId(value)
    }

    /// Accept a client-supplied id if it is 1–128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let plain = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        plain.then(|| RequestId(value.clone()))
    }

    /// A fixed id (tests).
    pub fn from_static(value: &'static str) -> Self {
        RequestId(HeaderValue::from_static(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only plain ASCII ids are ever constructed.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the header value it is sent and echoed as (shares the buffer).
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
