//! The chaos suite: a steady stream of orders against the whole system while
//! each of the seven services is killed with SIGKILL and restarted, then the
//! NATS server, then PostgreSQL (a private cluster, so nothing else is
//! disturbed). Afterwards it waits for quiet and checks, by SQL across the
//! schemas and by stream state, that nothing was lost and nothing doubled:
//!
//! - every order is confirmed or failed, none stuck;
//! - every confirmed order has exactly one loyalty accrual, one analytics
//!   record and one e-mail; every failed order one failure e-mail and one
//!   analytics record; no failed order stays charged;
//! - stock is conserved: seeded = on hand + reserved + sold, and nothing
//!   stays reserved;
//! - no event id is applied twice, and the ORDERS stream holds exactly one
//!   event per decided order.
//!
//! The kills here land wherever the load happens to be; `stock.rs` kills
//! PostgreSQL on purpose while releases are in flight.
//!
//! The short form runs in CI. The long form is for benchmarks:
//! `TRACEHOP_CHAOS_ORDERS=600 TRACEHOP_CHAOS_ROUNDS=2 cargo test --release -p tracehop --test chaos -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracehop_launcher::SERVICES;
use tracehop_testkit::{PostgresCluster, TestDatabase, TestSystem};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const SKUS: [&str; 6] = ["KB-001", "MS-002", "MN-003", "CB-004", "HS-005", "LMP-006"];
const CUSTOMERS: [&str; 5] = ["alice", "bob", "premium-pat", "carol", "premium-sam"];

/// The n-th order of the run: a few lines, one card in seven declined.
fn nth_order(n: usize) -> Value {
    let lines = 1 + n % 3;
    let items: Vec<Value> = (0..lines)
        .map(|line| json!({"sku": SKUS[(n + line * 2) % SKUS.len()], "quantity": 1 + (n + line) % 3}))
        .collect();
    let card = if n % 7 == 3 { CARD_DECLINED } else { CARD_OK };
    json!({
        "customer_id": CUSTOMERS[n % CUSTOMERS.len()],
        "items": items,
        "card": {"number": card, "expiry": "12/34", "cvv": "123"},
        "email": format!("chaos{n}@example.com"),
    })
}

#[derive(Default)]
struct Tally {
    /// order id -> status, for every order the gateway answered with.
    accepted: BTreeMap<String, String>,
    /// Final answers by HTTP status.
    statuses: BTreeMap<u16, usize>,
    /// Attempts that got no final answer and were retried with the same key.
    retries: usize,
    /// Orders that never got a final answer.
    abandoned: usize,
}

/// Places the n-th order like a careful client: the same Idempotency-Key on
/// every retry, retrying while there is no final answer.
async fn place(http: &reqwest::Client, gateway: &str, n: usize, tally: &Mutex<Tally>) {
    let body = nth_order(n);
    for _ in 0..120 {
        let response = http
            .post(format!("{gateway}/v1/orders"))
            .header("Idempotency-Key", format!("chaos-order-{n}"))
            .json(&body)
            .send()
            .await;
        if let Ok(response) = response {
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let order = if answer.get("order_id").is_some() { Some(&answer) } else { answer.get("order") };
            // A 5xx without an order decided nothing: try again.
            if status < 500 || order.is_some() {
                let mut tally = tally.lock().await;
                *tally.statuses.entry(status).or_default() += 1;
                if let Some(order) = order {
                    let id = order["order_id"].as_str().unwrap_or_default().to_string();
                    tally.accepted.insert(id, order["status"].as_str().unwrap_or_default().to_string());
                }
                return;
            }
        }
        tally.lock().await.retries += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tally.lock().await.abandoned += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_doubles_nothing() {
    let min_orders = setting("TRACEHOP_CHAOS_ORDERS", 150);
    let concurrency = setting("TRACEHOP_CHAOS_CONCURRENCY", 4);
    let rounds = setting("TRACEHOP_CHAOS_ROUNDS", 1);
    let started = Instant::now();

    // synchronous_commit stays on: a killed database must keep what it
    // acknowledged, as a production one does.
    let cluster = tokio::task::spawn_blocking(|| PostgresCluster::start_with(&[("synchronous_commit", "on")]))
        .await
        .unwrap()
        .expect("private PostgreSQL");
    let db = TestDatabase::create_on(&cluster.server_url()).await.expect("database");
    let mut cluster = Some(cluster);
    let mut system = TestSystem::start_on(
        db,
        &[
            ("ORDER_PENDING_TIMEOUT_MS", "15000"),
            ("ORDER_RESOLVER_INTERVAL_MS", "1000"),
            ("ORDER_BREAKER_OPEN_MS", "1000"),
            ("PAYMENT_LATENCY_MS", "5"),
        ],
    )
    .await
    .expect("system start");
    let seeded: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, (on_hand + reserved + sold)::bigint FROM inventory.products ORDER BY sku")
            .fetch_all(&system.db.pool)
            .await
            .unwrap();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let chaos_done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let gateway = system.gateway_url.clone();
    let load = {
        let (tally, chaos_done, next) = (tally.clone(), chaos_done.clone(), next.clone());
        async move {
            // Orders keep coming until the chaos is over and enough were placed.
            let numbers = futures::stream::unfold((), move |()| {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let more = n < min_orders || !chaos_done.load(Ordering::Relaxed);
                async move { more.then_some((n, ())) }
            });
            numbers.for_each_concurrent(concurrency, |n| place(&http, &gateway, n, &tally)).await;
        }
    };
    let mut events = Vec::new();
    let chaos = async {
        let step = Duration::from_millis(1500);
        for _ in 0..rounds {
            for service in SERVICES {
                tokio::time::sleep(step).await;
                system.kill_service(service).unwrap();
                events.push(format!("{:>6.1}s kill -9 {service}", started.elapsed().as_secs_f64()));
                tokio::time::sleep(Duration::from_millis(700)).await;
                system.start_service(service).unwrap();
            }
            tokio::time::sleep(step).await;
            events.push(format!("{:>6.1}s restart NATS", started.elapsed().as_secs_f64()));
            system.nats_server.restart().await.unwrap();
            tokio::time::sleep(step * 2).await;
            events.push(format!("{:>6.1}s kill -9 PostgreSQL, then start it", started.elapsed().as_secs_f64()));
            let mut postgres = cluster.take().expect("the cluster");
            cluster = Some(
                tokio::task::spawn_blocking(move || {
                    postgres.kill().expect("kill PostgreSQL");
                    std::thread::sleep(Duration::from_millis(700));
                    postgres.start_again().expect("start PostgreSQL");
                    postgres
                })
                .await
                .unwrap(),
            );
            tokio::time::sleep(step).await;
        }
        chaos_done.store(true, Ordering::Relaxed);
    };
    tokio::join!(load, chaos);
    let load_done = started.elapsed();
    system.wait_ready(&SERVICES).await.expect("every service back");

    // Quiet: nothing pending anywhere.
    let quiet = wait_for_quiet(&system).await;
    let pool = &system.db.pool;
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    let tally = tally.lock().await;
    let report = [
        ("orders answered", tally.accepted.len() as i64),
        ("orders in the database", count("SELECT COUNT(*) FROM ordering.orders").await),
        ("confirmed", count("SELECT COUNT(*) FROM ordering.orders WHERE status = 'confirmed'").await),
        ("failed", count("SELECT COUNT(*) FROM ordering.orders WHERE status = 'failed'").await),
        ("stuck (pending)", count("SELECT COUNT(*) FROM ordering.orders WHERE status = 'pending'").await),
        ("events in ORDERS", system.js.get_stream("ORDERS").await.unwrap().info().await.unwrap().state.messages as i64),
        ("dead letters", system.js.get_stream("DEADLETTER").await.unwrap().info().await.unwrap().state.messages as i64),
        ("loyalty accruals", count("SELECT COUNT(*) FROM loyalty.accruals").await),
        ("analytics records", count("SELECT COUNT(*) FROM analytics.order_events").await),
        ("e-mails recorded", count("SELECT COUNT(*) FROM notification.emails").await),
        (".eml files written", std::fs::read_dir(&system.mail_dir).map(|d| d.count()).unwrap_or(0) as i64),
        ("client retries", tally.retries as i64),
        ("orders given up by the client", tally.abandoned as i64),
    ];
    println!("\nchaos run: load {:.1}s, quiet after {:.1}s more", load_done.as_secs_f64(), quiet.as_secs_f64());
    for event in &events {
        println!("  {event}");
    }
    println!("  HTTP answers: {:?}", tally.statuses);
    for (name, value) in &report {
        println!("  {name:<32} {value}");
    }

    // Nothing stuck, nothing lost.
    assert_eq!(tally.abandoned, 0, "every order got a final answer");
    assert!(tally.accepted.len() >= min_orders * 3 / 4, "most orders were accepted: {}", tally.accepted.len());
    assert_eq!(count("SELECT COUNT(*) FROM ordering.orders WHERE status = 'pending'").await, 0);
    for (order_id, answered) in tally.accepted.iter() {
        let stored: Option<String> = sqlx::query_scalar("SELECT status FROM ordering.orders WHERE order_id = $1::uuid")
            .bind(order_id)
            .fetch_optional(pool)
            .await
            .unwrap();
        let stored = stored.unwrap_or_else(|| panic!("accepted order {order_id} is missing"));
        // The answer the client got is the order's fate.
        assert_eq!(&stored, answered, "order {order_id}");
    }
    // Every effect exactly once.
    let checks = [
        ("a confirmed order without exactly one accrual",
         "SELECT COUNT(*) FROM ordering.orders o WHERE status = 'confirmed'
          AND (SELECT COUNT(*) FROM loyalty.accruals a WHERE a.order_id = o.order_id) <> 1"),
        ("a confirmed order without exactly one analytics record",
         "SELECT COUNT(*) FROM ordering.orders o WHERE status = 'confirmed'
          AND (SELECT COUNT(*) FROM analytics.order_events e WHERE e.order_id = o.order_id AND e.kind = 'confirmed') <> 1"),
        ("a confirmed order without exactly one confirmation e-mail",
         "SELECT COUNT(*) FROM ordering.orders o WHERE status = 'confirmed'
          AND (SELECT COUNT(*) FROM notification.emails m WHERE m.order_id = o.order_id AND m.kind = 'confirmation') <> 1"),
        ("a failed order without exactly one failure e-mail",
         "SELECT COUNT(*) FROM ordering.orders o WHERE status = 'failed'
          AND (SELECT COUNT(*) FROM notification.emails m WHERE m.order_id = o.order_id AND m.kind = 'failure') <> 1"),
        ("a failed order without exactly one analytics record",
         "SELECT COUNT(*) FROM ordering.orders o WHERE status = 'failed'
          AND (SELECT COUNT(*) FROM analytics.order_events e WHERE e.order_id = o.order_id AND e.kind = 'failed') <> 1"),
        ("an effect for an order that was never decided",
         "SELECT (SELECT COUNT(*) FROM loyalty.accruals a WHERE NOT EXISTS
                 (SELECT 1 FROM ordering.orders o WHERE o.order_id = a.order_id AND o.status = 'confirmed'))
               + (SELECT COUNT(*) FROM analytics.order_events e WHERE NOT EXISTS
                 (SELECT 1 FROM ordering.orders o WHERE o.order_id = e.order_id AND o.status <> 'pending'))"),
        ("a failed order that is still charged",
         "SELECT COUNT(*) FROM payment.payments p JOIN ordering.orders o USING (order_id)
          WHERE o.status = 'failed' AND p.status = 'approved'"),
        ("a confirmed order without an approved payment",
         "SELECT COUNT(*) FROM ordering.orders o WHERE status = 'confirmed' AND NOT EXISTS
          (SELECT 1 FROM payment.payments p WHERE p.order_id = o.order_id AND p.status = 'approved')"),
        ("stock still reserved", "SELECT COALESCE(SUM(reserved), 0)::bigint FROM inventory.products"),
        ("a failed order whose stock release never got through",
         "SELECT COUNT(*) FROM ordering.orders WHERE stock_release_pending"),
        ("a reservation still held", "SELECT COUNT(*) FROM inventory.reservations WHERE state = 'reserved'"),
    ];
    for (what, sql) in checks {
        let found: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        assert_eq!(found, 0, "{what}: {found}");
    }
    let decided = count("SELECT COUNT(*) FROM ordering.orders WHERE status <> 'pending'").await;
    let outbox = count("SELECT COUNT(*) FROM ordering.outbox").await;
    assert_eq!(outbox, decided, "one event per decided order");
    let stored = system.js.get_stream("ORDERS").await.unwrap().info().await.unwrap().state.messages as i64;
    assert_eq!(stored, decided, "the stream holds each event once");
    // Stock conserved, SKU by SKU.
    let now: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, (on_hand + reserved + sold)::bigint FROM inventory.products ORDER BY sku")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(now, seeded, "stock conserved");
    let sold: i64 = count("SELECT COALESCE(SUM(sold), 0)::bigint FROM inventory.products").await;
    let confirmed_units: i64 =
        count("SELECT COALESCE(SUM(i.quantity), 0)::bigint FROM ordering.order_items i JOIN ordering.orders o USING (order_id) WHERE o.status = 'confirmed'").await;
    assert_eq!(sold, confirmed_units, "units sold = units of confirmed orders");
    drop(cluster);
}

/// Waits until no order is pending, the outbox is drained, no consumer has
/// anything pending or unacknowledged and no stock is reserved; returns how
/// long that took.
async fn wait_for_quiet(system: &TestSystem) -> Duration {
    let started = Instant::now();
    let quiet_sql = "SELECT (SELECT COUNT(*) FROM ordering.orders WHERE status = 'pending')
        + (SELECT COUNT(*) FROM ordering.outbox WHERE published_at IS NULL)
        + (SELECT COALESCE(SUM(reserved), 0) FROM inventory.products)
        + (SELECT COUNT(*) FROM ordering.orders WHERE status = 'confirmed' AND NOT stock_committed)
        + (SELECT COUNT(*) FROM ordering.orders WHERE stock_release_pending)";
    while started.elapsed() < Duration::from_secs(180) {
        let busy: i64 = sqlx::query_scalar(quiet_sql).fetch_one(&system.db.pool).await.unwrap_or(1);
        let mut backlog = 0;
        if let Ok(stream) = system.js.get_stream("ORDERS").await {
            for consumer in ["loyalty", "notification", "analytics", "payment"] {
                match stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer).await {
                    Ok(mut c) => match c.info().await {
                        Ok(info) => backlog += info.num_pending as usize + info.num_ack_pending,
                        Err(_) => backlog += 1,
                    },
                    Err(_) => backlog += 1,
                }
            }
        }
        if busy == 0 && backlog == 0 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the system did not get quiet within 180 s; logs:\n{}", system.logs());
}
