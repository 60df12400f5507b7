//! Throwaway certificates for `demo --tls` (and the tests): a CA, a server certificate for
//! `localhost`, `127.0.0.1` and `::1`, and a client certificate, all signed by that CA, valid from
//! today for a year. Written with `rcgen` (ECDSA P-256 via ring).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files written.
#[derive(Debug, Clone)]
pub struct DemoPki {
    /// The CA certificate clients trust (`curl --cacert`, `SSL_CERT_FILE`).
    pub ca: PathBuf,
    /// The server chain and key.
    pub cert: PathBuf,
    /// See `cert`.
    pub key: PathBuf,
    /// A client certificate (CN `client_cn`) and its key.
    pub client_cert: PathBuf,
    /// See `client_cert`.
    pub client_key: PathBuf,
}

fn validity(params: &mut CertificateParams) {
    // Today (UTC) for a year, from the RFC 3339 date of now.
    let today = crate::units::rfc3339(std::time::SystemTime::now());
    let field = |range: std::ops::Range<usize>| today[range].parse::<i32>().unwrap_or(1);
    let (year, month, day) = (field(0..4), field(5..7) as u8, field(8..10) as u8);
    params.not_before = rcgen::date_time_ymd(year, month, day);
    params.not_after = rcgen::date_time_ymd(year + 1, month, day.min(28));
}

/// Write a CA, a server certificate and a client certificate with CN `client_cn` into `dir`.
pub fn write(dir: &Path, client_cn: &str) -> Result<DemoPki, String> {
    let err = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "tl-gateway demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(err)?).map_err(err)?;

    let server_key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut server);
    let server = server.signed_by(&server_key, &ca).map_err(err)?;

    let client_key = KeyPair::generate().map_err(err)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    client
        .distinguished_name
        .push(DnType::CommonName, client_cn);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut client);
    let client = client.signed_by(&client_key, &ca).map_err(err)?;

    let pki = DemoPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&pki.ca, ca.pem())?;
    write(&pki.cert, server.pem())?;
    write(&pki.key, server_key.serialize_pem())?;
    write(&pki.client_cert, client.pem())?;
    write(&pki.client_key, client_key.serialize_pem())?;
    Ok(pki)
}
