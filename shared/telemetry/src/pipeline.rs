//! The span pipeline's own health: how many finished spans each export
//! pipeline (the span feed, OTLP) took, dropped, exported and holds, so that
//! a dropped span is never silent.
//!
//! The SDK's batch processor drops a span when its queue is full and says
//! so once, with no count anyone can read. [`CountingProcessor`] sits in
//! front of it and keeps its own count of what is queued (spans handed on,
//! less those the exporter has settled); it drops, and counts, a span
//! before the SDK's queue could be full, so the SDK never drops one
//! unseen. [`CountingExporter`] counts what an exporter settled.
//!
//! The counts are read by [`SpanPipeline::snapshot`]: as the SDK
//! self-observability metrics of the conventions
//! (`otel.sdk.processor.span.processed` with `error.type=queue_full`,
//! `otel.sdk.processor.span.queue.size`, `.queue.capacity`,
//! `otel.sdk.exporter.span.exported`), in the key-value bucket that
//! `tracehop status` reads ([`crate::health`]), and as a warning in the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};
use serde::{Deserialize, Serialize};
use tracehop_spanfeed::FeedStats;

/// The counts of one export pipeline.
#[derive(Debug)]
pub struct SpanPipeline {
    /// `span_feed` or `otlp`.
    pub name: &'static str,
    /// Most spans that may wait for export.
    pub capacity: u64,
    /// Spans handed on to the batch processor.
    enqueued: AtomicU64,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
    /// What the exporter settled (exported, failed).
    exports: Arc<FeedStats>,
}

/// The counts of one pipeline at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSnapshot {
    pub pipeline: String,
    /// Spans the exporter delivered.
    pub exported: u64,
    /// Spans lost: dropped at a full queue, or refused by the exporter's
    /// destination. Each one is a hole in a trace.
    pub dropped_queue_full: u64,
    pub failed_export: u64,
    /// Spans waiting for export now.
    pub queued: u64,
    pub capacity: u64,
}

impl PipelineSnapshot {
    /// Every span lost, for whatever reason.
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full + self.failed_export
    }
}

impl SpanPipeline {
    /// A pipeline of `capacity` whose exporter counts into `exports`.
    pub fn new(name: &'static str, capacity: usize, exports: Arc<FeedStats>) -> Arc<Self> {
        Arc::new(Self {
            name,
            capacity: capacity as u64,
            enqueued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            exports,
        })
    }

    fn settled(&self) -> u64 {
        self.exports.exported_spans.load(Ordering::Relaxed) + self.exports.failed_spans.load(Ordering::Relaxed)
    }

    /// The counts now.
    pub fn snapshot(&self) -> PipelineSnapshot {
        let settled = self.settled();
        PipelineSnapshot {
            pipeline: self.name.to_string(),
            exported: self.exports.exported_spans.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped.load(Ordering::Relaxed),
            failed_export: self.exports.failed_spans.load(Ordering::Relaxed),
            queued: self.enqueued.load(Ordering::Relaxed).saturating_sub(settled),
            capacity: self.capacity,
        }
    }
}

/// A batch span processor that counts what it queues and drops.
#[derive(Debug)]
pub struct CountingProcessor {
    inner: BatchSpanProcessor,
    pipeline: Arc<SpanPipeline>,
}

impl CountingProcessor {
    pub fn new(inner: BatchSpanProcessor, pipeline: Arc<SpanPipeline>) -> Self {
        Self { inner, pipeline }
    }
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let pipeline = &self.pipeline;
        // What is queued here is at least what the SDK's queue holds (a
        // batch being exported counts until it is settled), so this drops
        // first, and counts it.
        let queued = pipeline.enqueued.load(Ordering::Relaxed).saturating_sub(pipeline.settled());
        if queued >= pipeline.capacity {
            pipeline.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pipeline.enqueued.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span exporter that counts what it delivered and what it could not.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    exports: Arc<FeedStats>,
}

impl<E> CountingExporter<E> {
    pub fn new(inner: E, exports: Arc<FeedStats>) -> Self {
        Self { inner, exports }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let count = batch.len() as u64;
        let exports = self.exports.clone();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            let counter = if result.is_ok() { &exports.exported_spans } else { &exports.failed_spans };
            counter.fetch_add(count, Ordering::Relaxed);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};

    use super::*;

    /// A real OTLP exporter aimed at a port where nothing listens: every
    /// export it attempts fails.
    fn unreachable_otlp() -> opentelemetry_otlp::SpanExporter {
        use opentelemetry_otlp::WithExportConfig as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://127.0.0.1:{port}/v1/traces"))
            .build()
            .unwrap()
    }

    #[test]
    fn every_span_is_exported_queued_or_counted_lost() {
        let exports = Arc::new(FeedStats::default());
        let pipeline = SpanPipeline::new("otlp", 3, exports.clone());
        // Nothing is exported before shutdown: the SDK's batch is bigger
        // than what is sent, and its delay longer than the test.
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(10)
            .with_max_export_batch_size(10)
            .with_scheduled_delay(Duration::from_secs(3600))
            .build();
        let batch = BatchSpanProcessor::builder(CountingExporter::new(unreachable_otlp(), exports))
            .with_batch_config(config)
            .build();
        let provider =
            SdkTracerProvider::builder().with_span_processor(CountingProcessor::new(batch, pipeline.clone())).build();
        let tracer = provider.tracer("test");
        for _ in 0..2 {
            tracer.start("kept").end();
        }
        let counts = pipeline.snapshot();
        assert_eq!((counts.queued, counts.dropped_queue_full), (2, 0), "{counts:?}");
        for _ in 0..3 {
            tracer.start("one too many").end();
        }
        let counts = pipeline.snapshot();
        assert_eq!((counts.queued, counts.dropped_queue_full), (3, 2), "{counts:?}");
        let _ = provider.shutdown();
        let counts = pipeline.snapshot();
        assert_eq!((counts.exported, counts.failed_export, counts.queued), (0, 3, 0), "{counts:?}");
        assert_eq!(counts.lost(), 5, "all five are accounted for as lost: {counts:?}");
    }
}
