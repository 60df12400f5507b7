//! The head of a `multipart/form-data` upload: its plain fields up to the first file part.

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
