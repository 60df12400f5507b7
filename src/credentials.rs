//! The upstream key (loaded, watched, never shown) and the layer that swaps client credentials for it.
//!
//! The key comes from a file (re-read every second, so a rotated Kubernetes secret or a replaced file
//! takes effect without a restart) or from an environment variable. An emptied or vanished file keeps
//! the last good key and marks the source degraded, which turns `/readyz` to 503. The key value never
//! reaches a log line, an error body or a `Debug` print.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue, Request};

use crate::error::GatewayError;
use crate::gate::{Admit, GateLayer};
use crate::headers;

/// The header the upstream reads its key from.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// How often the key file is re-read.
pub const KEY_FILE_POLL: Duration = Duration::from_secs(1);

/// Where the upstream key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file, re-read when it changes (key rotation without restart).
    File(PathBuf),
    /// An environment variable, read once at start.
    Env(String),
}

/// Why the upstream key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read upstream key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} (upstream.api_key_env) is not set")]
    EnvMissing(String),
    /// The key is empty.
    #[error("the upstream key from {0} is empty")]
    Empty(String),
    /// The key holds bytes an HTTP header cannot carry.
    #[error("the upstream key from {0} contains characters an HTTP header cannot carry")]
    Malformed(String),
}

/// The one real TwelveLabs key, swappable at run time.
pub struct UpstreamKey {
    source: Option<KeySource>,
    current: ArcSwapOption<HeaderValue>,
    problem: Mutex<Option<String>>,
}

impl std::fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamKey")
            .field("source", &self.source)
            .field("loaded", &self.current.load().is_some())
            .field("value", &"<redacted>")
            .finish()
    }
}

fn parse_key(raw: &[u8], origin: &str) -> Result<HeaderValue, KeyError> {
    let end = raw
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let key = &raw[..end];
    if key.is_empty() {
        return Err(KeyError::Empty(origin.to_owned()));
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyError::Malformed(origin.to_owned()));
    }
    let mut value =
        HeaderValue::from_bytes(key).map_err(|_| KeyError::Malformed(origin.to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl UpstreamKey {
    /// Load the key from its configured source; fails if it is missing, empty or malformed.
    pub fn load(source: &KeySource) -> Result<Arc<UpstreamKey>, KeyError> {
        let value = match source {
            KeySource::File(path) => {
                let raw = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_key(&raw, &path.display().to_string())?
            }
            KeySource::Env(var) => {
                let raw = std::env::var_os(var).ok_or_else(|| KeyError::EnvMissing(var.clone()))?;
                parse_key(raw.as_encoded_bytes(), &format!("${var}"))?
            }
        };
        Ok(Arc::new(UpstreamKey {
            source: Some(source.clone()),
            current: ArcSwapOption::from_pointee(value),
            problem: Mutex::new(None),
        }))
    }

    /// A fixed key (demo and tests).
    pub fn fixed(key: &str) -> Result<Arc<UpstreamKey>, KeyError> {
        Ok(Arc::new(UpstreamKey {
            source: None,
            current: ArcSwapOption::from_pointee(parse_key(key.as_bytes(), "the given key")?),
            problem: Mutex::new(None),
        }))
    }

    /// The key to send upstream, marked sensitive.
    pub fn current(&self) -> Option<HeaderValue> {
        self.current.load_full().map(|v| (*v).clone())
    }

    /// `Ok` when the source is healthy, else why not (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        if self.current.load().is_none() {
            return Err("no upstream key loaded".into());
        }
        match self.problem.lock().map(|p| p.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(problem)) => Err(problem),
            Err(_) => Err("key state unavailable".into()),
        }
    }

    /// Re-read a file source once. A bad read keeps the last good key and records the problem.
    pub async fn refresh(&self) {
        let Some(KeySource::File(path)) = &self.source else {
            return;
        };
        let origin = path.display().to_string();
        let result = match tokio::fs::read(path).await {
            Ok(raw) => parse_key(&raw, &origin),
            Err(source) => Err(KeyError::Read {
                path: path.clone(),
                source,
            }),
        };
        let Ok(mut problem) = self.problem.lock() else {
            return;
        };
        match result {
            Ok(value) => {
                let changed = self.current.load().as_deref() != Some(&value);
                if changed {
                    self.current.store(Some(Arc::new(value)));
                    tracing::info!(file = %origin, "upstream key reloaded");
                }
                if problem.take().is_some() {
                    tracing::info!(file = %origin, "upstream key file is healthy again");
                }
            }
            Err(error) => {
                let text = format!("{error}; keeping the last good key");
                if problem.as_deref() != Some(text.as_str()) {
                    tracing::error!(file = %origin, "{text}");
                    *problem = Some(text);
                }
            }
        }
    }

    /// Re-read the key file every `interval` until the returned task is aborted.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if !matches!(self.source, Some(KeySource::File(_))) {
            return None;
        }
        let key = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                key.refresh().await;
            }
        }))
    }
}

/// The credentials layer: removes every client credential and inserts the upstream key exactly
/// once (marked sensitive); with no key loaded, 503.
#[derive(Clone, Debug)]
pub struct SwapCredentials {
    key: Arc<UpstreamKey>,
}

impl SwapCredentials {
    /// The layer injecting this key.
    pub fn layer(key: Arc<UpstreamKey>) -> GateLayer<SwapCredentials> {
        GateLayer::new(SwapCredentials { key })
    }
}

impl<B> Admit<B> for SwapCredentials {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let key = self.key.current().ok_or(GatewayError::UpstreamKeyMissing)?;
        headers::remove_client_credentials(req.headers_mut());
        req.headers_mut().insert(X_API_KEY.clone(), key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_newlines_are_trimmed_and_the_value_is_sensitive() {
        let value = parse_key(b"secret-key\r\n\n", "t").unwrap();
        assert_eq!(value.as_bytes(), b"secret-key");
        assert!(value.is_sensitive());
    }

    #[test]
    fn empty_or_malformed_keys_are_refused() {
        assert!(matches!(parse_key(b"\n", "t"), Err(KeyError::Empty(_))));
        assert!(matches!(
            parse_key(b"a b", "t"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            parse_key("k\u{e9}y".as_bytes(), "t"),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = UpstreamKey::fixed("super-secret-upstream-key").unwrap();
        let printed = format!("{key:?} {:?}", key.current().unwrap());
        assert!(!printed.contains("super-secret"), "{printed}");
    }

    #[tokio::test]
    async fn a_vanished_file_keeps_the_last_good_key_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first\n").unwrap();
        let key = UpstreamKey::load(&KeySource::File(path.clone())).unwrap();
        assert_eq!(key.current().unwrap(), "first");

        std::fs::write(&path, "second\n").unwrap();
        key.refresh().await;
        assert_eq!(key.current().unwrap(), "second");
        assert!(key.readiness().is_ok());

        std::fs::write(&path, "").unwrap();
        key.refresh().await;
        assert_eq!(key.current().unwrap(), "second");
        assert!(key.readiness().unwrap_err().contains("empty"));

        std::fs::remove_file(&path).unwrap();
        key.refresh().await;
        assert_eq!(key.current().unwrap(), "second");
        assert!(key.readiness().is_err());

        std::fs::write(&path, "third").unwrap();
        key.refresh().await;
        assert_eq!(key.current().unwrap(), "third");
        assert!(key.readiness().is_ok());
    }
}
