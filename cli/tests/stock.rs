//! Stock that always comes back: PostgreSQL killed while the releases of
//! failed orders are in flight. The failures record the intent to release
//! before the releases start; the releases die with the database; after it
//! returns, the order service's repair loop releases every unit, and each
//! repair is a span in its order's trace.
//!
//! The window is hit on purpose, not by chance: the test holds a real row
//! lock on a product (as a long batch job would), so that every release
//! waits in PostgreSQL's lock manager, and only then kills the server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sqlx::Connection as _;
use tracehop_spanfeed::{SpanKind, SpanStatus, fetch_trace};
use tracehop_testkit::{PostgresCluster, TestDatabase, TestSystem};

const ORDERS: usize = 6;

async fn scalar_on(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}

/// Polls `sql` until it returns `expected` or `limit` passes; the last value.
async fn wait_for(pool: &sqlx::PgPool, sql: &str, expected: i64, limit: Duration) -> i64 {
    let started = Instant::now();
    loop {
        let value = scalar_on(pool, sql).await;
        if value == expected || started.elapsed() > limit {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_held_by_failed_orders_comes_back_after_postgres_dies_mid_release() {
    // Every acknowledged commit survives the kill, as on a production server.
    let mut cluster = tokio::task::spawn_blocking(|| PostgresCluster::start_with(&[("synchronous_commit", "on")]))
        .await
        .unwrap()
        .expect("private PostgreSQL");
    let db = TestDatabase::create_on(&cluster.server_url()).await.expect("database");
    let db_url = db.url();
    let system = TestSystem::start_on(
        db,
        &[
            // Long enough to take the lock between the reserve and the release.
            ("PAYMENT_LATENCY_MS", "1500"),
            ("ORDER_RESOLVER_INTERVAL_MS", "500"),
            ("ORDER_INVENTORY_TIMEOUT_MS", "4000"),
        ],
    )
    .await
    .expect("system start");
    let pool = system.db.pool.clone();

    // Declined orders: each reserves, is declined, fails, then releases.
    let gateway = system.gateway_url.clone();
    let answers: Vec<_> = (0..ORDERS)
        .map(|n| {
            let body = order_body(&format!("crash-{n}"), &[("KB-001", 1), ("MS-002", 1)], CARD_DECLINED);
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let response = reqwest::Client::new()
                    .post(format!("{gateway}/v1/orders"))
                    .json(&body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("gateway");
                (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    let reserved_orders = "SELECT COUNT(DISTINCT order_id) FROM inventory.reservations WHERE state = 'reserved'";
    assert_eq!(wait_for(&pool, reserved_orders, ORDERS as i64, Duration::from_secs(20)).await, ORDERS as i64);

    // A batch job's row lock: every release now waits for it in PostgreSQL.
    let mut batch_job = sqlx::PgConnection::connect(&db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut batch_job).await.unwrap();
    sqlx::query("SELECT 1 FROM inventory.products WHERE sku = 'KB-001' FOR UPDATE")
        .execute(&mut batch_job)
        .await
        .unwrap();
    let waiting =
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    assert_eq!(
        wait_for(&pool, waiting, ORDERS as i64, Duration::from_secs(20)).await,
        ORDERS as i64,
        "every release waits on the lock; logs:\n{}",
        system.logs()
    );
    // The intent was recorded with the failure, before the releases began.
    let intents = "SELECT COUNT(*) FROM ordering.orders WHERE status = 'failed' AND stock_release_pending";
    assert_eq!(scalar_on(&pool, intents).await, ORDERS as i64);

    // The crash, with the releases in flight.
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.kill().expect("kill PostgreSQL");
        std::thread::sleep(Duration::from_secs(2));
        cluster.start_again().expect("start PostgreSQL");
        cluster
    })
    .await
    .unwrap();
    drop(batch_job);
    let back = Instant::now();

    for answer in answers {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, 402, "a declined order: {body}");
        assert_eq!(body["order"]["status"], "failed", "{body}");
    }
    // The repair loop gives every unit back.
    let reserved = "SELECT COALESCE(SUM(reserved), 0)::bigint FROM inventory.products";
    assert_eq!(wait_for(&pool, reserved, 0, Duration::from_secs(60)).await, 0, "logs:\n{}", system.logs());
    let repaired_after = back.elapsed();
    assert_eq!(scalar_on(&pool, intents).await, 0, "every release intent is done");
    assert_eq!(scalar_on(&pool, "SELECT COUNT(*) FROM inventory.reservations WHERE state = 'reserved'").await, 0);
    let conserved = "SELECT COUNT(*) FROM inventory.products WHERE sku IN ('KB-001', 'MS-002') AND sold <> 0";
    assert_eq!(scalar_on(&pool, conserved).await, 0, "nothing was sold");
    println!("stock released {:.1} s after PostgreSQL came back", repaired_after.as_secs_f64());

    // Each order's trace shows the repair that released its two units.
    let traces: Vec<String> = sqlx::query_scalar("SELECT trace_id FROM ordering.orders WHERE status = 'failed'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(traces.len(), ORDERS);
    for trace_id in traces {
        let mut repair = None;
        for _ in 0..100 {
            let spans = fetch_trace(&system.js, &trace_id).await.unwrap();
            repair = spans.into_iter().find(|s| {
                s.service == "order"
                    && s.name == "repair stock release"
                    && s.status != SpanStatus::Error
                    && s.attributes.get("stock.released_units").and_then(|v| v.as_i64()) == Some(2)
            });
            if repair.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let repair = repair.unwrap_or_else(|| panic!("no successful repair span in trace {trace_id}"));
        assert_eq!(repair.kind, SpanKind::Internal);
        assert!(repair.parent_span_id.is_some(), "the repair joins the order's trace under its checkout");
    }
    drop(system);
    tokio::task::spawn_blocking(move || drop(cluster.stop())).await.unwrap();
}
