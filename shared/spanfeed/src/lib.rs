//! The span feed: every service's finished spans, encoded as OTLP protobuf and
//! kept in a bounded, memory-backed JetStream stream, so that traces can be
//! read back with nothing but NATS.
//!
//! - [`exporter`]: [`SpanFeedExporter`], an OpenTelemetry `SpanExporter` that
//!   publishes each batch, one message per trace, on `spans.<trace_id>.<service>`.
//! - [`kept`]: the kept-traces store (what the keeper keeps, on disk, for
//!   days) and [`kept::window`], how far back the feed and the store reach.
//! - [`record`]: [`SpanRecord`], a flat, JSON-friendly view of one span, decoded
//!   from the OTLP messages on the feed.
//! - [`reader`]: [`fetch_trace`] (every span of one trace so far),
//!   [`wait_for_trace`] (until it stops growing) and [`watch`] (spans as they
//!   arrive).
//! - [`scan`]: [`scan_feed`], the whole feed (or its recent part) read once,
//!   grouped by trace, each batch decoded only when asked for.
//!
//! Subjects are `spans.<partition>.<trace_id>.<service>`: the partition (the
//! trace id's first hex digit, [`partition_of`]) lets several keepers split
//! the feed so that each trace is decided by one of them.
//!
//! The stream uses memory storage with size and age limits: telemetry must not
//! pay for the fsync that business events need.

pub mod exporter;
pub mod kept;
pub mod reader;
pub mod record;
pub mod scan;

pub use exporter::{FeedStats, SpanFeedExporter};
pub use reader::{
    ReadError, fetch_trace, fetch_trace_raw, normalize_trace_id, wait_for_settled_trace, wait_for_trace, watch,
};
pub use record::{SpanKind, SpanLink, SpanRecord, SpanStatus, decode_spans};
pub use scan::{Batch, Scan, scan_feed, scan_kept};

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// Name of the JetStream stream that keeps the feed.
pub const STREAM: &str = "SPANS";
/// First token of every feed subject.
pub const SUBJECT_PREFIX: &str = "spans";
/// The largest feed message we publish; NATS refuses more than 1 MB by default.
pub const MAX_MESSAGE_BYTES: usize = 900 * 1024;

/// How many partitions the feed's subjects are split into, by the first hex
/// digit of the trace id: several keepers share the feed by partition, so
/// that every span of a trace reaches the same keeper. A partition is a
/// subject token of its own because nats-server 2.9 filters a consumer by
/// one subject, with wildcards only for whole tokens.
pub const PARTITIONS: u8 = 16;

/// The partition of `trace_id` (32 lowercase hex digits): its first digit.
pub fn partition_of(trace_id: &str) -> u8 {
    trace_id.chars().next().and_then(|c| c.to_digit(16)).unwrap_or(0) as u8
}

/// The subject that carries spans of `trace_id` (32 lowercase hex digits)
/// finished by `service`: `spans.<partition>.<trace_id>.<service>`.
pub fn subject(trace_id: &str, service: &str) -> String {
    format!("{SUBJECT_PREFIX}.{:x}.{trace_id}.{service}", partition_of(trace_id))
}

/// The filter that matches every span of one trace.
pub fn trace_filter(trace_id: &str) -> String {
    format!("{SUBJECT_PREFIX}.{:x}.{trace_id}.*", partition_of(trace_id))
}

/// The filter that matches every span of one partition.
pub fn partition_filter(partition: u8) -> String {
    format!("{SUBJECT_PREFIX}.{partition:x}.>")
}

/// The stream's configuration: memory storage, bounded in bytes and in age.
pub fn stream_config(max_bytes: i64, max_age: Duration) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some("tracehop span feed: finished spans as OTLP protobuf".to_string()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::Memory,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_bytes,
        max_age,
        max_message_size: (MAX_MESSAGE_BYTES + 64 * 1024) as i32,
        ..Default::default()
    }
}

/// Creates (or updates) the feed's stream with the default bounds: 256 MiB and
/// one hour.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<(), jetstream::context::CreateStreamError> {
    let limits = kept::Limits::default();
    js.create_or_update_stream(stream_config(limits.feed_bytes, limits.feed_max_age)).await?;
    Ok(())
}

/// Creates (or updates) the feed's stream and the kept-traces store with
/// `limits`, the feed on `feed_replicas` servers of a cluster and the store
/// on `kept_replicas` (the catalog's `Store::replicas` in the messaging
/// crate says how many, and why; 1 on a single server). A service that
/// finds the feed missing creates it with one copy ([`ensure_stream`]):
/// `tracehop up` and `prepare` make it first.
pub async fn ensure_streams(
    js: &jetstream::Context,
    limits: &kept::Limits,
    feed_replicas: usize,
    kept_replicas: usize,
) -> Result<(), jetstream::context::CreateStreamError> {
    let feed = stream::Config { num_replicas: feed_replicas, ..stream_config(limits.feed_bytes, limits.feed_max_age) };
    js.create_or_update_stream(feed).await?;
    let kept = stream::Config { num_replicas: kept_replicas, ..kept::stream_config(limits) };
    js.create_or_update_stream(kept).await.map(drop)
}
