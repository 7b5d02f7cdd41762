//! A consumer's dead letters, as the DEADLETTER stream holds them: how many
//! ([`count`]), why and which events ([`summarize`]), and dropping them on
//! purpose ([`discard`]). The sentinel's alerts, `tracehop status` and
//! `tracehop discard-dead-letters` all read them here.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::{self, stream::Stream};

use crate::headers;
use crate::topology::{DEAD_LETTER_STREAM, dead_letter_subject, subject_counts};

/// Most dead letters read to tally reasons; beyond, only the count is exact.
pub const MAX_SCAN: usize = 1000;

/// What a consumer's dead letters are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// How many wait.
    pub count: u64,
    /// How many for each reason (of the first [`MAX_SCAN`]).
    pub reasons: BTreeMap<String, u64>,
    /// The ORDERS stream sequences they were dead-lettered from (of the
    /// first [`MAX_SCAN`]).
    pub original_sequences: BTreeSet<u64>,
    /// The DEADLETTER stream's last sequence when they were read: a discard
    /// drops what is at or below it and nothing that came later.
    pub last_sequence: u64,
}

/// Why dead letters could not be read or dropped.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("stream {DEAD_LETTER_STREAM} is not available")]
    Stream(#[source] jetstream::context::GetStreamError),
    #[error("stream {DEAD_LETTER_STREAM} cannot be read")]
    Info(#[source] jetstream::stream::InfoError),
    #[error("dead letters of {consumer} could not be discarded")]
    Purge {
        consumer: String,
        #[source]
        source: jetstream::stream::PurgeError,
    },
}

/// The reason a dead letter gives, without the delivery count that one
/// "gave up after N deliveries" prefix adds, so that alike ones group.
pub fn reason_group(reason: &str) -> String {
    match reason.strip_prefix("gave up after ") {
        Some(rest) => rest.split_once(": ").map_or(reason, |(_, why)| why).to_string(),
        None => reason.to_string(),
    }
}

/// How many dead letters of `consumer` wait.
pub async fn count(js: &jetstream::Context, consumer: &str) -> Result<u64, DeadLetterError> {
    let stream = js.get_stream_no_info(DEAD_LETTER_STREAM).await.map_err(DeadLetterError::Stream)?;
    Ok(subject_counts(&stream, &dead_letter_subject(consumer)).await.values().sum())
}

/// How many dead letters of `consumer` wait, why, and from which events.
pub async fn summarize(js: &jetstream::Context, consumer: &str) -> Result<Summary, DeadLetterError> {
    let mut stream = js.get_stream(DEAD_LETTER_STREAM).await.map_err(DeadLetterError::Stream)?;
    let last_sequence = stream.info().await.map_err(DeadLetterError::Info)?.state.last_sequence;
    read_up_to(&stream, consumer, last_sequence).await
}

async fn read_up_to(stream: &Stream, consumer: &str, last_sequence: u64) -> Result<Summary, DeadLetterError> {
    let subject = dead_letter_subject(consumer);
    let mut summary = Summary { last_sequence, ..Summary::default() };
    let mut next = 1;
    while next <= last_sequence {
        let Ok(message) = stream.direct_get_next_for_subject(subject.clone(), Some(next)).await else { break };
        if message.sequence > last_sequence {
            break;
        }
        next = message.sequence + 1;
        summary.count += 1;
        if summary.count as usize > MAX_SCAN {
            continue;
        }
        let header = |name| headers::get(Some(&message.headers), name);
        let reason = header(headers::DEAD_LETTER_REASON).unwrap_or("unknown");
        *summary.reasons.entry(reason_group(reason)).or_default() += 1;
        if let Some(sequence) = header(headers::ORIGINAL_SEQUENCE).and_then(|s| s.parse().ok()) {
            summary.original_sequences.insert(sequence);
        }
    }
    Ok(summary)
}

/// Drops every dead letter of `consumer` stored so far, and says what was
/// dropped; one stored while this runs is kept.
pub async fn discard(js: &jetstream::Context, consumer: &str) -> Result<Summary, DeadLetterError> {
    let mut stream = js.get_stream(DEAD_LETTER_STREAM).await.map_err(DeadLetterError::Stream)?;
    let last_sequence = stream.info().await.map_err(DeadLetterError::Info)?.state.last_sequence;
    let summary = read_up_to(&stream, consumer, last_sequence).await?;
    if summary.count > 0 {
        // `sequence(n)` purges what is below n: everything read above.
        stream
            .purge()
            .filter(dead_letter_subject(consumer))
            .sequence(last_sequence + 1)
            .await
            .map_err(|source| DeadLetterError::Purge { consumer: consumer.to_string(), source })?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_that_differ_only_in_the_delivery_count_group() {
        assert_eq!(reason_group("gave up after 5 deliveries: insert failed"), "insert failed");
        assert_eq!(reason_group("gave up after 3 deliveries: a: b"), "a: b");
        assert_eq!(
            reason_group("payload is not a valid tracehop.v1.OrderEvent"),
            "payload is not a valid tracehop.v1.OrderEvent"
        );
    }
}
