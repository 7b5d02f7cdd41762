//! Telemetry for every tracehop process: a `tracing` subscriber whose spans
//! become OpenTelemetry spans, exported to the span feed on NATS and, when
//! asked, over OTLP; the conventions' metrics and the log lines over OTLP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; log lines that carry the trace
//! and span ids; and the helpers that mark a span as failed the way the
//! OpenTelemetry conventions say.
//!
//! - [`init`] / [`Telemetry`]: set it all up once per process, flush it last.
//! - [`failure`]: [`record_failure`] (a failure, where it happened),
//!   [`mark_failed`] (an operation failed by a failure recorded elsewhere),
//!   [`record_outcome`] (`tracehop.outcome`); [`error_chain`], an error and
//!   its sources as one line; [`now_unix_ms`].
//! - [`metrics`]: the conventions' duration histograms (HTTP server,
//!   messaging client and process, database client).
//! - [`pipeline`]: the span pipelines' own counts (exported, dropped,
//!   queued), as SDK self-observability metrics; [`health`]: the same
//!   counts in a key-value bucket for `tracehop status`.
//! - [`logs`]: log records over OTLP, each with the ids of the span it
//!   belongs to (an explicit `parent:` included); [`logfmt`]: the log file's
//!   line format, by the same rule.
//! - [`redact`]: the one scrubber of card numbers, CVVs and e-mail
//!   addresses; every exported span and every log line passes through it.
//!
//! The sampler comes from the standard `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (read by the SDK); the default is parent-based
//! always-on. The OTLP exporters read the standard `OTEL_EXPORTER_OTLP_*`
//! settings (headers, timeout), and the metric reader
//! `OTEL_METRIC_EXPORT_INTERVAL`.

pub mod failure;
pub mod health;
pub mod logfmt;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod redact;

pub use failure::{
    ERROR_CODE, OUTCOME, Outcome, current_trace_id, error_chain, mark_failed, now_unix_ms, record_failure,
    record_outcome, trace_id_of,
};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_semantic_conventions::attribute as attr;
use pipeline::{CountingExporter, CountingProcessor, SpanPipeline};
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
    /// `deployment.environment.name` (`TRACEHOP_ENVIRONMENT`).
    pub environment: String,
    /// Where OTLP/HTTP metrics and logs go (`OTEL_EXPORTER_OTLP_ENDPOINT`);
    /// none when unset.
    pub otlp_endpoint: Option<String>,
    /// Whether spans also go to `otlp_endpoint` from this process. Off
    /// under tail sampling, where the keeper exports the traces it keeps.
    pub otlp_traces: bool,
    /// The log filter (`RUST_LOG` syntax).
    pub log_filter: String,
    /// How many finished spans may wait for export before new ones are
    /// dropped. A dropped span is a hole in a trace, so this is sized for
    /// bursts, not for the SDK's default of 2,048.
    pub span_queue_size: usize,
}

impl TelemetryConfig {
    /// Defaults for a service: no OTLP, `info` logs, a 65,536-span queue,
    /// the `development` environment.
    pub fn new(service_name: &'static str, service_version: &'static str) -> Self {
        Self {
            service_name,
            service_version,
            environment: "development".to_string(),
            otlp_endpoint: None,
            otlp_traces: false,
            log_filter: "info".to_string(),
            span_queue_size: 65_536,
        }
    }
}

/// The process's telemetry; [`Telemetry::shutdown`] flushes what is queued.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    pipelines: Vec<Arc<SpanPipeline>>,
    /// Stops the pipeline reports (see [`health`]) after a last one.
    stop_reports: tokio::sync::watch::Sender<bool>,
    reports: Option<tokio::task::JoinHandle<()>>,
}

/// Installs the W3C propagators (trace context, then baggage) as the global
/// one, which the NATS header carriers use.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

/// `<endpoint>/v1/<signal>`, as OTLP/HTTP names its paths.
fn signal_url(endpoint: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", endpoint.trim_end_matches('/'))
}

/// Installs the global tracing subscriber, tracer provider, meter provider
/// and W3C propagators (trace context and baggage). Call once, from within
/// the tokio runtime, before any span is made. `span_feed` is the JetStream
/// context the feed is published through (and the pipeline reports are put
/// in); `None` exports spans to OTLP only.
pub fn init(config: &TelemetryConfig, span_feed: Option<async_nats::jetstream::Context>) -> anyhow::Result<Telemetry> {
    install_propagator();

    let instance = uuid::Uuid::new_v4().to_string();
    let resource = Resource::builder()
        .with_service_name(config.service_name)
        .with_schema_url(
            [
                KeyValue::new(attr::SERVICE_VERSION, config.service_version),
                KeyValue::new(attr::SERVICE_INSTANCE_ID, instance.clone()),
                KeyValue::new(attr::SERVICE_NAMESPACE, "tracehop"),
                KeyValue::new(attr::DEPLOYMENT_ENVIRONMENT_NAME, config.environment.clone()),
            ],
            opentelemetry_semantic_conventions::SCHEMA_URL,
        )
        .build();
    let batch_config = || {
        BatchConfigBuilder::default()
            .with_max_queue_size(config.span_queue_size)
            .with_max_export_batch_size(512)
            .with_scheduled_delay(Duration::from_millis(200))
            .build()
    };

    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut pipelines = Vec::new();
    if let Some(js) = span_feed.clone() {
        let exporter = SpanFeedExporter::new(js, config.service_name);
        let pipeline = SpanPipeline::new("span_feed", config.span_queue_size, exporter.stats());
        let exporter = redact::RedactingExporter::new(exporter);
        let batch = BatchSpanProcessor::builder(exporter).with_batch_config(batch_config()).build();
        builder = builder.with_span_processor(CountingProcessor::new(batch, pipeline.clone()));
        pipelines.push(pipeline);
    }
    if let (Some(endpoint), true) = (&config.otlp_endpoint, config.otlp_traces) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(signal_url(endpoint, "traces"))
            .build()
            .context("failed to build the OTLP span exporter")?;
        let exports = Arc::new(FeedStats::default());
        let pipeline = SpanPipeline::new("otlp", config.span_queue_size, exports.clone());
        let batch =
            BatchSpanProcessor::builder(redact::RedactingExporter::new(CountingExporter::new(exporter, exports)))
                .with_batch_config(batch_config())
                .build();
        builder = builder.with_span_processor(CountingProcessor::new(batch, pipeline.clone()));
        pipelines.push(pipeline);
    }
    let tracer_provider = builder.build();
    let tracer = tracer_provider.tracer_with_scope(scope());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());

    // Metrics and logs are not sampled: they go straight to the OTLP
    // endpoint, whatever the keeper keeps of the traces.
    let mut meter_provider = None;
    let mut logger_provider = None;
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(signal_url(endpoint, "metrics"))
            .build()
            .context("failed to build the OTLP metric exporter")?;
        let provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(PeriodicReader::builder(exporter).build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        register_pipeline_metrics(&provider, &pipelines);
        meter_provider = Some(provider);

        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_endpoint(signal_url(endpoint, "logs"))
            .build()
            .context("failed to build the OTLP log exporter")?;
        logger_provider =
            Some(SdkLoggerProvider::builder().with_resource(resource.clone()).with_batch_exporter(exporter).build());
    }

    // Library internals (the NATS client, the exporters' HTTP stack) must never
    // attach events or spans to application spans, nor feed the log exporter
    // its own lines.
    let internals = || {
        Targets::new()
            .with_default(tracing::Level::TRACE)
            .with_target("async_nats", tracing::level_filters::LevelFilter::OFF)
            .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
            .with_target("opentelemetry_sdk", tracing::level_filters::LevelFilter::OFF)
            .with_target("opentelemetry_otlp", tracing::level_filters::LevelFilter::OFF)
            .with_target("opentelemetry_appender_tracing", tracing::level_filters::LevelFilter::OFF)
            .with_target("h2", tracing::level_filters::LevelFilter::OFF)
            .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
            .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
            .with_target("reqwest", tracing::level_filters::LevelFilter::OFF)
            .with_target("sqlx", tracing::level_filters::LevelFilter::OFF)
    };
    let log_filter = || EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_error_records_to_exceptions(true)
        .with_filter(internals());
    // Colors only for a person at a terminal, not in log files.
    let log_layer = fmt::layer()
        .with_writer(redact::RedactingStdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .event_format(logfmt::TraceIdsFormat::new(config.service_name))
        .with_filter(log_filter());
    let otlp_log_layer = logger_provider.as_ref().map(|provider| {
        logs::ExplicitParent::new(logs::Scrubbed::new(OpenTelemetryTracingBridge::new(provider), provider))
            .with_filter(internals())
            .with_filter(log_filter())
    });
    // Installed with `set_global_default`, not `try_init`: `try_init` also
    // installs the `log` bridge, and a `log::log_enabled!` check (sqlx makes
    // one after every statement) then leaves stale per-layer filter state on
    // the thread, which silently drops the next span there.
    let subscriber = tracing_subscriber::registry().with(otel_layer).with(log_layer).with(otlp_log_layer);
    let dispatch = tracing::Dispatch::new(subscriber);
    logs::remember(&dispatch);
    tracing::dispatcher::set_global_default(dispatch).context("failed to install the tracing subscriber")?;

    let (stop_reports, stopped) = tokio::sync::watch::channel(false);
    let reports = span_feed.map(|js| {
        let snapshots = pipelines.clone();
        tokio::spawn(health::report(
            js,
            config.service_name,
            instance,
            move || snapshots.iter().map(|pipeline| pipeline.snapshot()).collect(),
            stopped,
        ))
    });

    Ok(Telemetry { tracer_provider, meter_provider, logger_provider, pipelines, stop_reports, reports })
}

/// The span pipelines' counts as the SDK self-observability metrics of the
/// conventions, read when the meter provider collects.
fn register_pipeline_metrics(provider: &SdkMeterProvider, pipelines: &[Arc<SpanPipeline>]) {
    use opentelemetry_semantic_conventions::metric as names;
    let meter = provider.meter_with_scope(scope());
    let component = |pipeline: &SpanPipeline, kind: &'static str| {
        vec![
            KeyValue::new(attr::OTEL_COMPONENT_TYPE, kind),
            KeyValue::new(attr::OTEL_COMPONENT_NAME, format!("{kind}/{}", pipeline.name)),
        ]
    };
    let with = |mut attributes: Vec<KeyValue>, error_type: &'static str| {
        attributes.push(KeyValue::new(attr::ERROR_TYPE, error_type));
        attributes
    };
    let observed = pipelines.to_vec();
    let _processed = meter
        .u64_observable_counter(names::OTEL_SDK_PROCESSOR_SPAN_PROCESSED)
        .with_unit("{span}")
        .with_description("The number of spans for which the processing has finished, either successful or failed.")
        .with_callback(move |observer| {
            for pipeline in &observed {
                let counts = pipeline.snapshot();
                let attributes = component(pipeline, "batching_span_processor");
                observer.observe(counts.exported + counts.failed_export, &attributes);
                observer.observe(counts.dropped_queue_full, &with(attributes, "queue_full"));
            }
        })
        .build();
    let observed = pipelines.to_vec();
    let _queued = meter
        .i64_observable_up_down_counter(names::OTEL_SDK_PROCESSOR_SPAN_QUEUE_SIZE)
        .with_unit("{span}")
        .with_description("The number of spans in the queue of a given instance of an SDK span processor.")
        .with_callback(move |observer| {
            for pipeline in &observed {
                let attributes = component(pipeline, "batching_span_processor");
                observer.observe(pipeline.snapshot().queued as i64, &attributes);
            }
        })
        .build();
    let observed = pipelines.to_vec();
    let _capacity = meter
        .i64_observable_up_down_counter(names::OTEL_SDK_PROCESSOR_SPAN_QUEUE_CAPACITY)
        .with_unit("{span}")
        .with_description(
            "The maximum number of spans the queue of a given instance of an SDK span processor can hold.",
        )
        .with_callback(move |observer| {
            for pipeline in &observed {
                observer.observe(pipeline.capacity as i64, &component(pipeline, "batching_span_processor"));
            }
        })
        .build();
    let observed = pipelines.to_vec();
    let _exported = meter
        .u64_observable_counter(names::OTEL_SDK_EXPORTER_SPAN_EXPORTED)
        .with_unit("{span}")
        .with_description("The number of spans for which the export has finished, either successful or failed.")
        .with_callback(move |observer| {
            for pipeline in &observed {
                let counts = pipeline.snapshot();
                let kind =
                    if pipeline.name == "otlp" { "otlp_http_span_exporter" } else { "tracehop_span_feed_exporter" };
                let attributes = component(pipeline, kind);
                observer.observe(counts.exported, &attributes);
                observer.observe(counts.failed_export, &with(attributes, "export_failed"));
            }
        })
        .build();
}

impl Telemetry {
    /// The counts of each span pipeline now.
    pub fn pipelines(&self) -> Vec<pipeline::PipelineSnapshot> {
        self.pipelines.iter().map(|pipeline| pipeline.snapshot()).collect()
    }

    /// Exports every queued span, metric and log record, then shuts the
    /// exporters down. Call last, after the service has drained: the flush
    /// runs on a blocking thread, as the SDK's processors block while they
    /// wait.
    pub async fn shutdown(self) {
        let Telemetry { tracer_provider, meter_provider, logger_provider, pipelines, stop_reports, reports } = self;
        let result = tokio::task::spawn_blocking(move || {
            let flushed = tracer_provider.force_flush();
            let shut = tracer_provider.shutdown();
            flushed.and(shut)
        })
        .await;
        // One last report, with the final counts.
        let _ = stop_reports.send(true);
        if let Some(reports) = reports {
            let _ = reports.await;
        }
        let lost: u64 = pipelines.iter().map(|pipeline| pipeline.snapshot().lost()).sum();
        if lost > 0 {
            // Each one is a hole in some trace: say so once more, on the way out.
            eprintln!("telemetry: {lost} spans were lost on their way out");
        }
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("telemetry shutdown: {error}"),
            Err(error) => eprintln!("telemetry shutdown task failed: {error}"),
        }
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(provider) = meter_provider {
                let _ = provider.force_flush();
                let _ = provider.shutdown();
            }
            if let Some(provider) = logger_provider {
                let _ = provider.force_flush();
                let _ = provider.shutdown();
            }
        })
        .await;
    }
}

/// The instrumentation scope of every span and metric tracehop makes: its
/// name, the version of the code that made them, and the conventions'
/// schema they follow.
pub fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder("tracehop")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build()
}

/// Name of the span feed's stream.
pub const SPAN_FEED_STREAM: &str = tracehop_spanfeed::STREAM;

/// Creates the span feed's stream with its default bounds.
pub async fn ensure_span_feed(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    tracehop_spanfeed::ensure_stream(js).await.context("failed to create the span feed stream")
}
