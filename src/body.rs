//! The one body type that flows through the stack, both ways.
//!
//! Bodies are boxed once at the edge and streamed; nothing in the request path collects a body.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Boxed error type used by bodies and the upstream client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The request and response body type of every layer.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// Box any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> GatewayBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A complete in-memory body (only for small gateway-made responses).
pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> GatewayBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
