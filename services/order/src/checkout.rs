//! The order handlers: `svc.order.place` (checkout) and `svc.order.get`.

use std::sync::Arc;

use tokio::sync::Notify;
use tracehop_db::wire_error;
use tracehop_messaging::headers::StoredContext;
use tracehop_messaging::{self as messaging, RequestError};
use tracehop_proto::subjects;
use tracehop_proto::v1::{
    ChargeReply, ChargeRequest, CommitStockReply, CommitStockRequest, Error as WireError, ErrorCode, GetOrderReply,
    GetOrderRequest, PlaceOrderReply, PlaceOrderRequest, PricedItem, ReleaseStockReply, ReleaseStockRequest,
    ReserveStockReply, ReserveStockRequest,
};
use tracehop_telemetry::{current_trace_id, record_failure};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::config::Config;
use crate::store::{Decision, NewOrder, Store};

/// The handlers' shared state.
#[derive(Clone)]
pub struct Orders {
    store: Store,
    nats: async_nats::Client,
    config: Config,
    /// Wakes the relay as soon as an event is in the outbox.
    outbox_written: Arc<Notify>,
}

fn db(error: sqlx::Error) -> WireError {
    wire_error(&error)
}

impl Orders {
    pub fn new(store: Store, nats: async_nats::Client, config: Config, outbox_written: Arc<Notify>) -> Self {
        Self { store, nats, config, outbox_written }
    }

    /// Checkout. Answers once the order is decided: with the confirmed order,
    /// or with an error and (when one was created) the failed order.
    #[tracing::instrument(
        name = "place order",
        skip_all,
        fields(order.id = tracing::field::Empty, customer.id = %request.customer_id, order.item_count = request.items.len() as i64),
        err(Debug)
    )]
    pub async fn place(self, request: PlaceOrderRequest) -> Result<PlaceOrderReply, WireError> {
        request.validate().map_err(|error| WireError::new(ErrorCode::InvalidArgument, error.to_string()))?;
        let order_id = Uuid::now_v7();
        tracing::Span::current().record("order.id", order_id.to_string());
        let context = StoredContext::of(&tracing::Span::current().context());
        let order = NewOrder {
            order_id,
            customer_id: request.customer_id.clone(),
            items: request.items.clone(),
            email: Some(request.email.clone()).filter(|email| !email.is_empty()),
            trace_id: current_trace_id(),
        };
        self.store.insert_pending(&order).await.map_err(db)?;

        let reservation = messaging::request::<_, ReserveStockReply>(
            &self.nats,
            subjects::INVENTORY_RESERVE,
            &ReserveStockRequest { order_id: order_id.to_string(), items: request.items.clone() },
            self.config.inventory_timeout,
        )
        .await;
        let reserved = match reservation {
            Ok(reserved) => reserved,
            Err(RequestError::Remote(error))
                if matches!(error.kind(), ErrorCode::InvalidArgument | ErrorCode::NotFound | ErrorCode::OutOfStock) =>
            {
                // Rejected before anything was held: leave nothing behind.
                self.store.delete_pending(order_id).await.map_err(db)?;
                let code = if error.kind() == ErrorCode::OutOfStock {
                    ErrorCode::OutOfStock
                } else {
                    ErrorCode::InvalidArgument
                };
                return Err(WireError::new(code, error.message));
            }
            Err(error) => {
                // The outcome is unknown (a timeout may have reserved): compensate.
                self.release(order_id).await;
                let reason = format!("stock could not be reserved: {error}");
                return self.fail(order_id, &[], error.code(), reason, &context).await;
            }
        };

        let charge = messaging::request::<_, ChargeReply>(
            &self.nats,
            subjects::PAYMENT_CHARGE,
            &ChargeRequest {
                order_id: order_id.to_string(),
                amount_cents: reserved.total_cents,
                card: request.card.clone(),
            },
            self.config.payment_timeout,
        )
        .await;
        if let Err(error) = charge {
            self.release(order_id).await;
            let (code, reason) = match &error {
                RequestError::Remote(wire) => (wire.kind(), wire.message.clone()),
                other => (ErrorCode::Unavailable, format!("payment failed: {other}")),
            };
            return self.fail(order_id, &reserved.items, code, reason, &context).await;
        }

        // The order is paid: it is confirmed even if the commit does not
        // answer now; the reservation still holds the stock and the commit is
        // idempotent, so it can be repeated later.
        if let Err(error) = messaging::request::<_, CommitStockReply>(
            &self.nats,
            subjects::INVENTORY_COMMIT,
            &CommitStockRequest { order_id: order_id.to_string() },
            self.config.inventory_timeout,
        )
        .await
        {
            tracing::warn!(order.id = %order_id, error = %error, "stock commit failed; reservation left in place");
        }
        let order = self.store.decide(order_id, &Decision::Confirmed, &reserved.items, &context).await.map_err(db)?;
        self.outbox_written.notify_one();
        Ok(PlaceOrderReply { error: None, order: Some(order) })
    }

    /// Reads one order.
    #[tracing::instrument(name = "get order", skip_all, fields(order.id = %request.order_id), err(Debug))]
    pub async fn get(self, request: GetOrderRequest) -> Result<GetOrderReply, WireError> {
        let order_id = Uuid::parse_str(&request.order_id)
            .map_err(|_| WireError::new(ErrorCode::InvalidArgument, "order_id is not a UUID"))?;
        match self.store.get(order_id).await.map_err(db)? {
            Some(order) => Ok(GetOrderReply { error: None, order: Some(order) }),
            None => Err(WireError::new(ErrorCode::NotFound, format!("order {order_id} not found"))),
        }
    }

    /// Fails the order (and writes `orders.failed`), answering with the
    /// failed order and the reason.
    async fn fail(
        &self,
        order_id: Uuid,
        priced: &[PricedItem],
        code: ErrorCode,
        reason: String,
        context: &StoredContext,
    ) -> Result<PlaceOrderReply, WireError> {
        record_failure(&tracing::Span::current(), code.short_name(), &reason);
        let decision = Decision::Failed { code, reason: reason.clone() };
        let order = self.store.decide(order_id, &decision, priced, context).await.map_err(db)?;
        self.outbox_written.notify_one();
        Ok(PlaceOrderReply { error: Some(WireError::new(code, reason)), order: Some(order) })
    }

    /// Gives the order's reserved stock back. A failure is logged and traced
    /// but does not change the answer: release is idempotent and can be
    /// repeated.
    async fn release(&self, order_id: Uuid) {
        if let Err(error) = messaging::request::<_, ReleaseStockReply>(
            &self.nats,
            subjects::INVENTORY_RELEASE,
            &ReleaseStockRequest { order_id: order_id.to_string() },
            self.config.inventory_timeout,
        )
        .await
        {
            tracing::warn!(order.id = %order_id, error = %error, "stock release failed");
        }
    }
}
