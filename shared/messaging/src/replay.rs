//! Replaying a stream, and redriving dead letters, through a consumer's own
//! handler, inside the consumer's own service (it owns the handler and the
//! database).
//!
//! A service that implements [`Projection`] for its handler answers
//! `svc.<consumer>.replay` with [`serve`]; the `tracehop replay` command
//! calls it with [`call`]. Two modes:
//!
//! - **Replay** walks the stream from a sequence or a point in time with an
//!   ordered (ephemeral) consumer filtered like the durable, and runs the
//!   handler on each event in a CONSUMER span `process <subject>` whose
//!   parent is a root span `replay <consumer>` (one new trace per request)
//!   and which links to the event's original producer span; the spans carry
//!   `tracehop.replay = true`. Events already applied are skipped by the
//!   handler's own idempotency (the event id is recorded with the effect).
//!   With `rebuild`, the projection is first reset ([`Projection::reset`])
//!   and the whole stream is replayed into it.
//! - **Redrive** reads the consumer's dead letters (`deadletter.<consumer>`)
//!   and runs the handler on each in a CONSUMER span parented by the
//!   original producer context, so that it lands in the event's original
//!   trace after the dead-letter span, with `tracehop.redrive = true`. A dead
//!   letter that succeeds is deleted from the DEADLETTER stream, so a second
//!   redrive finds nothing; one that fails stays.
//!
//! Both run beside the live durable consumer: an event can be handled by
//! both at once, which the handler's idempotency makes harmless. How a reset
//! stays consistent with live processing is up to [`Projection::reset`].
//!
//! While it runs, the service publishes [`ReplayProgress`] to the request's
//! `progress_subject` every [`PROGRESS_EVERY`] messages and once at the end.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::Client;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use opentelemetry::trace::TraceContextExt as _;
use prost::{Message as _, Name};
use tokio_util::sync::CancellationToken;
use tracehop_proto::subjects;
use tracehop_proto::v1::{Error as WireError, ErrorCode};
use tracehop_telemetry::{record_failure, trace_id_of};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use tracehop_proto::v1::replay_request::Mode as WireMode;
use tracehop_proto::v1::{Rebuild, RedriveDeadLetters};
pub use tracehop_proto::v1::{ReplayProgress, ReplayReply, ReplayRequest};

use crate::consume::{Delivery, ProcessError, consumer_span, decode_event};
use crate::headers::{self, MESSAGE_ID};
use crate::request::{RequestError, request_reply};
use crate::serve::Responder;
use crate::spans;
use crate::topology::ConsumerSpec;
use crate::topology::{DEAD_LETTER_STREAM, dead_letter_subject};

/// Progress is published after every this many messages.
pub const PROGRESS_EVERY: u64 = 100;

/// A replay gives up when the stream delivers nothing for this long although
/// it said more was pending.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handler did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The effect was applied now.
    Applied,
    /// The effect was already there (its idempotency key matched), or the
    /// event calls for none: nothing changed.
    Skipped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
        }
    }
}

/// What a replay request asks for, validated once, where the request is
/// received ([`Mode::of`]); a caller builds a valid one with
/// [`Mode::request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replay the stream from this sequence (1 or more).
    FromSequence(u64),
    /// Replay the events stored within this long (more than zero).
    Since(Duration),
    /// Reset the projection, then replay the whole stream into it.
    Rebuild,
    /// Redrive the consumer's dead letters.
    Redrive,
}

/// Why a replay request is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("the request names no consumer")]
    NoConsumer,
    #[error("the request says neither where to start nor to rebuild or redrive")]
    NoMode,
    #[error("stream sequences start at 1, not 0")]
    SequenceZero,
    #[error("a replay window must be longer than zero")]
    EmptyWindow,
}

impl Mode {
    /// The validated mode of `request`.
    pub fn of(request: &ReplayRequest) -> Result<Mode, InvalidRequest> {
        if request.consumer.trim().is_empty() {
            return Err(InvalidRequest::NoConsumer);
        }
        match request.mode {
            None => Err(InvalidRequest::NoMode),
            Some(WireMode::FromSeq(0)) => Err(InvalidRequest::SequenceZero),
            Some(WireMode::FromSeq(sequence)) => Ok(Mode::FromSequence(sequence)),
            Some(WireMode::SinceMs(0)) => Err(InvalidRequest::EmptyWindow),
            Some(WireMode::SinceMs(ms)) => Ok(Mode::Since(Duration::from_millis(ms))),
            Some(WireMode::Rebuild(_)) => Ok(Mode::Rebuild),
            Some(WireMode::DeadLetters(_)) => Ok(Mode::Redrive),
        }
    }

    /// The request for `consumer`'s service.
    pub fn request(self, consumer: &str) -> ReplayRequest {
        let mode = match self {
            Mode::FromSequence(sequence) => WireMode::FromSeq(sequence),
            Mode::Since(window) => WireMode::SinceMs(window.as_millis().min(u128::from(u64::MAX)) as u64),
            Mode::Rebuild => WireMode::Rebuild(Rebuild {}),
            Mode::Redrive => WireMode::DeadLetters(RedriveDeadLetters {}),
        };
        ReplayRequest { consumer: consumer.to_string(), mode: Some(mode), progress_subject: String::new() }
    }

    /// `replay`, `rebuild` or `redrive`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::FromSequence(_) | Mode::Since(_) => "replay",
            Mode::Rebuild => "rebuild",
            Mode::Redrive => "redrive",
        }
    }
}

/// Why a projection was not reset.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// This consumer cannot be rebuilt; the message says why (for people).
    #[error("{0}")]
    Refused(String),
    /// The reset failed and changed nothing. The message is free of data
    /// and is what the caller is told; the source is kept for the logs.
    #[error("{message}")]
    Failed {
        message: String,
        #[source]
        source: crate::BoxError,
    },
}

/// A consumer's handler and state, as replay and redrive use them.
pub trait Projection: Clone + Send + Sync + 'static {
    /// The event type on the stream.
    type Event: prost::Message + Name + Default + Send + 'static;

    /// Handles one event exactly as the live consumer does, and says
    /// whether it changed anything.
    fn apply(&self, delivery: Delivery<Self::Event>) -> impl Future<Output = Result<Outcome, ProcessError>> + Send;

    /// Empties the projection, in one transaction, so that a replay of the
    /// whole stream rebuilds it. Must stay correct while the live consumer
    /// keeps processing, and must refuse when the effects cannot be undone.
    fn reset(&self) -> impl Future<Output = Result<(), ResetError>> + Send;
}

/// Why a projection stopped running.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Consumer(#[from] crate::topology::TopologyError),
    #[error("failed to serve replay requests: {0}")]
    Replay(#[from] async_nats::SubscribeError),
}

/// Runs a projection for real until `shutdown`: its durable consumer, which
/// hands live events to [`Projection::apply`], and its replay responder,
/// which hands the same handler the stream again on request.
pub async fn run_projection<P: Projection>(
    responder: &Responder,
    js: jetstream::Context,
    spec: ConsumerSpec,
    projection: P,
    shutdown: CancellationToken,
) -> Result<(), ProjectionError> {
    run_projection_pausable(responder, js, spec, projection, None, shutdown).await
}

/// Like [`run_projection`], with live consumption paused while `paused`
/// holds true (see [`crate::consume::run_consumer_pausable`]); replays are
/// still answered.
pub async fn run_projection_pausable<P: Projection>(
    responder: &Responder,
    js: jetstream::Context,
    spec: ConsumerSpec,
    projection: P,
    paused: Option<tokio::sync::watch::Receiver<bool>>,
    shutdown: CancellationToken,
) -> Result<(), ProjectionError> {
    let live = projection.clone();
    tokio::try_join!(
        async {
            crate::consume::run_consumer_pausable(
                js.clone(),
                spec.clone(),
                |delivery| {
                    let applied = live.apply(delivery);
                    async move { applied.await.map(drop) }
                },
                paused,
                shutdown.clone(),
            )
            .await
            .map_err(ProjectionError::from)
        },
        async {
            serve(responder, js.clone(), spec.clone(), projection, shutdown.clone())
                .await
                .map_err(ProjectionError::from)
        },
    )?;
    Ok(())
}

/// Answers `svc.<consumer>.replay` for `spec`'s consumer with `projection`
/// until `shutdown`; a replay in progress stops at the next message when
/// `shutdown` fires, and answers with what it did so far.
pub async fn serve<P: Projection>(
    responder: &Responder,
    js: jetstream::Context,
    spec: ConsumerSpec,
    projection: P,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let subject = subjects::replay(spec.durable);
    let replayer = Replayer { js, spec, projection, shutdown };
    responder.serve(&subject, replayer, Replayer::handle).await
}

/// Sends `request` to its consumer's service and waits up to `timeout` for
/// the reply, calling `on_progress` with each progress message on the way.
/// A reply that carries an error is returned as it is: an interrupted
/// replay still says what it did.
pub async fn call(
    client: &Client,
    mut request: ReplayRequest,
    timeout: Duration,
    mut on_progress: impl FnMut(&ReplayProgress),
) -> Result<ReplayReply, RequestError> {
    let subject = subjects::replay(&request.consumer);
    let inbox = client.new_inbox();
    let mut progress = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| RequestError::Transport { subject: subject.clone(), reason: error.to_string() })?;
    request.progress_subject = inbox;
    let reply = request_reply::<_, ReplayReply>(client, &subject, &request, timeout);
    tokio::pin!(reply);
    loop {
        tokio::select! {
            biased;
            Some(message) = progress.next() => {
                if let Ok(update) = ReplayProgress::decode(message.payload.as_ref()) {
                    on_progress(&update);
                }
            }
            reply = &mut reply => return reply,
        }
    }
}

/// Counts kept while a replay runs.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    scanned: u64,
    applied: u64,
    skipped: u64,
    failed: u64,
    rejected: u64,
    first_seq: u64,
    last_seq: u64,
}

impl Counts {
    fn add(&mut self, sequence: u64, result: &Result<Outcome, ProcessError>) {
        self.scanned += 1;
        if self.first_seq == 0 {
            self.first_seq = sequence;
        }
        self.last_seq = sequence;
        match result {
            Ok(Outcome::Applied) => self.applied += 1,
            Ok(Outcome::Skipped) => self.skipped += 1,
            Err(ProcessError::Retry(_)) => self.failed += 1,
            Err(ProcessError::Reject(_)) => self.rejected += 1,
        }
    }
}

#[derive(Clone)]
struct Replayer<P> {
    js: jetstream::Context,
    spec: ConsumerSpec,
    projection: P,
    shutdown: CancellationToken,
}

/// Where a walk through the stream starts.
fn deliver_policy(mode: Mode) -> Result<consumer::DeliverPolicy, WireError> {
    match mode {
        Mode::Since(window) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
            let start = now - window.as_nanos().min(i128::MAX as u128) as i128;
            let start_time = async_nats::datetime::from_nanos(start.max(0))
                .map_err(|_| invalid("the replay window is out of range".to_string()))?;
            Ok(consumer::DeliverPolicy::ByStartTime { start_time })
        }
        Mode::FromSequence(sequence) => Ok(consumer::DeliverPolicy::ByStartSequence { start_sequence: sequence }),
        Mode::Rebuild | Mode::Redrive => Ok(consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 }),
    }
}

fn invalid(message: String) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

fn unavailable(message: String) -> WireError {
    WireError::new(ErrorCode::Unavailable, message)
}

/// Marks a span with a handler's result.
fn record_outcome(span: &tracing::Span, result: &Result<Outcome, ProcessError>) {
    match result {
        Ok(outcome) => {
            span.record("tracehop.replay.outcome", outcome.as_str());
        }
        Err(error @ ProcessError::Retry(_)) => {
            span.record("tracehop.replay.outcome", "failed");
            record_failure(span, "retry", &error.reason());
        }
        Err(error @ ProcessError::Reject(_)) => {
            span.record("tracehop.replay.outcome", "rejected");
            record_failure(span, "rejected", &error.reason());
        }
    }
}

/// An ordered consumer over `stream`, filtered like `spec`'s durable (or on
/// `filter`), and its bounds: how many messages it has to deliver and the
/// stream's last sequence when it was made. A walk stops at that sequence,
/// so that a replay under live traffic ends; later events are the live
/// consumer's.
async fn walk(
    js: &jetstream::Context,
    stream_name: &str,
    filter: (String, Vec<String>),
    deliver_policy: consumer::DeliverPolicy,
) -> Result<(consumer::pull::Ordered, u64, u64), WireError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|error| unavailable(format!("stream {stream_name} is not available: {error}")))?;
    let end_seq = stream.cached_info().state.last_sequence;
    let (filter_subject, filter_subjects) = filter;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|error| unavailable(format!("failed to read stream {stream_name}: {error}")))?;
    let total = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|error| unavailable(format!("failed to read stream {stream_name}: {error}")))?;
    Ok((messages, total, end_seq))
}

/// The next message of a walk, or why there is none.
enum Next {
    Message(Box<jetstream::Message>),
    Shutdown,
    Stalled,
}

async fn next_message(messages: &mut consumer::pull::Ordered, shutdown: &CancellationToken) -> Next {
    let deadline = tokio::time::Instant::now() + STALL_TIMEOUT;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Next::Shutdown,
            next = tokio::time::timeout_at(deadline, messages.next()) => next,
        };
        match next {
            Ok(Some(Ok(message))) => return Next::Message(Box::new(message)),
            // Missed heartbeats and the like: the ordered consumer recreates
            // itself and goes on.
            Ok(Some(Err(error))) => tracing::debug!(%error, "replay stream reported an error"),
            Ok(None) | Err(_) => return Next::Stalled,
        }
    }
}

impl<P: Projection> Replayer<P> {
    async fn handle(self, request: ReplayRequest) -> Result<ReplayReply, WireError> {
        let durable = self.spec.durable;
        let mode = Mode::of(&request).map_err(|error| invalid(error.to_string()))?;
        if request.consumer != durable {
            return Err(invalid(format!("this is the {durable} service; it cannot replay {:?}", request.consumer)));
        }
        self.traced(mode, request).await
    }

    /// A root span of a new trace, linked to the request's SERVER span so
    /// that the one leads to the other.
    fn root_span(&self, mode: Mode) -> tracing::Span {
        let durable = self.spec.durable;
        let (from_seq, since_ms) = match mode {
            Mode::FromSequence(sequence) => (sequence as i64, 0),
            Mode::Since(window) => (0, window.as_millis() as i64),
            Mode::Rebuild => (1, 0),
            Mode::Redrive => (0, 0),
        };
        let root = tracing::info_span!(
            parent: None,
            "tracehop.replay",
            // A rebuild is a replay with a reset first: `replay <consumer>`.
            otel.name = %format!("{} {durable}", if mode == Mode::Redrive { "redrive" } else { "replay" }),
            otel.kind = "internal",
            messaging.system = spans::SYSTEM,
            messaging.consumer.group.name = durable,
            tracehop.replay = mode != Mode::Redrive,
            tracehop.redrive = mode == Mode::Redrive,
            tracehop.replay.rebuild = mode == Mode::Rebuild,
            tracehop.replay.from_seq = from_seq,
            tracehop.replay.since_ms = since_ms,
            tracehop.replay.total = Empty,
            tracehop.replay.scanned = Empty,
            tracehop.replay.applied = Empty,
            tracehop.replay.skipped = Empty,
            tracehop.replay.failed = Empty,
            tracehop.replay.rejected = Empty,
        );
        let _ = root.set_parent(opentelemetry::Context::new());
        root.add_link(tracing::Span::current().context().span().span_context().clone());
        root
    }

    async fn publish_progress(&self, request: &ReplayRequest, counts: &Counts, total: u64, done: bool) {
        if request.progress_subject.is_empty() {
            return;
        }
        let progress = ReplayProgress {
            consumer: self.spec.durable.to_string(),
            scanned: counts.scanned,
            total: total.max(counts.scanned),
            applied: counts.applied,
            skipped: counts.skipped,
            failed: counts.failed,
            rejected: counts.rejected,
            done,
        };
        // Progress is a courtesy: a lost one costs nothing.
        let client = self.js.client();
        let _ = client.publish(request.progress_subject.clone(), progress.encode_to_vec().into()).await;
    }

    fn reply(&self, root: &tracing::Span, counts: &Counts, rebuilt: bool, started: Instant) -> ReplayReply {
        root.record("tracehop.replay.scanned", counts.scanned as i64);
        root.record("tracehop.replay.applied", counts.applied as i64);
        root.record("tracehop.replay.skipped", counts.skipped as i64);
        root.record("tracehop.replay.failed", counts.failed as i64);
        root.record("tracehop.replay.rejected", counts.rejected as i64);
        if counts.failed > 0 {
            record_failure(root, "partial", &format!("{} of {} messages failed", counts.failed, counts.scanned));
        }
        ReplayReply {
            error: None,
            scanned: counts.scanned,
            applied: counts.applied,
            skipped: counts.skipped,
            failed: counts.failed,
            rejected: counts.rejected,
            rebuilt,
            trace_id: trace_id_of(root),
            first_seq: counts.first_seq,
            last_seq: counts.last_seq,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// A replay cut short: what it did so far, with the reason.
    fn interrupted(mut reply: ReplayReply, root: &tracing::Span, message: String) -> ReplayReply {
        record_failure(root, "interrupted", &message);
        reply.error = Some(unavailable(message));
        reply
    }

    /// Runs a replay or a redrive under its root span, which is marked
    /// failed when it fails.
    async fn traced(self, mode: Mode, request: ReplayRequest) -> Result<ReplayReply, WireError> {
        let root = self.root_span(mode);
        let result = if mode == Mode::Redrive {
            self.redrive(&root, &request).await
        } else {
            self.replay(&root, &request, mode).await
        };
        if let Err(error) = &result {
            record_failure(&root, error.kind().short_name(), &error.message);
        }
        result
    }

    async fn replay(
        &self,
        root: &tracing::Span,
        request: &ReplayRequest,
        mode: Mode,
    ) -> Result<ReplayReply, WireError> {
        let started = Instant::now();
        let durable = self.spec.durable;
        let mut rebuilt = false;
        if mode == Mode::Rebuild {
            // A rebuild must see every event the projection was made from.
            let stream = self
                .js
                .get_stream(self.spec.stream)
                .await
                .map_err(|error| unavailable(format!("stream {} is not available: {error}", self.spec.stream)))?;
            let first = stream.cached_info().state.first_sequence;
            if first > 1 {
                let message = format!(
                    "stream {} no longer holds its first events (it starts at sequence {first}): a rebuild would \
                     drop what was projected from them",
                    self.spec.stream
                );
                return Err(WireError::new(ErrorCode::InvalidArgument, message));
            }
            let reset_span =
                tracing::info_span!(parent: root, "reset projection", messaging.consumer.group.name = durable);
            if let Err(error) = self.projection.reset().instrument(reset_span.clone()).await {
                let (code, error_type) = match &error {
                    ResetError::Refused(_) => (ErrorCode::InvalidArgument, "refused"),
                    ResetError::Failed { .. } => (ErrorCode::Unavailable, "reset_failed"),
                };
                tracing::warn!(
                    parent: &reset_span,
                    consumer = durable,
                    error = %tracehop_telemetry::error_chain(&error),
                    "projection not reset"
                );
                record_failure(&reset_span, error_type, &error.to_string());
                return Err(WireError::new(code, error.to_string()));
            }
            rebuilt = true;
            tracing::info!(parent: root, consumer = durable, "projection reset, replaying the whole stream");
        }

        let config = self.spec.config();
        let walked =
            walk(&self.js, self.spec.stream, (config.filter_subject, config.filter_subjects), deliver_policy(mode)?)
                .instrument(root.clone())
                .await?;
        Ok(self
            .drive(root, request, walked, rebuilt, started, "events", |message, sequence| async move {
                self.replay_one(root, &message, sequence).await
            })
            .await)
    }

    /// Runs the handler on one stream event, in a CONSUMER span under the
    /// replay's root, linked to the event's original producer span.
    async fn replay_one(
        &self,
        root: &tracing::Span,
        message: &jetstream::Message,
        sequence: u64,
    ) -> Result<Outcome, ProcessError> {
        let subject = message.subject.to_string();
        let message_id = headers::get(message.headers.as_ref(), MESSAGE_ID).map(str::to_string);
        let span = consumer_span(
            Some(root),
            &subject,
            self.spec.durable,
            message_id.as_deref(),
            message.payload.len(),
            1,
            sequence,
        );
        span.record("tracehop.replay", true);
        let producer = headers::extract(message.headers.as_ref());
        span.add_link(producer.span().span_context().clone());
        let result = match decode_event::<P::Event>(message) {
            Ok(event) => {
                let delivery = Delivery { event, subject, message_id, delivery_count: 1, stream_sequence: sequence };
                self.projection.apply(delivery).instrument(span.clone()).await
            }
            Err(error) => Err(error),
        };
        record_outcome(&span, &result);
        result
    }

    async fn redrive(&self, root: &tracing::Span, request: &ReplayRequest) -> Result<ReplayReply, WireError> {
        let started = Instant::now();
        let durable = self.spec.durable;
        let dead_letters = self
            .js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(|error| unavailable(format!("stream {DEAD_LETTER_STREAM} is not available: {error}")))?;
        let walked = walk(
            &self.js,
            DEAD_LETTER_STREAM,
            (dead_letter_subject(durable), Vec::new()),
            consumer::DeliverPolicy::All,
        )
        .instrument(root.clone())
        .await?;
        let dead_letters = &dead_letters;
        Ok(self
            .drive(root, request, walked, false, started, "dead letters", |message, sequence| async move {
                self.redrive_one(root, &message, sequence, dead_letters).await
            })
            .await)
    }

    /// Hands each walked message to `one`, counting the outcomes and
    /// publishing progress, until the walk's end, a shutdown or a stream
    /// that stops delivering; a cut-short run answers with what it did.
    #[allow(clippy::too_many_arguments)]
    async fn drive<F, Fut>(
        &self,
        root: &tracing::Span,
        request: &ReplayRequest,
        (mut messages, total, end_seq): (consumer::pull::Ordered, u64, u64),
        rebuilt: bool,
        started: Instant,
        noun: &str,
        mut one: F,
    ) -> ReplayReply
    where
        F: FnMut(jetstream::Message, u64) -> Fut,
        Fut: Future<Output = Result<Outcome, ProcessError>>,
    {
        root.record("tracehop.replay.total", total as i64);
        let mut counts = Counts::default();
        self.publish_progress(request, &counts, total, false).await;
        let mut remaining = total;
        while remaining > 0 {
            let message = match next_message(&mut messages, &self.shutdown).await {
                Next::Message(message) => *message,
                stopped => {
                    let why = match stopped {
                        Next::Shutdown => "the service is shutting down",
                        _ => "the stream stopped delivering",
                    };
                    let text = format!("{why}: stopped after {} of {total} {noun}", counts.scanned);
                    return Self::interrupted(self.reply(root, &counts, rebuilt, started), root, text);
                }
            };
            let (sequence, pending) = message.info().map(|info| (info.stream_sequence, info.pending)).unwrap_or((0, 0));
            let result = one(message, sequence).await;
            counts.add(sequence, &result);
            remaining = if sequence >= end_seq { 0 } else { pending };
            if counts.scanned % PROGRESS_EVERY == 0 {
                self.publish_progress(request, &counts, total, false).await;
            }
        }
        let reply = self.reply(root, &counts, rebuilt, started);
        self.publish_progress(request, &counts, total, true).await;
        tracing::info!(
            parent: root,
            consumer = self.spec.durable,
            noun,
            scanned = counts.scanned,
            applied = counts.applied,
            skipped = counts.skipped,
            failed = counts.failed,
            rejected = counts.rejected,
            elapsed_ms = reply.elapsed_ms,
            "replay done"
        );
        reply
    }

    /// Runs the handler on one dead letter, in a CONSUMER span in the
    /// event's original trace (parented by, and linked to, the original
    /// producer; also linked to the redrive's root), then deletes the dead
    /// letter if the handler succeeded.
    /// The event a dead letter points at, from the consumer's own stream.
    async fn original_event(&self, sequence: u64) -> Result<jetstream::message::StreamMessage, String> {
        let stream = self
            .js
            .get_stream_no_info(self.spec.stream)
            .await
            .map_err(|error| format!("stream {} is not available: {error}", self.spec.stream))?;
        stream.get_raw_message(sequence).await.map_err(|error| {
            format!("event {sequence} is no longer in stream {} ({error}); it cannot be redriven", self.spec.stream)
        })
    }

    async fn redrive_one(
        &self,
        root: &tracing::Span,
        message: &jetstream::Message,
        dead_sequence: u64,
        dead_letters: &jetstream::stream::Stream,
    ) -> Result<Outcome, ProcessError> {
        let original = |name: &str| headers::get(message.headers.as_ref(), name).filter(|value| !value.is_empty());
        let subject = original(headers::ORIGINAL_SUBJECT).unwrap_or(message.subject.as_str()).to_string();
        let message_id = original(headers::ORIGINAL_MESSAGE_ID).map(str::to_string);
        let original_sequence: u64 = original(headers::ORIGINAL_SEQUENCE).and_then(|s| s.parse().ok()).unwrap_or(0);
        // A dead letter points at its event in the consumer's stream (older
        // ones carry the payload themselves).
        let event = if message.payload.is_empty() && original_sequence > 0 {
            match self.original_event(original_sequence).await {
                Ok(event) => Some(event),
                Err(reason) => return Err(ProcessError::Reject(reason.into())),
            }
        } else {
            None
        };
        let (event_headers, payload) = match &event {
            Some(event) => (Some(&event.headers), event.payload.clone()),
            None => (message.headers.as_ref(), message.payload.clone()),
        };
        // This is one more delivery of the event.
        let delivery_count: i64 = original(headers::DELIVERY_COUNT).and_then(|s| s.parse().ok()).unwrap_or(0) + 1;
        let span = consumer_span(
            None,
            &subject,
            self.spec.durable,
            message_id.as_deref(),
            payload.len(),
            delivery_count,
            original_sequence,
        );
        span.record("tracehop.redrive", true);
        span.record("tracehop.dead_letter.sequence", dead_sequence as i64);
        let producer = headers::extract(message.headers.as_ref());
        let producer_span = producer.span().span_context().clone();
        let _ = span.set_parent(producer);
        span.add_link(producer_span);
        span.add_link(root.context().span().span_context().clone());
        let result = match crate::consume::decode_payload::<P::Event>(event_headers, &payload) {
            Ok(event) => {
                let delivery =
                    Delivery { event, subject, message_id, delivery_count, stream_sequence: original_sequence };
                self.projection.apply(delivery).instrument(span.clone()).await
            }
            Err(error) => Err(error),
        };
        record_outcome(&span, &result);
        if result.is_ok() {
            // Applied (or found applied): the dead letter has done its job.
            // Should this fail, the next redrive finds the effect there,
            // skips it and deletes the dead letter then.
            if let Err(error) = dead_letters.delete_message(dead_sequence).await {
                tracing::warn!(
                    parent: &span,
                    consumer = self.spec.durable,
                    dead_letter.sequence = dead_sequence,
                    %error,
                    "failed to delete a redriven dead letter"
                );
            }
        }
        result
    }
}
