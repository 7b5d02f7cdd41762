//! Reading the whole feed (or its recent part) once, grouped by trace: what
//! `tracehop slowest` and `explain` need to compare one trace with the rest.
//!
//! A scan keeps each feed message as it came (a service's batch of one
//! trace's spans, still encoded) under the trace id and service named by its
//! subject. Decoding is what costs (every attribute becomes a string), so the
//! caller decodes only what it needs: the gateway's batches of every trace to
//! rank checkouts, then whole traces for the few it analyses.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::time::timeout;

use crate::reader::ReadError;
use crate::record::{SpanRecord, decode_spans};
use crate::{STREAM, SUBJECT_PREFIX};

/// One feed message: the spans of one trace that one service exported in one
/// batch, still encoded as OTLP. From the kept-traces store, one message
/// holds a whole trace of every service: its `service` is empty.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The service, from the subject; empty for a kept trace's message.
    pub service: String,
    /// The message's stream sequence: a later batch has a higher one.
    pub sequence: u64,
    pub payload: Bytes,
}

/// What one scan read.
#[derive(Debug, Default)]
pub struct Scan {
    /// Batches by trace id, in stream order.
    pub traces: HashMap<String, Vec<Batch>>,
    /// Feed messages read.
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
}

impl Scan {
    /// Every span of `trace_id` that the scan read; batches that do not
    /// decode are skipped.
    pub fn decode(&self, trace_id: &str) -> Vec<SpanRecord> {
        self.decode_where(trace_id, |_| true)
    }

    /// The spans of `trace_id` exported by `service` only.
    pub fn decode_service(&self, trace_id: &str, service: &str) -> Vec<SpanRecord> {
        let mut spans = self.decode_where(trace_id, |batch| batch.service == service || batch.service.is_empty());
        spans.retain(|span| span.service == service);
        spans
    }

    /// Adds the traces of `other` that this scan does not have (a trace on
    /// the feed is read from the feed, which may have more of it).
    pub fn merge_missing(&mut self, other: Scan) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        for (trace_id, batches) in other.traces {
            self.traces.entry(trace_id).or_insert(batches);
        }
    }

    fn decode_where(&self, trace_id: &str, keep: impl Fn(&Batch) -> bool) -> Vec<SpanRecord> {
        let Some(batches) = self.traces.get(trace_id) else { return Vec::new() };
        batches.iter().filter(|b| keep(b)).flat_map(|b| decode_spans(&b.payload).unwrap_or_default()).collect()
    }

    /// Up to `count` trace ids, those whose latest batch came last first.
    pub fn latest(&self, count: usize) -> Vec<&str> {
        let mut traces: Vec<(u64, &str)> = self
            .traces
            .iter()
            .map(|(id, batches)| (batches.iter().map(|b| b.sequence).max().unwrap_or(0), id.as_str()))
            .collect();
        traces.sort_unstable_by(|a, b| b.cmp(a));
        traces.into_iter().take(count).map(|(_, id)| id).collect()
    }
}

/// The trace id and service of a feed subject: its last two tokens, so that
/// a partition token between the prefix and the trace id
/// (`spans.<partition>.<trace_id>.<service>`) reads the same as none.
fn trace_and_service(subject: &str) -> Option<(&str, &str)> {
    let mut tokens = subject.rsplitn(3, '.');
    let (service, trace_id, prefix) = (tokens.next()?, tokens.next()?, tokens.next()?);
    let ours = prefix.split('.').next() == Some(SUBJECT_PREFIX)
        && trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    ours.then_some((trace_id, service))
}

/// The trace id of a kept-trace subject (`kept.<partition>.<trace_id>`),
/// with no service: such a message holds every service's spans.
fn kept_trace(subject: &str) -> Option<(&str, &str)> {
    let trace_id = subject.rsplit('.').next()?;
    let ours = subject.starts_with(crate::kept::SUBJECT_PREFIX)
        && trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    ours.then_some((trace_id, ""))
}

/// Every message stored on the feed within the last `since` (everything the
/// feed holds with `None`), read once through one ordered consumer and
/// grouped by the trace id and service of its subject. Reading stops at the
/// last message stored when the scan began, so that a busy feed cannot keep
/// it going.
pub async fn scan_feed(js: &jetstream::Context, since: Option<Duration>) -> Result<Scan, ReadError> {
    scan_stream(js, STREAM, &format!("{SUBJECT_PREFIX}.>"), since, trace_and_service).await
}

/// Like [`scan_feed`], for the kept-traces store: every kept trace stored
/// within the last `since` (an empty scan when there is no store).
pub async fn scan_kept(js: &jetstream::Context, since: Option<Duration>) -> Result<Scan, ReadError> {
    if js.get_stream(crate::kept::STREAM).await.is_err() {
        return Ok(Scan::default());
    }
    scan_stream(js, crate::kept::STREAM, &format!("{}.>", crate::kept::SUBJECT_PREFIX), since, kept_trace).await
}

async fn scan_stream(
    js: &jetstream::Context,
    stream_name: &str,
    filter_subject: &str,
    since: Option<Duration>,
    trace_and_service: fn(&str) -> Option<(&str, &str)>,
) -> Result<Scan, ReadError> {
    let consume_error = |error: &dyn std::fmt::Display| ReadError::Consume(error.to_string());
    let mut stream = js.get_stream(stream_name).await.map_err(|e| ReadError::Stream(e.to_string()))?;
    let last_sequence = stream.info().await.map_err(|e| ReadError::Stream(e.to_string()))?.state.last_sequence;
    let deliver_policy = match since {
        Some(since) => {
            let start = SystemTime::now().checked_sub(since).unwrap_or(UNIX_EPOCH);
            let nanos = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
            let start_time = async_nats::datetime::from_nanos(nanos).map_err(|e| consume_error(&e))?;
            consumer::DeliverPolicy::ByStartTime { start_time }
        }
        None => consumer::DeliverPolicy::All,
    };
    let mut ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter_subject.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| consume_error(&e))?;
    let mut scan = Scan::default();
    if ordered.info().await.map_err(|e| consume_error(&e))?.num_pending == 0 {
        return Ok(scan);
    }
    let mut messages = ordered.messages().await.map_err(|e| consume_error(&e))?;
    loop {
        let message = timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| ReadError::Stalled("(the whole feed)".to_string()))?
            .ok_or_else(|| ReadError::Stalled("(the whole feed)".to_string()))?
            .map_err(|e| consume_error(&e))?;
        let info = message.info().map_err(|e| consume_error(&e))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        scan.messages += 1;
        scan.bytes += message.payload.len() as u64;
        if let Some((trace_id, service)) = trace_and_service(message.subject.as_str()) {
            let payload = crate::kept::decode_payload(message.headers.as_ref(), message.payload.clone());
            let batch = Batch { service: service.to_string(), sequence, payload };
            match scan.traces.get_mut(trace_id) {
                Some(batches) => batches.push(batch),
                None => {
                    scan.traces.insert(trace_id.to_string(), vec![batch]);
                }
            }
        }
        if pending == 0 || sequence >= last_sequence {
            return Ok(scan);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_give_trace_and_service_with_or_without_a_partition() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_and_service(&format!("spans.{trace}.gateway")), Some((trace, "gateway")));
        assert_eq!(trace_and_service(&format!("spans.4.{trace}.order")), Some((trace, "order")));
        assert_eq!(trace_and_service(&format!("other.{trace}.order")), None);
        assert_eq!(trace_and_service("spans.nothex.order"), None);
        assert_eq!(trace_and_service("spans"), None);
    }
}
