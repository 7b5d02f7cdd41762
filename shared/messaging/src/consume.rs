//! [`run_consumer`]: a traced JetStream durable consumer.
//!
//! Each delivery is processed in a CONSUMER span `process <subject>` whose
//! parent is the producer's context and which also links to it, so the
//! consumer shows up inside the order's trace and can still be told apart
//! from a synchronous child. A redelivery is a new span carrying its delivery
//! count.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use opentelemetry::trace::TraceContextExt as _;
use prost::Name;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracehop_telemetry::{Outcome, mark_failed, record_failure, record_outcome};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::headers::{self, MESSAGE_ID, PAYLOAD_TYPE};
use crate::spans;
use crate::topology::{ConsumerSpec, TopologyError};

/// One decoded delivery, handed to the consumer's handler.
#[derive(Clone, Debug)]
pub struct Delivery<E> {
    pub event: E,
    pub subject: String,
    /// `Nats-Msg-Id`: the event id, the key for doing nothing twice.
    pub message_id: Option<String>,
    /// 1 on first delivery.
    pub delivery_count: i64,
    pub stream_sequence: u64,
}

/// Any error, kept whole so that its chain of sources survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A message for people (free of data) with the error that caused it, kept
/// as its source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub message: String,
    #[source]
    pub source: BoxError,
}

impl Failure {
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self { message: message.into(), source: source.into() }
    }
}

/// How the handler failed. Each wraps the handler's own error (a `String`
/// converts with `.into()`), so that its sources are kept.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A passing failure (database down): the message is delivered again later.
    #[error(transparent)]
    Retry(BoxError),
    /// The message can never succeed: it is dead-lettered at once, not retried.
    #[error(transparent)]
    Reject(BoxError),
}

impl ProcessError {
    /// The reason for spans and dead letters: the error's own message
    /// only. Handlers word their errors free of data, while a source (a
    /// database error quoting a row) may not be; it stays reachable through
    /// [`std::error::Error::source`] for whoever needs it.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Largest event payload a consumer decodes; a bigger one is dead-lettered.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Processes the deliveries of `spec`'s durable consumer with `handler`, up
/// to `spec.max_in_flight` at a time, until
/// `shutdown` fires; the messages in hand are finished first. Returns an
/// error only when the consumer does not exist.
pub async fn run_consumer<E, H, Fut>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), TopologyError>
where
    E: prost::Message + Name + Default,
    H: Fn(Delivery<E>) -> Fut,
    Fut: Future<Output = Result<(), ProcessError>>,
{
    run_consumer_pausable(js, spec, handler, None, shutdown).await
}

/// Like [`run_consumer`], but while `paused` holds true the consumer stops
/// pulling (it finishes the messages in hand, then holds no pull request),
/// as a consumer that is alive but stuck: its events wait in the stream,
/// and the sentinel sees it make no progress. The live scenario
/// `analytics-down` is one.
pub async fn run_consumer_pausable<E, H, Fut>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    mut paused: Option<watch::Receiver<bool>>,
    shutdown: CancellationToken,
) -> Result<(), TopologyError>
where
    E: prost::Message + Name + Default,
    H: Fn(Delivery<E>) -> Fut,
    Fut: Future<Output = Result<(), ProcessError>>,
{
    spec.ensure(&js).await?;
    while !shutdown.is_cancelled() {
        if let Some(receiver) = paused.as_mut()
            && *receiver.borrow_and_update()
        {
            tracing::info!(consumer = spec.durable, "consumption paused");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = receiver.changed() => if changed.is_err() { paused = None },
            }
            continue;
        }
        let consumer: consumer::PullConsumer = match js.get_stream(spec.stream).await {
            Ok(stream) => match stream.get_consumer(spec.durable).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(consumer = spec.durable, %error, "consumer not available, retrying");
                    pause(&shutdown).await;
                    continue;
                }
            },
            Err(error) => {
                tracing::warn!(stream = spec.stream, %error, "stream not available, retrying");
                pause(&shutdown).await;
                continue;
            }
        };
        let pull = consumer.stream().max_messages_per_batch(spec.max_in_flight.max(1)).messages().await;
        let mut messages = match pull {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(consumer = spec.durable, %error, "failed to pull, retrying");
                pause(&shutdown).await;
                continue;
            }
        };
        let mut in_flight = FuturesUnordered::new();
        loop {
            // Some(paused now), or None once the switch is gone for good.
            let pause_signal = async {
                match paused.as_mut() {
                    Some(receiver) => match receiver.changed().await {
                        Ok(()) => Some(*receiver.borrow()),
                        Err(_) => None,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                signal = pause_signal => match signal {
                    Some(true) => break,
                    Some(false) => {}
                    None => paused = None,
                },
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = messages.next(), if in_flight.len() < spec.max_in_flight.max(1) => match next {
                    Some(Ok(message)) => in_flight.push(process(&js, &spec, message, &handler)),
                    Some(Err(error)) => {
                        // Missed heartbeats (a NATS restart), a deleted
                        // consumer: start over with a fresh pull stream
                        // rather than trust this one to recover by itself.
                        tracing::info!(consumer = spec.durable, %error, "pull stream failed, pulling again");
                        break;
                    }
                    None => break,
                },
            }
        }
        // The old pull stream goes first, so that it stops asking for
        // messages; then the messages in hand are finished.
        drop(messages);
        while in_flight.next().await.is_some() {}
    }
    Ok(())
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

async fn process<E, H, Fut>(js: &jetstream::Context, spec: &ConsumerSpec, message: jetstream::Message, handler: &H)
where
    E: prost::Message + Name + Default,
    H: Fn(Delivery<E>) -> Fut,
    Fut: Future<Output = Result<(), ProcessError>>,
{
    let (delivery_count, stream_sequence) =
        message.info().map(|info| (info.delivered, info.stream_sequence)).unwrap_or((1, 0));
    let subject = message.subject.to_string();
    let message_id = headers::get(message.headers.as_ref(), MESSAGE_ID).map(str::to_string);
    let span = consumer_span(
        None,
        &subject,
        spec.durable,
        message_id.as_deref(),
        message.payload.len(),
        delivery_count,
        stream_sequence,
    );
    let producer = headers::extract(message.headers.as_ref());
    let producer_span = producer.span().span_context().clone();
    let _ = span.set_parent(producer);
    span.add_link(producer_span);

    let started = std::time::Instant::now();
    let (outcome, decoded) = match decode_event::<E>(&message) {
        Ok(event) => {
            let delivery = Delivery { event, subject: subject.clone(), message_id, delivery_count, stream_sequence };
            (handler(delivery).instrument(span.clone()).await, true)
        }
        Err(rejected) => (Err(rejected), false),
    };
    // A message that cannot be decoded fails here; a handler's failure was
    // recorded where it happened (a statement, a call), and only fails this
    // delivery.
    let record = |error_type: &str, reason: &str| {
        if decoded {
            mark_failed(&span, error_type, reason);
        } else {
            record_failure(&span, error_type, reason);
        }
        record_outcome(&span, Outcome::Failed, None);
    };
    let last_attempt = delivery_count >= spec.max_deliver;
    let mut error_type = None;
    let ack = match &outcome {
        Ok(()) => {
            record_outcome(&span, Outcome::Ok, None);
            AckKind::Ack
        }
        Err(error @ ProcessError::Retry(_)) if !last_attempt => {
            record("retry", &error.reason());
            error_type = Some("retry");
            AckKind::Nak(Some(spec.retry_delay(delivery_count)))
        }
        Err(error) => {
            let (kind, reason) = match error {
                ProcessError::Reject(_) => ("rejected", error.reason()),
                ProcessError::Retry(_) => {
                    ("max_deliveries", format!("gave up after {delivery_count} deliveries: {}", error.reason()))
                }
            };
            record(kind, &reason);
            error_type = Some(kind);
            match dead_letter(js, spec, &message, &reason).instrument(span.clone()).await {
                // Stored in the dead-letter stream: this consumer is done with it.
                Ok(()) => {
                    span.set_attribute(DEAD_LETTERED, true);
                    AckKind::Term
                }
                // Not stored: keep it in this stream, to be tried again.
                Err(_) => AckKind::Nak(Some(spec.retry_delay(delivery_count))),
            }
        }
    };
    tracehop_telemetry::metrics::messaging_process(
        started.elapsed(),
        &spans::operation("process", spans::operation_type::PROCESS, &subject, Some(spec.durable), error_type),
    );
    if let Err(error) = message.ack_with(ack).instrument(span.clone()).await {
        // The server redelivers after ack_wait; the handler's idempotency
        // makes that harmless.
        tracing::warn!(parent: &span, consumer = spec.durable, %error, "failed to acknowledge a delivery");
    }
}

/// `tracehop.dead_lettered`: on a CONSUMER span that gave a message up, true
/// once its dead letter is stored (the `send deadletter.<consumer>` span).
pub const DEAD_LETTERED: &str = "tracehop.dead_lettered";

/// The CONSUMER span `process <subject>` of one delivery, after the
/// messaging conventions. `parent` is its tracing parent: none for a live
/// delivery, whose OpenTelemetry parent the caller sets to the producer; the
/// replay's root for a replayed one. The fields a replay or a redrive adds
/// are declared here, empty, for them to record.
pub(crate) fn consumer_span(
    parent: Option<&tracing::Span>,
    subject: &str,
    consumer: &str,
    message_id: Option<&str>,
    body_size: usize,
    delivery_count: i64,
    stream_sequence: u64,
) -> tracing::Span {
    let endpoint = spans::endpoint();
    tracing::info_span!(
        parent: parent.and_then(tracing::Span::id),
        "nats.consume",
        otel.name = %format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = spans::SYSTEM,
        messaging.operation.type = spans::operation_type::PROCESS,
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = consumer,
        messaging.client.id = %endpoint.client_id,
        messaging.message.id = message_id,
        messaging.message.body.size = body_size as i64,
        server.address = %endpoint.address,
        server.port = i64::from(endpoint.port),
        messaging.nats.message.delivery_count = delivery_count,
        messaging.nats.stream.sequence = stream_sequence as i64,
        tracehop.replay = tracing::field::Empty,
        tracehop.redrive = tracing::field::Empty,
        tracehop.dead_letter.sequence = tracing::field::Empty,
        tracehop.replay.outcome = tracing::field::Empty,
    )
}

/// Decodes an event's payload, or says why it never can: too large, of
/// another type (by its payload type header), or not a valid `E`. The one
/// rule for live consumption, replay and redrive.
pub(crate) fn decode_event<E: prost::Message + Name + Default>(
    message: &jetstream::Message,
) -> Result<E, ProcessError> {
    decode_payload(message.headers.as_ref(), &message.payload)
}

/// Decodes an event from its headers and payload; what cannot be decoded is
/// rejected (dead-lettered), with a reason that never quotes the payload.
pub fn decode_payload<E: prost::Message + Name + Default>(
    message_headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<E, ProcessError> {
    let expected_type = E::full_name();
    if payload.len() > MAX_EVENT_BYTES {
        return Err(ProcessError::Reject(
            format!("payload of {} bytes is over the limit of {MAX_EVENT_BYTES}", payload.len()).into(),
        ));
    }
    match headers::get(message_headers, PAYLOAD_TYPE) {
        Some(actual) if actual != expected_type => {
            Err(ProcessError::Reject(format!("payload type {actual} is not {expected_type}").into()))
        }
        _ => E::decode(payload)
            .map_err(|_| ProcessError::Reject(format!("payload is not a valid {expected_type}").into())),
    }
}

/// A message a consumer gave up on, as the dead-letter stream keeps it.
#[derive(Clone, Debug)]
pub struct DeadLetter<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    /// The subject it was published on.
    pub subject: &'a str,
    /// Its sequence in `stream`.
    pub sequence: u64,
    /// How many times it was delivered.
    pub delivered: i64,
    /// Its original headers, the producer's trace context included.
    pub headers: Option<&'a async_nats::HeaderMap>,
    pub payload: bytes::Bytes,
}

async fn dead_letter(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), crate::PublishError> {
    let info = message.info().ok();
    let letter = DeadLetter {
        stream: spec.stream,
        consumer: spec.durable,
        subject: message.subject.as_str(),
        sequence: info.as_ref().map_or(0, |info| info.stream_sequence),
        delivered: info.as_ref().map_or(1, |info| info.delivered),
        headers: message.headers.as_ref(),
        payload: message.payload.clone(),
    };
    store_dead_letter(js, &letter, reason).await
}

/// Publishes a dead letter with its original headers (the producer's trace
/// context included, so that a redrive continues the original trace) plus
/// the reason, in a span `send deadletter.<consumer>` of its own: a child of
/// the current span (the delivery that gave up, in the original trace),
/// linked to the original message's producer, and ERROR only when the dead
/// letter could not be stored. Its kind is CLIENT, as the messaging
/// conventions give a send whose context is not the message's creation
/// context. Its message id is derived from stream, consumer and sequence,
/// so storing it twice (a retry, or the sentinel acting on a max-deliveries
/// advisory) keeps one.
pub async fn store_dead_letter(
    js: &jetstream::Context,
    letter: &DeadLetter<'_>,
    reason: &str,
) -> Result<(), crate::PublishError> {
    let (sequence, delivered) = (letter.sequence, letter.delivered);
    let subject = crate::topology::dead_letter_subject(letter.consumer);
    let endpoint = spans::endpoint();
    let span = tracing::info_span!(
        "nats.dead_letter",
        otel.name = %format!("send {subject}"),
        otel.kind = "client",
        messaging.system = spans::SYSTEM,
        messaging.operation.type = spans::operation_type::SEND,
        messaging.operation.name = "send",
        messaging.destination.name = %subject,
        messaging.client.id = %endpoint.client_id,
        messaging.message.body.size = letter.payload.len() as i64,
        messaging.nats.stream.sequence = sequence as i64,
        messaging.nats.message.delivery_count = delivered,
        server.address = %endpoint.address,
        server.port = i64::from(endpoint.port),
        tracehop.dead_letter.consumer = letter.consumer,
        tracehop.dead_letter.original_subject = letter.subject,
        tracehop.dead_letter.reason = %reason,
    );
    let original = headers::extract(letter.headers);
    span.add_link(original.span().span_context().clone());
    let started = std::time::Instant::now();
    let mut dead = letter.headers.map(headers::scrubbed).unwrap_or_default();
    let original_id = headers::get(letter.headers, MESSAGE_ID).unwrap_or_default().to_string();
    let header = |value: &str| {
        let value = tracehop_telemetry::redact::redact(value);
        <async_nats::header::HeaderValue as std::str::FromStr>::from_str(&value.replace(['\r', '\n'], " ")).ok()
    };
    for (name, value) in [
        (headers::DEAD_LETTER_REASON, header(reason)),
        (headers::DEAD_LETTER_CONSUMER, header(letter.consumer)),
        (headers::ORIGINAL_SUBJECT, header(letter.subject)),
        (headers::ORIGINAL_SEQUENCE, header(&sequence.to_string())),
        (headers::ORIGINAL_MESSAGE_ID, header(&original_id)),
        (headers::DELIVERY_COUNT, header(&delivered.to_string())),
        // One dead letter per consumer and stream position, however often
        // this is retried.
        (MESSAGE_ID, header(&format!("{}-{}-{sequence}", letter.stream, letter.consumer))),
    ] {
        if let Some(value) = value {
            dead.insert(name, value);
        }
    }
    let result = async {
        // The event stays where it is, under its stream's retention and
        // permissions; the dead letter points at it (stream, sequence) and
        // so never holds a customer's e-mail address or any other payload.
        // Only a message with no stream position keeps its payload here.
        let payload = if letter.sequence > 0 { bytes::Bytes::new() } else { letter.payload.clone() };
        let ack = js.publish_with_headers(subject.clone(), dead, payload).await.map_err(|source| {
            crate::PublishError::Send { subject: subject.clone(), event_id: original_id.clone(), source }
        })?;
        ack.await.map_err(|source| crate::PublishError::Ack {
            subject: subject.clone(),
            event_id: original_id.clone(),
            source,
        })?;
        Ok(())
    }
    .instrument(span.clone())
    .await;
    if let Err(error) = &result {
        record_failure(&span, "publish_failed", &tracehop_telemetry::error_chain(error));
        tracing::warn!(parent: &span, consumer = letter.consumer, error = %tracehop_telemetry::error_chain(error), "failed to store a dead letter; it stays in the stream");
    }
    tracehop_telemetry::metrics::messaging_client_operation(
        started.elapsed(),
        &spans::operation(
            "send",
            spans::operation_type::SEND,
            &subject,
            None,
            result.as_ref().err().map(|_| "publish_failed"),
        ),
    );
    result
}
