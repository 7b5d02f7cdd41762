//! Reading the whole feed (or its recent part) once, grouped by trace: what
//! `tracehop slowest` and `explain` need to compare one trace with the rest.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use tokio::time::timeout;

use crate::reader::ReadError;
use crate::record::{SpanRecord, decode_spans};
use crate::{STREAM, SUBJECT_PREFIX};

/// Spans by trace id, each trace's spans in the order they were published.
pub type Traces = HashMap<String, Vec<SpanRecord>>;

/// What one scan read.
#[derive(Debug, Default)]
pub struct Scan {
    pub traces: Traces,
    /// Feed messages read (a message holds one service's batch of one trace).
    pub messages: u64,
    pub spans: u64,
    /// Messages that did not decode, skipped.
    pub undecodable: u64,
}

/// Every span stored on the feed within the last `since` (everything the feed
/// holds with `None`), read once through one ordered consumer and grouped by
/// trace id. Reading stops at the last message stored when the scan began, so
/// that a busy feed cannot keep it going.
pub async fn scan_feed(js: &jetstream::Context, since: Option<Duration>) -> Result<Scan, ReadError> {
    let consume_error = |error: &dyn std::fmt::Display| ReadError::Consume(error.to_string());
    let mut stream = js.get_stream(STREAM).await.map_err(|e| ReadError::Stream(e.to_string()))?;
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
            filter_subject: format!("{SUBJECT_PREFIX}.>"),
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
        match decode_spans(&message.payload) {
            Ok(spans) => {
                scan.spans += spans.len() as u64;
                for span in spans {
                    match scan.traces.get_mut(&span.trace_id) {
                        Some(trace) => trace.push(span),
                        None => {
                            scan.traces.insert(span.trace_id.clone(), vec![span]);
                        }
                    }
                }
            }
            Err(_) => scan.undecodable += 1,
        }
        if pending == 0 || sequence >= last_sequence {
            return Ok(scan);
        }
    }
}
