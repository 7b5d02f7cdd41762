//! The order service's SQL: orders, their lines and the outbox.

use prost::{Message as _, Name as _};
use sqlx::PgPool;
use tracehop_db::traced;
use tracehop_messaging::headers::StoredContext;
use tracehop_proto::subjects;
use tracehop_proto::v1::{ErrorCode, LineItem, Order, OrderEvent, OrderStatus, PricedItem};
use uuid::Uuid;

/// An order as first written, before stock and payment are settled.
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<LineItem>,
    /// Personal data: stored for the notification event, never logged.
    pub email: Option<String>,
    pub trace_id: String,
    /// The checkout's W3C context, for work done later for this order.
    pub traceparent: Option<String>,
}

/// Who an order is for: what its event carries besides the decision.
#[derive(Clone, Debug)]
pub struct Party {
    pub customer_id: String,
    /// Personal data: carried to notification, never logged.
    pub email: Option<String>,
}

/// The sum of the priced lines.
pub fn total_cents(priced: &[PricedItem]) -> i64 {
    priced.iter().map(|i| i.unit_price_cents * i64::from(i.quantity)).sum()
}

/// How an order ends.
#[derive(Clone, Debug)]
pub enum Decision {
    Confirmed,
    Failed { code: ErrorCode, reason: String },
}

/// How long after an order fails the repair loop first looks at its stock:
/// the checkout releases at once, and the loop is for when that failed.
pub const FIRST_REPAIR_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest pause between two repair attempts of one release.
pub const MAX_REPAIR_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

/// A failed order whose stock release is due for another attempt.
#[derive(Clone, Debug)]
pub struct DueRelease {
    pub order_id: Uuid,
    /// The checkout's context: the repair joins the order's own trace.
    pub context: StoredContext,
    /// Attempts the repair loop has made so far.
    pub attempts: u32,
}

/// SQL access to the `ordering` schema.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

type OrderRow = (Uuid, String, String, i64, Option<i32>, Option<String>, i64);

/// How long a resolver's claim on a row lasts: longer than a resolution
/// takes (a few calls with their timeouts), short enough that the rows of
/// an instance that died are taken by another soon.
pub const CLAIM_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The resolver's claim: up to 100 rows of `ordering.orders` that meet
/// `condition` and that no live claim holds, oldest `order_by` first,
/// marked claimed for `$<claim_param>` seconds and returned with
/// `order_id, <columns>`. Rows another transaction has locked (a claim in
/// progress, a checkout deciding) are skipped, not waited for, so resolvers
/// of several order instances split the work and never take a row twice.
fn claim(condition: &str, order_by: &str, columns: &str, claim_param: usize) -> String {
    format!(
        "UPDATE ordering.orders SET resolver_claimed_until = now() + make_interval(secs => ${claim_param})
         WHERE order_id IN (
             SELECT order_id FROM ordering.orders
             WHERE {condition} AND (resolver_claimed_until IS NULL OR resolver_claimed_until < now())
             ORDER BY {order_by} LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING order_id, {columns}"
    )
}

const ORDER_COLUMNS: &str = "order_id, customer_id, status, total_cents, failure_code, failure_reason,
     (EXTRACT(EPOCH FROM created_at) * 1000)::bigint";

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Writes the order as `pending`, with its lines, in one statement (so
    /// one round trip and one commit): the lines' insert reads the order's
    /// from a data-modifying CTE, and the foreign key is checked at the end
    /// of the statement, when both are there.
    pub async fn insert_pending(&self, order: &NewOrder) -> Result<(), sqlx::Error> {
        traced(
            "INSERT",
            "ordering.orders",
            sqlx::query(
                "WITH o AS (
                    INSERT INTO ordering.orders (order_id, customer_id, status, email, trace_id, traceparent)
                    VALUES ($1, $2, 'pending', $3, $4, $5) RETURNING order_id)
                 INSERT INTO ordering.order_items (order_id, sku, quantity)
                 SELECT o.order_id, i.sku, i.quantity FROM o, UNNEST($6::text[], $7::int[]) AS i(sku, quantity)",
            )
            .bind(order.order_id)
            .bind(&order.customer_id)
            .bind(&order.email)
            .bind(&order.trace_id)
            .bind(&order.traceparent)
            .bind(order.items.iter().map(|i| i.sku.clone()).collect::<Vec<_>>())
            .bind(order.items.iter().map(|i| i.quantity as i32).collect::<Vec<_>>()),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Removes a pending order that was rejected before anything was
    /// reserved or charged, so that a rejected request leaves nothing behind.
    /// One statement: the lines go with the order, and the foreign key is
    /// checked once both are gone.
    pub async fn delete_pending(&self, order_id: Uuid) -> Result<(), sqlx::Error> {
        traced(
            "DELETE",
            "ordering.orders",
            sqlx::query(
                "WITH o AS (DELETE FROM ordering.orders WHERE order_id = $1 AND status = 'pending' RETURNING order_id)
                 DELETE FROM ordering.order_items WHERE order_id IN (SELECT order_id FROM o)",
            )
            .bind(order_id),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Records the order's fate and, in the same statement (so one round
    /// trip and one commit), its priced lines and its event in the outbox
    /// together with `context` (the trace the event belongs to). Returns
    /// when the order was created (Unix ms), or `None`, writing nothing, when
    /// it was already decided: an order is decided once, with one event.
    /// A failed order also gets the durable intent to release its stock
    /// (any failed order may hold some: a reserve that timed out may still
    /// have gone through), which [`Store::releases_due`] hands to the repair
    /// loop until [`Store::mark_released`] clears it.
    pub async fn decide(
        &self,
        order_id: Uuid,
        party: &Party,
        decision: &Decision,
        priced: &[PricedItem],
        context: &StoredContext,
    ) -> Result<Option<i64>, sqlx::Error> {
        let total = total_cents(priced);
        let (status, code, reason) = match decision {
            Decision::Confirmed => ("confirmed", None, None),
            Decision::Failed { code, reason } => ("failed", Some(*code as i32), Some(reason.as_str())),
        };
        let event_id = Uuid::now_v7();
        let event = OrderEvent {
            event_id: event_id.to_string(),
            order_id: order_id.to_string(),
            customer_id: party.customer_id.clone(),
            status: if matches!(decision, Decision::Confirmed) { OrderStatus::Confirmed } else { OrderStatus::Failed }
                as i32,
            items: priced.to_vec(),
            total_cents: total,
            failure_reason: reason.unwrap_or_default().to_string(),
            email: party.email.clone().unwrap_or_default(),
            occurred_at_unix_ms: tracehop_telemetry::now_unix_ms(),
        };
        let subject = match decision {
            Decision::Confirmed => subjects::ORDER_CONFIRMED,
            Decision::Failed { .. } => subjects::ORDER_FAILED,
        };
        traced(
            "UPDATE",
            "ordering.orders",
            sqlx::query_scalar(
                "WITH decided AS (
                    UPDATE ordering.orders SET status = $2, total_cents = $3, failure_code = $4, failure_reason = $5,
                           stock_release_pending = ($2 = 'failed'),
                           release_next_at = CASE WHEN $2 = 'failed' THEN now() + make_interval(secs => $6) END,
                           updated_at = now()
                    WHERE order_id = $1 AND status = 'pending'
                    RETURNING (EXTRACT(EPOCH FROM created_at) * 1000)::bigint AS created_ms),
                 priced AS (
                    UPDATE ordering.order_items o SET unit_price_cents = p.price
                    FROM UNNEST($7::text[], $8::bigint[]) AS p(sku, price), decided
                    WHERE o.order_id = $1 AND o.sku = p.sku),
                 event AS (
                    INSERT INTO ordering.outbox (event_id, subject, payload_type, payload, traceparent, tracestate, baggage)
                    SELECT $9, $10, $11, $12, $13, $14, $15 FROM decided)
                 SELECT created_ms FROM decided",
            )
            .bind(order_id)
            .bind(status)
            .bind(total)
            .bind(code)
            .bind(reason)
            .bind(FIRST_REPAIR_AFTER.as_secs_f64())
            .bind(priced.iter().map(|i| i.sku.clone()).collect::<Vec<_>>())
            .bind(priced.iter().map(|i| i.unit_price_cents).collect::<Vec<_>>())
            .bind(event_id)
            .bind(subject)
            .bind(OrderEvent::full_name())
            .bind(event.encode_to_vec())
            .bind(&context.traceparent)
            .bind(&context.tracestate)
            .bind(&context.baggage)
            , |query| query.fetch_optional(&self.pool),
        )
        .await
    }

    /// The order with its lines, if it exists.
    pub async fn get(&self, order_id: Uuid) -> Result<Option<Order>, sqlx::Error> {
        let row: Option<OrderRow> = traced(
            "SELECT",
            "ordering.orders",
            sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM ordering.orders WHERE order_id = $1")).bind(order_id),
            |query| query.fetch_optional(&self.pool),
        )
        .await?;
        let Some((order_id, customer_id, status, total_cents, failure_code, failure_reason, created_at)) = row else {
            return Ok(None);
        };
        let items: Vec<(String, i32, i64)> = traced(
            "SELECT",
            "ordering.order_items",
            sqlx::query_as(
                "SELECT sku, quantity, unit_price_cents FROM ordering.order_items WHERE order_id = $1 ORDER BY sku",
            )
            .bind(order_id),
            |query| query.fetch_all(&self.pool),
        )
        .await?;
        Ok(Some(Order {
            order_id: order_id.to_string(),
            customer_id,
            status: match status.as_str() {
                "confirmed" => OrderStatus::Confirmed,
                "failed" => OrderStatus::Failed,
                _ => OrderStatus::Pending,
            } as i32,
            items: items
                .into_iter()
                .map(|(sku, quantity, unit_price_cents)| PricedItem {
                    sku,
                    quantity: quantity as u32,
                    unit_price_cents,
                })
                .collect(),
            total_cents,
            failure_reason: failure_reason.unwrap_or_default(),
            failure_code: failure_code.unwrap_or_default(),
            created_at_unix_ms: created_at,
        }))
    }
}

/// What the idempotency table says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new and now ours: run the checkout, then save the reply.
    Claimed,
    /// The first request with this key was answered with this (encoded) reply.
    Replay(Vec<u8>),
    /// The first request with this key is still running, or died: `age` is
    /// how long ago it started, `order_id` the order it created, if any.
    InProgress { age: std::time::Duration, order_id: Option<Uuid> },
    /// The key was used for a different request.
    Mismatch,
}

impl Store {
    /// Claims `key` for `customer_id` and a request whose fingerprint is
    /// `request_hash`, or says who has it. The insert is the arbiter:
    /// concurrent duplicates race on the primary key and exactly one wins.
    pub async fn claim_key(&self, customer_id: &str, key: &str, request_hash: &str) -> Result<KeyClaim, sqlx::Error> {
        let inserted = traced(
            "INSERT",
            "ordering.idempotency_keys",
            sqlx::query(
                "INSERT INTO ordering.idempotency_keys (customer_id, key, request_hash) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(customer_id)
            .bind(key)
            .bind(request_hash),
            |query| query.execute(&self.pool),
        )
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(KeyClaim::Claimed);
        }
        let (hash, reply, order_id, age): (String, Option<Vec<u8>>, Option<Uuid>, f64) = traced(
            "SELECT",
            "ordering.idempotency_keys",
            sqlx::query_as(
                "SELECT request_hash, reply, order_id, EXTRACT(EPOCH FROM now() - created_at)::float8
                 FROM ordering.idempotency_keys WHERE customer_id = $1 AND key = $2",
            )
            .bind(customer_id)
            .bind(key),
            |query| query.fetch_one(&self.pool),
        )
        .await?;
        Ok(match reply {
            _ if hash != request_hash => KeyClaim::Mismatch,
            Some(reply) => KeyClaim::Replay(reply),
            None => KeyClaim::InProgress { age: std::time::Duration::from_secs_f64(age.max(0.0)), order_id },
        })
    }

    /// Links a claimed key to the order its request created.
    pub async fn link_key(&self, customer_id: &str, key: &str, order_id: Uuid) -> Result<(), sqlx::Error> {
        traced(
            "UPDATE",
            "ordering.idempotency_keys",
            sqlx::query("UPDATE ordering.idempotency_keys SET order_id = $3 WHERE customer_id = $1 AND key = $2")
                .bind(customer_id)
                .bind(key)
                .bind(order_id),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Gives up a key whose request died before it created an order, so that
    /// a retry can claim it afresh.
    pub async fn abandon_key(&self, customer_id: &str, key: &str) -> Result<(), sqlx::Error> {
        traced(
            "DELETE",
            "ordering.idempotency_keys",
            sqlx::query(
                "DELETE FROM ordering.idempotency_keys
                 WHERE customer_id = $1 AND key = $2 AND reply IS NULL AND order_id IS NULL",
            )
            .bind(customer_id)
            .bind(key),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Saves the answer every retry with this key gets.
    pub async fn save_reply(&self, customer_id: &str, key: &str, reply: &[u8]) -> Result<(), sqlx::Error> {
        traced(
            "UPDATE",
            "ordering.idempotency_keys",
            sqlx::query("UPDATE ordering.idempotency_keys SET reply = $3 WHERE customer_id = $1 AND key = $2")
                .bind(customer_id)
                .bind(key)
                .bind(reply),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Checkouts still pending after `older_than`: interrupted by a crash;
    /// claimed for this resolver ([`claim`]). Each comes with who it is for and the context of its checkout.
    pub async fn interrupted(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<(Uuid, Party, StoredContext)>, sqlx::Error> {
        let rows: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(&claim(
            "status = 'pending' AND created_at < now() - make_interval(secs => $1)",
            "created_at",
            "customer_id, email, traceparent",
            2,
        ))
        .bind(older_than.as_secs_f64())
        .bind(CLAIM_FOR.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, customer_id, email, traceparent)| {
                (id, Party { customer_id, email }, StoredContext { traceparent, ..StoredContext::default() })
            })
            .collect())
    }

    /// Confirmed orders whose stock commit did not get through; claimed
    /// for this resolver ([`claim`]).
    pub async fn uncommitted(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<(Uuid, StoredContext)>, sqlx::Error> {
        let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(&claim(
            "status = 'confirmed' AND NOT stock_committed AND updated_at < now() - make_interval(secs => $1)",
            "updated_at",
            "traceparent",
            2,
        ))
        .bind(older_than.as_secs_f64())
        .bind(CLAIM_FOR.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, traceparent)| (id, StoredContext { traceparent, ..StoredContext::default() }))
            .collect())
    }

    /// Failed orders whose stock release is due: never confirmed by
    /// inventory, and past their next attempt. Each comes with the context of
    /// its checkout and the attempts made so far by the repair loop;
    /// claimed for this resolver ([`claim`]).
    pub async fn releases_due(&self) -> Result<Vec<DueRelease>, sqlx::Error> {
        let rows: Vec<(Uuid, Option<String>, i32)> = sqlx::query_as(&claim(
            "stock_release_pending AND release_next_at <= now()",
            "release_next_at",
            "traceparent, release_attempts",
            1,
        ))
        .bind(CLAIM_FOR.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(order_id, traceparent, attempts)| DueRelease {
                order_id,
                context: StoredContext { traceparent, ..StoredContext::default() },
                attempts: attempts.max(0) as u32,
            })
            .collect())
    }

    /// Records that inventory confirmed the release: the intent is done.
    pub async fn mark_released(&self, order_id: Uuid) -> Result<(), sqlx::Error> {
        traced(
            "UPDATE",
            "ordering.orders",
            sqlx::query("UPDATE ordering.orders SET stock_release_pending = false WHERE order_id = $1").bind(order_id),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Records a failed repair attempt and schedules the next one, backing
    /// off exponentially up to [`MAX_REPAIR_BACKOFF`]; returns the attempts
    /// made so far.
    pub async fn release_failed(&self, order_id: Uuid) -> Result<u32, sqlx::Error> {
        let attempts: i32 = traced(
            "UPDATE",
            "ordering.orders",
            sqlx::query_scalar(
                "UPDATE ordering.orders SET release_attempts = release_attempts + 1,
                        release_next_at = now() + make_interval(secs => least($2, power(2, release_attempts)))
                 WHERE order_id = $1 RETURNING release_attempts",
            )
            .bind(order_id)
            .bind(MAX_REPAIR_BACKOFF.as_secs_f64()),
            |query| query.fetch_one(&self.pool),
        )
        .await?;
        Ok(attempts.max(0) as u32)
    }

    /// Records that inventory confirmed the sale.
    pub async fn mark_committed(&self, order_id: Uuid) -> Result<(), sqlx::Error> {
        traced(
            "UPDATE",
            "ordering.orders",
            sqlx::query("UPDATE ordering.orders SET stock_committed = true WHERE order_id = $1").bind(order_id),
            |query| query.execute(&self.pool),
        )
        .await
        .map(|_| ())
    }
}
