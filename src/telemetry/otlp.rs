//! The OpenTelemetry export pipeline (`telemetry.otlp`): a sampler, a bounded queue and one task
//! that batches spans to an OTLP receiver over HTTP (protobuf, `<endpoint>/v1/traces`) or gRPC.
//!
//! Exporting never blocks or slows a request: a finished span is offered to a bounded queue with
//! `try_send`, and when the queue is full the span is dropped and counted
//! (`tl_gateway_trace_spans_dropped_total{reason="queue_full"}`); a batch the receiver refused or
//! never answered is counted too (`reason="export_failed"`). The SDK's own batch processor drops
//! the same way but keeps its count private, so this small processor replaces it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::{mpsc, oneshot};

/// How spans reach the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), usually port 4317.
    Grpc,
    /// Protobuf over HTTP, `POST <endpoint>/v1/traces`, usually port 4318.
    #[default]
    Http,
}

/// `telemetry.otlp`: where and how spans are exported.
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    /// The receiver's base URL (as `OTEL_EXPORTER_OTLP_ENDPOINT`): over HTTP spans go to
    /// `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// HTTP (default) or gRPC.
    pub protocol: OtlpProtocol,
    /// The share of new traces kept (0–1; default 1). A trusted parent's decision is followed.
    pub sample_ratio: f64,
    /// Headers sent with every export (e.g. the receiver's credentials), from `headers_file`.
    pub headers: Vec<(String, String)>,
    /// Where `headers` came from (for messages).
    pub headers_file: Option<PathBuf>,
    /// The longest a finished span waits before its batch is sent (default 1 s).
    pub batch_delay: Duration,
    /// Finished spans waiting to be sent; beyond it they are dropped and counted (default 2048).
    pub queue_size: usize,
    /// Time allowed for one export (default 10 s).
    pub timeout: Duration,
}

impl std::fmt::Debug for OtlpSettings {
    // The header values are credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSettings")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("sample_ratio", &self.sample_ratio)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("batch_delay", &self.batch_delay)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// Default `telemetry.otlp.batch_delay`.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);
/// Default `telemetry.otlp.queue_size`.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// Default `telemetry.otlp.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpSettings {
    /// Where the HTTP exporter posts: `<endpoint>/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }
}

/// Read a headers file: one `Name: value` per line; blank lines and `#` comments ignored.
/// Errors name the line.
pub fn read_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(name, value)| {
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = value.trim();
            http::HeaderValue::from_str(value).ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        });
        match parsed {
            Some(header) => headers.push(header),
            // The line may hold a credential: its number only.
            None => {
                return Err(format!(
                    "line {}: expected `Name: value` (a header name and a visible-ASCII value)",
                    index + 1
                ))
            }
        }
    }
    Ok(headers)
}

/// Why the export pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp: {0}")]
pub struct TelemetryError(String);

/// The running export pipeline (or none): its drop counter and its flush.
#[derive(Debug, Clone)]
pub struct Telemetry {
    dropped: IntCounterVec,
    pipeline: Option<Pipeline>,
}

#[derive(Debug, Clone)]
struct Pipeline {
    provider: SdkTracerProvider,
    control: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

/// The drop counter's name.
pub const DROPPED_METRIC: &str = "tl_gateway_trace_spans_dropped_total";

fn dropped_counter() -> IntCounterVec {
    let counter = IntCounterVec::new(
        Opts::new(
            DROPPED_METRIC,
            "Finished spans not delivered to the OTLP receiver, by reason (queue_full: the \
             bounded export queue was full; export_failed: the receiver refused or did not answer).",
        ),
        &["reason"],
    )
    .expect("valid metric definition");
    for reason in ["queue_full", "export_failed"] {
        counter.with_label_values(&[reason]);
    }
    counter
}

impl Telemetry {
    /// No export: the counter exists (and stays 0).
    pub fn disabled() -> Self {
        Telemetry {
            dropped: dropped_counter(),
            pipeline: None,
        }
    }

    /// Start exporting as `settings` say; the tracer feeds the pipeline. Inside a Tokio runtime.
    pub fn start(settings: &OtlpSettings) -> Result<(Telemetry, SdkTracer), TelemetryError> {
        let dropped = dropped_counter();
        let resource = Resource::builder_empty()
            .with_service_name("tl-gateway")
            .build();
        let mut exporter = exporter(settings)?;
        exporter.set_resource(&resource);
        let (spans_tx, spans_rx) = mpsc::channel(settings.queue_size.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            exporter,
            spans_rx,
            control_rx,
            settings.batch_delay,
            settings.timeout,
            dropped.with_label_values(&["export_failed"]),
        ));
        let processor = QueueProcessor {
            queue: spans_tx,
            dropped: dropped.with_label_values(&["queue_full"]),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("tl-gateway");
        Ok((
            Telemetry {
                dropped,
                pipeline: Some(Pipeline {
                    provider,
                    control: control_tx,
                }),
            },
            tracer,
        ))
    }

    /// `tl_gateway_trace_spans_dropped_total`, for the metrics registry.
    pub fn dropped_counter(&self) -> IntCounterVec {
        self.dropped.clone()
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Send what is queued (waiting at most `timeout`), then stop accepting spans.
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(pipeline) = &self.pipeline else {
            return;
        };
        let (ack, done) = oneshot::channel();
        if pipeline.control.send(ack).is_ok() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
        let _ = pipeline.provider.shutdown();
    }
}

/// The HTTP or gRPC OTLP exporter.
fn exporter(settings: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let built = match settings.protocol {
        OtlpProtocol::Http => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| TelemetryError(format!("TLS set-up failed: {e}")))?
                .https_or_http()
                .enable_http1()
                .build();
            let client =
                opentelemetry_http::hyper::HyperClient::new(connector, settings.timeout, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.traces_url())
                .with_timeout(settings.timeout)
                .with_http_client(client)
                .with_headers(settings.headers.iter().cloned().collect::<HashMap<_, _>>())
                .build()
        }
        OtlpProtocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (name, value) in &settings.headers {
                // Checked when the configuration was read.
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    headers.append(name, value);
                }
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.timeout)
                .with_metadata(metadata);
            if settings.endpoint.starts_with("https://") {
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_webpki_roots(),
                );
            }
            builder.build()
        }
    };
    built.map_err(|e| TelemetryError(e.to_string()))
}

/// The span processor: offers each finished, sampled span to the bounded queue.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    dropped: IntCounter,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Never waits: a full (or closed) queue drops the span.
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The queue is drained by `Telemetry::shutdown`, which can await; this runs synchronously.
        Ok(())
    }
}

/// The export task: batches of up to [`MAX_BATCH`] spans, each sent once its first span has
/// waited `delay` (or when full), one export at a time.
async fn run<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    delay: Duration,
    timeout: Duration,
    failed: IntCounter,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let mut flush = None;
        tokio::select! {
            span = spans.recv() => match span {
                Some(span) => batch.push(span),
                None => return,
            },
            ack = control.recv() => match ack {
                Some(ack) => flush = Some(ack),
                None => return,
            },
        }
        if flush.is_none() {
            let deadline = tokio::time::sleep(delay);
            tokio::pin!(deadline);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    _ = &mut deadline => break,
                    span = spans.recv() => match span {
                        Some(span) => batch.push(span),
                        None => break,
                    },
                    ack = control.recv() => {
                        flush = ack;
                        break;
                    }
                }
            }
        }
        if flush.is_some() {
            // Everything queued now goes out.
            while let Ok(span) = spans.try_recv() {
                batch.push(span);
            }
        }
        while !batch.is_empty() {
            let take = batch.len().min(MAX_BATCH);
            let chunk: Vec<SpanData> = batch.drain(..take).collect();
            let count = chunk.len() as u64;
            match tokio::time::timeout(timeout, exporter.export(chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failed.inc_by(count);
                    tracing::warn!(%error, spans = count, "trace export failed");
                }
                Err(_) => {
                    failed.inc_by(count);
                    tracing::warn!(spans = count, "trace export timed out");
                }
            }
        }
        if let Some(ack) = flush {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_files_are_name_value_lines() {
        let headers = read_headers("# receiver\nAuthorization: Bearer abc\n\nx-tenant:  t1 \n")
            .expect("valid");
        assert_eq!(
            headers,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        let error = read_headers("ok: 1\nno colon here\n").unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        assert!(!error.contains("no colon"), "{error}");
    }

    fn span(sampled: bool) -> SpanData {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes([2; 8]),
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "request".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (queue, mut receiver) = mpsc::channel(2);
        let dropped = dropped_counter();
        let processor = QueueProcessor {
            queue,
            dropped: dropped.with_label_values(&["queue_full"]),
        };
        processor.on_end(span(false)); // not sampled: not queued, not a drop
        for _ in 0..5 {
            processor.on_end(span(true));
        }
        assert_eq!(dropped.with_label_values(&["queue_full"]).get(), 3);
        assert!(receiver.try_recv().is_ok() && receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn http_spans_go_to_v1_traces_under_the_endpoint() {
        let mut settings = OtlpSettings {
            endpoint: "http://collector:4318/".into(),
            protocol: OtlpProtocol::Http,
            sample_ratio: 1.0,
            headers: vec![("authorization".into(), "secret".into())],
            headers_file: None,
            batch_delay: DEFAULT_BATCH_DELAY,
            queue_size: DEFAULT_QUEUE_SIZE,
            timeout: DEFAULT_TIMEOUT,
        };
        assert_eq!(settings.traces_url(), "http://collector:4318/v1/traces");
        settings.endpoint = "https://otel.example/base".into();
        assert_eq!(settings.traces_url(), "https://otel.example/base/v1/traces");
        assert!(!format!("{settings:?}").contains("secret"));
    }
}
