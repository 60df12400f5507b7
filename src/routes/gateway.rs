//! The gateway's own API as routes (docs/architecture.md, "The gateway's own API"): the same
//! [`Route`] type and trie as the TwelveLabs table, under `/tl-gateway/v1/`, with `gateway.*` ids.
//!
//! Classified like every request, these pass through authentication, the per-client cap, policy,
//! rate limits, metrics and the audit log; the innermost service answers them itself instead of
//! forwarding them. A route is `destructive` here when it changes the gateway's own records (an
//! approval decided or cancelled, a deferred call cancelled): such calls are audited like destructive TwelveLabs calls.

use std::sync::OnceLock;

use http::Method;

use super::ParamKind::{Integer, Text};
use super::{q, BodyKind, QueryParam, Route, RouteId, RouteTable};

/// The first path segment of every gateway route (where TwelveLabs routes have their version).
pub const FIRST_SEGMENT: &str = "tl-gateway";

/// Every route id starts with this.
pub const ID_PREFIX: &str = "gateway.";

const NO_Q: &[QueryParam] = &[];
const APPROVALS_LIST: &[QueryParam] = &[q("state", Text), q("limit", Integer), q("cursor", Text)];
const AUDIT_RECENT: &[QueryParam] = &[q("limit", Integer), q("phase", Text)];
const DEFERRED_LIST: &[QueryParam] = &[q("state", Text), q("limit", Integer)];

const fn route(
    method: Method,
    template: &'static str,
    id: &'static str,
    query: &'static [QueryParam],
    body: BodyKind,
    changes: bool,
) -> Route {
    Route {
        id: RouteId(id),
        method,
        template,
        query,
        body,
        destructive: changes,
    }
}

/// The gateway API's routes.
static ROUTES: &[Route] = &[
    route(
        Method::GET,
        "/tl-gateway/v1/me",
        "gateway.me",
        NO_Q,
        BodyKind::None,
        false,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/approvals",
        "gateway.approvals.list",
        APPROVALS_LIST,
        BodyKind::None,
        false,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/approvals/{approval_id}",
        "gateway.approvals.retrieve",
        NO_Q,
        BodyKind::None,
        false,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/approvals/{approval_id}/approve",
        "gateway.approvals.approve",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/approvals/{approval_id}/deny",
        "gateway.approvals.deny",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/approvals/{approval_id}/cancel",
        "gateway.approvals.cancel",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/clients",
        "gateway.clients.list",
        NO_Q,
        BodyKind::None,
        false,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/clients",
        "gateway.clients.create",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/clients/{client_id}",
        "gateway.clients.retrieve",
        NO_Q,
        BodyKind::None,
        false,
    ),
    route(
        Method::PATCH,
        "/tl-gateway/v1/clients/{client_id}",
        "gateway.clients.update",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/clients/{client_id}/keys",
        "gateway.keys.issue",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::DELETE,
        "/tl-gateway/v1/clients/{client_id}/keys/{label}",
        "gateway.keys.revoke",
        NO_Q,
        BodyKind::None,
        true,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/me/keys",
        "gateway.keys.rotate",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/deferred",
        "gateway.deferred.list",
        DEFERRED_LIST,
        BodyKind::None,
        false,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/deferred/{deferred_id}",
        "gateway.deferred.retrieve",
        NO_Q,
        BodyKind::None,
        false,
    ),
    route(
        Method::POST,
        "/tl-gateway/v1/deferred/{deferred_id}/cancel",
        "gateway.deferred.cancel",
        NO_Q,
        BodyKind::Json,
        true,
    ),
    route(
        Method::GET,
        "/tl-gateway/v1/audit/recent",
        "gateway.audit.recent",
        AUDIT_RECENT,
        BodyKind::None,
        false,
    ),
];

/// Route ids the gateway's own code refers to.
pub mod ids {
    use super::RouteId;
    /// `GET /tl-gateway/v1/me`.
    pub const ME: RouteId = RouteId("gateway.me");
    /// `GET /tl-gateway/v1/approvals`.
    pub const APPROVALS_LIST: RouteId = RouteId("gateway.approvals.list");
    /// `GET /tl-gateway/v1/approvals/{approval_id}`.
    pub const APPROVALS_RETRIEVE: RouteId = RouteId("gateway.approvals.retrieve");
    /// `POST /tl-gateway/v1/approvals/{approval_id}/approve`.
    pub const APPROVALS_APPROVE: RouteId = RouteId("gateway.approvals.approve");
    /// `POST /tl-gateway/v1/approvals/{approval_id}/deny`.
    pub const APPROVALS_DENY: RouteId = RouteId("gateway.approvals.deny");
    /// `POST /tl-gateway/v1/approvals/{approval_id}/cancel`.
    pub const APPROVALS_CANCEL: RouteId = RouteId("gateway.approvals.cancel");
    /// `GET /tl-gateway/v1/audit/recent`.
    pub const AUDIT_RECENT: RouteId = RouteId("gateway.audit.recent");
    /// `GET /tl-gateway/v1/clients`.
    pub const CLIENTS_LIST: RouteId = RouteId("gateway.clients.list");
    /// `POST /tl-gateway/v1/clients`.
    pub const CLIENTS_CREATE: RouteId = RouteId("gateway.clients.create");
    /// `GET /tl-gateway/v1/clients/{client_id}`.
    pub const CLIENTS_RETRIEVE: RouteId = RouteId("gateway.clients.retrieve");
    /// `PATCH /tl-gateway/v1/clients/{client_id}`.
    pub const CLIENTS_UPDATE: RouteId = RouteId("gateway.clients.update");
    /// `POST /tl-gateway/v1/clients/{client_id}/keys`.
    pub const KEYS_ISSUE: RouteId = RouteId("gateway.keys.issue");
    /// `DELETE /tl-gateway/v1/clients/{client_id}/keys/{label}`.
    pub const KEYS_REVOKE: RouteId = RouteId("gateway.keys.revoke");
    /// `POST /tl-gateway/v1/me/keys`.
    pub const KEYS_ROTATE: RouteId = RouteId("gateway.keys.rotate");
    /// `GET /tl-gateway/v1/deferred`.
    pub const DEFERRED_LIST: RouteId = RouteId("gateway.deferred.list");
    /// `GET /tl-gateway/v1/deferred/{deferred_id}`.
    pub const DEFERRED_RETRIEVE: RouteId = RouteId("gateway.deferred.retrieve");
    /// `POST /tl-gateway/v1/deferred/{deferred_id}/cancel`.
    pub const DEFERRED_CANCEL: RouteId = RouteId("gateway.deferred.cancel");
}

impl RouteTable {
    /// The gateway API's table (built once).
    pub fn gateway() -> &'static RouteTable {
        static TABLE: OnceLock<RouteTable> = OnceLock::new();
        TABLE.get_or_init(|| RouteTable::build(ROUTES))
    }

    /// The table a route id belongs to: `gateway.*` ids are the gateway API's.
    pub fn for_id(id: &str) -> &'static RouteTable {
        if id.starts_with(ID_PREFIX) {
            RouteTable::gateway()
        } else {
            RouteTable::v1_3()
        }
    }

    /// The table a route template belongs to: `/tl-gateway/…` templates are the gateway API's.
    pub fn for_template(template: &str) -> &'static RouteTable {
        if template
            .strip_prefix('/')
            .and_then(|t| t.split('/').next())
            .is_some_and(|first| first == FIRST_SEGMENT)
        {
            RouteTable::gateway()
        } else {
            RouteTable::v1_3()
        }
    }
}

impl Route {
    /// Whether this is a route of the gateway's own API (answered by the gateway, never forwarded).
    pub fn is_gateway(&self) -> bool {
        self.id.as_str().starts_with(ID_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Lookup;

    #[test]
    fn every_gateway_route_is_found_by_its_path_and_none_collides_with_twelvelabs() {
        let table = RouteTable::gateway();
        for route in table.routes() {
            assert!(route.is_gateway(), "{}", route.id);
            let path = route
                .template
                .replace("{approval_id}", "apr_0123456789abcdef")
                .replace("{deferred_id}", "dfr_0123456789abcdef")
                .replace("{client_id}", "bob")
                .replace("{label}", "laptop");
            let segments: Vec<&str> = path.split('/').skip(2).collect();
            match table.lookup(&route.method, &segments) {
                Lookup::Found { route: found, .. } => assert_eq!(found.id, route.id),
                other => panic!("{}: {other:?}", route.id),
            }
            assert!(RouteTable::v1_3().by_id(route.id.as_str()).is_none());
            assert!(std::ptr::eq(RouteTable::for_id(route.id.as_str()), table));
            assert!(std::ptr::eq(
                RouteTable::for_template(route.template),
                table
            ));
        }
        for route in RouteTable::v1_3().routes() {
            assert!(!route.is_gateway(), "{}", route.id);
        }
        assert!(std::ptr::eq(
            RouteTable::for_template("/v1.3/assets/{asset_id}"),
            RouteTable::v1_3()
        ));
    }
}
