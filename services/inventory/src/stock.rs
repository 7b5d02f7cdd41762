//! The inventory handlers and their SQL.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgPool;
use tracehop_db::{traced, wire_error};
use tracehop_proto::v1::{
    CommitStockReply, CommitStockRequest, Error as WireError, ErrorCode, GetPricesReply, GetPricesRequest, PricedItem,
    ReleaseStockReply, ReleaseStockRequest, ReserveStockReply, ReserveStockRequest,
};
use uuid::Uuid;

/// The handlers, sharing one connection pool.
#[derive(Clone, Debug)]
pub struct Stock {
    pool: PgPool,
}

type Reply<T> = Result<T, WireError>;

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

fn parse_order_id(order_id: &str) -> Reply<Uuid> {
    Uuid::parse_str(order_id).map_err(|_| invalid("order_id is not a UUID"))
}

impl Stock {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Reserves every item of the order or none. A retry for the same order
    /// returns the reservation already made.
    #[tracing::instrument(name = "reserve stock", skip_all, fields(order.id = %request.order_id, item.count = request.items.len() as i64), err(Display))]
    pub async fn reserve(self, request: ReserveStockRequest) -> Reply<ReserveStockReply> {
        let order_id = parse_order_id(&request.order_id)?;
        if request.items.is_empty() {
            return Err(invalid("an order needs at least one item"));
        }
        let mut seen = HashSet::new();
        for item in &request.items {
            if item.quantity == 0 || item.quantity > i32::MAX as u32 {
                return Err(invalid(format!("quantity of {} must be positive", item.sku)));
            }
            if !seen.insert(item.sku.as_str()) {
                return Err(invalid(format!("sku {} appears twice", item.sku)));
            }
        }
        let db = |e: sqlx::Error| wire_error(&e);
        let mut tx = self.pool.begin().await.map_err(db)?;

        let existing: Vec<(String, i32, i64)> = traced(
            "SELECT",
            "inventory.reservations",
            sqlx::query_as(
                "SELECT sku, quantity, unit_price_cents FROM inventory.reservations
                 WHERE order_id = $1 AND state <> 'released' ORDER BY sku",
            )
            .bind(order_id)
            .fetch_all(&mut *tx),
        )
        .await
        .map_err(db)?;
        if !existing.is_empty() {
            return Ok(priced_reply(existing));
        }

        // Lock products in one global order (by SKU) so that concurrent
        // reservations cannot deadlock.
        let mut items: Vec<_> = request.items.iter().collect();
        items.sort_by(|a, b| a.sku.cmp(&b.sku));
        let mut reserved = Vec::with_capacity(items.len());
        for item in items {
            let quantity = item.quantity as i32;
            let price: Option<i64> = traced(
                "UPDATE",
                "inventory.products",
                sqlx::query_scalar(
                    "UPDATE inventory.products SET on_hand = on_hand - $2, reserved = reserved + $2
                     WHERE sku = $1 AND on_hand >= $2 RETURNING price_cents",
                )
                .bind(&item.sku)
                .bind(quantity)
                .fetch_optional(&mut *tx),
            )
            .await
            .map_err(db)?;
            let Some(price) = price else {
                let on_hand: Option<i32> = traced(
                    "SELECT",
                    "inventory.products",
                    sqlx::query_scalar("SELECT on_hand FROM inventory.products WHERE sku = $1")
                        .bind(&item.sku)
                        .fetch_optional(&mut *tx),
                )
                .await
                .map_err(db)?;
                // Dropping the transaction rolls back what was reserved so far.
                return Err(match on_hand {
                    None => WireError::new(ErrorCode::NotFound, format!("unknown sku {}", item.sku)),
                    Some(left) => WireError::new(
                        ErrorCode::OutOfStock,
                        format!("not enough stock for {}: {} requested, {left} available", item.sku, item.quantity),
                    ),
                });
            };
            reserved.push((item.sku.clone(), quantity, price));
        }
        traced(
            "INSERT",
            "inventory.reservations",
            sqlx::query(
                "INSERT INTO inventory.reservations (order_id, sku, quantity, unit_price_cents, state)
                 SELECT $1, * , 'reserved' FROM UNNEST($2::text[], $3::int[], $4::bigint[])",
            )
            .bind(order_id)
            .bind(reserved.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
            .bind(reserved.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(reserved.iter().map(|r| r.2).collect::<Vec<_>>())
            .execute(&mut *tx),
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(priced_reply(reserved))
    }

    /// Turns the order's reservation into a sale. Idempotent.
    #[tracing::instrument(name = "commit stock", skip_all, fields(order.id = %request.order_id), err(Display))]
    pub async fn commit(self, request: CommitStockRequest) -> Reply<CommitStockReply> {
        let order_id = parse_order_id(&request.order_id)?;
        traced(
            "UPDATE",
            "inventory.reservations",
            sqlx::query(
                "WITH moved AS (
                    UPDATE inventory.reservations SET state = 'sold', updated_at = now()
                    WHERE order_id = $1 AND state = 'reserved' RETURNING sku, quantity)
                 UPDATE inventory.products p SET reserved = p.reserved - m.quantity, sold = p.sold + m.quantity
                 FROM moved m WHERE p.sku = m.sku",
            )
            .bind(order_id)
            .execute(&self.pool),
        )
        .await
        .map_err(|e| wire_error(&e))?;
        Ok(CommitStockReply::default())
    }

    /// Puts the order's reserved stock back on hand. Idempotent, and a no-op
    /// for an order with nothing reserved (so it is always safe as a
    /// compensation).
    #[tracing::instrument(name = "release stock", skip_all, fields(order.id = %request.order_id), err(Display))]
    pub async fn release(self, request: ReleaseStockRequest) -> Reply<ReleaseStockReply> {
        let order_id = parse_order_id(&request.order_id)?;
        let released: Vec<i32> = traced(
            "UPDATE",
            "inventory.reservations",
            sqlx::query_scalar(
                "WITH moved AS (
                    UPDATE inventory.reservations SET state = 'released', updated_at = now()
                    WHERE order_id = $1 AND state = 'reserved' RETURNING sku, quantity)
                 UPDATE inventory.products p SET reserved = p.reserved - m.quantity, on_hand = p.on_hand + m.quantity
                 FROM moved m WHERE p.sku = m.sku RETURNING m.quantity",
            )
            .bind(order_id)
            .fetch_all(&self.pool),
        )
        .await
        .map_err(|e| wire_error(&e))?;
        Ok(ReleaseStockReply { error: None, released_units: released.iter().map(|q| *q as u32).sum() })
    }

    /// Unit prices of the requested SKUs; any unknown SKU is an error.
    #[tracing::instrument(name = "get prices", skip_all, fields(sku.count = request.skus.len() as i64), err(Display))]
    pub async fn prices(self, request: GetPricesRequest) -> Reply<GetPricesReply> {
        if request.skus.is_empty() {
            return Err(invalid("no sku given"));
        }
        let rows: Vec<(String, i64)> = traced(
            "SELECT",
            "inventory.products",
            sqlx::query_as("SELECT sku, price_cents FROM inventory.products WHERE sku = ANY($1)")
                .bind(&request.skus)
                .fetch_all(&self.pool),
        )
        .await
        .map_err(|e| wire_error(&e))?;
        let prices: BTreeMap<String, i64> = rows.into_iter().collect();
        if let Some(unknown) = request.skus.iter().find(|sku| !prices.contains_key(*sku)) {
            return Err(WireError::new(ErrorCode::NotFound, format!("unknown sku {unknown}")));
        }
        Ok(GetPricesReply { error: None, unit_price_cents: prices.into_iter().collect() })
    }
}

fn priced_reply(lines: Vec<(String, i32, i64)>) -> ReserveStockReply {
    let items: Vec<PricedItem> = lines
        .into_iter()
        .map(|(sku, quantity, unit_price_cents)| PricedItem { sku, quantity: quantity as u32, unit_price_cents })
        .collect();
    let total_cents = items.iter().map(|i| i.unit_price_cents * i64::from(i.quantity)).sum();
    ReserveStockReply { error: None, items, total_cents }
}
