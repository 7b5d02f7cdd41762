//! [`Exporter`]: kept spans to an OTLP/HTTP endpoint (`/v1/traces`,
//! protobuf), from a task of its own so that a slow backend never holds up
//! the reading of the feed. Batches wait in a bounded queue; when it is full
//! a batch is dropped and counted, never silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::traces::count_spans;

/// Batches waiting for the backend.
const QUEUE: usize = 256;
/// Most spans in one request.
pub const MAX_BATCH_SPANS: usize = 2048;

/// What the export task has done.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub spans_exported: AtomicU64,
    pub failures: AtomicU64,
}

/// Hands kept spans to the export task.
#[derive(Clone)]
pub struct Exporter {
    queue: Option<mpsc::Sender<Vec<ResourceSpans>>>,
    pub counters: Arc<ExportCounters>,
}

impl Exporter {
    /// An exporter to `endpoint` (the `OTEL_EXPORTER_OTLP_ENDPOINT` base;
    /// `/v1/traces` is appended), or one that exports nothing when there is
    /// none. Returns the task to await at shutdown.
    pub fn start(endpoint: Option<&str>) -> anyhow::Result<(Self, Option<tokio::task::JoinHandle<()>>)> {
        let counters = Arc::new(ExportCounters::default());
        let Some(endpoint) = endpoint else {
            return Ok((Self { queue: None, counters }, None));
        };
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let (sender, mut receiver) = mpsc::channel::<Vec<ResourceSpans>>(QUEUE);
        let task_counters = counters.clone();
        let task = tokio::spawn(async move {
            while let Some(batch) = receiver.recv().await {
                let spans = count_spans(&batch) as u64;
                let body = ExportTraceServiceRequest { resource_spans: batch }.encode_to_vec();
                let mut sent = false;
                for attempt in 0..2 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status().is_success() => {
                            sent = true;
                            break;
                        }
                        Ok(response) => tracing::warn!(status = %response.status(), "the OTLP backend refused a batch"),
                        Err(error) => tracing::warn!(%error, "failed to reach the OTLP backend"),
                    }
                }
                if sent {
                    task_counters.spans_exported.fetch_add(spans, Ordering::Relaxed);
                } else {
                    task_counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(spans, "dropped a batch of kept spans: the OTLP backend did not take it");
                }
            }
        });
        Ok((Self { queue: Some(sender), counters }, Some(task)))
    }

    /// Queues kept spans for export, in batches of at most
    /// [`MAX_BATCH_SPANS`]; a full queue drops the batch and counts it.
    pub fn export(&self, parts: Vec<ResourceSpans>) {
        let Some(queue) = &self.queue else { return };
        let mut batch = Vec::new();
        let mut spans = 0;
        for part in parts {
            spans += count_spans(std::slice::from_ref(&part));
            batch.push(part);
            if spans >= MAX_BATCH_SPANS {
                self.send(queue, std::mem::take(&mut batch));
                spans = 0;
            }
        }
        if !batch.is_empty() {
            self.send(queue, batch);
        }
    }

    fn send(&self, queue: &mpsc::Sender<Vec<ResourceSpans>>, batch: Vec<ResourceSpans>) {
        if queue.try_send(batch).is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("dropped a batch of kept spans: the export queue is full");
        }
    }

    /// Closes the queue; the task then sends what is queued and ends.
    pub fn close(self) {
        drop(self.queue);
    }
}
