//! Configuration: one YAML file → a validated, typed [`Config`] (the configuration contract in
//! docs/architecture.md).
//!
//! This module only assembles. Serde reads the file into `Raw*` types that reject unknown keys and
//! check single values (durations, digests, ids) as they are read, so those errors carry serde's line
//! and column. The validator then checks what spans sections (client ids that rules name, duplicate
//! ids) and hands each section to the layer that owns it: the settings types and their compile
//! steps live with the layers (`policy`, `ratelimit`, `matcher`, `audit`, `classify`, `guards`,
//! `auth`, `credentials`, `forward`, `telemetry`). Errors name the key path and the line found by
//! [`locate`]. Only the composition root (`stack`), the server, the reloader and the CLI import this
//! module (`scripts/check-structure` checks it).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use crate::approvals::settings::ApprovalsSettings as ApprovalsConfig;
pub use crate::audit::settings::AuditSection as AuditConfig;
pub use crate::auth::settings::KeyDigest;
use crate::auth::ClientSettings;
use crate::classify::{ClassifySettings, UnknownRoutes};
pub use crate::forward::settings::{
    UpstreamSection as UpstreamConfig, DEFAULT_MAX_IDLE_CONNECTIONS,
};
use crate::guards::{ForceDeleteSettings, OnError, ProtectedSettings};
use crate::ids::{ClientId, Role};
use crate::keys::{KeySettings, RawKeys};
use crate::policy::{Policy, PolicySettings};
use crate::ratelimit::LimitDefinition;
pub use crate::settings::Seg;
use crate::settings::{display_path, Invalid};
use crate::state::StateSettings;
use crate::store::{RawStore, StoreBackend, StoreSettings};
use crate::telemetry::LogFormat;
use crate::tls::TlsSettings;
use crate::units::{BodyRate, ByteSize, ConfigDuration};

/// A configuration error naming the file, the line (when known) and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending key, when it could be found.
    pub line: Option<usize>,
    /// What is wrong, starting with the key path.
    pub message: String,
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// Where requests go and with which key.
    pub upstream: UpstreamConfig,
    /// Team members and their key digests.
    pub clients: Vec<ClientSettings>,
    /// Access policy as written.
    pub policy: PolicySettings,
    /// The policy compiled against the route table.
    pub compiled_policy: Arc<Policy>,
    /// How requests are classified.
    pub classify: ClassifySettings,
    /// Non-fatal findings (e.g. rules that can never match), for `check`.
    pub warnings: Vec<String>,
    /// Audit log settings, if auditing is configured.
    pub audit: Option<AuditConfig>,
    /// The reference guard before forced asset deletes.
    pub force_delete: ForceDeleteSettings,
    /// Rate limits, compiled (their definitions identify their state across reloads).
    pub rate_limits: Vec<LimitDefinition>,
    /// Listener limits and timeouts.
    pub server: ServerConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// Where shared state (rate-limit buckets) lives.
    pub state: StateSettings,
    /// Where records (approvals, clients and keys) live: `memory` (no `store:` section), SQLite
    /// or PostgreSQL.
    pub store: StoreSettings,
    /// The keys API: who manages clients and keys, which roles they grant, how long keys live.
    pub keys: KeySettings,
    /// Approvals: the link shown in messages and notifications, and the webhook.
    pub approvals: ApprovalsConfig,
    /// `guards.protected`: resources no request may delete or change.
    pub protected: ProtectedSettings,
    /// HTTPS on the client listener (and client certificates), if configured.
    pub tls: Option<TlsSettings>,
    /// The `ui:` section (the approvals page).
    pub ui: UiConfig,
    /// The `deferred:` section (the undo window).
    pub deferred: DeferredConfig,
    /// The `telemetry:` section: trace export and whose trace context is continued.
    pub telemetry: TelemetryConfig,
}

/// The `deferred:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredConfig {
    /// New deferred calls one requester may schedule per minute (more: 429).
    pub max_schedules_per_client: u32,
}

impl Default for DeferredConfig {
    fn default() -> Self {
        DeferredConfig {
            max_schedules_per_client: crate::deferred::DEFAULT_MAX_SCHEDULES_PER_CLIENT,
        }
    }
}

/// The `ui:` section: who may read the recent destructive calls on the approvals page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Roles that may read `GET /tl-gateway/v1/audit/recent` (default `[admin]`).
    pub audit_roles: Vec<Role>,
    /// Sign-in with the team's identity provider (`ui.oidc`).
    pub oidc: Option<crate::ui::oidc::OidcSettings>,
    /// With `ui.oidc`: whether the page still offers key sign-in (default false).
    pub allow_key_sign_in: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            audit_roles: vec!["admin".parse().expect("a valid role")],
            oidc: None,
            allow_key_sign_in: false,
        }
    }
}

/// Listener limits and timeouts (compared by value: a change needs a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Open client connections at most; further connections wait in the accept backlog.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// On SIGTERM/ctrl-c, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Requests in flight at most; more are shed with 503 `overloaded`.
    pub max_in_flight: usize,
    /// Largest request head accepted (bytes).
    pub max_header_size: u64,
    /// Longest request target (path and query) accepted.
    pub max_target_length: usize,
    /// A request or response body that sends nothing for this long is aborted.
    pub body_idle_timeout: Duration,
    /// Serving workers (default: one per CPU), see [`crate::workers`].
    pub worker_threads: Option<usize>,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open client connections per client IP address at most (default: no per-address cap).
    pub max_connections_per_ip: Option<usize>,
    /// Open connections on the admin listener at most.
    pub admin_max_connections: usize,
    /// Requests in flight per client at most (default: a quarter of `max_in_flight`); more get 429.
    pub max_in_flight_per_client: usize,
    /// A request body arriving slower than this on average is aborted (`None`: no minimum).
    pub min_body_rate: Option<BodyRate>,
    /// A connection this old is shut down gracefully (HTTP/1: after the response in flight;
    /// HTTP/2: GOAWAY), so a revoked or expired client certificate cannot live on in it
    /// (`None`: `0s`, no limit).
    pub max_connection_age: Option<Duration>,
}

/// Log output settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggingConfig {
    /// Line format.
    pub format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    upstream: crate::forward::settings::RawUpstream,
    #[serde(default)]
    clients: Vec<crate::auth::settings::RawClient>,
    #[serde(default)]
    policy: Option<crate::policy::settings::RawPolicy>,
    #[serde(default)]
    audit: Option<crate::audit::settings::RawAudit>,
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    logging: Option<RawLogging>,
    #[serde(default)]
    routes: Option<RawRoutes>,
    #[serde(default)]
    guards: Option<RawGuards>,
    #[serde(default)]
    rate_limits: Vec<crate::ratelimit::RawLimit>,
    #[serde(default)]
    state: Option<crate::state::settings::RawState>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    keys: Option<RawKeys>,
    #[serde(default)]
    approvals: Option<crate::approvals::settings::RawApprovals>,
    #[serde(default)]
    tls: Option<crate::tls::settings::RawTls>,
    #[serde(default)]
    ui: Option<RawUi>,
    #[serde(default)]
    deferred: Option<RawDeferredSection>,
    #[serde(default)]
    telemetry: Option<crate::telemetry::settings::RawTelemetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeferredSection {
    max_schedules_per_client: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUi {
    audit_roles: Option<Vec<Role>>,
    oidc: Option<crate::ui::oidc::RawOidc>,
    allow_key_sign_in: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProtected {
    #[serde(default)]
    indexes: Vec<String>,
    #[serde(default)]
    entity_collections: Vec<String>,
    #[serde(default)]
    assets: Vec<String>,
    message: Option<String>,
    #[serde(default)]
    allow_additions: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    unknown: UnknownRoutes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuards {
    force_delete: Option<RawForceDelete>,
    protected: Option<RawProtected>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForceDelete {
    enabled: Option<bool>,
    max_pages: Option<u32>,
    page_limit: Option<u32>,
    max_indexed_assets: Option<usize>,
    #[serde(default)]
    on_error: OnError,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    max_header_size: Option<ByteSize>,
    max_target_length: Option<usize>,
    body_idle_timeout: Option<ConfigDuration>,
    worker_threads: Option<usize>,
    header_read_timeout: Option<ConfigDuration>,
    shutdown_grace: Option<ConfigDuration>,
    idle_timeout: Option<ConfigDuration>,
    max_connections_per_ip: Option<usize>,
    admin_max_connections: Option<usize>,
    max_in_flight_per_client: Option<usize>,
    min_body_rate: Option<String>,
    max_connection_age: Option<ConfigDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    #[serde(default)]
    format: LogFormat,
}

/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::parse(path, &source)
    }

    /// Validate configuration text; `path` is only used in error messages.
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(source).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: e.location().map(|l| l.line()),
            message: strip_location(&e.to_string()),
        })?;
        let fail = |key: &[Seg], message: String| ConfigError {
            file: path.to_owned(),
            line: locate(source, key),
            message: format!("{}: {message}", display_path(key)),
        };
        Validator { fail: &fail }.build(raw)
    }
}

struct Validator<'a> {
    fail: &'a dyn Fn(&[Seg], String) -> ConfigError,
}

impl Validator<'_> {
    /// A section's problem, with its line.
    fn invalid(&self, invalid: Invalid) -> ConfigError {
        (self.fail)(&invalid.at, invalid.message)
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let admin_listen = match raw.admin_listen {
            Some(addr) => addr,
            None => DEFAULT_ADMIN_LISTEN
                .parse()
                .map_err(|_| (self.fail)(&[Seg::Key("admin_listen")], "bad default".into()))?,
        };
        if admin_listen == raw.listen && raw.listen.port() != 0 {
            return Err((self.fail)(
                &[Seg::Key("admin_listen")],
                "must differ from listen: admin endpoints live on their own listener".into(),
            ));
        }
        let upstream =
            crate::forward::settings::compile(raw.upstream).map_err(|e| self.invalid(e))?;
        let tls = raw
            .tls
            .map(crate::tls::settings::compile)
            .transpose()
            .map_err(|e| self.invalid(e))?;
        let clients = crate::auth::settings::compile_clients(raw.clients, tls.as_ref())
            .map_err(|e| self.invalid(e))?;
        let known_clients: HashSet<ClientId> = clients.iter().map(|c| c.id.clone()).collect();
        let policy = crate::policy::settings::compile(raw.policy, &known_clients)
            .map_err(|e| self.invalid(e))?;
        let (compiled_policy, findings) = Policy::compile(&policy).map_err(|problems| {
            let first = &problems[0];
            (self.fail)(
                &[
                    Seg::Key("policy"),
                    Seg::Key("rules"),
                    Seg::Index(first.index),
                    Seg::Key("match"),
                ],
                format!("rule {:?}: {}", first.rule.as_str(), first.message),
            )
        })?;
        let mut warnings: Vec<String> = findings
            .iter()
            .map(|p| {
                format!(
                    "policy.rules[{}] ({}): {}",
                    p.index,
                    p.rule.as_str(),
                    p.message
                )
            })
            .collect();
        let server = match raw.server {
            None => ServerConfig::default(),
            Some(s) => self.server(s)?,
        };
        if server.max_connections == 0 {
            return Err((self.fail)(
                &[Seg::Key("server"), Seg::Key("max_connections")],
                "must be at least 1".into(),
            ));
        }

        let classify = ClassifySettings {
            api_versions: upstream.api_versions.clone(),
            unknown_routes: raw.routes.map(|r| r.unknown).unwrap_or_default(),
            max_target_length: server.max_target_length,
            rule_keys: compiled_policy.rule_keys().clone(),
            rule_bool_keys: compiled_policy.rule_bool_keys().clone(),
        };
        let audit = raw
            .audit
            .map(crate::audit::settings::compile)
            .transpose()
            .map_err(|e| self.invalid(e))?;
        let rate_limits =
            crate::ratelimit::compile_limits(raw.rate_limits, &known_clients, &mut warnings)
                .map_err(|e| self.invalid(e))?;
        let state = crate::state::settings::compile(raw.state).map_err(|e| self.invalid(e))?;
        let ui = match raw.ui {
            None => UiConfig::default(),
            Some(ui) => UiConfig {
                audit_roles: ui
                    .audit_roles
                    .unwrap_or_else(|| UiConfig::default().audit_roles),
                oidc: ui
                    .oidc
                    .map(|oidc| oidc.compile(tls.is_some()))
                    .transpose()
                    .map_err(|(at, message)| {
                        let path: Vec<Seg> = [Seg::Key("ui"), Seg::Key("oidc")]
                            .into_iter()
                            .chain(at.iter().map(|k| Seg::Key(k)))
                            .collect();
                        (self.fail)(&path, message)
                    })?,
                allow_key_sign_in: ui.allow_key_sign_in.unwrap_or(false),
            },
        };
        let store = match raw.store {
            None => StoreSettings::default(),
            Some(raw) => raw.compile().map_err(|(at, message)| {
                let path: Vec<Seg> = std::iter::once(Seg::Key("store"))
                    .chain(at.iter().map(|k| Seg::Key(k)))
                    .collect();
                (self.fail)(&path, message)
            })?,
        };
        if store.backend == StoreBackend::Memory && ui.oidc.is_some() {
            warnings.push(
                "ui.oidc with store.backend memory: sign-in sessions live in this process, end on restart and are known to this replica only; use sqlite or postgres"
                    .into(),
            );
        }
        if store.backend == StoreBackend::Memory && policy.rules.iter().any(|r| r.defer.is_some()) {
            warnings.push(
                "policy rules defer calls but store.backend is memory: a scheduled call is lost (never executed) if the gateway restarts during its delay; use store.backend: sqlite or postgres"
                    .into(),
            );
        }
        if store.backend == StoreBackend::Memory {
            warnings.push(
                "store.backend is memory: approvals, and clients and keys issued through the API, live in this process and are lost on restart (and not shared by replicas); use store.backend: sqlite for one replica or postgres for several"
                    .into(),
            );
        }
        for rule in &policy.rules {
            if let Some(approval) = &rule.approval {
                let approvers = clients
                    .iter()
                    .filter(|c| c.roles.iter().any(|r| approval.approver_roles.contains(r)))
                    .count();
                // The requester never approves their own request.
                if approvers < approval.approvals as usize + 1 {
                    warnings.push(format!(
                        "policy rule {} needs {} approver(s) with a role in [{}], but {} client(s) hold one: a request by one of them could never be approved",
                        rule.id.as_str(),
                        approval.approvals,
                        approval.approver_roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
                        approvers
                    ));
                }
            }
        }
        let approvals =
            crate::approvals::settings::compile(raw.approvals).map_err(|e| self.invalid(e))?;
        // Every role the configuration names: what an admin may grant by default.
        let mut named_roles: Vec<Role> = Vec::new();
        for role in clients
            .iter()
            .flat_map(|c| c.roles.iter())
            .chain(policy.rules.iter().flat_map(|r| r.allow_roles.iter()))
            .chain(
                policy
                    .rules
                    .iter()
                    .filter_map(|r| r.approval.as_ref())
                    .flat_map(|a| a.approver_roles.iter()),
            )
        {
            if !named_roles.contains(role) {
                named_roles.push(role.clone());
            }
        }
        let keys = match raw.keys {
            None => KeySettings::defaults(named_roles),
            Some(raw) => raw.compile(named_roles).map_err(|(at, message)| {
                let path: Vec<Seg> = std::iter::once(Seg::Key("keys"))
                    .chain(at.iter().map(|k| Seg::Key(k)))
                    .collect();
                (self.fail)(&path, message)
            })?,
        };
        let (raw_force_delete, raw_protected) = match raw.guards {
            Some(g) => (g.force_delete, g.protected),
            None => (None, None),
        };
        let protected =
            raw_protected.map_or_else(ProtectedSettings::default, |p| ProtectedSettings {
                indexes: p.indexes,
                entity_collections: p.entity_collections,
                assets: p.assets,
                message: p.message,
                allow_additions: p.allow_additions,
            });
        let force_delete = raw_force_delete.map_or_else(ForceDeleteSettings::default, |f| {
            let defaults = ForceDeleteSettings::default();
            ForceDeleteSettings {
                enabled: f.enabled.unwrap_or(defaults.enabled),
                max_pages: f.max_pages.unwrap_or(defaults.max_pages).max(1),
                page_limit: f.page_limit.unwrap_or(defaults.page_limit).clamp(1, 50),
                max_indexed_assets: f.max_indexed_assets,
                on_error: f.on_error,
            }
        });
        Ok(Config {
            listen: raw.listen,
            admin_listen,
            upstream,
            clients,
            policy,
            compiled_policy: Arc::new(compiled_policy),
            classify,
            warnings,
            audit,
            force_delete,
            rate_limits,
            server,
            logging: LoggingConfig {
                format: raw.logging.map(|l| l.format).unwrap_or_default(),
            },
            state,
            store,
            keys,
            approvals,
            protected,
            tls,
            ui,
            telemetry: crate::telemetry::settings::compile(raw.telemetry)
                .map_err(|e| self.invalid(e))?,
            deferred: raw
                .deferred
                .map_or_else(DeferredConfig::default, |d| DeferredConfig {
                    max_schedules_per_client: d
                        .max_schedules_per_client
                        .unwrap_or(crate::deferred::DEFAULT_MAX_SCHEDULES_PER_CLIENT)
                        .max(1),
                }),
        })
    }

    fn server(&self, s: RawServer) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::default();
        let max_in_flight = s.max_in_flight.unwrap_or(defaults.max_in_flight).max(1);
        let at = |key: &'static str| [Seg::Key("server"), Seg::Key(key)];
        let min_body_rate = match s.min_body_rate.as_deref().map(str::trim) {
            None => defaults.min_body_rate,
            Some("off") => None,
            Some(text) => Some(
                text.parse::<BodyRate>()
                    .map_err(|e| (self.fail)(&at("min_body_rate"), e))?,
            ),
        };
        for (key, value) in [
            ("max_connections_per_ip", s.max_connections_per_ip),
            ("admin_max_connections", s.admin_max_connections),
            ("max_in_flight_per_client", s.max_in_flight_per_client),
        ] {
            if value == Some(0) {
                return Err((self.fail)(&at(key), "must be at least 1".into()));
            }
        }
        let idle_timeout = s.idle_timeout.map_or(defaults.idle_timeout, |d| d.0);
        if idle_timeout.is_zero() {
            return Err((self.fail)(
                &at("idle_timeout"),
                "must be greater than zero".into(),
            ));
        }
        Ok(ServerConfig {
            max_connections: s.max_connections.unwrap_or(defaults.max_connections),
            header_read_timeout: s
                .header_read_timeout
                .map_or(defaults.header_read_timeout, |d| d.0),
            shutdown_grace: s.shutdown_grace.map_or(defaults.shutdown_grace, |d| d.0),
            max_in_flight,
            max_header_size: s
                .max_header_size
                .map_or(defaults.max_header_size, |b| b.0.max(8192)),
            max_target_length: s
                .max_target_length
                .unwrap_or(defaults.max_target_length)
                .max(64),
            body_idle_timeout: s
                .body_idle_timeout
                .map_or(defaults.body_idle_timeout, |d| d.0),
            worker_threads: s.worker_threads.map(|n| n.max(1)),
            idle_timeout,
            max_connections_per_ip: s.max_connections_per_ip,
            admin_max_connections: s
                .admin_max_connections
                .unwrap_or(defaults.admin_max_connections),
            max_in_flight_per_client: s
                .max_in_flight_per_client
                .unwrap_or_else(|| default_per_client(max_in_flight)),
            min_body_rate,
            max_connection_age: s
                .max_connection_age
                .map_or(defaults.max_connection_age, |d| {
                    (!d.0.is_zero()).then_some(d.0)
                }),
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            max_in_flight: 4096,
            max_header_size: 64 * 1024,
            max_target_length: 8192,
            body_idle_timeout: Duration::from_secs(60),
            worker_threads: None,
            idle_timeout: Duration::from_secs(60),
            max_connections_per_ip: None,
            admin_max_connections: 64,
            max_in_flight_per_client: default_per_client(4096),
            min_body_rate: Some(BodyRate {
                bytes_per_second: 1024,
                window: Duration::from_secs(30),
            }),
            max_connection_age: Some(Duration::from_secs(3600)),
        }
    }
}

/// `server.max_in_flight_per_client` by default: a quarter of `max_in_flight`.
fn default_per_client(max_in_flight: usize) -> usize {
    (max_in_flight / 4).max(1)
}

fn strip_location(message: &str) -> String {
    // serde_yaml appends " at line L column C"; the line is reported separately.
    match message.rfind(" at line ") {
        Some(pos) => message[..pos].to_owned(),
        None => message.to_owned(),
    }
}

/// Find the 1-based line of a key path in block-style YAML (best effort, for error messages).
pub fn locate(source: &str, path: &[Seg]) -> Option<usize> {
    // Each significant line as (line number, column of its key after any "- " markers, dash column, text).
    struct Line<'a> {
        number: usize,
        key_col: usize,
        dash_col: Option<usize>,
        text: &'a str,
    }
    let lines: Vec<Line> = source
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let indent = raw.len() - raw.trim_start().len();
            let mut text = raw.trim_start();
            if text.is_empty() || text.starts_with('#') {
                return None;
            }
            let mut key_col = indent;
            let mut dash_col = None;
            while let Some(rest) = text
                .strip_prefix("- ")
                .or_else(|| (text == "-").then_some(""))
            {
                dash_col.get_or_insert(key_col);
                let trimmed = rest.trim_start();
                key_col += text.len() - trimmed.len();
                text = trimmed;
            }
            Some(Line {
                number: i + 1,
                key_col,
                dash_col,
                text,
            })
        })
        .collect();
    let (mut start, mut end) = (0usize, lines.len());
    let mut found = None;
    let mut min_col = 0usize;
    for seg in path {
        match *seg {
            Seg::Key(key) => {
                let idx = (start..end).find(|&i| {
                    let l = &lines[i];
                    l.key_col >= min_col
                        && l.text.strip_prefix(key).is_some_and(|r| r.starts_with(':'))
                })?;
                let col = lines[idx].key_col;
                found = Some(lines[idx].number);
                let stop = (idx + 1..end)
                    .find(|&i| lines[i].key_col <= col)
                    .unwrap_or(end);
                start = idx + 1;
                end = stop;
                min_col = col + 1;
            }
            Seg::Index(n) => {
                let items: Vec<usize> = (start..end)
                    .filter(|&i| {
                        lines[i]
                            .dash_col
                            .is_some_and(|d| d >= min_col.saturating_sub(1))
                    })
                    .collect();
                let dash = items.first().and_then(|&i| lines[i].dash_col)?;
                let items: Vec<usize> = items
                    .into_iter()
                    .filter(|&i| lines[i].dash_col == Some(dash))
                    .collect();
                let idx = *items.get(n)?;
                found = Some(lines[idx].number);
                let stop = items.get(n + 1).copied().unwrap_or(end);
                // The item's own first key lives on the dash line.
                start = idx;
                end = stop;
                min_col = dash + 1;
            }
        }
    }
    found
}

pub use crate::telemetry::settings::TelemetryConfig;

#[cfg(test)]
mod tests;
