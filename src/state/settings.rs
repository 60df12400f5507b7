//! The `state:` section, read and compiled (`config` assembles it).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{OnUnavailable, RedisSettings, StateSettings};
use crate::settings::{Invalid, Seg};
use crate::units::ConfigDuration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
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

/// Compile `state:` (absent: the in-process store).
pub fn compile(raw: Option<RawState>) -> Result<StateSettings, Invalid> {
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
        (RawBackend::Redis, None) => Err(Invalid::new(
            &at(&["redis"]),
            "state.backend is redis: give state.redis.url or state.redis.url_file".into(),
        )),
        (RawBackend::Redis, Some(redis)) => {
            let url = crate::settings::inline_or_file(
                redis.url,
                redis.url_file,
                &at(&["redis"]),
                ("url", "url_file"),
            )?;
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(Invalid::new(
                    &at(&["redis", "url"]),
                    format!(
                        "{:?} is not a Redis URL (redis://host:port/db, or rediss:// for TLS)",
                        crate::state::redacted(&url)
                    ),
                ));
            }
            let timeout = redis.timeout.map_or(Duration::from_millis(50), |d| d.0);
            if timeout.is_zero() {
                return Err(Invalid::new(
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
