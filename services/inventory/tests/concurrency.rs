//! Concurrent reserves, commits and releases of overlapping SKUs, each order
//! listing its items in its own order: none is aborted by a deadlock, none
//! needs a retry, and stock is conserved. Runs the real handlers against a
//! real (fresh) database; PostgreSQL's own deadlock counter is the judge.

use std::time::Duration;

use futures::StreamExt as _;
use tracehop_inventory::stock::Stock;
use tracehop_proto::v1::{CommitStockRequest, ErrorCode, LineItem, ReleaseStockRequest, ReserveStockRequest};
use tracehop_testkit::TestDatabase;
use uuid::Uuid;

const SKUS: [&str; 6] = ["KB-001", "MS-002", "MN-003", "CB-004", "HS-005", "LMP-006"];
const ORDERS: usize = 400;

/// Three to five distinct SKUs in a random order, so that two orders name
/// shared SKUs in opposite orders as often as not.
fn random_items(rng: &mut fastrand::Rng) -> Vec<LineItem> {
    let mut skus = SKUS.to_vec();
    rng.shuffle(&mut skus);
    skus.truncate(rng.usize(3..=5));
    skus.into_iter().map(|sku| LineItem { sku: sku.to_string(), quantity: rng.u32(1..=3) }).collect()
}

async fn deadlocks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_reserves_commits_and_releases_never_deadlock() {
    let db = TestDatabase::create().await.expect("database");
    let seeded: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, (on_hand + reserved + sold)::bigint FROM inventory.products ORDER BY sku")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    // Statistics, as autovacuum gathers them on a live system: with them the
    // planner joins a small products table by scanning it in heap order,
    // which is no order at all unless the statement imposes one.
    sqlx::query("ANALYZE inventory.products").execute(&db.pool).await.unwrap();
    let before = deadlocks(&db.pool).await;
    // A pool as large as the concurrency, so that transactions really overlap.
    let pool = tracehop_db::connect(&db.url(), 16).await.unwrap();
    let stock = Stock::new(pool.clone());

    let mut rng = fastrand::Rng::with_seed(7);
    let orders: Vec<(Uuid, Vec<LineItem>, bool)> =
        (0..ORDERS).map(|n| (Uuid::now_v7(), random_items(&mut rng), n % 2 == 0)).collect();
    // Each order reserves, then commits or releases at once, while others
    // reserve: every kind of stock transaction overlaps every other.
    let failures: Vec<String> = futures::stream::iter(orders.iter().cloned())
        .map(|(order_id, items, sell)| {
            let stock = stock.clone();
            async move {
                let reserved = stock
                    .clone()
                    .reserve(ReserveStockRequest { order_id: order_id.to_string(), items: items.clone() })
                    .await;
                match reserved {
                    Ok(_) => {}
                    Err(error) if error.kind() == ErrorCode::OutOfStock => return None,
                    Err(error) => return Some(format!("reserve {order_id}: {error:?}")),
                }
                let settled = if sell {
                    stock.commit(CommitStockRequest { order_id: order_id.to_string() }).await.map(|_| ())
                } else {
                    stock.release(ReleaseStockRequest { order_id: order_id.to_string() }).await.map(|_| ())
                };
                settled.err().map(|error| format!("settle {order_id}: {error:?}"))
            }
        })
        .buffer_unordered(16)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {ORDERS} orders failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Every backend flushes its statistics when it exits.
    pool.close().await;
    let mut after = before;
    for _ in 0..20 {
        after = deadlocks(&db.pool).await;
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after - before, 0, "PostgreSQL detected deadlocks (retries hid them)");

    let now: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, (on_hand + reserved + sold)::bigint FROM inventory.products ORDER BY sku")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(now, seeded, "stock conserved");
    let reserved: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(reserved), 0)::bigint FROM inventory.products")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(reserved, 0, "every reservation was settled");
    let sold: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(quantity), 0)::bigint FROM inventory.reservations WHERE state = 'sold'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let sold_column: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(sold), 0)::bigint FROM inventory.products")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(sold, sold_column, "units sold = units of committed reservations");
}

/// A reserve that arrives after its order's release (the order service gave
/// up waiting for it) is refused, and holds nothing.
#[tokio::test]
async fn a_reserve_after_the_release_is_refused() {
    let db = TestDatabase::create().await.expect("database");
    let stock = Stock::new(db.pool.clone());
    let order_id = Uuid::now_v7().to_string();
    let released = stock.clone().release(ReleaseStockRequest { order_id: order_id.clone() }).await.unwrap();
    assert_eq!(released.released_units, 0);
    let late = stock
        .clone()
        .reserve(ReserveStockRequest {
            order_id: order_id.clone(),
            items: vec![LineItem { sku: "KB-001".to_string(), quantity: 2 }],
        })
        .await
        .expect_err("a reserve after the release must be refused");
    assert_eq!(late.kind(), ErrorCode::Conflict);
    let reserved: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(reserved), 0)::bigint FROM inventory.products")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(reserved, 0);
}
