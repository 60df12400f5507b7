//! Authentication: a client's personal key, or its verified TLS client certificate → [`Principal`].
//!
//! Only SHA-256 digests of client keys are held. The presented key is hashed and compared against
//! every configured digest in constant time, so neither the match position nor a near-miss shows in
//! the timing. A key may carry a label and an expiry (`clients[].keys`): an expired key is refused
//! with 401 `key_expired`, distinct from an unknown one, and overlapping keys let a client rotate
//! without a gap. With `tls.client_ca_file`, a client certificate the handshake verified may name
//! the client instead (`cert_sha256`, or `cert_subject`: a typed name, `CN=`, `DNS:` or `URI:`,
//! compared only with names of that kind); a request presenting both a certificate and a key must
//! have them name the same client. A certificate past its notAfter (on a connection opened while it
//! was valid) is refused with 401 `certificate_expired`; one whose extended key usage lacks
//! clientAuth names nobody.

pub mod settings;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{header, HeaderMap, Request};
use prometheus::IntGauge;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::classify::Operation;
use crate::error::GatewayError;
use crate::ext::PeerCertificate;
use crate::gate::{Admit, GateLayer};
use crate::ids::{ClientId, Role};
use crate::metrics::Metrics;

/// One personal key of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// SHA-256 of the raw key.
    pub sha256: [u8; 32],
    /// Names the key in logs, audit records and metrics (`default` for `key_sha256`).
    pub label: String,
    /// After this the key is refused with 401 `key_expired`.
    pub expires: Option<SystemTime>,
    /// Revoked at runtime (store clients): refused with 401 `key_revoked`.
    pub revoked: bool,
}

impl ClientKey {
    /// The label of the key given as `clients[].key_sha256`.
    pub const DEFAULT_LABEL: &'static str = "default";

    /// A key without expiry, labelled `default`.
    pub fn new(sha256: [u8; 32]) -> Self {
        ClientKey {
            sha256,
            label: ClientKey::DEFAULT_LABEL.to_owned(),
            expires: None,
            revoked: false,
        }
    }
}

/// A team member as configured (`clients[]`): the authentication layer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Stable client id (used in logs, audit and metric labels).
    pub id: ClientId,
    /// Roles the policy refers to.
    pub roles: Vec<Role>,
    /// The client's personal keys (several while rotating).
    pub keys: Vec<ClientKey>,
    /// SHA-256 of the DER client certificate that identifies this client.
    pub cert_sha256: Option<[u8; 32]>,
    /// A verified client certificate with exactly this name (a subject CN, a DNS SAN or a URI SAN,
    /// as typed) identifies the client.
    pub cert_subject: Option<CertSubject>,
    /// Requests in flight at most for this client (overrides `server.max_in_flight_per_client`).
    pub max_in_flight: Option<usize>,
    /// Disabled at runtime (store clients): every key refused with 401 `client_disabled`.
    pub disabled: bool,
}

impl ClientSettings {
    /// A client with one key and no certificate (tests, benches).
    pub fn with_key(id: &str, roles: &[&str], sha256: [u8; 32]) -> Self {
        ClientSettings {
            id: id.parse().expect("a valid client id"),
            roles: roles
                .iter()
                .map(|r| r.parse().expect("a valid role"))
                .collect(),
            keys: vec![ClientKey::new(sha256)],
            cert_sha256: None,
            cert_subject: None,
            max_in_flight: None,
            disabled: false,
        }
    }
}

/// A certificate name as `clients[].cert_subject` types it: which kind of name, and its exact text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertSubject {
    /// `CN=…`: a subject common name.
    CommonName(String),
    /// `DNS:…`: a DNS subject alternative name.
    Dns(String),
    /// `URI:…`: a URI subject alternative name (e.g. a SPIFFE id).
    Uri(String),
}

impl std::str::FromStr for CertSubject {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let typed = if let Some(name) = text.strip_prefix("CN=") {
            CertSubject::CommonName(name.to_owned())
        } else if let Some(name) = text.strip_prefix("DNS:") {
            CertSubject::Dns(name.to_owned())
        } else if let Some(name) = text.strip_prefix("URI:") {
            CertSubject::Uri(name.to_owned())
        } else {
            return Err(format!(
                "cert_subject {text:?} must say which name it matches: \"CN={text}\", \"DNS:{text}\" or \"URI:spiffe://...\""
            ));
        };
        if typed.name().is_empty() {
            return Err(format!(
                "cert_subject {text:?} names nothing after its prefix"
            ));
        }
        Ok(typed)
    }
}

impl CertSubject {
    /// The name without its kind.
    pub fn name(&self) -> &str {
        match self {
            CertSubject::CommonName(n) | CertSubject::Dns(n) | CertSubject::Uri(n) => n,
        }
    }
}

impl std::fmt::Display for CertSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertSubject::CommonName(n) => write!(f, "CN={n}"),
            CertSubject::Dns(n) => write!(f, "DNS:{n}"),
            CertSubject::Uri(n) => write!(f, "URI:{n}"),
        }
    }
}

/// The typed names a certificate carries: its CNs, then its DNS and URI SANs.
fn typed_names(cert: &PeerCertificate) -> impl Iterator<Item = CertSubject> + '_ {
    let cns = cert
        .common_names
        .iter()
        .cloned()
        .map(CertSubject::CommonName);
    let dns = cert.dns_names.iter().cloned().map(CertSubject::Dns);
    let uris = cert.uris.iter().cloned().map(CertSubject::Uri);
    cns.chain(dns).chain(uris)
}

/// The authenticated caller, as a typed request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Configured client id.
    pub client: ClientId,
    /// The client's roles.
    pub roles: Arc<[Role]>,
    /// How this request proved who it is (for the audit log); `None` for a principal named
    /// without a request (`explain`, policy tests).
    pub credential: Option<Credential>,
}

impl Principal {
    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}

/// How a request proved who it is (part of its [`Principal`], for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A personal key, by its label (never the key).
    Key {
        /// The key's label.
        label: Arc<str>,
    },
    /// A verified client certificate.
    Certificate {
        /// Lowercase hex SHA-256 of its DER.
        sha256: Arc<str>,
    },
    /// A person signed in on the page with the team's identity provider (`ui.oidc`): the
    /// session's issuer and subject (the provider's stable id of the person).
    Oidc {
        /// The issuer URL.
        issuer: Arc<str>,
        /// The ID token's `sub`.
        subject: Arc<str>,
    },
}

impl Credential {
    /// How it is named in audit records: `key`, `certificate` or `oidc`.
    pub fn method(&self) -> &'static str {
        match self {
            Credential::Key { .. } => "key",
            Credential::Certificate { .. } => "certificate",
            Credential::Oidc { .. } => "oidc",
        }
    }
}

/// A request carrying a live sign-in session of the page (inserted by `ui::oidc`'s session layer,
/// which checked the cookie against the record store and, for a state-changing call, the CSRF
/// token): the authentication layer makes it the request's [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The client id the provider's claim names.
    pub client: ClientId,
    /// The roles `role_map` gives the person's groups (possibly none).
    pub roles: Arc<[Role]>,
    /// The issuer URL.
    pub issuer: Arc<str>,
    /// The ID token's `sub`.
    pub subject: Arc<str>,
}

/// The classified operation and the authenticated principal of a request, for the layers below
/// both; a request that has not been through them fails closed (`what` says which check could not
/// be made).
pub fn judged<'r, B>(
    req: &'r Request<B>,
    what: &'static str,
) -> Result<(&'r Operation, &'r Principal), GatewayError> {
    match (
        req.extensions().get::<Operation>(),
        req.extensions().get::<Principal>(),
    ) {
        (Some(op), Some(principal)) => Ok((op, principal)),
        _ => Err(GatewayError::Internal(what)),
    }
}

/// One configured key: its digest, whose it is, and its label and expiry.
#[derive(Debug, Clone)]
struct KeyEntry {
    digest: [u8; 32],
    client: u32,
    label: Arc<str>,
    expires: Option<SystemTime>,
    revoked: bool,
    /// When it was last used (Unix seconds), for keys whose use is recorded (store keys).
    used: Option<Arc<AtomicU64>>,
}

/// The configured clients, by key digest and by certificate.
///
/// Digests are bucketed by their first byte, and every digest in the bucket is compared in constant
/// time: lookup cost stays flat with hundreds of clients, and timing reveals at most whether the
/// presented key's SHA-256 shares its first byte with some client's, which says nothing about a key.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    keys: Vec<KeyEntry>,
    principals: Vec<Principal>,
    buckets: Vec<Vec<u32>>,
    by_cert: HashMap<[u8; 32], u32>,
    by_subject: HashMap<CertSubject, u32>,
    /// Clients disabled at runtime, by position.
    disabled: Vec<bool>,
    /// `tl_gateway_client_last_seen_timestamp_seconds{client}`, per client (when built with metrics).
    last_seen: Vec<Option<IntGauge>>,
}

impl Default for ClientKeys {
    fn default() -> Self {
        ClientKeys::new(&[])
    }
}

impl ClientKeys {
    /// Build from the validated configuration.
    pub fn new(clients: &[ClientSettings]) -> Self {
        let mut buckets = vec![Vec::new(); 256];
        let mut keys = Vec::new();
        let mut by_cert = HashMap::new();
        let mut by_subject = HashMap::new();
        for (i, client) in clients.iter().enumerate() {
            for key in &client.keys {
                buckets[usize::from(key.sha256[0])].push(keys.len() as u32);
                keys.push(KeyEntry {
                    digest: key.sha256,
                    client: i as u32,
                    label: Arc::from(key.label.as_str()),
                    expires: key.expires,
                    revoked: key.revoked,
                    used: None,
                });
            }
            if let Some(digest) = client.cert_sha256 {
                by_cert.insert(digest, i as u32);
            }
            if let Some(subject) = &client.cert_subject {
                by_subject.insert(subject.clone(), i as u32);
            }
        }
        ClientKeys {
            keys,
            principals: clients
                .iter()
                .map(|c| Principal {
                    client: c.id.clone(),
                    roles: c.roles.clone().into(),
                    credential: None,
                })
                .collect(),
            buckets,
            by_cert,
            by_subject,
            disabled: clients.iter().map(|c| c.disabled).collect(),
            last_seen: vec![None; clients.len()],
        }
    }

    /// Record each use of the keys `usage` hands a clock for (by client id and label): the
    /// request path only stores the current second into it (no lock, no allocation).
    pub fn track_usage(&mut self, usage: impl Fn(&ClientId, &str) -> Option<Arc<AtomicU64>>) {
        for entry in &mut self.keys {
            let client = &self.principals[entry.client as usize].client;
            entry.used = usage(client, &entry.label);
        }
    }

    /// The same, exporting each key's expiry and each client's last request in `metrics`
    /// (series of clients and keys no longer configured are removed).
    pub fn with_metrics(clients: &[ClientSettings], metrics: &Metrics) -> Self {
        let mut keys = ClientKeys::new(clients);
        metrics.client_key_expiry.reset();
        for client in clients {
            for key in &client.keys {
                if let Some(at) = key.expires {
                    metrics
                        .client_key_expiry
                        .with_label_values(&[client.id.as_str(), key.label.as_str()])
                        .set(unix_seconds(at));
                }
            }
        }
        keys.last_seen = clients
            .iter()
            .map(|c| Some(metrics.client_last_seen.with_label_values(&[c.id.as_str()])))
            .collect();
        keys
    }

    /// The principal whose key this is, if any, with the key's label; an expired key is an error
    /// naming it.
    pub fn authenticate(&self, key: &[u8]) -> Result<(&Principal, &Arc<str>), GatewayError> {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let bucket = &self.buckets[usize::from(presented[0])];
        // Visit every candidate and select without branching on secret data.
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for &i in bucket {
            let hit = self.keys[i as usize].digest.ct_eq(&presented);
            index.conditional_assign(&i, hit);
            found |= hit;
        }
        if !bool::from(found) {
            return Err(GatewayError::InvalidCredentials);
        }
        let entry = &self.keys[index as usize];
        let principal = &self.principals[entry.client as usize];
        if entry.revoked {
            return Err(GatewayError::KeyRevoked {
                client: principal.client.clone(),
                label: entry.label.to_string(),
            });
        }
        if self.disabled[entry.client as usize] {
            return Err(GatewayError::ClientDisabled {
                client: principal.client.clone(),
                label: entry.label.to_string(),
            });
        }
        if let Some(at) = entry.expires {
            if SystemTime::now() >= at {
                return Err(GatewayError::KeyExpired {
                    client: principal.client.clone(),
                    label: entry.label.to_string(),
                    at: crate::units::rfc3339(at),
                });
            }
        }
        if let Some(used) = &entry.used {
            used.store(unix_seconds(SystemTime::now()) as u64, Ordering::Relaxed);
        }
        Ok((principal, &entry.label))
    }

    /// The client a verified certificate names, if any: by its digest, else by its typed names
    /// (each CN, DNS SAN and URI SAN). Names that match two different clients — two CNs, or a CN
    /// and a SAN — are refused rather than one of them chosen. A certificate past its notAfter is
    /// refused; one not for client authentication (an extended key usage without clientAuth)
    /// names nobody.
    fn by_certificate(&self, cert: &PeerCertificate) -> Result<Option<u32>, GatewayError> {
        if let Some(not_after) = cert.not_after {
            if unix_seconds(SystemTime::now()) > not_after {
                return Err(GatewayError::CertificateExpired {
                    at: crate::units::rfc3339(
                        UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
                    ),
                });
            }
        }
        if !cert.client_auth {
            return Ok(None);
        }
        if let Some(index) = self.by_cert.get(&cert.sha256) {
            return Ok(Some(*index));
        }
        let mut found = None;
        for index in typed_names(cert).filter_map(|name| self.by_subject.get(&name)) {
            match found {
                Some(other) if other != *index => return Err(GatewayError::CertificateAmbiguous),
                _ => found = Some(*index),
            }
        }
        Ok(found)
    }

    /// Whether a client of this id is known and disabled.
    pub fn is_disabled(&self, client: &ClientId) -> bool {
        self.principals
            .iter()
            .position(|p| p.client == *client)
            .is_some_and(|i| self.disabled[i])
    }

    /// The client `id` as it is now (roles from the current snapshot), for a deferred call
    /// replayed on its requester's behalf: unknown → 401 `unauthorized`, disabled → 401
    /// `client_disabled`.
    pub fn principal_named(&self, id: &str) -> Result<Principal, GatewayError> {
        let position = self
            .principals
            .iter()
            .position(|p| p.client.as_str() == id)
            .ok_or(GatewayError::InvalidCredentials)?;
        let principal = &self.principals[position];
        if self.disabled[position] {
            return Err(GatewayError::ClientDisabled {
                client: principal.client.clone(),
                label: "deferred".into(),
            });
        }
        Ok(principal.clone())
    }

    /// Who sent this request: by its key (`x-api-key` or Bearer) and/or its verified client
    /// certificate. Both present → they must name the same client.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        cert: Option<&PeerCertificate>,
    ) -> Result<Principal, GatewayError> {
        let by_cert = match cert {
            Some(c) => self.by_certificate(c)?.map(|i| (i, c)),
            None => None,
        };
        let key = match presented_key(headers) {
            Ok(key) => Some(key),
            Err(GatewayError::MissingCredentials) if by_cert.is_some() => None,
            Err(GatewayError::MissingCredentials) if cert.is_some() => {
                return Err(GatewayError::CertificateUnknown)
            }
            Err(error) => return Err(error),
        };
        let (index, credential) = match (by_cert, key) {
            (Some((index, cert)), None) => (
                index,
                Credential::Certificate {
                    sha256: Arc::from(crate::units::hex(&cert.sha256)),
                },
            ),
            (by_cert, Some(key)) => {
                let (principal, label) = self.authenticate(key)?;
                let index = self
                    .principals
                    .iter()
                    .position(|p| p.client == principal.client)
                    .unwrap_or_default() as u32;
                if by_cert.is_some_and(|(cert_client, _)| cert_client != index) {
                    return Err(GatewayError::CredentialsDisagree);
                }
                (
                    index,
                    Credential::Key {
                        label: label.clone(),
                    },
                )
            }
            (None, None) => return Err(GatewayError::MissingCredentials),
        };
        if let Some(Some(gauge)) = self.last_seen.get(index as usize) {
            gauge.set(unix_seconds(SystemTime::now()));
        }
        let principal = &self.principals[index as usize];
        Ok(Principal {
            client: principal.client.clone(),
            roles: principal.roles.clone(),
            credential: Some(credential),
        })
    }
}

use crate::units::unix_secs as unix_seconds;

/// A fresh random client key: `tlgw_` and 40 alphanumerics (≈ 238 bits).
pub fn new_client_key() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("tlgw_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

/// Lowercase hex SHA-256 of a raw key, as written in `clients[].key_sha256`.
pub fn key_digest_hex(key: &str) -> String {
    crate::units::hex(&Sha256::digest(key.as_bytes()))
}

/// The personal key a request presents: exactly one, in `x-api-key` or `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Result<&[u8], GatewayError> {
    // The first key, how many were sent, and whether any differs from the first (compared in
    // constant time); no list is built.
    let mut seen = Presented::default();
    for value in headers.get_all("x-api-key") {
        seen.add(value.as_bytes());
    }
    for value in headers.get_all(header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        let scheme_ok = bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ");
        if !scheme_ok {
            return Err(GatewayError::InvalidCredentials);
        }
        seen.add(trim_ascii(&bytes[7..]));
    }
    match seen.first {
        None => Err(GatewayError::MissingCredentials),
        Some([]) if seen.count == 1 => Err(GatewayError::MissingCredentials),
        // The same key in both headers is harmless; anything else is ambiguous.
        Some(_) if seen.differ => Err(GatewayError::ConflictingCredentials),
        Some(key) => Ok(key),
    }
}

/// The keys a request presents, as [`presented_key`] reads them.
#[derive(Default)]
struct Presented<'a> {
    first: Option<&'a [u8]>,
    count: usize,
    differ: bool,
}

impl<'a> Presented<'a> {
    fn add(&mut self, key: &'a [u8]) {
        self.count += 1;
        match self.first {
            None => self.first = Some(key),
            Some(first) => self.differ |= !bool::from(key.ct_eq(first)),
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The authentication layer: every request must present a configured client's key (or a verified
/// client certificate that names one); its [`Principal`] and [`Credential`] are inserted for the
/// layers below.
#[derive(Clone, Debug)]
pub struct Authenticate {
    keys: KeySnapshot,
}

/// The clients and keys every request is authenticated against: YAML clients and the store's,
/// swapped whole when either changes (reload, a key issued or revoked on any replica), read
/// without a lock on every request.
pub type KeySnapshot = Arc<ArcSwap<ClientKeys>>;

impl Authenticate {
    /// The layer authenticating against the current snapshot.
    pub fn layer(keys: KeySnapshot) -> GateLayer<Authenticate> {
        GateLayer::new(Authenticate { keys })
    }
}

impl<B> Admit<B> for Authenticate {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        if let Some(session) = req.extensions_mut().remove::<SignedIn>() {
            // A store client of the same id that an admin disabled is refused here too.
            if self.keys.load().is_disabled(&session.client) {
                return Err(GatewayError::ClientDisabled {
                    client: session.client,
                    label: "sign-in session".to_owned(),
                });
            }
            tracing::Span::current().record("client", session.client.as_str());
            req.extensions_mut().insert(Principal {
                client: session.client,
                roles: session.roles,
                credential: Some(Credential::Oidc {
                    issuer: session.issuer,
                    subject: session.subject,
                }),
            });
            return Ok(());
        }
        // A deferred call replayed by this process (an extension no client can send) acts as its
        // requester, with the requester's roles as they are now.
        let principal = match req.extensions().get::<crate::ext::Replay>() {
            Some(replay) => self.keys.load().principal_named(&replay.requester)?,
            None => self
                .keys
                .load()
                .identify(req.headers(), req.extensions().get::<PeerCertificate>())?,
        };
        tracing::Span::current().record("client", principal.client.as_str());
        req.extensions_mut().insert(principal);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
