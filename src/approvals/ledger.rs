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

/// What a change makes of an approval, and who made it.
pub(super) struct Change {
    /// The approval after the change.
    pub(super) next: Approval,
    /// Who did it (default: the requester).
    pub(super) actor: Option<String>,
    /// Their comment.
    pub(super) comment: Option<String>,
}

/// One person's decision, now.
fn decided(caller: &Principal, decision: Verdict, comment: Option<String>) -> Decided {
    Decided {
        client: caller.client.as_str().to_owned(),
        roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        decision,
        comment,
        at: rfc3339(SystemTime::now()),
    }
}

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
        if !self
            .store
            .swap(&key, raw, &text, self.retention_of(new))
            .await?
        {
            return Ok(None);
        }
        if let Err(why) = self.audit_durably(new, actor, comment).await {
            // Not recorded, so not done: put it back.
            let old_ttl = serde_json::from_str::<Approval>(raw)
                .map(|a| self.retention_of(&a))
                .unwrap_or(self.keep_decided);
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

    /// Apply `change` to approval `id` with one compare-and-swap, retrying on a concurrent change
    /// (each attempt reads the approval again and asks `change` anew). `change` says what the
    /// approval becomes and who did it (with their comment), or refuses.
    pub(super) async fn change<F>(&self, id: &str, mut change: F) -> Result<Approval, ApprovalError>
    where
        F: FnMut(&Approval) -> Result<Change, ApprovalError>,
    {
        for _ in 0..8 {
            let Some((raw, approval)) = self.load(id).await? else {
                return Err(ApprovalError::NotFound(id.to_owned()));
            };
            let Change {
                next,
                actor,
                comment,
            } = change(&approval)?;
            if self
                .transition(&raw, &next, actor.as_deref(), comment.as_deref())
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

    /// Approve or deny (`approve: false`) as `caller`.
    pub async fn decide(
        &self,
        id: &str,
        caller: &Principal,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        self.change(id, |approval| {
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
            let verdict = if approve {
                Verdict::Approve
            } else {
                Verdict::Deny
            };
            let mut next = approval.clone();
            next.decisions
                .push(decided(caller, verdict, comment.clone()));
            if !approve {
                next.state = State::Denied;
            } else if next.satisfied() {
                next.state = State::Approved;
                next.deadline_ms = now_ms() + next.use_within_ms;
                next.expires_at = time_of(next.deadline_ms);
            }
            Ok(Change {
                next,
                actor: Some(caller.client.as_str().to_owned()),
                comment: comment.clone(),
            })
        })
        .await
    }

    /// Withdraw (requester only). Like asking, withdrawing is bookkeeping: refused while the
    /// audit volume is below `audit.reserve` (the approval expires on its own).
    pub async fn cancel(&self, id: &str, caller: &Principal) -> Result<Approval, ApprovalError> {
        self.ensure_room_for_bookkeeping()?;
        self.change(id, |approval| {
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
            next.decisions.push(decided(caller, Verdict::Cancel, None));
            Ok(Change {
                next,
                actor: None,
                comment: None,
            })
        })
        .await
    }

    /// Refuse bookkeeping (asks, withdrawals) while the audit volume is below `audit.reserve`:
    /// like refusals, they must not take the space an intent or an outcome needs.
    pub(super) fn ensure_room_for_bookkeeping(&self) -> Result<(), ApprovalError> {
        match &self.audit {
            Some(log) if !log.has_room_for_bookkeeping() => Err(ApprovalError::Audit(
                "the audit volume is below audit.reserve: approvals are not asked for or withdrawn until space is freed".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Give an approval back (used → approved) after the request that used it was refused before
    /// it reached the upstream: the requester may re-send once the refusal is fixed, within the
    /// original `use_within`. Recorded durably like every transition (if it cannot be, the
    /// approval stays used). If an identical request asked anew meanwhile (the pointer moved to a
    /// newer pending approval), this one could never be found again: it is cancelled, with a
    /// record naming the newer one, instead of lying approved and orphaned.
    pub(super) async fn give_back(&self, raw: &str, used: &Approval, refusal: &GatewayError) {
        let mut approved = used.clone();
        approved.state = State::Approved;
        approved.used_at = None;
        let comment = format!(
            "given back: the request was refused before it reached the upstream ({})",
            refusal.code()
        );
        let given = match self
            .transition(raw, &approved, Some(GATEWAY_ACTOR), Some(&comment))
            .await
        {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(approval_id = %used.id, %error, "an approval could not be given back; the requester needs a new one");
                return;
            }
        };
        tracing::info!(approval_id = %used.id, refusal = refusal.code(), "approval given back");
        let pointer = request_key(&used.requester, &used.request_sha256);
        match self.store.get(&pointer).await {
            Ok(Some(id)) if id == used.id => {}
            Ok(moved) => {
                let newer = moved.unwrap_or_else(|| "none".into());
                let mut cancelled = approved.clone();
                cancelled.state = State::Cancelled;
                let why = format!(
                    "cancelled: given back after the same request asked anew (now {newer}), so it could not be used"
                );
                if let Err(error) = self
                    .transition(&given, &cancelled, Some(GATEWAY_ACTOR), Some(&why))
                    .await
                {
                    tracing::error!(approval_id = %used.id, %error, "a superseded approval could not be cancelled");
                }
            }
            Err(error) => {
                tracing::warn!(approval_id = %used.id, %error, "whether a given-back approval is still found could not be read");
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
        let horizon = now_ms().saturating_sub(
            (self.keep_decided + Duration::from_secs(31 * 86_400)).as_millis() as u64,
        );
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
