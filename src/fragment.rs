//! Fragments in HTTP/1 request targets: seen on the wire, since the parsed request cannot show them.
//!
//! `GET /v1.3/assets#x HTTP/1.1` is parsed by hyper into the target `/v1.3/assets`: the `http`
//! crate drops a `#fragment` while parsing, so no layer can tell it was there. Proxies have been
//! bypassed through fragments (Envoy CVE-2021-32779), and every other oddity in a target is refused
//! here, so fragments are too: [`FragmentWatch`] wraps a client connection's reads and notes the
//! target of every request line that holds a `#` (only lines that look like request lines are
//! considered; the scan is a `memchr` for `#` per read, nothing is copied unless a read ends
//! inside such a line). The edge marks a request whose target matches one noted on its connection
//! with [`FragmentInTarget`], and classification refuses it with 400.
//!
//! HTTP/2 carries the target in the HPACK-encoded `:path`, which the h2 library parses (and strips)
//! the same way; a fragment there is not visible to the gateway. What it forwards is still exactly
//! what it judged: the target without the fragment.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request-line prefix carried from one read to the next (longer targets get 414 anyway).
const MAX_LINE: usize = 16 * 1024;

/// Targets (the part before `#`) of request lines on one connection that held a fragment.
#[derive(Debug, Default)]
pub struct FragmentsSeen {
    any: AtomicBool,
    targets: Mutex<Vec<Box<[u8]>>>,
}

impl FragmentsSeen {
    /// Whether a request line with this target (path and query) carried a fragment; the note is
    /// consumed. Cheap when nothing was seen.
    pub fn take(&self, path_and_query: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut seen) = self.targets.lock() else {
            // Fail closed: the state is unknown.
            return true;
        };
        match seen.iter().position(|t| **t == *path_and_query.as_bytes()) {
            Some(i) => {
                seen.remove(i);
                self.any.store(!seen.is_empty(), Ordering::Release);
                true
            }
            None => false,
        }
    }

    fn note(&self, target: &[u8]) {
        if let Ok(mut seen) = self.targets.lock() {
            // Bounded: a connection cannot grow this without limit.
            if seen.len() >= 16 {
                seen.remove(0);
            }
            seen.push(target.into());
            self.any.store(true, Ordering::Release);
        }
    }
}

/// Request extension: this request's target had a `#fragment` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInTarget;

/// A client connection's byte stream, watched for request lines with a `#` in their target.
#[derive(Debug)]
pub struct FragmentWatch<IO> {
    inner: IO,
    seen: Arc<FragmentsSeen>,
    /// The current, unfinished line, kept only while it still looks like a request line.
    line: Vec<u8>,
    /// The rest of the current line cannot matter (not a request line, or already noted).
    skip: bool,
}

impl<IO> FragmentWatch<IO> {
    /// Watch `inner`'s reads; findings go to `seen`.
    pub fn new(inner: IO, seen: Arc<FragmentsSeen>) -> Self {
        FragmentWatch {
            inner,
            seen,
            line: Vec::new(),
            skip: false,
        }
    }

    fn scan(&mut self, chunk: &[u8]) {
        if memchr::memchr(b'#', chunk).is_none() {
            // The common case: only the unfinished last line can matter later.
            match memchr::memrchr(b'\n', chunk) {
                Some(i) => {
                    self.line.clear();
                    self.skip = false;
                    self.unfinished(&chunk[i + 1..]);
                }
                None => self.unfinished(chunk),
            }
            return;
        }
        let mut rest = chunk;
        loop {
            let newline = memchr::memchr(b'\n', rest);
            let segment = newline.map_or(rest, |i| &rest[..i]);
            match (self.skip, memchr::memchr(b'#', segment)) {
                (true, _) => {}
                (false, Some(hash)) => {
                    let mut whole = std::mem::take(&mut self.line);
                    whole.extend_from_slice(&segment[..hash]);
                    if let Some(target) = request_target(&whole) {
                        self.seen.note(target);
                    }
                    // The rest of this line is the fragment and the protocol version.
                    self.skip = true;
                }
                (false, None) if newline.is_none() => self.unfinished(segment),
                (false, None) => {}
            }
            match newline {
                Some(i) => {
                    self.line.clear();
                    self.skip = false;
                    rest = &rest[i + 1..];
                }
                None => break,
            }
        }
    }

    /// More of the current line arrived without its end: keep it while it may be a request line.
    fn unfinished(&mut self, more: &[u8]) {
        if self.skip || more.is_empty() {
            return;
        }
        if self.line.len() + more.len() > MAX_LINE {
            self.line = Vec::new();
            self.skip = true;
            return;
        }
        self.line.extend_from_slice(more);
        if !looks_like_request_line(&self.line) {
            self.line = Vec::new();
            self.skip = true;
        }
    }
}

/// `METHOD SP /target` up to the end of `line`: the target, if the line has that shape.
fn request_target(line: &[u8]) -> Option<&[u8]> {
    let space = line.iter().position(|&b| b == b' ')?;
    let (method, rest) = (&line[..space], &line[space + 1..]);
    let method_ok =
        !method.is_empty() && method.len() <= 16 && method.iter().all(|b| b.is_ascii_uppercase());
    let target_ok = rest.first().is_some_and(|&b| b == b'/') && !rest.contains(&b' ');
    (method_ok && target_ok).then_some(rest)
}

/// Whether `line` is (a prefix of) `METHOD SP /target…` (an empty line may still become one).
fn looks_like_request_line(line: &[u8]) -> bool {
    let method_len = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len > 16 {
        return false;
    }
    match &line[method_len..] {
        [] => true,
        [b' '] => method_len > 0,
        [b' ', b'/', rest @ ..] => method_len > 0 && !rest.contains(&b' '),
        _ => false,
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FragmentWatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FragmentWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen_after(chunks: &[&[u8]]) -> Arc<FragmentsSeen> {
        let seen = Arc::new(FragmentsSeen::default());
        let mut watch = FragmentWatch::new((), seen.clone());
        for chunk in chunks {
            watch.scan(chunk);
        }
        seen
    }

    #[test]
    fn a_fragment_in_a_request_line_is_noted_with_its_target() {
        let seen = seen_after(&[b"GET /v1.3/assets?page=1#frag HTTP/1.1\r\nhost: x\r\n\r\n"]);
        assert!(seen.take("/v1.3/assets?page=1"));
        assert!(!seen.take("/v1.3/assets?page=1"), "consumed");
    }

    #[test]
    fn lines_split_across_reads_are_followed() {
        for split in 1..40 {
            let request = b"DELETE /v1.3/assets/a1#x?force=true HTTP/1.1\r\nhost: x\r\n\r\n";
            let (a, b) = request.split_at(split);
            let seen = seen_after(&[a, b]);
            assert!(seen.take("/v1.3/assets/a1"), "split at {split}");
        }
    }

    #[test]
    fn hashes_elsewhere_are_ignored() {
        let seen = seen_after(&[
            b"GET /v1.3/assets HTTP/1.1\r\nif-none-match: \"#1\"\r\n\r\n",
            b"POST /v1.3/assets HTTP/1.1\r\ncontent-length: 20\r\n\r\n",
            b"{\"a\": \"#GET /x#\"}\n",
            b"binary-without-newline GET /y#z",
            b" more GET /z#",
        ]);
        assert!(!seen.take("/v1.3/assets"));
        assert!(!seen.take("/x"));
        assert!(!seen.take("/y"));
        assert!(!seen.take("/z"));
    }

    #[test]
    fn pipelined_requests_each_get_their_own_note() {
        let seen = seen_after(&[
            b"GET /a#1 HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c#3 HTTP/1.1\r\n\r\n",
        ]);
        assert!(seen.take("/a"));
        assert!(!seen.take("/b"));
        assert!(seen.take("/c"));
    }

    #[test]
    fn request_line_shapes() {
        assert_eq!(request_target(b"GET /a"), Some(&b"/a"[..]));
        assert_eq!(request_target(b"GET a"), None);
        assert_eq!(request_target(b"get /a"), None);
        assert_eq!(request_target(b"GET /a b"), None);
        assert!(looks_like_request_line(b""));
        assert!(looks_like_request_line(b"DEL"));
        assert!(looks_like_request_line(b"DELETE /v1"));
        assert!(!looks_like_request_line(b"x-api-key: k"));
        assert!(!looks_like_request_line(b"GET /a HTTP/1.1"));
    }
}
