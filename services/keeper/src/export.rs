//! [`Exporter`]: where kept traces go, from a task of its own so that a
//! slow backend never holds up the reading of the feed.
//!
//! - To the **kept-traces store** (the `KEPT` stream, see
//!   `tracehop_spanfeed::kept`), one message per trace, so `trace`,
//!   `slowest` and `explain` find them hours later with no backend.
//! - To an **OTLP/HTTP endpoint** (`/v1/traces`, protobuf), when one is set.
//!
//! Batches wait in a bounded queue; when it is full a batch is dropped and
//! counted, never silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::traces::{Kept, count_spans};

/// Batches waiting for the store and the backend.
const QUEUE: usize = 256;
/// Most spans in one OTLP request.
pub const MAX_BATCH_SPANS: usize = 2048;

/// What the export task has done.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub spans_exported: AtomicU64,
    /// OTLP batches that did not get through, and batches dropped because
    /// the queue was full.
    pub failures: AtomicU64,
    pub traces_stored: AtomicU64,
    pub store_failures: AtomicU64,
}

/// Hands kept traces to the export task.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Vec<Kept>>,
    pub counters: Arc<ExportCounters>,
}

impl Exporter {
    /// Stores kept traces through `js` and, when `endpoint` (the
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` base; `/v1/traces` is appended) is set,
    /// exports them there. Returns the task to await at shutdown.
    pub fn start(
        js: jetstream::Context,
        endpoint: Option<&str>,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let counters = Arc::new(ExportCounters::default());
        let otlp = match endpoint {
            Some(endpoint) => Some((
                format!("{}/v1/traces", endpoint.trim_end_matches('/')),
                reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            )),
            None => None,
        };
        let (queue, mut receiver) = mpsc::channel::<Vec<Kept>>(QUEUE);
        let task_counters = counters.clone();
        let task = tokio::spawn(async move {
            while let Some(traces) = receiver.recv().await {
                for trace in &traces {
                    match tracehop_spanfeed::kept::store(&js, &trace.trace_id, trace.parts.clone()).await {
                        Ok(()) => task_counters.traces_stored.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            tracing::warn!(error = %error, "failed to store a kept trace");
                            task_counters.store_failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                if let Some((url, client)) = &otlp {
                    let parts: Vec<_> = traces.into_iter().flat_map(|t| t.parts).collect();
                    for batch in batches(parts) {
                        post(client, url, batch, &task_counters).await;
                    }
                }
            }
        });
        Ok((Self { queue, counters }, task))
    }

    /// Queues kept traces; a full queue drops them and counts it.
    pub fn export(&self, traces: Vec<Kept>) {
        if traces.is_empty() {
            return;
        }
        if self.queue.try_send(traces).is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("dropped kept traces: the export queue is full");
        }
    }

    /// Closes the queue; the task then sends what is queued and ends.
    pub fn close(self) {
        drop(self.queue);
    }
}

/// Splits spans into OTLP requests of at most [`MAX_BATCH_SPANS`].
fn batches(parts: Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>) -> Vec<ExportTraceServiceRequest> {
    let mut requests = vec![ExportTraceServiceRequest::default()];
    let mut spans = 0;
    for part in parts {
        let count = count_spans(std::slice::from_ref(&part));
        if spans + count > MAX_BATCH_SPANS && spans > 0 {
            requests.push(ExportTraceServiceRequest::default());
            spans = 0;
        }
        spans += count;
        requests.last_mut().expect("never empty").resource_spans.push(part);
    }
    requests.retain(|r| !r.resource_spans.is_empty());
    requests
}

async fn post(client: &reqwest::Client, url: &str, request: ExportTraceServiceRequest, counters: &ExportCounters) {
    let spans = count_spans(&request.resource_spans) as u64;
    let body = request.encode_to_vec();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let response =
            client.post(url).header("content-type", "application/x-protobuf").body(body.clone()).send().await;
        match response {
            Ok(response) if response.status().is_success() => {
                counters.spans_exported.fetch_add(spans, Ordering::Relaxed);
                return;
            }
            Ok(response) => tracing::warn!(status = %response.status(), "the OTLP backend refused a batch"),
            Err(error) => tracing::warn!(%error, "failed to reach the OTLP backend"),
        }
    }
    counters.failures.fetch_add(1, Ordering::Relaxed);
    tracing::error!(spans, "dropped a batch of kept spans: the OTLP backend did not take it");
}
