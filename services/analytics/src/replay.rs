//! Replay and rebuild for analytics: the event handler as a
//! [`Projection`], and the reset that a rebuild starts with.
//!
//! A rebuild runs while the live consumer keeps recording, and must still
//! come out identical. Every recorded event moves `analytics.totals` in the
//! same transaction as its `analytics.order_events` row, so the totals are
//! always the sum of the rows. The reset keeps that true by taking both
//! tables in `EXCLUSIVE` mode before it empties them: it waits for every
//! live transaction in flight to commit and holds off new ones until it has
//! committed. A live event is therefore recorded either wholly before the
//! reset (its row is deleted with its share of the totals, and the replay
//! records it again) or wholly after it (its row survives with its share,
//! and the replay finds the row and skips it). The replay and the live
//! consumer may record the same event at once: the event id is the key,
//! `ON CONFLICT DO NOTHING` lets one of them count it. Reads (the summary)
//! are not blocked by the lock; for a moment they see empty totals that
//! grow back.

use tracehop_db::traced;
use tracehop_messaging::{Delivery, Outcome, ProcessError, Projection, ResetError};
use tracehop_proto::v1::OrderEvent;

use crate::record::Recorder;

impl Projection for Recorder {
    type Event = OrderEvent;

    async fn apply(&self, delivery: Delivery<OrderEvent>) -> Result<Outcome, ProcessError> {
        match self.record(&delivery.event).await {
            Ok(true) => Ok(Outcome::Applied),
            Ok(false) => Ok(Outcome::Skipped),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes every recorded event and zeroes the totals, in one
    /// transaction that holds off live recording (see the module's
    /// documentation).
    async fn reset(&self) -> Result<(), ResetError> {
        let failed = |error: sqlx::Error| {
            let message = format!("failed to reset analytics ({})", tracehop_db::describe_error(&error));
            ResetError::Failed { message, source: error.into() }
        };
        let mut tx = tracehop_db::begin(self.pool()).await.map_err(failed)?;
        traced(
            "LOCK",
            "analytics.order_events",
            sqlx::query("LOCK TABLE analytics.order_events, analytics.totals IN EXCLUSIVE MODE"),
            |query| query.execute(&mut *tx),
        )
        .await
        .map_err(failed)?;
        traced("DELETE", "analytics.order_events", sqlx::query("DELETE FROM analytics.order_events"), |query| {
            query.execute(&mut *tx)
        })
        .await
        .map_err(failed)?;
        traced(
            "INSERT",
            "analytics.totals",
            sqlx::query(
                "INSERT INTO analytics.totals (id, orders_confirmed, orders_failed, revenue_cents)
                 VALUES (true, 0, 0, 0)
                 ON CONFLICT (id) DO UPDATE SET orders_confirmed = 0, orders_failed = 0, revenue_cents = 0",
            ),
            |query| query.execute(&mut *tx),
        )
        .await
        .map_err(failed)?;
        tracehop_db::commit(tx).await.map_err(failed)
    }
}
