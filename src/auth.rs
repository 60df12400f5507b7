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

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

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
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> ClientKeys {
        let client = |id: &str, role: &str, key: &str| {
            ClientSettings::with_key(id, &[role], Sha256::digest(key.as_bytes()).into())
        };
        ClientKeys::new(&[
            client("alice", "admin", "tlgw_alice_example_key"),
            client("bob", "member", "tlgw_bob_example_key"),
        ])
    }

    /// alice by `CN=alice.example`, bob by `DNS:bob.example` (and a digest), carol by a SPIFFE URI.
    fn certificate_clients() -> ClientKeys {
        let client = |id: &str, subject: &str, digest: Option<[u8; 32]>| ClientSettings {
            cert_subject: Some(subject.parse().unwrap()),
            cert_sha256: digest,
            ..ClientSettings::with_key(id, &["member"], Sha256::digest(id.as_bytes()).into())
        };
        ClientKeys::new(&[
            client("alice", "CN=alice.example", None),
            client("bob", "DNS:bob.example", Some([7; 32])),
            client("carol", "URI:spiffe://tl/carol", None),
        ])
    }

    fn cert(sha256: [u8; 32], cns: &[&str], dns: &[&str], uris: &[&str]) -> PeerCertificate {
        let owned = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
        PeerCertificate {
            sha256,
            not_after: Some(unix_seconds(SystemTime::now()) + 3600),
            common_names: owned(cns),
            dns_names: owned(dns),
            uris: owned(uris),
            client_auth: true,
        }
    }

    fn who(keys: &ClientKeys, c: &PeerCertificate) -> Result<String, GatewayError> {
        keys.identify(&HeaderMap::new(), Some(c))
            .map(|p| p.client.as_str().to_owned())
    }

    #[test]
    fn a_certificate_whose_names_match_two_clients_is_refused() {
        let keys = certificate_clients();
        assert_eq!(
            who(
                &keys,
                &cert([0; 32], &["alice.example"], &["alice.example"], &[])
            )
            .unwrap(),
            "alice"
        );
        assert!(matches!(
            who(
                &keys,
                &cert([0; 32], &["alice.example"], &["bob.example"], &[])
            ),
            Err(GatewayError::CertificateAmbiguous)
        ));
        // The digest is explicit: it decides whatever the names say.
        assert_eq!(
            who(&keys, &cert([7; 32], &["alice.example"], &[], &[])).unwrap(),
            "bob"
        );
        // No names read (an unparsable certificate): only the digest can identify it.
        let unnamed = PeerCertificate {
            sha256: [7; 32],
            client_auth: true,
            ..PeerCertificate::default()
        };
        assert_eq!(who(&keys, &unnamed).unwrap(), "bob");
    }

    #[test]
    fn subjects_match_only_names_of_their_kind() {
        let keys = certificate_clients();
        type Names<'a> = &'a [&'a str];
        let cases: &[(Names, Names, Names, Option<&str>)] = &[
            (&["alice.example"], &[], &[], Some("alice")),
            // A server certificate for the DNS name alice.example is not alice's client CN.
            (&[], &["alice.example"], &[], None),
            (&[], &["bob.example"], &[], Some("bob")),
            (&["bob.example"], &[], &[], None),
            (&[], &[], &["spiffe://tl/carol"], Some("carol")),
            (&["spiffe://tl/carol"], &["spiffe://tl/carol"], &[], None),
            (&[], &[], &["spiffe://tl/carol/x"], None),
        ];
        for (cns, dns, uris, expected) in cases {
            let got = who(&keys, &cert([0; 32], cns, dns, uris));
            match expected {
                Some(client) => assert_eq!(got.unwrap(), *client, "{cns:?} {dns:?} {uris:?}"),
                None => assert!(
                    matches!(got, Err(GatewayError::CertificateUnknown)),
                    "{cns:?} {dns:?} {uris:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn several_cns_identify_when_they_agree_and_are_refused_when_they_do_not() {
        let client = |id: &str, subject: &str| ClientSettings {
            cert_subject: Some(subject.parse().unwrap()),
            ..ClientSettings::with_key(id, &["member"], Sha256::digest(id.as_bytes()).into())
        };
        let keys = ClientKeys::new(&[client("alice", "CN=alice.svc"), client("bob", "CN=bob.svc")]);
        // The last CN does not win: both name a client, so nobody is chosen.
        assert!(matches!(
            who(&keys, &cert([0; 32], &["bob.svc", "alice.svc"], &[], &[])),
            Err(GatewayError::CertificateAmbiguous)
        ));
        assert_eq!(
            who(&keys, &cert([0; 32], &["team", "alice.svc"], &[], &[])).unwrap(),
            "alice"
        );
        assert_eq!(
            who(&keys, &cert([0; 32], &["bob.svc", "other"], &[], &[])).unwrap(),
            "bob"
        );
    }

    #[test]
    fn a_certificate_not_for_client_auth_or_past_its_not_after_identifies_nobody() {
        let keys = certificate_clients();
        let mut server_only = cert([7; 32], &["alice.example"], &[], &[]);
        server_only.client_auth = false;
        assert!(matches!(
            who(&keys, &server_only),
            Err(GatewayError::CertificateUnknown)
        ));
        let mut expired = cert([0; 32], &["alice.example"], &[], &[]);
        expired.not_after = Some(unix_seconds(SystemTime::now()) - 1);
        let error = who(&keys, &expired).unwrap_err();
        assert_eq!(error.code(), "certificate_expired");
        assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED);
        // With a key too: the expired certificate still refuses the request.
        let mut with_key = HeaderMap::new();
        with_key.insert("x-api-key", HeaderValue::from_static("alice"));
        assert!(matches!(
            keys.identify(&with_key, Some(&expired)),
            Err(GatewayError::CertificateExpired { .. })
        ));
    }

    #[test]
    fn an_untyped_subject_is_refused_with_the_fix() {
        assert_eq!(
            "CN=a.svc".parse::<CertSubject>().unwrap(),
            CertSubject::CommonName("a.svc".into())
        );
        assert_eq!(
            "DNS:a.svc".parse::<CertSubject>().unwrap(),
            CertSubject::Dns("a.svc".into())
        );
        assert_eq!(
            "URI:spiffe://tl/a".parse::<CertSubject>().unwrap(),
            CertSubject::Uri("spiffe://tl/a".into())
        );
        let error = "reporting.svc".parse::<CertSubject>().unwrap_err();
        assert_eq!(
            error,
            r#"cert_subject "reporting.svc" must say which name it matches: "CN=reporting.svc", "DNS:reporting.svc" or "URI:spiffe://...""#
        );
        for bad in ["CN=", "cn=a.svc", "dns:a.svc", "URI:"] {
            assert!(bad.parse::<CertSubject>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_matches_the_documented_example() {
        assert_eq!(
            key_digest_hex("tlgw_alice_example_key"),
            "d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6"
        );
        assert_eq!(
            key_digest_hex("tlgw_bob_example_key"),
            "7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531"
        );
    }

    #[test]
    fn known_keys_map_to_their_principal_and_others_to_none() {
        let keys = keys();
        assert_eq!(
            keys.authenticate(b"tlgw_alice_example_key")
                .unwrap()
                .0
                .client
                .as_str(),
            "alice"
        );
        assert_eq!(
            keys.authenticate(b"tlgw_bob_example_key")
                .unwrap()
                .0
                .client
                .as_str(),
            "bob"
        );
        assert!(keys.authenticate(b"tlgw_bob_example_kez").is_err());
        assert!(keys.authenticate(b"").is_err());
        assert!(ClientKeys::default().authenticate(b"anything").is_err());
    }

    #[test]
    fn every_one_of_many_clients_is_found_and_no_stranger() {
        let clients: Vec<ClientSettings> = (0..300)
            .map(|i| {
                ClientSettings::with_key(
                    &format!("c{i}"),
                    &[],
                    Sha256::digest(format!("key-{i}").as_bytes()).into(),
                )
            })
            .collect();
        let keys = ClientKeys::new(&clients);
        for i in 0..300 {
            let (found, _) = keys.authenticate(format!("key-{i}").as_bytes()).unwrap();
            assert_eq!(found.client.as_str(), format!("c{i}"));
        }
        for i in 300..1300 {
            assert!(keys.authenticate(format!("key-{i}").as_bytes()).is_err());
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn key_is_read_from_x_api_key_or_bearer_and_never_guessed() {
        let ok: &[&[(&str, &str)]] = &[
            &[("x-api-key", "k1")],
            &[("authorization", "Bearer k1")],
            &[("authorization", "bearer  k1 ")],
            &[("x-api-key", "k1"), ("authorization", "Bearer k1")],
        ];
        for case in ok {
            assert_eq!(presented_key(&headers(case)).unwrap(), b"k1", "{case:?}");
        }
        let missing: &[&[(&str, &str)]] = &[&[], &[("x-api-key", "")], &[("x-apikey", "k1")]];
        for case in missing {
            assert!(
                matches!(
                    presented_key(&headers(case)),
                    Err(GatewayError::MissingCredentials)
                ),
                "{case:?}"
            );
        }
        let conflicting: &[&[(&str, &str)]] = &[
            &[("x-api-key", "k1"), ("x-api-key", "k2")],
            &[("x-api-key", "k1"), ("authorization", "Bearer k2")],
        ];
        for case in conflicting {
            assert!(
                matches!(
                    presented_key(&headers(case)),
                    Err(GatewayError::ConflictingCredentials)
                ),
                "{case:?}"
            );
        }
        assert!(matches!(
            presented_key(&headers(&[("authorization", "Basic azE6")])),
            Err(GatewayError::InvalidCredentials)
        ));
    }
}
