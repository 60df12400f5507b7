//! The request matcher shared by policy rules and rate limits: which requests a `match:` block
//! names, compiled against the route table.
//!
//! A matcher *matches* a request when every given field matches: the exact method, the route (by
//! template or id), each query predicate, and the client. Compiled matchers compare by value
//! (derived `Hash`/`Eq`), so state keyed by a matcher survives reloads that do not change it.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;

use crate::auth::Principal;
use crate::classify::Operation;
use crate::ids::ClientId;
use crate::routes::{ParamKind, RouteId, RouteTable};

/// A `match:` block as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchSettings {
    /// Exact HTTP method.
    pub method: Option<Method>,
    /// Route template, e.g. `/v1.3/assets/{asset_id}`.
    pub path: Option<String>,
    /// Route id, e.g. `assets.delete`.
    pub operation: Option<String>,
    /// Query predicates: parameter name → expected value.
    pub query: BTreeMap<String, QueryValue>,
    /// Only these clients.
    pub clients: Vec<ClientId>,
}

/// Expected value of a query predicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QueryValue {
    /// A boolean, read the way the most permissive framework would.
    Bool(bool),
    /// An exact string.
    Text(String),
}

impl QueryValue {
    /// Whether the request's parameter `name` satisfies this predicate.
    pub fn holds(&self, op: &Operation, name: &str) -> bool {
        match self {
            // An absent flag reads as false everywhere; a present one was read conservatively.
            QueryValue::Bool(want) => op.query.bool(name).unwrap_or(false) == *want,
            QueryValue::Text(want) => op.query.text(name) == Some(want.as_str()),
        }
    }
}

/// A compiled matcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompiledMatch {
    /// Exact method, if constrained.
    pub method: Option<Method>,
    /// Routes it applies to; `None` means every route (and unknown ones).
    pub routes: Option<BTreeSet<RouteId>>,
    /// Query predicates.
    pub query: Vec<(String, QueryValue)>,
    /// Only these clients, if given.
    pub clients: Option<BTreeSet<ClientId>>,
}

impl CompiledMatch {
    /// Whether every given field matches the request.
    pub fn matches(&self, op: &Operation, principal: &Principal) -> bool {
        if self.method.as_ref().is_some_and(|m| *m != op.method) {
            return false;
        }
        let route_matches = match &self.routes {
            Some(routes) => op.route.is_some_and(|r| routes.contains(&r.id)),
            // A matcher naming no route means the TwelveLabs API: the gateway's own API is named
            // explicitly (`operation: gateway.…` or a `/tl-gateway/v1/…` path), so rules and
            // limits written before it went through the stack keep meaning what they meant.
            None => !op.is_gateway(),
        };
        if !route_matches {
            return false;
        }
        if self
            .clients
            .as_ref()
            .is_some_and(|c| !c.contains(&principal.client))
        {
            return false;
        }
        self.query
            .iter()
            .all(|(name, expected)| expected.holds(op, name))
    }

    /// Query keys it names, and of those the ones compared as booleans.
    pub fn query_keys(&self) -> impl Iterator<Item = (&str, bool)> {
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), matches!(v, QueryValue::Bool(_))))
    }
}

/// Compile a matcher against `table` (the TwelveLabs table; paths under `/tl-gateway/` and
/// `gateway.*` operations are looked up in the gateway API's table). Errors make it meaningless (a
/// route that does not exist, a parameter a route does not take); warnings say it can never match.
pub fn compile(
    table: &RouteTable,
    m: &MatchSettings,
) -> Result<(CompiledMatch, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut routes: Option<BTreeSet<RouteId>> = None;
    let gateway = RouteTable::gateway();
    if let Some(path) = &m.path {
        let table = match RouteTable::for_template(path) {
            t if std::ptr::eq(t, gateway) => gateway,
            _ => table,
        };
        let found = table.by_template(path, m.method.as_ref());
        if found.is_empty() {
            let any_method = table.by_template(path, None);
            return Err(if any_method.is_empty() {
                format!("match.path {path:?} is no TwelveLabs v1.3 route (nor a gateway API route)")
            } else {
                format!(
                    "match.path {path:?} has no {} route (it has {})",
                    m.method.as_ref().map_or("", Method::as_str),
                    any_method
                        .iter()
                        .map(|r| r.method.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
        routes = Some(found.iter().map(|r| r.id).collect());
    }
    if let Some(operation) = &m.operation {
        let Some(route) = table.by_id(operation).or_else(|| gateway.by_id(operation)) else {
            return Err(format!(
                "match.operation {operation:?} is no TwelveLabs v1.3 route id (nor a gateway API route id)"
            ));
        };
        if m.method
            .as_ref()
            .is_some_and(|method| *method != route.method)
        {
            return Err(format!(
                "match.operation {operation:?} is a {} route, but match.method is {}",
                route.method,
                m.method.as_ref().map_or("", Method::as_str)
            ));
        }
        let only = BTreeSet::from([route.id]);
        routes = Some(match routes {
            None => only,
            Some(from_path) => {
                if !from_path.contains(&route.id) {
                    return Err(format!(
                        "match.operation {operation:?} and match.path never name the same route"
                    ));
                }
                only
            }
        });
    }
    for (key, expected) in &m.query {
        if let Some(routes) = &routes {
            for id in routes {
                let Some(route) = table
                    .by_id(id.as_str())
                    .or_else(|| gateway.by_id(id.as_str()))
                else {
                    continue;
                };
                match route.query_param(key) {
                    None => {
                        return Err(format!(
                            "match.query {key:?}: route {id} has no query parameter {key:?}"
                        ));
                    }
                    Some(param) => {
                        let is_bool = matches!(expected, QueryValue::Bool(_));
                        if is_bool != (param.kind == ParamKind::Bool) {
                            return Err(format!(
                                "match.query {key:?}: route {id} reads it as {:?}, the rule compares {}",
                                param.kind,
                                if is_bool { "a boolean" } else { "text" }
                            ));
                        }
                    }
                }
            }
        } else if !table.routes().iter().any(|r| {
            m.method.as_ref().is_none_or(|method| *method == r.method)
                && r.query_param(key).is_some()
        }) {
            warnings.push(format!(
                "can never match: no route takes query parameter {key:?}"
            ));
        }
    }
    Ok((
        CompiledMatch {
            method: m.method.clone(),
            routes,
            query: m
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clients: (!m.clients.is_empty()).then(|| m.clients.iter().cloned().collect()),
        },
        warnings,
    ))
}
// ---- The `match:` block as read from the configuration (`config` assembles; policy rules, rate
// limits and audit matchers share it).

/// A `match:` block as written.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    method: Option<String>,
    path: Option<String>,
    operation: Option<String>,
    #[serde(default)]
    query: BTreeMap<String, serde_yaml::Value>,
    /// The clients it names (checked against the configured ones by the section that holds it).
    #[serde(default)]
    pub clients: Vec<ClientId>,
}

/// A method name as configured (any case): one the gateway accepts.
pub fn read_method(
    name: &str,
    at: &[crate::settings::Seg],
) -> Result<Method, crate::settings::Invalid> {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(crate::routes::is_accepted)
        .ok_or_else(|| crate::settings::Invalid::new(at, format!("unknown method {name:?}")))
}

/// Compile a `match:` block found at `at`.
pub fn compile_match(
    raw: RawMatch,
    at: &[crate::settings::Seg],
) -> Result<MatchSettings, crate::settings::Invalid> {
    let key = |k: &'static str| {
        let mut path = at.to_vec();
        path.push(crate::settings::Seg::Key(k));
        path
    };
    let method = match raw.method {
        None => None,
        Some(m) => Some(read_method(&m, &key("method"))?),
    };
    if let Some(path) = &raw.path {
        if !path.starts_with('/') {
            return Err(crate::settings::Invalid::new(
                &key("path"),
                format!("route template {path:?} must start with /"),
            ));
        }
    }
    let mut query = BTreeMap::new();
    for (name, value) in raw.query {
        let value = match value {
            serde_yaml::Value::Bool(b) => QueryValue::Bool(b),
            serde_yaml::Value::String(s) => QueryValue::Text(s),
            serde_yaml::Value::Number(n) => QueryValue::Text(n.to_string()),
            _ => {
                return Err(crate::settings::Invalid::new(
                    &key("query"),
                    format!("query predicate {name:?} must be a boolean, string or number"),
                ))
            }
        };
        query.insert(name, value);
    }
    Ok(MatchSettings {
        method,
        path: raw.path,
        operation: raw.operation,
        query,
        clients: raw.clients,
    })
}
