//! The reference guard: before a permitted forced asset delete, list what it will unlink.
//!
//! `DELETE /v1.3/assets/{id}?force=true` cannot be undone and unlinks every indexed asset and entity
//! that references the asset. Before forwarding one, the guard lists
//! `GET /assets/{id}/indexed-assets` and `GET /assets/{id}/entities` (all pages, bounded by
//! `max_pages`) with the upstream key and hands the result to the audit intent record: it is the only
//! record of what the delete unlinked. `max_indexed_assets` refuses deletes that would unlink more;
//! a failed lookup follows `on_error` (deny by default).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use http::{Request, StatusCode};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::audit::record::{EntityRef, IndexedAssetRef, References};
use crate::classify::Operation;
use crate::config::RuleId;
use crate::credentials::UpstreamKey;
use crate::error::GatewayError;
use crate::forward::Forwarder;
use crate::metrics::Metrics;

/// What to do when the lookup fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse the delete (502).
    #[default]
    Deny,
    /// Forward it; the intent record says the listing failed.
    Allow,
}

/// `guards.force_delete` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceDeleteSettings {
    /// Run the guard at all.
    pub enabled: bool,
    /// Pages fetched per listing, at most.
    pub max_pages: u32,
    /// Items per page (the API allows up to 50).
    pub page_limit: u32,
    /// Refuse (403) deletes that would unlink more indexed assets than this.
    pub max_indexed_assets: Option<usize>,
    /// Failed lookup: deny or allow.
    pub on_error: OnError,
}

impl Default for ForceDeleteSettings {
    fn default() -> Self {
        ForceDeleteSettings {
            enabled: true,
            max_pages: 20,
            page_limit: 50,
            max_indexed_assets: None,
            on_error: OnError::Deny,
        }
    }
}

/// The rule id named when `max_indexed_assets` refuses.
pub const MAX_INDEXED_ASSETS_RULE: &str = "guards.force_delete.max_indexed_assets";

/// A lookup result: the references, and whether the listing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// What was found.
    pub references: References,
    /// Set when the lookup failed and `on_error: allow` let the delete through.
    pub failed: Option<String>,
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    page_info: Option<PageInfo>,
}

#[derive(Deserialize)]
struct PageInfo {
    total_page: Option<u64>,
}

#[derive(Deserialize)]
struct IndexedAssetItem {
    #[serde(rename = "_id")]
    id: String,
    index: Option<IndexItem>,
    index_id: Option<String>,
}

#[derive(Deserialize)]
struct IndexItem {
    #[serde(rename = "_id")]
    id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct EntityItem {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    entity_collection_id: String,
}

/// Everything the guard needs.
#[derive(Clone, Debug)]
pub struct ForceDeleteGuard {
    settings: ForceDeleteSettings,
    forwarder: Forwarder,
    key: Arc<UpstreamKey>,
    metrics: Arc<Metrics>,
}

impl ForceDeleteGuard {
    /// A guard using the gateway's upstream client and key.
    pub fn new(
        settings: ForceDeleteSettings,
        forwarder: Forwarder,
        key: Arc<UpstreamKey>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ForceDeleteGuard {
            settings,
            forwarder,
            key,
            metrics,
        }
    }

    /// List what deleting `asset_id` would unlink.
    pub async fn references(&self, asset_id: &str) -> Result<References, GatewayError> {
        let mut references = References {
            complete: true,
            ..References::default()
        };
        let (items, complete) = self
            .list::<IndexedAssetItem>(asset_id, "indexed-assets")
            .await?;
        references.complete &= complete;
        references.indexed_assets = items
            .into_iter()
            .map(|item| IndexedAssetRef {
                id: item.id,
                index_id: item
                    .index
                    .as_ref()
                    .map(|i| i.id.clone())
                    .or(item.index_id)
                    .unwrap_or_default(),
                index_name: item.index.and_then(|i| i.name),
            })
            .collect();
        let (items, complete) = self.list::<EntityItem>(asset_id, "entities").await?;
        references.complete &= complete;
        references.entities = items
            .into_iter()
            .map(|item| EntityRef {
                id: item.id,
                collection_id: item.entity_collection_id,
            })
            .collect();
        Ok(references)
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        asset_id: &str,
        what: &str,
    ) -> Result<(Vec<T>, bool), GatewayError> {
        let key = self.key.current().ok_or(GatewayError::UpstreamKeyMissing)?;
        let mut items = Vec::new();
        for page in 1..=self.settings.max_pages {
            let target = format!(
                "/v1.3/assets/{asset_id}/{what}?page={page}&page_limit={}",
                self.settings.page_limit
            );
            let (status, bytes) = self
                .forwarder
                .fetch(&target, key.clone(), 4 * 1024 * 1024)
                .await?;
            if status == StatusCode::NOT_FOUND {
                // No such asset: nothing to unlink; the delete itself will get the upstream's 404.
                return Ok((items, true));
            }
            if !status.is_success() {
                return Err(GatewayError::GuardLookupFailed(status.as_u16()));
            }
            let parsed: Page<T> = serde_json::from_slice(&bytes)
                .map_err(|_| GatewayError::GuardLookupFailed(status.as_u16()))?;
            let last = parsed.data.is_empty()
                || parsed
                    .page_info
                    .and_then(|p| p.total_page)
                    .is_some_and(|total| u64::from(page) >= total);
            items.extend(parsed.data);
            if last {
                return Ok((items, true));
            }
        }
        Ok((items, false))
    }
}

/// Layer running the guard in front of permitted forced asset deletes.
#[derive(Clone, Debug)]
pub struct GuardLayer {
    guard: Option<ForceDeleteGuard>,
}

impl GuardLayer {
    /// Guard with this (or, with `None`, pass everything through).
    pub fn new(guard: Option<ForceDeleteGuard>) -> Self {
        GuardLayer {
            guard: guard.filter(|g| g.settings.enabled),
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// Service produced by [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    guard: Option<ForceDeleteGuard>,
}

impl<S, B> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    /// Requests the guard does not concern pass through without a box of their own.
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let target = match &self.guard {
            None => None,
            Some(_) => req.extensions().get::<Operation>().and_then(|op| {
                (op.route_id() == "assets.delete" && op.query.bool("force") == Some(true))
                    .then(|| op.param("asset_id").map(str::to_owned))
                    .flatten()
            }),
        };
        let (Some(asset_id), Some(guard)) = (target, &self.guard) else {
            return Either::Left(self.inner.call(req));
        };
        let guard = guard.clone();
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        Either::Right(Box::pin(async move {
            let lookup = match guard.references(&asset_id).await {
                Ok(references) => {
                    guard.metrics.guard_lookups.with_label_values(&["ok"]).inc();
                    if let Some(max) = guard.settings.max_indexed_assets {
                        if !references.complete {
                            // max_pages stopped the listing: the limit cannot be shown to hold.
                            return Err(GatewayError::PolicyDenied {
                                rule: MAX_INDEXED_ASSETS_RULE.parse().unwrap_or_else(|_| RuleId::default_rule()),
                                message: Some(Arc::from(format!(
                                    "the references could not all be listed within guards.force_delete.max_pages, so the limit of {max} indexed assets cannot be checked"
                                ))),
                            });
                        }
                        if references.indexed_assets.len() > max {
                            return Err(GatewayError::PolicyDenied {
                                rule: MAX_INDEXED_ASSETS_RULE.parse().unwrap_or_else(|_| RuleId::default_rule()),
                                message: Some(Arc::from(format!(
                                    "this forced delete would unlink {} indexed assets; the limit is {max}",
                                    references.indexed_assets.len()
                                ))),
                            });
                        }
                    }
                    Lookup {
                        references,
                        failed: None,
                    }
                }
                Err(error) => {
                    guard
                        .metrics
                        .guard_lookups
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%error, asset_id, "reference lookup before a forced delete failed");
                    match guard.settings.on_error {
                        OnError::Deny => {
                            return Err(GatewayError::GuardLookupFailed(error.status().as_u16()))
                        }
                        OnError::Allow => Lookup {
                            references: References::default(),
                            failed: Some(error.code().to_owned()),
                        },
                    }
                }
            };
            req.extensions_mut().insert(lookup);
            inner.call(req).await
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_nested_and_flat_index_ids() {
        let page: Page<IndexedAssetItem> = serde_json::from_str(
            r#"{"data":[{"_id":"ia1","index":{"_id":"i1","name":"demo"}},{"_id":"ia2","index_id":"i2"}],"page_info":{"total_page":1}}"#,
        )
        .unwrap();
        assert_eq!(page.data.len(), 2);
        assert_eq!(page.data[0].index.as_ref().unwrap().id, "i1");
        assert_eq!(page.data[1].index_id.as_deref(), Some("i2"));
    }
}
