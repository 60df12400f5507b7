//! Property tests of the canonicaliser (`tl_gateway::classify::Classifier`), pure, no sockets.
//!
//! Targets are generated from the route table (every template filled with ids and documented query
//! parameters) and then mutated with the forms docs/architecture.md ("Security principles") says must be refused. For every accepted
//! request:
//!
//! - the forwarded target (`Operation::path_and_query`) contains none of the rejected forms;
//! - classifying it again is a fixpoint, and gives the same route, path parameters and boolean
//!   readings as the original (a false boolean is omitted upstream, so it is the one difference);
//! - the admins-only policy decides the same for bob and alice on the original and the forwarded
//!   request.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, Method, Uri, Version};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use tl_gateway::auth::Principal;
use tl_gateway::classify::{
    read_bool, Classifier, Operation, ParamValue, FALSE_SPELLINGS, TRUE_SPELLINGS,
};
use tl_gateway::config::Config;
use tl_gateway::policy::Policy;
use tl_gateway::routes::{ParamKind, RouteTable};

use crate::frameworks::POLICY;
use crate::support::config_yaml;

struct World {
    classifier: Classifier,
    policy: Arc<Policy>,
    bob: Principal,
    alice: Principal,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let yaml = config_yaml("http://127.0.0.1:9", Path::new("/nonexistent/key"), POLICY);
        let config = Config::parse(Path::new("properties.yaml"), &yaml).expect("config parses");
        let principal = |client: &str, role: &str| Principal {
            client: client.parse().unwrap(),
            roles: Arc::from(vec![role.parse().unwrap()]),
            credential: None,
        };
        World {
            classifier: Classifier::new(config.classify.clone()),
            policy: config.compiled_policy.clone(),
            bob: principal("bob", "member"),
            alice: principal("alice", "admin"),
        }
    })
}

/// What a generated query parameter looks like before it is fitted to a route.
#[derive(Debug, Clone)]
struct ParamSeed {
    which: Index,
    spelling: Index,
    digits: String,
    text: String,
    extra: Vec<String>,
}

fn param_seed() -> impl Strategy<Value = ParamSeed> {
    (
        any::<Index>(),
        any::<Index>(),
        "[0-9]{1,6}",
        "[a-zA-Z0-9_.~-]{1,8}",
        prop::collection::vec("[a-z0-9]{1,6}", 0..3),
    )
        .prop_map(|(which, spelling, digits, text, extra)| ParamSeed {
            which,
            spelling,
            digits,
            text,
            extra,
        })
}

/// A request an SDK could send: a route's own method, its template filled with plain ids, and a
/// few of its documented query parameters (plus `force`, a rule key, on safe routes).
#[derive(Debug, Clone)]
struct Valid {
    method: Method,
    target: String,
}

fn valid() -> impl Strategy<Value = Valid> {
    (
        any::<Index>(),
        prop::collection::vec("[A-Za-z0-9][A-Za-z0-9._~-]{0,11}", 3),
        prop::collection::vec(param_seed(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(route, ids, seeds, head)| {
            let routes = RouteTable::v1_3().routes();
            let route = &routes[route.index(routes.len())];
            let mut ids = ids.into_iter();
            let path: Vec<String> = route
                .template
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        ids.next().unwrap_or_else(|| "x".into())
                    } else {
                        seg.to_owned()
                    }
                })
                .collect();
            let safe = route.method == Method::GET;
            let mut pairs: Vec<String> = Vec::new();
            let mut used: Vec<&str> = Vec::new();
            // The spellings the gateway itself accepts, in either case when it accepts that too.
            let spellings: Vec<String> = TRUE_SPELLINGS
                .iter()
                .chain(&FALSE_SPELLINGS)
                .flat_map(|s| [s.to_string(), s.to_ascii_uppercase()])
                .filter(|s| read_bool(s).is_ok())
                .collect();
            for seed in seeds {
                let bool_value = spellings[seed.spelling.index(spellings.len())].clone();
                let choices = route.query.len() + usize::from(safe);
                if choices == 0 {
                    break;
                }
                let i = seed.which.index(choices);
                let (name, kind) = match route.query.get(i) {
                    Some(p) => (p.name, p.kind),
                    None => ("force", ParamKind::Bool),
                };
                if used.contains(&name) {
                    continue;
                }
                used.push(name);
                match kind {
                    ParamKind::Bool => pairs.push(format!("{name}={bool_value}")),
                    ParamKind::Integer => pairs.push(format!("{name}={}", seed.digits)),
                    ParamKind::Number | ParamKind::Text => {
                        pairs.push(format!("{name}={}", seed.text))
                    }
                    ParamKind::List => {
                        pairs.push(format!("{name}={}", seed.text));
                        pairs.extend(seed.extra.iter().map(|v| format!("{name}={v}")));
                    }
                }
            }
            let mut target = path.join("/");
            if !pairs.is_empty() {
                target = format!("{target}?{}", pairs.join("&"));
            }
            let method = if safe && head {
                Method::HEAD
            } else {
                route.method.clone()
            };
            Valid { method, target }
        })
}

/// The forms the canonicaliser must refuse (or, for the harmless ones, must make canonical).
const INSERTIONS: &[&str] = &[
    "%2F", "%2f", "%5C", "%5c", "%2e%2e", "%2e", "%252F", "%", "%00", "%zz", ";", ";x=1", "\\",
    "/", "//", "/./", "/../", "/.", "/..", "é", "*", "#", "?", "&", "&&", "=", "[]", "[0]", ".x",
    "+", "%20", "~", ":", "A", "..",
];

const APPENDIX: &[&str] = &[
    "/",
    "?",
    "&force=true",
    "&force=1",
    "&Force=1",
    "&FORCE=true",
    "&force=",
    "&force",
    "&force=true&force=false",
    "&force[]=true",
    "&%66orce=true",
    "&_method=DELETE",
    "&page=1&page=2",
    "?force=yes",
    "?force=%74rue",
    "?force=true%20",
    "#?force=true",
];

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Insert(Index, &'static str),
    Append(&'static str),
    Method(Method),
    Upper(Index),
    DuplicateFirstPair,
    Absolute,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let methods = vec![
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    prop_oneof![
        1 => Just(Mutation::None),
        4 => (any::<Index>(), prop::sample::select(INSERTIONS)).prop_map(|(i, s)| Mutation::Insert(i, s)),
        3 => prop::sample::select(APPENDIX).prop_map(Mutation::Append),
        1 => prop::sample::select(methods).prop_map(Mutation::Method),
        1 => any::<Index>().prop_map(Mutation::Upper),
        1 => Just(Mutation::DuplicateFirstPair),
        1 => Just(Mutation::Absolute),
    ]
}

fn apply(valid: &Valid, mutations: &[Mutation]) -> (Method, String) {
    let mut method = valid.method.clone();
    let mut target = valid.target.clone();
    for m in mutations {
        match m {
            Mutation::None => {}
            Mutation::Insert(at, s) => {
                let mut at = at.index(target.len() + 1);
                while !target.is_char_boundary(at) {
                    at -= 1;
                }
                target.insert_str(at, s);
            }
            Mutation::Append(s) => target.push_str(s),
            Mutation::Method(m) => method = m.clone(),
            Mutation::Upper(at) => {
                let at = at.index(target.len());
                if target.is_char_boundary(at) && target.is_char_boundary(at + 1) {
                    let upper = target[at..at + 1].to_ascii_uppercase();
                    target.replace_range(at..at + 1, &upper);
                }
            }
            Mutation::DuplicateFirstPair => {
                if let Some((_, q)) = target.clone().split_once('?') {
                    let first = q.split('&').next().unwrap_or("");
                    target = format!("{target}&{first}");
                }
            }
            Mutation::Absolute => target = format!("http://evil.example{target}"),
        }
    }
    (method, target)
}

fn classify(method: &Method, target: &str) -> Option<Result<Operation, String>> {
    let uri: Uri = target.parse().ok()?;
    Some(
        world()
            .classifier
            .classify(method, Version::HTTP_11, &uri, &HeaderMap::new(), false)
            .map_err(|e| e.to_string()),
    )
}

/// The forwarded target contains none of the forms the classifier refuses.
fn check_canonical(op: &Operation) -> Result<(), String> {
    let target = op.path_and_query();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    let bad_path = !path.starts_with('/')
        || !target.is_ascii()
        || ["%", ";", "\\", "//", "/./", "/../", "*", "#", " "]
            .iter()
            .any(|f| path.contains(f))
        || path.ends_with('/')
        || path.ends_with("/.")
        || path.ends_with("/..");
    if bad_path {
        return Err(format!("forwarded path {path:?} has a rejected form"));
    }
    let Some(query) = query else {
        return Ok(());
    };
    if query.is_empty() || [";", "#", " ", "&&"].iter().any(|f| query.contains(f)) {
        return Err(format!("forwarded query {query:?} has a rejected form"));
    }
    for key in world().policy.rule_keys() {
        let raw = op
            .query
            .pairs()
            .any(|(k, v)| k == key && !matches!(v, ParamValue::Bool(_)));
        if raw {
            return Err(format!(
                "{key} names a policy rule but is forwarded unread as a boolean: {query:?}"
            ));
        }
    }
    let mut scalars: Vec<&str> = Vec::new();
    for piece in query.split('&') {
        let Some((key, value)) = piece.split_once('=') else {
            return Err(format!("forwarded query piece {piece:?} has no '='"));
        };
        let word =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let filter = key
            .strip_suffix(']')
            .and_then(|k| k.split_once('['))
            .is_some_and(|(b, s)| word(b) && word(s));
        if !word(key) && !filter {
            return Err(format!("forwarded query key {key:?} is not a plain name"));
        }
        let kind = op.route.and_then(|r| r.query_param(key)).map(|p| p.kind);
        let boolean = matches!(
            op.query.pairs().find(|(k, _)| *k == key),
            Some((_, ParamValue::Bool(_)))
        );
        if boolean && value != "true" {
            return Err(format!(
                "forwarded boolean {key}={value:?} is not canonical"
            ));
        }
        if kind != Some(ParamKind::List) || key == "force" {
            if scalars.contains(&key) {
                return Err(format!("forwarded query repeats scalar key {key:?}"));
            }
            scalars.push(key);
        }
    }
    Ok(())
}

/// The pairs that reach the upstream: a false boolean is omitted there.
fn forwarded_pairs(op: &Operation) -> Vec<(String, ParamValue)> {
    op.query
        .pairs()
        .filter(|(_, v)| **v != ParamValue::Bool(false))
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
}

/// Re-serialise and re-parse: a fixpoint with the same decision.
fn check_reparse(method: &Method, op: &Operation) -> Result<(), String> {
    let target = op.path_and_query();
    let again = match classify(method, &target) {
        Some(Ok(again)) => again,
        other => {
            return Err(format!(
                "forwarded {method} {target} is not accepted again: {other:?}"
            ))
        }
    };
    if again.path_and_query() != target {
        return Err(format!(
            "{target} re-serialises as {}",
            again.path_and_query()
        ));
    }
    match classify(method, &again.path_and_query()) {
        Some(Ok(third)) if third == again => {}
        other => {
            return Err(format!(
                "classifying {target} is not idempotent: {other:?} vs {again:?}"
            ))
        }
    }
    if (again.route_id(), &again.path, &again.params, &again.method)
        != (op.route_id(), &op.path, &op.params, &op.method)
    {
        return Err(format!(
            "{target}: route or params changed: {op:?} vs {again:?}"
        ));
    }
    if forwarded_pairs(&again) != forwarded_pairs(op) {
        return Err(format!(
            "{target}: query changed: {:?} vs {:?}",
            op.query, again.query
        ));
    }
    for (key, value) in op.query.pairs() {
        if let ParamValue::Bool(b) = value {
            if again.query.bool(key).unwrap_or(false) != *b {
                return Err(format!("{target}: boolean {key} read differently"));
            }
        }
    }
    let w = world();
    for who in [&w.bob, &w.alice] {
        let before = w.policy.evaluate(op, who);
        let after = w.policy.evaluate(&again, who);
        if before != after {
            return Err(format!(
                "{target}: policy for {} decided {before:?} on the original, {after:?} on the forwarded",
                who.client.as_str()
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sdk_shaped_requests_are_accepted_canonical_and_stable(v in valid()) {
        let op = match classify(&v.method, &v.target) {
            Some(Ok(op)) => op,
            other => return Err(TestCaseError::fail(format!("{} {} refused: {other:?}", v.method, v.target))),
        };
        prop_assert!(op.route.is_some(), "{} {} matched no route", v.method, v.target);
        check_canonical(&op).map_err(TestCaseError::fail)?;
        check_reparse(&v.method, &op).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_requests_are_refused_or_made_canonical_with_the_same_decision(
        v in valid(),
        mutations in prop::collection::vec(mutation(), 1..3),
    ) {
        let (method, target) = apply(&v, &mutations);
        if let Some(Ok(op)) = classify(&method, &target) {
            check_canonical(&op).map_err(TestCaseError::fail)?;
            check_reparse(&method, &op).map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn the_mutations_do_reach_the_rejected_forms() {
    // The generator is only useful if mutated targets are mostly refused, and some still accepted.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (valid(), prop::collection::vec(mutation(), 1..3));
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..2000 {
        let (v, mutations) = strategy.new_tree(&mut runner).unwrap().current();
        let (method, target) = apply(&v, &mutations);
        match classify(&method, &target) {
            Some(Ok(_)) => accepted += 1,
            Some(Err(_)) => refused += 1,
            None => {}
        }
    }
    assert!(
        accepted > 100 && refused > 500,
        "accepted {accepted}, refused {refused}"
    );
    // And the examples the principles name are refused outright.
    for (method, target) in [
        ("DELETE", "/v1.3/assets/a%2Fb?force=true"),
        ("DELETE", "/v1.3/assets/./a?force=true"),
        ("DELETE", "/v1.3/assets/a/?force=true"),
        ("DELETE", "/v1.3/assets/a?force=true&force=false"),
        ("DELETE", "/v1.3/assets/a?Force=true"),
        ("GET", "/v1.3/assets/a?page=1&page=2"),
    ] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        assert!(
            matches!(classify(&method, target), Some(Err(_))),
            "{target}"
        );
    }
}
