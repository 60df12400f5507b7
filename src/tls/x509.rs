//! A small read-only DER walker for the few X.509 fields the gateway needs: the leaf's notAfter
//! (expiry metric, refusing an expired certificate), its subject CN and DNS/URI SANs (client
//! certificate identities). It validates nothing: it only reads certificates rustls has verified
//! (clients') or the gateway's own configured one, and returns `None` on anything malformed.

/// What the gateway reads from a certificate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// notAfter, in Unix seconds.
    pub not_after_unix: i64,
    /// The serial number as lowercase hex (as `openssl x509 -serial` prints it, without leading zero bytes).
    pub serial_hex: String,
    /// The subject's common name (the last one, if several).
    pub subject_cn: Option<String>,
    /// DNS subject alternative names.
    pub dns_sans: Vec<String>,
    /// URI subject alternative names.
    pub uri_sans: Vec<String>,
}

/// Read one TLV: returns (tag, contents, rest). Definite lengths only (DER).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, body, rest) = tlv(input)?;
    (tag == want).then_some((body, rest))
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17

/// Read a DER certificate; `None` if it is not one this walker understands.
pub fn parse(cert_der: &[u8]) -> Option<CertInfo> {
    let (cert, _) = expect(cert_der, 0x30)?; // Certificate
    let (tbs, _) = expect(cert, 0x30)?; // TBSCertificate
    let mut rest = tbs;
    // [0] EXPLICIT version (optional)
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    let (serial, r) = expect(rest, 0x02)?; // serialNumber
    rest = r;
    let serial = match serial {
        [0, tail @ ..] if !tail.is_empty() => tail,
        all => all,
    };
    rest = expect(rest, 0x30)?.1; // signature AlgorithmIdentifier
    rest = expect(rest, 0x30)?.1; // issuer
    let (validity, r) = expect(rest, 0x30)?;
    rest = r;
    let (subject, r) = expect(rest, 0x30)?;
    rest = r;
    rest = expect(rest, 0x30)?.1; // subjectPublicKeyInfo

    let not_before_rest = tlv(validity)?.2; // skip notBefore
    let (t_tag, t_body, _) = tlv(not_before_rest)?;
    let mut info = CertInfo {
        not_after_unix: parse_time(t_tag, t_body)?,
        serial_hex: crate::units::hex(serial),
        ..CertInfo::default()
    };

    // subject: SEQUENCE OF SET OF AttributeTypeAndValue; last CN wins (most specific)
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (set, r) = expect(rdns, 0x31)?;
        rdns = r;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (atv, r) = expect(atvs, 0x30)?;
            atvs = r;
            let (oid, val) = expect(atv, 0x06)?;
            if oid == OID_CN {
                let (tag, s, _) = tlv(val)?;
                // UTF8String(0x0c) / PrintableString(0x13) / IA5String(0x16) / T61(0x14)
                if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    info.subject_cn = Some(String::from_utf8(s.to_vec()).ok()?);
                }
            }
        }
    }

    // skip optional [1] issuerUniqueID, [2] subjectUniqueID; find [3] extensions
    while let Some((tag, body, r)) = tlv(rest) {
        rest = r;
        if tag != 0xa3 {
            continue;
        }
        let (mut exts, _) = expect(body, 0x30)?;
        while !exts.is_empty() {
            let (ext, r) = expect(exts, 0x30)?;
            exts = r;
            let (oid, mut e) = expect(ext, 0x06)?;
            if e.first() == Some(&0x01) {
                e = tlv(e)?.2; // critical BOOLEAN
            }
            let (octets, _) = expect(e, 0x04)?;
            if oid == OID_SAN {
                let (mut names, _) = expect(octets, 0x30)?;
                while !names.is_empty() {
                    let (tag, v, r) = tlv(names)?;
                    names = r;
                    match tag {
                        0x82 => info.dns_sans.push(String::from_utf8(v.to_vec()).ok()?), // [2] dNSName
                        0x86 => info.uri_sans.push(String::from_utf8(v.to_vec()).ok()?), // [6] URI
                        _ => {}
                    }
                }
            }
        }
    }
    Some(info)
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as i64)
    })
}

/// UTCTime (0x17) YYMMDDHHMMSSZ or GeneralizedTime (0x18) YYYYMMDDHHMMSSZ -> unix seconds.
fn parse_time(tag: u8, s: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, s.len()) {
        (0x17, 13) => {
            let yy = digits(&s[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        (0x18, 15) => (digits(&s[..4])?, &s[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let (mo, d) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
    let (h, mi, se) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Howard Hinnant's days_from_civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
