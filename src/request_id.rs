//! Request ids: propagate a well-formed `x-request-id`, otherwise generate one; echo it on the response.
//!
//! A client-supplied id ends up in logs and audit records, so only a short, plain token is accepted;
//! anything else is replaced rather than trusted. This is why the gateway has its own layer rather
//! than tower-http's `SetRequestIdLayer` + `PropagateRequestIdLayer`: those keep whatever id a client
//! sends (any header-legal bytes, any length) and echo it back; replacing them would take a
//! sanitising layer in front of both and a second extension type for the same id. The layer
//! allocates nothing per request beyond the id itself (a named response future, no box).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, as a typed request extension. Held as the header value it is sent and echoed
/// as, so the request, the response and every record share one buffer (cloning it allocates
/// nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Longest client-supplied id that is propagated.
    pub const MAX_LEN: usize = 128;

    /// A fresh random id (32 hex digits).
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let value: u128 = rand::random();
        let mut digits = [0u8; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((value >> (4 * (31 - i))) & 0xf) as usize];
        }
        // One allocation, shared by every clone.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits))
            .expect("hex digits are a valid header value");
        RequestId(value)
    }

    /// Accept a client-supplied id if it is 1–128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let plain = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        plain.then(|| RequestId(value.clone()))
    }

    /// A fixed id (tests).
    pub fn from_static(value: &'static str) -> Self {
        RequestId(HeaderValue::from_static(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only plain ASCII ids are ever constructed.
        self.0.to_str().unwrap_or_default()
    }

    fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Layer that assigns every request a [`RequestId`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl RequestIdLayer {
    /// Create the layer.
    pub fn new() -> Self {
        RequestIdLayer
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

/// Service produced by [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for SetRequestId<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = EchoRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut supplied = req.headers().get_all(&X_REQUEST_ID).iter();
        let id = match (supplied.next(), supplied.next()) {
            (Some(value), None) => RequestId::parse(value).unwrap_or_else(RequestId::generate),
            _ => RequestId::generate(),
        };
        let value = id.header_value();
        req.headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
        req.extensions_mut().insert(id);
        EchoRequestId {
            inner: self.inner.call(req),
            value: Some(value),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`SetRequestId`]: puts the id on the response.
    pub struct EchoRequestId<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, ResB, E> Future for EchoRequestId<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(value) = this.value.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_propagated_and_others_replaced() {
        let ok = ["abc", "req-1.2_3:x", &"a".repeat(128)];
        for id in ok {
            let parsed = RequestId::parse(&HeaderValue::from_str(id).unwrap()).unwrap();
            assert_eq!(parsed.as_str(), id);
        }
        let bad = ["", "has space", "quote\"", &"a".repeat(129), "semi;colon"];
        for id in bad {
            assert!(
                RequestId::parse(&HeaderValue::from_str(id).unwrap()).is_none(),
                "{id:?}"
            );
        }
    }

    #[test]
    fn generated_ids_are_distinct_hex() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
