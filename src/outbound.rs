//! The gateway's outbound HTTP clients, set up in one place: one crypto provider (ring, passed
//! explicitly: no process-wide default is assumed), the webpki roots, rustls' safe protocol
//! versions, and a connect timeout. The forwarder builds its own pooled connections on
//! [`tls_config`]; the approvals webhook and the CLI use [`client`].

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A TLS client configuration trusting the webpki roots, offering `alpn` (e.g. `http/1.1`).
pub fn tls_config(alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// An HTTP/1.1 client for `http://` and `https://` URLs (TLS from [`tls_config`]), connecting
/// within `connect_timeout`.
pub fn client<B>(
    connect_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, rustls::Error>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    // hyper-rustls sets the ALPN itself (`enable_http1`).
    let tls = tls_config(&[])?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
