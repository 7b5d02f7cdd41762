//! The inventory handlers and their SQL.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgPool;
use tracehop_db::{retry_transient, traced, wire_error};
use tracehop_proto::v1::{
    CommitStockReply, CommitStockRequest, Error as WireError, ErrorCode, GetPricesReply, GetPricesRequest, LineItem,
    PricedItem, ReleaseStockReply, ReleaseStockRequest, ReserveStockReply, ReserveStockRequest,
};
use tracehop_scenarios::{Scenario, Switches};
use uuid::Uuid;

use crate::inflight::InFlight;
use crate::restock;

/// The handlers, sharing one connection pool.
#[derive(Clone, Debug)]
pub struct Stock {
    pool: PgPool,
    /// The live scenarios (`slow-inventory` acts in [`Stock::reserve`]).
    switches: Switches,
    /// Reservations running now, by order: a retry joins its first attempt.
    reserving: InFlight<Uuid, Reply<ReserveStockReply>>,
}

type Reply<T> = Result<T, WireError>;

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

fn parse_order_id(order_id: &str) -> Reply<Uuid> {
    Uuid::parse_str(order_id).map_err(|_| invalid("order_id is not a UUID"))
}

impl Stock {
    /// The handlers with every scenario off.
    pub fn new(pool: PgPool) -> Self {
        Self::with_switches(pool, Switches::all_off())
    }

    /// The handlers, following the live scenario switches.
    pub fn with_switches(pool: PgPool, switches: Switches) -> Self {
        Self { pool, switches, reserving: InFlight::default() }
    }

    /// Reserves every item of the order or none. A retry for the same order
    /// returns the reservation already made, or, while the first attempt is
    /// still running in this process, waits for its answer.
    #[tracing::instrument(
        name = "reserve stock",
        skip_all,
        fields(
            order.id = %request.order_id,
            item.count = request.items.len() as i64,
            inventory.restock = tracing::field::Empty,
            inventory.reserve.joined = tracing::field::Empty,
        ),
    )]
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
        let mut items: Vec<_> = request.items.iter().collect();
        // Lock products in one global order (by SKU), as commit and release
        // do, so that concurrent reservations cannot deadlock.
        items.sort_by(|a, b| a.sku.cmp(&b.sku));
        let (reply, joined) = self
            .reserving
            .run(order_id, || async {
                retry_transient(|| self.try_reserve(order_id, &items)).await.map_err(|e| wire_error(&e))?
            })
            .await;
        if joined {
            tracing::Span::current().record("inventory.reserve.joined", true);
        }
        reply
    }

    /// One attempt at [`Stock::reserve`], in one transaction. The outer
    /// `Result` is the database's; the inner one the business answer.
    async fn try_reserve(&self, order_id: Uuid, items: &[&LineItem]) -> Result<Reply<ReserveStockReply>, sqlx::Error> {
        let mut tx = tracehop_db::begin(&self.pool).await?;
        // The order's hold row first: a release of the same order waits for
        // this transaction, and a release that came first is seen.
        // `xmax = 0` tells a row this statement inserted from one it updated:
        // a new hold row means no earlier attempt reserved anything, so the
        // look for an earlier reservation is needed only on a retry.
        let (released, created): (bool, bool) = traced(
            "INSERT",
            "inventory.order_holds",
            sqlx::query_as(
                "INSERT INTO inventory.order_holds (order_id) VALUES ($1)
                 ON CONFLICT (order_id) DO UPDATE SET updated_at = now() RETURNING released, xmax = 0",
            )
            .bind(order_id),
            |query| query.fetch_one(&mut *tx),
        )
        .await?;
        if released {
            return Ok(Err(WireError::new(
                ErrorCode::Conflict,
                format!("the stock of order {order_id} was already released; it cannot be reserved again"),
            )));
        }
        if !created {
            let existing: Vec<(String, i32, i64)> = traced(
                "SELECT",
                "inventory.reservations",
                sqlx::query_as(
                    "SELECT sku, quantity, unit_price_cents FROM inventory.reservations
                     WHERE order_id = $1 AND state <> 'released' ORDER BY sku",
                )
                .bind(order_id),
                |query| query.fetch_all(&mut *tx),
            )
            .await?;
            if !existing.is_empty() {
                return Ok(Ok(priced_reply(existing)));
            }
        }
        // The restock queue comes before the products, in the lock order of
        // every transaction that takes both.
        let slow = self.switches.get(Scenario::SlowInventory);
        if slow.on && restock::files_request(order_id, slow.rate_or_default()) {
            let span = tracing::Span::current();
            self.switches.annotate(&span, &[Scenario::SlowInventory]);
            let filed = restock::file_request(&mut tx, &self.pool, order_id, items, slow.fixed).await?;
            span.record("inventory.restock", filed.as_str());
        }

        // Each item is taken from its product and written as reserved in one
        // statement; SKU order is the lock order.
        let mut reserved = Vec::with_capacity(items.len());
        for item in items {
            let quantity = item.quantity as i32;
            let price: Option<i64> = traced(
                "UPDATE",
                "inventory.products",
                sqlx::query_scalar(
                    "WITH taken AS (
                        UPDATE inventory.products SET on_hand = on_hand - $3, reserved = reserved + $3
                        WHERE sku = $2 AND on_hand >= $3 RETURNING price_cents)
                     INSERT INTO inventory.reservations (order_id, sku, quantity, unit_price_cents, state)
                     SELECT $1, $2, $3, price_cents, 'reserved' FROM taken RETURNING unit_price_cents",
                )
                .bind(order_id)
                .bind(&item.sku)
                .bind(quantity),
                |query| query.fetch_optional(&mut *tx),
            )
            .await?;
            let Some(price) = price else {
                let on_hand: Option<i32> = traced(
                    "SELECT",
                    "inventory.products",
                    sqlx::query_scalar("SELECT on_hand FROM inventory.products WHERE sku = $1").bind(&item.sku),
                    |query| query.fetch_optional(&mut *tx),
                )
                .await?;
                // Dropping the transaction rolls back what was reserved so far.
                return Ok(Err(match on_hand {
                    None => WireError::new(ErrorCode::NotFound, format!("unknown sku {}", item.sku)),
                    Some(left) => WireError::new(
                        ErrorCode::OutOfStock,
                        format!("not enough stock for {}: {} requested, {left} available", item.sku, item.quantity),
                    ),
                }));
            };
            reserved.push((item.sku.clone(), quantity, price));
        }
        tracehop_db::commit(tx).await?;
        Ok(Ok(priced_reply(reserved)))
    }

    /// Turns the order's reservation into a sale. Idempotent.
    #[tracing::instrument(name = "commit stock", skip_all, fields(order.id = %request.order_id))]
    pub async fn commit(self, request: CommitStockRequest) -> Reply<CommitStockReply> {
        let order_id = parse_order_id(&request.order_id)?;
        retry_transient(|| self.settle(order_id, Settlement::Sell)).await.map_err(|e| wire_error(&e))?;
        Ok(CommitStockReply::default())
    }

    /// Puts the order's reserved stock back on hand. Idempotent, and safe
    /// for an order with nothing reserved (so it is always safe as a
    /// compensation): it leaves the order released, so that a reservation
    /// for it arriving later is refused.
    #[tracing::instrument(name = "release stock", skip_all, fields(order.id = %request.order_id, stock.released_units = tracing::field::Empty))]
    pub async fn release(self, request: ReleaseStockRequest) -> Reply<ReleaseStockReply> {
        let order_id = parse_order_id(&request.order_id)?;
        let released_units =
            retry_transient(|| self.settle(order_id, Settlement::Release)).await.map_err(|e| wire_error(&e))?;
        tracing::Span::current().record("stock.released_units", i64::from(released_units));
        Ok(ReleaseStockReply { error: None, released_units })
    }

    /// Moves the order's reserved units to sold or back on hand, in one
    /// transaction; returns the units moved. Locks in the global order every
    /// stock transaction uses: the order's hold row (release only), then its
    /// products by SKU, then its reservations, so that no two of them wait
    /// on each other in a cycle.
    async fn settle(&self, order_id: Uuid, settlement: Settlement) -> Result<u32, sqlx::Error> {
        let mut tx = tracehop_db::begin(&self.pool).await?;
        if settlement == Settlement::Release {
            // Waits for a reserve of this order in flight, and refuses any
            // that comes after.
            traced(
                "INSERT",
                "inventory.order_holds",
                sqlx::query(
                    "INSERT INTO inventory.order_holds (order_id, released) VALUES ($1, true)
                     ON CONFLICT (order_id) DO UPDATE SET released = true, updated_at = now()",
                )
                .bind(order_id),
                |query| query.execute(&mut *tx),
            )
            .await?;
        }
        // The products in SKU order, as reserve locks them. Without this the
        // planner joins the products table in heap order (a hash join over a
        // seq scan once it has statistics), and two settlements, or one and
        // a reserve, can wait on each other in a cycle. NO KEY UPDATE is the
        // strength the UPDATE takes anyway, and it does not block the key
        // share locks of a reservation's foreign key. A separate statement,
        // so that the move below sees, in its own snapshot, everything
        // committed while this one waited.
        traced(
            "SELECT",
            "inventory.products",
            sqlx::query(
                "SELECT 1 FROM inventory.products WHERE sku IN (
                    SELECT sku FROM inventory.reservations WHERE order_id = $1 AND state = 'reserved')
                 ORDER BY sku FOR NO KEY UPDATE",
            )
            .bind(order_id),
            |query| query.execute(&mut *tx),
        )
        .await?;
        let statement = match settlement {
            Settlement::Sell => {
                "WITH moved AS (
                    UPDATE inventory.reservations SET state = 'sold', updated_at = now()
                    WHERE order_id = $1 AND state = 'reserved' RETURNING sku, quantity)
                 UPDATE inventory.products p SET reserved = p.reserved - m.quantity, sold = p.sold + m.quantity
                 FROM moved m WHERE p.sku = m.sku RETURNING m.quantity"
            }
            Settlement::Release => {
                "WITH moved AS (
                    UPDATE inventory.reservations SET state = 'released', updated_at = now()
                    WHERE order_id = $1 AND state = 'reserved' RETURNING sku, quantity)
                 UPDATE inventory.products p SET reserved = p.reserved - m.quantity, on_hand = p.on_hand + m.quantity
                 FROM moved m WHERE p.sku = m.sku RETURNING m.quantity"
            }
        };
        let moved: Vec<i32> =
            traced("UPDATE", "inventory.reservations", sqlx::query_scalar(statement).bind(order_id), |query| {
                query.fetch_all(&mut *tx)
            })
            .await?;
        tracehop_db::commit(tx).await?;
        Ok(moved.iter().map(|q| *q as u32).sum())
    }

    /// Unit prices of the requested SKUs; any unknown SKU is an error.
    #[tracing::instrument(name = "get prices", skip_all, fields(sku.count = request.skus.len() as i64))]
    pub async fn prices(self, request: GetPricesRequest) -> Reply<GetPricesReply> {
        if request.skus.is_empty() {
            return Err(invalid("no sku given"));
        }
        let rows: Vec<(String, i64)> = traced(
            "SELECT",
            "inventory.products",
            sqlx::query_as("SELECT sku, price_cents FROM inventory.products WHERE sku = ANY($1)").bind(&request.skus),
            |query| query.fetch_all(&self.pool),
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

/// Where reserved units go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settlement {
    /// Sold: the order was confirmed.
    Sell,
    /// Back on hand: the order failed.
    Release,
}

fn priced_reply(lines: Vec<(String, i32, i64)>) -> ReserveStockReply {
    let items: Vec<PricedItem> = lines
        .into_iter()
        .map(|(sku, quantity, unit_price_cents)| PricedItem { sku, quantity: quantity as u32, unit_price_cents })
        .collect();
    let total_cents = items.iter().map(|i| i.unit_price_cents * i64::from(i.quantity)).sum();
    ReserveStockReply { error: None, items, total_cents }
}
