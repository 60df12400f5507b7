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

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use crate::approvals::notify::NotifySettings;
use crate::audit::{AuditScope, AuditSettings, ScopeMatch};
use crate::auth::{CertSubject, ClientKey, ClientSettings};
use crate::classify::{ClassifySettings, UnknownRoutes};
use crate::credentials::KeySource;
use crate::forward::UpstreamOrigin;
use crate::guards::{ForceDeleteSettings, OnError, ProtectedSettings};
use crate::ids::{ClientId, Role, RuleId};
use crate::keys::{KeySettings, RawKeys};
use crate::matcher::{MatchSettings, QueryValue};
use crate::policy::{ApprovalSettings, Effect, Policy, PolicySettings, RuleMode, RuleSettings};
use crate::ratelimit::{LimitDefinition, LimitSettings, Per};
use crate::state::{OnUnavailable, RedisSettings, StateSettings};
use crate::store::{RawStore, StoreBackend, StoreSettings};
use crate::telemetry::LogFormat;
use crate::tls::{TlsSettings, TlsVersion};
use crate::units::{parse_hex, BodyRate, ByteSize, ConfigDuration, Rate};

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
    /// The `telemetry:` section: trace export and whose trace context is continued.
    pub telemetry: TelemetryConfig,
}

/// The `ui:` section: who may read the recent destructive calls on the approvals page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Roles that may read `GET /tl-gateway/v1/audit/recent` (default `[admin]`).
    pub audit_roles: Vec<Role>,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            audit_roles: vec!["admin".parse().expect("a valid role")],
        }
    }
}

/// The `approvals:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// The gateway's URL as clients reach it (`approval_required` messages, webhook links);
    /// default: taken from the request's `Host`.
    pub public_url: Option<String>,
    /// Where new requests and decisions are posted.
    pub notify: Option<NotifySettings>,
    /// Pending approvals one requester may have at once (more: 429).
    pub max_pending_per_client: usize,
    /// The largest request body an approval can cover (larger: 413).
    pub max_body_bytes: usize,
    /// New approvals one requester may ask for per minute (more: 429).
    pub max_asks_per_client: u32,
    /// How long finished approvals are kept.
    pub keep_decided: std::time::Duration,
    /// Finished approvals kept per requester (older ones forgotten).
    pub max_decided_per_client: usize,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            public_url: None,
            notify: None,
            max_pending_per_client: crate::approvals::DEFAULT_MAX_PENDING_PER_CLIENT,
            max_body_bytes: crate::approvals::body::DEFAULT_MAX_BODY_BYTES,
            max_asks_per_client: crate::approvals::DEFAULT_MAX_ASKS_PER_CLIENT,
            keep_decided: crate::approvals::DEFAULT_KEEP_DECIDED,
            max_decided_per_client: crate::approvals::DEFAULT_MAX_DECIDED_PER_CLIENT,
        }
    }
}

/// The fixed upstream origin and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Scheme, host and port: the only place a connection can go.
    pub origin: UpstreamOrigin,
    /// Where the real TwelveLabs key comes from.
    pub key_source: KeySource,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving response headers.
    pub request_timeout: Duration,
    /// API versions forwarded (first path segment), default `[v1.3]`.
    pub api_versions: Vec<String>,
    /// Requests to the upstream at once, at most (none: unlimited).
    pub max_concurrency: Option<usize>,
    /// How long a request waits for an upstream slot before 503 `overloaded`.
    pub queue_timeout: Duration,
    /// Idle upstream connections kept open per serving worker (nginx's `keepalive`).
    pub max_idle_connections: usize,
}

/// Default for `upstream.max_idle_connections` (per serving worker).
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 128;

/// Audit log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Writer settings.
    pub settings: AuditSettings,
    /// Routes audited in addition to the destructive ones.
    pub scope: AuditScope,
    /// At start-up, ask the upstream about asset deletes left without outcome.
    pub reconcile: bool,
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

/// A lowercase hex SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct KeyDigest(pub [u8; 32]);

impl TryFrom<String> for KeyDigest {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        parse_hex::<32>(&value).map(KeyDigest).ok_or_else(|| {
            format!("invalid key_sha256 {value:?}: expected 64 lowercase hex digits (tl-gateway keygen prints one)")
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    upstream: RawUpstream,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    logging: Option<RawLogging>,
    #[serde(default)]
    routes: Option<RawRoutes>,
    #[serde(default)]
    guards: Option<RawGuards>,
    #[serde(default)]
    rate_limits: Vec<RawLimit>,
    #[serde(default)]
    state: Option<RawState>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    keys: Option<RawKeys>,
    #[serde(default)]
    approvals: Option<RawApprovals>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    ui: Option<RawUi>,
    #[serde(default)]
    telemetry: Option<telemetry::RawTelemetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUi {
    audit_roles: Option<Vec<Role>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    public_url: Option<String>,
    notify: Option<RawNotify>,
    max_pending_per_client: Option<usize>,
    max_body_bytes: Option<ByteSize>,
    max_asks_per_client: Option<u32>,
    keep_decided: Option<ConfigDuration>,
    max_decided_per_client: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook_url: Option<String>,
    webhook_url_file: Option<PathBuf>,
    timeout: Option<ConfigDuration>,
    max_attempts: Option<u32>,
    secret_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    approver_roles: Vec<Role>,
    approvals: Option<u32>,
    ttl: Option<ConfigDuration>,
    use_within: Option<ConfigDuration>,
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
struct RawState {
    #[serde(default)]
    backend: RawBackend,
    redis: Option<RawRedis>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawBackend {
    #[default]
    Memory,
    Redis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    url_file: Option<PathBuf>,
    key_prefix: Option<String>,
    timeout: Option<ConfigDuration>,
    #[serde(default)]
    on_unavailable: OnUnavailable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    id: RuleId,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    clients: Vec<ClientId>,
    per: Per,
    rate: String,
    burst: Option<u32>,
    on_unavailable: Option<OnUnavailable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    unknown: UnknownRoutes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    api_key_file: Option<PathBuf>,
    api_key_env: Option<String>,
    connect_timeout: Option<ConfigDuration>,
    request_timeout: Option<ConfigDuration>,
    api_versions: Option<Vec<String>>,
    max_concurrency: Option<usize>,
    queue_timeout: Option<ConfigDuration>,
    max_idle_connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: ClientId,
    #[serde(default)]
    roles: Vec<Role>,
    key_sha256: Option<KeyDigest>,
    keys: Option<Vec<RawKey>>,
    cert_sha256: Option<KeyDigest>,
    cert_subject: Option<String>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sha256: KeyDigest,
    label: Option<String>,
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_crl_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Effect>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: RuleId,
    #[serde(rename = "match")]
    matcher: RawMatch,
    allow_roles: Option<Vec<Role>>,
    allow_clients: Option<Vec<ClientId>>,
    message: Option<String>,
    #[serde(default)]
    mode: RuleMode,
    approval: Option<RawApproval>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    method: Option<String>,
    path: Option<String>,
    operation: Option<String>,
    #[serde(default)]
    query: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    clients: Vec<ClientId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    fsync: Option<bool>,
    max_file_size: Option<ByteSize>,
    queue_capacity: Option<usize>,
    enqueue_timeout: Option<ConfigDuration>,
    #[serde(rename = "match", default)]
    matchers: Vec<RawAuditMatch>,
    reconcile: Option<bool>,
    max_denied_per_client: Option<u32>,
    reserve: Option<ByteSize>,
    file_mode: Option<String>,
    max_rotated_files: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditMatch {
    method: Option<String>,
    path: Option<String>,
    operation: Option<String>,
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
        let upstream = self.upstream(raw.upstream)?;
        let tls = raw.tls.map(|t| self.tls(t)).transpose()?;
        let clients = self.clients(raw.clients, tls.as_ref())?;
        let known_clients: HashSet<ClientId> = clients.iter().map(|c| c.id.clone()).collect();
        let policy = self.policy(raw.policy, &known_clients)?;
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
        let audit = raw.audit.map(|a| self.audit(a)).transpose()?;
        let rate_limits = self.rate_limits(raw.rate_limits, &known_clients, &mut warnings)?;
        let state = self.state(raw.state)?;
        let store = match raw.store {
            None => StoreSettings::default(),
            Some(raw) => raw.compile().map_err(|(at, message)| {
                let path: Vec<Seg> = std::iter::once(Seg::Key("store"))
                    .chain(at.iter().map(|k| Seg::Key(k)))
                    .collect();
                (self.fail)(&path, message)
            })?,
        };
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
        let approvals = self.approvals(raw.approvals)?;
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
            telemetry: self.telemetry(raw.telemetry)?,
            ui: raw.ui.map_or_else(UiConfig::default, |ui| UiConfig {
                audit_roles: ui
                    .audit_roles
                    .unwrap_or_else(|| UiConfig::default().audit_roles),
            }),
        })
    }

    fn tls(&self, raw: RawTls) -> Result<TlsSettings, ConfigError> {
        let min_version = match raw.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => {
                return Err((self.fail)(
                    &[Seg::Key("tls"), Seg::Key("min_version")],
                    format!(
                        "{other:?} is not a TLS version the gateway offers: \"1.2\" or \"1.3\""
                    ),
                ))
            }
        };
        if raw.client_crl_file.is_some() && raw.client_ca_file.is_none() {
            return Err((self.fail)(
                &[Seg::Key("tls"), Seg::Key("client_crl_file")],
                "revocation lists apply to client certificates: set tls.client_ca_file too".into(),
            ));
        }
        Ok(TlsSettings {
            cert_file: raw.cert_file,
            key_file: raw.key_file,
            client_ca_file: raw.client_ca_file,
            client_crl_file: raw.client_crl_file,
            min_version,
        })
    }

    fn approvals(&self, raw: Option<RawApprovals>) -> Result<ApprovalsConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(ApprovalsConfig::default());
        };
        let at = |keys: &[&'static str]| {
            std::iter::once(Seg::Key("approvals"))
                .chain(keys.iter().map(|k| Seg::Key(k)))
                .collect::<Vec<_>>()
        };
        let http_url = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if let Some(url) = &raw.public_url {
            if !http_url(url) {
                return Err((self.fail)(
                    &at(&["public_url"]),
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        let notify = match raw.notify {
            None => None,
            Some(n) => {
                let url = match (n.webhook_url, n.webhook_url_file) {
                    (Some(url), None) => url,
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .map(|t| t.trim().to_owned())
                        .map_err(|e| {
                            (self.fail)(
                                &at(&["notify", "webhook_url_file"]),
                                format!("cannot read {}: {e}", file.display()),
                            )
                        })?,
                    _ => {
                        return Err((self.fail)(
                            &at(&["notify"]),
                            "set exactly one of webhook_url and webhook_url_file".into(),
                        ))
                    }
                };
                if !http_url(&url) || url.parse::<http::Uri>().is_err() {
                    return Err((self.fail)(
                        &at(&["notify", "webhook_url"]),
                        "not an http:// or https:// URL".into(),
                    ));
                }
                let defaults = NotifySettings::default();
                let secret_at = [
                    Seg::Key("approvals"),
                    Seg::Key("notify"),
                    Seg::Key("secret_file"),
                ];
                let secret = match &n.secret_file {
                    None => None,
                    Some(file) => {
                        let text = std::fs::read_to_string(file).map_err(|e| {
                            (self.fail)(&secret_at, format!("cannot read {}: {e}", file.display()))
                        })?;
                        let secret = text.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
                        if secret.len() < 16 {
                            return Err((self.fail)(
                                &secret_at,
                                "the signing secret must be at least 16 bytes".into(),
                            ));
                        }
                        Some(secret)
                    }
                };
                Some(NotifySettings {
                    url,
                    timeout: n.timeout.map_or(defaults.timeout, |d| d.0),
                    max_attempts: n.max_attempts.unwrap_or(defaults.max_attempts).max(1),
                    secret,
                })
            }
        };
        Ok(ApprovalsConfig {
            public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            notify,
            max_pending_per_client: raw
                .max_pending_per_client
                .unwrap_or(crate::approvals::DEFAULT_MAX_PENDING_PER_CLIENT)
                .max(1),
            max_body_bytes: raw
                .max_body_bytes
                .map_or(crate::approvals::body::DEFAULT_MAX_BODY_BYTES, |b| {
                    b.0.min(16 * 1024 * 1024) as usize
                }),
            max_asks_per_client: raw
                .max_asks_per_client
                .unwrap_or(crate::approvals::DEFAULT_MAX_ASKS_PER_CLIENT)
                .max(1),
            keep_decided: raw
                .keep_decided
                .map_or(crate::approvals::DEFAULT_KEEP_DECIDED, |d| d.0),
            max_decided_per_client: raw
                .max_decided_per_client
                .unwrap_or(crate::approvals::DEFAULT_MAX_DECIDED_PER_CLIENT)
                .max(1),
        })
    }

    fn state(&self, raw: Option<RawState>) -> Result<StateSettings, ConfigError> {
        let at = |keys: &[&'static str]| {
            std::iter::once(Seg::Key("state"))
                .chain(keys.iter().map(|k| Seg::Key(k)))
                .collect::<Vec<_>>()
        };
        let Some(raw) = raw else {
            return Ok(StateSettings::Memory);
        };
        match (raw.backend, raw.redis) {
            (RawBackend::Memory, _) => Ok(StateSettings::Memory),
            (RawBackend::Redis, None) => Err((self.fail)(
                &at(&["redis"]),
                "state.backend is redis: give state.redis.url or state.redis.url_file".into(),
            )),
            (RawBackend::Redis, Some(redis)) => {
                let url = match (redis.url, redis.url_file) {
                    (Some(url), None) => url,
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .map(|text| text.trim().to_owned())
                        .map_err(|e| {
                            (self.fail)(
                                &at(&["redis", "url_file"]),
                                format!("cannot read {}: {e}", file.display()),
                            )
                        })?,
                    _ => {
                        return Err((self.fail)(
                            &at(&["redis"]),
                            "set exactly one of url and url_file".into(),
                        ))
                    }
                };
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err((self.fail)(
                        &at(&["redis", "url"]),
                        format!(
                            "{:?} is not a Redis URL (redis://host:port/db, or rediss:// for TLS)",
                            crate::state::redacted(&url)
                        ),
                    ));
                }
                let timeout = redis.timeout.map_or(Duration::from_millis(50), |d| d.0);
                if timeout.is_zero() {
                    return Err((self.fail)(
                        &at(&["redis", "timeout"]),
                        "must be greater than zero".into(),
                    ));
                }
                Ok(StateSettings::Redis(RedisSettings {
                    url,
                    key_prefix: redis.key_prefix.unwrap_or_else(|| "tlgw:".into()),
                    timeout,
                    on_unavailable: redis.on_unavailable,
                }))
            }
        }
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

    fn upstream(&self, raw: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let origin = raw
            .url
            .parse()
            .map_err(|e| (self.fail)(&[Seg::Key("upstream"), Seg::Key("url")], e))?;
        let key_source = match (raw.api_key_file, raw.api_key_env) {
            (Some(file), None) => KeySource::File(file),
            (None, Some(var)) if !var.is_empty() => KeySource::Env(var),
            (None, Some(_)) => {
                return Err((self.fail)(
                    &[Seg::Key("upstream"), Seg::Key("api_key_env")],
                    "must name an environment variable".into(),
                ))
            }
            _ => {
                return Err((self.fail)(
                    &[Seg::Key("upstream")],
                    "set exactly one of api_key_file and api_key_env".into(),
                ))
            }
        };
        let connect_timeout = raw.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
        let request_timeout = raw
            .request_timeout
            .map_or(Duration::from_secs(300), |d| d.0);
        for (key, value) in [
            ("connect_timeout", connect_timeout),
            ("request_timeout", request_timeout),
        ] {
            if value.is_zero() {
                return Err((self.fail)(
                    &[Seg::Key("upstream"), Seg::Key(key)],
                    "must be greater than zero".into(),
                ));
            }
        }
        let api_versions = raw.api_versions.unwrap_or_else(|| vec!["v1.3".to_owned()]);
        for (i, version) in api_versions.iter().enumerate() {
            let plain = version.strip_prefix('v').is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
            if !plain {
                return Err((self.fail)(
                    &[
                        Seg::Key("upstream"),
                        Seg::Key("api_versions"),
                        Seg::Index(i),
                    ],
                    format!("{version:?} is not an API version like v1.3"),
                ));
            }
        }
        if api_versions.is_empty() {
            return Err((self.fail)(
                &[Seg::Key("upstream"), Seg::Key("api_versions")],
                "list at least one API version (v1.3)".into(),
            ));
        }
        Ok(UpstreamConfig {
            origin,
            key_source,
            connect_timeout,
            request_timeout,
            api_versions,
            max_concurrency: raw.max_concurrency.map(|n| n.max(1)),
            queue_timeout: raw.queue_timeout.map_or(Duration::from_secs(5), |d| d.0),
            max_idle_connections: raw
                .max_idle_connections
                .unwrap_or(DEFAULT_MAX_IDLE_CONNECTIONS),
        })
    }

    fn audit(&self, raw: RawAudit) -> Result<AuditConfig, ConfigError> {
        let mut settings = AuditSettings::new(raw.path);
        settings.fsync = raw.fsync.unwrap_or(true);
        if let Some(size) = raw.max_file_size {
            if size.0 < 4096 {
                return Err((self.fail)(
                    &[Seg::Key("audit"), Seg::Key("max_file_size")],
                    "must be at least 4KiB".into(),
                ));
            }
            settings.max_file_size = size.0;
        }
        if let Some(capacity) = raw.queue_capacity {
            settings.queue_capacity = capacity.max(1);
        }
        if let Some(timeout) = raw.enqueue_timeout {
            settings.enqueue_timeout = timeout.0;
        }
        if let Some(max) = raw.max_denied_per_client {
            settings.max_denied_per_client = max;
        }
        if let Some(reserve) = raw.reserve {
            settings.reserve = reserve.0;
        }
        settings.max_rotated_files = raw.max_rotated_files;
        if let Some(mode) = raw.file_mode {
            settings.file_mode = match mode.as_str() {
                "0600" | "600" => 0o600,
                "0640" | "640" => 0o640,
                _ => {
                    return Err((self.fail)(
                        &[Seg::Key("audit"), Seg::Key("file_mode")],
                        format!("{mode:?}: use \"0600\" (owner only) or \"0640\" (and the file's group, for a log shipper)"),
                    ))
                }
            };
        }
        let mut matchers = Vec::with_capacity(raw.matchers.len());
        for (i, m) in raw.matchers.into_iter().enumerate() {
            let at = [Seg::Key("audit"), Seg::Key("match"), Seg::Index(i)];
            let method = match m.method.as_deref().map(|name| self.method(name, &at)) {
                Some(Err(error)) => return Err(error),
                Some(Ok(method)) => Some(method),
                None => None,
            };
            matchers.push((
                i,
                ScopeMatch {
                    method,
                    path: m.path,
                    operation: m.operation,
                },
            ));
        }
        let scope = AuditScope::compile(matchers.iter().map(|(_, m)| m)).map_err(|(i, e)| {
            (self.fail)(
                &[
                    Seg::Key("audit"),
                    Seg::Key("match"),
                    Seg::Index(matchers[i].0),
                ],
                e,
            )
        })?;
        Ok(AuditConfig {
            settings,
            scope,
            reconcile: raw.reconcile.unwrap_or(false),
        })
    }

    fn rate_limits(
        &self,
        raw: Vec<RawLimit>,
        known_clients: &HashSet<ClientId>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<LimitDefinition>, ConfigError> {
        let mut ids = HashSet::new();
        let mut limits = Vec::with_capacity(raw.len());
        for (i, limit) in raw.into_iter().enumerate() {
            let at = |key: &'static str| [Seg::Key("rate_limits"), Seg::Index(i), Seg::Key(key)];
            if !ids.insert(limit.id.clone()) {
                return Err((self.fail)(
                    &at("id"),
                    format!("duplicate limit id {:?}", limit.id.as_str()),
                ));
            }
            let rate: Rate = limit
                .rate
                .parse()
                .map_err(|e| (self.fail)(&at("rate"), e))?;
            for client in limit.clients.iter().chain(&limit.matcher.clients) {
                if !known_clients.contains(client) {
                    return Err((self.fail)(
                        &at("clients"),
                        format!("unknown client {:?}", client.as_str()),
                    ));
                }
            }
            let settings = LimitSettings {
                id: limit.id,
                matcher: self.matcher(limit.matcher, &at("match")[..2])?,
                roles: limit.roles,
                clients: limit.clients,
                per: limit.per,
                rate,
                burst: limit.burst.unwrap_or(1).max(1),
                on_unavailable: limit.on_unavailable,
            };
            let (definition, found) = LimitDefinition::compile(&settings).map_err(|e| {
                (self.fail)(
                    &at("match"),
                    format!("limit {:?}: {e}", settings.id.as_str()),
                )
            })?;
            warnings.extend(
                found
                    .into_iter()
                    .map(|w| format!("rate_limits[{i}] ({}): {w}", settings.id)),
            );
            limits.push(definition);
        }
        Ok(limits)
    }

    fn clients(
        &self,
        raw: Vec<RawClient>,
        tls: Option<&TlsSettings>,
    ) -> Result<Vec<ClientSettings>, ConfigError> {
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        let mut certificates = HashSet::new();
        let mut subjects = HashSet::new();
        let mut clients = Vec::with_capacity(raw.len());
        for (i, client) in raw.into_iter().enumerate() {
            let at = |key: &'static str| [Seg::Key("clients"), Seg::Index(i), Seg::Key(key)];
            if !ids.insert(client.id.clone()) {
                return Err((self.fail)(
                    &at("id"),
                    format!("duplicate client id {:?}", client.id.as_str()),
                ));
            }
            let short = client.key_sha256.is_some();
            let keys = match (client.key_sha256, client.keys) {
                (Some(_), Some(_)) => {
                    return Err((self.fail)(
                        &at("keys"),
                        "give key_sha256 (one key) or keys (several, with labels), not both".into(),
                    ))
                }
                (Some(digest), None) => vec![ClientKey::new(digest.0)],
                (None, Some(raw_keys)) => {
                    let mut labels = HashSet::new();
                    let mut keys = Vec::with_capacity(raw_keys.len());
                    for (k, key) in raw_keys.into_iter().enumerate() {
                        let key_at = [
                            Seg::Key("clients"),
                            Seg::Index(i),
                            Seg::Key("keys"),
                            Seg::Index(k),
                        ];
                        let label = key.label.unwrap_or_else(|| format!("key-{}", k + 1));
                        if label.is_empty()
                            || label.len() > 64
                            || !label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                        {
                            return Err((self.fail)(
                                &key_at,
                                format!("label {label:?}: 1-64 of A-Z a-z 0-9 . _ -"),
                            ));
                        }
                        if !labels.insert(label.clone()) {
                            return Err((self.fail)(
                                &key_at,
                                format!("label {label:?} is used twice for this client"),
                            ));
                        }
                        let expires = match key.expires {
                            None => None,
                            Some(text) => Some(humantime::parse_rfc3339_weak(&text).map_err(|e| {
                                (self.fail)(
                                    &key_at,
                                    format!("expires {text:?} is not an RFC 3339 time such as 2027-03-01T00:00:00Z: {e}"),
                                )
                            })?),
                        };
                        keys.push(ClientKey {
                            sha256: key.sha256.0,
                            label,
                            expires,
                            revoked: false,
                        });
                    }
                    keys
                }
                (None, None) => Vec::new(),
            };
            for key in &keys {
                if !digests.insert(key.sha256) {
                    return Err((self.fail)(
                        &at(if short { "key_sha256" } else { "keys" }),
                        "the same key digest is configured twice".into(),
                    ));
                }
            }
            let has_certificate = client.cert_sha256.is_some() || client.cert_subject.is_some();
            if has_certificate && tls.is_none_or(|t| t.client_ca_file.is_none()) {
                return Err((self.fail)(
                    &at(if client.cert_sha256.is_some() { "cert_sha256" } else { "cert_subject" }),
                    "a client certificate can identify a client only with tls.client_ca_file (the CA that verifies it)".into(),
                ));
            }
            if keys.is_empty() && !has_certificate {
                return Err((self.fail)(
                    &at("id"),
                    format!(
                        "client {:?} has no credential: give key_sha256, keys, cert_sha256 or cert_subject",
                        client.id.as_str()
                    ),
                ));
            }
            if let Some(digest) = client.cert_sha256 {
                if !certificates.insert(digest.0) {
                    return Err((self.fail)(
                        &at("cert_sha256"),
                        "the same certificate is configured for two clients".into(),
                    ));
                }
            }
            let cert_subject = match &client.cert_subject {
                None => None,
                Some(text) => {
                    let subject: CertSubject = text
                        .parse()
                        .map_err(|e| (self.fail)(&at("cert_subject"), e))?;
                    if !subjects.insert(subject.clone()) {
                        return Err((self.fail)(
                            &at("cert_subject"),
                            format!("cert_subject {text:?} names two clients"),
                        ));
                    }
                    Some(subject)
                }
            };
            clients.push(ClientSettings {
                id: client.id,
                roles: client.roles,
                keys,
                cert_sha256: client.cert_sha256.map(|d| d.0),
                cert_subject,
                max_in_flight: client.max_in_flight.map(|n| n.max(1)),
                disabled: false,
            });
        }
        Ok(clients)
    }

    fn policy(
        &self,
        raw: Option<RawPolicy>,
        known_clients: &HashSet<ClientId>,
    ) -> Result<PolicySettings, ConfigError> {
        let Some(raw) = raw else {
            return Ok(PolicySettings::default());
        };
        let mut ids = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, rule) in raw.rules.into_iter().enumerate() {
            let at = |key: &'static str| {
                [
                    Seg::Key("policy"),
                    Seg::Key("rules"),
                    Seg::Index(i),
                    Seg::Key(key),
                ]
            };
            if !ids.insert(rule.id.clone()) {
                return Err((self.fail)(
                    &at("id"),
                    format!("duplicate rule id {:?}", rule.id.as_str()),
                ));
            }
            if rule.allow_roles.is_none() && rule.allow_clients.is_none() {
                return Err((self.fail)(
                    &at("allow_roles"),
                    format!(
                        "rule {:?} admits nobody by omission: set allow_roles and/or allow_clients (allow_roles: [] denies everyone)",
                        rule.id.as_str()
                    ),
                ));
            }
            let allow_clients = rule.allow_clients.unwrap_or_default();
            for client in allow_clients.iter().chain(&rule.matcher.clients) {
                if !known_clients.contains(client) {
                    return Err((self.fail)(
                        &at("match"),
                        format!(
                            "rule {:?} names unknown client {:?}",
                            rule.id.as_str(),
                            client.as_str()
                        ),
                    ));
                }
            }
            let matcher = self.matcher(rule.matcher, &at("match"))?;
            let approval = rule.approval.map(|a| ApprovalSettings {
                approver_roles: a.approver_roles,
                approvals: a.approvals.unwrap_or(1),
                ttl: a.ttl.map_or(ApprovalSettings::DEFAULT_TTL, |d| d.0),
                use_within: a
                    .use_within
                    .map_or(ApprovalSettings::DEFAULT_USE_WITHIN, |d| d.0),
            });
            rules.push(RuleSettings {
                id: rule.id,
                matcher,
                allow_roles: rule.allow_roles.unwrap_or_default(),
                allow_clients,
                message: rule.message,
                mode: rule.mode,
                approval,
            });
        }
        Ok(PolicySettings {
            default: raw.default.unwrap_or(Effect::Allow),
            rules,
        })
    }

    /// A method name as configured (any case): one the gateway accepts.
    fn method(&self, name: &str, at: &[Seg]) -> Result<Method, ConfigError> {
        Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .ok()
            .filter(crate::routes::is_accepted)
            .ok_or_else(|| (self.fail)(at, format!("unknown method {name:?}")))
    }

    fn matcher(&self, raw: RawMatch, at: &[Seg]) -> Result<MatchSettings, ConfigError> {
        let key = |k: &'static str| {
            let mut path = at.to_vec();
            path.push(Seg::Key(k));
            path
        };
        let method = match raw.method {
            None => None,
            Some(m) => Some(self.method(&m, &key("method"))?),
        };
        if let Some(path) = &raw.path {
            if !path.starts_with('/') {
                return Err((self.fail)(
                    &key("path"),
                    format!("route template {path:?} must start with /"),
                ));
            }
        }
        let mut query = BTreeMap::new();
        for (name, value) in raw.query {
            let value = match value {
                serde_yaml::Value::Bool(b) => QueryValue::Bool(b),
                serde_yaml::Value::String(s) => QueryValue::Text(s),
                serde_yaml::Value::Number(n) => QueryValue::Text(n.to_string()),
                _ => {
                    return Err((self.fail)(
                        &key("query"),
                        format!("query predicate {name:?} must be a boolean, string or number"),
                    ))
                }
            };
            query.insert(name, value);
        }
        Ok(MatchSettings {
            method,
            path: raw.path,
            operation: raw.operation,
            query,
            clients: raw.clients,
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

/// One step of a key path.
#[derive(Debug, Clone, Copy)]
pub enum Seg {
    /// A mapping key.
    Key(&'static str),
    /// A sequence index.
    Index(usize),
}

fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
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

mod telemetry;
pub use self::telemetry::TelemetryConfig;

#[cfg(test)]
mod tests;
