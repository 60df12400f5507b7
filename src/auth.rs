//! Authentication: a client's personal key → [`Principal`].
//!
//! Only SHA-256 digests of client keys are held. The presented key is hashed and compared against
//! every configured digest in constant time, so neither the match position nor a near-miss shows in
//! the timing.

use std::sync::Arc;

use http::{header, HeaderMap, Request};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::classify::Operation;
use crate::error::GatewayError;
use crate::gate::{Admit, GateLayer};
use crate::ids::{ClientId, Role};

/// A team member as configured (`clients[]`): the authentication layer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Stable client id (used in logs, audit and metric labels).
    pub id: ClientId,
    /// Roles the policy refers to.
    pub roles: Vec<Role>,
    /// SHA-256 of the client's raw personal key.
    pub key_sha256: [u8; 32],
    /// Requests in flight at most for this client (overrides `server.max_in_flight_per_client`).
    pub max_in_flight: Option<usize>,
}

/// The authenticated caller, as a typed request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Configured client id.
    pub client: ClientId,
    /// The client's roles.
    pub roles: Arc<[Role]>,
}

impl Principal {
    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
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

/// The configured clients, by key digest.
///
/// Digests are bucketed by their first byte, and every digest in the bucket is compared in constant
/// time: lookup cost stays flat with hundreds of clients, and timing reveals at most whether the
/// presented key's SHA-256 shares its first byte with some client's, which says nothing about a key.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    digests: Vec<[u8; 32]>,
    principals: Vec<Principal>,
    buckets: Vec<Vec<u32>>,
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
        for (i, client) in clients.iter().enumerate() {
            buckets[usize::from(client.key_sha256[0])].push(i as u32);
        }
        ClientKeys {
            digests: clients.iter().map(|c| c.key_sha256).collect(),
            principals: clients
                .iter()
                .map(|c| Principal {
                    client: c.id.clone(),
                    roles: c.roles.clone().into(),
                })
                .collect(),
            buckets,
        }
    }

    /// The principal whose key this is, if any.
    pub fn authenticate(&self, key: &[u8]) -> Option<&Principal> {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let bucket = &self.buckets[usize::from(presented[0])];
        // Visit every candidate and select without branching on secret data.
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for &i in bucket {
            let hit = self.digests[i as usize].ct_eq(&presented);
            index.conditional_assign(&i, hit);
            found |= hit;
        }
        if bool::from(found) {
            self.principals.get(index as usize)
        } else {
            None
        }
    }
}

/// Lowercase hex SHA-256 of a raw key, as written in `clients[].key_sha256`.
pub fn key_digest_hex(key: &str) -> String {
    crate::units::hex(&Sha256::digest(key.as_bytes()))
}

/// The personal key a request presents: exactly one, in `x-api-key` or `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Result<&[u8], GatewayError> {
    let mut keys = Vec::with_capacity(1);
    for value in headers.get_all("x-api-key") {
        keys.push(value.as_bytes());
    }
    for value in headers.get_all(header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        let scheme_ok = bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ");
        if !scheme_ok {
            return Err(GatewayError::InvalidCredentials);
        }
        keys.push(trim_ascii(&bytes[7..]));
    }
    match keys.as_slice() {
        [] => Err(GatewayError::MissingCredentials),
        [[]] => Err(GatewayError::MissingCredentials),
        [key] => Ok(key),
        // The same key in both headers is harmless; anything else is ambiguous.
        [first, rest @ ..] if rest.iter().all(|k| k.ct_eq(first).into()) => Ok(first),
        _ => Err(GatewayError::ConflictingCredentials),
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

/// The authentication layer: every request must present a configured client's key; its
/// [`Principal`] is inserted for the layers below.
#[derive(Clone, Debug)]
pub struct Authenticate {
    keys: Arc<ClientKeys>,
}

impl Authenticate {
    /// The layer authenticating against these clients.
    pub fn layer(keys: Arc<ClientKeys>) -> GateLayer<Authenticate> {
        GateLayer::new(Authenticate { keys })
    }
}

impl<B> Admit<B> for Authenticate {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let key = presented_key(req.headers())?;
        let principal = self
            .keys
            .authenticate(key)
            .cloned()
            .ok_or(GatewayError::InvalidCredentials)?;
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
        let client = |id: &str, role: &str, key: &str| ClientSettings {
            id: id.parse().unwrap(),
            roles: vec![role.parse().unwrap()],
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            max_in_flight: None,
        };
        ClientKeys::new(&[
            client("alice", "admin", "tlgw_alice_example_key"),
            client("bob", "member", "tlgw_bob_example_key"),
        ])
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
                .client
                .as_str(),
            "alice"
        );
        assert_eq!(
            keys.authenticate(b"tlgw_bob_example_key")
                .unwrap()
                .client
                .as_str(),
            "bob"
        );
        assert!(keys.authenticate(b"tlgw_bob_example_kez").is_none());
        assert!(keys.authenticate(b"").is_none());
        assert!(ClientKeys::default().authenticate(b"anything").is_none());
    }

    #[test]
    fn every_one_of_many_clients_is_found_and_no_stranger() {
        let clients: Vec<ClientSettings> = (0..300)
            .map(|i| ClientSettings {
                id: format!("c{i}").parse().unwrap(),
                roles: vec![],
                key_sha256: Sha256::digest(format!("key-{i}").as_bytes()).into(),
                max_in_flight: None,
            })
            .collect();
        let keys = ClientKeys::new(&clients);
        for i in 0..300 {
            let found = keys.authenticate(format!("key-{i}").as_bytes()).unwrap();
            assert_eq!(found.client.as_str(), format!("c{i}"));
        }
        for i in 300..1300 {
            assert!(keys.authenticate(format!("key-{i}").as_bytes()).is_none());
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
