//! The order handlers: `svc.order.place` (checkout) and `svc.order.get`.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tracehop_db::wire_error;
use tracehop_messaging::headers::StoredContext;
use tracehop_messaging::{self as messaging, RequestError};
use tracehop_proto::Reply as _;
use tracehop_proto::subjects;
use tracehop_proto::v1::{
    ChargeReply, ChargeRequest, CommitStockReply, CommitStockRequest, Error as WireError, ErrorCode, GetOrderReply,
    GetOrderRequest, LineItem, Order, OrderStatus, PlaceOrderReply, PlaceOrderRequest, PricedItem, ReleaseStockReply,
    ReleaseStockRequest, ReserveStockReply, ReserveStockRequest,
};
use tracehop_telemetry::{current_trace_id, record_failure};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use tracehop_scenarios::{Scenario, Switches};

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::store::{Decision, KeyClaim, NewOrder, Party, Store, total_cents};

/// How long order waits for a charge while the scenario `payment-down` is
/// on and unfixed: the timeout it had before the incident taught the 3 s
/// one.
pub const UNFIXED_PAYMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest Idempotency-Key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The handlers' shared state.
#[derive(Clone)]
pub struct Orders {
    store: Store,
    nats: async_nats::Client,
    config: Config,
    /// Wakes the relay as soon as an event is in the outbox.
    outbox_written: Arc<Notify>,
    /// Guards the calls to payment.
    payment_breaker: Arc<CircuitBreaker>,
    /// The live scenarios (`payment-down` changes how payment is called).
    switches: Switches,
}

fn db(error: sqlx::Error) -> WireError {
    wire_error(&error)
}

impl Orders {
    pub fn new(
        store: Store,
        nats: async_nats::Client,
        config: Config,
        outbox_written: Arc<Notify>,
        switches: Switches,
    ) -> Self {
        let payment_breaker = Arc::new(CircuitBreaker::new(config.breaker_failures, config.breaker_open_for));
        Self { store, nats, config, outbox_written, payment_breaker, switches }
    }

    /// Checkout. Answers once the order is decided: with the confirmed order,
    /// or with an error and (when one was created) the failed order. With an
    /// Idempotency-Key, a retry gets the first answer back, and concurrent
    /// duplicates create one order.
    #[tracing::instrument(
        name = "place order",
        skip_all,
        fields(
            order.id = tracing::field::Empty,
            customer.id = %request.customer_id,
            order.item_count = request.items.len() as i64,
            order.idempotency_key_present = !request.idempotency_key.is_empty(),
            order.idempotent_replay = tracing::field::Empty,
        ),
    )]
    pub async fn place(self, request: PlaceOrderRequest) -> Result<PlaceOrderReply, WireError> {
        request.validate().map_err(|error| WireError::new(ErrorCode::InvalidArgument, error.to_string()))?;
        let key = request.idempotency_key.clone();
        if key.is_empty() {
            return self.checkout(request, None).await;
        }
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            ));
        }
        let customer = request.customer_id.clone();
        let hash = fingerprint(&request);
        let deadline = tokio::time::Instant::now() + self.config.pending_timeout.min(Duration::from_secs(10));
        loop {
            match self.store.claim_key(&customer, &key, &hash).await.map_err(db)? {
                KeyClaim::Claimed => {
                    let reply = self
                        .checkout(request, Some((customer.as_str(), key.as_str())))
                        .await
                        .unwrap_or_else(PlaceOrderReply::from_error);
                    let passing = reply.order.is_none()
                        && reply
                            .error()
                            .is_some_and(|e| matches!(e.kind(), ErrorCode::Unavailable | ErrorCode::Internal));
                    if passing {
                        // Nothing was decided: let a retry run the checkout again
                        // instead of replaying a passing failure forever.
                        let _ = self.store.abandon_key(&customer, &key).await;
                    } else {
                        self.store.save_reply(&customer, &key, &reply.encode_to_vec()).await.map_err(db)?;
                    }
                    return Ok(reply);
                }
                KeyClaim::Replay(bytes) => {
                    tracing::Span::current().record("order.idempotent_replay", true);
                    return PlaceOrderReply::decode(bytes.as_slice())
                        .map_err(|_| WireError::new(ErrorCode::Internal, "internal error"));
                }
                KeyClaim::Mismatch => {
                    return Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        "Idempotency-Key was already used for a different request",
                    ));
                }
                // The first request's process died: answer from the order it
                // created once the resolver has decided it, or start afresh
                // when it died before creating one.
                KeyClaim::InProgress { age, order_id } if age > self.config.pending_timeout => match order_id {
                    Some(order_id) => match self.store.get(order_id).await.map_err(db)? {
                        Some(order) if order.status != OrderStatus::Pending as i32 => {
                            let error = (order.status == OrderStatus::Failed as i32).then(|| {
                                WireError::new(
                                    ErrorCode::try_from(order.failure_code).unwrap_or(ErrorCode::Unavailable),
                                    order.failure_reason.clone(),
                                )
                            });
                            let reply = PlaceOrderReply { error, order: Some(order) };
                            self.store.save_reply(&customer, &key, &reply.encode_to_vec()).await.map_err(db)?;
                            return Ok(reply);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    },
                    None => self.store.abandon_key(&customer, &key).await.map_err(db)?,
                },
                KeyClaim::InProgress { .. } if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                KeyClaim::InProgress { .. } => {
                    return Err(WireError::new(
                        ErrorCode::Unavailable,
                        "a request with this Idempotency-Key is still in progress; retry later",
                    ));
                }
            }
        }
    }

    /// The checkout itself; `key` is the (customer, Idempotency-Key) it runs for.
    async fn checkout(
        &self,
        request: PlaceOrderRequest,
        key: Option<(&str, &str)>,
    ) -> Result<PlaceOrderReply, WireError> {
        let order_id = Uuid::now_v7();
        tracing::Span::current().record("order.id", order_id.to_string());
        let context = StoredContext::of(&tracing::Span::current().context());
        let party = Party {
            customer_id: request.customer_id.clone(),
            email: Some(request.email.clone()).filter(|email| !email.is_empty()),
        };
        let order = NewOrder {
            order_id,
            customer_id: party.customer_id.clone(),
            items: request.items.clone(),
            email: party.email.clone(),
            trace_id: current_trace_id(),
            traceparent: context.traceparent.clone(),
        };
        self.store.insert_pending(&order).await.map_err(db)?;
        let lines = request.items.as_slice();
        if let Some((customer, key)) = key {
            self.store.link_key(customer, key, order_id).await.map_err(db)?;
        }

        let reservation = self.reserve(order_id, &request.items).await;
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
                // The outcome is unknown (a timeout may have reserved): fail,
                // which records the intent to release, then release.
                let reason = format!("stock could not be reserved: {error}");
                let failure = Decision::Failed { code: error.code(), reason };
                return self.fail_and_release(order_id, &party, lines, &[], failure, &context).await;
            }
        };

        if let Err((code, reason)) = self.charge(order_id, reserved.total_cents, &request).await {
            let failure = Decision::Failed { code, reason };
            return self.fail_and_release(order_id, &party, lines, &reserved.items, failure, &context).await;
        }

        // Paid: the order is confirmed first and its stock committed after,
        // so that a crash in between leaves a confirmed order whose commit the
        // resolver repeats, never sold stock for an order that then fails.
        let order = self.decide(order_id, &party, lines, &Decision::Confirmed, &reserved.items, &context).await?;
        if order.status != OrderStatus::Confirmed as i32 {
            // The resolver failed this checkout while it was stuck; payment
            // refunds the charge when it sees the order's failure.
            let error = WireError::new(
                ErrorCode::try_from(order.failure_code).unwrap_or(ErrorCode::Unavailable),
                order.failure_reason.clone(),
            );
            return Ok(PlaceOrderReply { error: Some(error), order: Some(order) });
        }
        // The reply does not wait for the stock commit: the order is
        // confirmed, and its units are held as reserved, where no other
        // order can take them; the commit only moves them to sold. It runs
        // after the reply, in this trace, and a crash before it is recorded
        // is what the resolver repeats anyway (a confirmed order whose
        // commit is not recorded after 5 s). That takes one request and
        // five statements off every checkout's answer.
        let orders = self.clone();
        let span = tracing::info_span!("commit stock after the reply", otel.kind = "internal", order.id = %order_id);
        tokio::spawn(async move { orders.commit_and_record(order_id).await }.instrument(span));
        Ok(PlaceOrderReply { error: None, order: Some(order) })
    }

    /// Reserves the order's stock, asking again when inventory does not
    /// answer in time, up to `inventory_attempts` requests in all (each a
    /// CLIENT span of its own). Safe: a reserve is idempotent per order.
    async fn reserve(&self, order_id: Uuid, items: &[LineItem]) -> Result<ReserveStockReply, RequestError> {
        let request = ReserveStockRequest { order_id: order_id.to_string(), items: items.to_vec() };
        let mut attempt = 1;
        loop {
            let reply = messaging::request::<_, ReserveStockReply>(
                &self.nats,
                subjects::INVENTORY_RESERVE,
                &request,
                self.config.inventory_timeout,
            )
            .await;
            match reply {
                Err(RequestError::TimedOut { .. }) if attempt < self.config.inventory_attempts => attempt += 1,
                other => return other,
            }
        }
    }

    /// Charges through the circuit breaker. The error is the order's failure
    /// code and reason. While `payment-down` is on and unfixed, the charge
    /// goes out as it did before the fix: no breaker, a 30 s timeout.
    async fn charge(
        &self,
        order_id: Uuid,
        amount_cents: i64,
        request: &PlaceOrderRequest,
    ) -> Result<ChargeReply, (ErrorCode, String)> {
        if self.switches.get(Scenario::PaymentDown).broken() {
            return self.charge_unguarded(order_id, amount_cents, request).await;
        }
        self.charge_guarded(order_id, amount_cents, request).await
    }

    /// The charge as before the fix: no breaker, [`UNFIXED_PAYMENT_TIMEOUT`].
    async fn charge_unguarded(
        &self,
        order_id: Uuid,
        amount_cents: i64,
        request: &PlaceOrderRequest,
    ) -> Result<ChargeReply, (ErrorCode, String)> {
        let span = tracing::info_span!("call payment", otel.kind = "internal", payment.circuit_breaker.state = "none");
        self.switches.annotate(&span, &[Scenario::PaymentDown]);
        messaging::request::<_, ChargeReply>(
            &self.nats,
            subjects::PAYMENT_CHARGE,
            &ChargeRequest { order_id: order_id.to_string(), amount_cents, card: request.card.clone() },
            UNFIXED_PAYMENT_TIMEOUT,
        )
        .instrument(span.clone())
        .await
        .map_err(|error| payment_failure(&error))
    }

    /// Charges through the circuit breaker, with the configured timeout.
    async fn charge_guarded(
        &self,
        order_id: Uuid,
        amount_cents: i64,
        request: &PlaceOrderRequest,
    ) -> Result<ChargeReply, (ErrorCode, String)> {
        let permit = self.payment_breaker.permit();
        let span = tracing::info_span!(
            "call payment",
            otel.kind = "internal",
            payment.circuit_breaker.state = self.payment_breaker.state().as_str(),
            payment.circuit_breaker.trial = permit.as_ref().is_ok_and(|permit| permit.is_trial()),
            payment.circuit_breaker.state_after = tracing::field::Empty,
        );
        self.switches.annotate(&span, &[Scenario::PaymentDown]);
        let Ok(permit) = permit else {
            let reason = "payment is unavailable (circuit breaker open); the card was not charged".to_string();
            record_failure(&span, "circuit_open", &reason);
            return Err((ErrorCode::Unavailable, reason));
        };
        let result = messaging::request::<_, ChargeReply>(
            &self.nats,
            subjects::PAYMENT_CHARGE,
            &ChargeRequest { order_id: order_id.to_string(), amount_cents, card: request.card.clone() },
            self.config.payment_timeout,
        )
        .instrument(span.clone())
        .await;
        let unavailable = match &result {
            Ok(_) => false,
            Err(RequestError::Remote(error)) => {
                matches!(error.kind(), ErrorCode::PaymentFailed | ErrorCode::Unavailable)
            }
            Err(_) => true,
        };
        let state = permit.record(!unavailable);
        span.record("payment.circuit_breaker.state_after", state.as_str());
        // The failure is on the CLIENT span of the call; this span says
        // what the breaker made of it.
        result.map_err(|error| payment_failure(&error))
    }

    /// Commits the reservation and records that it did; what fails is
    /// logged, and the resolver repeats it.
    pub(crate) async fn commit_and_record(&self, order_id: Uuid) {
        if self.commit(order_id).await
            && let Err(error) = self.store.mark_committed(order_id).await
        {
            tracing::warn!(order.id = %order_id, error = %error, "failed to record a stock commit; the resolver repeats it");
        }
    }

    /// Commits the reservation; false when inventory did not confirm.
    pub(crate) async fn commit(&self, order_id: Uuid) -> bool {
        match messaging::request::<_, CommitStockReply>(
            &self.nats,
            subjects::INVENTORY_COMMIT,
            &CommitStockRequest { order_id: order_id.to_string() },
            self.config.inventory_timeout,
        )
        .await
        {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(order.id = %order_id, error = %error, "stock commit failed; the resolver will repeat it");
                false
            }
        }
    }

    /// Reads one order.
    #[tracing::instrument(name = "get order", skip_all, fields(order.id = %request.order_id))]
    pub async fn get(self, request: GetOrderRequest) -> Result<GetOrderReply, WireError> {
        let order_id = Uuid::parse_str(&request.order_id)
            .map_err(|_| WireError::new(ErrorCode::InvalidArgument, "order_id is not a UUID"))?;
        match self.store.get(order_id).await.map_err(db)? {
            Some(order) => Ok(GetOrderReply { error: None, order: Some(order) }),
            None => Err(WireError::new(ErrorCode::NotFound, format!("order {order_id} not found"))),
        }
    }

    /// Fails the order, then gives its stock back: the failure records the
    /// intent to release in the same transaction, so a release that does not
    /// get through now (inventory or its database down) is repeated by the
    /// repair loop until it does. `lines` are the order's lines as far as
    /// the caller knows them (for the answer only).
    pub(crate) async fn fail_and_release(
        &self,
        order_id: Uuid,
        party: &Party,
        lines: &[LineItem],
        priced: &[PricedItem],
        failure: Decision,
        context: &StoredContext,
    ) -> Result<PlaceOrderReply, WireError> {
        let Decision::Failed { code, reason } = &failure else {
            return Err(WireError::new(ErrorCode::Internal, "internal error: a failure was expected"));
        };
        // Not a failure of this span: the cause was recorded where it
        // happened (the charge's answer, a timeout), and the reply says it.
        let error = WireError::new(*code, reason.clone());
        let order = self.decide(order_id, party, lines, &failure, priced, context).await?;
        if self.release(order_id).await.is_ok()
            && let Err(error) = self.store.mark_released(order_id).await
        {
            tracing::warn!(order.id = %order_id, error = %tracehop_db::describe_error(&error), "failed to record a stock release; the repair loop repeats it");
        }
        Ok(PlaceOrderReply { error: Some(error), order: Some(order) })
    }

    /// Decides the order (writing its event to the outbox and waking the
    /// relay) and answers with it as decided, built from what the checkout
    /// knows rather than read back; an order the resolver decided first is
    /// read as it is.
    async fn decide(
        &self,
        order_id: Uuid,
        party: &Party,
        lines: &[LineItem],
        decision: &Decision,
        priced: &[PricedItem],
        context: &StoredContext,
    ) -> Result<Order, WireError> {
        match self.store.decide(order_id, party, decision, priced, context).await.map_err(db)? {
            Some(created_at_unix_ms) => {
                self.outbox_written.notify_one();
                Ok(decided_order(order_id, party, lines, decision, priced, created_at_unix_ms))
            }
            None => self
                .store
                .get(order_id)
                .await
                .map_err(db)?
                .ok_or_else(|| WireError::new(ErrorCode::Internal, "internal error: the order vanished")),
        }
    }

    /// Asks inventory to give the order's reserved stock back; the units
    /// released. Idempotent. A failure is logged and traced but changes no
    /// answer: the order's release intent stays, and the repair loop repeats
    /// the release.
    pub(crate) async fn release(&self, order_id: Uuid) -> Result<u32, RequestError> {
        messaging::request::<_, ReleaseStockReply>(
            &self.nats,
            subjects::INVENTORY_RELEASE,
            &ReleaseStockRequest { order_id: order_id.to_string() },
            self.config.inventory_timeout,
        )
        .await
        .map(|reply| reply.released_units)
        .inspect_err(|error| {
            tracing::warn!(order.id = %order_id, error = %error, "stock release failed; the repair loop repeats it");
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

/// The order as [`Orders::decide`] just wrote it: its lines sorted by SKU
/// (as [`Store::get`] reads them), priced where `priced` says.
fn decided_order(
    order_id: Uuid,
    party: &Party,
    lines: &[LineItem],
    decision: &Decision,
    priced: &[PricedItem],
    created_at_unix_ms: i64,
) -> Order {
    let mut items: Vec<PricedItem> = lines
        .iter()
        .map(|line| PricedItem {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_cents: priced.iter().find(|p| p.sku == line.sku).map_or(0, |p| p.unit_price_cents),
        })
        .collect();
    items.sort_by(|a, b| a.sku.cmp(&b.sku));
    let (status, failure_code, failure_reason) = match decision {
        Decision::Confirmed => (OrderStatus::Confirmed, 0, String::new()),
        Decision::Failed { code, reason } => (OrderStatus::Failed, *code as i32, reason.clone()),
    };
    Order {
        order_id: order_id.to_string(),
        customer_id: party.customer_id.clone(),
        status: status as i32,
        items,
        total_cents: total_cents(priced),
        failure_reason,
        failure_code,
        created_at_unix_ms,
    }
}

/// A failed charge as the order's failure code and reason.
fn payment_failure(error: &RequestError) -> (ErrorCode, String) {
    match error {
        RequestError::Remote(wire) => (wire.kind(), wire.message.clone()),
        RequestError::NoResponders { .. } => {
            (ErrorCode::Unavailable, "payment is not running; the card was not charged".to_string())
        }
        RequestError::TimedOut { timeout, .. } => (
            ErrorCode::Unavailable,
            format!("payment did not answer within {timeout:?}; any charge made will be refunded"),
        ),
        other => (ErrorCode::Unavailable, format!("payment failed: {other}")),
    }
}

/// A fingerprint of what was asked, to tell a retry from a different request
/// that reuses a key. Hashed, so no card number is stored.
fn fingerprint(request: &PlaceOrderRequest) -> String {
    let mut canonical = request.clone();
    canonical.idempotency_key.clear();
    let digest = Sha256::digest(canonical.encode_to_vec());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
