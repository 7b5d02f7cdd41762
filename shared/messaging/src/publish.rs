//! [`publish_event`]: a traced JetStream publish that waits for the ack;
//! [`send_event`] and [`PendingPublish::stored`], its two halves, for a batch.

use std::future::IntoFuture as _;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use tracehop_telemetry::record_failure;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::headers::{self, MESSAGE_ID, PAYLOAD_TYPE};
use crate::spans;

/// Why an event was not stored by its stream. Either way, it must be
/// published again (the message id makes that safe).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("failed to send event {event_id} on {subject}")]
    Send {
        subject: String,
        event_id: String,
        #[source]
        source: jetstream::context::PublishError,
    },
    #[error("the stream did not acknowledge event {event_id} on {subject}")]
    Ack {
        subject: String,
        event_id: String,
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// What the stream said about a stored event.
#[derive(Clone, Debug)]
pub struct Published {
    /// The event's sequence in the stream.
    pub sequence: u64,
    /// True when the stream already had this message id (a re-publish).
    pub duplicate: bool,
}

/// Publishes an already-encoded event on `subject` with `Nats-Msg-Id` =
/// `event_id`, in a PRODUCER span `publish <subject>` that is a child of
/// `parent` (the context of the work that decided the event, possibly long
/// gone), and waits for the stream's ack: only an ack means stored.
pub async fn publish_event(
    js: &jetstream::Context,
    subject: &str,
    event_id: &str,
    payload_type: &str,
    payload: Vec<u8>,
    parent: opentelemetry::Context,
) -> Result<Published, PublishError> {
    send_event(js, subject, event_id, payload_type, payload, parent).await?.stored().await
}

/// An event sent to its stream whose ack has not been awaited yet: sending
/// a batch first and awaiting the acks after keeps one round trip per batch
/// instead of one per event, with the events in the stream in the order they
/// were sent.
#[must_use = "only the stream's ack means the event is stored"]
pub struct PendingPublish {
    span: tracing::Span,
    subject: String,
    event_id: String,
    started: std::time::Instant,
    ack: PublishAckFuture,
}

impl PendingPublish {
    /// Waits for the stream's ack, and ends the PRODUCER span with it.
    pub async fn stored(self) -> Result<Published, PublishError> {
        let Self { span, subject, event_id, started, ack } = self;
        let result = ack
            .into_future()
            .instrument(span.clone())
            .await
            .map(|ack| Published { sequence: ack.sequence, duplicate: ack.duplicate })
            .map_err(|source| PublishError::Ack { subject: subject.clone(), event_id, source });
        match &result {
            Ok(published) => {
                span.record("messaging.nats.stream.sequence", published.sequence as i64);
                span.record("messaging.nats.duplicate", published.duplicate);
            }
            Err(error) => record_failure(&span, "publish_failed", &tracehop_telemetry::error_chain(error)),
        }
        record_duration(started, &subject, result.is_err());
        result
    }
}

/// The publish's `messaging.client.operation.duration`, from its send to its
/// ack (or failure).
fn record_duration(started: std::time::Instant, subject: &str, failed: bool) {
    tracehop_telemetry::metrics::messaging_client_operation(
        started.elapsed(),
        &spans::operation("publish", spans::operation_type::SEND, subject, None, failed.then_some("publish_failed")),
    );
}

/// The first half of [`publish_event`]: sends the event in its PRODUCER
/// span and returns without waiting for the ack.
pub async fn send_event(
    js: &jetstream::Context,
    subject: &str,
    event_id: &str,
    payload_type: &str,
    payload: Vec<u8>,
    parent: opentelemetry::Context,
) -> Result<PendingPublish, PublishError> {
    let endpoint = spans::endpoint();
    let span = tracing::info_span!(
        "nats.publish",
        otel.name = %format!("publish {subject}"),
        otel.kind = "producer",
        messaging.system = spans::SYSTEM,
        messaging.operation.type = spans::operation_type::SEND,
        messaging.operation.name = "publish",
        messaging.destination.name = %subject,
        messaging.client.id = %endpoint.client_id,
        messaging.message.id = Some(event_id).filter(|id| !id.is_empty()),
        messaging.message.body.size = payload.len() as i64,
        server.address = %endpoint.address,
        server.port = i64::from(endpoint.port),
        messaging.nats.message.payload_type = %payload_type,
        messaging.nats.stream.sequence = tracing::field::Empty,
        messaging.nats.duplicate = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    let started = std::time::Instant::now();
    let sent = async {
        let mut message_headers = HeaderMap::new();
        headers::inject(&tracing::Span::current().context(), &mut message_headers);
        message_headers.insert(MESSAGE_ID, event_id);
        message_headers.insert(PAYLOAD_TYPE, payload_type);
        js.publish_with_headers(subject.to_string(), message_headers, payload.into()).await
    }
    .instrument(span.clone())
    .await;
    match sent {
        Ok(ack) => {
            Ok(PendingPublish { span, subject: subject.to_string(), event_id: event_id.to_string(), started, ack })
        }
        Err(source) => {
            let error = PublishError::Send { subject: subject.to_string(), event_id: event_id.to_string(), source };
            record_failure(&span, "publish_failed", &tracehop_telemetry::error_chain(&error));
            record_duration(started, subject, true);
            Err(error)
        }
    }
}
