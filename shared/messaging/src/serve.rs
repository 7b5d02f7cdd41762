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
use tracehop_telemetry::record_failure;
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
/// or is too large, is answered with `INVALID_ARGUMENT` and a failure span;
/// the handler never sees it.
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
    let span = tracing::info_span!(
        "nats.serve",
        otel.name = %format!("process {subject}"),
        otel.kind = "server",
        messaging.system = spans::SYSTEM,
        messaging.operation.type = "process",
        messaging.operation.name = "reply",
        messaging.destination.name = %subject,
        messaging.message.body.size = message.payload.len() as i64,
        messaging.nats.message.payload_type = %Req::full_name(),
    );
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

    if let Some(error) = reply.error() {
        record_failure(&span, error.kind().short_name(), &error.message);
    }
    let payload = reply.encode_to_vec();
    if let Err(error) = client.publish(reply_to, payload.into()).await {
        record_failure(&span, "reply_failed", &format!("failed to send the reply: {error}"));
    }
    drop(span);
}
