//! The approvals webhook: a JSON POST for each new pending approval and each decision.
//!
//! Notifications are queued (bounded) and sent by one background task with retries and
//! exponential backoff; a full queue drops the notification. Nothing here ever holds a request
//! back: failures are logged and counted in `tl_gateway_approval_notifications_total{result}`
//! (`sent`, `retried`, `failed`, `dropped`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::mpsc;

use super::{Approval, State};
use crate::metrics::Metrics;

/// `approvals.notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// One attempt waits at most this long for an answer.
    pub timeout: Duration,
    /// Attempts per notification (the first included).
    pub max_attempts: u32,
    /// The key bodies are signed with (`approvals.notify.secret_file`): `x-tl-gateway-signature:
    /// sha256=<hex HMAC-SHA256 of the body>`.
    pub secret: Option<Vec<u8>>,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            url: String::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 5,
            secret: None,
        }
    }
}

/// Notifications waiting to be sent, at most.
const QUEUE: usize = 1024;

/// Notifications in flight at once: a slow or dead endpoint delays none of the others.
const CONCURRENT: usize = 16;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-tl-gateway-signature";

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Mac, SimpleHmac};
    let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", crate::units::hex(&mac.finalize().into_bytes()))
}

/// The first retry waits this long; each further one twice as long (at most [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type WebhookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The sending half: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Bytes>,
    base_url: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Start the sender task (on the current runtime). `base_url` is the gateway's URL as
    /// clients reach it, for the links in each notification.
    pub fn start(
        settings: NotifySettings,
        base_url: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Notifier, rustls::Error> {
        let client: WebhookClient = crate::outbound::client(settings.timeout)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_all(client, settings, rx, metrics.clone()));
        Ok(Notifier {
            tx,
            base_url: Arc::from(base_url.trim_end_matches('/')),
            metrics,
        })
    }

    /// Queue a notification about `approval` (just created, or just decided by `actor`).
    pub fn send(&self, approval: &Approval, actor: &str, comment: Option<&str>) {
        let event = match approval.state {
            State::Pending if approval.decisions.is_empty() => "approval.requested",
            State::Pending => "approval.approved_partly",
            State::Approved => "approval.approved",
            State::Denied => "approval.denied",
            _ => return,
        };
        let references = approval
            .references
            .as_ref()
            .map(|r| r.indexed_assets.len() + r.entities.len());
        let body = serde_json::json!({
            "event": event,
            "id": approval.id,
            "state": approval.state.as_str(),
            "rule": approval.rule,
            "requester": approval.requester,
            "by": actor,
            "comment": comment,
            "method": approval.method,
            "target": approval.target,
            "references": references,
            "references_complete": approval.references.as_ref().map(|r| r.complete),
            "approvals_required": approval.approvals_required,
            "approvers": approval.approvers(),
            "approver_roles": approval.approver_roles,
            "created_at": approval.created_at,
            "expires_at": approval.expires_at,
            "link": format!("{}/tl-gateway/ui/#/approvals/{}", self.base_url, approval.id),
            "api": format!("{}/tl-gateway/v1/approvals/{}", self.base_url, approval.id),
        });
        if self.tx.try_send(Bytes::from(body.to_string())).is_err() {
            tracing::warn!(approval_id = %approval.id, "approval notification dropped: the webhook queue is full");
            self.count("dropped");
        }
    }

    /// Queue another kind of notification (the deferred calls' `deferred.*` events): `body` is
    /// sent as it is, with `link` and `api` added from `page` and `api` (paths on the gateway).
    pub fn send_other(&self, mut body: serde_json::Value, page: &str, api: &str) {
        if let Some(object) = body.as_object_mut() {
            object.insert("link".into(), format!("{}{page}", self.base_url).into());
            object.insert("api".into(), format!("{}{api}", self.base_url).into());
        }
        if self.tx.try_send(Bytes::from(body.to_string())).is_err() {
            tracing::warn!("notification dropped: the webhook queue is full");
            self.count("dropped");
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .approval_notifications
            .with_label_values(&[result])
            .inc();
    }
}

async fn send_all(
    client: WebhookClient,
    settings: NotifySettings,
    mut rx: mpsc::Receiver<Bytes>,
    metrics: Arc<Metrics>,
) {
    let settings = Arc::new(settings);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    while let Some(body) = rx.recv().await {
        // Each notification retries on its own: one waiting for a dead endpoint holds one slot.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, settings, metrics) = (client.clone(), settings.clone(), metrics.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let count = |result: &str| {
                metrics
                    .approval_notifications
                    .with_label_values(&[result])
                    .inc()
            };
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=settings.max_attempts {
                match post(&client, &settings, body.clone()).await {
                    Ok(()) => {
                        count("sent");
                        break;
                    }
                    Err(why) if attempt < settings.max_attempts => {
                        tracing::warn!(attempt, error = %why, "approval webhook failed; retrying in {backoff:?}");
                        count("retried");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(why) => {
                        tracing::error!(attempts = attempt, error = %why, "approval webhook failed; notification given up");
                        count("failed");
                    }
                }
            }
        });
    }
}

async fn post(
    client: &WebhookClient,
    settings: &NotifySettings,
    body: Bytes,
) -> Result<(), String> {
    let mut request = Request::post(settings.url.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "tl-gateway");
    if let Some(secret) = &settings.secret {
        request = request.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    match tokio::time::timeout(settings.timeout, client.request(request)).await {
        Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("status {}", response.status())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_hmac_sha256_as_rfc_4231_computes_it() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
