//! Telemetry: log set-up (tracing-subscriber with `RUST_LOG` honoured, default `info`, text or
//! JSON, to stderr), the layer that gives every request its span ([`TraceRequestsLayer`]), and
//! OpenTelemetry traces (`telemetry.otlp`): the exporter pipeline ([`otlp`]) and the W3C trace
//! context a request carries in and out ([`context`]).
//!
//! Without `telemetry.otlp` the subscriber is the plain log subscriber it always was: no
//! OpenTelemetry layer, and the child spans (`reference_lookup`, `audit_intent`, `state_store`,
//! `upstream`, at TRACE level) are disabled by the log filter, which costs one level comparison.

pub mod context;
pub mod otlp;
mod requests;
pub mod settings;

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use context::{TraceContextLayer, TraceContextSettings};
pub use otlp::{OtlpProtocol, OtlpSettings, Telemetry, TelemetryError};
pub use requests::{TraceRequests, TraceRequestsLayer, Traced, Truncated, MAX_LOGGED_PATH};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber once; later calls (tests, reload) are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Install the global subscriber with traces exported as `otlp` says (the log output as
/// [`init`]); must run inside the Tokio runtime, which runs the exporter. Without `otlp` this is
/// [`init`]. The returned handle holds the drop counter and flushes on [`Telemetry::shutdown`].
pub fn init_with_traces(
    format: LogFormat,
    otlp: Option<&OtlpSettings>,
) -> Result<Telemetry, TelemetryError> {
    let Some(settings) = otlp else {
        init(format);
        return Ok(Telemetry::disabled());
    };
    let (telemetry, tracer) = Telemetry::start(settings)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Only the gateway's own spans become OpenTelemetry spans; log events stay logs.
    let spans = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("tl_gateway")
    });
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // The request span is started when its first child is (or when it ends), not when it is
        // first entered: a trusted client's parent is known only after authentication.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(spans);
    let registry = tracing_subscriber::registry().with(traces);
    let _already_set = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    Ok(telemetry)
}
