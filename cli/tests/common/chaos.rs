//! The chaos suite's client and its verdict, shared by the single-server
//! run (`chaos.rs`) and the cluster run (`cluster.rs`): orders placed like a
//! careful client (one Idempotency-Key per order, retried until a final
//! answer), then, once the system is quiet, the checks that nothing was
//! lost and nothing doubled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracehop_testkit::{TestNats, TestSystem};

use super::{CARD_DECLINED, CARD_OK};

pub(crate) fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub(crate) const SKUS: [&str; 6] = ["KB-001", "MS-002", "MN-003", "CB-004", "HS-005", "LMP-006"];
const CUSTOMERS: [&str; 5] = ["alice", "bob", "premium-pat", "carol", "premium-sam"];

/// The n-th order of the run: a few lines, one card in seven declined.
pub(crate) fn nth_order(n: usize) -> Value {
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

/// The services' settings for a chaos run: an interrupted checkout is
/// resolved after 15 s, the resolver looks every second, an open breaker
/// tries again after a second, and payment answers quickly.
pub(crate) const CHAOS_ENV: [(&str, &str); 4] = [
    ("ORDER_PENDING_TIMEOUT_MS", "15000"),
    ("ORDER_RESOLVER_INTERVAL_MS", "1000"),
    ("ORDER_BREAKER_OPEN_MS", "1000"),
    ("PAYMENT_LATENCY_MS", "5"),
];

/// What the clients saw.
#[derive(Default)]
pub(crate) struct Tally {
    /// order id -> status, for every order the gateway answered with.
    accepted: BTreeMap<String, String>,
    /// Final answers by HTTP status.
    statuses: BTreeMap<u16, usize>,
    /// Attempts that got no final answer and were retried with the same key.
    retries: usize,
    /// Orders that never got a final answer.
    abandoned: usize,
    /// Each final answer: when its first attempt started (since the run
    /// began) and how long it took to the final answer, retries included.
    checkouts: Vec<(Duration, Duration)>,
}

impl Tally {
    /// The longest checkout (first attempt to final answer) among those
    /// whose first attempt started in `window` (since the run began), and
    /// when it started.
    pub(crate) fn longest_in(&self, window: std::ops::Range<Duration>) -> Option<(Duration, Duration)> {
        self.checkouts.iter().filter(|(start, _)| window.contains(start)).max_by_key(|(_, took)| *took).copied()
    }

    /// The longest time without any final answer among `window`: what
    /// clients saw of an outage.
    pub(crate) fn longest_silence_in(&self, window: std::ops::Range<Duration>) -> Duration {
        let mut ends: Vec<Duration> = self.checkouts.iter().map(|(start, took)| *start + *took).collect();
        ends.retain(|end| window.contains(end));
        ends.sort();
        ends.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default()
    }
}

/// Places the n-th order like a careful client: the same Idempotency-Key on
/// every retry, retrying while there is no final answer.
pub(crate) async fn place(http: &reqwest::Client, gateway: &str, n: usize, tally: &Mutex<Tally>, run: Instant) {
    let body = nth_order(n);
    let first_attempt = Instant::now();
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
                tally.checkouts.push((first_attempt - run, first_attempt.elapsed()));
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

/// Orders from `concurrency` careful clients ([`place`]) at the gateway
/// until `chaos_done` is set and at least `min_orders` were placed; what
/// they saw goes to `tally`, timed from `run`.
pub(crate) async fn steady_orders(
    gateway: String,
    min_orders: usize,
    concurrency: usize,
    chaos_done: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    run: Instant,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let next = AtomicUsize::new(0);
    let numbers = futures::stream::unfold((), |()| {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let more = n < min_orders || !chaos_done.load(Ordering::Relaxed);
        async move { more.then_some((n, ())) }
    });
    numbers.for_each_concurrent(concurrency, |n| place(&http, &gateway, n, &tally, run)).await;
}

/// Stock per SKU as seeded: on hand + reserved + sold.
pub(crate) async fn stock(system: &TestSystem<impl TestNats>) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT sku, (on_hand + reserved + sold)::bigint FROM inventory.products ORDER BY sku")
        .fetch_all(&system.db.pool)
        .await
        .unwrap()
}

/// Waits for quiet, prints the run's figures, and checks that nothing was
/// lost and nothing doubled: every accepted order terminal with the fate
/// its client was told, each effect exactly once, no failed order charged,
/// one event per decided order in the stream, stock conserved.
pub(crate) async fn verify(
    system: &TestSystem<impl TestNats>,
    tally: &Tally,
    seeded: &[(String, i64)],
    min_orders: usize,
    load_done: Duration,
    events: &[String],
) {
    // Quiet: nothing pending anywhere.
    let quiet = wait_for_quiet(system).await;
    let pool = &system.db.pool;
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
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
    for event in events {
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
    assert_eq!(stock(system).await, seeded, "stock conserved");
    let sold: i64 = count("SELECT COALESCE(SUM(sold), 0)::bigint FROM inventory.products").await;
    let confirmed_units: i64 =
        count("SELECT COALESCE(SUM(i.quantity), 0)::bigint FROM ordering.order_items i JOIN ordering.orders o USING (order_id) WHERE o.status = 'confirmed'").await;
    assert_eq!(sold, confirmed_units, "units sold = units of confirmed orders");
}

/// Waits until no order is pending, the outbox is drained, no consumer has
/// anything pending or unacknowledged and no stock is reserved; returns how
/// long that took.
pub(crate) async fn wait_for_quiet(system: &TestSystem<impl TestNats>) -> Duration {
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
