//! The HTTP client openidconnect talks to the identity provider with (discovery, the issuer's
//! keys, the token endpoint): hyper's client over the same rustls and ring as the rest of the
//! gateway, so no second HTTP or TLS stack. It follows no redirects, ignores proxy environment
//! variables, verifies TLS against the WebPKI roots, gives up after [`TIMEOUT`] and reads at most
//! [`MAX_BODY`] of an answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The longest one exchange with the provider may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (discovery documents and key sets are a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Why an exchange with the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer within [`TIMEOUT`].
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    /// Connecting or exchanging failed.
    #[error("{0}")]
    Transport(String),
    /// The answer was longer than [`MAX_BODY`] or broke off.
    #[error("the answer could not be read: {0}")]
    Body(String),
}

/// The provider's HTTP client; cheap to clone.
#[derive(Clone, Debug)]
pub struct OidcHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl OidcHttp {
    /// A client for http:// (loopback issuers, checked by the settings) and https:// URLs.
    pub fn new() -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(OidcHttp {
            // No idle connections kept: sign-ins are rare, and a kept connection's task lives on
            // the serving worker that opened it (docs/architecture.md, "workers").
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(https),
        })
    }

    async fn exchange(
        &self,
        request: openidconnect::HttpRequest,
    ) -> Result<openidconnect::HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let response = tokio::time::timeout(TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Transport(chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body.to_vec()))
        })
        .await
        .map_err(|_| HttpError::Timeout)??;
        Ok(response)
    }
}

/// An error with its sources (hyper's own message says little: "client error (Connect)").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl<'c> openidconnect::AsyncHttpClient<'c> for OidcHttp {
    type Error = HttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(self.exchange(request))
    }
}
