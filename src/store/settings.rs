//! The `store:` section: its YAML form and its compiled settings (config only assembles them).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::ConfigDuration;

/// Which store, and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// In this process: records are lost on restart.
    Memory,
    /// One SQLite file (one replica).
    Sqlite {
        /// The database file (created if missing).
        path: PathBuf,
    },
    /// A PostgreSQL database every replica shares.
    Postgres {
        /// `postgres://user:password@host:port/db`: holds a password, never shown.
        url: String,
        /// Connections in the pool at most.
        max_connections: u32,
    },
}

impl StoreBackend {
    /// `memory`, `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            StoreBackend::Memory => "memory",
            StoreBackend::Sqlite { .. } => "sqlite",
            StoreBackend::Postgres { .. } => "postgres",
        }
    }
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreBackend::Memory => f.write_str("Memory"),
            StoreBackend::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            StoreBackend::Postgres {
                url,
                max_connections,
            } => f
                .debug_struct("Postgres")
                .field("url", &redacted(url))
                .field("max_connections", max_connections)
                .finish(),
        }
    }
}

/// A database URL without its credentials, for logs and messages.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The compiled `store:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Which store.
    pub backend: StoreBackend,
    /// One store operation waits at most this long.
    pub timeout: Duration,
    /// Every replica resynchronises what it holds from the store at least this often.
    pub refresh_interval: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: StoreBackend::Memory,
            timeout: DEFAULT_TIMEOUT,
            refresh_interval: DEFAULT_REFRESH,
        }
    }
}

/// Default `store.*.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `store.refresh_interval`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// Default `store.postgres.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// The `store:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    backend: RawBackend,
    sqlite: Option<RawSqlite>,
    postgres: Option<RawPostgres>,
    refresh_interval: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawBackend {
    Memory,
    Sqlite,
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqlite {
    path: PathBuf,
    timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    url_file: Option<PathBuf>,
    max_connections: Option<u32>,
    timeout: Option<ConfigDuration>,
}

/// A problem in the section: the key path below `store` and what is wrong.
pub type Problem = (&'static [&'static str], String);

impl RawStore {
    /// Validate the section (reads `postgres.url_file`).
    pub fn compile(self) -> Result<StoreSettings, Problem> {
        let refresh_interval = self.refresh_interval.map_or(DEFAULT_REFRESH, |d| d.0);
        if refresh_interval.is_zero() {
            return Err((&["refresh_interval"], "must be greater than zero".into()));
        }
        let positive = |timeout: Option<ConfigDuration>,
                        at: &'static [&'static str]|
         -> Result<Duration, Problem> {
            let timeout = timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
            if timeout.is_zero() {
                return Err((at, "must be greater than zero".into()));
            }
            Ok(timeout)
        };
        let (backend, timeout) = match self.backend {
            RawBackend::Memory => (StoreBackend::Memory, DEFAULT_TIMEOUT),
            RawBackend::Sqlite => {
                let Some(sqlite) = self.sqlite else {
                    return Err((
                        &["sqlite"],
                        "store.backend is sqlite: give store.sqlite.path".into(),
                    ));
                };
                if sqlite.path.as_os_str().is_empty() {
                    return Err((&["sqlite", "path"], "must name a file".into()));
                }
                (
                    StoreBackend::Sqlite { path: sqlite.path },
                    positive(sqlite.timeout, &["sqlite", "timeout"])?,
                )
            }
            RawBackend::Postgres => {
                let Some(postgres) = self.postgres else {
                    return Err((
                        &["postgres"],
                        "store.backend is postgres: give store.postgres.url_file (or url)".into(),
                    ));
                };
                let url = match (postgres.url, postgres.url_file) {
                    (Some(url), None) => url,
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .map(|text| text.trim().to_owned())
                        .map_err(|e| {
                            (
                                &["postgres", "url_file"] as &'static [&'static str],
                                format!("cannot read {}: {e}", file.display()),
                            )
                        })?,
                    _ => return Err((&["postgres"], "set exactly one of url and url_file".into())),
                };
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err((
                        &["postgres", "url"],
                        format!(
                            "{:?} is not a PostgreSQL URL (postgres://user:password@host:5432/db)",
                            redacted(&url)
                        ),
                    ));
                }
                let max_connections = postgres.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
                if max_connections == 0 {
                    return Err((
                        &["postgres", "max_connections"],
                        "must be at least 1".into(),
                    ));
                }
                (
                    StoreBackend::Postgres {
                        url,
                        max_connections,
                    },
                    positive(postgres.timeout, &["postgres", "timeout"])?,
                )
            }
        };
        Ok(StoreSettings {
            backend,
            timeout,
            refresh_interval,
        })
    }
}
