//! Differential test of the `force` reading: small models of how common frameworks read `force`
//! from a raw query string, against the gateway's classifier (pure, no sockets).
//!
//! Each model is a few lines and names the real behaviour it follows. Two properties, over a
//! generated list of query strings and a proptest strategy:
//!
//! 1. if any model reads `force` as true, the gateway rejects the request or reads `force` as true
//!    (docs/architecture.md, "Security principles");
//! 2. for every accepted request, the models agree on the *forwarded* query
//!    (`Operation::path_and_query()`): all read force as true, or none does.
//!
//! `forced_delete_readers` applies the same models to a request the upstream received; the corpus
//! runner uses it to cross-check everything a member's request made the upstream see.
//!
//! Fragments (`#`) are not in the generated queries: a fragment is not part of a request target,
//! and the `http` crate cuts it off before the gateway sees the request. The corpus covers them by
//! asserting what the upstream receives.

use std::path::Path;

use http::{HeaderMap, Method, Uri, Version};
use proptest::prelude::*;
use tl_gateway::classify::{Classifier, Operation};
use tl_gateway::config::Config;
use tl_gateway::error::GatewayError;

use crate::support::config_yaml;

/// One framework's reading of `force` from a raw query string (without the `?`).
pub struct Model {
    /// Short name, used in failure reports.
    pub name: &'static str,
    /// Whether the framework reads `force` as true.
    pub reads_force: fn(&str) -> bool,
}

/// Every modelled framework.
pub const MODELS: [Model; 8] = [
    Model {
        name: "python-fastapi",
        reads_force: fastapi,
    },
    Model {
        name: "go-net-url",
        reads_force: go,
    },
    Model {
        name: "express-qs",
        reads_force: express,
    },
    Model {
        name: "rails-rack",
        reads_force: rails,
    },
    Model {
        name: "php",
        reads_force: php,
    },
    Model {
        name: "spring",
        reads_force: spring,
    },
    Model {
        name: "aspnet-core",
        reads_force: aspnet,
    },
    Model {
        name: "django-drf",
        reads_force: django,
    },
];

/// The models that read `force` in `query` as true.
pub fn force_readers(query: &str) -> Vec<&'static str> {
    MODELS
        .iter()
        .filter(|m| (m.reads_force)(query))
        .map(|m| m.name)
        .collect()
}

/// The models that would read this request (as an upstream receives it) as a forced delete of an
/// asset: `DELETE /v1.3/assets/{id}` (path percent-decoded, compared case-insensitively, a
/// trailing `/` ignored, as the most lenient routers do) with `force` read as true.
pub fn forced_delete_readers(method: &str, target: &str) -> Vec<&'static str> {
    if !method.eq_ignore_ascii_case("DELETE") {
        return Vec::new();
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = decode(path, false, Invalid::Keep).unwrap_or_default();
    let path = path.strip_suffix('/').unwrap_or(&path);
    let segments: Vec<&str> = path.split('/').collect();
    let asset_delete = matches!(
        segments.as_slice(),
        ["", version, assets, id]
            if version.eq_ignore_ascii_case("v1.3")
                && assets.eq_ignore_ascii_case("assets")
                && !id.is_empty()
                && !id.eq_ignore_ascii_case("multipart-uploads")
    );
    if asset_delete {
        force_readers(query)
    } else {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared decoding helpers.

/// What a decoder does with a `%` not followed by two hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Invalid {
    /// Leave it as it is (Python `unquote`, PHP `urldecode`, .NET `UnescapeDataString`).
    Keep,
    /// Fail (Go `QueryUnescape`, Ruby `decode_www_form_component`, Tomcat).
    Fail,
}

/// Percent-decode (and optionally read `+` as a space); invalid UTF-8 is replaced.
fn decode(s: &str, plus: bool, invalid: Invalid) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (hex, invalid) {
                    (Some(byte), _) => {
                        out.push(byte);
                        i += 3;
                    }
                    (None, Invalid::Keep) => {
                        out.push(b'%');
                        i += 1;
                    }
                    (None, Invalid::Fail) => return None,
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `key=value` pieces split on `&`, empty pieces skipped; a bare key has no value.
fn pairs(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

// ---------------------------------------------------------------------------------------------
// The models.

/// Python: Starlette's `QueryParams` is `urllib.parse.parse_qsl(keep_blank_values=True)` (`&` only
/// since 3.9.2; `+` and escapes decoded, bad escapes kept); FastAPI takes the last value of a scalar
/// parameter; pydantic v2 `bool` accepts `1 t y on yes true` case-insensitively, untrimmed.
fn fastapi(query: &str) -> bool {
    let last = pairs(query)
        .map(|(k, v)| {
            let k = decode(k, true, Invalid::Keep).unwrap_or_default();
            (
                k,
                decode(v.unwrap_or(""), true, Invalid::Keep).unwrap_or_default(),
            )
        })
        .filter(|(k, _)| k == "force")
        .last();
    last.is_some_and(|(_, v)| {
        ["1", "t", "y", "on", "yes", "true"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
    })
}

/// Go: `net/url.ParseQuery` (a piece containing `;` is an error and skipped since Go 1.17; a piece
/// whose escapes are invalid is skipped), `Query().Get` takes the first value, `strconv.ParseBool`
/// accepts `1 t T TRUE true True`.
fn go(query: &str) -> bool {
    let first = pairs(query)
        .filter(|(k, v)| !k.contains(';') && !v.is_some_and(|v| v.contains(';')))
        .filter_map(|(k, v)| {
            Some((
                decode(k, true, Invalid::Fail)?,
                decode(v.unwrap_or(""), true, Invalid::Fail)?,
            ))
        })
        .find(|(k, _)| k == "force");
    first.is_some_and(|(_, v)| matches!(v.as_str(), "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

/// Express 4 (`query parser: extended`, the default) uses `qs.parse`: split on `&`, a key ends at
/// `]=` or `=`, keys and values decoded (`+` as space; a string with a bad escape is kept whole);
/// repeats and `force[]`/`force[n]` (n <= 20) make an array, `force[x]` an object. Handlers then
/// typically test `req.query.force == 'true'`: loose equality, so `['true']` (whose `toString` is
/// `"true"`) counts and an object (`"[object Object]"`) does not.
fn express(query: &str) -> bool {
    let qs_decode = |s: &str| {
        let spaced = s.replace('+', " ");
        decode(&spaced, false, Invalid::Fail)
            .filter(|d| !d.contains('\u{fffd}'))
            .unwrap_or(spaced)
    };
    let mut values = Vec::new();
    let mut object = false;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let pos = part.find("]=").map(|i| i + 1).or_else(|| part.find('='));
        let (k, v) = match pos {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, ""),
        };
        let key = qs_decode(k);
        let Some(rest) = key.strip_prefix("force") else {
            continue;
        };
        let index = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        match index {
            _ if rest.is_empty() => values.push(qs_decode(v)),
            Some("") => values.push(qs_decode(v)),
            Some(i)
                if i.bytes().all(|b| b.is_ascii_digit())
                    && i.parse::<u32>().is_ok_and(|n| n <= 20) =>
            {
                values.push(qs_decode(v))
            }
            Some(_) => object = true,
            None => {}
        }
    }
    // A scalar is itself; an array compares as its elements joined with ','.
    !object && !values.is_empty() && values.join(",") == "true"
}

/// What Rack made of `force`: a string, a key without `=` (nil), or an array/hash.
enum RackValue {
    Text(String),
    Nil,
    Collection,
}

/// Rails on Rack 2: `parse_nested_query` splits on `&` and `;`, decodes with
/// `decode_www_form_component` (a bad escape raises: 400), strips leading brackets from a name
/// (`[force]` is `force`), `force[]`/`force[x]` make an array/hash (a collection after a string
/// raises), the last scalar wins. `ActiveModel::Type::Boolean` casts "" and nil to nil and
/// everything not in `["0", "f", "F", "false", "FALSE", "off", "OFF"]`, arrays and hashes
/// included, to true.
fn rails(query: &str) -> bool {
    const FALSE_VALUES: [&str; 7] = ["0", "f", "F", "false", "FALSE", "off", "OFF"];
    let mut value = None;
    for part in query.split(['&', ';']).filter(|p| !p.is_empty()) {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        let Some(key) = decode(k, true, Invalid::Fail) else {
            return false;
        };
        let v = match v.map(|v| decode(v, true, Invalid::Fail)) {
            Some(None) => return false,
            Some(Some(v)) => Some(v),
            None => None,
        };
        // name =~ /\A[\[\]]*([^\[\]]+)\]*/: base name, then what follows it.
        let trimmed = key.trim_start_matches(['[', ']']);
        let end = trimmed.find(['[', ']']).unwrap_or(trimmed.len());
        let (base, after) = trimmed.split_at(end);
        if base != "force" {
            continue;
        }
        let after = after.trim_start_matches(']');
        value = if after.is_empty() {
            Some(v.map_or(RackValue::Nil, RackValue::Text))
        } else if after == "[" {
            continue; // Rack keeps the whole name: `force[` is its own key
        } else if matches!(value, Some(RackValue::Text(_))) {
            return false; // ParameterTypeError: expected Array/Hash, got String
        } else {
            Some(RackValue::Collection)
        };
    }
    match value {
        Some(RackValue::Text(v)) => !v.is_empty() && !FALSE_VALUES.contains(&v.as_str()),
        Some(RackValue::Collection) => true,
        Some(RackValue::Nil) | None => false,
    }
}

/// PHP `$_GET` (`parse_str`): split on `&`, `urldecode` keys and values (bad escapes kept), a key
/// ends at a NUL (C string), leading spaces are dropped, ` ` and `.` become `_`, `force[...]` with a
/// closing `]` is an array (an unclosed `[` becomes `_`), the last assignment wins.
/// `filter_var(FILTER_VALIDATE_BOOLEAN)` trims whitespace and NUL and accepts `1 true on yes`
/// case-insensitively; on an array it fails (false).
fn php(query: &str) -> bool {
    let mut value: Option<Option<String>> = None; // Some(None): an array
    for (k, v) in pairs(query) {
        let key = decode(k, true, Invalid::Keep).unwrap_or_default();
        let key = key.split('\0').next().unwrap_or("").trim_start_matches(' ');
        let (base, array) = match key.find('[') {
            Some(open) if key[open..].contains(']') => (key[..open].to_owned(), true),
            _ => (key.to_owned(), false),
        };
        let base: String = base
            .chars()
            .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
            .collect();
        if base == "force" {
            let v = decode(v.unwrap_or(""), true, Invalid::Keep).unwrap_or_default();
            value = Some((!array).then_some(v));
        }
    }
    value.flatten().is_some_and(|v| {
        let v = v.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\0']);
        ["1", "true", "on", "yes"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
    })
}

/// Spring MVC on Tomcat: parameters split on `&`, decoded (a parameter with a bad escape is
/// skipped); `@RequestParam boolean` converts the first value (`ArrayToObjectConverter`);
/// `StringToBooleanConverter` trims and accepts `true on yes 1` case-insensitively.
fn spring(query: &str) -> bool {
    let first = pairs(query)
        .filter_map(|(k, v)| {
            Some((
                decode(k, true, Invalid::Fail)?,
                decode(v.unwrap_or(""), true, Invalid::Fail)?,
            ))
        })
        .find(|(k, _)| k == "force");
    first.is_some_and(|(_, v)| {
        let v = v.trim_matches(|c: char| c <= ' ').to_ascii_lowercase();
        ["true", "on", "yes", "1"].contains(&v.as_str())
    })
}

/// ASP.NET Core: `QueryHelpers.ParseQuery` splits on `&`, decodes (`+` as space, bad escapes kept);
/// keys are case-insensitive; model binding converts the first value with `bool.Parse`, which
/// trims whitespace and NUL and accepts `true` case-insensitively.
fn aspnet(query: &str) -> bool {
    let first = pairs(query)
        .map(|(k, v)| {
            let k = decode(k, true, Invalid::Keep).unwrap_or_default();
            (
                k,
                decode(v.unwrap_or(""), true, Invalid::Keep).unwrap_or_default(),
            )
        })
        .find(|(k, _)| k.eq_ignore_ascii_case("force"));
    first.is_some_and(|(_, v)| {
        v.trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .eq_ignore_ascii_case("true")
    })
}

/// Django: `QueryDict` (`&` only since 3.2; `+` and escapes decoded, bad escapes kept) returns the
/// last value; Django REST framework's `BooleanField` accepts exactly
/// `t T y Y yes Yes YES true True TRUE on On ON 1`.
fn django(query: &str) -> bool {
    const TRUE_VALUES: [&str; 14] = [
        "t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1",
    ];
    let last = pairs(query)
        .map(|(k, v)| {
            let k = decode(k, true, Invalid::Keep).unwrap_or_default();
            (
                k,
                decode(v.unwrap_or(""), true, Invalid::Keep).unwrap_or_default(),
            )
        })
        .filter(|(k, _)| k == "force")
        .last();
    last.is_some_and(|(_, v)| TRUE_VALUES.contains(&v.as_str()))
}

// ---------------------------------------------------------------------------------------------
// The gateway side.

/// The example policy: only admins may force-delete an asset.
pub const POLICY: &str = r#"policy:
  default: allow
  rules:
    - id: force-delete-admins-only
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin]
"#;

/// The classifier of a gateway configured with the admins-only force rule (so `force` is a rule key).
pub fn classifier() -> Classifier {
    let yaml = config_yaml("http://127.0.0.1:9", Path::new("/nonexistent/key"), POLICY);
    let config = Config::parse(Path::new("frameworks.yaml"), &yaml).expect("test config parses");
    Classifier::new(config.classify.clone())
}

/// Classify `method target` as an HTTP/1.1 request without body; `None` if the target is no URI
/// (a client cannot send it).
fn classify(
    c: &Classifier,
    method: &Method,
    target: &str,
) -> Option<Result<Operation, GatewayError>> {
    let uri: Uri = target.parse().ok()?;
    Some(c.classify(method, Version::HTTP_11, &uri, &HeaderMap::new(), false))
}

/// The requests each query is tried in: the forced-delete route, and a list route with another
/// parameter in front (where `force` is still read strictly, as a rule key).
fn targets(query: &str) -> [(Method, String); 2] {
    [
        (
            Method::DELETE,
            format!("/v1.3/assets/6298d673f1090f1100476d4c?{query}"),
        ),
        (Method::GET, format!("/v1.3/assets?page=1&{query}")),
    ]
}

/// Property 1 for one request: `Err((cause, description))` when some model reads force as true
/// but the gateway accepted the request without reading force as true.
fn check_counted(
    c: &Classifier,
    method: &Method,
    target: &str,
) -> Result<(), (&'static str, String)> {
    let Some(result) = classify(c, method, target) else {
        return Ok(());
    };
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let readers = force_readers(query);
    let Ok(op) = result else {
        return Ok(());
    };
    if readers.is_empty() || op.query.bool("force") == Some(true) {
        return Ok(());
    }
    let cause = match op.query.bool("force") {
        Some(_) => "accepted and read as force=false",
        None => "accepted without a boolean reading of force (forwarded raw)",
    };
    Err((
        cause,
        format!(
            "{method} {target} -> {}: {readers:?} read force=true",
            op.path_and_query()
        ),
    ))
}

/// Failures grouped by cause: a count and a few examples each.
fn report(failures: &[(&'static str, String)]) -> String {
    let mut causes: Vec<&str> = failures.iter().map(|(c, _)| *c).collect();
    causes.sort_unstable();
    causes.dedup();
    let mut out = String::new();
    for cause in causes {
        let all: Vec<&String> = failures
            .iter()
            .filter(|(c, _)| *c == cause)
            .map(|(_, m)| m)
            .collect();
        out.push_str(&format!("\n{} requests {cause}, e.g.:\n", all.len()));
        for m in all.iter().take(12) {
            out.push_str(&format!("    {m}\n"));
        }
    }
    out
}

/// Property 2 for one request: every model reads the forwarded query alike, and as the gateway did.
fn check_forwarded(
    c: &Classifier,
    method: &Method,
    target: &str,
) -> Result<(), (&'static str, String)> {
    let Some(Ok(op)) = classify(c, method, target) else {
        return Ok(());
    };
    let forwarded = op.path_and_query();
    let query = forwarded.split_once('?').map_or("", |(_, q)| q);
    let readers = force_readers(query);
    let gateway = op.query.bool("force") == Some(true);
    if !readers.is_empty() && readers.len() != MODELS.len() {
        return Err((
            "forwarded with a force some frameworks read as true and others not",
            format!("{method} {target} -> {forwarded}: only {readers:?} read force=true"),
        ));
    }
    if readers.is_empty() == gateway {
        return Err((
            "forwarded with a force the frameworks read otherwise than the gateway",
            format!(
                "{method} {target} -> {forwarded}: gateway read force={gateway}, every framework {}",
                !gateway
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The generated list.

/// Every spelling a framework has an opinion on, in several cases, plus near misses.
const SPELLINGS: &[&str] = &[
    "true", "TRUE", "True", "tRUE", "1", "t", "T", "yes", "YES", "Yes", "y", "Y", "on", "ON", "On",
    "false", "FALSE", "False", "fALSE", "0", "f", "F", "no", "NO", "No", "n", "N", "off", "OFF",
    "Off", "", "2", "-1", "01", "1.0", "tru", "truee", "null", "nil", "none", "ok", "enable",
];

/// How a value is written on the wire.
fn encodings(v: &str) -> Vec<String> {
    let mut out = vec![v.to_owned()];
    if let Some(first) = v.bytes().next() {
        out.push(format!("%{first:02x}{}", &v[1..]));
        out.push(format!("%{first:02X}{}", &v[1..]));
        out.push(v.bytes().map(|b| format!("%{b:02X}")).collect());
    }
    for pad in ["+", "%20", "%09", "%00", "%0A", "%0D"] {
        out.push(format!("{pad}{v}"));
        out.push(format!("{v}{pad}"));
    }
    out.push(format!("{v}%"));
    out.push(format!("{v}%2"));
    out.push(format!("{v}%zz"));
    out.push(format!("{v},true"));
    out.push(format!("\"{v}\""));
    out
}

/// Keys some framework reads as `force`, and near misses.
const KEYS: &[&str] = &[
    "force",
    "Force",
    "FORCE",
    "fOrCe",
    "%66orce",
    "%46orce",
    "f%6Frce",
    "%66%6F%72%63%65",
    "force[]",
    "force[0]",
    "force[1]",
    "force[21]",
    "force[x]",
    "force%5B%5D",
    "force%5b0%5d",
    "[force]",
    "]force",
    "force]",
    "force[",
    "force.x",
    "force_",
    "_force",
    "force%00",
    "force%00x",
    "%20force",
    "+force",
    "force%20",
    "force+",
    "force%2e",
    "forc%65",
    "forcé",
    "force%C3%A9",
];

/// The generated query strings (a few thousand).
fn generated_queries() -> Vec<String> {
    let mut out = Vec::new();
    // One pair: every spelling in every encoding under the canonical key.
    for v in SPELLINGS {
        for e in encodings(v) {
            out.push(format!("force={e}"));
        }
    }
    // Every key variant with the main spellings, plus bare and empty keys.
    for k in KEYS {
        for v in [
            "true", "TRUE", "1", "yes", "on", "t", "false", "0", "no", "%74rue",
        ] {
            out.push(format!("{k}={v}"));
        }
        out.push((*k).to_owned());
        out.push(format!("{k}="));
    }
    // Repeats, in each order, under the canonical key, a case variant and array syntax.
    let short = ["true", "1", "yes", "false", "0", "no", "", "x"];
    for a in short {
        for b in short {
            out.push(format!("force={a}&force={b}"));
            out.push(format!("force={a}&Force={b}"));
            out.push(format!("force={a}&force[]={b}"));
            out.push(format!("force[]={a}&force={b}"));
            out.push(format!("force[]={a}&force[]={b}"));
            out.push(format!("force={a};force={b}"));
            out.push(format!("force={a}&&force={b}"));
            out.push(format!("force={a}&%66orce={b}"));
        }
    }
    // Separators, empty pieces and neighbours.
    for v in ["true", "false", "1", "0"] {
        for q in [
            format!("x=1;force={v}"),
            format!("force={v};x=1"),
            format!("force={v}&"),
            format!("&force={v}"),
            format!("force={v}&&"),
            format!("force={v}&x=1"),
            format!("x=1&force={v}"),
            format!("force={v}&_method=DELETE"),
            format!("_method=DELETE&force={v}"),
            format!("force={v}&page=1"),
            format!("force={v}?force=true"),
            format!("force={v}=true"),
            format!("force=={v}"),
            format!("force={v}&asset_ids=a&asset_ids=b"),
            format!("filename=a%26force%3D{v}&force={v}"),
        ] {
            out.push(q);
        }
    }
    out.push(String::new());
    out
}

#[test]
fn the_models_read_what_their_frameworks_read() {
    // Each row: query, then the models expected to read force as true.
    let all = MODELS.map(|m| m.name);
    let cases: &[(&str, &[&str])] = &[
        ("force=true", &all),
        ("", &[]),
        ("force=false", &[]),
        (
            "force=True",
            &[
                "python-fastapi",
                "go-net-url",
                "rails-rack",
                "php",
                "spring",
                "aspnet-core",
                "django-drf",
            ],
        ),
        (
            "force=1",
            &[
                "python-fastapi",
                "go-net-url",
                "rails-rack",
                "php",
                "spring",
                "django-drf",
            ],
        ),
        (
            "force=yes",
            &[
                "python-fastapi",
                "rails-rack",
                "php",
                "spring",
                "django-drf",
            ],
        ),
        ("force=y", &["python-fastapi", "rails-rack", "django-drf"]),
        ("force=no", &["rails-rack"]),
        (
            "force=true&force=false",
            &["go-net-url", "spring", "aspnet-core"],
        ),
        (
            "force=false&force=true",
            &["python-fastapi", "rails-rack", "php", "django-drf"],
        ),
        ("force[]=true", &["express-qs", "rails-rack"]),
        ("force[0]=true", &["express-qs", "rails-rack"]),
        (
            "%66orce=true",
            &[
                "python-fastapi",
                "go-net-url",
                "express-qs",
                "rails-rack",
                "php",
                "spring",
                "aspnet-core",
                "django-drf",
            ],
        ),
        ("Force=true", &["aspnet-core"]),
        (
            "force=+true",
            &["rails-rack", "php", "spring", "aspnet-core"],
        ),
        ("force=%74rue", &all),
        ("[force]=1", &["rails-rack"]),
        ("force%00x=yes", &["php"]),
        ("force.x=on", &[]),
        ("x=1;force=1", &["rails-rack"]),
        ("force", &[]),
        ("force=", &[]),
    ];
    let mut failures = Vec::new();
    for (query, expected) in cases {
        let got = force_readers(query);
        if got != *expected {
            failures.push(format!("{query:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        forced_delete_readers("DELETE", "/v1.3/assets/abc?force=true").len(),
        MODELS.len()
    );
    assert!(forced_delete_readers("DELETE", "/v1.3/assets/abc").is_empty());
    assert!(forced_delete_readers("GET", "/v1.3/assets/abc?force=true").is_empty());
    assert!(forced_delete_readers("DELETE", "/v1.3/assets/multipart-uploads?force=1").is_empty());
    assert!(!forced_delete_readers("DELETE", "/V1.3/Assets/a%62c/?force=1").is_empty());
}

#[test]
fn every_query_a_framework_reads_as_force_is_refused_or_counted() {
    let c = classifier();
    let queries = generated_queries();
    let failures: Vec<_> = queries
        .iter()
        .flat_map(|q| targets(q))
        .filter_map(|(method, target)| check_counted(&c, &method, &target).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} generated requests are read as force=true by some framework but not by the gateway:{}",
        failures.len(),
        queries.len() * 2,
        report(&failures)
    );
}

#[test]
fn forwarded_queries_are_read_alike_by_every_framework() {
    let c = classifier();
    let queries = generated_queries();
    let requests: Vec<_> = queries.iter().flat_map(|q| targets(q)).collect();
    let accepted = requests
        .iter()
        .filter(|(m, t)| matches!(classify(&c, m, t), Some(Ok(_))))
        .count();
    // The list is not vacuous: the plain spellings are accepted on both routes.
    assert!(
        accepted >= 50,
        "only {accepted} generated requests accepted"
    );
    let failures: Vec<_> = requests
        .iter()
        .filter_map(|(method, target)| check_forwarded(&c, method, target).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {accepted} accepted requests are forwarded with a force reading the frameworks disagree on:{}",
        failures.len(),
        report(&failures)
    );
}

/// Query strings over a small alphabet of the pieces that matter.
fn alphabet_query() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "force", "force", "Force", "FORCE", "=", "=", "&", "&", ";", "[]", "[0]", ".x", "%74",
        "%66", "%20", "+", "1", "0", "t", "y", "on", "true", "true", "false", "yes", " ", "page=1",
    ]);
    prop::collection::vec(token, 1..8).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_force_queries_keep_both_properties(query in alphabet_query()) {
        let c = classifier_cached();
        for (method, target) in targets(&query) {
            check_counted(c, &method, &target).map_err(|(_, m)| TestCaseError::fail(m))?;
            check_forwarded(c, &method, &target).map_err(|(_, m)| TestCaseError::fail(m))?;
        }
    }
}

/// One classifier for all proptest cases.
fn classifier_cached() -> &'static Classifier {
    static CLASSIFIER: std::sync::OnceLock<Classifier> = std::sync::OnceLock::new();
    CLASSIFIER.get_or_init(classifier)
}
