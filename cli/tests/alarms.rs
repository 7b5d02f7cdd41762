//! The sentinel's alarms are worth listening to: none under a steady load
//! with nothing broken (a busy consumer is not a dead one), and a loud one
//! when a consumer gives up on events (dead letters), open until they are
//! redriven or discarded.
//!
//! The load test is an open model: orders arrive at a fixed rate whatever
//! the latency, so a slow system builds a real backlog instead of being
//! asked for less. `TRACEHOP_LOAD_RATE` (orders/s; default 20, which a debug
//! build sustains on 2 busy cores: from about 30 loyalty, pricing every
//! item of a premium order, falls behind and is rightly reported lagging)
//! and `TRACEHOP_LOAD_SECS` (default 20) size it. The
//! backlog test puts consumers in the state that used to raise the false
//! alarm (busy with a batch, no pull request waiting) on purpose.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use prost::Message as _;
use tracehop::commands::replay::{ReplayArgs, execute};
use tracehop::commands::status::{Status, gather};
use tracehop_messaging::{dead_letters, topology};
use tracehop_proto::v1::{Alert, AlertKind};
use tracehop_testkit::TestSystem;

const DEADLINE_MS: u64 = 3000;

/// The tests here run one at a time: each runs a whole system under load,
/// and two at once on a small machine starve each other's consumers, which
/// is a real stall, not the false alarm these tests are about.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn next_alert(alerts: &mut async_nats::Subscriber, within: Duration) -> Option<Alert> {
    let message = tokio::time::timeout(within, alerts.next()).await.ok()??;
    Some(Alert::decode(message.payload.as_ref()).expect("an alert"))
}

fn kind_of(alert: &Alert) -> AlertKind {
    AlertKind::try_from(alert.kind).unwrap_or(AlertKind::Unspecified)
}

async fn sentinel_status(system: &TestSystem) -> Status {
    let status = gather(&system.launcher, &system.nats).await;
    assert!(status.sentinel, "the sentinel did not answer: {status:?}");
    status
}

fn consumer_state(status: &Status, name: &str) -> String {
    status.consumers.iter().find(|c| c.consumer == name).map(|c| c.state.clone()).unwrap_or_default()
}

/// Polls the sentinel's status until `done` holds, or panics after `within`.
async fn status_until(system: &TestSystem, what: &str, within: Duration, done: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + within;
    loop {
        let status = sentinel_status(system).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; last status {status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_steady_load_with_nothing_killed_raises_no_alert() {
    let rate = env_or("TRACEHOP_LOAD_RATE", 20).max(1);
    let seconds = env_or("TRACEHOP_LOAD_SECS", 20).max(1);
    let _alone = ONE_AT_A_TIME.lock().await;
    // The sentinel's default thresholds: what a user runs with.
    let system = TestSystem::start().await.expect("system start");
    let mut alerts = system.nats.subscribe(format!("{}.>", tracehop_proto::subjects::ALERTS_PREFIX)).await.unwrap();
    system.nats.flush().await.unwrap();

    // Orders arrive on a fixed schedule, each in its own task (an open
    // model); premium three-item orders make loyalty price every item.
    let started = Instant::now();
    let total = rate * seconds;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut orders = tokio::task::JoinSet::new();
    // Meanwhile, what the sentinel sees: moments when a consumer had events
    // waiting and no pull request outstanding (what used to read as down).
    let sampler = {
        let launcher = system.launcher.clone();
        let nats = system.nats.clone();
        tokio::spawn(async move {
            let mut busy_without_pullers = 0u64;
            let mut max_backlog = 0u64;
            let end = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < end {
                let status = gather(&launcher, &nats).await;
                for consumer in &status.consumers {
                    let backlog = consumer.pending + consumer.ack_pending;
                    max_backlog = max_backlog.max(backlog);
                    if consumer.active_pullers == 0 && backlog > 0 {
                        busy_without_pullers += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (busy_without_pullers, max_backlog)
        })
    };
    // One client: its connections are reused, as a real client's would be.
    let client = reqwest::Client::new();
    for i in 0..total {
        ticks.tick().await;
        let gateway = system.gateway_url.clone();
        let client = client.clone();
        orders.spawn(async move {
            let body = order_body(
                if i % 2 == 0 { "premium-pat" } else { "premium-sam" },
                &[("KB-001", 1), ("MS-002", 1), ("CB-004", 2)],
                CARD_OK,
            );
            let response =
                client.post(format!("{gateway}/v1/orders")).json(&body).timeout(Duration::from_secs(30)).send().await;
            response.map(|r| r.status().as_u16()).unwrap_or(0)
        });
    }
    let sent_in = started.elapsed();
    let mut confirmed = 0u64;
    while let Some(status) = orders.join_next().await {
        if status.unwrap() == 201 {
            confirmed += 1;
        }
    }
    let (busy_without_pullers, max_backlog) = sampler.await.unwrap();
    // Every consumer catches up, then one more check interval or two.
    status_until(&system, "every consumer caught up", Duration::from_secs(120), |s| {
        s.consumers.iter().all(|c| c.pending == 0 && c.ack_pending == 0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut raised = Vec::new();
    while let Some(alert) = next_alert(&mut alerts, Duration::from_millis(100)).await {
        raised.push(alert);
    }
    println!(
        "load: {total} orders at {rate}/s sent in {:.1} s, {confirmed} confirmed; max backlog {max_backlog}, \
         {busy_without_pullers} samples of a consumer with events waiting and nobody pulling; alerts raised: {}",
        sent_in.as_secs_f64(),
        raised.len()
    );
    assert!(raised.is_empty(), "alerts under load with nothing broken: {raised:#?}");
    assert!(confirmed * 10 >= total * 9, "the system did not sustain the load: {confirmed} of {total} confirmed");
    let status = sentinel_status(&system).await;
    assert!(status.alerts.is_empty(), "open alerts: {:#?}", status.alerts);
    for consumer in &status.consumers {
        assert_eq!(consumer.state, "ok", "{consumer:#?}");
    }
}

/// Every analytics insert fails (a constraint that rejects rows), so each
/// event is tried 5 times and dead-lettered; the sentinel raises one alert
/// naming analytics, the count and the reason, status says failing, and a
/// redrive after the fix clears both.
#[tokio::test]
async fn a_consumer_that_dead_letters_everything_raises_an_alert_until_redriven() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let deadline = DEADLINE_MS.to_string();
    let system = TestSystem::start_with(&[("SENTINEL_DEADLINE_MS", deadline.as_str())]).await.expect("system start");
    let mut alerts =
        system.nats.subscribe(format!("{}.analytics", tracehop_proto::subjects::ALERTS_PREFIX)).await.unwrap();
    system.nats.flush().await.unwrap();
    sqlx::raw_sql("ALTER TABLE analytics.order_events ADD CONSTRAINT tracehop_test_reject_all CHECK (false) NOT VALID")
        .execute(&system.db.pool)
        .await
        .unwrap();
    const ORDERS: u64 = 3;
    for i in 0..ORDERS {
        let (status, body, _) =
            post_order(&system, order_body(&format!("dl-{i}"), &[("CB-004", 1)], CARD_OK), None).await;
        assert_eq!(status, 201, "{body}");
    }

    // The alerts of the incident: a lag while the deliveries are retried,
    // the dead letters, and a recovery that counts them apart.
    let mut dead_letter_alert = None;
    let mut recovered = None;
    let until = Instant::now() + Duration::from_secs(60);
    while dead_letter_alert.is_none() || recovered.is_none() {
        let left = until.saturating_duration_since(Instant::now());
        let alert = next_alert(&mut alerts, left).await.expect("the dead-letter alert and the recovery within 60 s");
        match kind_of(&alert) {
            AlertKind::ConsumerDeadLetters => {
                assert!(dead_letter_alert.is_none(), "a second dead-letter alert: grouped, not one per message");
                dead_letter_alert = Some(alert);
            }
            AlertKind::ConsumerRecovered if alert.dead_lettered == ORDERS => recovered = Some(alert),
            AlertKind::ConsumerLagging | AlertKind::ConsumerRecovered => {}
            other => panic!("unexpected {other:?}: {alert:?}"),
        }
    }
    let alert = dead_letter_alert.unwrap();
    assert_eq!(alert.consumer, "analytics");
    assert!(alert.dead_letters >= 1, "{alert:?}");
    // The reason: a check violation, without the database's own message
    // (it may quote the row).
    assert!(alert.message.contains("analytics") && alert.message.contains("sqlstate 23514"), "{alert:?}");
    // Raised within the sentinel's deadline of the first dead letter.
    let js = &system.js;
    let first = js
        .get_stream(topology::DEAD_LETTER_STREAM)
        .await
        .unwrap()
        .direct_get_next_for_subject(topology::dead_letter_subject("analytics"), None)
        .await
        .unwrap();
    let stored_ms = (first.time.unix_timestamp_nanos() / 1_000_000) as i64;
    let to_alert = alert.raised_at_unix_ms - stored_ms;
    assert!((0..DEADLINE_MS as i64).contains(&to_alert), "dead letter to alert: {to_alert} ms");
    let recovered = recovered.unwrap();
    assert_eq!(recovered.processed_late, 0, "{recovered:?}");
    assert!(recovered.message.contains("0 events were processed late, 3 were dead-lettered"), "{recovered:?}");

    let status = status_until(&system, "analytics failing with 3 dead letters", Duration::from_secs(10), |s| {
        consumer_state(s, "analytics") == "failing"
            && s.consumers.iter().any(|c| c.consumer == "analytics" && c.dead_letters == ORDERS)
    })
    .await;
    assert!(
        status
            .alerts
            .iter()
            .any(|a| a.consumer == "analytics" && a.kind == "consumer_dead_letters" && a.dead_letters == ORDERS),
        "{:#?}",
        status.alerts
    );
    let reasons = &status.consumers.iter().find(|c| c.consumer == "analytics").unwrap().dead_letter_reasons;
    assert_eq!(reasons.values().sum::<u64>(), ORDERS, "{reasons:?}");
    assert!(reasons.keys().all(|reason| reason.contains("sqlstate 23514")), "{reasons:?}");
    println!("dead letter -> alert {to_alert} ms (deadline {DEADLINE_MS} ms); recovery: {}", recovered.message);

    // The fix, then the redrive: the alert closes and analytics is ok.
    sqlx::raw_sql("ALTER TABLE analytics.order_events DROP CONSTRAINT tracehop_test_reject_all")
        .execute(&system.db.pool)
        .await
        .unwrap();
    let args = ReplayArgs { consumer: "analytics".to_string(), dead_letters: true, ..Default::default() };
    let reply = execute(&system.nats, &args, |_| {}).await.unwrap();
    assert_eq!((reply.applied, reply.failed), (ORDERS, 0), "{reply:?}");
    let cleared = loop {
        let alert = next_alert(&mut alerts, Duration::from_secs(10)).await.expect("the alert closes after the redrive");
        if kind_of(&alert) == AlertKind::DeadLettersCleared {
            break alert;
        }
    };
    assert_eq!(cleared.alert_id, alert.alert_id, "the same alert closes");
    let status = sentinel_status(&system).await;
    assert_eq!(consumer_state(&status, "analytics"), "ok", "{status:#?}");
    assert!(status.alerts.is_empty(), "{:#?}", status.alerts);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM analytics.order_events").await, ORDERS as i64);
}

/// Poison events rejected by every consumer: `tracehop discard-dead-letters`
/// drops analytics' dead letters (and says what), which closes its alert,
/// and leaves the other consumers' alone.
#[tokio::test]
async fn discarding_dead_letters_says_what_it_drops_and_closes_the_alert() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let system = TestSystem::start().await.expect("system start");
    let mut alerts =
        system.nats.subscribe(format!("{}.analytics", tracehop_proto::subjects::ALERTS_PREFIX)).await.unwrap();
    system.nats.flush().await.unwrap();
    for i in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("poison-{i}").as_str());
        let ack = system
            .order_js
            .publish_with_headers(tracehop_proto::subjects::ORDER_CONFIRMED, headers, "not an order event".into())
            .await
            .unwrap();
        ack.await.unwrap();
    }
    let raised = loop {
        let alert = next_alert(&mut alerts, Duration::from_secs(15)).await.expect("a dead-letter alert");
        if kind_of(&alert) == AlertKind::ConsumerDeadLetters {
            break alert;
        }
    };
    status_until(&system, "two dead letters each", Duration::from_secs(10), |s| {
        ["analytics", "loyalty"]
            .iter()
            .all(|name| s.consumers.iter().any(|c| c.consumer == *name && c.dead_letters == 2 && c.state == "failing"))
    })
    .await;

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(["discard-dead-letters", "--consumer", "analytics"])
        .envs(system.command_env())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.starts_with("discarded 2 dead letters of analytics"), "{text}");
    assert!(text.contains("2  payload is not a valid tracehop.v1.OrderEvent"), "{text}");

    let cleared = loop {
        let alert = next_alert(&mut alerts, Duration::from_secs(10)).await.expect("the alert closes after the discard");
        if kind_of(&alert) == AlertKind::DeadLettersCleared {
            break alert;
        }
    };
    assert_eq!(cleared.alert_id, raised.alert_id);
    assert_eq!(dead_letters::count(&system.js, "analytics").await.unwrap(), 0);
    assert_eq!(dead_letters::count(&system.js, "loyalty").await.unwrap(), 2, "another consumer's dead letters stay");
    let status = sentinel_status(&system).await;
    assert_eq!(consumer_state(&status, "analytics"), "ok", "{status:#?}");
    assert_eq!(consumer_state(&status, "loyalty"), "failing", "{status:#?}");
    assert!(status.alerts.iter().all(|a| a.consumer != "analytics"), "{:#?}", status.alerts);

    // Nothing left: says so.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(["discard-dead-letters", "--consumer", "analytics"])
        .envs(system.command_env())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout), "analytics has no dead letters; nothing discarded\n");
}

/// The false alarm at its cause: every consumer finds a backlog of a
/// thousand events at once (published straight into the stream, as the
/// outbox relay does after an outage) and works through it in batches,
/// with no pull request outstanding for seconds at a time. Judged by one
/// reading of `num_waiting` that is "nobody is pulling"; judged by
/// progress it is busy. The deadline is out of the way here (a consumer
/// may well run late through such a backlog): what is checked is that no
/// consumer is called down, and that the situation did arise.
#[tokio::test]
async fn a_consumer_working_through_a_backlog_is_busy_not_down() {
    use tracehop_proto::v1::{OrderEvent, OrderStatus, PricedItem};
    const EVENTS: usize = 1000;
    let _alone = ONE_AT_A_TIME.lock().await;
    // The default down-after period and check interval.
    let system = TestSystem::start_with(&[("SENTINEL_DEADLINE_MS", "600000")]).await.expect("system start");
    let mut alerts = system.nats.subscribe(format!("{}.>", tracehop_proto::subjects::ALERTS_PREFIX)).await.unwrap();
    system.nats.flush().await.unwrap();

    let mut acks = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let event_id = uuid::Uuid::now_v7().to_string();
        let event = OrderEvent {
            event_id: event_id.clone(),
            order_id: uuid::Uuid::now_v7().to_string(),
            // Premium: loyalty prices every item, the slow path.
            customer_id: if i % 2 == 0 { "premium-pat" } else { "premium-sam" }.to_string(),
            status: OrderStatus::Confirmed as i32,
            items: ["KB-001", "MS-002", "CB-004"]
                .into_iter()
                .map(|sku| PricedItem { sku: sku.to_string(), quantity: 1, unit_price_cents: 900 })
                .collect(),
            total_cents: 2700,
            failure_reason: String::new(),
            email: String::new(),
            occurred_at_unix_ms: tracehop_telemetry::now_unix_ms(),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(tracehop_messaging::headers::MESSAGE_ID, event_id.as_str());
        headers.insert(tracehop_messaging::headers::PAYLOAD_TYPE, "tracehop.v1.OrderEvent");
        let ack = system
            .order_js
            .publish_with_headers(tracehop_proto::subjects::ORDER_CONFIRMED, headers, event.encode_to_vec().into())
            .await
            .unwrap();
        acks.push(ack);
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let mut busy_without_pullers = 0u64;
    let drained = Instant::now() + Duration::from_secs(180);
    loop {
        let status = sentinel_status(&system).await;
        for consumer in &status.consumers {
            assert_ne!(consumer.state, "down", "a busy consumer called down: {consumer:#?}");
            if consumer.active_pullers == 0 && consumer.pending + consumer.ack_pending > 0 {
                busy_without_pullers += 1;
            }
        }
        // The sentinel's view is a check interval old: drained means every
        // event recorded too.
        if status.consumers.iter().all(|c| c.pending == 0 && c.ack_pending == 0)
            && scalar(&system, "SELECT COUNT(*) FROM analytics.order_events").await == EVENTS as i64
        {
            break;
        }
        assert!(Instant::now() < drained, "the backlog was not drained in 180 s: {status:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut raised = Vec::new();
    while let Some(alert) = next_alert(&mut alerts, Duration::from_millis(100)).await {
        raised.push(alert);
    }
    println!(
        "backlog of {EVENTS}: {busy_without_pullers} readings of a consumer with events waiting and nobody pulling"
    );
    assert!(raised.is_empty(), "alerts while consumers worked through a backlog: {raised:#?}");
    assert!(busy_without_pullers > 0, "no consumer was ever busy with nobody pulling: the test tested nothing");
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM analytics.order_events").await, EVENTS as i64);
}
