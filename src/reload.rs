//! Hot reload: on SIGHUP or a change of the configuration file, parse, validate and swap the request
//! stack atomically.
//!
//! In-flight requests finish under the stack they started with (each request holds its own clone).
//! An invalid file keeps the last good configuration and logs the error with its line. Clients,
//! policy, routes and upstream settings reload; listeners, the key source, server limits and logging
//! need a restart (a warning says so). The TLS files reload on the same SIGHUP, in `tls::ServerTls`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::forward::Forwarder;
use crate::stack::{build_stack, upstream_settings, GatewayService, Shared, StackParts};
use crate::state::StateSettings;

/// How often the configuration file is checked for changes.
pub const CONFIG_POLL: Duration = Duration::from_secs(1);

/// How long a changed file must stay unchanged before it is applied (editors write in steps).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Reload outcomes (also counted in `tl_gateway_config_reloads_total`).
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied.
    pub success: AtomicU64,
    /// Reloads refused (the last good configuration stayed).
    pub failure: AtomicU64,
}

struct State {
    config: Config,
    forwarder: Forwarder,
    /// The file contents last acted on (applied or refused), so a broken file is reported once.
    last_seen: Option<String>,
}

/// Re-reads the configuration and swaps the stack.
pub struct Reloader {
    path: PathBuf,
    stack: Arc<ArcSwap<GatewayService>>,
    shared: Shared,
    state: Mutex<State>,
    stats: Arc<ReloadStats>,
}

impl Reloader {
    /// A reloader for the gateway serving `stack`, started from `config` (read from `path`).
    pub fn new(
        path: PathBuf,
        config: Config,
        forwarder: Forwarder,
        stack: Arc<ArcSwap<GatewayService>>,
        shared: Shared,
        stats: Arc<ReloadStats>,
    ) -> Arc<Self> {
        let last_seen = std::fs::read_to_string(&path).ok();
        Arc::new(Reloader {
            path,
            stack,
            shared,
            state: Mutex::new(State {
                config,
                forwarder,
                last_seen,
            }),
            stats,
        })
    }

    /// Reload counters.
    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// Read the file now and apply it if valid.
    pub async fn reload(&self) -> Result<(), String> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| format!("{}: cannot read: {e}", self.path.display()));
        let mut state = self.state.lock().await;
        let result = match text {
            Ok(text) => {
                state.last_seen = Some(text.clone());
                self.apply(&mut state, &text)
            }
            Err(error) => Err(error),
        };
        match &result {
            Ok(()) => {
                self.stats.success.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(file = %self.path.display(), rules = state.config.policy.rules.len(), clients = state.config.clients.len(), "configuration reloaded");
            }
            Err(error) => {
                self.stats.failure.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %error, "configuration reload refused; keeping the last good configuration");
            }
        }
        result
    }

    fn apply(&self, state: &mut State, text: &str) -> Result<(), String> {
        let mut config = Config::parse(&self.path, text).map_err(|e| e.to_string())?;
        let old = &state.config;
        let restart_only = [
            ("listen", old.listen != config.listen),
            ("admin_listen", old.admin_listen != config.admin_listen),
            (
                "upstream.api_key_*",
                old.upstream.key_source != config.upstream.key_source,
            ),
            ("server", old.server != config.server),
            ("logging", old.logging != config.logging),
            (
                "state (backend, url, key_prefix, timeout)",
                state_needs_restart(&old.state, &config.state),
            ),
            (
                "tls (file paths, client CA, min_version)",
                old.tls != config.tls,
            ),
            (
                "approvals.notify",
                old.approvals.notify != config.approvals.notify,
            ),
            (
                "telemetry.otlp",
                old.telemetry.otlp != config.telemetry.otlp,
            ),
        ];
        for (key, changed) in restart_only {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the configuration file; takes effect at the next restart"
                );
            }
        }
        // The exporter runs as started: the stack keeps matching it.
        config.telemetry.otlp = old.telemetry.otlp.clone();
        let settings = upstream_settings(&config);
        let forwarder = if *state.forwarder.settings() == settings {
            // Same upstream: keep the warm connection pool.
            state.forwarder.clone()
        } else {
            Forwarder::new(settings).map_err(|e| e.to_string())?
        };
        fn audit_settings(c: &Config) -> Option<&crate::audit::AuditSettings> {
            c.audit.as_ref().map(|a| &a.settings)
        }
        if audit_settings(old) != audit_settings(&config) {
            tracing::warn!(
                key = "audit",
                "changed in the configuration file; takes effect at the next restart"
            );
        }
        let parts = StackParts::with_forwarder(&config, &self.shared, forwarder.clone());
        self.stack.store(Arc::new(build_stack(parts)));
        state.config = config;
        state.forwarder = forwarder;
        Ok(())
    }

    /// Watch the file (polling, debounced) and SIGHUP until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let reloader = self.clone();
        // Installed before returning, so a SIGHUP right after start-up reloads instead of killing.
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CONFIG_POLL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<()>();
                tokio::select! {
                    () = hup => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        let _ = reloader.reload().await;
                    }
                    _ = ticker.tick() => reloader.poll_file().await,
                }
            }
        })
    }

    async fn poll_file(&self) {
        let Ok(first) = tokio::fs::read_to_string(&self.path).await else {
            return;
        };
        if self.state.lock().await.last_seen.as_deref() == Some(first.as_str()) {
            return;
        }
        tokio::time::sleep(DEBOUNCE).await;
        match tokio::fs::read_to_string(&self.path).await {
            Ok(second) if second == first => {
                tracing::info!(file = %self.path.display(), "configuration file changed");
                let _ = self.reload().await;
            }
            // Still being written: the next tick looks again.
            _ => {}
        }
    }
}

/// Whether two `state:` sections differ in what only a restart applies (the backend and how to reach
/// it; `on_unavailable` reloads).
fn state_needs_restart(old: &StateSettings, new: &StateSettings) -> bool {
    match (old, new) {
        (StateSettings::Memory, StateSettings::Memory) => false,
        (StateSettings::Redis(a), StateSettings::Redis(b)) => {
            (&a.url, &a.key_prefix, a.timeout) != (&b.url, &b.key_prefix, b.timeout)
        }
        _ => true,
    }
}
