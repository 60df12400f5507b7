//! The `telemetry:` section, read and compiled (`config` assembles it): `otlp` (trace export) and
//! `trust_traceparent_from`.

use std::path::PathBuf;

use serde::Deserialize;

use super::otlp::{read_headers, DEFAULT_BATCH_DELAY, DEFAULT_QUEUE_SIZE, DEFAULT_TIMEOUT};
use super::{OtlpProtocol, OtlpSettings};
use crate::ids::ClientId;
use crate::settings::{Invalid, Seg};
use crate::units::ConfigDuration;

/// The `telemetry:` section, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryConfig {
    /// Where traces are exported; `None`: no traces (nothing new on the request path).
    pub otlp: Option<OtlpSettings>,
    /// Clients whose `traceparent`/`tracestate` is continued (default none: ignored, stripped).
    pub trust_traceparent_from: Vec<ClientId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    otlp: Option<RawOtlp>,
    #[serde(default)]
    trust_traceparent_from: Vec<ClientId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: String,
    #[serde(default)]
    protocol: OtlpProtocol,
    sample_ratio: Option<f64>,
    headers_file: Option<PathBuf>,
    batch_delay: Option<ConfigDuration>,
    queue_size: Option<usize>,
    timeout: Option<ConfigDuration>,
}

/// Compile `telemetry:` (absent: no traces, no trusted trace context).
pub fn compile(raw: Option<RawTelemetry>) -> Result<TelemetryConfig, Invalid> {
    let Some(raw) = raw else {
        return Ok(TelemetryConfig::default());
    };
    let at = |key: &'static str| [Seg::Key("telemetry"), Seg::Key("otlp"), Seg::Key(key)];
    let otlp = match raw.otlp {
        None => None,
        Some(otlp) => {
            let endpoint = otlp.endpoint.trim().to_owned();
            let valid = endpoint.parse::<http::Uri>().ok().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none()
            });
            if !valid {
                return Err(Invalid::new(
                    &at("endpoint"),
                    format!(
                        "{endpoint:?} is not a base URL (http://host:port or https://…; over \
                         http spans go to <endpoint>/v1/traces)"
                    ),
                ));
            }
            let sample_ratio = otlp.sample_ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&sample_ratio) {
                return Err(Invalid::new(
                    &at("sample_ratio"),
                    format!("{sample_ratio} is not between 0 and 1"),
                ));
            }
            let headers = match &otlp.headers_file {
                None => Vec::new(),
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))
                    .and_then(|text| {
                        read_headers(&text).map_err(|e| format!("{}: {e}", file.display()))
                    })
                    .map_err(|message| Invalid::new(&at("headers_file"), message))?,
            };
            let queue_size = otlp.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
            if queue_size == 0 {
                return Err(Invalid::new(&at("queue_size"), "must be at least 1".into()));
            }
            let batch_delay = otlp.batch_delay.map_or(DEFAULT_BATCH_DELAY, |d| d.0);
            let timeout = otlp.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
            if timeout.is_zero() {
                return Err(Invalid::new(
                    &at("timeout"),
                    "must be longer than zero".into(),
                ));
            }
            Some(OtlpSettings {
                endpoint,
                protocol: otlp.protocol,
                sample_ratio,
                headers,
                headers_file: otlp.headers_file,
                batch_delay,
                queue_size,
                timeout,
            })
        }
    };
    Ok(TelemetryConfig {
        otlp,
        trust_traceparent_from: raw.trust_traceparent_from,
    })
}
