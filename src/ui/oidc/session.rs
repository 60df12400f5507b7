//! Sign-in sessions of the page: server-side records in the record store (so every replica knows
//! them), behind the cookie `tlgw_session`, and the gate that turns a live session into the
//! request's identity (docs/architecture.md, "Signing in").
//!
//! - The cookie holds a random id (256 bits); the store holds the record under the id's SHA-256
//!   (`session:{hex}`), so a copy of the store is no pile of live cookies. A record expires at
//!   `session_ttl` (kept an hour longer so an expired session is answered as such); sign-out
//!   removes it.
//! - Every record carries a CSRF token (256 bits, handed to the page by `GET /tl-gateway/v1/me`);
//!   a state-changing call (any method but GET and HEAD) with the cookie must send it in
//!   `x-tl-gateway-csrf`, compared in constant time, or is refused with 403 `csrf_failed`.
//! - The session cookie is `SameSite=Strict`: the provider's redirect back (a cross-site
//!   navigation) never needs it; it carries the separate short-lived login cookie instead.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Request};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::SignedIn;
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::gate::{AdmitAsync, AsyncGateLayer};
use crate::ids::{ClientId, Role};
use crate::store::RecordStore;

/// The session cookie.
pub const SESSION_COOKIE: &str = "tlgw_session";

/// The login cookie: names the pending sign-in (PKCE verifier, nonce, state) for the callback.
pub const LOGIN_COOKIE: &str = "tlgw_login";

/// The header a state-changing call of the page carries the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-tl-gateway-csrf";

/// How long past its end an expired session's record is kept (to say "expired", not "unknown").
const GRACE: Duration = Duration::from_secs(3600);

/// How long a sign-in may take between `/login` and `/callback`.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// The session's CSRF token, for `GET /tl-gateway/v1/me` (a request extension the session gate
/// inserts beside the identity).
#[derive(Debug, Clone)]
pub struct SessionCsrf(pub Arc<str>);

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// The client id the provider's claim named.
    pub client: String,
    /// Roles from `role_map`.
    pub roles: Vec<String>,
    /// The issuer.
    pub issuer: String,
    /// The ID token's `sub`.
    pub subject: String,
    /// The CSRF token.
    pub csrf: String,
    /// When it began and ends (ms since the epoch).
    pub created_ms: u64,
    /// See `created_ms`.
    pub expires_ms: u64,
}

/// A pending sign-in as stored (between `/login` and `/callback`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginRecord {
    /// The `state` sent to the provider.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub pkce_verifier: String,
}

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> String {
    crate::units::hex(&rand::random::<[u8; 32]>())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store key of a session id (its SHA-256, never the id).
fn session_key(id: &str) -> String {
    format!(
        "session:{}",
        crate::units::hex(&Sha256::digest(id.as_bytes()))
    )
}

/// The store key of a login id.
fn login_key(id: &str) -> String {
    format!(
        "oidc-login:{}",
        crate::units::hex(&Sha256::digest(id.as_bytes()))
    )
}

/// Two different values of one cookie were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieAmbiguous;

/// The value of cookie `name`: `Ok(None)` when absent; two different values are refused (a
/// cookie planted beside ours, e.g. from a sibling domain).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, CookieAmbiguous> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let Some((key, value)) = pair.trim().split_once('=') else {
                continue;
            };
            if key == name {
                match found {
                    Some(other) if other != value => return Err(CookieAmbiguous),
                    _ => found = Some(value),
                }
            }
        }
    }
    Ok(found)
}

/// A `Set-Cookie` value: `HttpOnly`, the given path, `SameSite`, `Secure` when asked for.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: Duration,
    secure: bool,
) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={}{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("tlgw_invalid=1"))
}

/// The sessions and pending sign-ins in the record store.
#[derive(Clone, Debug)]
pub struct Sessions {
    records: RecordStore,
    ttl: Duration,
}

fn store_error(e: crate::store::StoreError) -> GatewayError {
    GatewayError::StoreUnavailable(format!("sessions: {e}"))
}

impl Sessions {
    /// Sessions lasting `ttl`, in `records`.
    pub fn new(records: RecordStore, ttl: Duration) -> Self {
        Sessions { records, ttl }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Store a pending sign-in; its id (for the login cookie).
    pub async fn begin_login(&self, login: &LoginRecord) -> Result<String, GatewayError> {
        let id = random_token();
        let value = serde_json::to_string(login).map_err(|e| GatewayError::Internal(leak(e)))?;
        self.records
            .insert(&login_key(&id), &value, LOGIN_TTL)
            .await
            .map_err(store_error)?;
        Ok(id)
    }

    /// Take the pending sign-in `id` names, once: a second callback with the same cookie (a
    /// replayed code) finds nothing.
    pub async fn take_login(&self, id: &str) -> Result<Option<LoginRecord>, GatewayError> {
        let key = login_key(id);
        let Some(value) = self.records.get(&key).await.map_err(store_error)? else {
            return Ok(None);
        };
        if !self
            .records
            .remove(&key, &value)
            .await
            .map_err(store_error)?
        {
            return Ok(None);
        }
        Ok(serde_json::from_str(&value).ok())
    }

    /// Start a session; its id (for the session cookie).
    pub async fn start(
        &self,
        client: &ClientId,
        roles: &[Role],
        issuer: &str,
        subject: &str,
    ) -> Result<String, GatewayError> {
        let id = random_token();
        let now = now_ms();
        let record = SessionRecord {
            client: client.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            csrf: random_token(),
            created_ms: now,
            expires_ms: now + self.ttl.as_millis() as u64,
        };
        let value = serde_json::to_string(&record).map_err(|e| GatewayError::Internal(leak(e)))?;
        self.records
            .insert(&session_key(&id), &value, self.ttl + GRACE)
            .await
            .map_err(store_error)?;
        Ok(id)
    }

    /// The live session `id` names; 401 `session_expired` when it ended.
    pub async fn find(&self, id: &str) -> Result<(SessionRecord, String), GatewayError> {
        let value = self
            .records
            .get(&session_key(id))
            .await
            .map_err(store_error)?
            .ok_or(GatewayError::SessionEnded(
                "the sign-in session is not known (signed out, or expired)",
            ))?;
        let record: SessionRecord = serde_json::from_str(&value)
            .map_err(|_| GatewayError::SessionEnded("the sign-in session could not be read"))?;
        if now_ms() >= record.expires_ms {
            return Err(GatewayError::SessionEnded("the sign-in session expired"));
        }
        Ok((record, value))
    }

    /// End the session `id` names (sign-out); whether there was one.
    pub async fn end(&self, id: &str) -> Result<bool, GatewayError> {
        let key = session_key(id);
        let Some(value) = self.records.get(&key).await.map_err(store_error)? else {
            return Ok(false);
        };
        self.records.remove(&key, &value).await.map_err(store_error)
    }
}

/// An internal error message for a record that did not serialise (cannot happen for these types).
fn leak(_: serde_json::Error) -> &'static str {
    "a session record could not be serialised"
}

/// Whether the CSRF token in `headers` is the session's (constant time).
pub fn csrf_ok(headers: &HeaderMap, record: &SessionRecord) -> bool {
    let mut values = headers.get_all(CSRF_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(sent), None) => bool::from(sent.as_bytes().ct_eq(record.csrf.as_bytes())),
        _ => false,
    }
}

/// The gate making a live session the identity of a call of the gateway's API
/// (`/tl-gateway/v1/…`): a request with the session cookie and no key. Calls of the TwelveLabs
/// API never use the session (scripts send keys), and a request with a key is judged by its key.
#[derive(Clone, Debug)]
pub struct ResolveSession {
    sessions: Sessions,
}

impl ResolveSession {
    /// The gate, as a layer.
    pub fn layer(sessions: Sessions) -> AsyncGateLayer<ResolveSession> {
        AsyncGateLayer::new(ResolveSession { sessions })
    }
}

impl<B: Send + 'static> AdmitAsync<B> for ResolveSession {
    fn concerns(&self, req: &Request<B>) -> bool {
        req.extensions()
            .get::<Operation>()
            .is_some_and(Operation::is_gateway)
            && matches!(
                crate::auth::presented_key(req.headers()),
                Err(GatewayError::MissingCredentials)
            )
            && !matches!(cookie(req.headers(), SESSION_COOKIE), Ok(None))
    }

    async fn admit(self, mut req: Request<B>) -> Result<Request<B>, GatewayError> {
        let id = cookie(req.headers(), SESSION_COOKIE)
            .map_err(|_| GatewayError::SessionEnded("two different session cookies were sent"))?
            .unwrap_or_default()
            .to_owned();
        let (record, _) = self.sessions.find(&id).await?;
        if !matches!(*req.method(), Method::GET | Method::HEAD) && !csrf_ok(req.headers(), &record)
        {
            return Err(GatewayError::CsrfFailed);
        }
        let client: ClientId = record
            .client
            .parse()
            .map_err(|_| GatewayError::SessionEnded("the sign-in session names no valid client"))?;
        let roles: Vec<Role> = record.roles.iter().filter_map(|r| r.parse().ok()).collect();
        req.extensions_mut()
            .insert(SessionCsrf(Arc::from(record.csrf.as_str())));
        req.extensions_mut().insert(SignedIn {
            client,
            roles: roles.into(),
            issuer: Arc::from(record.issuer.as_str()),
            subject: Arc::from(record.subject.as_str()),
        });
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_exactly_and_a_second_different_value_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; tlgw_session=abc; xtlgw_session=zzz"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Ok(Some("abc")));
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("tlgw_session=abc"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Ok(Some("abc")));
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("tlgw_session=other"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Err(CookieAmbiguous));
        assert_eq!(cookie(&HeaderMap::new(), SESSION_COOKIE), Ok(None));
    }

    #[test]
    fn session_cookies_are_http_only_strict_and_scoped() {
        let value = set_cookie(
            SESSION_COOKIE,
            "id",
            "/tl-gateway/",
            "Strict",
            Duration::from_secs(60),
            true,
        );
        assert_eq!(
            value,
            "tlgw_session=id; Path=/tl-gateway/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }

    #[tokio::test]
    async fn sessions_are_stored_hashed_expire_and_end() {
        let records = RecordStore::memory();
        let sessions = Sessions::new(records.clone(), Duration::from_millis(50));
        let client: ClientId = "bob+tl@example.com".parse().unwrap();
        let id = sessions
            .start(
                &client,
                &["member".parse().unwrap()],
                "https://idp",
                "sub-1",
            )
            .await
            .unwrap();
        assert!(records
            .get(&format!("session:{id}"))
            .await
            .unwrap()
            .is_none());
        let (record, _) = sessions.find(&id).await.unwrap();
        assert_eq!(record.client, "bob+tl@example.com");
        let mut headers = HeaderMap::new();
        assert!(!csrf_ok(&headers, &record));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&record.csrf).unwrap());
        assert!(csrf_ok(&headers, &record));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("0000"));
        assert!(!csrf_ok(&headers, &record));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let error = sessions.find(&id).await.unwrap_err();
        assert_eq!(error.code(), "session_expired");
        assert!(sessions.end(&id).await.unwrap());
        assert!(sessions.find(&id).await.is_err());
        assert!(!sessions.end(&id).await.unwrap());
    }

    #[tokio::test]
    async fn a_pending_sign_in_is_taken_once() {
        let sessions = Sessions::new(RecordStore::memory(), Duration::from_secs(60));
        let login = LoginRecord {
            state: "s".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
        };
        let id = sessions.begin_login(&login).await.unwrap();
        assert_eq!(sessions.take_login(&id).await.unwrap(), Some(login));
        assert_eq!(sessions.take_login(&id).await.unwrap(), None);
    }
}
