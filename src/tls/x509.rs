//! The few X.509 fields the gateway reads, through the `x509-parser` crate: the leaf's notAfter
//! (expiry metric, refusing an expired certificate, refusing requests on a connection whose client
//! certificate has since expired), its serial, its subject CNs and DNS/URI SANs (client certificate
//! identities) and its extended key usage. It validates nothing: it only reads certificates rustls
//! has verified (clients') or the gateway's own configured one, and returns `None` on anything that
//! is not a certificate.
//!
//! Names are kept exactly as written, typed by where they came from, so a `CN=` subject never
//! matches a DNS SAN. A name that cannot be read as text (invalid UTF-8, a string type that is not
//! text) is never turned into something that could match: a subject CN that cannot be read marks
//! the CNs as unreadable (the certificate then identifies nobody by CN), a SAN that cannot be read
//! is skipped (no configured name can equal bytes that are not text).

use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The extended key usage of a certificate, as far as client authentication goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuthUsage {
    /// No extended key usage extension: any use is allowed.
    #[default]
    Unrestricted,
    /// An extended key usage extension that lists clientAuth.
    Listed,
    /// An extended key usage extension without clientAuth (e.g. serverAuth only), or one that
    /// could not be read: not a client certificate.
    NotListed,
}

impl ClientAuthUsage {
    /// Whether the certificate may authenticate a client.
    pub fn allows_client_auth(self) -> bool {
        !matches!(self, ClientAuthUsage::NotListed)
    }
}

/// What the gateway reads from a certificate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// notAfter, in Unix seconds.
    pub not_after_unix: i64,
    /// The serial number as lowercase hex (as `openssl x509 -serial` prints it, without leading zero bytes).
    pub serial_hex: String,
    /// The subject's common names, in the order the subject lists them.
    pub subject_cns: Vec<String>,
    /// Some subject CN could not be read as text (then no CN may identify the certificate).
    pub unreadable_cn: bool,
    /// DNS subject alternative names.
    pub dns_sans: Vec<String>,
    /// URI subject alternative names.
    pub uri_sans: Vec<String>,
    /// Whether the extended key usage allows client authentication.
    pub client_auth: ClientAuthUsage,
}

/// Read a DER certificate; `None` if it is not one.
pub fn parse(cert_der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let serial = match cert.raw_serial() {
        [0, tail @ ..] if !tail.is_empty() => tail,
        all => all,
    };
    let mut info = CertInfo {
        not_after_unix: cert.validity().not_after.timestamp(),
        serial_hex: crate::units::hex(serial),
        ..CertInfo::default()
    };
    for cn in cert.subject().iter_common_name() {
        let value = cn.attr_value();
        match text(value.tag(), value.data) {
            Some(name) => info.subject_cns.push(name),
            None => info.unreadable_cn = true,
        }
    }
    // No SAN, or one that does not parse, names nothing.
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => info.dns_sans.push((*dns).to_owned()),
                GeneralName::URI(uri) => info.uri_sans.push((*uri).to_owned()),
                // Invalid entries (bytes that are not text) can equal no configured name.
                _ => {}
            }
        }
    }
    info.client_auth = match cert.extended_key_usage() {
        Ok(None) => ClientAuthUsage::Unrestricted,
        Ok(Some(eku)) if eku.value.client_auth => ClientAuthUsage::Listed,
        Ok(Some(_)) | Err(_) => ClientAuthUsage::NotListed,
    };
    Some(info)
}

/// A directory string as text, or `None` if it is not text: UTF8String, PrintableString and
/// IA5String as UTF-8, TeletexString if plain ASCII, BMPString as UTF-16BE, UniversalString as
/// UTF-32BE.
fn text(tag: Tag, data: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(data).ok().map(str::to_owned)
        }
        Tag::TeletexString if data.is_ascii() => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::BmpString if data.len().is_multiple_of(2) => {
            let units = data
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString if data.len().is_multiple_of(4) => data
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
#[path = "x509_tests.rs"]
mod tests;
