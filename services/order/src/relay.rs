//! The outbox relay: publishes the events the checkout wrote to the outbox,
//! in order, and marks each row published only after JetStream acknowledged
//! it. A crash between the two re-publishes the event, which the stream drops
//! as a duplicate (the event id is the `Nats-Msg-Id`).
//!
//! Every order instance runs a relay. A round takes its rows `FOR UPDATE
//! SKIP LOCKED` and holds them until they are marked, so two relays never
//! take one row: each publishes what the other did not take, and none is
//! skipped, since a row stays unpublished until its ack marks it.
//!
//! Each publish runs in the trace of the order that decided it: the row keeps
//! that trace's context, so the PRODUCER span joins the order's trace even
//! when the relay publishes long after the checkout answered.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracehop_messaging::headers::StoredContext;
use tracehop_messaging::send_event;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

/// Rows taken per round.
const BATCH: i64 = 100;

/// The relay's state.
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    poll_interval: Duration,
    written: Arc<Notify>,
}

/// id, event id, subject, payload type, payload, traceparent, tracestate, baggage.
type OutboxRow = (i64, Uuid, String, String, Vec<u8>, Option<String>, Option<String>, Option<String>);

impl Relay {
    pub fn new(pool: PgPool, js: jetstream::Context, poll_interval: Duration, written: Arc<Notify>) -> Self {
        Self { pool, js, poll_interval, written }
    }

    /// Publishes until `shutdown`, waking when told that a row was written
    /// and every `poll_interval` regardless; a last round runs before it
    /// returns.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            match self.publish_pending().await {
                Ok(count) if count as i64 == BATCH => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "outbox relay round failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.written.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        if let Err(error) = self.publish_pending().await {
            tracing::warn!(error = %error, "last outbox relay round failed");
        }
    }

    /// One round: publishes up to [`BATCH`] unpublished rows and returns how
    /// many were stored. The whole batch is sent in order first and the acks
    /// awaited after, so a round costs one round trip to the stream and one
    /// statement to mark it, not one of each per event. Each event's publish
    /// runs in a `relay outbox event` span in its order's trace, from its
    /// send to its ack. An event whose ack fails stays unpublished and goes
    /// out in a later round, after events sent behind it in this one: each
    /// order has one event, so no consumer depends on the order between
    /// events of different orders.
    pub async fn publish_pending(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The poll and the marking are not traced: they belong to no
        // checkout, and most rounds find nothing.
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_id, subject, payload_type, payload, traceparent, tracestate, baggage
             FROM ordering.outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut sent = Vec::with_capacity(rows.len());
        for (id, event_id, subject, payload_type, payload, traceparent, tracestate, baggage) in rows {
            let stored = StoredContext { traceparent, tracestate, baggage };
            let span = tracing::info_span!(
                "outbox.relay",
                otel.name = "relay outbox event",
                otel.kind = "internal",
                messaging.message.id = %event_id,
            );
            let _ = span.set_parent(stored.context());
            let pending = send_event(&self.js, &subject, &event_id.to_string(), &payload_type, payload, span.context())
                .instrument(span.clone())
                .await;
            sent.push((id, span, pending));
        }
        let mut ids = Vec::with_capacity(sent.len());
        let mut errors: Vec<Option<String>> = Vec::with_capacity(sent.len());
        for (id, span, pending) in sent {
            let outcome = match pending {
                Ok(pending) => pending.stored().instrument(span).await.map(|_| ()),
                Err(error) => Err(error),
            };
            ids.push(id);
            errors.push(outcome.err().map(|error| tracehop_telemetry::error_chain(&error)));
        }
        sqlx::query(
            "UPDATE ordering.outbox o SET attempts = o.attempts + 1, last_error = u.error,
                    published_at = CASE WHEN u.error IS NULL THEN now() END
             FROM UNNEST($1::bigint[], $2::text[]) AS u(id, error) WHERE o.id = u.id",
        )
        .bind(&ids)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(errors.iter().filter(|error| error.is_none()).count())
    }
}
