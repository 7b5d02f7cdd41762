//! The outbox relay: publishes the events the checkout wrote to the outbox,
//! in order, and marks each row published only after JetStream acknowledged
//! it. A crash between the two re-publishes the event, which the stream drops
//! as a duplicate (the event id is the `Nats-Msg-Id`).
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
use tracehop_db::traced;
use tracehop_messaging::headers::StoredContext;
use tracehop_messaging::publish_event;
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

    /// One round: publishes up to [`BATCH`] unpublished rows in order and
    /// returns how many were published. It stops at the first failure, so
    /// that events leave in the order they were decided.
    pub async fn publish_pending(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The poll itself is not traced: it belongs to no checkout, and most
        // rounds find nothing.
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_id, subject, payload_type, payload, traceparent, tracestate, baggage
             FROM ordering.outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut published = 0;
        for (id, event_id, subject, payload_type, payload, traceparent, tracestate, baggage) in rows {
            let stored = StoredContext { traceparent, tracestate, baggage };
            let span = tracing::info_span!(
                "outbox.relay",
                otel.name = "relay outbox event",
                otel.kind = "internal",
                messaging.message.id = %event_id,
            );
            let _ = span.set_parent(stored.context());
            let event_id_text = event_id.to_string();
            let ok = async {
                let outcome = publish_event(
                    &self.js,
                    &subject,
                    &event_id_text,
                    &payload_type,
                    payload,
                    tracing::Span::current().context(),
                )
                .await;
                let error = outcome.as_ref().err().map(ToString::to_string);
                traced(
                    "UPDATE",
                    "ordering.outbox",
                    sqlx::query(
                        "UPDATE ordering.outbox SET attempts = attempts + 1, last_error = $2,
                                published_at = CASE WHEN $2 IS NULL THEN now() END
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&error)
                    .execute(&mut *tx),
                )
                .await
                .map(|_| error.is_none())
            }
            .instrument(span)
            .await?;
            if !ok {
                break;
            }
            published += 1;
        }
        tx.commit().await?;
        Ok(published)
    }
}
