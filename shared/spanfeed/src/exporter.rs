//! [`SpanFeedExporter`]: publishes finished spans to the span feed.
//!
//! The SDK's batch processor calls `export` on its own OS thread through a
//! plain `block_on`, with no tokio runtime there. So the NATS work is handed
//! to the tokio runtime captured when the exporter was built, with telemetry
//! suppressed (the exporter's own work must not produce spans that feed back
//! into it) and with a timeout of its own (that processor ignores the export
//! timeout setting).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceId;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prost::Message as _;

use crate::{MAX_MESSAGE_BYTES, subject};

/// Counters an operator can read to know whether traces are complete.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Spans acknowledged by the feed's stream.
    pub exported_spans: AtomicU64,
    /// Spans whose publish failed or timed out: each one is a hole in a trace.
    pub failed_spans: AtomicU64,
}

/// An OpenTelemetry span exporter that publishes to the span feed.
#[derive(Debug)]
pub struct SpanFeedExporter {
    js: jetstream::Context,
    runtime: tokio::runtime::Handle,
    service: String,
    resource: ResourceAttributesWithSchema,
    timeout: Duration,
    stats: Arc<FeedStats>,
}

impl SpanFeedExporter {
    /// An exporter for `service` that publishes through `js`. Must be called
    /// from within a tokio runtime, which then runs every publish.
    pub fn new(js: jetstream::Context, service: impl Into<String>) -> Self {
        Self {
            js,
            runtime: tokio::runtime::Handle::current(),
            service: service.into(),
            resource: ResourceAttributesWithSchema::from(&Resource::builder_empty().build()),
            timeout: Duration::from_secs(5),
            stats: Arc::default(),
        }
    }

    /// The counters of this exporter; they stay readable after it is handed
    /// to the SDK.
    pub fn stats(&self) -> Arc<FeedStats> {
        self.stats.clone()
    }

    /// Groups a batch by trace id and encodes each group as one or more OTLP
    /// messages no larger than [`MAX_MESSAGE_BYTES`].
    fn encode(&self, batch: Vec<SpanData>) -> Vec<(String, Bytes, u64)> {
        let mut by_trace: HashMap<TraceId, Vec<SpanData>> = HashMap::new();
        for span in batch {
            by_trace.entry(span.span_context.trace_id()).or_default().push(span);
        }
        let mut messages = Vec::with_capacity(by_trace.len());
        for (trace_id, spans) in by_trace {
            let subject = subject(&trace_id.to_string(), &self.service);
            self.encode_bounded(spans, &subject, &mut messages);
        }
        messages
    }

    fn encode_bounded(&self, mut spans: Vec<SpanData>, subject: &str, out: &mut Vec<(String, Bytes, u64)>) {
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans.clone(), &self.resource),
        };
        let encoded = request.encode_to_vec();
        if encoded.len() <= MAX_MESSAGE_BYTES || spans.len() == 1 {
            // A single span over the limit is still sent: the stream's own
            // limit is the last word, and a refusal is counted as a failure.
            out.push((subject.to_string(), Bytes::from(encoded), count));
            return;
        }
        let second = spans.split_off(spans.len() / 2);
        self.encode_bounded(spans, subject, out);
        self.encode_bounded(second, subject, out);
    }
}

impl SpanExporter for SpanFeedExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let messages = self.encode(batch);
        let js = self.js.clone();
        let stats = self.stats.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(
            publish_all(js, messages, stats, timeout).with_context(Context::current().with_telemetry_suppressed()),
        );
        async move {
            match task.await {
                Ok(result) => result,
                Err(join_error) => {
                    Err(OTelSdkError::InternalFailure(format!("span feed publish task failed: {join_error}")))
                }
            }
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = ResourceAttributesWithSchema::from(resource);
    }
}

/// Publishes every message and waits for the stream's acks, all within
/// `timeout`. Spans of messages that still fail after one more round are
/// counted, not retried further: that would only delay the next batch and
/// grow the queue behind it.
async fn publish_all(
    js: jetstream::Context,
    messages: Vec<(String, Bytes, u64)>,
    stats: Arc<FeedStats>,
    timeout: Duration,
) -> OTelSdkResult {
    let total: u64 = messages.iter().map(|(_, _, count)| count).sum();
    let work = async {
        let mut unsent = publish_round(&js, messages).await;
        if !unsent.is_empty() {
            // The feed's stream lives in memory: a restarted NATS server has
            // lost it. Create it again and give the batch a second chance.
            let _ = crate::ensure_stream(&js).await;
            unsent = publish_round(&js, unsent).await;
        }
        unsent.iter().map(|(_, _, count)| count).sum::<u64>()
    };
    let failed = tokio::time::timeout(timeout, work).await.unwrap_or(total);
    stats.exported_spans.fetch_add(total - failed, Ordering::Relaxed);
    if failed == 0 {
        Ok(())
    } else {
        stats.failed_spans.fetch_add(failed, Ordering::Relaxed);
        Err(OTelSdkError::InternalFailure(format!("{failed} of {total} spans were not accepted by the span feed")))
    }
}

/// Publishes the messages and returns those the stream did not acknowledge.
async fn publish_round(js: &jetstream::Context, messages: Vec<(String, Bytes, u64)>) -> Vec<(String, Bytes, u64)> {
    let mut pending = Vec::with_capacity(messages.len());
    let mut unsent = Vec::new();
    for (subject, payload, count) in messages {
        match js.publish(subject.clone(), payload.clone()).await {
            Ok(ack) => pending.push((ack, (subject, payload, count))),
            Err(_) => unsent.push((subject, payload, count)),
        }
    }
    for (ack, message) in pending {
        if ack.await.is_err() {
            unsent.push(message);
        }
    }
    unsent
}
