//! Dead letters: how many each consumer has and why, and the
//! max-deliveries advisory.
//!
//! A consumer dead-letters a message itself on its last attempt. If it dies
//! during that attempt, the server never delivers the message again and the
//! only signal is the advisory `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`:
//! the sentinel then stores the dead letter on the consumer's behalf.

use std::collections::HashMap;

use async_nats::jetstream;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracehop_messaging::{DeadLetter, headers, store_dead_letter, topology};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Most dead letters read to tally reasons.
const MAX_REASONS_SCAN: usize = 1000;

/// A consumer's dead letters.
#[derive(Debug, Default)]
pub struct Tally {
    pub count: u64,
    pub reasons: HashMap<String, u64>,
}

impl Tally {
    /// Re-reads the count, and the reasons when the count changed.
    pub async fn refresh(&mut self, js: &jetstream::Context, consumer: &str) {
        let Ok(stream) = js.get_stream(topology::DEAD_LETTER_STREAM).await else { return };
        let subject = topology::dead_letter_subject(consumer);
        let count = match stream.info_with_subjects(subject.clone()).await {
            Ok(subjects) => {
                subjects
                    .map(|entry| entry.map(|(_, n)| n as u64).unwrap_or(0))
                    .fold(0, |a, n| async move { a + n })
                    .await
            }
            Err(_) => return,
        };
        if count == self.count {
            return;
        }
        self.count = count;
        self.reasons.clear();
        let mut next = 1;
        for _ in 0..MAX_REASONS_SCAN {
            let Ok(message) = stream.direct_get_next_for_subject(subject.clone(), Some(next)).await else { break };
            next = message.sequence + 1;
            let reason = headers::get(Some(&message.headers), headers::DEAD_LETTER_REASON).unwrap_or("unknown");
            // Reasons that differ only in a delivery count are one reason.
            let reason = reason.split(": ").last().unwrap_or(reason).to_string();
            *self.reasons.entry(reason).or_default() += 1;
        }
    }
}

/// Stores a dead letter for each max-deliveries advisory, until `shutdown`.
pub async fn watch_max_deliveries(nats: async_nats::Client, js: jetstream::Context, shutdown: CancellationToken) {
    let subject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";
    let mut advisories = match nats.subscribe(subject).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::warn!(error = %error, "cannot watch max-deliveries advisories");
            return;
        }
    };
    loop {
        let advisory = tokio::select! {
            _ = shutdown.cancelled() => break,
            advisory = advisories.next() => advisory,
        };
        let Some(advisory) = advisory else { break };
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&advisory.payload) else { continue };
        let (Some(stream_name), Some(consumer), Some(sequence)) =
            (body["stream"].as_str(), body["consumer"].as_str(), body["stream_seq"].as_u64())
        else {
            continue;
        };
        let deliveries = body["deliveries"].as_i64().unwrap_or_default();
        tracing::warn!(stream = stream_name, consumer, sequence, deliveries, "max deliveries reached");
        let Ok(stream) = js.get_stream(stream_name).await else { continue };
        let Ok(message) = stream.get_raw_message(sequence).await else { continue };
        let span = tracing::info_span!(
            "sentinel.max_deliveries",
            otel.kind = "internal",
            messaging.consumer.group.name = consumer
        );
        let _ = span.set_parent(headers::extract(Some(&message.headers)));
        let letter = DeadLetter {
            stream: stream_name,
            consumer,
            subject: message.subject.as_str(),
            sequence,
            delivered: deliveries,
            headers: Some(&message.headers),
            payload: message.payload.clone(),
        };
        let reason = format!("no acknowledgement after {deliveries} deliveries (reported by the server)");
        let _ = tracing::Instrument::instrument(store_dead_letter(&js, &letter, &reason), span).await;
    }
}
