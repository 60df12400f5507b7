//! Routing: API-key check, path → [`Route`], and method dispatch to the handlers. Unknown
//! paths get 404 and known paths with a wrong method get 405, both in the TwelveLabs error shape.

use http::{HeaderMap, Method, StatusCode};

use super::handlers as h;
use super::state::Shared;
use super::wire::{ApiError, BodyStream, Query, Reply, Resp};

/// Handles one request after its body has been wrapped; never fails.
pub(super) async fn dispatch(
    shared: &Shared,
    parts: &http::request::Parts,
    body: BodyStream,
) -> Resp {
    if !key_matches(&parts.headers, &shared.api_key) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api_key_invalid",
            "The API key is missing or invalid. Provide a valid key in the x-api-key header.",
        )
        .into_response();
    }
    let path = parts.uri.path();
    let Some(route) = path.strip_prefix("/v1.3/").and_then(Route::parse) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_exist",
            format!("No such endpoint: {} {path}", parts.method),
        )
        .into_response();
    };
    let query = Query::parse(parts.uri.query());
    match route
        .handle(shared, &parts.method, &parts.headers, &query, body)
        .await
    {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Compares the `x-api-key` header with the key without an early exit on the first mismatch.
fn key_matches(headers: &HeaderMap, key: &str) -> bool {
    let Some(given) = headers.get("x-api-key") else {
        return false;
    };
    let (a, b) = (given.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The v1.3 routes the emulator knows. Literal segments are matched before parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Assets,
    MultipartUploads,
    Asset(&'a str),
    AssetIndexedAssets(&'a str),
    AssetEntities(&'a str),
    AssetUserMetadata(&'a str),
    Indexes,
    Index(&'a str),
    /// `legacy` marks the `/videos` spelling, which has no POST.
    IndexedAssets(&'a str, bool),
    IndexedAsset(&'a str, &'a str),
    Collections,
    Collection(&'a str),
    Entities(&'a str),
    EntitiesBulk(&'a str),
    Entity(&'a str, &'a str),
    EntityAssets(&'a str, &'a str),
}

impl<'a> Route<'a> {
    /// Parses the path after `/v1.3/`.
    fn parse(rest: &'a str) -> Option<Self> {
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(match segs.as_slice() {
            ["assets"] => Self::Assets,
            ["assets", "multipart-uploads", ..] => Self::MultipartUploads,
            ["assets", id] => Self::Asset(id),
            ["assets", id, "indexed-assets"] => Self::AssetIndexedAssets(id),
            ["assets", id, "entities"] => Self::AssetEntities(id),
            ["assets", id, "user-metadata"] => Self::AssetUserMetadata(id),
            ["indexes"] => Self::Indexes,
            ["indexes", id] => Self::Index(id),
            ["indexes", id, "indexed-assets"] => Self::IndexedAssets(id, false),
            ["indexes", id, "videos"] => Self::IndexedAssets(id, true),
            ["indexes", id, "indexed-assets" | "videos", ia] => Self::IndexedAsset(id, ia),
            ["entity-collections"] => Self::Collections,
            ["entity-collections", id] => Self::Collection(id),
            ["entity-collections", id, "entities"] => Self::Entities(id),
            ["entity-collections", id, "entities", "bulk"] => Self::EntitiesBulk(id),
            ["entity-collections", id, "entities", e] => Self::Entity(id, e),
            ["entity-collections", id, "entities", e, "assets"] => Self::EntityAssets(id, e),
            _ => return None,
        })
    }

    /// The `Allow` header value for this route.
    fn allowed(self) -> &'static str {
        match self {
            Self::Assets | Self::Indexes | Self::Collections | Self::Entities(_) => "GET, POST",
            Self::IndexedAssets(_, false) => "GET, POST",
            Self::MultipartUploads => "GET, POST",
            Self::Asset(_) => "GET, DELETE",
            Self::AssetIndexedAssets(_) | Self::AssetEntities(_) | Self::IndexedAssets(_, true) => {
                "GET"
            }
            Self::AssetUserMetadata(_) => "PUT, PATCH, DELETE",
            Self::Index(_) => "GET, PUT, DELETE",
            Self::IndexedAsset(..) | Self::Collection(_) | Self::Entity(..) => "GET, PATCH, DELETE",
            Self::EntitiesBulk(_) => "POST",
            Self::EntityAssets(..) => "POST, DELETE",
        }
    }

    async fn handle(
        self,
        s: &Shared,
        method: &Method,
        headers: &HeaderMap,
        q: &Query,
        body: BodyStream,
    ) -> Reply {
        use Route as R;
        match (self, method) {
            (R::MultipartUploads, _) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "resource_not_exist",
                "Multipart uploads are not supported by this emulator; use a direct upload.",
            )),
            (R::Assets, &Method::GET) => h::list_assets(s, q),
            (R::Assets, &Method::POST) => h::create_asset(s, headers, body).await,
            (R::Asset(id), &Method::GET) => h::get_asset(s, id),
            (R::Asset(id), &Method::DELETE) => h::delete_asset(s, id, q),
            (R::AssetIndexedAssets(id), &Method::GET) => h::list_asset_indexed(s, id, q),
            (R::AssetEntities(id), &Method::GET) => h::list_asset_entities(s, id, q),
            (R::AssetUserMetadata(id), m) if is_metadata_method(m) => {
                h::asset_metadata(s, id, m, body).await
            }
            (R::Indexes, &Method::GET) => h::list_indexes(s, q),
            (R::Indexes, &Method::POST) => h::create_index(s, body).await,
            (R::Index(id), &Method::GET) => h::get_index(s, id),
            (R::Index(id), &Method::PUT) => h::rename_index(s, id, body).await,
            (R::Index(id), &Method::DELETE) => h::delete_index(s, id),
            (R::IndexedAssets(id, _), &Method::GET) => h::list_indexed(s, id, q),
            (R::IndexedAssets(id, false), &Method::POST) => h::create_indexed(s, id, body).await,
            (R::IndexedAsset(i, ia), &Method::GET) => h::get_indexed(s, i, ia),
            (R::IndexedAsset(i, ia), &Method::PATCH) => h::patch_indexed(s, i, ia, body).await,
            (R::IndexedAsset(i, ia), &Method::DELETE) => h::delete_indexed(s, i, ia),
            (R::Collections, &Method::GET) => h::list_collections(s, q),
            (R::Collections, &Method::POST) => h::create_collection(s, body).await,
            (R::Collection(id), &Method::GET) => h::get_collection(s, id),
            (R::Collection(id), &Method::PATCH) => h::patch_collection(s, id, body).await,
            (R::Collection(id), &Method::DELETE) => h::delete_collection(s, id),
            (R::Entities(c), &Method::GET) => h::list_entities(s, c, q),
            (R::Entities(c), &Method::POST) => h::create_entity(s, c, body).await,
            (R::EntitiesBulk(c), &Method::POST) => h::create_entities_bulk(s, c, body).await,
            (R::Entity(c, e), &Method::GET) => h::get_entity(s, c, e),
            (R::Entity(c, e), &Method::PATCH) => h::patch_entity(s, c, e, body).await,
            (R::Entity(c, e), &Method::DELETE) => h::delete_entity(s, c, e),
            (R::EntityAssets(c, e), &Method::POST) => h::link_assets(s, c, e, body, true).await,
            (R::EntityAssets(c, e), &Method::DELETE) => h::link_assets(s, c, e, body, false).await,
            (r, m) => Err(ApiError::method_not_allowed(m, r.allowed())),
        }
    }
}

fn is_metadata_method(m: &Method) -> bool {
    m == Method::PUT || m == Method::PATCH || m == Method::DELETE
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn route_literals_win() {
        assert_eq!(
            Route::parse("assets/multipart-uploads"),
            Some(Route::MultipartUploads)
        );
        assert_eq!(
            Route::parse("entity-collections/c/entities/bulk"),
            Some(Route::EntitiesBulk("c"))
        );
        assert_eq!(Route::parse("assets/a1"), Some(Route::Asset("a1")));
        assert_eq!(Route::parse("assets/"), None);
        assert_eq!(Route::parse("assets//entities"), None);
        assert_eq!(Route::parse("nope"), None);
    }

    #[test]
    fn key_check() {
        let mut h = HeaderMap::new();
        assert!(!key_matches(&h, "k"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        assert!(key_matches(&h, "k"));
        assert!(!key_matches(&h, "kk"));
        assert!(!key_matches(&h, "j"));
    }
}
