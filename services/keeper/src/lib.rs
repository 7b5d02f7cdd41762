//! The keeper: tail sampling of whole traces from the span feed.
//!
//! Every service records every span to the span feed (cheap: a bounded
//! memory stream). The keeper reads the feed, assembles each trace, waits
//! until it is complete (quiet for a while and whole, or the longest wait
//! passed), then decides on the whole trace ([`policy`]): keep every trace
//! with a sentinel failure span or an ERROR span, every trace slower than
//! `TRACEHOP_KEEP_SLOWER_THAN_MS`, and `TRACEHOP_KEEP_RATIO` of the rest.
//! Kept traces are stored, whole, in the kept-traces store (the `KEPT`
//! stream, for days) and go to `OTEL_EXPORTER_OTLP_ENDPOINT` over
//! OTLP/HTTP when it is set, their root span marked with the decision, its reason and whether the
//! trace was complete; the counts are answered on `svc.keeper.stats`.
//! With tail sampling on, services export no span themselves, so no span
//! reaches the backend twice.
//!
//! Several instances split the feed by partition (the trace id's first hex
//! digit is a subject token): instance `i` of `n` reads the partitions `p`
//! with `p % n == i`, through one durable consumer per partition, so every
//! span of a trace reaches one instance, and a restarted instance goes on
//! where it stopped. Spans are not acknowledged one by one (telemetry is
//! best-effort): an instance that dies loses the traces it was assembling;
//! the feed still has them for `tracehop trace`.
//!
//! Modules: [`config`], [`policy`] (what to keep), [`traces`] (assembling
//! and deciding), [`export`] (OTLP/HTTP).

pub mod config;
pub mod export;
pub mod policy;
pub mod traces;

pub use config::Config;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tracehop_proto::subjects;
use tracehop_proto::v1::KeeperStatsReply;
use tracehop_service::Runtime;

use crate::export::Exporter;
use crate::policy::{Policy, Reason};
use crate::traces::{Kept, Timing, Traces, mark_decision, split_by_trace};

/// `service.name` of this service.
pub const SERVICE: &str = "keeper";

/// How often pending traces are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The durable consumer of one partition of the feed.
pub fn consumer_name(partition: u8) -> String {
    format!("keeper-p{partition:x}")
}

/// Reads the feed and decides traces until shutdown; then decides what is
/// still pending and lets the export queue drain.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let js = jetstream::new(runtime.nats.clone());
    if js.get_stream(tracehop_spanfeed::STREAM).await.is_err() {
        tracehop_spanfeed::ensure_stream(&js).await.context("failed to create the span feed")?;
    }
    let stream = js.get_stream(tracehop_spanfeed::STREAM).await.context("the span feed is missing")?;
    let partitions = config.partitions();
    let mut feeds = Vec::with_capacity(partitions.len());
    for &partition in &partitions {
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &consumer_name(partition),
                consumer::pull::Config {
                    durable_name: Some(consumer_name(partition)),
                    description: Some(format!("tracehop keeper: partition {partition:x} of the span feed")),
                    filter_subject: tracehop_spanfeed::partition_filter(partition),
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("failed to create consumer {}", consumer_name(partition)))?;
        feeds.push(consumer.messages().await.context("failed to read the span feed")?);
    }
    let mut feed = futures::stream::select_all(feeds);
    if js.get_stream(tracehop_spanfeed::kept::STREAM).await.is_err() {
        tracehop_spanfeed::kept::ensure_stream(&js, &tracehop_spanfeed::kept::Limits::default())
            .await
            .context("failed to create the kept-traces store")?;
    }
    let (exporter, export_task) = Exporter::start(js.clone(), config.base.otlp_endpoint.as_deref())?;
    if config.base.otlp_endpoint.is_none() {
        tracing::info!("OTEL_EXPORTER_OTLP_ENDPOINT is not set: kept traces are stored, not exported");
    }
    let policy = Policy { slower_than: config.slower_than, ratio: config.ratio };
    let timing = Timing { quiet: config.quiet, max_wait: config.max_wait, max_pending: config.max_pending };
    let mut traces = Traces::new(policy, timing);
    traces.stats.partitions = partitions.iter().map(|&p| u32::from(p)).collect();
    let mut stats_requests = runtime.nats.subscribe(subjects::KEEPER_STATS).await?;
    let mut tick = tokio::time::interval(TICK);
    let mut last_report = Instant::now();
    tracing::info!(
        partitions = ?partitions,
        slower_than_ms = config.slower_than.as_millis() as u64,
        ratio = config.ratio,
        "keeper started"
    );
    loop {
        tokio::select! {
            _ = runtime.shutdown.cancelled() => break,
            message = feed.next() => match message {
                Some(Ok(message)) => {
                    let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(u64::MAX);
                    let Ok(request) = ExportTraceServiceRequest::decode(message.payload.as_ref()) else {
                        tracing::warn!(subject = %message.subject, "skipped a feed message that is not OTLP");
                        continue;
                    };
                    let ingested = traces.ingest(request, Instant::now());
                    if !ingested.late_kept.is_empty() {
                        exporter.export(ingested.late_kept);
                    }
                    for (trace_id, reason) in ingested.upgrades {
                        tokio::spawn(upgrade(js.clone(), exporter.clone(), trace_id, reason, sequence));
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "span feed read failed; going on"),
                None => anyhow::bail!("the span feed ended"),
            },
            _ = tick.tick() => {
                let kept = traces.decide_due(Instant::now());
                if !kept.is_empty() {
                    exporter.export(kept);
                }
                if last_report.elapsed() >= Duration::from_secs(30) {
                    last_report = Instant::now();
                    let s = stats(&traces, &exporter);
                    tracing::info!(
                        spans_received = s.spans_received,
                        traces_decided = s.traces_decided,
                        kept = s.kept_error + s.kept_sentinel + s.kept_slow + s.kept_ratio,
                        dropped = s.dropped,
                        incomplete = s.incomplete,
                        spans_exported = s.spans_exported,
                        export_failures = s.export_failures,
                        "keeper counts"
                    );
                }
            }
            Some(request) = stats_requests.next() => {
                if let Some(reply) = request.reply {
                    let _ = runtime.nats.publish(reply, stats(&traces, &exporter).encode_to_vec().into()).await;
                }
            }
        }
    }
    let kept = traces.decide_all(Instant::now());
    exporter.export(kept);
    exporter.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), export_task).await;
    Ok(())
}

/// The counts, with the export task's.
fn stats(traces: &Traces, exporter: &Exporter) -> KeeperStatsReply {
    use std::sync::atomic::Ordering;
    let mut stats = traces.stats.clone();
    stats.spans_exported = exporter.counters.spans_exported.load(Ordering::Relaxed);
    stats.export_failures = exporter.counters.failures.load(Ordering::Relaxed);
    stats.traces_stored = exporter.counters.traces_stored.load(Ordering::Relaxed);
    stats.store_failures = exporter.counters.store_failures.load(Ordering::Relaxed);
    stats
}

/// Exports a dropped trace that a late failure span turned into a keep:
/// its messages on the feed up to `through` (the one that turned it; later
/// ones are exported as they arrive).
async fn upgrade(js: jetstream::Context, exporter: Exporter, trace_id: String, reason: Reason, through: u64) {
    let messages = match tracehop_spanfeed::fetch_trace_raw(&js, &trace_id).await {
        Ok(messages) => messages,
        Err(error) => {
            tracing::warn!(trace_id, %error, "failed to read back a trace a late failure span kept");
            return;
        }
    };
    let mut parts: Vec<_> = messages
        .into_iter()
        .filter(|(sequence, _)| *sequence <= through)
        .filter_map(|(_, payload)| ExportTraceServiceRequest::decode(payload.as_ref()).ok())
        .flat_map(split_by_trace)
        .filter(|(id, _)| *id == trace_id)
        .map(|(_, part)| part)
        .collect();
    mark_decision(&mut parts, reason, false);
    exporter.export(vec![Kept { trace_id, parts }]);
}
