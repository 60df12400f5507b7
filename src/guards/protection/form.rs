//! The head of a `multipart/form-data` upload: its plain fields up to the first file part; and
//! a watch over the rest, streamed unbuffered, for a checked field repeated after the file.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, GatewayBody};
use crate::overload::ClientBodyError;

/// The boundary of a `multipart/form-data` content type.
pub(super) fn form_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let essence = parts.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let mut boundary = None;
    for param in parts {
        let (name, value) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("boundary") {
            if boundary.is_some() {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if value.is_empty() || value.len() > 70 {
                return None;
            }
            boundary = Some(value.to_owned());
        }
    }
    boundary
}

/// The plain fields of a form up to its first file part.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct FormHead {
    pub(super) fields: Vec<(String, String)>,
    /// Where the first file part's delimiter starts, if the scan stopped at one.
    pub(super) file_at: Option<usize>,
}

pub(super) enum Scan {
    /// More of the body is needed.
    More,
    /// Every field before the first file part (or the end of the form).
    Done(FormHead),
    /// Not a form the gateway can read the same way the upstream would.
    Malformed(&'static str),
}

/// Read the fields of a multipart form from its start, up to the first part with a file name (or
/// the closing delimiter). `ended`: nothing more will come.
pub(super) fn scan_form(buf: &[u8], boundary: &str, ended: bool) -> Scan {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter: at the very start, or after a preamble line.
    let mut at = if buf.starts_with(delimiter) {
        0
    } else {
        let mut line = Vec::with_capacity(delimiter.len() + 2);
        line.extend_from_slice(b"\r\n");
        line.extend_from_slice(delimiter);
        match memchr::memmem::find(buf, &line) {
            Some(i) => i + 2,
            None if ended => {
                return Scan::Malformed("the multipart body has no boundary delimiter")
            }
            None => return Scan::More,
        }
    };
    let mut form = FormHead::default();
    loop {
        let after = at + delimiter.len();
        if buf.len() < after + 2 {
            return if ended {
                Scan::Malformed("the multipart body ends inside a delimiter")
            } else {
                Scan::More
            };
        }
        match &buf[after..after + 2] {
            b"--" => return Scan::Done(form),
            b"\r\n" => {}
            _ => {
                return Scan::Malformed("a multipart delimiter line carries more than the boundary")
            }
        }
        let headers_start = after + 2;
        let Some(headers_len) = memchr::memmem::find(&buf[headers_start..], b"\r\n\r\n") else {
            return if ended {
                Scan::Malformed("a multipart part's headers do not end")
            } else {
                Scan::More
            };
        };
        let headers = &buf[headers_start..headers_start + headers_len];
        let Some((name, file)) = disposition(headers) else {
            return Scan::Malformed(
                "a multipart part without a readable Content-Disposition: form-data name",
            );
        };
        if file {
            form.file_at = Some(at);
            return Scan::Done(form);
        }
        let content_start = headers_start + headers_len + 4;
        let mut closing = Vec::with_capacity(delimiter.len() + 2);
        closing.extend_from_slice(b"\r\n");
        closing.extend_from_slice(delimiter);
        let Some(content_len) = memchr::memmem::find(&buf[content_start..], &closing) else {
            return if ended {
                Scan::Malformed("a multipart part does not end")
            } else {
                Scan::More
            };
        };
        let value = &buf[content_start..content_start + content_len];
        let Ok(value) = std::str::from_utf8(value) else {
            return Scan::Malformed("a multipart form field is not UTF-8");
        };
        form.fields.push((name, value.to_owned()));
        at = content_start + content_len + 2;
    }
}

/// The file parts of the multipart routes of [`super::BODY_IDS`] (a file even without a file name).
const FILE_PARTS: [&str; 1] = ["video_file"];

/// A part's `Content-Disposition: form-data; name="…"`, and whether it carries a file (a file
/// name, or one of the [`FILE_PARTS`]).
fn disposition(headers: &[u8]) -> Option<(String, bool)> {
    let text = std::str::from_utf8(headers).ok()?;
    let mut name = None;
    let mut file = false;
    let mut dispositions = 0;
    for line in text.split("\r\n") {
        let (header, value) = line.split_once(':')?;
        let header = header.trim();
        if header.eq_ignore_ascii_case("content-disposition") {
            dispositions += 1;
            let mut params = value.split(';');
            if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
                return None;
            }
            for param in params {
                let (key, value) = param.split_once('=')?;
                let key = key.trim().to_ascii_lowercase();
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                match key.as_str() {
                    "name" if name.is_none() => name = Some(value.to_owned()),
                    "name" => return None,
                    "filename" | "filename*" => file = true,
                    _ => {}
                }
            }
        }
    }
    (dispositions == 1).then_some(())?;
    name.map(|name| {
        let file = file || FILE_PARTS.contains(&name.as_str());
        (name, file)
    })
}

/// Part headers longer than this after a delimiter in the streamed rest are refused.
const HEADER_MAX: usize = 4096;

/// Watches the rest of a form, after its first file part, for a part named like a checked field
/// (an upstream might read that one instead of the one the gateway checked). Every occurrence of
/// `CRLF--boundary` is a delimiter (the boundary cannot occur in the content); each part's
/// headers are read, at most [`HEADER_MAX`] bytes, across chunk edges. Nothing is buffered but
/// the few bytes after a delimiter whose headers are not complete yet.
#[derive(Debug)]
pub(super) struct Watch {
    /// `CRLF--boundary`.
    pattern: Vec<u8>,
    names: Vec<&'static str>,
    /// The stream's last bytes that a delimiter (and its headers) may still continue from.
    pending: Vec<u8>,
}

impl Watch {
    pub(super) fn new(boundary: &str, names: Vec<&'static str>) -> Watch {
        Watch {
            pattern: format!("\r\n--{boundary}").into_bytes(),
            names,
            pending: Vec::new(),
        }
    }

    /// Enough bytes after a delimiter's start to judge it.
    fn window(&self) -> usize {
        self.pattern.len() + 2 + HEADER_MAX
    }

    /// Take the next bytes of the stream; `Err` names why the form must not go on.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        if !self.pending.is_empty() {
            let mut region = std::mem::take(&mut self.pending);
            let old = region.len();
            region.extend_from_slice(&chunk[..chunk.len().min(self.window())]);
            let starts: Vec<usize> = memchr::memmem::find_iter(&region, &self.pattern)
                .filter(|m| *m < old)
                .collect();
            for m in starts {
                if !self.judge(&region, m)? {
                    // Undecided: fewer than a window of bytes follow, so the chunk is all in it.
                    self.pending = region.split_off(m);
                    return Ok(());
                }
            }
            if chunk.len() < self.pattern.len() {
                let keep = region.len().saturating_sub(self.pattern.len() - 1);
                self.pending = region.split_off(keep);
                return Ok(());
            }
        }
        for m in memchr::memmem::find_iter(chunk, &self.pattern) {
            if !self.judge(chunk, m)? {
                self.pending = chunk[m..].to_vec();
                return Ok(());
            }
        }
        let keep = chunk.len().saturating_sub(self.pattern.len() - 1);
        self.pending = chunk[keep..].to_vec();
        Ok(())
    }

    /// The delimiter at `m` in `buf`: `Ok(true)` judged harmless, `Ok(false)` not yet known.
    fn judge(&self, buf: &[u8], m: usize) -> Result<bool, &'static str> {
        let at = m + self.pattern.len();
        match buf.get(at..at + 2) {
            None => return Ok(false),
            Some(b"--") => return Ok(true),
            Some(b"\r\n") => {}
            Some(_) => {
                return Err(
                    "a multipart delimiter line after the file part carries more than the boundary",
                )
            }
        }
        let start = at + 2;
        let end = buf.len().min(start + HEADER_MAX);
        match memchr::memmem::find(&buf[start..end], b"\r\n\r\n") {
            None if end - start >= HEADER_MAX => {
                Err("a multipart part after the file part has over 4 KiB of headers")
            }
            None => Ok(false),
            Some(len) => match disposition(&buf[start..start + len]) {
                None => Err("a multipart part after the file part has no readable Content-Disposition: form-data name"),
                Some((name, _)) if self.names.contains(&name.as_str()) => Err(
                    "a field guards.protected checks (index_id) comes again after the file part; send it once, before the file",
                ),
                Some(_) => Ok(true),
            },
        }
    }
}

/// The rest of a form upload, streamed through a [`Watch`]: a checked field after the file part
/// ends the body with the client's error (400 `request_body_invalid`; the upstream sees the
/// upload cut off, never complete).
pub(super) struct Watched {
    pub(super) inner: GatewayBody,
    pub(super) watch: Watch,
    pub(super) failed: bool,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                if let Err(why) = self.watch.feed(data) {
                    self.failed = true;
                    let error: BoxError = why.into();
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Invalid(error)))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
