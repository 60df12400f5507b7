use super::*;
use http::HeaderValue;

fn keys() -> ClientKeys {
    let client = |id: &str, role: &str, key: &str| {
        ClientSettings::with_key(id, &[role], Sha256::digest(key.as_bytes()).into())
    };
    ClientKeys::new(&[
        client("alice", "admin", "tlgw_alice_example_key"),
        client("bob", "member", "tlgw_bob_example_key"),
    ])
}

/// alice by `CN=alice.example`, bob by `DNS:bob.example` (and a digest), carol by a SPIFFE URI.
fn certificate_clients() -> ClientKeys {
    let client = |id: &str, subject: &str, digest: Option<[u8; 32]>| ClientSettings {
        cert_subject: Some(subject.parse().unwrap()),
        cert_sha256: digest,
        ..ClientSettings::with_key(id, &["member"], Sha256::digest(id.as_bytes()).into())
    };
    ClientKeys::new(&[
        client("alice", "CN=alice.example", None),
        client("bob", "DNS:bob.example", Some([7; 32])),
        client("carol", "URI:spiffe://tl/carol", None),
    ])
}

fn cert(sha256: [u8; 32], cns: &[&str], dns: &[&str], uris: &[&str]) -> PeerCertificate {
    let owned = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
    PeerCertificate {
        sha256,
        not_after: Some(unix_seconds(SystemTime::now()) + 3600),
        common_names: owned(cns),
        dns_names: owned(dns),
        uris: owned(uris),
        client_auth: true,
    }
}

fn who(keys: &ClientKeys, c: &PeerCertificate) -> Result<String, GatewayError> {
    keys.identify(&HeaderMap::new(), Some(c))
        .map(|p| p.client.as_str().to_owned())
}

#[test]
fn a_certificate_whose_names_match_two_clients_is_refused() {
    let keys = certificate_clients();
    assert_eq!(
        who(
            &keys,
            &cert([0; 32], &["alice.example"], &["alice.example"], &[])
        )
        .unwrap(),
        "alice"
    );
    assert!(matches!(
        who(
            &keys,
            &cert([0; 32], &["alice.example"], &["bob.example"], &[])
        ),
        Err(GatewayError::CertificateAmbiguous)
    ));
    // The digest is explicit: it decides whatever the names say.
    assert_eq!(
        who(&keys, &cert([7; 32], &["alice.example"], &[], &[])).unwrap(),
        "bob"
    );
    // No names read (an unparsable certificate): only the digest can identify it.
    let unnamed = PeerCertificate {
        sha256: [7; 32],
        client_auth: true,
        ..PeerCertificate::default()
    };
    assert_eq!(who(&keys, &unnamed).unwrap(), "bob");
}

#[test]
fn subjects_match_only_names_of_their_kind() {
    let keys = certificate_clients();
    type Names<'a> = &'a [&'a str];
    let cases: &[(Names, Names, Names, Option<&str>)] = &[
        (&["alice.example"], &[], &[], Some("alice")),
        // A server certificate for the DNS name alice.example is not alice's client CN.
        (&[], &["alice.example"], &[], None),
        (&[], &["bob.example"], &[], Some("bob")),
        (&["bob.example"], &[], &[], None),
        (&[], &[], &["spiffe://tl/carol"], Some("carol")),
        (&["spiffe://tl/carol"], &["spiffe://tl/carol"], &[], None),
        (&[], &[], &["spiffe://tl/carol/x"], None),
    ];
    for (cns, dns, uris, expected) in cases {
        let got = who(&keys, &cert([0; 32], cns, dns, uris));
        match expected {
            Some(client) => assert_eq!(got.unwrap(), *client, "{cns:?} {dns:?} {uris:?}"),
            None => assert!(
                matches!(got, Err(GatewayError::CertificateUnknown)),
                "{cns:?} {dns:?} {uris:?}: {got:?}"
            ),
        }
    }
}

#[test]
fn several_cns_identify_when_they_agree_and_are_refused_when_they_do_not() {
    let client = |id: &str, subject: &str| ClientSettings {
        cert_subject: Some(subject.parse().unwrap()),
        ..ClientSettings::with_key(id, &["member"], Sha256::digest(id.as_bytes()).into())
    };
    let keys = ClientKeys::new(&[client("alice", "CN=alice.svc"), client("bob", "CN=bob.svc")]);
    // The last CN does not win: both name a client, so nobody is chosen.
    assert!(matches!(
        who(&keys, &cert([0; 32], &["bob.svc", "alice.svc"], &[], &[])),
        Err(GatewayError::CertificateAmbiguous)
    ));
    assert_eq!(
        who(&keys, &cert([0; 32], &["team", "alice.svc"], &[], &[])).unwrap(),
        "alice"
    );
    assert_eq!(
        who(&keys, &cert([0; 32], &["bob.svc", "other"], &[], &[])).unwrap(),
        "bob"
    );
}

#[test]
fn a_certificate_not_for_client_auth_or_past_its_not_after_identifies_nobody() {
    let keys = certificate_clients();
    let mut server_only = cert([7; 32], &["alice.example"], &[], &[]);
    server_only.client_auth = false;
    assert!(matches!(
        who(&keys, &server_only),
        Err(GatewayError::CertificateUnknown)
    ));
    let mut expired = cert([0; 32], &["alice.example"], &[], &[]);
    expired.not_after = Some(unix_seconds(SystemTime::now()) - 1);
    let error = who(&keys, &expired).unwrap_err();
    assert_eq!(error.code(), "certificate_expired");
    assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED);
    // With a key too: the expired certificate still refuses the request.
    let mut with_key = HeaderMap::new();
    with_key.insert("x-api-key", HeaderValue::from_static("alice"));
    assert!(matches!(
        keys.identify(&with_key, Some(&expired)),
        Err(GatewayError::CertificateExpired { .. })
    ));
}

#[test]
fn an_untyped_subject_is_refused_with_the_fix() {
    assert_eq!(
        "CN=a.svc".parse::<CertSubject>().unwrap(),
        CertSubject::CommonName("a.svc".into())
    );
    assert_eq!(
        "DNS:a.svc".parse::<CertSubject>().unwrap(),
        CertSubject::Dns("a.svc".into())
    );
    assert_eq!(
        "URI:spiffe://tl/a".parse::<CertSubject>().unwrap(),
        CertSubject::Uri("spiffe://tl/a".into())
    );
    let error = "reporting.svc".parse::<CertSubject>().unwrap_err();
    assert_eq!(
        error,
        r#"cert_subject "reporting.svc" must say which name it matches: "CN=reporting.svc", "DNS:reporting.svc" or "URI:spiffe://...""#
    );
    for bad in ["CN=", "cn=a.svc", "dns:a.svc", "URI:"] {
        assert!(bad.parse::<CertSubject>().is_err(), "{bad}");
    }
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
            .0
            .client
            .as_str(),
        "alice"
    );
    assert_eq!(
        keys.authenticate(b"tlgw_bob_example_key")
            .unwrap()
            .0
            .client
            .as_str(),
        "bob"
    );
    assert!(keys.authenticate(b"tlgw_bob_example_kez").is_err());
    assert!(keys.authenticate(b"").is_err());
    assert!(ClientKeys::default().authenticate(b"anything").is_err());
}

#[test]
fn every_one_of_many_clients_is_found_and_no_stranger() {
    let clients: Vec<ClientSettings> = (0..300)
        .map(|i| {
            ClientSettings::with_key(
                &format!("c{i}"),
                &[],
                Sha256::digest(format!("key-{i}").as_bytes()).into(),
            )
        })
        .collect();
    let keys = ClientKeys::new(&clients);
    for i in 0..300 {
        let (found, _) = keys.authenticate(format!("key-{i}").as_bytes()).unwrap();
        assert_eq!(found.client.as_str(), format!("c{i}"));
    }
    for i in 300..1300 {
        assert!(keys.authenticate(format!("key-{i}").as_bytes()).is_err());
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
