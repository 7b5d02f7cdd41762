//! The responder side of request/reply, one SERVER span per request:
//! [`Responder`] for a service's handlers, [`serve`] underneath.

use std::future::Future;

use async_nats::{Client, Message};
use futures::StreamExt as _;
use prost::Name;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracehop_proto::Reply;
use tracehop_proto::v1::{Error as WireError, ErrorCode};
use tracehop_telemetry::{Outcome, mark_failed, record_failure, record_outcome};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::headers;
use crate::spans;

/// Largest request payload a responder accepts; a bigger one is answered with
/// an error and never decoded.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Decides, per request and before its handler runs, whether the request is
/// withheld: received and never answered, as by a service that hangs. It
/// may annotate the request's SERVER span with why. The live scenario
/// `payment-down` is one: the caller sees a real missing reply.
pub type Withhold = std::sync::Arc<dyn Fn(&tracing::Span) -> bool + Send + Sync>;

/// A service's responders: one NATS connection, one queue group, one
/// shutdown signal, any number of subjects.
#[derive(Clone)]
pub struct Responder {
    client: Client,
    queue_group: String,
    shutdown: CancellationToken,
}

impl Responder {
    /// Responders in `queue_group` (the service's name) that stop on `shutdown`.
    pub fn new(client: Client, queue_group: impl Into<String>, shutdown: CancellationToken) -> Self {
        Self { client, queue_group: queue_group.into(), shutdown }
    }

    /// Answers requests on `subject` with `handler(state.clone(), request)`
    /// until shutdown; see [`serve`].
    pub async fn serve<S, Req, Rep, H, Fut>(
        &self,
        subject: &str,
        state: S,
        handler: H,
    ) -> Result<(), async_nats::SubscribeError>
    where
        S: Clone + Send + Sync + 'static,
        Req: prost::Message + Name + Default + 'static,
        Rep: Reply,
        H: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Rep, WireError>> + Send + 'static,
    {
        serve(
            self.client.clone(),
            subject,
            &self.queue_group,
            move |request| handler(state.clone(), request),
            self.shutdown.clone(),
        )
        .await
    }

    /// Like [`Responder::serve`], but a request for which `withhold` says
    /// so is received and never answered.
    pub async fn serve_withholding<S, Req, Rep, H, Fut>(
        &self,
        subject: &str,
        state: S,
        handler: H,
        withhold: Withhold,
    ) -> Result<(), async_nats::SubscribeError>
    where
        S: Clone + Send + Sync + 'static,
        Req: prost::Message + Name + Default + 'static,
        Rep: Reply,
        H: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Rep, WireError>> + Send + 'static,
    {
        serve_inner(
            self.client.clone(),
            subject,
            &self.queue_group,
            move |request| handler(state.clone(), request),
            Some(withhold),
            self.shutdown.clone(),
        )
        .await
    }
}

/// Answers requests on `subject` (in `queue_group`, so that instances share the
/// load) until `shutdown` fires, then drains: requests already received are
/// answered before it returns.
///
/// Each request runs in its own task, in a SERVER span `process <subject>`
/// that continues the caller's trace. A payload that does not decode as `Req`,
/// or is too large, is answered with `INVALID_ARGUMENT`; the handler never
/// sees it.
///
/// The span says what the answer was (`tracehop.outcome`,
/// `tracehop.error.code`); it is ERROR only when the answer is a fault of
/// this side (internal, unavailable), never for an expected business
/// answer (declined, out of stock, invalid), which is the caller's to judge.
pub async fn serve<Req, Rep, H, Fut>(
    client: Client,
    subject: &str,
    queue_group: &str,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError>
where
    Req: prost::Message + Name + Default + 'static,
    Rep: Reply,
    H: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rep, WireError>> + Send + 'static,
{
    serve_inner(client, subject, queue_group, handler, None, shutdown).await
}

async fn serve_inner<Req, Rep, H, Fut>(
    client: Client,
    subject: &str,
    queue_group: &str,
    handler: H,
    withhold: Option<Withhold>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError>
where
    Req: prost::Message + Name + Default + 'static,
    Rep: Reply,
    H: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rep, WireError>> + Send + 'static,
{
    let mut subscriber = client.queue_subscribe(subject.to_string(), queue_group.to_string()).await?;
    let tasks = TaskTracker::new();
    let mut draining = false;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                if subscriber.drain().await.is_err() {
                    break;
                }
                continue;
            }
            message = subscriber.next() => message,
        };
        let Some(message) = message else { break };
        tasks.spawn(answer(client.clone(), message, handler.clone(), withhold.clone()));
    }
    tasks.close();
    tasks.wait().await;
    let _ = client.flush().await;
    Ok(())
}

async fn answer<Req, Rep, H, Fut>(client: Client, message: Message, handler: H, withhold: Option<Withhold>)
where
    Req: prost::Message + Name + Default,
    Rep: Reply,
    H: Fn(Req) -> Fut,
    Fut: Future<Output = Result<Rep, WireError>>,
{
    let Some(reply_to) = message.reply.clone() else {
        // A publish without a reply subject is not a request: nobody waits.
        tracing::warn!(subject = %message.subject, "ignored a message without a reply subject");
        return;
    };
    if headers::get(message.headers.as_ref(), headers::PROBE).is_some() {
        let _ = client.publish(reply_to, Rep::default().encode_to_vec().into()).await;
        return;
    }
    let subject = message.subject.as_str();
    let endpoint = spans::endpoint();
    // SERVER, not the CONSUMER that the messaging conventions give a
    // `process` span: the caller waits for this answer (see README, "Span
    // kinds").
    let span = tracing::info_span!(
        "nats.serve",
        otel.name = %format!("process {subject}"),
        otel.kind = "server",
        messaging.system = spans::SYSTEM,
        messaging.operation.type = spans::operation_type::PROCESS,
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.client.id = %endpoint.client_id,
        messaging.message.body.size = message.payload.len() as i64,
        messaging.nats.message.payload_type = %Req::full_name(),
        server.address = %endpoint.address,
        server.port = i64::from(endpoint.port),
    );
    let started = std::time::Instant::now();
    let _ = span.set_parent(headers::extract(message.headers.as_ref()));
    if withhold.is_some_and(|withhold| withhold(&span)) {
        // A hung service: the request was received, and no reply will come.
        span.set_attribute("tracehop.reply.withheld", true);
        return;
    }

    let reply = async {
        let request = if message.payload.len() > MAX_REQUEST_BYTES {
            Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("request of {} bytes is over the limit of {MAX_REQUEST_BYTES}", message.payload.len()),
            ))
        } else {
            Req::decode(message.payload.as_ref()).map_err(|_| {
                WireError::new(ErrorCode::InvalidArgument, format!("payload is not a valid {}", Req::full_name()))
            })
        };
        match request {
            Ok(request) => handler(request).await.unwrap_or_else(Rep::from_error),
            Err(error) => Rep::from_error(error),
        }
    }
    .instrument(span.clone())
    .await;

    let mut error_type = None;
    match reply.error().map(|error| (error.kind(), error)) {
        None => record_outcome(&span, Outcome::Ok, None),
        Some((code, error)) if code.is_fault() => {
            // The fault itself was recorded where it happened (a statement,
            // a call); this span says that the request failed because of it.
            mark_failed(&span, code.short_name(), &error.message);
            record_outcome(&span, Outcome::Failed, Some(code.short_name()));
            error_type = Some(code.short_name());
        }
        Some((code, _)) => record_outcome(&span, Outcome::Rejected, Some(code.short_name())),
    }
    let payload = reply.encode_to_vec();
    if let Err(error) = client.publish(reply_to, payload.into()).await {
        record_failure(&span, "reply_failed", &format!("failed to send the reply: {error}"));
        error_type = Some("reply_failed");
    }
    tracehop_telemetry::metrics::messaging_process(
        started.elapsed(),
        &spans::operation("process", spans::operation_type::PROCESS, subject, None, error_type),
    );
    drop(span);
}
