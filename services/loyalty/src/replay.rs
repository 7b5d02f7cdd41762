//! Replay and rebuild for loyalty: the accrual handler as a [`Projection`],
//! and the reset that a rebuild starts with.
//!
//! A rebuild runs while the live consumer keeps accruing, and must still
//! come out identical. Every accrual adds its points to the customer's
//! account in the same transaction as its `loyalty.accruals` row, so an
//! account's points are always the sum of its accruals. The reset keeps
//! that true by taking both tables in `EXCLUSIVE` mode before it deletes the
//! accruals and zeroes the points: it waits for every live transaction in
//! flight to commit and holds off new ones until it has committed. A live
//! accrual therefore lands wholly before the reset (undone with it, and
//! accrued again by the replay) or wholly after it (kept, and skipped by the
//! replay, which finds its row). The replay and the live consumer may accrue
//! the same event at once: the event id is the key, `ON CONFLICT DO NOTHING`
//! lets one of them add the points. Tiers are kept: they are set by hand,
//! not derived from events.
//!
//! One caveat: a premium customer's points are priced by inventory when the
//! event is processed, so a rebuild after a price change comes out at the
//! new prices.

use tracehop_db::traced;
use tracehop_messaging::{Delivery, Outcome, ProcessError, Projection, ResetError};
use tracehop_proto::v1::OrderEvent;

use crate::accrue::Accrual;

impl Projection for Accrual {
    type Event = OrderEvent;

    async fn apply(&self, delivery: Delivery<OrderEvent>) -> Result<Outcome, ProcessError> {
        match self.accrue(&delivery.event).await {
            Ok(true) => Ok(Outcome::Applied),
            Ok(false) => Ok(Outcome::Skipped),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes every accrual and sets every account's points to 0, in one
    /// transaction that holds off live accruals (see the module's
    /// documentation).
    async fn reset(&self) -> Result<(), ResetError> {
        let failed = |error: sqlx::Error| {
            let message = format!("failed to reset loyalty ({})", tracehop_db::describe_error(&error));
            ResetError::Failed { message, source: error.into() }
        };
        let mut tx = tracehop_db::begin(self.pool()).await.map_err(failed)?;
        traced(
            "LOCK",
            "loyalty.accruals",
            sqlx::query("LOCK TABLE loyalty.accruals, loyalty.accounts IN EXCLUSIVE MODE"),
            |query| query.execute(&mut *tx),
        )
        .await
        .map_err(failed)?;
        traced("DELETE", "loyalty.accruals", sqlx::query("DELETE FROM loyalty.accruals"), |query| {
            query.execute(&mut *tx)
        })
        .await
        .map_err(failed)?;
        traced(
            "UPDATE",
            "loyalty.accounts",
            sqlx::query("UPDATE loyalty.accounts SET points = 0, updated_at = now() WHERE points <> 0"),
            |query| query.execute(&mut *tx),
        )
        .await
        .map_err(failed)?;
        tracehop_db::commit(tx).await.map_err(failed)
    }
}
