//! [`request`]: a traced NATS request with a timeout and a typed reply.

use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, HeaderMap};
use prost::{Message, Name};
use tracehop_proto::Reply;
use tracehop_proto::v1::{Error as WireError, ErrorCode};
use tracehop_telemetry::{Outcome, mark_failed, record_failure, record_outcome};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::headers::{self, PAYLOAD_TYPE};
use crate::spans;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nobody listens on the subject: the service is down.
    #[error("no service answers on {subject}")]
    NoResponders { subject: String },
    /// The service did not answer in time; the outcome is unknown.
    #[error("{subject} did not answer within {timeout:?}")]
    TimedOut { subject: String, timeout: Duration },
    /// The connection to NATS failed.
    #[error("request on {subject} failed: {reason}")]
    Transport { subject: String, reason: String },
    /// The answer is not the expected protobuf message.
    #[error("the reply on {subject} is not a valid {expected}")]
    BadReply { subject: String, expected: String },
    /// The service answered with a typed error.
    #[error("{}", .0.message)]
    Remote(WireError),
}

impl RequestError {
    /// The error code to pass on to this service's own caller.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::NoResponders { .. } | RequestError::TimedOut { .. } | RequestError::Transport { .. } => {
                ErrorCode::Unavailable
            }
            RequestError::BadReply { .. } => ErrorCode::Internal,
            RequestError::Remote(error) => error.kind(),
        }
    }

    /// A short, stable name for `error.type` on spans.
    pub fn error_type(&self) -> &'static str {
        match self {
            RequestError::NoResponders { .. } => "no_responders",
            RequestError::TimedOut { .. } => "timeout",
            RequestError::Transport { .. } => "transport",
            RequestError::BadReply { .. } => "bad_reply",
            RequestError::Remote(error) => error.kind().short_name(),
        }
    }

    /// The error as it goes into this service's own reply.
    pub fn to_wire(&self) -> WireError {
        match self {
            RequestError::Remote(error) => error.clone(),
            other => WireError::new(other.code(), other.to_string()),
        }
    }
}

/// Sends `request` on `subject` and waits up to `timeout` for the reply, in a
/// CLIENT span `send <subject>` whose context travels in the headers. A reply
/// that carries an error comes back as [`RequestError::Remote`], and the span
/// is marked failed either way: for the caller, the call did not succeed.
pub async fn request<Req, Rep>(
    client: &Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, RequestError>
where
    Req: Message + Name,
    Rep: Reply,
{
    let reply: Rep = request_reply(client, subject, request, timeout).await?;
    match reply.error() {
        Some(error) => Err(RequestError::Remote(error.clone())),
        None => Ok(reply),
    }
}

/// Like [`request()`], but a reply that carries an error is returned as it
/// is, for callers that need the rest of a failed reply (the order that was
/// created and then failed). The span is still marked failed.
pub async fn request_reply<Req, Rep>(
    client: &Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, RequestError>
where
    Req: Message + Name,
    Rep: Reply,
{
    let payload = request.encode_to_vec();
    let endpoint = spans::endpoint();
    // The kind is CLIENT, not the PRODUCER that the messaging conventions
    // give a one-way send: the caller waits for the answer, as in an RPC.
    let span = tracing::info_span!(
        "nats.request",
        otel.name = %format!("send {subject}"),
        otel.kind = "client",
        messaging.system = spans::SYSTEM,
        messaging.operation.type = spans::operation_type::SEND,
        messaging.operation.name = "send",
        messaging.destination.name = %subject,
        messaging.client.id = %endpoint.client_id,
        messaging.message.body.size = payload.len() as i64,
        messaging.nats.message.payload_type = %Req::full_name(),
        server.address = %endpoint.address,
        server.port = i64::from(endpoint.port),
    );
    let started = std::time::Instant::now();
    let outcome = async {
        let mut message_headers = HeaderMap::new();
        headers::inject(&tracing::Span::current().context(), &mut message_headers);
        message_headers.insert(PAYLOAD_TYPE, Req::full_name().as_str());
        let outgoing =
            async_nats::Request::new().payload(payload.into()).headers(message_headers).timeout(Some(timeout));
        let message = client.send_request(subject.to_string(), outgoing).await.map_err(|error| match error.kind() {
            RequestErrorKind::NoResponders => RequestError::NoResponders { subject: subject.to_string() },
            RequestErrorKind::TimedOut => RequestError::TimedOut { subject: subject.to_string(), timeout },
            _ => RequestError::Transport { subject: subject.to_string(), reason: error.to_string() },
        })?;
        Rep::decode(message.payload.as_ref())
            .map_err(|_| RequestError::BadReply { subject: subject.to_string(), expected: Rep::full_name() })
    }
    .instrument(span.clone())
    .await;
    // A transport failure happened here; an error reply was recorded by the
    // side that gave it, and only fails this call.
    let error_type = match &outcome {
        Err(error) => {
            record_failure(&span, error.error_type(), &error.to_string());
            record_outcome(&span, Outcome::Failed, None);
            Some(error.error_type())
        }
        Ok(reply) => match reply.error() {
            Some(error) => {
                let code = error.kind();
                mark_failed(&span, code.short_name(), &error.message);
                let outcome = if code.is_fault() { Outcome::Failed } else { Outcome::Rejected };
                record_outcome(&span, outcome, Some(code.short_name()));
                Some(code.short_name())
            }
            None => None,
        },
    };
    tracehop_telemetry::metrics::messaging_client_operation(
        started.elapsed(),
        &spans::operation("send", spans::operation_type::SEND, subject, None, error_type),
    );
    outcome
}

/// Whether a responder answers on `subject` within `timeout`: a readiness
/// probe that the responder answers without running its handler, so it
/// leaves no span and no effect.
pub async fn probe(client: &Client, subject: &str, timeout: Duration) -> bool {
    let mut message_headers = HeaderMap::new();
    message_headers.insert(headers::PROBE, "1");
    let outgoing = async_nats::Request::new().headers(message_headers).timeout(Some(timeout));
    client.send_request(subject.to_string(), outgoing).await.is_ok()
}
