use super::*;

fn settings(pki: &demo::DemoPki, ca: bool) -> TlsSettings {
    TlsSettings {
        cert_file: pki.cert.clone(),
        key_file: pki.key.clone(),
        client_ca_file: ca.then(|| pki.ca.clone()),
        min_version: TlsVersion::Tls12,
    }
}

#[test]
fn a_generated_pair_loads_and_a_mismatched_key_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo::write(dir.path(), "svc-a").unwrap();
    let loaded = check(&settings(&pki, true)).unwrap();
    assert!(loaded.names.iter().any(|n| n == "localhost"), "{loaded:?}");
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
fn the_der_walker_reads_names_expiry_and_serial_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = demo::write(dir.path(), "svc-a").unwrap();
    let client = read_certificates(&pki.client_cert).unwrap().remove(0);
    let info = x509::parse(&client).unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some("svc-a"));
    assert!(!info.serial_hex.is_empty());
    let server = read_certificates(&pki.cert).unwrap().remove(0);
    let info = x509::parse(&server).unwrap();
    assert_eq!(info.dns_sans, ["localhost"]);
    let bytes = server.as_ref();
    for cut in 0..bytes.len() {
        let _ = x509::parse(&bytes[..cut]);
        let mut flipped = bytes.to_vec();
        flipped[cut] ^= 0xff;
        let _ = x509::parse(&flipped);
    }
}
