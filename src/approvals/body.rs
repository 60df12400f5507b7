//! The body an approval is bound to: read (bounded) before asking or using, digested into the
//! request the approval covers, shown to approvers, and forwarded byte for byte.
//!
//! Without it an approval covered method and target only, and a member could have
//! `{"owner":"bob"}` approved and send `{"owner":"mallory"}`. Only requests that a rule asks approval
//! for and that carry a body are read; every other request streams as before. Multipart routes can
//! never be held for approval (`check` refuses such a rule): their bodies are uploads.

use http::Request;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::body::{self, GatewayBody};
use crate::error::GatewayError;
use crate::overload::ClientBodyError;
use crate::units::hex;

/// Default `approvals.max_body_bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// What an approval knows of its request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundBody {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// The body as approvers see it: the text (JSON), or a note when it is not UTF-8.
    pub shown: String,
}

/// A body that can be read and put back as the same bytes (the stack's [`GatewayBody`]).
pub trait Rebody: http_body::Body<Data = bytes::Bytes> + Unpin + Sized {
    /// A body of exactly these bytes.
    fn from_bytes(bytes: Vec<u8>) -> Self;
    /// Its error, boxed (to find a client body error in it).
    fn boxed_error(error: Self::Error) -> crate::body::BoxError;
}

impl Rebody for GatewayBody {
    fn from_bytes(bytes: Vec<u8>) -> Self {
        body::full(bytes)
    }
    fn boxed_error(error: Self::Error) -> crate::body::BoxError {
        error
    }
}

/// Read the body of `req` (at most `max` bytes, else 413) and put the same bytes back; `None` when
/// it has none.
pub async fn bind<B>(
    req: Request<B>,
    max: usize,
) -> Result<(Request<B>, Option<BoundBody>), GatewayError>
where
    B: Rebody,
{
    if req.body().is_end_stream() {
        return Ok((req, None));
    }
    let too_large = || {
        GatewayError::RequestBodyTooLarge(format!(
            "this request needs someone's approval, which covers its body too, and its body is larger than approvals.max_body_bytes ({max} bytes): it cannot be approved"
        ))
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let (parts, mut incoming) = req.into_parts();
    let mut bytes = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| {
            let e = B::boxed_error(e);
            match ClientBodyError::find(&*e) {
                Some(failure) => failure.to_gateway_error(),
                None => GatewayError::RequestBodyInvalid(format!(
                    "the request body could not be read: {e}"
                )),
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    let bound = BoundBody {
        sha256: hex(&Sha256::digest(&bytes)),
        shown: match std::str::from_utf8(&bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => format!("({} bytes, not UTF-8 text)", bytes.len()),
        },
    };
    Ok((
        Request::from_parts(parts, B::from_bytes(bytes)),
        Some(bound),
    ))
}
