//! The `tls:` section, read and compiled (`config` assembles it).

use std::path::PathBuf;

use serde::Deserialize;

use super::{TlsSettings, TlsVersion};
use crate::settings::{Invalid, Seg};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_crl_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
}

/// Compile `tls:`.
pub fn compile(raw: RawTls) -> Result<TlsSettings, Invalid> {
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            return Err(Invalid::new(
                &[Seg::Key("tls"), Seg::Key("min_version")],
                format!("{other:?} is not a TLS version the gateway offers: \"1.2\" or \"1.3\""),
            ))
        }
    };
    if raw.client_crl_file.is_some() && raw.client_ca_file.is_none() {
        return Err(Invalid::new(
            &[Seg::Key("tls"), Seg::Key("client_crl_file")],
            "revocation lists apply to client certificates: set tls.client_ca_file too".into(),
        ));
    }
    Ok(TlsSettings {
        cert_file: raw.cert_file,
        key_file: raw.key_file,
        client_ca_file: raw.client_ca_file,
        client_crl_file: raw.client_crl_file,
        min_version,
    })
}
