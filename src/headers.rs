//! Header hygiene shared by both directions: hop-by-hop removal and client-credential stripping.
//!
//! Each list is one static array with a unit test per rule, so the full set is reviewable at a glance.

use http::header::{HeaderMap, HeaderName, CONNECTION};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy `proxy-connection` and `keep-alive`).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Credential headers a client may send; their look-alikes (case, `_`, `.`) are removed too.
pub const CLIENT_CREDENTIALS: [&str; 7] = [
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "api-key",
    "apikey",
    "x-apikey",
];

/// Identity and routing headers a client could forge to impersonate the gateway or steer upstream.
pub const FORGEABLE: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// Header families removed whole: every `X-Forwarded-*` (Spring rewrites paths from
/// `X-Forwarded-Prefix`) and every header only the gateway may set.
pub const FORGEABLE_PREFIXES: [&str; 2] = ["x-forwarded-", GATEWAY_PREFIX];

/// Prefix of headers only the gateway may set.
pub const GATEWAY_PREFIX: &str = "x-tl-gateway-";

/// Remove hop-by-hop headers, including every header named in `Connection`.
///
/// Run this before the gateway adds any header of its own, so a client cannot nominate one for removal.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of nine lookups by string.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Normalise a header name the way lenient frameworks do: lowercase, `_` and `.` read as `-`.
pub fn normalised(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            other => other.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether `name` equals `target` (lowercase, `-`-separated) once `_` and `.` are read as `-`.
/// Allocation-free: this runs for every header of every request.
pub fn normalised_eq(name: &str, target: &str) -> bool {
    name.len() == target.len() && normalised_starts_with(name, target)
}

/// Whether `name`, normalised as in [`normalised_eq`], starts with `prefix`.
pub fn normalised_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.bytes().zip(prefix.bytes()).all(|(n, p)| {
            let n = match n {
                b'_' | b'.' => b'-',
                other => other.to_ascii_lowercase(),
            };
            n == p
        })
}

/// Remove every client credential, forgeable identity header and gateway-internal header.
pub fn remove_client_credentials(headers: &mut HeaderMap) {
    let doomed = |name: &str| {
        CLIENT_CREDENTIALS
            .iter()
            .chain(&FORGEABLE)
            .any(|t| normalised_eq(name, t))
            || FORGEABLE_PREFIXES
                .iter()
                .any(|p| normalised_starts_with(name, p))
    };
    // One doomed name at a time. Its text is copied to the stack to remove it by name (cloning a
    // custom name would allocate); should that ever not remove it, the name itself is cloned.
    loop {
        let mut buf = [0u8; 128];
        let len = match headers.keys().find(|name| doomed(name.as_str())) {
            None => return,
            Some(name) => {
                let text = name.as_str().as_bytes();
                let fits = text.len() <= buf.len();
                if fits {
                    buf[..text.len()].copy_from_slice(text);
                }
                fits.then_some(text.len())
            }
        };
        let removed = len
            .and_then(|len| std::str::from_utf8(&buf[..len]).ok())
            .and_then(|name| headers.remove(name))
            .is_some();
        if !removed {
            if let Some(name) = headers.keys().find(|name| doomed(name.as_str())).cloned() {
                headers.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(names: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in names {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        headers
    }

    #[test]
    fn every_hop_by_hop_header_is_removed() {
        for name in HOP_BY_HOP {
            let mut headers = map(&[name, "accept"]);
            remove_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name}");
            assert!(headers.contains_key("accept"));
        }
    }

    #[test]
    fn headers_nominated_by_connection_are_removed() {
        let mut headers = map(&["x-custom", "x-other", "accept"]);
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("close, X-Custom ,x-other"),
        );
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-custom"));
        assert!(!headers.contains_key("x-other"));
        assert!(!headers.contains_key(CONNECTION));
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn credentials_and_their_look_alikes_are_removed() {
        for name in CLIENT_CREDENTIALS {
            let underscore = name.replace('-', "_");
            let dotted = name.replace('-', ".");
            let mut headers = map(&[name, &underscore, &dotted, "accept"]);
            remove_client_credentials(&mut headers);
            assert_eq!(headers.len(), 1, "{name}: {headers:?}");
            assert!(headers.contains_key("accept"));
        }
    }

    #[test]
    fn forgeable_and_internal_headers_are_removed() {
        for name in FORGEABLE.into_iter().chain([
            "x-forwarded-for",
            "x-forwarded-prefix",
            "X_Forwarded_Uri",
        ]) {
            let mut headers = map(&[name, "content-type"]);
            remove_client_credentials(&mut headers);
            assert!(!headers.contains_key(name), "{name}");
        }
        let mut headers = map(&["x-tl-gateway-client", "x_tl_gateway_roles", "x-tlgateway"]);
        remove_client_credentials(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-tlgateway"));
    }
}
