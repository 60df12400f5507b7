//! Temporary interface stub; the emulator lands in the next commit.
#![allow(missing_docs, clippy::all, unused)]
use bytes::Bytes;
use http_body_util::Full;
#[derive(Clone)]
pub struct Emulator {
    key: String,
}
pub struct DemoData {
    pub index_id: String,
    pub referenced_asset_id: String,
    pub unreferenced_asset_id: String,
    pub indexed_asset_ids: Vec<String>,
    pub entity_collection_id: String,
    pub entity_id: String,
}
impl Emulator {
    pub fn new(api_key: impl Into<String>) -> Self {
        Emulator {
            key: api_key.into(),
        }
    }
    pub fn seed_demo(&self) -> DemoData {
        DemoData {
            index_id: String::new(),
            referenced_asset_id: String::new(),
            unreferenced_asset_id: String::new(),
            indexed_asset_ids: vec![],
            entity_collection_id: String::new(),
            entity_id: String::new(),
        }
    }
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        shutdown.await;
        Ok(())
    }
}
