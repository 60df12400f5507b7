//! The reference guard: before a permitted forced asset delete, list what it will unlink.
//!
//! `DELETE /v1.3/assets/{id}?force=true` cannot be undone and unlinks every indexed asset and entity
//! that references the asset. Before forwarding one, the guard lists
//! `GET /assets/{id}/indexed-assets` and `GET /assets/{id}/entities` (all pages, bounded by
//! `max_pages`) with the upstream key and hands the result to the audit intent record: it is the only
//! record of what the delete unlinked. `max_indexed_assets` refuses deletes that would unlink more;
//! a failed lookup follows `on_error` (deny by default).
//!
//! [`Protection`] (`guards.protected`, a legal hold) refuses, whoever asks, every destructive call on
//! a protected index, entity collection or asset, and a forced asset delete whose references reach
//! into a protected index or collection; [`ProtectResources`] is its layer for what the path shows,
//! and the guard above checks the references it lists.

mod protection;

use std::sync::Arc;

use http::{Request, StatusCode};
use serde::{Deserialize, Serialize};

use crate::classify::Operation;
use crate::credentials::UpstreamKey;
use crate::error::GatewayError;
use crate::forward::Forwarder;
use crate::gate::{AdmitAsync, AsyncGateLayer};
use crate::ids::RuleId;
use crate::metrics::Metrics;
use crate::routes::ids::ASSETS_DELETE;

use protection::count_protected;
pub use protection::{
    BodyField, Kind, ProtectBodies, ProtectLayers, ProtectResources, Protected, ProtectedSettings,
    Protection, BODY_IDS, FORM_HEAD_LIMIT, JSON_LIMIT, PROTECTED_RULE,
};

/// One indexed asset that referenced a force-deleted asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedAssetRef {
    /// Indexed asset id.
    pub id: String,
    /// Its index.
    pub index_id: String,
    /// The index's name, when the upstream gave it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index_name: Option<String>,
}

/// One entity linked to a force-deleted asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRef {
    /// Entity id.
    pub id: String,
    /// Its entity collection.
    pub collection_id: String,
}

/// What a forced asset delete was about to unlink (written into the intent record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct References {
    /// Indexed assets referencing the asset.
    pub indexed_assets: Vec<IndexedAssetRef>,
    /// Entities linked to the asset.
    pub entities: Vec<EntityRef>,
    /// False when `max_pages` stopped the listing early.
    pub complete: bool,
}

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
    protection: Arc<Protection>,
}

impl ForceDeleteGuard {
    /// A guard using the gateway's upstream client and key.
    pub fn new(
        settings: ForceDeleteSettings,
        forwarder: Forwarder,
        key: Arc<UpstreamKey>,
        metrics: Arc<Metrics>,
        protection: Arc<Protection>,
    ) -> Self {
        ForceDeleteGuard {
            settings,
            forwarder,
            key,
            metrics,
            protection,
        }
    }

    /// List what deleting `asset_id` (an asset of API `version`) would unlink.
    pub async fn references(
        &self,
        version: &str,
        asset_id: &str,
    ) -> Result<References, GatewayError> {
        // A child span of the request when traces are exported; disabled (no cost) otherwise.
        let span = tracing::trace_span!("reference_lookup", asset_id);
        if span.is_disabled() {
            self.list_references(version, asset_id).await
        } else {
            tracing::Instrument::instrument(self.list_references(version, asset_id), span).await
        }
    }

    async fn list_references(
        &self,
        version: &str,
        asset_id: &str,
    ) -> Result<References, GatewayError> {
        let mut references = References {
            complete: true,
            ..References::default()
        };
        let (items, complete) = self
            .list::<IndexedAssetItem>(version, asset_id, "indexed-assets")
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
        let (items, complete) = self
            .list::<EntityItem>(version, asset_id, "entities")
            .await?;
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
        version: &str,
        asset_id: &str,
        what: &str,
    ) -> Result<(Vec<T>, bool), GatewayError> {
        let key = self.key.current().ok_or(GatewayError::UpstreamKeyMissing)?;
        let mut items = Vec::new();
        for page in 1..=self.settings.max_pages {
            let target = format!(
                "/{version}/assets/{asset_id}/{what}?page={page}&page_limit={}",
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

/// The guard as a layer in front of permitted forced asset deletes (other requests pass unboxed).
#[derive(Clone, Debug)]
pub struct GuardForcedDeletes {
    guard: ForceDeleteGuard,
}

impl GuardForcedDeletes {
    /// The layer guarding with `guard` (none, or disabled with nothing protected: everything
    /// passes). Protected indexes or collections need the lookup even with the guard disabled.
    pub fn layer(guard: Option<ForceDeleteGuard>) -> Option<AsyncGateLayer<GuardForcedDeletes>> {
        guard
            .filter(|g| g.settings.enabled || g.protection.needs_lookup())
            .map(|guard| AsyncGateLayer::new(GuardForcedDeletes { guard }))
    }
}

/// A forced delete of an asset: its API version and asset id.
pub fn forced_asset_delete(op: &Operation) -> Option<(&str, &str)> {
    (op.is(ASSETS_DELETE) && op.query.bool("force") == Some(true))
        .then(|| op.param("asset_id").map(|id| (op.version(), id)))
        .flatten()
}

impl<B: Send + 'static> AdmitAsync<B> for GuardForcedDeletes {
    fn concerns(&self, req: &Request<B>) -> bool {
        req.extensions()
            .get::<Operation>()
            .and_then(forced_asset_delete)
            .is_some()
    }

    async fn admit(self, mut req: Request<B>) -> Result<Request<B>, GatewayError> {
        let Some((version, asset_id)) = req
            .extensions()
            .get::<Operation>()
            .and_then(forced_asset_delete)
            .map(|(v, a)| (v.to_owned(), a.to_owned()))
        else {
            return Ok(req);
        };
        let guard = self.guard;
        let lookup = match guard.references(&version, &asset_id).await {
            Ok(references) => {
                guard.metrics.guard_lookups.with_label_values(&["ok"]).inc();
                if let Err(refusal) = guard.protection.check_references(&references) {
                    count_protected(&guard.metrics);
                    tracing::info!(
                        asset_id,
                        "refused: forced delete reaches a protected resource"
                    );
                    return Err(refusal);
                }
                if let Some(max) = guard.settings.max_indexed_assets {
                    if !references.complete {
                        // max_pages stopped the listing: the limit cannot be shown to hold.
                        return Err(GatewayError::PolicyDenied {
                            rule: RuleId::builtin(MAX_INDEXED_ASSETS_RULE),
                            message: Some(Arc::from(format!(
                                "the references could not all be listed within guards.force_delete.max_pages, so the limit of {max} indexed assets cannot be checked"
                            ))),
                        });
                    }
                    if references.indexed_assets.len() > max {
                        return Err(GatewayError::PolicyDenied {
                            rule: RuleId::builtin(MAX_INDEXED_ASSETS_RULE),
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
                // With protected indexes or collections, only a listing can show the delete is
                // allowed: a failed one refuses, whatever on_error says.
                if guard.protection.needs_lookup() {
                    return Err(GatewayError::GuardLookupFailed(error.status().as_u16()));
                }
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
        Ok(req)
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
