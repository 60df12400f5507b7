//! Asking for an approval, or using one: the pending cap, the ask budget, the limits the request
//! will meet, the blast radius listed at use, and one approval per request across replicas.

use std::time::SystemTime;

use crate::auth::Principal;
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::guards::References;
use crate::policy::ApprovalRequired;
use crate::ratelimit::RateLimits;
use crate::store::StoreError;
use crate::units::rfc3339;

use super::*;

/// The result of a request that needs approval: forward it, or refuse it with this pending approval.
#[derive(Debug)]
pub(super) enum Asked {
    /// Approved, and now used by this request (with the stored text, to give it back).
    Use(Approval, String),
    /// Pending (created now or found again); with why an approved one no longer covered it.
    Pending(Approval, Option<String>),
}

/// Why `now` reaches beyond `approved` (references the approvers did not see), if it does.
pub(super) fn beyond(approved: &References, now: &References) -> Option<String> {
    let new_assets: Vec<&str> = now
        .indexed_assets
        .iter()
        .filter(|r| !approved.indexed_assets.iter().any(|a| a.id == r.id))
        .map(|r| r.id.as_str())
        .collect();
    let new_entities: Vec<&str> = now
        .entities
        .iter()
        .filter(|r| !approved.entities.iter().any(|a| a.id == r.id))
        .map(|r| r.id.as_str())
        .collect();
    if new_assets.is_empty() && new_entities.is_empty() {
        return None;
    }
    Some(format!(
        "it would now unlink {} indexed asset(s) and {} entit(y/ies) the approvers did not see ({})",
        new_assets.len(),
        new_entities.len(),
        new_assets
            .iter()
            .chain(new_entities.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

impl Approvals {
    /// Take one ask from `requester`'s budget, or refuse with 429.
    pub(super) async fn spend_ask(&self, requester: &str) -> Result<(), GatewayError> {
        match &self.counters {
            None => Ok(()),
            Some(budget) => {
                budget
                    .spend(requester, GatewayError::ApprovalsUnavailable)
                    .await
            }
        }
    }

    /// How many of `requester`'s approvals are pending, exactly, up to `cap` (the count stops
    /// there). Read from the requester's index of pending approvals, which every transition out
    /// of pending leaves; an entry whose approval is no longer pending (a removal that failed, an
    /// expiry not yet settled) is checked against its document and dropped.
    pub(super) async fn pending_of(
        &self,
        requester: &str,
        cap: usize,
    ) -> Result<usize, ApprovalError> {
        let index = pending_index(requester);
        let now = now_ms();
        let mut pending = 0;
        let mut before: Option<(u64, String)> = None;
        loop {
            let page = self
                .store
                .index_page(&index, before.as_ref().map(|(s, m)| (*s, m.as_str())), PAGE)
                .await?;
            let keys: Vec<String> = page.iter().map(|(id, _)| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            let mut stale = Vec::new();
            for ((id, _), doc) in page.iter().zip(docs) {
                match doc.and_then(|d| serde_json::from_str::<Approval>(&d).ok()) {
                    Some(a) if a.state == State::Pending && a.deadline_ms >= now => pending += 1,
                    _ => stale.push(id.clone()),
                }
            }
            self.store.index_remove(&index, &stale).await?;
            if pending >= cap || page.len() < PAGE {
                return Ok(pending);
            }
            before = page.last().map(|(id, score)| (*score, id.clone()));
        }
    }

    /// A request that `required` asks approval for: use its approval, or refuse it with the
    /// pending one (created, or found again for an identical re-send). `lookup` lists what a
    /// forced delete would unlink; it runs only when a new approval is asked for.
    pub(super) async fn ask_or_use<F, Fut>(
        &self,
        required: &ApprovalRequired,
        principal: &Principal,
        op: &Operation,
        body: Option<&body::BoundBody>,
        limits: Option<&RateLimits>,
        lookup: F,
    ) -> Result<Asked, GatewayError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<References>, GatewayError>>,
    {
        let method = op.method.as_str().to_owned();
        let target = op.path_and_query();
        let sha = request_sha256(&method, &target, body.map(|b| b.sha256.as_str()));
        let requirements = requirements_of(required);
        let key = request_key(principal.client.as_str(), &sha);
        // The pointer outlives a pending approval by `use_within`, so an approval given at the last
        // moment can still be found when its request is re-sent.
        let pointer_ttl = required.ttl + required.use_within;
        let mut lookup = Some(lookup);
        let mut references: Option<Option<References>> = None;
        let mut grown: Option<String> = None;
        let mut spent = false;
        for _ in 0..8 {
            let found = self.store.get(&key).await.map_err(ApprovalError::from)?;
            if let Some(id) = &found {
                if let Some((raw, approval)) = self.load(id).await? {
                    // Only an approval of this very request, by this requester, under the same
                    // requirements counts (a reload may have changed them).
                    let current = approval.requester == principal.client.as_str()
                        && approval.request_sha256 == sha
                        && approval.requirements == requirements;
                    // An approval covers the blast radius its approvers saw: listed again at use,
                    // more or other references ask anew.
                    if current && approval.state == State::Approved {
                        if let Some(approved) = &approval.references {
                            if references.is_none() {
                                let list = lookup.take().map(|f| f());
                                references = Some(match list {
                                    Some(list) => list.await?,
                                    None => None,
                                });
                            }
                            if let Some(Some(now)) = &references {
                                grown = beyond(approved, now).map(|why| {
                                    format!(
                                        "approval {} no longer covers this request: {why}",
                                        approval.id
                                    )
                                });
                            }
                        }
                    }
                    match approval.state {
                        State::Pending if current => return Ok(Asked::Pending(approval, None)),
                        State::Approved if current && grown.is_none() => {
                            let mut used = approval.clone();
                            used.state = State::Used;
                            used.used_at = Some(rfc3339(SystemTime::now()));
                            if let Some(used_raw) = self.transition(&raw, &used, None, None).await?
                            {
                                return Ok(Asked::Use(used, used_raw));
                            }
                            // Another copy used it first: look again (it is final now).
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            // None, a final one, or a stale one: ask anew.
            if self
                .pending_of(principal.client.as_str(), self.max_pending_per_client)
                .await?
                >= self.max_pending_per_client
            {
                return Err(GatewayError::ApprovalsPendingCap(
                    self.max_pending_per_client,
                ));
            }
            if !spent {
                // Asking is bookkeeping: not below audit.reserve.
                self.ensure_room_for_bookkeeping()?;
                // It meets the limits its request will meet (a spent DELETE budget refuses the
                // ask), without spending them: the approved re-send is counted.
                if let Some(limits) = limits {
                    limits.peek(op, principal).await.map_err(|refusal| {
                        crate::ratelimit::refused(refusal, &self.metrics, principal.client.as_str())
                    })?;
                }
                // Asking costs: a bounded budget per requester, before any upstream lookup.
                self.spend_ask(principal.client.as_str()).await?;
                spent = true;
            }
            if references.is_none() {
                // Before claiming: a refusal here (a legal hold, a failed lookup) leaves nothing.
                let list = lookup.take().map(|f| f());
                references = Some(match list {
                    Some(list) => list.await?,
                    None => None,
                });
            }
            let id = new_id();
            let mut approval = new_approval(
                &id,
                required,
                requirements.clone(),
                principal,
                &method,
                &target,
                &sha,
            );
            approval.references = references.clone().flatten();
            approval.body = body.map(|b| b.shown.clone());
            // The document first, then the pointer to it: whoever finds the pointer (another copy
            // of this request, on any replica) finds the approval, so racing asks agree on one id.
            let text = serde_json::to_string(&approval).map_err(|e| {
                ApprovalError::from(StoreError::Failed(format!(
                    "an approval could not be serialised: {e}"
                )))
            })?;
            let doc = doc_key(&id);
            self.store
                .insert(&doc, &text, self.retention_of(&approval))
                .await
                .map_err(ApprovalError::from)?;
            let claimed = match &found {
                None => self.store.insert(&key, &id, pointer_ttl).await,
                Some(old) => self.store.swap(&key, old, &id, pointer_ttl).await,
            };
            match claimed {
                Ok(true) => {}
                Ok(false) => {
                    // Another copy claimed it first: drop ours (never announced), use theirs.
                    let _ = self.store.remove(&doc, &text).await;
                    continue;
                }
                Err(error) => {
                    let _ = self.store.remove(&doc, &text).await;
                    return Err(ApprovalError::from(error).into());
                }
            }
            match self.create(&approval).await {
                Ok(()) => return Ok(Asked::Pending(approval, grown)),
                Err(error) => {
                    // Not recorded, so not asked: the pointer and the document go.
                    let _ = self.store.remove(&key, &id).await;
                    let _ = self.store.remove(&doc, &text).await;
                    return Err(error.into());
                }
            }
        }
        Err(GatewayError::ApprovalsUnavailable(
            "the approval changed too often while being checked; retry".into(),
        ))
    }

    /// Index a new pending approval (its document is stored and claimed); record it.
    pub(super) async fn create(&self, approval: &Approval) -> Result<(), ApprovalError> {
        self.store
            .index_add(
                &pending_index(&approval.requester),
                &approval.id,
                approval.created_ms,
            )
            .await?;
        self.store
            .index_add(INDEX, &approval.id, approval.created_ms)
            .await?;
        self.store
            .index_add(
                &requester_index(&approval.requester),
                &approval.id,
                approval.created_ms,
            )
            .await?;
        self.audit_durably(approval, None, None)
            .await
            .map_err(ApprovalError::Audit)?;
        self.announce(approval, None, None);
        self.forget_beyond_cap(&approval.requester).await;
        Ok(())
    }

    /// Keep at most `max_decided_per_client` of `requester`'s approvals: the oldest finished ones
    /// beyond it are forgotten (a few per new ask, so it keeps up; pending and approved ones are
    /// never forgotten early). Best effort: what fails now is tried at the next ask.
    async fn forget_beyond_cap(&self, requester: &str) {
        let index = requester_index(requester);
        let beyond = match self
            .store
            .index_beyond(&index, self.max_decided_per_client, 16)
            .await
        {
            Ok(beyond) if !beyond.is_empty() => beyond,
            _ => return,
        };
        let keys: Vec<String> = beyond.iter().map(|id| doc_key(id)).collect();
        let Ok(docs) = self.store.get_many(&keys).await else {
            return;
        };
        let mut forgotten = Vec::new();
        for ((id, key), doc) in beyond.iter().zip(&keys).zip(docs) {
            match doc {
                None => forgotten.push(id.clone()),
                Some(raw) => {
                    let done =
                        serde_json::from_str::<Approval>(&raw).map_or(true, |a| a.state.is_final());
                    if done && matches!(self.store.remove(key, &raw).await, Ok(true)) {
                        forgotten.push(id.clone());
                    }
                }
            }
        }
        let _ = self.store.index_remove(&index, &forgotten).await;
        let _ = self.store.index_remove(INDEX, &forgotten).await;
    }
}
