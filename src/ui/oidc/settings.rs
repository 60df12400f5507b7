//! `ui.oidc`: the page's sign-in with the team's identity provider, as written in the YAML file
//! ([`RawOidc`]) and as the sign-in uses it ([`OidcSettings`], validated at load).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ids::Role;
use crate::units::ConfigDuration;

/// Where a problem is (keys below `ui.oidc`) and what it is.
pub type Problem = (&'static [&'static str], String);

/// The default `session_ttl`.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The path the provider sends people back to (`redirect_url` must end with it).
pub const CALLBACK_PATH: &str = "/tl-gateway/ui/callback";

/// `ui.oidc` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    issuer: String,
    client_id: String,
    client_secret_file: PathBuf,
    redirect_url: String,
    scopes: Option<Vec<String>>,
    client_claim: Option<String>,
    roles_claim: Option<String>,
    #[serde(default)]
    role_map: BTreeMap<String, Vec<Role>>,
    session_ttl: Option<ConfigDuration>,
}

/// The client secret: never printed (`Debug` shows a placeholder).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// `ui.oidc`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The issuer URL (discovery at `{issuer}/.well-known/openid-configuration`): https, or http
    /// on a loopback address (tests, a provider on the same host).
    pub issuer: String,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// Its secret (read from `client_secret_file` at load).
    pub client_secret: ClientSecret,
    /// Where the provider sends people back: ends with `/tl-gateway/ui/callback`.
    pub redirect_url: String,
    /// Scopes asked for (`openid` always among them).
    pub scopes: Vec<String>,
    /// The claim naming the client (its id), e.g. `email`.
    pub client_claim: String,
    /// The claim whose values `role_map` maps to roles, if any.
    pub roles_claim: Option<String>,
    /// Claim value → roles.
    pub role_map: BTreeMap<String, Vec<Role>>,
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// Whether cookies are `Secure` (TLS on, or an https `redirect_url`).
    pub secure_cookies: bool,
}

impl OidcSettings {
    /// The roles the values of the roles claim map to (each once, in `role_map` order).
    pub fn roles_for<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> Vec<Role> {
        let values: Vec<&str> = values.into_iter().collect();
        let mut roles: Vec<Role> = Vec::new();
        for (value, mapped) in &self.role_map {
            if values.contains(&value.as_str()) {
                for role in mapped {
                    if !roles.contains(role) {
                        roles.push(role.clone());
                    }
                }
            }
        }
        roles
    }
}

/// Whether `url` is http:// on a loopback host (127.0.0.0/8, ::1, localhost).
fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RawOidc {
    /// Validate, reading the client secret; `tls` says whether the gateway serves HTTPS itself.
    pub fn compile(self, tls: bool) -> Result<OidcSettings, Problem> {
        let issuer = self.issuer.trim_end_matches('/').to_owned();
        let parsed = issuer.parse::<http::Uri>().ok();
        if parsed.as_ref().and_then(|u| u.host()).is_none() {
            return Err((&["issuer"], "not a URL".into()));
        }
        if !issuer.starts_with("https://") && !loopback_http(&issuer) {
            return Err((
                &["issuer"],
                "must be https:// (http:// only for a provider on a loopback address)".into(),
            ));
        }
        if self.client_id.is_empty() {
            return Err((&["client_id"], "must not be empty".into()));
        }
        let text = std::fs::read_to_string(&self.client_secret_file).map_err(|e| {
            (
                &["client_secret_file"][..],
                format!("cannot read {}: {e}", self.client_secret_file.display()),
            )
        })?;
        let secret = text.trim_end_matches(['\n', '\r']).to_owned();
        if secret.is_empty() {
            return Err((&["client_secret_file"], "the file is empty".into()));
        }
        let redirect_ok =
            self.redirect_url.parse::<http::Uri>().is_ok_and(|u| {
                u.host().is_some() && u.path() == CALLBACK_PATH && u.query().is_none()
            }) && (self.redirect_url.starts_with("https://")
                || self.redirect_url.starts_with("http://"));
        if !redirect_ok {
            return Err((
                &["redirect_url"],
                format!("must be the gateway's URL followed by {CALLBACK_PATH}, e.g. https://tl-gateway.example.com{CALLBACK_PATH}"),
            ));
        }
        let mut scopes = self
            .scopes
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err((&["scopes"], format!("{bad:?} is not a scope")));
        }
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let session_ttl = self.session_ttl.map_or(DEFAULT_SESSION_TTL, |d| d.0);
        if session_ttl.is_zero() {
            return Err((&["session_ttl"], "must be greater than zero".into()));
        }
        if !self.role_map.is_empty() && self.roles_claim.is_none() {
            return Err((
                &["roles_claim"],
                "role_map maps values of a claim: name it in roles_claim (e.g. groups)".into(),
            ));
        }
        Ok(OidcSettings {
            secure_cookies: tls || self.redirect_url.starts_with("https://"),
            issuer,
            client_id: self.client_id,
            client_secret: ClientSecret(secret),
            redirect_url: self.redirect_url,
            scopes,
            client_claim: self.client_claim.unwrap_or_else(|| "email".into()),
            roles_claim: self.roles_claim,
            role_map: self.role_map,
            session_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(issuer: &str, redirect: &str, secret: &std::path::Path) -> RawOidc {
        serde_yaml::from_str(&format!(
            "issuer: {issuer}\nclient_id: tl-gateway\nclient_secret_file: {}\nredirect_url: {redirect}\nroles_claim: groups\nrole_map: {{ tl-admins: [admin], tl-members: [member] }}\n",
            secret.display()
        ))
        .unwrap()
    }

    #[test]
    fn issuers_are_https_or_loopback_http_and_the_callback_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let cb = "https://gw.example.com/tl-gateway/ui/callback";
        let ok = raw("https://idp.example.com/realms/team/", cb, &secret)
            .compile(false)
            .unwrap();
        assert_eq!(ok.issuer, "https://idp.example.com/realms/team");
        assert_eq!(ok.client_secret.0, "s3cret");
        assert!(ok.secure_cookies);
        assert_eq!(ok.scopes, ["openid", "email", "profile"]);
        assert!(!format!("{ok:?}").contains("s3cret"));
        for issuer in [
            "http://127.0.0.1:9000",
            "http://[::1]:9000",
            "http://localhost:1",
        ] {
            assert!(raw(issuer, cb, &secret).compile(false).is_ok(), "{issuer}");
        }
        for issuer in [
            "http://idp.example.com",
            "http://10.0.0.1",
            "ftp://x",
            "idp",
        ] {
            assert!(raw(issuer, cb, &secret).compile(false).is_err(), "{issuer}");
        }
        let plain = raw(
            "http://127.0.0.1:1",
            "http://127.0.0.1:8080/tl-gateway/ui/callback",
            &secret,
        );
        assert!(!plain.compile(false).unwrap().secure_cookies);
        let bad_cb = raw(
            "https://idp.example.com",
            "https://gw.example.com/cb",
            &secret,
        );
        assert_eq!(bad_cb.compile(false).unwrap_err().0, ["redirect_url"]);
        let missing = raw("https://idp.example.com", cb, &dir.path().join("none"));
        assert_eq!(
            missing.compile(false).unwrap_err().0,
            ["client_secret_file"]
        );
    }

    #[test]
    fn role_map_maps_claim_values_to_roles_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let settings = raw(
            "https://idp.example.com",
            "https://gw.example.com/tl-gateway/ui/callback",
            &secret,
        )
        .compile(true)
        .unwrap();
        let names = |roles: Vec<Role>| roles.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(names(settings.roles_for(["tl-admins"])), ["admin"]);
        assert_eq!(
            names(settings.roles_for(["tl-members", "tl-admins", "other"])),
            ["admin", "member"]
        );
        assert!(settings.roles_for(["other"]).is_empty());
    }
}
