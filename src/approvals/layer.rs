//! The approvals layer in the request path.

use std::sync::Arc;

use http::Request;

use crate::auth::judged;
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::guards::{ForceDeleteGuard, Protection, References, PROTECTED_RULE};
use crate::metrics::Metrics;
use crate::policy::{ApprovalRequired, Decision};

use super::ask::Asked;
use super::*;

/// The approvals layer: after policy and protection, before limits, guards and the intent. A
/// request whose [`Decision`] asks for approval is forwarded only by using an approved approval
/// (inserting [`ApprovalUsed`]); if a check below then refuses it before it reaches the upstream,
/// the approval is given back (used → approved) so the requester can re-send once that is fixed.
/// Other requests pass unboxed.
#[derive(Clone, Debug)]
pub struct RequireApprovalLayer {
    shared: Arc<LayerShared>,
}

#[derive(Debug)]
struct LayerShared {
    approvals: Approvals,
    guard: Option<ForceDeleteGuard>,
    protection: Arc<Protection>,
    metrics: Arc<Metrics>,
    gateway_url: String,
    max_body_bytes: usize,
    /// The limits below this layer: an ask must pass them (peeked, not spent).
    limits: Arc<crate::ratelimit::RateLimits>,
}

impl RequireApprovalLayer {
    /// The layer. `guard` lists a forced asset delete's references for the approvers (its blast
    /// radius); `protection` refuses, at asking time, one that reaches a protected resource;
    /// `gateway_url` is the gateway's URL in `approval_required` messages.
    pub fn new(
        approvals: Approvals,
        guard: Option<ForceDeleteGuard>,
        protection: Arc<Protection>,
        metrics: Arc<Metrics>,
        gateway_url: String,
        max_body_bytes: usize,
        limits: Arc<crate::ratelimit::RateLimits>,
    ) -> Self {
        RequireApprovalLayer {
            shared: Arc::new(LayerShared {
                approvals,
                guard,
                protection,
                metrics,
                gateway_url,
                max_body_bytes,
                limits,
            }),
        }
    }
}

impl<S> tower::Layer<S> for RequireApprovalLayer {
    type Service = RequireApproval<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireApproval {
            shared: self.shared.clone(),
            inner,
        }
    }
}

/// Service produced by [`RequireApprovalLayer`].
#[derive(Clone, Debug)]
pub struct RequireApproval<S> {
    shared: Arc<LayerShared>,
    inner: S,
}

const UNJUDGED: &str =
    "approvals could not be checked: request not classified, authenticated or judged by policy";

impl<S, B> tower::Service<Request<B>> for RequireApproval<S>
where
    S: tower::Service<Request<B>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: body::Rebody + Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::BoxFuture<'static, Result<S::Response, GatewayError>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        if let Some(replay) = req.extensions().get::<crate::ext::Replay>().cloned() {
            // A deferred call executed now: it used its approval when it was scheduled. One that
            // a rule asks approval for now, but that had none then, is refused.
            let asks = req
                .extensions()
                .get::<Decision>()
                .and_then(|d| d.approval.as_ref())
                .map(|a| a.rule.clone());
            return match (asks, replay.approval) {
                (Some(rule), None) => Either::Right(Box::pin(std::future::ready(Err(
                    GatewayError::PolicyDenied {
                        rule,
                        message: Some(
                            "this rule now asks for an approval the deferred call was scheduled without"
                                .into(),
                        ),
                    },
                )))),
                (_, used) => {
                    if let Some(used) = used {
                        req.extensions_mut().insert(used);
                    }
                    Either::Left(self.inner.call(req))
                }
            };
        }
        // Fail closed: policy inserts a decision on every request it lets through.
        let required = match req.extensions().get::<Decision>() {
            None => {
                return Either::Right(Box::pin(std::future::ready(Err(GatewayError::Internal(
                    UNJUDGED,
                )))))
            }
            Some(decision) => match &decision.approval {
                None => return Either::Left(self.inner.call(req)),
                Some(required) => required.clone(),
            },
        };
        // The ready service goes with the request; this one keeps a fresh clone.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let shared = self.shared.clone();
        Either::Right(Box::pin(async move {
            let (op, principal) = {
                let (op, principal) = judged(&req, UNJUDGED)?;
                (op.clone(), principal.clone())
            };
            // The body is part of what is approved: read it (bounded), bind its digest, and
            // forward the same bytes.
            let (mut req, bound) = body::bind(req, shared.max_body_bytes).await?;
            match shared
                .approvals
                .ask_or_use(
                    &required,
                    &principal,
                    &op,
                    bound.as_ref(),
                    Some(&shared.limits),
                    || references_for(&shared, &op),
                )
                .await?
            {
                Asked::Pending(approval, why) => {
                    let mut refusal = approval_required(&approval, &required, &shared.gateway_url);
                    if let (Some(why), GatewayError::ApprovalRequired { message, .. }) =
                        (why, &mut refusal)
                    {
                        *message = format!("{why}; a new approval was asked for. {message}");
                    }
                    Err(refusal)
                }
                Asked::Use(approval, raw) => {
                    req.extensions_mut().insert(ApprovalUsed {
                        approvers: approval.approvers(),
                        id: approval.id.clone(),
                    });
                    tracing::info!(approval_id = %approval.id, "approval used");
                    let result = inner.call(req).await;
                    match &result {
                        Err(error) if error.is_before_forwarding() => {
                            shared.approvals.give_back(&raw, &approval, error).await;
                        }
                        _ => shared.approvals.count(&approval, State::Used),
                    }
                    result
                }
            }
        }))
    }
}

/// The references a forced asset delete would unlink (listed only when a new approval is asked
/// for): shown to the approvers, and checked against protected indexes and collections.
async fn references_for(
    shared: &LayerShared,
    op: &Operation,
) -> Result<Option<References>, GatewayError> {
    let Some((version, asset_id)) = crate::guards::forced_asset_delete(op) else {
        return Ok(None);
    };
    let Some(guard) = &shared.guard else {
        return Ok(None);
    };
    match guard.references(version, asset_id).await {
        Ok(references) => {
            shared
                .metrics
                .guard_lookups
                .with_label_values(&["ok"])
                .inc();
            // A delete a legal hold forbids gets no approval at all.
            if let Err(refusal) = shared.protection.check_references(&references) {
                shared
                    .metrics
                    .policy_denials
                    .with_label_values(&[PROTECTED_RULE])
                    .inc();
                return Err(refusal);
            }
            Ok(Some(references))
        }
        Err(error) => {
            shared
                .metrics
                .guard_lookups
                .with_label_values(&["failed"])
                .inc();
            tracing::warn!(%error, asset_id, "reference lookup for an approval failed");
            if shared.protection.needs_lookup() {
                Err(GatewayError::GuardLookupFailed(error.status().as_u16()))
            } else {
                // The approvers see "references unknown"; the guard looks again before forwarding.
                Ok(None)
            }
        }
    }
}

/// The 403 `approval_required` for a pending approval.
fn approval_required(
    approval: &Approval,
    required: &ApprovalRequired,
    gateway: &str,
) -> GatewayError {
    let roles = approval.approver_roles.join(", ");
    let so_far = approval.approvers().len();
    let needed = if approval.approvals_required > 1 || approval.requirements.len() > 1 {
        format!(
            "approvals ({so_far} so far) by clients with a role in [{roles}]: {}",
            approval
                .requirements
                .iter()
                .map(|r| format!("{} for rule '{}'", r.approvals, r.rule))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("approval by a client with a role in [{roles}] (not you)")
    };
    let mut message = format!(
        "approval {} required by rule '{}': this request needs {needed}. An approver runs `tl-gateway approvals approve {} --gateway {gateway}` (or opens {gateway}/tl-gateway/ui/); then re-send this exact request within {} of the approval. Pending until {}.",
        approval.id,
        approval.rule,
        approval.id,
        humantime::format_duration(required.use_within),
        approval.expires_at,
    );
    if let Some(rule_message) = &required.message {
        message.push(' ');
        message.push_str(rule_message);
    }
    GatewayError::ApprovalRequired {
        id: approval.id.clone(),
        rule: required.rule.clone(),
        message,
    }
}
