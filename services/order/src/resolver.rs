//! The resolver: finishes what a crash interrupted, so that every accepted
//! order ends confirmed or failed and stock is never left held.
//!
//! - A checkout still `pending` after `pending_timeout` was interrupted: its
//!   stock is released and it is failed (which writes `orders.failed`, and
//!   payment then voids or refunds any charge).
//! - A confirmed order whose stock commit did not get through has the
//!   (idempotent) commit repeated.
//!
//! Each resolution runs in a span that joins the order's own trace.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracehop_proto::v1::ErrorCode;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::checkout::Orders;

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
    for (order_id, context) in orders.store().interrupted(pending_timeout).await? {
        let span = tracing::info_span!("resolve interrupted checkout", otel.kind = "internal", order.id = %order_id);
        let _ = span.set_parent(context.context());
        async {
            orders.release(order_id).await;
            let reason = "the checkout was interrupted; the order was not completed".to_string();
            if let Err(error) = orders.fail(order_id, &[], ErrorCode::Unavailable, reason, &context).await {
                tracing::warn!(order.id = %order_id, error = %error.message, "failed to fail an interrupted order");
            }
        }
        .instrument(span)
        .await;
    }
    for (order_id, context) in orders.store().uncommitted(Duration::from_secs(5)).await? {
        let span = tracing::info_span!("repeat stock commit", otel.kind = "internal", order.id = %order_id);
        let _ = span.set_parent(context.context());
        async {
            if orders.commit(order_id).await
                && let Err(error) = orders.store().mark_committed(order_id).await
            {
                tracing::warn!(order.id = %order_id, error = %error, "failed to record a stock commit");
            }
        }
        .instrument(span)
        .await;
    }
    Ok(())
}
