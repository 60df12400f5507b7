//! The `clients:` section, read and compiled into [`ClientSettings`] (`config` assembles it): ids,
//! key digests (one or several labelled keys with expiry), certificate identities, caps.

use std::collections::HashSet;

use serde::Deserialize;

use super::{CertSubject, ClientKey, ClientSettings};
use crate::ids::{ClientId, Role};
use crate::settings::{Invalid, Seg};
use crate::tls::TlsSettings;
use crate::units::parse_hex;

/// A lowercase hex SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct KeyDigest(pub [u8; 32]);

impl TryFrom<String> for KeyDigest {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        parse_hex::<32>(&value).map(KeyDigest).ok_or_else(|| {
            format!("invalid key_sha256 {value:?}: expected 64 lowercase hex digits (tl-gateway keygen prints one)")
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    id: ClientId,
    #[serde(default)]
    roles: Vec<Role>,
    key_sha256: Option<KeyDigest>,
    keys: Option<Vec<RawKey>>,
    cert_sha256: Option<KeyDigest>,
    cert_subject: Option<String>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sha256: KeyDigest,
    label: Option<String>,
    expires: Option<String>,
}

/// Compile `clients:` (`tls`: whether certificate identities can be presented at all).
pub fn compile_clients(
    raw: Vec<RawClient>,
    tls: Option<&TlsSettings>,
) -> Result<Vec<ClientSettings>, Invalid> {
    let mut ids = HashSet::new();
    let mut digests = HashSet::new();
    let mut certificates = HashSet::new();
    let mut subjects = HashSet::new();
    let mut clients = Vec::with_capacity(raw.len());
    for (i, client) in raw.into_iter().enumerate() {
        let at = |key: &'static str| [Seg::Key("clients"), Seg::Index(i), Seg::Key(key)];
        if !ids.insert(client.id.clone()) {
            return Err(Invalid::new(
                &at("id"),
                format!("duplicate client id {:?}", client.id.as_str()),
            ));
        }
        let short = client.key_sha256.is_some();
        let keys = match (client.key_sha256, client.keys) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    &at("keys"),
                    "give key_sha256 (one key) or keys (several, with labels), not both".into(),
                ))
            }
            (Some(digest), None) => vec![ClientKey::new(digest.0)],
            (None, Some(raw_keys)) => {
                let mut labels = HashSet::new();
                let mut keys = Vec::with_capacity(raw_keys.len());
                for (k, key) in raw_keys.into_iter().enumerate() {
                    let key_at = [
                        Seg::Key("clients"),
                        Seg::Index(i),
                        Seg::Key("keys"),
                        Seg::Index(k),
                    ];
                    let label = key.label.unwrap_or_else(|| format!("key-{}", k + 1));
                    if label.is_empty()
                        || label.len() > 64
                        || !label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    {
                        return Err(Invalid::new(
                            &key_at,
                            format!("label {label:?}: 1-64 of A-Z a-z 0-9 . _ -"),
                        ));
                    }
                    if !labels.insert(label.clone()) {
                        return Err(Invalid::new(
                            &key_at,
                            format!("label {label:?} is used twice for this client"),
                        ));
                    }
                    let expires = match key.expires {
                        None => None,
                        Some(text) => Some(humantime::parse_rfc3339_weak(&text).map_err(|e| {
                            Invalid::new(
                                &key_at,
                                format!("expires {text:?} is not an RFC 3339 time such as 2027-03-01T00:00:00Z: {e}"),
                            )
                        })?),
                    };
                    keys.push(ClientKey {
                        sha256: key.sha256.0,
                        label,
                        expires,
                        revoked: false,
                    });
                }
                keys
            }
            (None, None) => Vec::new(),
        };
        for key in &keys {
            if !digests.insert(key.sha256) {
                return Err(Invalid::new(
                    &at(if short { "key_sha256" } else { "keys" }),
                    "the same key digest is configured twice".into(),
                ));
            }
        }
        let has_certificate = client.cert_sha256.is_some() || client.cert_subject.is_some();
        if has_certificate && tls.is_none_or(|t| t.client_ca_file.is_none()) {
            return Err(Invalid::new(
                &at(if client.cert_sha256.is_some() { "cert_sha256" } else { "cert_subject" }),
                "a client certificate can identify a client only with tls.client_ca_file (the CA that verifies it)".into(),
            ));
        }
        if keys.is_empty() && !has_certificate {
            return Err(Invalid::new(
                &at("id"),
                format!(
                    "client {:?} has no credential: give key_sha256, keys, cert_sha256 or cert_subject",
                    client.id.as_str()
                ),
            ));
        }
        if let Some(digest) = client.cert_sha256 {
            if !certificates.insert(digest.0) {
                return Err(Invalid::new(
                    &at("cert_sha256"),
                    "the same certificate is configured for two clients".into(),
                ));
            }
        }
        let cert_subject = match &client.cert_subject {
            None => None,
            Some(text) => {
                let subject: CertSubject = text
                    .parse()
                    .map_err(|e| Invalid::new(&at("cert_subject"), e))?;
                if !subjects.insert(subject.clone()) {
                    return Err(Invalid::new(
                        &at("cert_subject"),
                        format!("cert_subject {text:?} names two clients"),
                    ));
                }
                Some(subject)
            }
        };
        clients.push(ClientSettings {
            id: client.id,
            roles: client.roles,
            keys,
            cert_sha256: client.cert_sha256.map(|d| d.0),
            cert_subject,
            max_in_flight: client.max_in_flight.map(|n| n.max(1)),
            disabled: false,
        });
    }
    Ok(clients)
}
