//! The kept-traces store, and the windows of the feed and the store.
//!
//! The span feed is a ring: under load it holds minutes of spans. What the
//! keeper keeps (errors, the sentinel's failure spans, slow traces, the
//! sampled ratio) is also written here, to the file-backed stream [`STREAM`]
//! on `kept.<partition>.<trace_id>`, so that `trace`, `slowest` and
//! `explain` find a kept trace hours later with no tracing backend.
//!
//! Each kept trace is written as one message (split only past the message
//! size limit), and its late spans as one more, compressed with deflate
//! (`Content-Encoding: deflate`). Measured at 200 checkouts a second with
//! 10% kept, the default 8 GiB reach back about 13 hours. That matters on a server
//! with `sync_interval: always`, where every stored message is fsynced:
//! the store then costs one fsync per kept message, not one per span batch
//! (about 100 a second at 200 checkouts a second, where the ORDERS stream
//! pays 200).
//!
//! [`window`] tells how much a stream holds: bytes used of its limit, the
//! age of its oldest message and the rate messages came in at.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message as _;

use crate::reader::{ReadError, decode_sorted, fetch_raw, normalize_trace_id};
use crate::record::SpanRecord;
use crate::{MAX_MESSAGE_BYTES, partition_of};

/// The kept traces' stream.
pub const STREAM: &str = "KEPT";
/// First token of every kept-trace subject.
pub const SUBJECT_PREFIX: &str = "kept";

/// The subject of `trace_id`'s kept spans.
pub fn subject(trace_id: &str) -> String {
    format!("{SUBJECT_PREFIX}.{:x}.{trace_id}", partition_of(trace_id))
}

/// How much the feed and the store may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `TRACEHOP_SPAN_FEED_BYTES`: the feed's size, in memory.
    pub feed_bytes: i64,
    /// The feed's age limit.
    pub feed_max_age: Duration,
    /// `TRACEHOP_KEPT_BYTES`: the kept store's size, on disk.
    pub kept_bytes: i64,
    /// `TRACEHOP_KEPT_MAX_AGE_HOURS`: the kept store's age limit.
    pub kept_max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            feed_bytes: 256 * 1024 * 1024,
            feed_max_age: Duration::from_secs(3600),
            kept_bytes: 8 * 1024 * 1024 * 1024,
            kept_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The store's configuration: file storage (kept traces outlive a restart),
/// bounded in bytes and age, the oldest dropped first.
pub fn stream_config(limits: &Limits) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some("tracehop kept traces: whole traces the keeper kept, as OTLP protobuf".to_string()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_bytes: limits.kept_bytes,
        max_age: limits.kept_max_age,
        max_message_size: (MAX_MESSAGE_BYTES + 64 * 1024) as i32,
        ..Default::default()
    }
}

/// Creates (or updates) the store's stream.
pub async fn ensure_stream(
    js: &jetstream::Context,
    limits: &Limits,
) -> Result<(), jetstream::context::CreateStreamError> {
    js.create_or_update_stream(stream_config(limits)).await.map(drop)
}

/// Why spans could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("failed to store kept trace {trace_id}")]
pub struct StoreError {
    trace_id: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Stores spans of kept trace `trace_id`, in as few messages as fit.
pub async fn store(js: &jetstream::Context, trace_id: &str, parts: Vec<ResourceSpans>) -> Result<(), StoreError> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| StoreError { trace_id: trace_id.to_string(), source };
    let mut batches: Vec<Vec<ResourceSpans>> = vec![Vec::new()];
    let mut size = 0;
    for part in parts {
        let part_size = part.encoded_len();
        if size + part_size > MAX_MESSAGE_BYTES && !batches.last().is_some_and(Vec::is_empty) {
            batches.push(Vec::new());
            size = 0;
        }
        size += part_size;
        batches.last_mut().expect("never empty").push(part);
    }
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        let payload = ExportTraceServiceRequest { resource_spans: batch }.encode_to_vec();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_ENCODING, DEFLATE);
        let compressed = deflate(&payload).map_err(|e| fail(Box::new(e)))?;
        let ack = js
            .publish_with_headers(subject(trace_id), headers, compressed.into())
            .await
            .map_err(|e| fail(Box::new(e)))?;
        ack.await.map_err(|e| fail(Box::new(e)))?;
    }
    Ok(())
}

/// The header that says how a stored payload is encoded.
pub const CONTENT_ENCODING: &str = "Content-Encoding";
/// Its value for a deflated payload.
pub const DEFLATE: &str = "deflate";
/// The largest payload inflated: a kept message is at most a megabyte
/// before compression, so anything bigger is not one of ours.
const MAX_INFLATED: u64 = 4 * 1024 * 1024;

fn deflate(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(payload)?;
    encoder.finish()
}

/// A stored payload as it was published: inflated when its headers say it
/// was deflated, as it is otherwise. One that does not inflate is returned
/// empty (and then does not decode): a bad message hides nothing else.
pub fn decode_payload(headers: Option<&async_nats::HeaderMap>, payload: bytes::Bytes) -> bytes::Bytes {
    use std::io::Read as _;
    let deflated = headers.and_then(|h| h.get(CONTENT_ENCODING)).is_some_and(|v| v.as_str() == DEFLATE);
    if !deflated {
        return payload;
    }
    let mut inflated = Vec::new();
    match flate2::read::DeflateDecoder::new(payload.as_ref()).take(MAX_INFLATED).read_to_end(&mut inflated) {
        Ok(_) => inflated.into(),
        Err(_) => bytes::Bytes::new(),
    }
}

/// Every kept span of `trace_id`, sorted by start time; empty when the
/// trace was not kept (or the store is missing).
pub async fn fetch(js: &jetstream::Context, trace_id: &str) -> Result<Vec<SpanRecord>, ReadError> {
    let trace_id = normalize_trace_id(trace_id)?;
    if js.get_stream(STREAM).await.is_err() {
        return Ok(Vec::new());
    }
    Ok(decode_sorted(&fetch_raw(js, STREAM, &subject(&trace_id), &trace_id).await?))
}

/// How much a stream holds now.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub stream: String,
    pub bytes: u64,
    pub max_bytes: i64,
    pub messages: u64,
    pub max_age: Duration,
    /// How old its oldest message is; `None` when it is empty.
    pub oldest_age: Option<Duration>,
    /// Messages per second over what it holds (first to last message).
    pub messages_per_second: f64,
}

impl Window {
    /// How far back the stream reaches at the rate it is filled now: its
    /// age limit, or the time its byte limit fills in, whichever is less.
    pub fn reach(&self) -> Option<Duration> {
        let age = self.oldest_age?;
        if self.max_bytes <= 0 || self.bytes == 0 {
            return Some(age.min(self.max_age));
        }
        let fill = age.as_secs_f64() * self.max_bytes as f64 / self.bytes as f64;
        Some(Duration::from_secs_f64(fill.min(self.max_age.as_secs_f64())))
    }
}

/// The window of stream `name`.
pub async fn window(js: &jetstream::Context, name: &str) -> Result<Window, ReadError> {
    let mut stream = js.get_stream(name).await.map_err(|e| ReadError::Stream(e.to_string()))?;
    let info = stream.info().await.map_err(|e| ReadError::Stream(e.to_string()))?;
    let state = &info.state;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let first = state.first_timestamp.unix_timestamp_nanos() as f64 / 1e9;
    let last = state.last_timestamp.unix_timestamp_nanos() as f64 / 1e9;
    let oldest_age = (state.messages > 0).then(|| Duration::from_secs_f64((now - first).max(0.0)));
    let span = (last - first).max(0.0);
    Ok(Window {
        stream: name.to_string(),
        bytes: state.bytes,
        max_bytes: info.config.max_bytes,
        messages: state.messages,
        max_age: info.config.max_age,
        oldest_age,
        messages_per_second: if span > 0.0 { state.messages as f64 / span } else { 0.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_payloads_inflate_back_and_plain_ones_pass() {
        let payload = b"spans spans spans spans spans spans spans spans".repeat(50);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_ENCODING, DEFLATE);
        let compressed = deflate(&payload).unwrap();
        assert!(compressed.len() < payload.len() / 5);
        assert_eq!(decode_payload(Some(&headers), compressed.into()).as_ref(), payload.as_slice());
        assert_eq!(decode_payload(None, payload.clone().into()).as_ref(), payload.as_slice());
        assert!(decode_payload(Some(&headers), bytes::Bytes::from_static(b"not deflate")).is_empty());
    }

    #[test]
    fn kept_subjects_carry_the_partition() {
        let id = "c194497398e26d28a3ca951ac33ca807";
        assert_eq!(subject(id), format!("kept.c.{id}"));
    }

    #[test]
    fn the_reach_is_the_age_scaled_to_the_byte_limit() {
        let window = Window {
            stream: "SPANS".into(),
            bytes: 100,
            max_bytes: 400,
            messages: 10,
            max_age: Duration::from_secs(3600),
            oldest_age: Some(Duration::from_secs(30)),
            messages_per_second: 1.0,
        };
        assert_eq!(window.reach(), Some(Duration::from_secs(120)));
        let capped = Window { max_age: Duration::from_secs(60), ..window.clone() };
        assert_eq!(capped.reach(), Some(Duration::from_secs(60)));
        assert_eq!(Window { oldest_age: None, ..window }.reach(), None);
    }
}
