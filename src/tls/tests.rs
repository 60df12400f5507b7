use super::*;

fn settings(pki: &demo::DemoPki, ca: bool) -> TlsSettings {
    TlsSettings {
        cert_file: pki.cert.clone(),
        key_file: pki.key.clone(),
        client_ca_file: ca.then(|| pki.ca.clone()),
        client_crl_file: None,
        min_version: TlsVersion::Tls12,
    }
}

#[test]
fn a_generated_pair_loads_and_a_mismatched_key_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo::write(dir.path(), "svc-a").unwrap();
    let loaded = check(&settings(&pki, true)).unwrap();
    assert!(
        loaded.names.iter().any(|n| n == "DNS:localhost"),
        "{loaded:?}"
    );
    assert!(loaded.not_after > unix_now() + 300 * 86_400);
    let mut wrong = settings(&pki, false);
    wrong.key_file = pki.client_key.clone();
    let error = check(&wrong).unwrap_err();
    assert!(error.contains("do not belong together"), "{error}");
    let mut missing = settings(&pki, false);
    missing.cert_file = dir.path().join("nope.pem");
    assert!(check(&missing).is_err());
}

#[test]
fn a_client_certificate_becomes_typed_names_with_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo::write(dir.path(), "svc-a").unwrap();
    let client = read_certificates(&pki.client_cert).unwrap().remove(0);
    let peer = peer_certificate(&client);
    assert_eq!(peer.common_names, ["svc-a"]);
    assert!(peer.dns_names.is_empty() && peer.uris.is_empty());
    assert!(peer.client_auth);
    assert!(peer.not_after.unwrap() > unix_now());
    let server = read_certificates(&pki.cert).unwrap().remove(0);
    let peer = peer_certificate(&server);
    assert_eq!(peer.dns_names, ["localhost"]);
    assert!(!peer.client_auth, "serverAuth only");
    // Not a certificate: only its digest.
    let peer = peer_certificate(b"junk");
    assert!(peer.common_names.is_empty() && peer.not_after.is_none());
}

#[test]
fn a_crl_file_must_hold_a_crl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo::write(dir.path(), "svc-a").unwrap();
    let mut with_crl = settings(&pki, true);
    let junk = dir.path().join("junk.crl");
    std::fs::write(&junk, "not a CRL").unwrap();
    with_crl.client_crl_file = Some(junk);
    let error = check(&with_crl).unwrap_err();
    assert!(error.contains("junk.crl"), "{error}");
}
