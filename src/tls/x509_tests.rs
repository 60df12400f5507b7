use rcgen::string::BmpString;
use rcgen::{
    CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, KeyPair, SanType, SerialNumber,
};

use super::*;

/// A self-signed certificate with these subject attributes (in order) and SANs.
fn certificate(
    subject: Vec<(DnType, DnValue)>,
    sans: Vec<SanType>,
    eku: Vec<ExtendedKeyUsagePurpose>,
    edit: impl FnOnce(&mut CertificateParams),
) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (ty, value) in subject {
        params.distinguished_name.push(ty, value);
    }
    params.subject_alt_names = sans;
    params.extended_key_usages = eku;
    edit(&mut params);
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

/// The OID of commonName as a "custom" type: rcgen keeps one value per type, so a second CN goes
/// in under this spelling.
fn second_cn() -> DnType {
    DnType::CustomDnType(vec![2, 5, 4, 3])
}

fn utf8(text: &str) -> DnValue {
    DnValue::Utf8String(text.to_owned())
}

#[test]
fn uri_and_dns_sans_are_read_apart() {
    let der = certificate(
        vec![(DnType::CommonName, utf8("reporting.svc"))],
        vec![
            SanType::DnsName("reporting.svc".try_into().unwrap()),
            SanType::URI("spiffe://tl/reporting".try_into().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
        ],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        |_| {},
    );
    let info = parse(&der).unwrap();
    assert_eq!(info.subject_cns, ["reporting.svc"]);
    assert!(!info.unreadable_cn);
    assert_eq!(info.dns_sans, ["reporting.svc"]);
    assert_eq!(info.uri_sans, ["spiffe://tl/reporting"]);
    assert_eq!(info.client_auth, ClientAuthUsage::Listed);
}

#[test]
fn every_subject_cn_is_read_in_order() {
    let der = certificate(
        vec![
            (DnType::OrganizationName, utf8("TL")),
            (DnType::CommonName, utf8("bob.svc")),
            (second_cn(), utf8("alice.svc")),
        ],
        vec![],
        vec![],
        |_| {},
    );
    let info = parse(&der).unwrap();
    assert_eq!(info.subject_cns, ["bob.svc", "alice.svc"]);
    assert_eq!(info.client_auth, ClientAuthUsage::Unrestricted);
}

#[test]
fn a_bmp_string_cn_is_decoded_and_bytes_that_are_not_text_match_nothing() {
    let der = certificate(
        vec![(
            DnType::CommonName,
            DnValue::BmpString(BmpString::try_from("alice.svc").unwrap()),
        )],
        vec![],
        vec![],
        |_| {},
    );
    assert_eq!(parse(&der).unwrap().subject_cns, ["alice.svc"]);

    // A UTF8String CN and a DNS SAN whose bytes are not UTF-8 (patched in after signing: nothing
    // here checks the signature, as rustls already has).
    let mut der = certificate(
        vec![(DnType::CommonName, utf8("zzzzzzzz"))],
        vec![SanType::DnsName("yyyyyyyy.svc".try_into().unwrap())],
        vec![],
        |_| {},
    );
    for (from, to) in [
        (b"zzzzzzzz", b"al\xffce\xfe\x80z"),
        (b"yyyyyyyy", b"b\xc3\x28bbbbb"),
    ] {
        // Everywhere: a self-signed certificate's issuer is its subject.
        while let Some(at) = der.windows(8).position(|w| w == from) {
            der[at..at + 8].copy_from_slice(to);
        }
    }
    let info = parse(&der).unwrap();
    assert!(info.subject_cns.is_empty(), "{info:?}");
    assert!(info.unreadable_cn);
    assert!(info.dns_sans.is_empty(), "{info:?}");
}

#[test]
fn a_generalized_time_not_after_and_the_serial_are_read() {
    let der = certificate(
        vec![(DnType::CommonName, utf8("far.svc"))],
        vec![],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        |params| {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            // From 2050 on, X.509 times are GeneralizedTime (RFC 5280 §4.1.2.5).
            params.not_after = rcgen::date_time_ymd(2061, 3, 1);
            params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x8f, 0x01, 0xab]));
        },
    );
    let info = parse(&der).unwrap();
    assert_eq!(info.not_after_unix, 2_876_860_800, "2061-03-01T00:00:00Z");
    assert_eq!(info.serial_hex, "8f01ab");
    assert_eq!(info.client_auth, ClientAuthUsage::NotListed);
    assert!(!info.client_auth.allows_client_auth());
    // A UTCTime one, for contrast.
    let der = certificate(vec![], vec![], vec![], |params| {
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    });
    assert_eq!(parse(&der).unwrap().not_after_unix, 2_524_521_600);
}

#[test]
fn truncated_or_corrupted_input_never_panics() {
    let der = certificate(
        vec![(DnType::CommonName, utf8("svc-a"))],
        vec![SanType::DnsName("localhost".try_into().unwrap())],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        |_| {},
    );
    assert!(parse(&der).is_some());
    for cut in 0..der.len() {
        let _ = parse(&der[..cut]);
        let mut flipped = der.clone();
        flipped[cut] ^= 0xff;
        let _ = parse(&flipped);
    }
    assert!(parse(b"").is_none());
    assert!(parse(b"not a certificate").is_none());
}
