//! Telemetry for every tracehop process: a `tracing` subscriber whose spans
//! become OpenTelemetry spans, exported to the span feed on NATS and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, over OTLP; log lines that carry the
//! trace and span ids; and the helpers that mark a span as failed the way the
//! OpenTelemetry conventions say.
//!
//! - [`init`] / [`Telemetry`]: set it all up once per process, flush it last.
//! - [`failure`]: [`record_failure`], the one way a span is marked failed;
//!   [`error_chain`], an error and its sources as one line; [`now_unix_ms`].
//! - [`logfmt`]: the log line format with `trace_id` and `span_id`.
//! - [`redact`]: the one scrubber of card numbers, CVVs and e-mail
//!   addresses; every exported span and every log line passes through it.
//!
//! The sampler comes from the standard `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (read by the SDK); the default is parent-based
//! always-on.

pub mod failure;
pub mod logfmt;
pub mod redact;

pub use failure::{current_trace_id, error_chain, now_unix_ms, record_failure, trace_id_of};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracehop_spanfeed::{FeedStats, SpanFeedExporter};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// What [`init`] needs to know; each service fills it in from its own config.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name` of every span this process makes.
    pub service_name: &'static str,
    /// `service.version`.
    pub service_version: &'static str,
    /// Where OTLP/HTTP spans go (`OTEL_EXPORTER_OTLP_ENDPOINT`); none when unset.
    pub otlp_endpoint: Option<String>,
    /// The log filter (`RUST_LOG` syntax).
    pub log_filter: String,
    /// How many finished spans may wait for export before new ones are
    /// dropped. A dropped span is a hole in a trace, so this is sized for
    /// bursts, not for the SDK's default of 2,048.
    pub span_queue_size: usize,
}

impl TelemetryConfig {
    /// Defaults for a service: no OTLP, `info` logs, a 65,536-span queue.
    pub fn new(service_name: &'static str, service_version: &'static str) -> Self {
        Self {
            service_name,
            service_version,
            otlp_endpoint: None,
            log_filter: "info".to_string(),
            span_queue_size: 65_536,
        }
    }
}

/// The process's telemetry; [`Telemetry::shutdown`] flushes what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
    feed_stats: Option<Arc<FeedStats>>,
}

/// Installs the global tracing subscriber, tracer provider and W3C
/// propagators (trace context and baggage). Call once, from within the tokio
/// runtime, before any span is made. `span_feed` is the JetStream context the
/// feed is published through; `None` exports to OTLP only.
pub fn init(config: &TelemetryConfig, span_feed: Option<async_nats::jetstream::Context>) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let resource = Resource::builder()
        .with_service_name(config.service_name)
        .with_attributes([
            KeyValue::new("service.version", config.service_version),
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
            KeyValue::new("service.namespace", "tracehop"),
        ])
        .build();
    let batch_config = || {
        BatchConfigBuilder::default()
            .with_max_queue_size(config.span_queue_size)
            .with_max_export_batch_size(512)
            .with_scheduled_delay(Duration::from_millis(200))
            .build()
    };

    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut feed_stats = None;
    if let Some(js) = span_feed {
        let exporter = SpanFeedExporter::new(js, config.service_name);
        feed_stats = Some(exporter.stats());
        let exporter = redact::RedactingExporter::new(exporter);
        builder = builder
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch_config()).build());
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .context("failed to build the OTLP span exporter")?;
        let exporter = redact::RedactingExporter::new(exporter);
        builder = builder
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch_config()).build());
    }
    let provider = builder.build();
    let tracer = provider.tracer(config.service_name);
    opentelemetry::global::set_tracer_provider(provider.clone());

    // Library internals (the NATS client, the exporters' HTTP stack) must never
    // attach events or spans to application spans.
    let otel_filter = Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_target("async_nats", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry_sdk", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry_otlp", tracing::level_filters::LevelFilter::OFF)
        .with_target("h2", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
        .with_target("reqwest", tracing::level_filters::LevelFilter::OFF)
        .with_target("sqlx", tracing::level_filters::LevelFilter::OFF);
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_error_records_to_exceptions(true)
        .with_filter(otel_filter);
    // Colors only for a person at a terminal, not in log files.
    let log_layer = fmt::layer()
        .with_writer(redact::RedactingStdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .event_format(logfmt::TraceIdsFormat::new(config.service_name))
        .with_filter(EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info")));
    // Installed with `set_global_default`, not `try_init`: `try_init` also
    // installs the `log` bridge, and a `log::log_enabled!` check (sqlx makes
    // one after every statement) then leaves stale per-layer filter state on
    // the thread, which silently drops the next span there.
    let subscriber = tracing_subscriber::registry().with(otel_layer).with(log_layer);
    tracing::subscriber::set_global_default(subscriber).context("failed to install the tracing subscriber")?;

    Ok(Telemetry { provider, feed_stats })
}

impl Telemetry {
    /// Exports every queued span, then shuts the exporters down. Call last,
    /// after the service has drained: the flush runs on a blocking thread, as
    /// the SDK's batch processor blocks while it waits.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let result = tokio::task::spawn_blocking(move || {
            let flushed = provider.force_flush();
            let shut = provider.shutdown();
            flushed.and(shut)
        })
        .await;
        let lost =
            self.feed_stats.as_ref().map_or(0, |stats| stats.failed_spans.load(std::sync::atomic::Ordering::Relaxed));
        if lost > 0 {
            // Each one is a hole in some trace: say so once, on the way out.
            eprintln!("telemetry: {lost} spans could not be published to the span feed");
        }
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("telemetry shutdown: {error}"),
            Err(error) => eprintln!("telemetry shutdown task failed: {error}"),
        }
    }
}

/// Name of the span feed's stream.
pub const SPAN_FEED_STREAM: &str = tracehop_spanfeed::STREAM;

/// Creates the span feed's stream with its default bounds.
pub async fn ensure_span_feed(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    tracehop_spanfeed::ensure_stream(js).await.context("failed to create the span feed stream")
}
