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

pub use crate::ext::RequestId;
use crate::ext::RequestScope;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
        // Kept in the request's scope (made at the edge), not as an extension of its own.
        RequestScope::of(&mut req).set_request_id(id);
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
