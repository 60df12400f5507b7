//! The approvals' transitions in the record store: each one compare-and-swap, made durable in the
//! audit log before it is answered (or undone), then counted and announced; deciding, cancelling,
//! giving back, listing and sweeping.

use std::time::{Duration, SystemTime};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::store::StoreError;
use crate::units::rfc3339;

use super::*;

/// Approvals looked at by a sweep, at most (newest first).
pub(super) const SCAN_LIMIT: usize = 5000;

impl Approvals {
    /// An approval as stored (the raw text is what a compare-and-swap must match), expired first
    /// if its time is up.
    pub async fn load(&self, id: &str) -> Result<Option<(String, Approval)>, ApprovalError> {
        let Some(raw) = self.store.get(&doc_key(id)).await? else {
            return Ok(None);
        };
        self.settle(raw).await
    }

    /// Parse a stored approval and expire it if its deadline passed.
    pub(super) async fn settle(
        &self,
        raw: String,
    ) -> Result<Option<(String, Approval)>, ApprovalError> {
        let Ok(approval) = serde_json::from_str::<Approval>(&raw) else {
            return Ok(None);
        };
        if approval.state.is_final() || now_ms() <= approval.deadline_ms {
            return Ok(Some((raw, approval)));
        }
        let mut expired = approval.clone();
        expired.state = State::Expired;
        match self
            .transition(&raw, &expired, Some(GATEWAY_ACTOR), None)
            .await?
        {
            Some(new_raw) => Ok(Some((new_raw, expired))),
            // Someone else moved it first: read what it is now.
            None => match self.store.get(&doc_key(&approval.id)).await? {
                Some(now) => Ok(serde_json::from_str(&now).ok().map(|a| (now, a))),
                None => Ok(None),
            },
        }
    }

    /// Store `new` in place of `raw` atomically, make its audit record durable (or undo it), count
    /// and announce it; the new raw text, or `None` if `raw` was no longer there. `actor` did it
    /// (default: the requester).
    pub(super) async fn transition(
        &self,
        raw: &str,
        new: &Approval,
        actor: Option<&str>,
        comment: Option<&str>,
    ) -> Result<Option<String>, ApprovalError> {
        let text = serde_json::to_string(new)
            .map_err(|e| StoreError::Failed(format!("an approval could not be serialised: {e}")))?;
        let key = doc_key(&new.id);
        if !self.store.swap(&key, raw, &text, retention_of(new)).await? {
            return Ok(None);
        }
        if let Err(why) = self.audit_durably(new, actor, comment).await {
            // Not recorded, so not done: put it back.
            let old_ttl = serde_json::from_str::<Approval>(raw)
                .map(|a| retention_of(&a))
                .unwrap_or(RETENTION);
            let _ = self.store.swap(&key, &text, raw, old_ttl).await;
            return Err(ApprovalError::Audit(why));
        }
        if new.state != State::Pending {
            // Best effort: a failed removal is caught when the count reads the document.
            let _ = self
                .store
                .index_remove(
                    &pending_index(&new.requester),
                    std::slice::from_ref(&new.id),
                )
                .await;
        }
        self.announce(new, actor, comment);
        Ok(Some(text))
    }

    /// The `approval` audit record of a change, durable before it is answered.
    pub(super) async fn audit_durably(
        &self,
        approval: &Approval,
        actor: Option<&str>,
        comment: Option<&str>,
    ) -> Result<(), String> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        let mut event = event_of(approval, actor.unwrap_or(&approval.requester));
        event.comment = comment.map(str::to_owned);
        match tokio::time::timeout(AUDIT_TIMEOUT, log.write_durable(event)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the audit log did not answer in time".into()),
        }
    }

    /// Count, log and notify a recorded change.
    pub(super) fn announce(&self, approval: &Approval, actor: Option<&str>, comment: Option<&str>) {
        // One approval of several leaves it pending (a decision, not a new state); `used` is
        // counted once the request really went on (see the layer).
        let partly = approval.state == State::Pending && !approval.decisions.is_empty();
        if !partly && approval.state != State::Used {
            self.count(approval, approval.state);
        }
        let actor = actor.unwrap_or(&approval.requester);
        tracing::info!(
            approval_id = %approval.id,
            state = approval.state.as_str(),
            requester = %approval.requester,
            by = actor,
            rule = %approval.rule,
            "approval {}",
            if partly { "approved in part" } else { approval.state.as_str() }
        );
        if let Some(notify) = &self.notify {
            notify.send(approval, actor, comment);
        }
    }

    pub(super) fn count(&self, approval: &Approval, state: State) {
        self.metrics
            .approvals
            .with_label_values(&[&approval.rule, state.as_str()])
            .inc();
    }

    /// Approve or deny (`approve: false`) as `caller`.
    pub async fn decide(
        &self,
        id: &str,
        caller: &Principal,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        for _ in 0..8 {
            let Some((raw, approval)) = self.load(id).await? else {
                return Err(ApprovalError::NotFound(id.to_owned()));
            };
            if approval.requester == caller.client.as_str() {
                return Err(ApprovalError::Forbidden(
                    "you cannot decide your own request: another approver must".into(),
                ));
            }
            if !approval.is_approver(caller) {
                return Err(ApprovalError::Forbidden(format!(
                    "deciding approval {id} needs a role in [{}]",
                    approval.approver_roles.join(", ")
                )));
            }
            if approval.state != State::Pending {
                return Err(ApprovalError::NotPending {
                    id: id.to_owned(),
                    state: approval.state.as_str(),
                });
            }
            if approval
                .approvers()
                .iter()
                .any(|a| a == caller.client.as_str())
            {
                return Err(ApprovalError::Forbidden(format!(
                    "you already approved {id}; it needs another approver"
                )));
            }
            let mut next = approval.clone();
            next.decisions.push(Decided {
                client: caller.client.as_str().to_owned(),
                roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                decision: if approve { "approve" } else { "deny" }.into(),
                comment: comment.clone(),
                at: rfc3339(SystemTime::now()),
            });
            if !approve {
                next.state = State::Denied;
            } else if next.satisfied() {
                next.state = State::Approved;
                next.deadline_ms = now_ms() + next.use_within_ms;
                next.expires_at = time_of(next.deadline_ms);
            }
            if self
                .transition(
                    &raw,
                    &next,
                    Some(caller.client.as_str()),
                    comment.as_deref(),
                )
                .await?
                .is_some()
            {
                return Ok(next);
            }
        }
        Err(ApprovalError::Store(StoreError::Failed(
            "the approval changed too often; retry".into(),
        )))
    }

    /// Withdraw (requester only).
    pub async fn cancel(&self, id: &str, caller: &Principal) -> Result<Approval, ApprovalError> {
        for _ in 0..8 {
            let Some((raw, approval)) = self.load(id).await? else {
                return Err(ApprovalError::NotFound(id.to_owned()));
            };
            if approval.requester != caller.client.as_str() {
                return Err(ApprovalError::Forbidden(
                    "only the requester can cancel an approval".into(),
                ));
            }
            if approval.state.is_final() {
                return Err(ApprovalError::NotPending {
                    id: id.to_owned(),
                    state: approval.state.as_str(),
                });
            }
            let mut next = approval.clone();
            next.state = State::Cancelled;
            next.decisions.push(Decided {
                client: caller.client.as_str().to_owned(),
                roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                decision: "cancel".into(),
                comment: None,
                at: rfc3339(SystemTime::now()),
            });
            if self.transition(&raw, &next, None, None).await?.is_some() {
                return Ok(next);
            }
        }
        Err(ApprovalError::Store(StoreError::Failed(
            "the approval changed too often; retry".into(),
        )))
    }

    /// Give an approval back (used → approved) after the request that used it was refused before
    /// it reached the upstream: the requester may re-send once the refusal is fixed, within the
    /// original `use_within`.
    pub(super) async fn give_back(&self, raw: &str, used: &Approval, refusal: &GatewayError) {
        let mut approved = used.clone();
        approved.state = State::Approved;
        approved.used_at = None;
        let Ok(text) = serde_json::to_string(&approved) else {
            return;
        };
        match self
            .store
            .swap(&doc_key(&used.id), raw, &text, retention_of(&approved))
            .await
        {
            Ok(true) => {
                tracing::info!(approval_id = %used.id, refusal = refusal.code(), "approval given back");
                // Recorded durably, as every transition is; the approval stays given back (the
                // request was refused either way), and a failure to record it is logged loudly.
                let comment = format!(
                    "given back: the request was refused before it reached the upstream ({})",
                    refusal.code()
                );
                if let Err(why) = self
                    .audit_durably(&approved, Some(GATEWAY_ACTOR), Some(&comment))
                    .await
                {
                    tracing::error!(approval_id = %used.id, %why, "the give-back of an approval could not be recorded durably");
                }
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(approval_id = %used.id, %error, "an approval could not be given back; the requester needs a new one");
            }
        }
    }

    /// The approvals of the index, newest first, as stored (expired ones settled).
    pub(super) async fn scan(&self, limit: usize) -> Result<Vec<Approval>, ApprovalError> {
        let ids = self.store.index_newest(INDEX, limit).await?;
        let mut found = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for chunk in ids.chunks(PAGE) {
            let keys: Vec<String> = chunk.iter().map(|id| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            for (id, doc) in chunk.iter().zip(docs) {
                match doc {
                    None => gone.push(id.clone()),
                    Some(raw) => {
                        if let Some((_, approval)) = self.settle(raw).await? {
                            found.push(approval);
                        }
                    }
                }
            }
        }
        // Documents past their retention are gone from the store: drop them from the index.
        self.store.index_remove(INDEX, &gone).await?;
        Ok(found)
    }

    /// One page of the approvals `caller` may see, newest first, optionally only in `state`,
    /// starting after `cursor`; and the cursor of the next page, if there may be one. `everyone`:
    /// the caller approves for some rule, so every approval is looked at (those it may see are
    /// kept); otherwise only the caller's own. A page reads at most [`LIST_BOUND`] approvals, so a
    /// listing never reads the whole store: a filtered page may come back short, with a cursor.
    pub async fn list(
        &self,
        caller: &Principal,
        state: Option<State>,
        limit: usize,
        cursor: Option<&Cursor>,
        everyone: bool,
    ) -> Result<(Vec<Approval>, Option<Cursor>), ApprovalError> {
        let index = if everyone {
            INDEX.to_owned()
        } else {
            requester_index(caller.client.as_str())
        };
        let mut found = Vec::new();
        let mut at: Option<Cursor> = cursor.cloned();
        let mut read = 0;
        loop {
            let before = at.as_ref().map(|c| (c.ms, c.id.as_str()));
            let page = self.store.index_page(&index, before, PAGE).await?;
            let keys: Vec<String> = page.iter().map(|(id, _)| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            let mut gone = Vec::new();
            for ((id, ms), doc) in page.iter().zip(docs) {
                read += 1;
                at = Some(Cursor {
                    ms: *ms,
                    id: id.clone(),
                });
                let Some(raw) = doc else {
                    gone.push(id.clone());
                    continue;
                };
                if let Some((_, approval)) = self.settle(raw).await? {
                    if approval.visible_to(caller) && state.is_none_or(|s| s == approval.state) {
                        found.push(approval);
                        if found.len() == limit {
                            self.store.index_remove(&index, &gone).await?;
                            return Ok((found, at));
                        }
                    }
                }
            }
            // Documents past their retention are gone from the store: drop them from the index.
            self.store.index_remove(&index, &gone).await?;
            if page.len() < PAGE {
                return Ok((found, None));
            }
            if read >= LIST_BOUND {
                return Ok((found, at));
            }
        }
    }

    /// Expire what is due, forget what is past its retention, and refresh
    /// `tl_gateway_approvals_pending` and `…_oldest_pending_seconds` (run every few seconds).
    pub async fn sweep(&self) -> Result<(), ApprovalError> {
        // Nothing outlives its deadline by more than the retention; no deadline is a month past
        // its creation in any sane configuration.
        let horizon = now_ms()
            .saturating_sub((RETENTION + Duration::from_secs(31 * 86_400)).as_millis() as u64);
        self.store.index_trim(INDEX, horizon).await?;
        let mut pending = 0;
        let mut oldest: Option<u64> = None;
        for approval in self.scan(SCAN_LIMIT).await? {
            if approval.state == State::Pending {
                pending += 1;
                oldest = Some(oldest.map_or(approval.created_ms, |o| o.min(approval.created_ms)));
            }
        }
        self.metrics.approvals_pending.set(pending);
        self.metrics
            .approvals_oldest_pending
            .set(oldest.map_or(0, |created| {
                (now_ms().saturating_sub(created) / 1000) as i64
            }));
        Ok(())
    }
}
