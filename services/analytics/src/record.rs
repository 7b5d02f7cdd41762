//! The order-event handler: records the event and moves the totals, in one
//! statement.

use sqlx::PgPool;
use tracehop_db::{describe_error, traced};
use tracehop_messaging::ProcessError;
use tracehop_proto::v1::{OrderEvent, OrderStatus};
use tracing::field::Empty;
use uuid::Uuid;

/// The latest `occurred_at_unix_ms` taken (the last millisecond of year
/// 9999); PostgreSQL's timestamps end soon after.
const MAX_UNIX_MS: i64 = 253_402_300_799_999;

/// Why an event was not recorded. Messages are free of personal data: they
/// end up on spans.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event can never be recorded (a malformed id, an unknown status).
    #[error("{0}")]
    Invalid(String),
    /// A statement failed; its own span holds the details. The database's
    /// message is left out, as it may quote values.
    #[error("a database statement failed ({})", describe_error(.0))]
    Database(#[from] sqlx::Error),
}

impl From<RecordError> for ProcessError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Invalid(reason) => ProcessError::Reject(reason.into()),
            // The database may be back on the next delivery.
            other @ RecordError::Database(_) => ProcessError::Retry(other.into()),
        }
    }
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, RecordError> {
    Uuid::parse_str(value).map_err(|_| RecordError::Invalid(format!("{field} is not a UUID")))
}

/// What an event contributes, as stored in `analytics.order_events` and
/// added to `analytics.totals`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// `confirmed` or `failed`.
    pub kind: &'static str,
    /// The number of order lines.
    pub item_count: i32,
    /// When the order was decided; `None` when the event does not say (it
    /// is then recorded as the time of recording).
    pub occurred_at_unix_ms: Option<i64>,
    pub confirmed: i64,
    pub failed: i64,
    /// The order's total for a confirmed order; a failed order earns nothing.
    pub revenue_cents: i64,
}

impl Fact {
    /// Reads an event's contribution, or says why it can never count. The
    /// status decides, not the subject: it is part of the payload that the
    /// event id dedupes, so a replay is judged the same way.
    pub fn of(event: &OrderEvent) -> Result<Self, String> {
        let (kind, confirmed, failed, revenue_cents) = match OrderStatus::try_from(event.status) {
            Ok(OrderStatus::Confirmed) => ("confirmed", 1, 0, event.total_cents),
            Ok(OrderStatus::Failed) => ("failed", 0, 1, 0),
            _ => {
                return Err(format!("status {} is neither confirmed nor failed", event.status));
            }
        };
        let item_count = i32::try_from(event.items.len()).map_err(|_| "too many items".to_string())?;
        let occurred_at_unix_ms = match event.occurred_at_unix_ms {
            0 => None,
            ms if (1..=MAX_UNIX_MS).contains(&ms) => Some(ms),
            _ => return Err("occurred_at_unix_ms is out of range".to_string()),
        };
        Ok(Self { kind, item_count, occurred_at_unix_ms, confirmed, failed, revenue_cents })
    }
}

/// The handler's shared state.
#[derive(Clone, Debug)]
pub struct Recorder {
    pool: PgPool,
}

impl Recorder {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records the event and moves the totals, once; returns false, changing
    /// nothing, when it had counted before. Whether this delivery counted
    /// goes on the span: on a replay it is the only sign.
    #[tracing::instrument(
        name = "record order event",
        skip_all,
        fields(order.id = %event.order_id, analytics.kind = Empty, analytics.duplicate = Empty),
    )]
    pub async fn record(&self, event: &OrderEvent) -> Result<bool, RecordError> {
        let span = tracing::Span::current();
        let event_id = parse_uuid("event_id", &event.event_id)?;
        let order_id = parse_uuid("order_id", &event.order_id)?;
        let fact = Fact::of(event).map_err(RecordError::Invalid)?;
        span.record("analytics.kind", fact.kind);

        // One statement (one round trip, one commit): the totals move only
        // when the event's insert returned a row. The totals row is an
        // upsert, so that a missing one is recreated rather than silently
        // not updated.
        let counted = traced(
            "INSERT",
            "analytics.order_events",
            sqlx::query(
                "WITH recorded AS (
                    INSERT INTO analytics.order_events
                        (event_id, order_id, kind, customer_id, total_cents, item_count, occurred_at)
                    VALUES ($1, $2, $3, $4, $5, $6, COALESCE(to_timestamp($7::float8 / 1000), now()))
                    ON CONFLICT (event_id) DO NOTHING RETURNING 1)
                 INSERT INTO analytics.totals AS t (id, orders_confirmed, orders_failed, revenue_cents)
                 SELECT true, $8, $9, $10 FROM recorded
                 ON CONFLICT (id) DO UPDATE SET
                    orders_confirmed = t.orders_confirmed + EXCLUDED.orders_confirmed,
                    orders_failed = t.orders_failed + EXCLUDED.orders_failed,
                    revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents",
            )
            .bind(event_id)
            .bind(order_id)
            .bind(fact.kind)
            .bind(&event.customer_id)
            .bind(event.total_cents)
            .bind(fact.item_count)
            .bind(fact.occurred_at_unix_ms)
            .bind(fact.confirmed)
            .bind(fact.failed)
            .bind(fact.revenue_cents),
            |query| query.execute(&self.pool),
        )
        .await?
        .rows_affected()
            == 1;
        span.record("analytics.duplicate", !counted);
        Ok(counted)
    }

    /// The pool, for the replay's reset.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use tracehop_proto::v1::PricedItem;

    use super::*;

    fn event(status: OrderStatus) -> OrderEvent {
        OrderEvent {
            event_id: Uuid::new_v4().to_string(),
            order_id: Uuid::new_v4().to_string(),
            customer_id: "cust-1".to_string(),
            status: status as i32,
            items: vec![
                PricedItem { sku: "KB-001".to_string(), quantity: 2, unit_price_cents: 8_900 },
                PricedItem { sku: "CB-004".to_string(), quantity: 1, unit_price_cents: 900 },
            ],
            total_cents: 18_700,
            failure_reason: String::new(),
            email: String::new(),
            occurred_at_unix_ms: 1_790_000_000_000,
        }
    }

    #[test]
    fn a_confirmed_order_counts_its_revenue() {
        let fact = Fact::of(&event(OrderStatus::Confirmed)).unwrap();
        assert_eq!(fact.kind, "confirmed");
        assert_eq!((fact.confirmed, fact.failed, fact.revenue_cents), (1, 0, 18_700));
        assert_eq!(fact.item_count, 2);
        assert_eq!(fact.occurred_at_unix_ms, Some(1_790_000_000_000));
    }

    #[test]
    fn a_failed_order_counts_no_revenue() {
        let fact = Fact::of(&event(OrderStatus::Failed)).unwrap();
        assert_eq!(fact.kind, "failed");
        assert_eq!((fact.confirmed, fact.failed, fact.revenue_cents), (0, 1, 0));
    }

    #[test]
    fn any_other_status_can_never_count() {
        for status in [OrderStatus::Pending as i32, OrderStatus::Unspecified as i32, 42] {
            let mut event = event(OrderStatus::Confirmed);
            event.status = status;
            assert!(Fact::of(&event).is_err(), "status {status} was accepted");
        }
    }

    #[test]
    fn a_missing_time_is_the_time_of_recording_and_a_wild_one_is_refused() {
        let mut event = event(OrderStatus::Confirmed);
        event.occurred_at_unix_ms = 0;
        assert_eq!(Fact::of(&event).unwrap().occurred_at_unix_ms, None);
        event.occurred_at_unix_ms = -1;
        assert!(Fact::of(&event).is_err());
        event.occurred_at_unix_ms = i64::MAX;
        assert!(Fact::of(&event).is_err());
    }
}
