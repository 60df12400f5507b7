//! The page: static HTML, CSS and JavaScript embedded in the binary and served under
//! `/tl-gateway/ui/` on the client listener, without a key — and, with `ui.oidc`, the sign-in with
//! the team's identity provider ([`oidc`]: `/tl-gateway/ui/login`, `/callback`, `/logout`).
//!
//! Every answer carries a strict Content-Security-Policy (no inline script or style, no other
//! origin, no framing), `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
//! Without `ui.oidc` the page asks for a key, keeps it in `sessionStorage` only and sends it in
//! `x-api-key`; it sets no cookie. With it, people sign in and the page's calls carry the session
//! cookie (`HttpOnly`, `SameSite=Strict`) and the session's CSRF token in `x-tl-gateway-csrf`;
//! key sign-in on the page is off unless `ui.allow_key_sign_in`. `GET /tl-gateway/ui/sign-in.json`
//! tells the page which ways to sign in are on.

pub mod oidc;

use std::sync::Arc;

use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::body::{self, GatewayBody};
use crate::error::GatewayError;
use oidc::SignIn;

/// Where the page lives.
pub const PREFIX: &str = "/tl-gateway/ui/";

/// The policy every answer of the page carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    text: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        text: include_str!("index.html"),
    },
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        text: include_str!("index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        text: include_str!("app.js"),
    },
    Asset {
        name: "deferred.js",
        content_type: "text/javascript; charset=utf-8",
        text: include_str!("deferred.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        text: include_str!("dom.js"),
    },
    Asset {
        name: "keys.js",
        content_type: "text/javascript; charset=utf-8",
        text: include_str!("keys.js"),
    },
    Asset {
        name: "audit.js",
        content_type: "text/javascript; charset=utf-8",
        text: include_str!("audit.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        text: include_str!("app.css"),
    },
];

/// Whether `path` belongs to the page (`/tl-gateway/ui` or below it).
pub fn is_page(path: &str) -> bool {
    path == "/tl-gateway/ui" || path.starts_with(PREFIX)
}

/// The answer for a request to the page: a file, a redirect from `/tl-gateway/ui` to the
/// directory (so the page's relative links resolve), 404 for anything else, 405 for methods other
/// than GET and HEAD.
pub fn serve(method: &Method, path: &str) -> Result<Response<GatewayBody>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed {
            method: method.clone(),
            allowed: vec![Method::GET, Method::HEAD],
        });
    }
    if path == "/tl-gateway/ui" {
        let mut response = secured(Response::new(body::empty()));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        // Relative, so it holds behind a proxy that serves the gateway under a path prefix.
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("ui/"));
        return Ok(response);
    }
    let name = path.strip_prefix(PREFIX).unwrap_or(path);
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or(GatewayError::RouteUnknown)?;
    let mut response = secured(Response::new(if method == Method::HEAD {
        body::empty()
    } else {
        body::full(asset.text)
    }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.text.len()));
    Ok(response)
}

/// How people sign in on the page: the layer's settings.
#[derive(Clone, Debug, Default)]
pub struct PageSettings {
    /// Sign-in with the identity provider (`ui.oidc`).
    pub sign_in: Option<Arc<SignIn>>,
    /// Whether the page offers key sign-in (always without `ui.oidc`; with it only when
    /// `ui.allow_key_sign_in`).
    pub key_sign_in: bool,
}

/// Layer serving the page itself (no key needed: it asks for one, or signs people in) and passing
/// every other request on. It sits above classification: the page's few paths are matched
/// exactly, so nothing of a request's target is echoed or logged in full here.
#[derive(Clone, Debug, Default)]
pub struct ServePageLayer {
    settings: Arc<PageSettings>,
}

impl ServePageLayer {
    /// The page, signing people in as `settings` says.
    pub fn new(settings: PageSettings) -> Self {
        ServePageLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> tower::Layer<S> for ServePageLayer {
    type Service = ServePage<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServePage {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// Service produced by [`ServePageLayer`].
#[derive(Clone, Debug)]
pub struct ServePage<S> {
    inner: S,
    settings: Arc<PageSettings>,
}

/// The answer of a page request.
type PageFuture =
    futures_util::future::BoxFuture<'static, Result<Response<GatewayBody>, GatewayError>>;

impl<S, B> tower::Service<http::Request<B>> for ServePage<S>
where
    S: tower::Service<http::Request<B>, Response = Response<GatewayBody>, Error = GatewayError>,
    B: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = futures_util::future::Either<S::Future, PageFuture>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        if !is_page(req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        if let Some(scope) = req.extensions().get::<crate::ext::RequestScope>() {
            scope.set_route(ROUTE_ID);
        }
        let settings = self.settings.clone();
        Either::Right(Box::pin(async move {
            let (parts, _body) = req.into_parts();
            let name = parts.uri.path().strip_prefix(PREFIX).unwrap_or_default();
            let sign_in = settings.sign_in.as_deref();
            let response = match (name, sign_in) {
                ("sign-in.json", _) if parts.method == Method::GET => Ok(sign_in_json(&settings)),
                ("login", Some(oidc)) if parts.method == Method::GET => oidc.login().await,
                ("callback", Some(oidc)) if parts.method == Method::GET => {
                    oidc.callback(&parts.headers, parts.uri.query()).await
                }
                ("logout", Some(oidc)) if parts.method == Method::POST => {
                    oidc.logout(&parts.headers).await
                }
                ("login" | "callback", Some(_)) => Err(GatewayError::MethodNotAllowed {
                    method: parts.method.clone(),
                    allowed: vec![Method::GET],
                }),
                ("logout", Some(_)) => Err(GatewayError::MethodNotAllowed {
                    method: parts.method.clone(),
                    allowed: vec![Method::POST],
                }),
                _ => serve(&parts.method, parts.uri.path()),
            };
            response.map(secured)
        }))
    }
}

/// `GET /tl-gateway/ui/sign-in.json`: which ways to sign in the page offers.
fn sign_in_json(settings: &PageSettings) -> Response<GatewayBody> {
    let text = serde_json::json!({
        "oidc": settings.sign_in.is_some(),
        "key_sign_in": settings.key_sign_in,
    })
    .to_string();
    let mut response = Response::new(body::full(text));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The route id the page's requests are measured under.
pub const ROUTE_ID: &str = "gateway.ui";

/// The headers every answer of the page carries.
fn secured(mut response: Response<GatewayBody>) -> Response<GatewayBody> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The page changes with the binary: always revalidate, never keep it past an upgrade.
    // (Sign-in answers say no-store themselves.)
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_with_its_security_headers() {
        let response = serve(&Method::GET, "/tl-gateway/ui/").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        let js = serve(&Method::GET, "/tl-gateway/ui/app.js").unwrap();
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
    }

    #[test]
    fn redirects_to_the_directory_and_refuses_the_rest() {
        let response = serve(&Method::GET, "/tl-gateway/ui").unwrap();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[header::LOCATION], "ui/");
        assert!(matches!(
            serve(&Method::GET, "/tl-gateway/ui/../v1/me"),
            Err(GatewayError::RouteUnknown)
        ));
        assert!(matches!(
            serve(&Method::POST, "/tl-gateway/ui/"),
            Err(GatewayError::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = include_str!("index.html");
        for tag in html.split("<script").skip(1) {
            let head = &tag[..tag.find('>').unwrap()];
            assert!(head.contains("src="), "inline script: <script{head}>");
        }
        assert!(!html.contains("<style") && !html.contains(" style="));
        // No inline event handler (` onclick=`, ` onload=`, …) either.
        for (at, _) in html.match_indices(" on") {
            let name: String = html[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            let after = html[at + 3 + name.len()..].chars().next();
            assert!(
                name.is_empty() || after != Some('='),
                "inline handler on{name}"
            );
        }
        // The script never writes HTML from data.
        for js in [
            include_str!("dom.js"),
            include_str!("app.js"),
            include_str!("keys.js"),
            include_str!("audit.js"),
            include_str!("deferred.js"),
        ] {
            assert!(!js.contains("innerHTML") && !js.contains("outerHTML"));
            assert!(!js.contains("document.write") && !js.contains("eval("));
        }
    }
}
