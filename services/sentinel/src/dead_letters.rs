//! The max-deliveries advisory. (How many dead letters each consumer has,
//! and why, is read by [`tracehop_messaging::dead_letters`].)
//!
//! A consumer dead-letters a message itself on its last attempt. If it dies
//! during that attempt, the server never delivers the message again and the
//! only signal is the advisory `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`:
//! the sentinel then stores the dead letter on the consumer's behalf.

use async_nats::jetstream;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracehop_messaging::{DeadLetter, headers, store_dead_letter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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
