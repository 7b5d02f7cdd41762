//! The resolver: finishes what a crash interrupted, so that every accepted
//! order ends confirmed or failed and stock is never left held.
//!
//! - A checkout still `pending` after `pending_timeout` was interrupted: its
//!   stock is released and it is failed (which writes `orders.failed`, and
//!   payment then voids or refunds any charge).
//! - A confirmed order whose stock commit did not get through has the
//!   (idempotent) commit repeated.
//! - A failed order whose stock release did not get through (inventory or
//!   its database down, a timeout) has the (idempotent) release repeated,
//!   with exponential backoff, until inventory confirms it: the release is
//!   as certain as the commit. Each attempt is a `repair stock release` span
//!   in the order's trace.
//!
//! Each resolution runs in a span that joins the order's own trace.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracehop_proto::v1::ErrorCode;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use tracehop_db::describe_error;
use tracehop_telemetry::mark_failed;

use crate::checkout::Orders;
use crate::store::{Decision, DueRelease};

/// Runs a resolution round every `interval` until `shutdown`.
pub async fn run(orders: Orders, interval: Duration, pending_timeout: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = round(&orders, pending_timeout).await {
            tracing::warn!(error = %error, "resolver round failed");
        }
    }
}

async fn round(orders: &Orders, pending_timeout: Duration) -> Result<(), sqlx::Error> {
    for (order_id, party, context) in orders.store().interrupted(pending_timeout).await? {
        let span = tracing::info_span!("resolve interrupted checkout", otel.kind = "internal", order.id = %order_id);
        let _ = span.set_parent(context.context());
        async {
            let reason = "the checkout was interrupted; the order was not completed".to_string();
            let failure = Decision::Failed { code: ErrorCode::Unavailable, reason };
            if let Err(error) = orders.fail_and_release(order_id, &party, &[], &[], failure, &context).await {
                tracing::warn!(order.id = %order_id, error = %error.message, "failed to fail an interrupted order");
            }
        }
        .instrument(span)
        .await;
    }
    for (order_id, context) in orders.store().uncommitted(Duration::from_secs(5)).await? {
        let span = tracing::info_span!("repeat stock commit", otel.kind = "internal", order.id = %order_id);
        let _ = span.set_parent(context.context());
        orders.commit_and_record(order_id).instrument(span).await;
    }
    for due in orders.store().releases_due().await? {
        repair_release(orders, due).await;
    }
    Ok(())
}

/// One more attempt at a failed order's stock release, in the order's trace.
async fn repair_release(orders: &Orders, due: DueRelease) {
    let span = tracing::info_span!(
        "repair stock release",
        otel.kind = "internal",
        order.id = %due.order_id,
        tracehop.repair.attempt = i64::from(due.attempts + 1),
        stock.released_units = tracing::field::Empty,
    );
    let _ = span.set_parent(due.context.context());
    async {
        match orders.release(due.order_id).await {
            Ok(units) => {
                tracing::Span::current().record("stock.released_units", i64::from(units));
                if let Err(error) = orders.store().mark_released(due.order_id).await {
                    tracing::warn!(order.id = %due.order_id, error = %describe_error(&error), "failed to record a stock release");
                }
            }
            Err(error) => {
                let next = orders.store().release_failed(due.order_id).await;
                // The call's own CLIENT span recorded the failure.
                mark_failed(
                    &tracing::Span::current(),
                    error.error_type(),
                    &format!("stock release failed ({error}); attempts so far: {}", next.unwrap_or(due.attempts + 1)),
                );
            }
        }
    }
    .instrument(span)
    .await;
}
