//! Reading the span feed back: one trace, or the live feed.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use tokio::time::{Instant, sleep, timeout};

use crate::record::{SpanRecord, decode_spans};
use crate::{STREAM, SUBJECT_PREFIX, trace_filter};

/// Why the feed could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the span feed stream {STREAM} is not available: {0}")]
    Stream(String),
    #[error("failed to read the span feed: {0}")]
    Consume(String),
    #[error("the span feed stopped answering while reading trace {0}")]
    Stalled(String),
    #[error("{0:?} is not a trace id: expected 32 hexadecimal digits")]
    BadTraceId(String),
}

fn consume_error(error: impl std::fmt::Display) -> ReadError {
    ReadError::Consume(error.to_string())
}

/// Checks that `trace_id` is 32 hex digits and returns it in lowercase, the
/// form used on feed subjects.
pub fn normalize_trace_id(trace_id: &str) -> Result<String, ReadError> {
    let valid = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    if valid { Ok(trace_id.to_ascii_lowercase()) } else { Err(ReadError::BadTraceId(trace_id.to_string())) }
}

/// Every span of `trace_id` on the feed now, sorted by start time. A
/// message that does not decode is skipped: one bad publisher must not hide
/// the rest of the trace.
pub async fn fetch_trace(js: &jetstream::Context, trace_id: &str) -> Result<Vec<SpanRecord>, ReadError> {
    Ok(decode_sorted(&fetch_trace_raw(js, trace_id).await?))
}

/// The spans of `messages` (as [`fetch_raw`] returns them), sorted by start
/// time; a message that does not decode is skipped.
pub(crate) fn decode_sorted(messages: &[(u64, bytes::Bytes)]) -> Vec<SpanRecord> {
    let mut spans: Vec<SpanRecord> =
        messages.iter().filter_map(|(_, payload)| decode_spans(payload).ok()).flatten().collect();
    spans.sort_by_key(|span| (span.start_unix_nano, span.end_unix_nano));
    spans
}

/// Every feed message of `trace_id` now, as published (OTLP
/// `ExportTraceServiceRequest`s), with its stream sequence, in stream order.
pub async fn fetch_trace_raw(js: &jetstream::Context, trace_id: &str) -> Result<Vec<(u64, bytes::Bytes)>, ReadError> {
    let trace_id = normalize_trace_id(trace_id)?;
    fetch_raw(js, STREAM, &trace_filter(&trace_id), &trace_id).await
}

/// Every message of stream `stream_name` on `filter` now, with its
/// sequence, in stream order; `trace_id` names what is read, in errors.
pub(crate) async fn fetch_raw(
    js: &jetstream::Context,
    stream_name: &str,
    filter: &str,
    trace_id: &str,
) -> Result<Vec<(u64, bytes::Bytes)>, ReadError> {
    let trace_id = trace_id.to_string();
    let stream = js.get_stream(stream_name).await.map_err(|e| ReadError::Stream(e.to_string()))?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(consume_error)?;
    let mut pending = consumer.info().await.map_err(consume_error)?.num_pending;
    let mut payloads = Vec::new();
    if pending > 0 {
        let mut messages = consumer.messages().await.map_err(consume_error)?;
        while pending > 0 {
            let message = timeout(Duration::from_secs(5), messages.next())
                .await
                .map_err(|_| ReadError::Stalled(trace_id.clone()))?
                .ok_or_else(|| ReadError::Stalled(trace_id.clone()))?
                .map_err(consume_error)?;
            let info = message.info().map_err(consume_error)?;
            pending = info.pending;
            payloads.push((
                info.stream_sequence,
                crate::kept::decode_payload(message.headers.as_ref(), message.payload.clone()),
            ));
        }
    }
    Ok(payloads)
}

/// Reads `trace_id` until `done` holds for its spans, or `deadline` passes;
/// returns the spans read last either way.
pub async fn wait_for_trace(
    js: &jetstream::Context,
    trace_id: &str,
    deadline: Duration,
    mut done: impl FnMut(&[SpanRecord]) -> bool,
) -> Result<Vec<SpanRecord>, ReadError> {
    let until = Instant::now() + deadline;
    loop {
        let spans = fetch_trace(js, trace_id).await?;
        if done(&spans) || Instant::now() >= until {
            return Ok(spans);
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `trace_id` until it has not grown for `settle`, or `deadline` passes.
pub async fn wait_for_settled_trace(
    js: &jetstream::Context,
    trace_id: &str,
    settle: Duration,
    deadline: Duration,
) -> Result<Vec<SpanRecord>, ReadError> {
    let mut last_count = 0;
    let mut last_change = Instant::now();
    wait_for_trace(js, trace_id, deadline, |spans| {
        if spans.len() != last_count {
            last_count = spans.len();
            last_change = Instant::now();
        }
        !spans.is_empty() && last_change.elapsed() >= settle
    })
    .await
}

/// Spans as they are published from now on, from every service or from one.
pub async fn watch(
    js: &jetstream::Context,
    service: Option<&str>,
) -> Result<impl Stream<Item = Result<SpanRecord, ReadError>> + use<>, ReadError> {
    let stream = js.get_stream(STREAM).await.map_err(|e| ReadError::Stream(e.to_string()))?;
    let filter_subject = match service {
        Some(service) => format!("{SUBJECT_PREFIX}.*.*.{service}"),
        None => format!("{SUBJECT_PREFIX}.>"),
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(consume_error)?;
    let messages = consumer.messages().await.map_err(consume_error)?;
    Ok(messages
        .map_err(consume_error)
        .map_ok(|message| futures::stream::iter(decode_spans(&message.payload).unwrap_or_default().into_iter().map(Ok)))
        .try_flatten())
}
