//! `tracehop replay` against the real system: a replay changes nothing that
//! was applied, a rebuild comes out identical (also under live traffic), a
//! rebuild of notification is refused, replayed events get CONSUMER spans in
//! a trace of their own linked to their producers, and a redrive after a fix
//! applies each dead letter once, in its original trace, and empties the
//! dead-letter stream.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tracehop::commands::replay::{ReplayArgs, execute};
use tracehop_messaging::replay::ReplayReply;
use tracehop_spanfeed::{SpanKind, SpanRecord, SpanStatus};
use tracehop_testkit::TestSystem;

/// Every projection a rebuild must restore, as text, whole tables ordered by
/// key; recorded_at, created_at and updated_at are left out (they say when a
/// row was written, not what it says).
const SNAPSHOTS: [(&str, &str); 4] = [
    (
        "analytics.totals",
        "SELECT COALESCE(string_agg(format('%s|%s|%s|%s', id, orders_confirmed, orders_failed, revenue_cents),
                E'\\n' ORDER BY id), '') FROM analytics.totals",
    ),
    (
        "analytics.order_events",
        "SELECT COALESCE(string_agg(format('%s|%s|%s|%s|%s|%s|%s', event_id, order_id, kind, customer_id,
                total_cents, item_count, occurred_at), E'\\n' ORDER BY event_id), '') FROM analytics.order_events",
    ),
    (
        "loyalty.accounts",
        "SELECT COALESCE(string_agg(format('%s|%s|%s', customer_id, tier, points), E'\\n' ORDER BY customer_id), '')
         FROM loyalty.accounts",
    ),
    (
        "loyalty.accruals",
        "SELECT COALESCE(string_agg(format('%s|%s|%s|%s', event_id, order_id, customer_id, points),
                E'\\n' ORDER BY event_id), '') FROM loyalty.accruals",
    ),
];

async fn snapshot(system: &TestSystem) -> Vec<(&'static str, String)> {
    let mut tables = Vec::new();
    for (table, query) in SNAPSHOTS {
        let text: String = sqlx::query_scalar(query).fetch_one(&system.db.pool).await.unwrap();
        tables.push((table, text));
    }
    tables
}

async fn emails(system: &TestSystem) -> String {
    sqlx::query_scalar(
        "SELECT COALESCE(string_agg(format('%s|%s|%s|%s', event_id, order_id, kind, status), E'\\n'
                ORDER BY event_id), '') FROM notification.emails",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap()
}

fn mail_files(system: &TestSystem) -> usize {
    std::fs::read_dir(&system.mail_dir).map(|dir| dir.count()).unwrap_or(0)
}

fn args(consumer: &str) -> ReplayArgs {
    ReplayArgs { consumer: consumer.to_string(), ..Default::default() }
}

/// Runs a replay through the command's library code and checks that the
/// service answered without an error.
async fn replay(system: &TestSystem, args: ReplayArgs) -> ReplayReply {
    let mut progress = Vec::new();
    let reply = execute(&system.nats, &args, |update| progress.push(update.scanned)).await.expect("replay");
    assert!(reply.error.is_none(), "{args:?}: {:?}", reply.error);
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progress:?}");
    reply
}

/// Waits until the replay responders of `consumers` answer (they start
/// beside the durable consumers, which are what readiness checks).
async fn wait_for_replay(system: &TestSystem, consumers: &[&str]) {
    for consumer in consumers {
        let subject = tracehop_proto::subjects::replay(consumer);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tracehop_messaging::probe(&system.nats, &subject, Duration::from_millis(500)).await {
            assert!(Instant::now() < deadline, "{subject} never answered:\n{}", system.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The ORDERS stream's events as (sequence, subject), from the stream itself.
async fn stream_events(system: &TestSystem) -> Vec<(u64, String)> {
    let stream = system.js.get_stream("ORDERS").await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut events = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            events.push((sequence, message.subject.to_string()));
        }
    }
    events
}

/// Places `count` orders, every third one declined, from a mix of standard
/// and premium customers; returns (order id, trace id, confirmed).
async fn place_orders(system: &TestSystem, count: usize, prefix: &str) -> Vec<(uuid::Uuid, String, bool)> {
    let mut placed = Vec::new();
    for i in 0..count {
        let customer = match i % 4 {
            0 => "premium-pat".to_string(),
            1 => "premium-sam".to_string(),
            _ => format!("{prefix}-{}", i % 3),
        };
        let card = if i % 3 == 2 { CARD_DECLINED } else { CARD_OK };
        let items: &[(&str, i64)] = match i % 3 {
            0 => &[("KB-001", 1), ("CB-004", 2)],
            1 => &[("HS-005", 1)],
            _ => &[("MS-002", 2)],
        };
        let (status, body, _) = post_order(system, order_body(&customer, items, card), None).await;
        let order_id: uuid::Uuid = body["order_id"]
            .as_str()
            .or(body["order"]["order_id"].as_str())
            .unwrap_or_else(|| panic!("no order id: HTTP {status} {body}"))
            .parse()
            .unwrap();
        let trace_id = body["trace_id"].as_str().unwrap().to_string();
        placed.push((order_id, trace_id, status == 201));
    }
    placed
}

/// Waits until every consumer has handled `events` events (`confirmed` of
/// them confirmed orders).
async fn wait_processed(system: &TestSystem, events: i64, confirmed: i64) {
    for (query, expected) in [
        ("SELECT COUNT(*) FROM analytics.order_events", events),
        ("SELECT COUNT(*) FROM notification.emails", events),
        ("SELECT COUNT(*) FROM loyalty.accruals", confirmed),
    ] {
        let value = eventually_value(system, query, |n| n == expected).await;
        assert_eq!(value, expected, "{query}\n{}", system.logs());
    }
}

#[tokio::test]
async fn a_replay_skips_what_was_applied_and_a_rebuild_comes_out_identical() {
    let system = TestSystem::start().await.expect("system start");
    wait_for_replay(&system, &["analytics", "loyalty", "notification"]).await;
    let orders = place_orders(&system, 10, "replay").await;
    let confirmed = orders.iter().filter(|(_, _, ok)| *ok).count() as i64;
    assert!((1..10).contains(&confirmed), "some confirmed, some declined: {confirmed}");
    wait_processed(&system, 10, confirmed).await;
    let events = stream_events(&system).await;
    assert_eq!(events.len(), 10);
    let before = snapshot(&system).await;
    let mails_before = (emails(&system).await, mail_files(&system));
    assert_eq!(mails_before.1 as i64, 10, "one mail per order");

    // A replay from the start changes nothing: every event was applied.
    for (consumer, expected) in [("analytics", 10), ("loyalty", confirmed as u64), ("notification", 10)] {
        let reply = replay(&system, ReplayArgs { from_seq: Some(1), ..args(consumer) }).await;
        assert_eq!(
            (reply.scanned, reply.applied, reply.skipped, reply.failed, reply.rejected, reply.rebuilt),
            (expected, 0, expected, 0, 0, false),
            "{consumer}: {reply:?}"
        );
    }
    assert_eq!(snapshot(&system).await, before);
    assert_eq!((emails(&system).await, mail_files(&system)), mails_before, "no mail sent twice");

    // From a later sequence, or for the last hour: only those events.
    let reply = replay(&system, ReplayArgs { from_seq: Some(7), ..args("analytics") }).await;
    assert_eq!((reply.scanned, reply.first_seq, reply.last_seq), (4, 7, 10), "{reply:?}");
    let reply = replay(&system, ReplayArgs { since: Some(Duration::from_secs(3600)), ..args("analytics") }).await;
    assert_eq!(reply.scanned, 10, "{reply:?}");

    // A rebuild resets and re-applies every event, and comes out identical.
    let started = Instant::now();
    let analytics = replay(&system, ReplayArgs { rebuild: true, ..args("analytics") }).await;
    println!(
        "rebuild of analytics: {} events in {:?} (service: {} ms)",
        analytics.scanned,
        started.elapsed(),
        analytics.elapsed_ms
    );
    assert_eq!((analytics.scanned, analytics.applied, analytics.rebuilt), (10, 10, true), "{analytics:?}");
    let loyalty = replay(&system, ReplayArgs { rebuild: true, from_seq: Some(1), ..args("loyalty") }).await;
    assert_eq!(
        (loyalty.scanned, loyalty.applied, loyalty.rebuilt),
        (confirmed as u64, confirmed as u64, true),
        "{loyalty:?}"
    );
    let after = snapshot(&system).await;
    for ((table, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(old, new, "{table} differs after the rebuild");
    }
    assert!(before.iter().all(|(_, text)| !text.is_empty()));

    // Notification refuses to rebuild: its mails are sent.
    let refused = execute(&system.nats, &ReplayArgs { rebuild: true, ..args("notification") }, |_| {}).await.unwrap();
    let error = refused.error.expect("a rebuild of notification is refused");
    assert_eq!(error.kind(), tracehop_proto::v1::ErrorCode::InvalidArgument);
    assert!(error.message.contains("cannot be rebuilt"), "{}", error.message);
    assert_eq!((emails(&system).await, mail_files(&system)), mails_before);

    // The rebuild's trace: a root `replay analytics`, a reset, and a
    // CONSUMER span per event, marked as a replay and linked to the event's
    // original producer span.
    let spans = read_trace(&system, &analytics.trace_id, |spans| {
        spans.iter().filter(|s| s.kind == SpanKind::Consumer).count() >= 10
            && spans.iter().any(|s| s.name == "replay analytics")
    })
    .await;
    let root = find(&spans, "analytics", SpanKind::Internal, "replay analytics");
    assert_eq!(root.parent_span_id, None, "a trace of its own");
    assert_eq!(root.attributes.get("tracehop.replay"), Some(&Value::Bool(true)));
    let reset = spans.iter().find(|s| s.name == "reset projection").expect("a reset span");
    assert_eq!(reset.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    let consumers: Vec<&SpanRecord> = spans.iter().filter(|s| s.kind == SpanKind::Consumer).collect();
    assert_eq!(consumers.len(), 10, "{}", names(&spans));
    for span in &consumers {
        assert_eq!(span.service, "analytics");
        assert!(span.name == "process orders.confirmed" || span.name == "process orders.failed", "{}", span.name);
        assert_eq!(span.parent_span_id.as_deref(), Some(root.span_id.as_str()));
        assert_eq!(span.attributes.get("tracehop.replay"), Some(&Value::Bool(true)));
        assert_eq!(span.attr_str("messaging.consumer.group.name"), Some("analytics"));
        assert_eq!(span.attr_str("tracehop.replay.outcome"), Some("applied"));
        assert!(span.attributes.get("messaging.nats.stream.sequence").and_then(Value::as_i64).is_some());
        assert!(!span.attr_str("messaging.message.id").unwrap_or_default().is_empty());
        assert_eq!(span.links.len(), 1, "{span:?}");
        assert!(reset.end_unix_nano <= span.start_unix_nano, "the reset comes first");
    }
    let sequences: BTreeSet<i64> =
        consumers.iter().map(|s| s.attributes["messaging.nats.stream.sequence"].as_i64().unwrap()).collect();
    assert_eq!(sequences, (1..=10).collect());
    let linked: BTreeSet<&str> = consumers.iter().map(|s| s.links[0].trace_id.as_str()).collect();
    let original: BTreeSet<&str> = orders.iter().map(|(_, trace, _)| trace.as_str()).collect();
    assert_eq!(linked, original, "each replayed event links into its order's trace");
    // The link names the original producer span itself.
    let (_, first_trace, first_confirmed) = &orders[0];
    let first = read_trace(&system, first_trace, |spans| spans.iter().any(|s| s.kind == SpanKind::Producer)).await;
    let subject = if *first_confirmed { "orders.confirmed" } else { "orders.failed" };
    let producer = find(&first, "order", SpanKind::Producer, &format!("publish {subject}"));
    assert!(
        consumers.iter().any(|s| s.links[0].span_id == producer.span_id && s.links[0].trace_id == producer.trace_id),
        "no replayed span links to {}",
        producer.span_id
    );
    // The replay left the original trace alone.
    assert!(!first.iter().any(|s| s.attributes.contains_key("tracehop.replay")), "{}", names(&first));
    assert_no_secrets(&spans);
}

#[tokio::test]
async fn a_rebuild_under_live_traffic_converges() {
    let system = TestSystem::start().await.expect("system start");
    wait_for_replay(&system, &["analytics", "loyalty"]).await;
    let first = place_orders(&system, 12, "steady").await;
    let confirmed = first.iter().filter(|(_, _, ok)| *ok).count() as i64;
    wait_processed(&system, 12, confirmed).await;

    // Orders keep coming while both projections are rebuilt, twice.
    let traffic = async {
        let mut placed = Vec::new();
        for round in 0..4 {
            placed.extend(place_orders(&system, 6, &format!("live-{round}")).await);
        }
        placed
    };
    let rebuilds = async {
        let mut replies = Vec::new();
        for _ in 0..2 {
            let (analytics, loyalty) = tokio::join!(
                replay(&system, ReplayArgs { rebuild: true, ..args("analytics") }),
                replay(&system, ReplayArgs { rebuild: true, ..args("loyalty") }),
            );
            replies.push((analytics, loyalty));
        }
        replies
    };
    let (live, replies) = tokio::join!(traffic, rebuilds);
    assert!(replies.iter().all(|(a, l)| a.rebuilt && l.rebuilt && a.failed == 0 && l.failed == 0));
    let confirmed = confirmed + live.iter().filter(|(_, _, ok)| *ok).count() as i64;
    wait_processed(&system, 36, confirmed).await;

    // Every event counted once: the totals agree with the orders themselves,
    // and every account's points with its accruals.
    let expected: String = sqlx::query_scalar(
        "SELECT format('%s|%s|%s', COUNT(*) FILTER (WHERE status = 'confirmed'),
                COUNT(*) FILTER (WHERE status = 'failed'),
                COALESCE(SUM(total_cents) FILTER (WHERE status = 'confirmed'), 0))
         FROM ordering.orders",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    let totals = "SELECT format('%s|%s|%s', orders_confirmed, orders_failed, revenue_cents) FROM analytics.totals";
    let totals: String = sqlx::query_scalar(totals).fetch_one(&system.db.pool).await.unwrap();
    assert_eq!(totals, expected);
    let mismatched = scalar(
        &system,
        "SELECT COUNT(*) FROM loyalty.accounts a
         WHERE a.points <> COALESCE((SELECT SUM(points) FROM loyalty.accruals r WHERE r.customer_id = a.customer_id), 0)",
    )
    .await;
    assert_eq!(mismatched, 0, "points agree with accruals");
    // And a rebuild now, with everything quiet, changes nothing.
    let before = snapshot(&system).await;
    replay(&system, ReplayArgs { rebuild: true, ..args("analytics") }).await;
    replay(&system, ReplayArgs { rebuild: true, ..args("loyalty") }).await;
    assert_eq!(snapshot(&system).await, before);
}

/// Backends of the test's database waiting for a lock, with the start of
/// their statement.
async fn lock_waiters(system: &TestSystem) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' ORDER BY query",
    )
    .fetch_all(&system.db.pool)
    .await
    .unwrap()
}

async fn wait_for_waiters(system: &TestSystem, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiters = lock_waiters(system).await;
        if waiters.len() >= count {
            return waiters;
        }
        assert!(Instant::now() < deadline, "expected {count} waiting statements, got {waiters:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_rebuild_racing_a_live_event_still_counts_it_once() {
    let system = TestSystem::start().await.expect("system start");
    wait_for_replay(&system, &["analytics", "loyalty"]).await;
    let first = place_orders(&system, 3, "early").await;
    let confirmed = first.iter().filter(|(_, _, ok)| *ok).count() as i64;
    wait_processed(&system, 3, confirmed).await;

    // Hold the live consumers in the middle of their transactions: the
    // event's row is inserted, the aggregate row is locked by the test.
    let mut holder = system.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM analytics.totals FOR UPDATE").execute(&mut *holder).await.unwrap();
    sqlx::query("SELECT 1 FROM loyalty.accounts WHERE customer_id = 'premium-pat' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (status, body, _) = post_order(&system, order_body("premium-pat", &[("KB-001", 1)], CARD_OK), None).await;
    assert_eq!(status, 201, "{body}");
    let live = wait_for_waiters(&system, 2).await;
    assert!(live.iter().any(|q| q.contains("analytics.totals")), "{live:?}");

    // Both rebuilds start while those live transactions are open, and wait.
    let rebuilds = tokio::spawn({
        let nats = system.nats.clone();
        async move {
            let analytics = ReplayArgs { rebuild: true, ..args("analytics") };
            let loyalty = ReplayArgs { rebuild: true, ..args("loyalty") };
            let (a, l) = tokio::join!(execute(&nats, &analytics, |_| {}), execute(&nats, &loyalty, |_| {}));
            (a.unwrap(), l.unwrap())
        }
    });
    let waiting = wait_for_waiters(&system, 4).await;
    println!("waiting on the test's locks: {waiting:?}");
    holder.commit().await.unwrap();
    let (analytics, loyalty) = rebuilds.await.unwrap();
    assert!(analytics.error.is_none() && loyalty.error.is_none(), "{analytics:?} {loyalty:?}");
    assert!(analytics.rebuilt && loyalty.rebuilt);
    wait_processed(&system, 4, confirmed + 1).await;

    // The raced event counted exactly once, in rows and in aggregates.
    let expected: String = sqlx::query_scalar(
        "SELECT format('%s|%s|%s', COUNT(*) FILTER (WHERE status = 'confirmed'),
                COUNT(*) FILTER (WHERE status = 'failed'),
                COALESCE(SUM(total_cents) FILTER (WHERE status = 'confirmed'), 0))
         FROM ordering.orders",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    let totals = "SELECT format('%s|%s|%s', orders_confirmed, orders_failed, revenue_cents) FROM analytics.totals";
    let totals: String = sqlx::query_scalar(totals).fetch_one(&system.db.pool).await.unwrap();
    assert_eq!(totals, expected, "analytics totals agree with the orders");
    let mismatched = scalar(
        &system,
        "SELECT COUNT(*) FROM loyalty.accounts a
         WHERE a.points <> COALESCE((SELECT SUM(points) FROM loyalty.accruals r WHERE r.customer_id = a.customer_id), 0)",
    )
    .await;
    assert_eq!(mismatched, 0, "points agree with accruals");
}

#[tokio::test]
async fn a_redrive_after_a_fix_applies_each_dead_letter_once_in_its_original_trace() {
    // Notification's SMTP server does not exist: every send fails, and after
    // five deliveries each event is dead-lettered.
    let closed_port = tracehop_testkit::free_port();
    let smtp = format!("smtp://127.0.0.1:{closed_port}");
    let mut system = TestSystem::start_with(&[("SMTP_URL", smtp.as_str())]).await.expect("system start");
    let mut traces = Vec::new();
    for (customer, card) in [("olga", CARD_OK), ("pete", CARD_DECLINED)] {
        let (status, body, _) = post_order(&system, order_body(customer, &[("CB-004", 1)], card), None).await;
        assert!(body["trace_id"].is_string(), "HTTP {status} {body}");
        traces.push(body["trace_id"].as_str().unwrap().to_string());
    }
    let dead_letters = |system: &TestSystem| {
        let js = system.js.clone();
        async move {
            let stream = js.get_stream("DEADLETTER").await.unwrap();
            let info = stream.info_with_subjects("deadletter.notification").await.unwrap();
            futures::StreamExt::collect::<Vec<_>>(info).await.into_iter().map(|r| r.unwrap().1).sum::<usize>()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while dead_letters(&system).await < 2 {
        assert!(Instant::now() < deadline, "nothing was dead-lettered:\n{}", system.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM notification.emails").await, 0);

    // While the cause is not fixed, a redrive fails and leaves them.
    wait_for_replay(&system, &["notification"]).await;
    let failing =
        execute(&system.nats, &ReplayArgs { dead_letters: true, ..args("notification") }, |_| {}).await.unwrap();
    assert_eq!((failing.scanned, failing.applied, failing.failed), (2, 0, 2), "{failing:?}");
    assert_eq!(dead_letters(&system).await, 2);

    // The fix: notification without the broken SMTP server (mail goes to files).
    system.stop_service("notification").await.unwrap();
    system.launcher = system.launcher.clone().with_env("SMTP_URL", "");
    system.start_service("notification").unwrap();
    system.wait_ready(&["notification"]).await.unwrap();
    wait_for_replay(&system, &["notification"]).await;

    let redrive = replay(&system, ReplayArgs { dead_letters: true, ..args("notification") }).await;
    assert_eq!((redrive.scanned, redrive.applied, redrive.failed, redrive.rejected), (2, 2, 0, 0), "{redrive:?}");
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM notification.emails").await, 2, "one row per event");
    assert_eq!(mail_files(&system), 2, "one mail per event");
    assert_eq!(dead_letters(&system).await, 0, "the dead letters are gone");

    // A second redrive, through the command itself, finds nothing to do.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(["replay", "--dead-letters", "--consumer", "notification", "--json"])
        .envs(system.command_env())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let again: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (again["mode"].as_str(), again["scanned"].as_u64(), again["applied"].as_u64()),
        (Some("redrive"), Some(0), Some(0))
    );
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM notification.emails").await, 2);
    assert_eq!(mail_files(&system), 2, "no mail sent twice");

    // Each original trace now holds, in this order: the failed deliveries,
    // the dead letter, the failed redrive, and the redrive that worked.
    for trace_id in &traces {
        let spans = read_trace(&system, trace_id, |spans| {
            spans
                .iter()
                .any(|s| s.service == "notification" && s.kind == SpanKind::Consumer && s.status != SpanStatus::Error)
        })
        .await;
        let notification: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| {
                s.service == "notification"
                    && (s.kind == SpanKind::Consumer || s.name == "send deadletter.notification")
            })
            .collect();
        let story: Vec<(SpanKind, Option<i64>, bool, SpanStatus)> = notification
            .iter()
            .map(|s| {
                (
                    s.kind,
                    s.attributes.get("messaging.nats.message.delivery_count").and_then(Value::as_i64),
                    s.attributes.get("tracehop.redrive") == Some(&Value::Bool(true)),
                    s.status,
                )
            })
            .collect();
        use SpanKind::{Client, Consumer};
        use SpanStatus::{Error, Unset};
        assert_eq!(
            story,
            vec![
                (Consumer, Some(1), false, Error),
                (Consumer, Some(2), false, Error),
                (Consumer, Some(3), false, Error),
                (Consumer, Some(4), false, Error),
                (Consumer, Some(5), false, Error),
                (Client, Some(5), false, Unset),
                (Consumer, Some(6), true, Error),
                (Consumer, Some(6), true, Unset),
            ],
            "{}",
            names(&spans)
        );
        let redriven = notification.last().unwrap();
        let dead = notification[5];
        assert!(dead.start_unix_nano < redriven.start_unix_nano);
        assert_eq!(dead.name, "send deadletter.notification");
        // Parented by the original producer span, like the first deliveries.
        let producer = parent_of(&spans, redriven);
        assert_eq!(producer.kind, SpanKind::Producer);
        assert_eq!(producer.service, "order");
        assert_eq!(notification[0].parent_span_id, redriven.parent_span_id);
        assert!(redriven.links.iter().any(|link| link.span_id == producer.span_id));
        assert_eq!(redriven.attr_str("tracehop.replay.outcome"), Some("applied"));
        assert_no_secrets(&spans);
    }
}

/// How fast a replay goes: publishes `REPLAY_BENCH_EVENTS` (default 3000)
/// events straight to the stream, lets the live consumers catch up, then
/// times a replay that skips everything and a rebuild that applies
/// everything. Run with `cargo test -p tracehop --test replay -- --ignored
/// --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check: run it by hand"]
async fn replay_throughput() {
    use prost::Message as _;
    use tracehop_proto::v1::{OrderEvent, OrderStatus, PricedItem};

    let count: usize = std::env::var("REPLAY_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(3000);
    let system = TestSystem::start().await.expect("system start");
    wait_for_replay(&system, &["analytics", "loyalty"]).await;
    let started = Instant::now();
    let mut acks = Vec::new();
    for i in 0..count {
        let confirmed = i % 4 != 3;
        let event = OrderEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            order_id: uuid::Uuid::now_v7().to_string(),
            customer_id: format!("bench-{}", i % 50),
            status: if confirmed { OrderStatus::Confirmed } else { OrderStatus::Failed } as i32,
            items: vec![PricedItem { sku: "CB-004".to_string(), quantity: 2, unit_price_cents: 900 }],
            total_cents: 1800,
            failure_reason: if confirmed { String::new() } else { "payment declined".to_string() },
            email: String::new(),
            occurred_at_unix_ms: 1_790_000_000_000 + i as i64,
        };
        let mut headers = async_nats::HeaderMap::new();
        let trace = format!("00-{:032x}-{:016x}-01", uuid::Uuid::new_v4().as_u128(), i as u64 + 1);
        headers.insert("traceparent", trace.as_str());
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        headers.insert("Tracehop-Payload-Type", "tracehop.v1.OrderEvent");
        let subject = if confirmed { "orders.confirmed" } else { "orders.failed" };
        acks.push(system.order_js.publish_with_headers(subject, headers, event.encode_to_vec().into()).await.unwrap());
        if acks.len() >= 256 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.unwrap();
    }
    println!("published {count} events in {:?}", started.elapsed());
    let confirmed = (0..count).filter(|i| i % 4 != 3).count() as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while scalar(&system, "SELECT COUNT(*) FROM analytics.order_events").await < count as i64
        || scalar(&system, "SELECT COUNT(*) FROM loyalty.accruals").await < confirmed
    {
        assert!(Instant::now() < deadline, "the live consumers did not catch up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("live consumers caught up after {:?}", started.elapsed());
    let before = snapshot(&system).await;
    for (label, replay_args) in [
        ("analytics replay (all skipped)", ReplayArgs { from_seq: Some(1), ..args("analytics") }),
        ("analytics rebuild (all applied)", ReplayArgs { rebuild: true, ..args("analytics") }),
        ("loyalty replay (all skipped)", ReplayArgs { from_seq: Some(1), ..args("loyalty") }),
        ("loyalty rebuild (all applied)", ReplayArgs { rebuild: true, ..args("loyalty") }),
    ] {
        let mut updates = 0;
        let reply = execute(&system.nats, &replay_args, |_| updates += 1).await.unwrap();
        assert!(reply.error.is_none(), "{reply:?}");
        println!(
            "{label}: {} events in {} ms = {:.0} events/s ({updates} progress messages)",
            reply.scanned,
            reply.elapsed_ms,
            reply.scanned as f64 * 1000.0 / reply.elapsed_ms.max(1) as f64
        );
    }
    assert_eq!(snapshot(&system).await, before);
}
