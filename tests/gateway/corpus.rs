//! The adversarial corpus: one raw HTTP/1.1 request per file under `tests/corpus/`, all run
//! against one gateway (the admins-only force-delete rule) in front of a recording upstream.
//!
//! # File format
//!
//! A file starts with metadata lines beginning with `#`; the first other line starts the raw request.
//!
//! ```text
//! # why: what the case attacks and why the expectation is right      (required)
//! # expect-status: 403                 (required) status of each response on the connection, in
//!                                      order (`200 403` for two pipelined requests)
//! # expect-code: policy_denied         (optional) `code` of each error body, in order; `any` skips
//!                                      the check (hyper's own answer to malformed framing)
//! # upstream: nothing                  (required) or one line per request the upstream must
//! # upstream: DELETE /v1.3/assets/a1?force=true    receive, in order: exact method and target
//! # upstream-lacks: x-request-id=client-42   (optional) a header (or header=value) it must not get
//! # principal: alice                   (optional) the case may legitimately force-delete
//! DELETE /v1.3/assets/a1?force=true HTTP/1.1
//! Host: gateway.test
//! x-api-key: {BOB}
//! Connection: close
//!
//! ```
//!
//! Every request line is sent followed by CRLF (so the file's blank line ends the head, and a body
//! line's CRLF counts in its `Content-Length`). Placeholders: `{ALICE}` and `{BOB}` (the client
//! keys), `{NUL}`, `{LF}` (a bare LF), `{CR}`, `{TAB}` and `{0xNN}` (any byte); other braces are
//! sent as written. Each case must end its connection (`Connection: close`, or framing hyper
//! refuses) so the answer is complete.
//!
//! An error status (>= 400) without `expect-code: any` must carry the gateway's JSON error body.
//!
//! # Checks on everything the upstream receives
//!
//! Exactly one `x-api-key`, the upstream's; no client key anywhere; no cookie, authorization or
//! look-alike; no forwarded, internal or method-override header (case, `_` and `.` normalised); the
//! upstream's own `Host`; a canonical target (classifying it again gives it back). And unless the
//! case says `principal: alice`, no modelled framework (see `frameworks.rs`) reads it as a forced
//! delete of an asset.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use http::{HeaderMap, Method, StatusCode, Version};
use tl_gateway::body;

use crate::frameworks;
use crate::support::*;

/// One corpus file.
struct Case {
    name: String,
    why: String,
    statuses: Vec<String>,
    codes: Vec<String>,
    upstream: Vec<String>,
    lacks: Vec<String>,
    admin: bool,
    request: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    repo_root().join("tests/corpus")
}

/// The byte a placeholder name stands for, if it is one.
fn placeholder(name: &str) -> Option<Vec<u8>> {
    Some(match name {
        "ALICE" => ALICE_KEY.as_bytes().to_vec(),
        "BOB" => BOB_KEY.as_bytes().to_vec(),
        "NUL" => vec![0],
        "LF" => vec![b'\n'],
        "CR" => vec![b'\r'],
        "TAB" => vec![b'\t'],
        _ => {
            let hex = name.strip_prefix("0x").filter(|h| h.len() == 2)?;
            vec![u8::from_str_radix(hex, 16).ok()?]
        }
    })
}

/// Substitute the placeholders of one line; any other `{...}` (JSON, say) is sent as written.
fn substitute(line: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..open]);
        let after = &rest[open..];
        let bytes = after
            .find('}')
            .and_then(|close| Some((placeholder(&after[1..close])?, close)));
        match bytes {
            Some((bytes, close)) => {
                out.extend(bytes);
                rest = &after[close + 1..];
            }
            None => {
                out.push(b'{');
                rest = &after[1..];
            }
        }
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

fn parse_case(name: String, text: &str) -> Result<Case, String> {
    let mut meta: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next_if(|l| l.starts_with('#')) {
        let (key, value) = line[1..]
            .split_once(':')
            .ok_or_else(|| format!("metadata line without ':': {line:?}"))?;
        let key = key.trim();
        if ![
            "why",
            "expect-status",
            "expect-code",
            "upstream",
            "upstream-lacks",
            "principal",
        ]
        .contains(&key)
        {
            return Err(format!("unknown metadata key {key:?}"));
        }
        meta.entry(key).or_default().push(value.trim().to_owned());
    }
    let one = |key: &str| -> Result<String, String> {
        match meta.get(key).map(Vec::as_slice) {
            Some([value]) => Ok(value.clone()),
            Some(_) => Err(format!("`{key}` given more than once")),
            None => Err(format!("`{key}` is required")),
        }
    };
    let words = |key: &str| -> Vec<String> {
        meta.get(key)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    let why = one("why")?;
    let statuses = words("expect-status");
    if statuses.is_empty() {
        return Err("`expect-status` is required".into());
    }
    let upstream = meta.get("upstream").cloned().unwrap_or_default();
    let upstream = match upstream.as_slice() {
        [] => return Err("`upstream` is required".into()),
        [only] if only == "nothing" => Vec::new(),
        lines => lines.to_vec(),
    };
    let admin = match meta.get("principal").map(Vec::as_slice) {
        None => false,
        Some([p]) if p == "alice" => true,
        Some(other) => return Err(format!("unknown principal {other:?}")),
    };
    let mut request = Vec::new();
    for line in lines {
        request.extend(substitute(line));
        request.extend_from_slice(b"\r\n");
    }
    if request.is_empty() {
        return Err("no request".into());
    }
    Ok(Case {
        name,
        why,
        statuses,
        codes: words("expect-code"),
        upstream,
        lacks: words("upstream-lacks"),
        admin,
        request,
    })
}

/// Every case, sorted by file name.
fn load_cases() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            parse_case(name.clone(), &text).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
}

/// One response read off the wire: status and body.
struct Answer {
    status: u16,
    body: String,
}

/// Split everything read from a connection into responses (Content-Length or chunked bodies).
fn split_responses(mut raw: &str) -> Result<Vec<Answer>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (head, rest) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("incomplete response head: {raw:?}"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        let (body, rest) = if chunked {
            let mut body = String::new();
            let mut rest = rest;
            loop {
                let (size, after) = rest
                    .split_once("\r\n")
                    .ok_or_else(|| "incomplete chunk".to_owned())?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                if size == 0 {
                    rest = after.split_once("\r\n").map_or("", |(_, r)| r);
                    break;
                }
                body.push_str(after.get(..size).ok_or("short chunk")?);
                rest = after.get(size + 2..).unwrap_or("");
            }
            (body, rest)
        } else {
            let n = length.unwrap_or(0).min(rest.len());
            (rest[..n].to_owned(), &rest[n..])
        };
        out.push(Answer { status, body });
        raw = rest;
    }
    Ok(out)
}

/// Lowercase, `_` and `.` read as `-`: how lenient servers match header names.
fn normalised(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Problems with one request as the upstream received it, whatever the case.
fn upstream_hygiene(
    seen: &Recorded,
    upstream: SocketAddr,
    classifier: &tl_gateway::classify::Classifier,
) -> Vec<String> {
    let mut problems = Vec::new();
    let target = seen
        .uri
        .path_and_query()
        .map_or(String::new(), |pq| pq.to_string());
    let keys: Vec<_> = seen.headers.get_all("x-api-key").iter().collect();
    if keys != [UPSTREAM_KEY] {
        problems.push(format!(
            "x-api-key values {keys:?}, want exactly the upstream key"
        ));
    }
    for (name, value) in &seen.headers {
        let n = normalised(name.as_str());
        let bytes = value.as_bytes();
        for (who, key) in [("alice", ALICE_KEY), ("bob", BOB_KEY)] {
            if bytes.windows(key.len()).any(|w| w == key.as_bytes()) {
                problems.push(format!("{who}'s key reached the upstream in {name}"));
            }
        }
        let credential = [
            "authorization",
            "proxy-authorization",
            "cookie",
            "api-key",
            "apikey",
            "x-apikey",
        ]
        .contains(&n.as_str())
            || (n == "x-api-key" && name.as_str() != "x-api-key");
        let forwarded = n == "forwarded"
            || n.starts_with("x-forwarded-")
            || ["x-real-ip", "x-original-url", "x-rewrite-url"].contains(&n.as_str());
        let internal = n.starts_with("x-tl-gateway-");
        let overriding = tl_gateway::classify::METHOD_OVERRIDE_HEADERS.contains(&n.as_str());
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ]
        .contains(&n.as_str());
        if credential || forwarded || internal || overriding || hop {
            problems.push(format!("the upstream received header {name}"));
        }
    }
    let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
    if hosts != [upstream.to_string().as_str()] {
        problems.push(format!("Host {hosts:?}, want only {upstream}"));
    }
    if seen.version != Version::HTTP_11 {
        problems.push(format!("upstream version {:?}", seen.version));
    }
    match classifier.classify(
        &seen.method,
        Version::HTTP_11,
        &seen.uri,
        &HeaderMap::new(),
        false,
    ) {
        Ok(op) if op.path_and_query() == target => {}
        Ok(op) => problems.push(format!(
            "non-canonical target {target}: classifies to {}",
            op.path_and_query()
        )),
        Err(e) => problems.push(format!("the forwarded target {target} is refused: {e}")),
    }
    problems
}

/// Every problem with one case's outcome.
fn check_case(
    case: &Case,
    raw_answer: &str,
    received: &[Recorded],
    upstream: SocketAddr,
    classifier: &tl_gateway::classify::Classifier,
) -> Vec<String> {
    let mut problems = Vec::new();
    for secret in [ALICE_KEY, BOB_KEY, UPSTREAM_KEY] {
        if raw_answer.contains(secret) {
            problems.push("a key appears in the answer to the client".to_owned());
        }
    }
    match split_responses(raw_answer) {
        Err(e) => problems.push(format!("unreadable answer ({e})")),
        Ok(answers) => {
            let statuses: Vec<String> = answers.iter().map(|a| a.status.to_string()).collect();
            if statuses != case.statuses {
                problems.push(format!(
                    "statuses {statuses:?}, want {:?}; first body: {}",
                    case.statuses,
                    answers.first().map_or("", |a| a.body.as_str())
                ));
            }
            for (i, answer) in answers.iter().enumerate() {
                let expected = case.codes.get(i).map(String::as_str);
                if answer.status < 400 || expected == Some("any") {
                    continue;
                }
                let code = serde_json::from_str::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|j| j["code"].as_str().map(str::to_owned));
                match (code, expected) {
                    (None, _) => problems.push(format!(
                        "response {i} ({}) is not the gateway's JSON error: {:?}",
                        answer.status, answer.body
                    )),
                    (Some(code), Some(want)) if code != want => {
                        problems.push(format!("response {i}: code {code}, want {want}"))
                    }
                    _ => {}
                }
            }
        }
    }
    let got: Vec<String> = received
        .iter()
        .map(|r| {
            let target = r.uri.path_and_query().map_or("", |pq| pq.as_str());
            format!("{} {target}", r.method)
        })
        .collect();
    if got != case.upstream {
        problems.push(format!(
            "the upstream received {got:?}, want {:?}",
            case.upstream
        ));
    }
    for seen in received {
        problems.extend(upstream_hygiene(seen, upstream, classifier));
        let target = seen.uri.path_and_query().map_or("", |pq| pq.as_str());
        let readers = frameworks::forced_delete_readers(seen.method.as_str(), target);
        if !case.admin && !readers.is_empty() {
            problems.push(format!(
                "FORCED DELETE reached the upstream: {} {target} is one for {readers:?}",
                seen.method
            ));
        }
        for lack in &case.lacks {
            let (name, value) = lack.split_once('=').unwrap_or((lack, ""));
            let hit = seen
                .headers
                .get_all(name)
                .iter()
                .any(|v| value.is_empty() || v.as_bytes() == value.as_bytes());
            if hit {
                problems.push(format!("the upstream received {lack}"));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_case_gets_its_answer_and_the_upstream_sees_only_what_policy_allowed() {
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let gateway = TestGateway::start_with(&origin, frameworks::POLICY, |_| {}).await;
    let classifier = frameworks::classifier();
    let cases = load_cases();
    assert!(cases.len() >= 70, "only {} corpus cases", cases.len());

    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        let before = upstream.requests().len();
        let answer = raw_http1(gateway.addr, &case.request).await;
        let received = upstream.requests().split_off(before);
        let problems = check_case(case, &answer, &received, upstream.addr, &classifier);
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({})\n    {}",
                case.name,
                case.why,
                problems.join("\n    ")
            ));
        }
    }
    println!("{} corpus cases in {:?}", cases.len(), started.elapsed());
    gateway.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Forced-delete spellings and near misses, as a member, over HTTP/1.1 and h2c.
const H2C_TARGETS: &[&str] = &[
    "force=true",
    "force=TRUE",
    "force=True",
    "force=1",
    "force=t",
    "force=yes",
    "force=on",
    "force=y",
    "force=false",
    "force=0",
    "force=",
    "force",
    "force=true&force=false",
    "force=false&force=true",
    "Force=true",
    "force[]=true",
    "%66orce=true",
    "force=%74rue",
    "force=true%20",
    "force=+true",
    "force=true;x=1",
    "_method=DELETE",
];

/// The spellings every gateway must read as force=true.
const FORCED: &[&str] = &[
    "force=true",
    "force=TRUE",
    "force=True",
    "force=1",
    "force=t",
    "force=yes",
    "force=on",
    "force=y",
];

/// What one request produced: status, and what the upstream received for it.
async fn outcome(
    proto: Proto,
    gateway: &TestGateway,
    upstream: &Upstream,
    method: &Method,
    target: &str,
    body: Option<&'static str>,
) -> (StatusCode, Vec<String>) {
    let before = upstream.requests().len();
    let req = request(method.clone(), &gateway.url(target), Some(BOB_KEY))
        .body(body.map_or_else(body::empty, full))
        .unwrap();
    let status = send(proto, req).await.status();
    let received = upstream
        .requests()
        .split_off(before)
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.uri.path_and_query().unwrap()))
        .collect();
    (status, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_gets_the_same_decisions_as_http1() {
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let gateway = TestGateway::start_with(&origin, frameworks::POLICY, |_| {}).await;
    let mut requests: Vec<(Method, String, Option<&'static str>)> = H2C_TARGETS
        .iter()
        .map(|q| {
            (
                Method::DELETE,
                format!("/v1.3/assets/6298d673f1090f1100476d4c?{q}"),
                None,
            )
        })
        .collect();
    for method in ["delete", "DELETEX", "TRACE"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        requests.push((method, "/v1.3/assets/a1?force=true".into(), None));
    }
    requests.push((Method::DELETE, "/v1.3/assets/a1".into(), Some("force=true")));
    requests.push((
        Method::DELETE,
        "/v1.3/assets/multipart-uploads?force=true".into(),
        None,
    ));
    requests.push((Method::DELETE, "/v1.3/assets/a%2Fb?force=true".into(), None));
    requests.push((Method::DELETE, "/v1.3/assets/./a1?force=true".into(), None));
    requests.push((
        Method::GET,
        "/v1.3/assets?asset_ids=a1&asset_ids=a2".into(),
        None,
    ));

    let mut failures = Vec::new();
    for (method, target, body) in &requests {
        let one = outcome(Proto::Http1, &gateway, &upstream, method, target, *body).await;
        let two = outcome(Proto::H2c, &gateway, &upstream, method, target, *body).await;
        if one != two {
            failures.push(format!("{method} {target}: HTTP/1.1 {one:?}, h2c {two:?}"));
        }
        for line in one.1.iter().chain(&two.1) {
            let (m, t) = line.split_once(' ').unwrap();
            let readers = frameworks::forced_delete_readers(m, t);
            if !readers.is_empty() {
                failures.push(format!(
                    "{method} {target}: forced delete {line} for {readers:?}"
                ));
            }
        }
        // The plain true spellings are denied, not merely refused: policy read them as force=true.
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let asset = target.starts_with("/v1.3/assets/6298d673f1090f1100476d4c?");
        if *method == Method::DELETE && asset && FORCED.contains(&query) && body.is_none() {
            for (proto, (status, _)) in [("HTTP/1.1", &one), ("h2c", &two)] {
                if *status != StatusCode::FORBIDDEN {
                    failures.push(format!("{proto} {method} {target}: {status}, want 403"));
                }
            }
        }
    }
    gateway.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A configuration where `force` is read on routes the table does not know: unknown routes are
/// forwarded, and a rule restricts every forced DELETE, whatever the path.
const FORWARD_UNKNOWN: &str = r#"routes:
  unknown: forward
policy:
  default: allow
  rules:
    - id: no-member-force-anywhere
      match: { method: DELETE, query: { force: true } }
      allow_roles: [admin]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_key_on_a_forwarded_unknown_route_is_read_as_strictly_as_a_route_boolean() {
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let gateway = TestGateway::start_with(&origin, FORWARD_UNKNOWN, |_| {}).await;
    let mut failures = Vec::new();
    // `force=true` is denied on a route the table does not know: the rule key is read as a boolean.
    let (status, _) = outcome(
        Proto::Http1,
        &gateway,
        &upstream,
        &Method::DELETE,
        "/v1.3/brand-new/x1?force=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for query in [
        "force=%74rue",
        "force=+true",
        "force=true%20",
        "force=%20TRUE",
        "force=%31",
    ] {
        let target = format!("/v1.3/brand-new/x1?{query}");
        for proto in [Proto::Http1, Proto::H2c] {
            let (status, received) =
                outcome(proto, &gateway, &upstream, &Method::DELETE, &target, None).await;
            for line in &received {
                let q = line.split_once('?').map_or("", |(_, q)| q);
                let readers = frameworks::force_readers(q);
                if !readers.is_empty() {
                    failures.push(format!(
                        "{proto:?} DELETE {target}: {status}, the upstream received {line}, which {readers:?} read as force=true"
                    ));
                }
            }
        }
    }
    gateway.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_corpus_format_is_parsed_as_documented() {
    let case = parse_case(
        "x.http".into(),
        "# why: w\n# expect-status: 200 403\n# expect-code: any policy_denied\n# upstream: POST /v1.3/assets\n# principal: alice\nGET / HTTP/1.1\nx-api-key: {BOB}{NUL}{0x7f}{\"a\":1}\n\n",
    )
    .unwrap();
    assert_eq!(case.statuses, ["200", "403"]);
    assert_eq!(case.codes, ["any", "policy_denied"]);
    assert_eq!(case.upstream, ["POST /v1.3/assets"]);
    assert!(case.admin);
    assert_eq!(
        case.request,
        format!("GET / HTTP/1.1\r\nx-api-key: {BOB_KEY}\0\x7f{{\"a\":1}}\r\n\r\n").into_bytes()
    );
    assert!(parse_case(
        "y".into(),
        "# why: w\n# expect-status: 200\nGET / HTTP/1.1\n"
    )
    .is_err());
    assert!(parse_case("z".into(), "# whyy: w\n").is_err());
    let two = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let answers = split_responses(two).unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!((answers[1].status, answers[1].body.as_str()), (403, "abc"));
}
