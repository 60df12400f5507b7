//! The composition root: the process-wide state that outlives reloads ([`Shared`]), each layer's
//! part of the configuration handed to it ([`StackParts`]), and the request stack itself
//! ([`build_stack`], outermost first, as in docs/architecture.md "The request path").
//!
//! With the server, the reloader and the CLI, this is the only module that reads [`Config`]; every
//! layer receives its own settings and handles through its constructor.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, Request, Response};
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::api::{ApiSettings, Dispatch, GatewayApi};
use crate::approvals::notify::Notifier;
use crate::approvals::{Approvals, RequireApprovalLayer};
use crate::audit::layer::{AuditLayer, RecordIntent};
use crate::audit::{AuditLog, AuditScope};
use crate::auth::{Authenticate, KeySnapshot};
use crate::body::GatewayBody;
use crate::classify::{Classifier, Classify};
use crate::config::Config;
use crate::credentials::{SwapCredentials, UpstreamKey, X_API_KEY};
use crate::deferred::{DeferLayer, DeferredCalls, RecallScheduledLayer};
use crate::error::RescueLayer;
use crate::forward::{ForwardSetupError, Forwarder, UpstreamSettings};
use crate::guards::{
    ForceDeleteGuard, GuardForcedDeletes, ProtectResources, Protection, PROTECTED_RULE,
};
use crate::keys::Keyring;
use crate::metrics::{Metrics, MetricsLayer};
use crate::overload::{in_flight_limit, ClientInFlightLayer, ClientSlots};
use crate::policy::{Enforce, Policy};
use crate::ratelimit::{Limited, RateLimits};
use crate::request_id::RequestIdLayer;
use crate::state::StateStore;
use crate::store::RecordStore;
use crate::telemetry::{TraceContextLayer, TraceContextSettings, TraceRequestsLayer};
use crate::ui::oidc::session::ResolveSession;
use crate::ui::oidc::SignIn;
use crate::ui::{PageSettings, ServePageLayer};

/// The response future of [`GatewayService`]: the one allocation the type erasure costs.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send + 'static>>;

/// The complete request path as one cloneable service.
///
/// Cloning it is a reference count (the stack is shared, not copied into a new box as tower's
/// `BoxCloneSyncService` does), and each request boxes only its response future: the stack's
/// layers are cheap to clone (handles behind `Arc`s), so each call clones the concrete stack on
/// the stack and drives it with `oneshot` inside that one box.
#[derive(Clone)]
pub struct GatewayService(Arc<dyn CallStack>);

impl std::fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayService")
    }
}

/// The erased stack: one call per request.
trait CallStack: Send + Sync {
    fn call(&self, req: Request<GatewayBody>) -> ResponseFuture;
}

impl<S> CallStack for S
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: Request<GatewayBody>) -> ResponseFuture {
        Box::pin(self.clone().oneshot(req))
    }
}

impl Service<Request<GatewayBody>> for GatewayService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    /// Always ready: readiness (the in-flight limit, load shedding) is awaited inside each call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> ResponseFuture {
        self.0.call(req)
    }
}

/// Handles that live as long as the process and survive reloads.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The real upstream key.
    pub upstream_key: Arc<UpstreamKey>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The audit log, if configured.
    pub audit: Option<AuditLog>,
    /// Where rate-limit buckets live (kept across reloads; keyed by each limit's definition).
    pub store: StateStore,
    /// Whether a store outage refuses requests (some limit fails closed), for `/readyz`.
    pub limits_fail_closed: Arc<AtomicBool>,
    /// The in-flight permits, sized at start-up.
    pub in_flight: Arc<Semaphore>,
    /// Per-client in-flight caps, kept across reloads.
    pub client_slots: Arc<ClientSlots>,
    /// Where records live (approvals, clients and keys): memory, SQLite or PostgreSQL.
    pub records: RecordStore,
    /// Clients and keys: YAML and store, the snapshot authentication reads.
    pub keyring: Arc<Keyring>,
    /// Two-person approvals (in the record store).
    pub approvals: Approvals,
    /// Deferred calls (the undo window, in the record store).
    pub deferred: DeferredCalls,
}

impl Shared {
    /// The process-wide state for a gateway started with `config`.
    pub fn new(
        config: &Config,
        upstream_key: Arc<UpstreamKey>,
        metrics: Arc<Metrics>,
        audit: Option<AuditLog>,
        store: StateStore,
        records: RecordStore,
        notify: Option<Notifier>,
    ) -> Self {
        let deferred = DeferredCalls::new(
            records.clone(),
            audit.clone(),
            metrics.clone(),
            notify.clone(),
        )
        .with_budget(store.clone(), config.deferred.max_schedules_per_client);
        let approvals = Approvals::new(
            records.clone(),
            audit.clone(),
            metrics.clone(),
            notify,
            config.approvals.max_pending_per_client,
        )
        .with_ask_budget(store.clone(), config.approvals.max_asks_per_client)
        .with_retention(
            config.approvals.keep_decided,
            config.approvals.max_decided_per_client,
        );
        let keyring = Keyring::new(
            &config.clients,
            records.clone(),
            audit.clone(),
            metrics.clone(),
        );
        Shared {
            approvals,
            deferred,
            keyring,
            records,
            upstream_key,
            metrics,
            audit,
            store,
            limits_fail_closed: Arc::default(),
            in_flight: Arc::new(Semaphore::new(config.server.max_in_flight.max(1))),
            client_slots: ClientSlots::new(config.server.max_in_flight_per_client),
        }
    }
}

/// The forwarder's part of the configuration.
pub fn upstream_settings(config: &Config) -> UpstreamSettings {
    UpstreamSettings {
        origin: config.upstream.origin.clone(),
        connect_timeout: config.upstream.connect_timeout,
        request_timeout: config.upstream.request_timeout,
        body_idle_timeout: config.server.body_idle_timeout,
        max_concurrency: config.upstream.max_concurrency,
        queue_timeout: config.upstream.queue_timeout,
        pool_shards: crate::workers::count(config.server.worker_threads) + 1,
        max_idle_per_pool: config.upstream.max_idle_connections,
    }
}

/// The gateway's URL as clients reach it (messages, webhook links): `approvals.public_url`, else
/// the listen address when it is a specific one.
pub fn gateway_url(config: &Config) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    match &config.approvals.public_url {
        Some(url) => url.clone(),
        None if !config.listen.ip().is_unspecified() => format!("{scheme}://{}", config.listen),
        None => "<gateway URL>".to_owned(),
    }
}

/// Everything the request path needs, each part for its own layer.
#[derive(Clone, Debug)]
pub struct StackParts {
    /// The clients and keys requests are authenticated against (YAML and store).
    pub clients: KeySnapshot,
    /// The real upstream key.
    pub upstream_key: Arc<UpstreamKey>,
    /// The upstream client.
    pub forwarder: Forwarder,
    /// The request classifier.
    pub classifier: Arc<Classifier>,
    /// The compiled policy.
    pub policy: Arc<Policy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The audit log and what it covers.
    pub audit: Option<AuditLog>,
    /// Routes audited beyond the destructive ones.
    pub audit_scope: Arc<AuditScope>,
    /// The reference guard before forced deletes.
    pub guard: Option<ForceDeleteGuard>,
    /// Rate limits.
    pub rate_limits: Arc<RateLimits>,
    /// The in-flight permits (shared by every stack built from the same start-up).
    pub in_flight: Arc<Semaphore>,
    /// Per-client in-flight caps.
    pub client_in_flight: ClientInFlightLayer,
    /// Resources no request may delete or change.
    pub protection: Arc<Protection>,
    /// The approvals layer.
    pub require_approval: RequireApprovalLayer,
    /// The deferred layer (schedules what a `defer` rule holds; marks replays).
    pub defer: DeferLayer,
    /// Above the approvals: an identical re-send of a scheduled call gets its id again.
    pub recall_scheduled: RecallScheduledLayer,
    /// The gateway's own API (answers `gateway.*` operations at the bottom of the stack).
    pub api: GatewayApi,
    /// The page and how people sign in on it.
    pub page: PageSettings,
    /// Trace context: whose `traceparent` is continued, and whether traces are exported.
    pub trace_context: TraceContextSettings,
}

impl StackParts {
    /// Build the parts from a validated configuration and the long-lived handles.
    pub fn from_config(config: &Config, shared: &Shared) -> Result<Self, ForwardSetupError> {
        let forwarder = Forwarder::new(upstream_settings(config))?;
        Ok(StackParts::with_forwarder(config, shared, forwarder))
    }

    /// The same, reusing an existing upstream client (and its warm connections).
    pub fn with_forwarder(config: &Config, shared: &Shared, forwarder: Forwarder) -> Self {
        let protection = Arc::new(Protection::new(&config.protected));
        shared.metrics.declare(
            config
                .policy
                .rules
                .iter()
                .map(|r| r.id.as_str())
                .chain((!protection.is_empty()).then_some(PROTECTED_RULE)),
            config.rate_limits.iter().map(|l| l.id.as_str()),
        );
        for rule in config.policy.rules.iter().filter(|r| r.defer.is_some()) {
            for state in crate::deferred::State::ALL {
                shared
                    .metrics
                    .deferred
                    .with_label_values(&[rule.id.as_str(), state.as_str()]);
            }
        }
        for rule in config.policy.rules.iter().filter(|r| r.approval.is_some()) {
            for state in crate::approvals::State::ALL {
                shared
                    .metrics
                    .approvals
                    .with_label_values(&[rule.id.as_str(), state.as_str()]);
            }
        }
        let guard = ForceDeleteGuard::new(
            config.force_delete.clone(),
            forwarder.clone(),
            shared.upstream_key.clone(),
            shared.metrics.clone(),
            protection.clone(),
        );
        shared.keyring.set_config_clients(&config.clients);
        let clients = shared.keyring.snapshot();
        let rate_limits = {
            let limits = RateLimits::new(
                config.rate_limits.clone(),
                shared.store.clone(),
                config.state.on_unavailable(),
            );
            shared
                .limits_fail_closed
                .store(limits.fails_closed(), Ordering::Relaxed);
            Arc::new(limits)
        };
        StackParts {
            require_approval: RequireApprovalLayer::new(
                shared.approvals.clone(),
                // The blast radius is listed when the guard runs, or a legal hold needs it.
                (config.force_delete.enabled || protection.needs_lookup()).then(|| guard.clone()),
                protection.clone(),
                shared.metrics.clone(),
                gateway_url(config),
                config.approvals.max_body_bytes,
                rate_limits.clone(),
            ),
            defer: DeferLayer::new(shared.deferred.clone()),
            recall_scheduled: RecallScheduledLayer::new(shared.deferred.clone()),
            api: GatewayApi::new(ApiSettings {
                approvals: shared.approvals.clone(),
                deferred: shared.deferred.clone(),
                audit_roles: Arc::from(config.ui.audit_roles.clone()),
                approver_roles: approver_roles(config),
                audit_log: shared.audit.as_ref().map(|a| a.path().to_path_buf()),
                keyring: shared.keyring.clone(),
                keys: config.keys.clone(),
            }),
            page: PageSettings {
                sign_in: config.ui.oidc.as_ref().and_then(|oidc| {
                    SignIn::new(oidc.clone(), shared.records.clone())
                        .map(Arc::new)
                        .inspect_err(|e| tracing::error!(error = %e, "ui.oidc: no TLS client"))
                        .ok()
                }),
                key_sign_in: config.ui.oidc.is_none() || config.ui.allow_key_sign_in,
            },
            protection,
            clients,
            upstream_key: shared.upstream_key.clone(),
            forwarder,
            classifier: Arc::new(Classifier::new(config.classify.clone())),
            policy: config.compiled_policy.clone(),
            metrics: shared.metrics.clone(),
            audit: shared.audit.clone(),
            audit_scope: Arc::new(
                config
                    .audit
                    .as_ref()
                    .map(|a| a.scope.clone())
                    .unwrap_or_default(),
            ),
            guard: Some(guard),
            rate_limits: rate_limits.clone(),
            in_flight: shared.in_flight.clone(),
            client_in_flight: ClientInFlightLayer::new(
                shared.client_slots.clone(),
                &config.clients,
            ),
            trace_context: trace_context_settings(config),
        }
    }
}

/// The trace-context layer's part of the configuration.
pub fn trace_context_settings(config: &Config) -> TraceContextSettings {
    TraceContextSettings {
        trusted: config.telemetry.trust_traceparent_from.clone(),
        export: config.telemetry.otlp.is_some(),
    }
}

/// Every role that approves for some policy rule.
fn approver_roles(config: &Config) -> Arc<[crate::ids::Role]> {
    let mut roles: Vec<crate::ids::Role> = Vec::new();
    for approval in config
        .policy
        .rules
        .iter()
        .filter_map(|r| r.approval.as_ref())
    {
        for role in &approval.approver_roles {
            if !roles.contains(role) {
                roles.push(role.clone());
            }
        }
    }
    roles.into()
}

/// How long a replica's claim on a deferred call holds before another may take it over: longer
/// than any execution (the reference listing and the upstream call) can take.
pub fn deferred_lease(config: &Config) -> std::time::Duration {
    config.upstream.request_timeout * 2 + std::time::Duration::from_secs(60)
}

/// Build the request stack, outermost first (docs/architecture.md, "The request path").
pub fn build_stack(parts: StackParts) -> GatewayService {
    let sensitive: Arc<[http::HeaderName]> = Arc::new([
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        X_API_KEY.clone(),
    ]);
    let stack = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive))
        .layer(TraceRequestsLayer::new(parts.trace_context.export))
        .layer(MetricsLayer::new(parts.metrics.clone()))
        .layer(RescueLayer::new(parts.metrics.clone()))
        .layer(in_flight_limit(parts.in_flight))
        .layer(ServePageLayer::new(parts.page.clone()))
        .layer(Classify::layer(parts.classifier))
        .option_layer(
            parts
                .page
                .sign_in
                .as_ref()
                .map(|sign_in| ResolveSession::layer(sign_in.sessions().clone())),
        )
        .layer(Authenticate::layer(parts.clients))
        .layer(AuditLayer::new(
            parts.audit,
            parts.audit_scope,
            parts.metrics.clone(),
        ))
        .layer(parts.client_in_flight)
        .layer(Enforce::layer(parts.policy, parts.metrics.clone()))
        .layer(TraceContextLayer::new(parts.trace_context))
        .option_layer(ProtectResources::layer(
            parts.protection,
            parts.metrics.clone(),
        ))
        .layer(parts.recall_scheduled)
        .layer(parts.require_approval)
        .layer(Limited::layer(parts.rate_limits, parts.metrics))
        .option_layer(GuardForcedDeletes::layer(parts.guard))
        .layer(parts.defer)
        .layer(RecordIntent::layer())
        .service(Dispatch::new(
            parts.api,
            ServiceBuilder::new()
                .layer(SwapCredentials::layer(parts.upstream_key))
                .service(parts.forwarder),
        ));
    GatewayService(Arc::new(stack))
}
