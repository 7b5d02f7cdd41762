//! The `svc.analytics.summary` request: the running totals.

use sqlx::PgPool;
use tracehop_db::{traced, wire_error};
use tracehop_proto::v1::{AnalyticsSummaryReply, AnalyticsSummaryRequest, Error as WireError};

/// The responder's shared state.
#[derive(Clone, Debug)]
pub struct Summary {
    pool: PgPool,
}

impl Summary {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The totals, and how many events they were made from, read in one
    /// statement so that they agree with each other.
    pub async fn summary(self, _request: AnalyticsSummaryRequest) -> Result<AnalyticsSummaryReply, WireError> {
        let row: Option<(i64, i64, i64, i64)> = traced(
            "SELECT",
            "analytics.totals",
            sqlx::query_as(
                "SELECT t.orders_confirmed, t.orders_failed, t.revenue_cents,
                        (SELECT count(*) FROM analytics.order_events)
                 FROM analytics.totals t WHERE t.id",
            ),
            |query| query.fetch_optional(&self.pool),
        )
        .await
        .map_err(|e| wire_error(&e))?;
        // No totals row yet reads as nothing recorded.
        let (confirmed, failed, revenue_cents, events) = row.unwrap_or_default();
        Ok(AnalyticsSummaryReply {
            error: None,
            orders_confirmed: confirmed.max(0) as u64,
            orders_failed: failed.max(0) as u64,
            revenue_cents,
            events_recorded: events.max(0) as u64,
        })
    }
}
