//! Settling failed orders: payment consumes `orders.failed` and makes sure
//! that a failed order is never left charged. This is how a charge whose
//! outcome was unknown when the order failed (a timeout) is resolved rather
//! than guessed: the charge is idempotent per order id, so
//!
//! - an approved charge is marked refunded;
//! - no charge yet: a `voided` row is written, and a charge request that
//!   arrives late finds it and is refused instead of charging;
//! - a decline (or an earlier settlement) needs nothing.

use sqlx::PgPool;
use tracehop_db::traced;
use tracehop_messaging::{Delivery, Failure, ProcessError};
use tracehop_proto::v1::{OrderEvent, OrderStatus};
use uuid::Uuid;

/// The settlement handler.
#[derive(Clone, Debug)]
pub struct Settlement {
    pool: PgPool,
}

impl Settlement {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Voids or refunds the failed order's payment; idempotent.
    #[tracing::instrument(
        name = "settle failed order",
        skip_all,
        fields(order.id = %delivery.event.order_id, payment.settlement = tracing::field::Empty),
    )]
    pub async fn settle(&self, delivery: Delivery<OrderEvent>) -> Result<(), ProcessError> {
        let event = &delivery.event;
        if event.status != OrderStatus::Failed as i32 {
            // Only failed orders are settled; anything else is acknowledged.
            return Ok(());
        }
        let order_id =
            Uuid::parse_str(&event.order_id).map_err(|_| ProcessError::Reject("order_id is not a UUID".into()))?;
        let outcome: Option<String> = traced(
            "INSERT",
            "payment.payments",
            sqlx::query_scalar(
                "INSERT INTO payment.payments (order_id, payment_id, amount_cents, card_last4, status, decline_reason)
                 VALUES ($1, $2, 0, NULL, 'voided', 'the order failed before it was charged')
                 ON CONFLICT (order_id) DO UPDATE SET status = 'refunded', updated_at = now()
                 WHERE payment.payments.status = 'approved'
                 RETURNING status",
            )
            .bind(order_id)
            .bind(Uuid::now_v7()),
            |query| query.fetch_optional(&self.pool),
        )
        .await
        .map_err(|error| {
            let message = format!("failed to settle the payment ({})", tracehop_db::describe_error(&error));
            ProcessError::Retry(Failure::new(message, error).into())
        })?;
        let settlement = outcome.as_deref().unwrap_or("none");
        tracing::Span::current().record("payment.settlement", settlement);
        if settlement == "refunded" {
            tracing::info!(order.id = %order_id, "refunded the charge of a failed order");
        }
        Ok(())
    }
}
