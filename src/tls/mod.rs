//! HTTPS on the client listener: the certificate, its hot reload, client certificates and their
//! revocation, and the refusal of plain HTTP.
//!
//! With `tls:` the client listener speaks TLS only (rustls, ring provider, TLS 1.2 and 1.3 or 1.3
//! only, ALPN `h2` and `http/1.1`). The certificate chain, key, client CA and client CRLs are files
//! watched like the upstream key file: a replaced set (a Kubernetes secret swap, a cert-manager
//! renewal, a new CRL) is used for new connections within about a second once the files are
//! stable, with no restart; SIGHUP loads them at once. A set that does not load (key not matching
//! the certificate, expired leaf, unreadable CA or CRL) keeps the last good one, is logged, makes
//! `/readyz` degraded, and is tried again every [`RETRY`] until it loads (a file briefly unreadable
//! heals by itself). With `client_ca_file` the handshake asks for a client certificate and refuses
//! one that does not verify (chain, validity, the clientAuth extended key usage when it has one,
//! revocation by `client_crl_file`); none at all is fine (the key decides then). A verified leaf
//! becomes a [`PeerCertificate`] on every request of the connection. A client speaking plain HTTP
//! to the port gets a clean 400 `tls_required` and the connection is closed.

pub mod demo;
pub mod settings;
pub mod x509;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::ext::PeerCertificate;
use crate::metrics::Metrics;

/// The lowest TLS version offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// The `tls:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to (asks for client certificates).
    pub client_ca_file: Option<PathBuf>,
    /// PEM or DER certificate revocation lists of the client CA(s) (needs `client_ca_file`).
    pub client_crl_file: Option<PathBuf>,
    /// The lowest TLS version offered.
    pub min_version: TlsVersion,
}

/// What a loaded certificate says about itself (for `check`, logs and the expiry metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    /// The leaf's subject CNs and DNS SANs, typed (`CN=…`, `DNS:…`).
    pub names: Vec<String>,
}

/// Build a rustls server configuration from the files; every check that can fail does.
pub fn build(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<(ServerConfig, Loaded), String> {
    let chain = read_certificates(&settings.cert_file)?;
    let leaf = x509::parse(&chain[0]).ok_or_else(|| {
        format!(
            "{}: the first certificate could not be read",
            settings.cert_file.display()
        )
    })?;
    let now = unix_now();
    if leaf.not_after_unix <= now {
        return Err(format!(
            "{}: the certificate expired at {}",
            settings.cert_file.display(),
            crate::units::rfc3339(
                UNIX_EPOCH + Duration::from_secs(leaf.not_after_unix.max(0) as u64)
            )
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|e| {
        format!(
            "{}: no usable private key: {e}",
            settings.key_file.display()
        )
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", settings.key_file.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            // No certificate is fine (the key decides); one that does not verify fails the
            // handshake. rustls requires clientAuth when the certificate lists extended key usages.
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated();
            if let Some(crl_path) = &settings.client_crl_file {
                // The client certificate's own revocation: its issuer's CRL must be in the file
                // (a leaf whose status is unknown fails, closed).
                verifier = verifier
                    .with_crls(read_crls(crl_path)?)
                    .only_check_end_entity_revocation();
            }
            let verifier = verifier.build().map_err(|e| {
                let file = settings.client_crl_file.as_deref().unwrap_or(path);
                format!("{} / {}: {e}", path.display(), file.display())
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut names: Vec<String> = leaf.subject_cns.iter().map(|n| format!("CN={n}")).collect();
    names.extend(leaf.dns_sans.iter().map(|n| format!("DNS:{n}")));
    Ok((
        config,
        Loaded {
            not_after: leaf.not_after_unix,
            serial: leaf.serial_hex,
            names,
        },
    ))
}

/// One certificate for every handshake (a reload swaps the whole configuration).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", path.display()));
    }
    Ok(chain)
}

/// The CRLs in `path`: PEM `X509 CRL` blocks, or one DER CRL.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    Err(format!(
        "{}: no X509 CRL block and not a DER CRL",
        path.display()
    ))
}

use crate::units::now_secs as unix_now;

/// The files' identities: what a reload compares.
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(settings: &TlsSettings) -> Stamps {
    [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.client_ca_file.as_ref(),
        settings.client_crl_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

/// The client listener's TLS: the current configuration, swapped when the files change.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    config: ArcSwap<ServerConfig>,
    health: Mutex<Option<String>>,
    /// The stamps of the set in use, and of a change seen but not yet stable.
    seen: Mutex<(Stamps, Option<Stamps>)>,
    /// When the last reload failed (it is tried again [`RETRY`] later).
    failed_at: Mutex<Option<tokio::time::Instant>>,
    metrics: Arc<Metrics>,
}

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// How long after a failed reload it is tried again, whether or not the files changed.
pub const RETRY: Duration = Duration::from_secs(5);

impl ServerTls {
    /// Load the files (at start: any problem is an error).
    pub fn load(settings: TlsSettings, metrics: Arc<Metrics>) -> Result<Arc<ServerTls>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let before = stamps(&settings);
        let (config, loaded) = build(&settings, &provider)?;
        metrics.tls_certificate_expiry.set(loaded.not_after);
        warn_if_expiring(&loaded);
        tracing::info!(serial = %loaded.serial, names = ?loaded.names, "TLS certificate loaded");
        Ok(Arc::new(ServerTls {
            settings,
            provider,
            config: ArcSwap::from_pointee(config),
            health: Mutex::new(None),
            seen: Mutex::new((before, None)),
            failed_at: Mutex::new(None),
            metrics,
        }))
    }

    /// An acceptor with the current configuration (one `Arc` clone).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// `Err(why)` while a replaced set of files could not be loaded (the last good one serves).
    pub fn readiness(&self) -> Result<(), String> {
        match self.health.lock().map(|h| h.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(format!("tls: {why}")),
            Err(_) => Err("tls: state poisoned".into()),
        }
    }

    /// Look at the files; once a change has been stable for one poll, load it.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.settings);
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if now == seen.0 {
            seen.1 = None;
            return;
        }
        if seen.1.as_ref() != Some(&now) {
            // Changed since the last look: a writer may still be at work (certificate first, key
            // second). Try once it has stood still.
            seen.1 = Some(now);
            return;
        }
        seen.0 = now;
        seen.1 = None;
        drop(seen);
        self.reload();
    }

    /// Load the files now (the watcher calls this once a change has stood still, after a failure
    /// every [`RETRY`], and on SIGHUP).
    pub fn reload(&self) {
        let stamps_before = stamps(&self.settings);
        match build(&self.settings, &self.provider) {
            Ok((config, loaded)) => {
                self.config.store(Arc::new(config));
                self.metrics.tls_certificate_expiry.set(loaded.not_after);
                self.metrics
                    .tls_reloads
                    .with_label_values(&["success"])
                    .inc();
                if let Ok(mut health) = self.health.lock() {
                    *health = None;
                }
                if let Ok(mut failed_at) = self.failed_at.lock() {
                    *failed_at = None;
                }
                // What was loaded is the set in use: the watcher need not load it again.
                if let Ok(mut seen) = self.seen.lock() {
                    *seen = (stamps_before, None);
                }
                warn_if_expiring(&loaded);
                tracing::info!(serial = %loaded.serial, names = ?loaded.names, "TLS certificate reloaded; new connections use it");
            }
            Err(why) => {
                self.metrics
                    .tls_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %why, retry_in_s = RETRY.as_secs(), "TLS files do not load; still serving the last good certificate");
                if let Ok(mut health) = self.health.lock() {
                    *health = Some(why);
                }
                if let Ok(mut failed_at) = self.failed_at.lock() {
                    *failed_at = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    /// Whether a failed reload is due to be tried again.
    fn retry_due(&self) -> bool {
        self.failed_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() >= RETRY)
    }

    /// Watch the files every [`POLL`] in the background, try a failed reload again every
    /// [`RETRY`], and reload on SIGHUP.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        // Installed before returning, so a SIGHUP right after start-up reloads instead of killing.
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<Option<()>>();
                let signalled = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = hup => true,
                };
                let Some(tls) = this.upgrade() else {
                    return;
                };
                if signalled {
                    tracing::info!("SIGHUP: reloading the TLS files");
                    tls.reload();
                } else if tls.retry_due() {
                    tls.reload();
                } else {
                    tls.reload_if_changed();
                }
            }
        })
    }

    /// Count a connection refused before HTTP.
    fn refused(&self, reason: &str) {
        self.metrics
            .tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Accept one connection: refuse plain HTTP (400 `tls_required`), then the handshake, both
    /// before `deadline`. The verified client certificate, if any, comes with the stream.
    pub async fn accept(
        &self,
        stream: TcpStream,
        deadline: tokio::time::Instant,
    ) -> Option<(TlsStream<TcpStream>, Option<PeerCertificate>)> {
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == 0x16 => {}
            Ok(Ok(1)) => {
                self.refused("plain_http");
                refuse_plain_http(stream).await;
                return None;
            }
            Ok(_) => return None,
            Err(_) => {
                self.refused("timeout");
                return None;
            }
        }
        let stream = match tokio::time::timeout_at(deadline, self.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                self.refused("handshake");
                tracing::debug!(%error, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.refused("timeout");
                return None;
            }
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| peer_certificate(leaf));
        Some((stream, peer))
    }
}

/// What a verified client certificate says about itself, for authentication.
pub fn peer_certificate(leaf: &[u8]) -> PeerCertificate {
    let sha256 = Sha256::digest(leaf).into();
    // A certificate that cannot be read still has its digest (`clients[].cert_sha256`); it just
    // names nobody by subject (rustls has checked its validity and extended key usage).
    let Some(info) = x509::parse(leaf) else {
        return PeerCertificate {
            sha256,
            client_auth: true,
            ..PeerCertificate::default()
        };
    };
    PeerCertificate {
        sha256,
        not_after: Some(info.not_after_unix),
        // One CN that cannot be read makes them all unusable: which one would be the client's?
        common_names: if info.unreadable_cn {
            Vec::new()
        } else {
            info.subject_cns
        },
        dns_names: info.dns_sans,
        uris: info.uri_sans,
        client_auth: info.client_auth.allows_client_auth(),
    }
}

fn warn_if_expiring(loaded: &Loaded) {
    let left = loaded.not_after - unix_now();
    if left < 14 * 86_400 {
        tracing::warn!(
            serial = %loaded.serial,
            days_left = left / 86_400,
            "the TLS certificate expires within 14 days"
        );
    }
}

/// Answer a plain-HTTP request on the TLS port with a TwelveLabs-shaped 400 and close.
async fn refuse_plain_http(mut stream: TcpStream) {
    // Read what the client sent (briefly): closing with unread data would reset the connection
    // and the client might never see the answer.
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    let body = r#"{"code":"tls_required","message":"this port speaks HTTPS only: use https://"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `check`: load the files as `serve` would, and say what they hold.
pub fn check(settings: &TlsSettings) -> Result<Loaded, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    build(settings, &provider).map(|(_, loaded)| loaded)
}

#[cfg(test)]
mod tests;
