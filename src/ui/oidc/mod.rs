//! Signing in to the page with the team's identity provider (`ui.oidc`; docs/architecture.md,
//! "Signing in"): the authorization-code flow with PKCE (S256), `state` and `nonce`, through the
//! `openidconnect` crate, which verifies the ID token (signature with a key from the issuer's
//! JWKS, issuer, audience, expiry, nonce).
//!
//! - `GET /tl-gateway/ui/login`: a pending sign-in (state, nonce, PKCE verifier) is stored in the
//!   record store under a random id, which goes into the short-lived login cookie `tlgw_login`
//!   (`Path=/tl-gateway/ui/callback`, `SameSite=Lax` so the provider's redirect back carries it,
//!   10 minutes); the browser is sent to the provider.
//! - `GET /tl-gateway/ui/callback`: the pending sign-in is taken from the store (once: a replayed
//!   callback finds nothing), `state` compared in constant time, the code exchanged with the
//!   verifier, the ID token verified — on an unknown key id the issuer's keys are fetched again
//!   once (a provider rotating its keys) — and a session started ([`session`]); back to the page.
//! - `POST /tl-gateway/ui/logout`: the session's record is removed (CSRF token required).
//!
//! The person's client id is the `client_claim` of the verified ID token and their roles the
//! `role_map` of its `roles_claim`; someone with no mapped role is signed in with no rights.

pub mod http;
pub mod session;
pub mod settings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{header, HeaderValue, Response, StatusCode};
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, TokenResponse,
};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use self::http::OidcHttp;
use self::session::{
    cookie, set_cookie, LoginRecord, Sessions, LOGIN_COOKIE, LOGIN_TTL, SESSION_COOKIE,
};
pub use self::settings::{OidcSettings, RawOidc};
use crate::body::{self, GatewayBody};
use crate::error::GatewayError;
use crate::ids::ClientId;
use crate::store::RecordStore;

/// The client as discovery builds it (authorization endpoint set; token endpoint as discovered).
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The provider as last discovered, and when its keys were last fetched again.
#[derive(Default)]
struct Discovered {
    client: Option<Arc<Client>>,
    refreshed: Option<Instant>,
}

/// The issuer's keys are fetched again on an unknown key id at most this often (a stream of
/// forged tokens does not turn into a stream of requests to the provider).
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The page's sign-in: settings, the provider (discovered on first use), the sessions.
pub struct SignIn {
    settings: Arc<OidcSettings>,
    http: OidcHttp,
    sessions: Sessions,
    provider: Mutex<Discovered>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> GatewayError {
    GatewayError::SignInUnavailable(format!("{what}: {e}"))
}

fn failed(message: &'static str, detail: impl std::fmt::Display) -> GatewayError {
    GatewayError::SignInFailed {
        message,
        detail: detail.to_string(),
    }
}

impl SignIn {
    /// The sign-in for `settings`, keeping sessions in `records`.
    pub fn new(settings: OidcSettings, records: RecordStore) -> Result<Self, rustls::Error> {
        Ok(SignIn {
            sessions: Sessions::new(records, settings.session_ttl),
            settings: Arc::new(settings),
            http: OidcHttp::new()?,
            provider: Mutex::new(Discovered::default()),
        })
    }

    /// The sessions (for the session gate of the API).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The client, discovering the provider on first use; `refresh` discovers it again (new
    /// keys), unless a refresh happened within [`REFRESH_AT_MOST_EVERY`].
    async fn client(&self, refresh: bool) -> Result<Arc<Client>, GatewayError> {
        let mut provider = self.provider.lock().await;
        if let Some(client) = &provider.client {
            let recently = provider
                .refreshed
                .is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY);
            if !refresh || recently {
                return Ok(client.clone());
            }
        }
        let issuer =
            IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| unavailable("issuer", e))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| unavailable("discovery", e))?;
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone())
            .map_err(|e| unavailable("redirect_url", e))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            openidconnect::ClientId::new(self.settings.client_id.clone()),
            Some(openidconnect::ClientSecret::new(
                self.settings.client_secret.0.clone(),
            )),
        )
        .set_redirect_uri(redirect);
        let client = Arc::new(client);
        provider.client = Some(client.clone());
        if refresh {
            provider.refreshed = Some(Instant::now());
        }
        Ok(client)
    }

    /// `GET /tl-gateway/ui/login`: store a pending sign-in and send the browser to the provider.
    pub async fn login(&self) -> Result<Response<GatewayBody>, GatewayError> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let id = self
            .sessions
            .begin_login(&LoginRecord {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            })
            .await?;
        let mut response = redirect(url.as_str())?;
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                LOGIN_COOKIE,
                &id,
                settings::CALLBACK_PATH,
                "Lax",
                LOGIN_TTL,
                self.settings.secure_cookies,
            ),
        );
        Ok(response)
    }

    /// `GET /tl-gateway/ui/callback?code=&state=`: finish the flow, start a session, back to the
    /// page.
    pub async fn callback(
        &self,
        headers: &::http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match &*key {
                "code" => &mut code,
                "state" => &mut state,
                "error" => &mut error,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(failed("the answer repeats a parameter", key));
            }
        }
        let login_id = cookie(headers, LOGIN_COOKIE)
            .ok()
            .flatten()
            .ok_or_else(|| {
                failed(
                    "this browser has no sign-in in progress (it expires after 10 minutes)",
                    "no login cookie",
                )
            })?
            .to_owned();
        // Taken before anything else is checked: whatever happens next, it is used up.
        let login = self.sessions.take_login(&login_id).await?.ok_or_else(|| {
            failed(
                "this sign-in was already finished or has expired (a callback is used once)",
                "no pending sign-in for the login cookie",
            )
        })?;
        let state = state.unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(login.state.as_bytes())) {
            return Err(failed(
                "the answer's state is not the one this browser's sign-in sent",
                "state mismatch",
            ));
        }
        if let Some(error) = error {
            return Err(failed("the identity provider refused the sign-in", error));
        }
        let code = code.ok_or_else(|| failed("the answer carries no code", "no code"))?;
        let client = self.client(false).await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| unavailable("token endpoint", e))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(answer) => failed(
                    "the identity provider refused the code (used before, expired, or not from this sign-in)",
                    answer,
                ),
                RequestTokenError::Request(e) => unavailable("token endpoint", e),
                other => failed("the identity provider's token answer could not be read", other),
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| failed("the identity provider sent no ID token", "no id_token"))?;
        let nonce = Nonce::new(login.nonce);
        let verified = match self.verify(&client, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // A key the provider may have published since: fetch its keys again, once.
                let client = self.client(true).await?;
                self.verify(&client, id_token, &nonce)
            }
            other => other,
        }
        .map_err(refusal)?;
        let (issuer, subject) = verified;
        let claims = payload(id_token)?;
        let client_id = claims
            .get(&self.settings.client_claim)
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<ClientId>().ok())
            .ok_or_else(|| {
                failed(
                    "the ID token's client claim is missing or not a valid client id",
                    format!("claim {}", self.settings.client_claim),
                )
            })?;
        let values: Vec<&str> = match self
            .settings
            .roles_claim
            .as_ref()
            .and_then(|c| claims.get(c))
        {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str()).collect()
            }
            Some(serde_json::Value::String(one)) => one.split_whitespace().collect(),
            _ => Vec::new(),
        };
        let roles = self.settings.roles_for(values);
        let session = self
            .sessions
            .start(&client_id, &roles, &issuer, &subject)
            .await?;
        tracing::info!(
            client = client_id.as_str(),
            issuer = issuer.as_str(),
            subject = subject.as_str(),
            roles = ?roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "signed in on the page"
        );
        let mut response = redirect("./")?;
        let headers = response.headers_mut();
        headers.append(
            header::SET_COOKIE,
            set_cookie(
                SESSION_COOKIE,
                &session,
                "/tl-gateway/",
                "Strict",
                self.sessions.ttl(),
                self.settings.secure_cookies,
            ),
        );
        headers.append(
            header::SET_COOKIE,
            set_cookie(
                LOGIN_COOKIE,
                "",
                settings::CALLBACK_PATH,
                "Lax",
                Duration::ZERO,
                self.settings.secure_cookies,
            ),
        );
        Ok(response)
    }

    /// Verify the ID token: the issuer's and subject's names when it holds.
    fn verify(
        &self,
        client: &Client,
        id_token: &CoreIdToken,
        nonce: &Nonce,
    ) -> Result<(String, String), ClaimsVerificationError> {
        let verifier = client.id_token_verifier();
        let claims = id_token.claims(&verifier, nonce)?;
        Ok((
            claims.issuer().as_str().to_owned(),
            claims.subject().as_str().to_owned(),
        ))
    }

    /// `POST /tl-gateway/ui/logout`: end the session (the page sends its CSRF token).
    pub async fn logout(
        &self,
        headers: &::http::HeaderMap,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        if let Ok(Some(id)) = cookie(headers, SESSION_COOKIE) {
            match self.sessions.find(id).await {
                Ok((record, _)) => {
                    if !session::csrf_ok(headers, &record) {
                        return Err(GatewayError::CsrfFailed);
                    }
                    self.sessions.end(id).await?;
                    tracing::info!(client = record.client.as_str(), "signed out on the page");
                }
                // Already ended: the cookie is cleared all the same.
                Err(GatewayError::SessionEnded(_)) => {}
                Err(other) => return Err(other),
            }
        }
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                SESSION_COOKIE,
                "",
                "/tl-gateway/",
                "Strict",
                Duration::ZERO,
                self.settings.secure_cookies,
            ),
        );
        Ok(response)
    }
}

/// The person-facing reason an ID token was refused.
fn refusal(e: ClaimsVerificationError) -> GatewayError {
    let message = match &e {
        ClaimsVerificationError::InvalidAudience(_) => {
            "the ID token was not issued for this gateway"
        }
        ClaimsVerificationError::SignatureVerification(_) => {
            "the ID token's signature does not verify with the issuer's published keys"
        }
        ClaimsVerificationError::Expired(_) => "the ID token has expired",
        ClaimsVerificationError::InvalidIssuer(_) => "the ID token is from another issuer",
        ClaimsVerificationError::InvalidNonce(_) => "the ID token is not for this sign-in (nonce)",
        _ => "the ID token did not verify",
    };
    failed(message, e)
}

/// The claims of an ID token that has been verified: its payload as JSON.
fn payload(
    id_token: &CoreIdToken,
) -> Result<serde_json::Map<String, serde_json::Value>, GatewayError> {
    let compact = id_token.to_string();
    let part = compact
        .split('.')
        .nth(1)
        .ok_or_else(|| failed("the ID token could not be read", "no payload"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| failed("the ID token could not be read", e))?;
    serde_json::from_slice(&bytes).map_err(|e| failed("the ID token could not be read", e))
}

/// A 303 to `location`, never cached.
fn redirect(location: &str) -> Result<Response<GatewayBody>, GatewayError> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let value = HeaderValue::from_str(location)
        .map_err(|_| GatewayError::Internal("a redirect location was not a header value"))?;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
