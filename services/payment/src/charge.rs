//! The charge handler and its SQL.

use std::time::Duration;

use sqlx::PgPool;
use tracehop_db::{traced, wire_error};
use tracehop_proto::v1::{ChargeReply, ChargeRequest, Error as WireError, ErrorCode, PaymentStatus};
use uuid::Uuid;

use crate::card::{CardNumber, Outcome};

/// payment_id, card_last4, status, decline_reason.
type PaymentRow = (Uuid, Option<String>, String, Option<String>);

/// The answer a stored payment gives, to its first request and every retry.
fn answer((payment_id, card_last4, status, reason): PaymentRow) -> Result<ChargeReply, WireError> {
    tracing::Span::current().record("payment.status", status.as_str());
    if status == "voided" || status == "refunded" {
        Err(WireError::new(ErrorCode::PaymentDeclined, "payment declined: the order was cancelled"))
    } else if status == "approved" {
        Ok(ChargeReply {
            error: None,
            payment_id: payment_id.to_string(),
            status: PaymentStatus::Approved as i32,
            card_last4: card_last4.unwrap_or_default(),
        })
    } else {
        Err(WireError::new(
            ErrorCode::PaymentDeclined,
            format!("payment declined: {}", reason.unwrap_or_else(|| "declined".to_string())),
        ))
    }
}

/// The simulated processor.
#[derive(Clone, Debug)]
pub struct Processor {
    pool: PgPool,
    latency: Duration,
}

impl Processor {
    pub fn new(pool: PgPool, latency: Duration) -> Self {
        Self { pool, latency }
    }

    /// Charges the card once per order: a retry returns the stored outcome.
    /// A decline is a reply with `PAYMENT_DECLINED`; a processor error is
    /// `PAYMENT_FAILED` and is not stored, so a retry may succeed.
    #[tracing::instrument(name = "charge card", skip_all, fields(order.id = %request.order_id, payment.amount_cents = request.amount_cents, payment.card_last4 = tracing::field::Empty, payment.status = tracing::field::Empty))]
    pub async fn charge(self, request: ChargeRequest) -> Result<ChargeReply, WireError> {
        let order_id = Uuid::parse_str(&request.order_id)
            .map_err(|_| WireError::new(ErrorCode::InvalidArgument, "order_id is not a UUID"))?;
        if request.amount_cents < 0 {
            return Err(WireError::new(ErrorCode::InvalidArgument, "amount must not be negative"));
        }
        let card = request.card.as_ref().map(|card| card.number.as_str()).unwrap_or_default();
        let card = CardNumber::parse(card).map_err(|reason| WireError::new(ErrorCode::InvalidArgument, reason))?;
        tracing::Span::current().record("payment.card_last4", card.last4());

        if let Some(stored) = self.stored(order_id).await? {
            return stored;
        }
        // The simulated processor's round trip.
        tokio::time::sleep(self.latency).await;
        let (status, reason) = match card.outcome() {
            Outcome::Approve => ("approved", None),
            Outcome::Decline(reason) => ("declined", Some(reason)),
            Outcome::ProcessorError => {
                return Err(WireError::new(ErrorCode::PaymentFailed, "the card processor failed to answer"));
            }
        };
        // The insert answers with what it stored; when a concurrent retry won
        // it, the stored outcome is read instead.
        let row: Option<PaymentRow> = traced(
            "INSERT",
            "payment.payments",
            sqlx::query_as(
                "INSERT INTO payment.payments (order_id, payment_id, amount_cents, card_last4, status, decline_reason)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING
                 RETURNING payment_id, card_last4, status, decline_reason",
            )
            .bind(order_id)
            .bind(Uuid::now_v7())
            .bind(request.amount_cents)
            .bind(card.last4())
            .bind(status)
            .bind(reason),
            |query| query.fetch_optional(&self.pool),
        )
        .await
        .map_err(|e| wire_error(&e))?;
        match row {
            Some(row) => answer(row),
            None => self
                .stored(order_id)
                .await?
                .unwrap_or_else(|| Err(WireError::new(ErrorCode::Internal, "internal error"))),
        }
    }

    async fn stored(&self, order_id: Uuid) -> Result<Option<Result<ChargeReply, WireError>>, WireError> {
        let row: Option<PaymentRow> = traced(
            "SELECT",
            "payment.payments",
            sqlx::query_as(
                "SELECT payment_id, card_last4, status, decline_reason FROM payment.payments WHERE order_id = $1",
            )
            .bind(order_id),
            |query| query.fetch_optional(&self.pool),
        )
        .await
        .map_err(|e| wire_error(&e))?;
        Ok(row.map(answer))
    }
}
